//! A search run end to end (docs/search.md): calibrate, seed from the method's cheap
//! baselines, evolve with checkpoints, pick the winner in a final tournament, score it and the
//! baselines on held-out text, and write the results.
//!
//! Files in the output directory:
//! - `checkpoint.json`: the full search state after every generation (`--resume`);
//! - `history.jsonl`: a line per generation (fitness, evaluations, tokens, seconds; the seeds'
//!   fitness in generation 0);
//! - the method's config files of the current best (every generation), then of the winner;
//! - `seeds.json`: the baselines computed for seeding (so a resumed run does not redo them);
//! - `result.toml`: the winner, its budget and report, the tournament, held-out perplexity of
//!   the dense model, the winner and every baseline, and the KL of each to the dense model;
//! - `convergence.svg`: best fitness per generation, the seeds as horizontal lines.

use crate::baselines::{self, BaselineRow};
use crate::config::{split_kind, RunConfig};
use crate::session::Session;
use crate::{plot, progress};
use evopress_core::evaluate::Calibration;
use evopress_core::fsutil::{write_atomically, DirLock};
use evopress_core::method::find_method;
use evopress_core::{CompressionBackend, Error, Method, Model, Result};
use evopress_kernels::Device;
use evopress_search::{
    BudgetReport, GenerationEvent, Observer, Search, SearchState, Seed, StageInfo, Stop, Tournament,
};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

const GB: f64 = 1e9;
pub const CHECKPOINT: &str = "checkpoint.json";
pub const HISTORY: &str = "history.jsonl";
pub const RESULT: &str = "result.toml";
pub const PLOT: &str = "convergence.svg";
pub const SEEDS: &str = "seeds.json";

/// How `evopress search` was asked to run.
#[derive(Clone, Debug, Default)]
pub struct SearchOptions {
    /// Continue from the output directory's checkpoint.
    pub resume: bool,
    /// Discard a previous run in the output directory.
    pub force: bool,
    /// Stop after this many generations in this invocation (resumable).
    pub stop_after: Option<usize>,
    pub quiet: bool,
}

/// What a finished (or interrupted) run produced.
pub struct SearchOutcome {
    pub out: PathBuf,
    pub stop: Stop,
    pub generation: usize,
    /// `None` when the run stopped early on request (resume to finish it).
    pub result: Option<ResultFile>,
}

/// `result.toml`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResultFile {
    pub backend: String,
    pub model: PathBuf,
    pub fitness: String,
    /// Generations run, and why the run stopped (`finished`, `converged`, `time_budget`).
    pub generations: usize,
    pub stopped: String,
    pub evaluations: usize,
    pub tokens_evaluated: u64,
    pub search_seconds: f64,
    /// The winner's fitness on the tournament tokens (or the last stage's without one).
    pub best_fitness: f64,
    pub budget: BudgetReport,
    pub held_out: HeldOut,
    /// The method's own fields (counted zeros, stored bits, dropped sub-blocks).
    pub report: toml::Table,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tournament: Option<TournamentReport>,
    /// Baselines scored on the same held-out text, with whether the search beats each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub baselines: Vec<BaselineRow>,
    /// The chosen level per unit, in unit order.
    pub levels: toml::Table,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeldOut {
    pub dense_perplexity: f64,
    pub compressed_perplexity: f64,
    /// Mean per-token KL(dense || result) on the same windows, in nats.
    pub compressed_kl: f64,
    pub tokens_scored: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TournamentReport {
    pub tokens: usize,
    pub winner: String,
    pub entrants: Vec<TournamentEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TournamentEntry {
    pub name: String,
    /// The fitness on the tournament tokens, when scored to the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fitness: Option<f64>,
    /// What racing had summed when it stopped (a lower bound of the fitness).
    pub at_least: f64,
}

impl TournamentReport {
    fn of(t: &Tournament) -> Self {
        TournamentReport {
            tokens: t.tokens,
            winner: t.best().name.clone(),
            entrants: (t.entrants.iter())
                .map(|e| TournamentEntry {
                    name: e.name.clone(),
                    fitness: e.fitness,
                    at_least: e.at_least,
                })
                .collect(),
        }
    }
}

/// Everything a run holds between its phases.
struct Run<'a> {
    /// When this invocation started (before loading the model).
    started: Instant,
    cfg: &'a RunConfig,
    session: &'a Session<'a>,
    backend: &'a dyn CompressionBackend,
    cal: &'a Calibration,
    out: &'a Path,
    quiet: bool,
}

/// Runs (or resumes) the search a config file describes, with the methods of `methods`.
pub fn run_search(
    methods: &[&dyn Method],
    config: &Path,
    dev: &dyn Device,
    opts: &SearchOptions,
) -> Result<SearchOutcome> {
    let started = Instant::now();
    let cfg = RunConfig::read(config)?;
    let (kind, section) = split_kind(&cfg.backend, "[backend]")?;
    let method = find_method(methods, &kind)?;
    let out = cfg.output.dir.clone();
    let _lock = DirLock::acquire(&out, "searching")?;
    prepare_output(&out, opts)?;

    let session = Session::open(&cfg.model, dev, opts.quiet)?;
    let model = &session.loaded.model;
    let backend = method.open(&section, model)?;
    let held_out = session.held_out_windows(&cfg.eval)?;
    let cal = session.calibrate(&cfg.calibration, &cfg.fitness, Some(&out))?;
    let run = Run {
        started,
        cfg: &cfg,
        session: &session,
        backend: backend.as_ref(),
        cal: &cal,
        out: &out,
        quiet: opts.quiet,
    };
    run.search(opts, &held_out)
}

/// Refuses to overwrite a finished or running search's directory unless asked to.
fn prepare_output(out: &Path, opts: &SearchOptions) -> Result<()> {
    let checkpoint = out.join(CHECKPOINT);
    if checkpoint.exists() && !opts.resume && !opts.force {
        return Err(Error::Invalid(format!(
            "{} already holds a search ({CHECKPOINT}); pass --resume to continue it or \
             --force to discard it and start afresh",
            out.display()
        )));
    }
    if opts.force && !opts.resume {
        for name in [CHECKPOINT, HISTORY, RESULT, PLOT, SEEDS] {
            match std::fs::remove_file(out.join(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io(out.join(name), e))
                }
                _ => {}
            }
        }
    }
    Ok(())
}

