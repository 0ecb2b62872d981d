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
    /// Process CPU seconds (all threads) per generation: comparable across runs on a busy
    /// machine, where wall seconds are not.
    pub cpu_seconds_per_generation: f64,
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
    /// What the GGUF's block-format tensors were held as (`[model] weights`).
    pub weights: String,
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
    let session = Session::open(&cfg.model, dev, true)?;
    let model = &session.loaded.model;
    let backend = method.open(&section, model)?;
    let cal = session.calibrate(&cfg.calibration, &cfg.fitness, None)?;
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
        let cpu0 = process_cpu_seconds();
        search.run(&mut state, &mut ev, &mut (), 0.0)?;
        let seconds = t0.elapsed().as_secs_f64();
        let cpu = process_cpu_seconds() - cpu0;
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
            cpu_seconds_per_generation: cpu / timed.len() as f64,
            final_fitness: state.history.last().map_or(f64::NAN, |r| r.best_fitness),
        });
    }
    Ok(SearchBench {
        weights: session.gguf_weights.name().into(),
        modes: runs,
        profile: prof,
    })
}

/// User plus system CPU seconds of this process so far, from `/proc/self/stat` (fields 14 and
/// 15, in the kernel's fixed 100 Hz user-visible clock); NaN where there is no procfs.
fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // The command name (field 2) may hold spaces; the fields after it start past its ')'.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let field = |n: usize| {
        after_name
            .split_whitespace()
            .nth(n - 3)
            .and_then(|v| v.parse::<f64>().ok())
    };
    match (field(14), field(15)) {
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => f64::NAN,
    }
}
