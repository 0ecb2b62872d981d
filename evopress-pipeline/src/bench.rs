//! `evopress bench search`: seconds per generation of a search config in its default mode
//! (incremental evaluation and racing), and with each switched off, on the same seed so every
//! mode scores the same candidates; plus where the default mode's time goes.

use crate::config::{split_kind, RunConfig};
use crate::session::Session;
use evopress_core::evaluate::profile;
use evopress_core::method::find_method;
use evopress_core::{Method, Result};
use evopress_kernels::Device;
use evopress_search::{InitialSource, Search};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

#[derive(Clone, Debug, Serialize)]
pub struct ModeRun {
    pub mode: String,
    pub generations: usize,
    pub seconds_per_generation: f64,
    pub evaluations_per_second: f64,
    /// Token positions scored over the timed generations.
    pub tokens_scored: u64,
    pub blocks_run: u64,
    pub final_fitness: f64,
}

/// Fractions of the default mode's generation time.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Profile {
    pub blocks: f64,
    pub lm_head: f64,
    pub fitness: f64,
    pub stage_cache: f64,
    pub other: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct SearchBench {
    pub modes: Vec<ModeRun>,
    pub profile: Profile,
}

pub fn search(
    methods: &[&dyn Method],
    config: &Path,
    dev: &dyn Device,
    generations: usize,
) -> Result<SearchBench> {
    let mut cfg = RunConfig::read(config)?;
    cfg.search.generations = generations.max(1);
    // Random starts only: the baselines are not what is timed.
    cfg.search.initial = vec![InitialSource::Random];
    let (kind, section) = split_kind(&cfg.backend, "[backend]")?;
    let method = find_method(methods, &kind)?;
    let session = Session::open(&cfg.model.path, dev, true)?;
    let model = &session.loaded.model;
    let backend = method.open(&section, model)?;
    let cal = session.calibrate(&cfg.calibration, &cfg.fitness)?;
    let lens = cal.sample_lens();
    let cache_cap = (cfg.fitness.stage_cache_gb * 1e9) as usize;
    let modes = [
        ("incremental + racing", cache_cap, true),
        ("incremental", cache_cap, false),
        ("full forward (original)", 0, false),
    ];
    let mut runs = Vec::new();
    let mut prof = Profile::default();
    for (i, (name, cap, racing)) in modes.into_iter().enumerate() {
        let mut sc = cfg.search.clone();
        sc.racing = racing;
        let search = Search::new(backend.space(), &sc, &lens)?;
        let mut ev = backend.evaluator(model, dev, &cal, cap)?;
        let mut state = search.initialize(Vec::new(), &mut ev, &mut ())?;
        profile::reset();
        let t0 = Instant::now();
        search.run(&mut state, &mut ev, &mut (), 0.0)?;
        let seconds = t0.elapsed().as_secs_f64();
        let timed = &state.history[state.history.len() - generations.max(1)..];
        let evaluations: usize = timed.iter().map(|r| r.evaluations).sum();
        if i == 0 {
            let part = |s: f64| s / seconds;
            prof = Profile {
                blocks: part(profile::BLOCKS.seconds()),
                lm_head: part(profile::LM_HEAD.seconds()),
                fitness: part(profile::FITNESS.seconds()),
                stage_cache: part(profile::STAGE_CACHE.seconds()),
                other: 0.0,
            };
            prof.other =
                (1.0 - prof.blocks - prof.lm_head - prof.fitness - prof.stage_cache).max(0.0);
        }
        runs.push(ModeRun {
            mode: name.into(),
            generations: timed.len(),
            seconds_per_generation: seconds / timed.len() as f64,
            evaluations_per_second: evaluations as f64 / seconds,
            tokens_scored: timed.iter().map(|r| r.tokens).sum(),
            blocks_run: 0,
            final_fitness: state.history.last().map_or(f64::NAN, |r| r.best_fitness),
        });
    }
    Ok(SearchBench {
        modes: runs,
        profile: prof,
    })
}