impl Run<'_> {
    fn model(&self) -> &Model {
        &self.session.loaded.model
    }

    fn identity(&self) -> String {
        format!(
            "{};{:?};{:?}",
            self.model().fingerprint(),
            self.cfg.fitness.kind(),
            self.cfg.calibration
        )
    }

    fn search(&self, opts: &SearchOptions, held_out: &[Vec<u32>]) -> Result<SearchOutcome> {
        let cfg = self.cfg;
        let space = self.backend.space();
        let lens = self.cal.sample_lens();
        let identity = self.identity();
        let search = Search::new(space, &cfg.search, &lens)?.with_identity(&identity);
        let cache_cap = (cfg.fitness.stage_cache_gb * GB) as usize;
        let mut evaluator =
            self.backend
                .evaluator(self.model(), self.session.dev, self.cal, cache_cap)?;
        let checkpoint = self.out.join(CHECKPOINT);

        let resuming = opts.resume && checkpoint.exists();
        let (state, computed) = if resuming {
            (search.resume(&checkpoint)?, None)
        } else {
            let computed = self.seeds()?;
            let seeds = (computed.iter())
                .filter_map(|b| {
                    Some(Seed {
                        name: b.name.clone(),
                        genome: b.genome.clone()?,
                    })
                })
                .filter(|s| space.check_genome(&s.genome).is_ok())
                .collect();
            let bar = progress::spinner("initial selection", self.quiet);
            let state = search.initialize(seeds, &mut evaluator, &mut ())?;
            bar.finish_and_clear();
            progress::log_line(self.quiet, || {
                let best = state.history.last().map_or(f64::NAN, |r| r.best_fitness);
                format!("generation 0: best fitness {best:.6}")
            });
            write_atomically(&checkpoint, &search.checkpoint_json(&state))?;
            (state, Some(computed))
        };
        let mut history = std::fs::File::create(self.out.join(HISTORY))
            .map_err(|e| Error::io(self.out.join(HISTORY), e))?;
        for record in &state.history {
            writeln!(
                history,
                "{}",
                serde_json::to_string(record).expect("records serialize")
            )
            .map_err(|e| Error::io(self.out.join(HISTORY), e))?;
        }
        let bar = progress::bar(cfg.search.generations, "generations", self.quiet);
        bar.set_position(state.generation as u64);
        let mut observer = RunObserver {
            bar,
            history,
            out: self.out,
            backend: self.backend,
            search: &search,
            generations_left: opts.stop_after,
            quiet: self.quiet,
        };
        let mut state = state;
        // A time budget covers the whole invocation: loading, dense targets and baselines
        // too, not only the generations the history records.
        let recorded_here: f64 = if resuming {
            0.0
        } else {
            state.history.iter().map(|r| r.seconds).sum()
        };
        let setup = (self.started.elapsed().as_secs_f64() - recorded_here).max(0.0);
        let reserve = setup + self.reserve_seconds(&search, &state, held_out);
        let stop = search.run(&mut state, &mut evaluator, &mut observer, reserve)?;
        observer.bar.finish_and_clear();
        if stop == Stop::Interrupted {
            return Ok(SearchOutcome {
                out: self.out.to_path_buf(),
                stop,
                generation: state.generation,
                result: None,
            });
        }
        let tournament_started = Instant::now();
        let tournament = if cfg.search.final_tournament {
            let bar = progress::spinner("final tournament", self.quiet);
            let t = search.final_tournament(&state, &mut evaluator, &mut ())?;
            bar.finish_and_clear();
            progress::log_line(self.quiet, || {
                let w = &t.entrants[t.winner];
                format!(
                    "final tournament on {} tokens: {} wins with fitness {:.6}",
                    t.tokens,
                    w.name,
                    w.fitness.unwrap_or(f64::NAN)
                )
            });
            Some(t)
        } else {
            None
        };
        drop(evaluator);
        let search_seconds = state.seconds() + tournament_started.elapsed().as_secs_f64();
        let result = self.finish(&state, stop, tournament, computed, held_out, search_seconds)?;
        Ok(SearchOutcome {
            out: self.out.to_path_buf(),
            stop,
            generation: state.generation,
            result: Some(result),
        })
    }

    fn baseline_batch(&self) -> evopress_search::TokenBatch {
        self.cfg.baselines.batch(&self.cal.sample_lens())
    }

    /// The method's cheap baselines (when seeding or scoring them), saved to `seeds.json`.
    fn seeds(&self) -> Result<Vec<baselines::Computed>> {
        let wanted = self
            .cfg
            .search
            .initial
            .contains(&evopress_search::InitialSource::Baselines)
            || self.cfg.baselines.held_out;
        if !wanted {
            return Ok(Vec::new());
        }
        let batch = self.baseline_batch();
        let names: Vec<String> = (self.backend.baselines().into_iter())
            .filter(|b| b.cheap)
            .map(|b| b.name)
            .collect();
        progress::log_line(self.quiet, || format!("baselines: {}", names.join(", ")));
        let computed = baselines::compute(self.session, self.backend, self.cal, &batch, &names)?;
        let json = serde_json::to_vec_pretty(&computed).expect("baselines serialize");
        write_atomically(&self.out.join(SEEDS), &json)?;
        Ok(computed)
    }

    /// Seconds to keep free at the end of a time budget: the tournament and the held-out
    /// evaluations, at the rate the generations so far scored tokens.
    fn reserve_seconds(&self, search: &Search, state: &SearchState, held_out: &[Vec<u32>]) -> f64 {
        let seconds: f64 = state.history.iter().map(|r| r.seconds).sum();
        let tokens: u64 = state.history.iter().map(|r| r.tokens).sum();
        if tokens == 0 || seconds == 0.0 {
            return 0.0;
        }
        let rate = tokens as f64 / seconds;
        let tournament = if self.cfg.search.final_tournament {
            search.entrants(state).len() * search.final_tokens()
        } else {
            0
        };
        let held_out_tokens: usize = held_out.iter().map(Vec::len).sum();
        let evaluations = 2 + state.seeds.len();
        (tournament + evaluations * held_out_tokens) as f64 / rate
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        state: &SearchState,
        stop: Stop,
        tournament: Option<Tournament>,
        computed: Option<Vec<baselines::Computed>>,
        held_out: &[Vec<u32>],
        search_seconds: f64,
    ) -> Result<ResultFile> {
        let cfg = self.cfg;
        let model = self.model();
        let backend = self.backend;
        let space = backend.space();
        let winner = match &tournament {
            Some(t) => t.best().genome.clone(),
            None => state.best().clone(),
        };
        // The winner is written, then read back: the numbers belong to the file on disk.
        for (name, text) in backend.config_files(&winner)? {
            write_atomically(&self.out.join(name), text.as_bytes())?;
        }
        let genome = backend.read_config(self.out)?;
        let candidate = backend.candidate(model, &genome)?;
        let reference = self.session.dense_reference(held_out.to_vec())?;
        let dense = reference.dense_nll();
        let compressed = self
            .session
            .score(&reference, &candidate, "held-out search")?;
        let baselines = if cfg.baselines.held_out {
            let computed = match computed {
                Some(c) => c,
                None => baselines::load_or_compute(
                    &self.out.join(SEEDS),
                    self.session,
                    backend,
                    self.cal,
                    &self.baseline_batch(),
                )?,
            };
            baselines::score_held_out(
                self.session,
                backend,
                &computed,
                &reference,
                Some((&genome, &compressed)),
            )?
        } else {
            Vec::new()
        };
        let best_fitness = match &tournament {
            Some(t) => t.best().fitness.expect("the winner is scored in full"),
            None => state.history.last().map_or(f64::NAN, |r| r.best_fitness),
        };
        let levels = (space.units().iter())
            .map(|u| u.name.clone())
            .zip(space.level_ids(&genome))
            .map(|(name, level)| (name, toml::Value::from(level)))
            .collect();
        let result = ResultFile {
            backend: backend.name().into(),
            model: cfg.model.path.clone(),
            fitness: cfg.fitness.kind.name().into(),
            generations: state.generation,
            stopped: stop_name(stop).into(),
            evaluations: state.history.iter().map(|r| r.evaluations).sum::<usize>()
                + tournament.as_ref().map_or(0, |t| t.evaluations),
            tokens_evaluated: state.history.iter().map(|r| r.tokens).sum::<u64>()
                + tournament.as_ref().map_or(0, |t| t.positions),
            search_seconds,
            best_fitness,
            budget: space.budget_report(&genome),
            held_out: HeldOut {
                dense_perplexity: dense.perplexity(),
                compressed_perplexity: compressed.perplexity(),
                compressed_kl: compressed.kl(),
                tokens_scored: compressed.nll.tokens,
            },
            report: backend.report(&genome, &candidate)?.fields,
            tournament: tournament.as_ref().map(TournamentReport::of),
            baselines,
            levels,
        };
        let text = toml::to_string(&result)
            .map_err(|e| Error::Invalid(format!("writing {RESULT}: {e}")))?;
        write_atomically(&self.out.join(RESULT), text.as_bytes())?;
        let lines: Vec<(String, f64)> = state
            .history
            .first()
            .map(|r| {
                r.seeds
                    .iter()
                    .map(|s| (s.name.clone(), s.fitness))
                    .collect()
            })
            .unwrap_or_default();
        plot::convergence_svg(&self.out.join(PLOT), &state.history, &lines)?;
        Ok(result)
    }
}

fn stop_name(stop: Stop) -> &'static str {
    match stop {
        Stop::Finished => "finished",
        Stop::Converged => "converged",
        Stop::TimeBudget => "time_budget",
        Stop::Interrupted => "interrupted",
    }
}

/// Draws the bar, appends `history.jsonl`, writes the checkpoint and the current best's config
/// files after every generation.
struct RunObserver<'a> {
    bar: ProgressBar,
    history: std::fs::File,
    out: &'a Path,
    backend: &'a dyn CompressionBackend,
    search: &'a Search<'a>,
    generations_left: Option<usize>,
    quiet: bool,
}

impl Observer for RunObserver<'_> {
    fn stage_started(&mut self, s: &StageInfo) {
        self.bar
            .set_message(format!("gen {} stage {}", s.generation, s.stage));
    }

    fn generation_finished(
        &mut self,
        e: &GenerationEvent,
    ) -> evopress_search::Result<ControlFlow<()>> {
        write_atomically(
            &self.out.join(CHECKPOINT),
            &self.search.checkpoint_json(e.state),
        )?;
        let line = serde_json::to_string(e.record).expect("records serialize");
        writeln!(self.history, "{line}").map_err(|err| Error::io(self.out.join(HISTORY), err))?;
        for (name, text) in self.backend.config_files(e.state.best())? {
            write_atomically(&self.out.join(name), text.as_bytes())?;
        }
        self.bar.set_position(e.record.generation as u64);
        self.bar
            .set_message(format!("fitness {:.5}", e.record.best_fitness));
        progress::log_line(self.quiet, || {
            format!(
                "generation {}: best fitness {:.6} ({} evaluations, {:.1} s)",
                e.record.generation, e.record.best_fitness, e.record.evaluations, e.record.seconds
            )
        });
        Ok(match &mut self.generations_left {
            Some(n) if *n <= 1 => ControlFlow::Break(()),
            Some(n) => {
                *n -= 1;
                ControlFlow::Continue(())
            }
            None => ControlFlow::Continue(()),
        })
    }
}
