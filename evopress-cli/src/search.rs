//! `evopress search --config FILE`: the EvoPress search for a backend, end to end.
//!
//! Writes into the output directory: `checkpoint.json` (every generation, atomically; `--resume`
//! continues from it), `history.jsonl` (a line per generation), `layer_drop_config.txt` (the
//! current best, every generation, as the original does), and at the end `result.toml`,
//! `drop_config.toml` and `convergence.svg`.

use crate::progress;
use crate::run_config::{tokenize_files, BackendSection, EvalSection, RunConfig};
use crate::{plot, write_atomically};
use anyhow::{Context, Result};
use evopress_core::data::{self, NllSum};
use evopress_core::evaluate::Calibration;
use evopress_core::search::{GenerationEvent, Genome, Observer, Search, StageInfo};
use evopress_core::{load_model, Candidate, CompressionBackend, LoadedModel, Model};
use evopress_kernels::cpu::Cpu;
use evopress_prune::{drop_config, DepthBackend};
use indicatif::ProgressBar;
use serde::Serialize;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// The run's TOML file (see `examples/`).
    #[arg(long)]
    config: PathBuf,
    /// Continue from the output directory's checkpoint.
    #[arg(long)]
    resume: bool,
    /// Stop after this many generations in this invocation (the checkpoint stays resumable).
    #[arg(long)]
    stop_after: Option<usize>,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

const GB: f64 = 1e9;

/// Perplexity of `candidate` on the held-out files.
pub fn held_out_ppl(
    loaded: &LoadedModel,
    eval: &EvalSection,
    candidate: &Candidate,
    quiet: bool,
) -> Result<NllSum> {
    let files = tokenize_files(&eval.files, "eval.files", loaded.tokenizer()?)?;
    let windows = data::windows(&files, eval.seq_len, eval.windows)?;
    let bar = progress::bar(windows.len(), "held-out", quiet);
    let sum = data::perplexity(&candidate.model, &Cpu, &windows, &candidate.plan, |i| {
        bar.set_position(i as u64)
    })?;
    bar.finish_and_clear();
    Ok(sum)
}

/// The calibration windows and the dense model's targets on them, with a memory check first.
pub fn calibrate(loaded: &LoadedModel, cfg: &RunConfig, quiet: bool) -> Result<Calibration> {
    let samples = cfg.calibration.windows(loaded.tokenizer()?)?;
    let kind = cfg.fitness.kind();
    let positions: usize = samples.iter().map(|s| s.len() - 1).sum();
    kind.check_target_memory(
        positions,
        loaded.model.vocab_size(),
        (cfg.fitness.max_target_gb * GB) as usize,
    )?;
    let bar = progress::bar(samples.len(), "dense", quiet);
    let cal = Calibration::new(&loaded.model, &Cpu, samples, kind, |i| {
        bar.set_position(i as u64)
    })?;
    bar.finish_and_clear();
    Ok(cal)
}

/// Identifies the model file for checkpoints: its config and size, cheap to compute.
fn model_identity(path: &Path, model: &Model) -> String {
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    format!("{}:{size}:{:?}", path.display(), model.config)
}

/// The one place backends are registered: a config's `[backend]` section to its
/// implementation.
pub fn backend(
    section: &BackendSection,
    model: &Model,
) -> Result<Box<dyn CompressionBackend<Cpu>>> {
    match section {
        BackendSection::Quant(q) => Ok(Box::new(crate::quant::open_backend(model, q)?)),
        BackendSection::Depth(b) => {
            let n = model.layers.len();
            let legal = b
                .legal
                .as_ref()
                .map(|p| drop_config::read(p, n))
                .transpose()?;
            Ok(Box::new(DepthBackend {
                k: b.k(n)?,
                drop_entire_block: b.drop_entire_block,
                legal,
            }))
        }
        BackendSection::Sparse(b) => Ok(Box::new(
            evopress_sparse::SparseBackend::open(model, &b.database)
                .with_context(|| format!("opening the database {}", b.database.display()))?,
        )),
    }
}

/// Draws bars, appends `history.jsonl` and rewrites the current best config each generation.
struct RunObserver<'a> {
    bar: ProgressBar,
    history: std::fs::File,
    out: PathBuf,
    backend: &'a dyn CompressionBackend<Cpu>,
    model: &'a Model,
    generations_left: Option<usize>,
}

/// Writes the backend's description files of `genome` into `out`.
fn write_config_files(
    out: &Path,
    backend: &dyn CompressionBackend<Cpu>,
    model: &Model,
    genome: &Genome,
) -> Result<()> {
    for (name, text) in backend.config_files(model, genome) {
        write_atomically(&out.join(name), text.as_bytes())?;
    }
    Ok(())
}

impl Observer for RunObserver<'_> {
    fn stage_started(&mut self, s: &StageInfo) {
        self.bar.set_message(format!(
            "gen {} stage {}: {} candidates x {} tokens",
            s.generation, s.stage, s.candidates, s.tokens
        ));
    }

    fn generation_finished(&mut self, e: &GenerationEvent) -> ControlFlow<()> {
        let line = serde_json::json!({
            "generation": e.record.generation,
            "fitness": e.record.best_fitness,
            "evaluations": e.record.evaluations,
            "tokens": e.record.tokens,
            "seconds": e.seconds,
        });
        let written = writeln!(self.history, "{line}")
            .map_err(anyhow::Error::from)
            .and_then(|_| write_config_files(&self.out, self.backend, self.model, e.best));
        if let Err(err) = written {
            eprintln!("warning: could not write progress files: {err:#}");
        }
        self.bar.set_position(e.record.generation as u64);
        self.bar
            .set_message(format!("fitness {:.5}", e.record.best_fitness));
        match &mut self.generations_left {
            Some(0) | Some(1) => ControlFlow::Break(()),
            Some(n) => {
                *n -= 1;
                ControlFlow::Continue(())
            }
            None => ControlFlow::Continue(()),
        }
    }
}

#[derive(Serialize)]
struct ResultFile {
    backend: &'static str,
    model: PathBuf,
    fitness: String,
    best_fitness: f64,
    generations: usize,
    evaluations: usize,
    tokens_evaluated: u64,
    search_seconds: f64,
    budget: evopress_core::search::BudgetReport,
    held_out: HeldOut,
    /// Zeros counted in the compressed model's linear layers (sparsity backends).
    #[serde(skip_serializing_if = "Option::is_none")]
    counted: Option<CountedZeros>,
    /// Backend-specific numbers (quant: average bits, true stored bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    stored: Option<toml::Table>,
    /// The chosen level per unit (for depth: 1 = dropped), in unit order.
    levels: toml::Table,
}

#[derive(Serialize)]
pub struct CountedZeros {
    pub zeros: u64,
    pub weights: u64,
    pub sparsity: f64,
}

impl CountedZeros {
    pub fn of(model: &Model) -> Self {
        let (zeros, weights) = evopress_sparse::count_zeros(model);
        CountedZeros {
            zeros,
            weights,
            sparsity: zeros as f64 / weights.max(1) as f64,
        }
    }
}

#[derive(Serialize)]
struct HeldOut {
    dense_perplexity: f64,
    compressed_perplexity: f64,
    tokens_scored: usize,
}

pub fn run(a: Args) -> Result<()> {
    let cfg = RunConfig::read(&a.config)?;
    let out = &cfg.output.dir;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let loaded = load_model(&cfg.model.path)
        .with_context(|| format!("loading {}", cfg.model.path.display()))?;
    let model = &loaded.model;
    let backend = backend(&cfg.backend, model)?;
    let space = backend.search_space(model)?;

    let cal = calibrate(&loaded, &cfg, a.quiet)?;
    let lens = cal.sample_lens();
    let identity = format!(
        "{};{:?};{:?}",
        model_identity(&cfg.model.path, model),
        cfg.fitness.kind(),
        cfg.calibration
    );
    let search = Search::new(&space, &cfg.search, &lens)?.with_identity(&identity);
    let cache_cap = (cfg.fitness.stage_cache_gb * GB) as usize;
    let mut evaluator = backend.evaluator(model, &Cpu, &cal, cache_cap);

    let checkpoint = out.join("checkpoint.json");
    let started = Instant::now();
    let state = if a.resume && checkpoint.exists() {
        search.resume(&checkpoint)?
    } else {
        let s = search.initialize(&mut evaluator, &mut ())?;
        search.save_checkpoint(&s, &checkpoint)?;
        s
    };
    // history.jsonl is rebuilt from the checkpoint so it never holds lines of a lost generation.
    let mut history = std::fs::File::create(out.join("history.jsonl"))?;
    for r in &state.history {
        writeln!(
            history,
            "{}",
            serde_json::json!({
                "generation": r.generation, "fitness": r.best_fitness,
                "evaluations": r.evaluations, "tokens": r.tokens,
            })
        )?;
    }
    let bar = progress::bar(cfg.search.generations, "generations", a.quiet);
    bar.set_position(state.generation as u64);
    let mut observer = RunObserver {
        bar,
        history,
        out: out.clone(),
        backend: backend.as_ref(),
        model,
        generations_left: a.stop_after,
    };
    let state = search.run(state, &mut evaluator, &mut observer, Some(&checkpoint))?;
    observer.bar.finish_and_clear();
    let search_seconds = started.elapsed().as_secs_f64();
    if state.generation < cfg.search.generations {
        println!(
            "stopped after generation {} of {}; continue with --resume",
            state.generation, cfg.search.generations
        );
        return Ok(());
    }

    // The winner is written, then read back from the file for the final evaluation, so the
    // numbers printed belong to the configuration on disk.
    let best = state.best().clone();
    write_config_files(out, backend.as_ref(), model, &best)?;
    let candidate = backend.load_candidate(model, out)?;
    let dense = held_out_ppl(&loaded, &cfg.eval, &Candidate::dense(model), a.quiet)?;
    let compressed = held_out_ppl(&loaded, &cfg.eval, &candidate, a.quiet)?;
    let last = state.history.last().expect("a finished run has history");
    let result = ResultFile {
        backend: backend.name(),
        model: cfg.model.path.clone(),
        fitness: format!("{:?}", cfg.fitness.kind()),
        best_fitness: last.best_fitness,
        generations: state.generation,
        evaluations: state.history.iter().map(|r| r.evaluations).sum(),
        tokens_evaluated: state.history.iter().map(|r| r.tokens).sum(),
        search_seconds,
        budget: space.budget_report(&best),
        stored: crate::quant::result_extras(&cfg.backend, model, &space.level_ids(&best))?,
        held_out: HeldOut {
            dense_perplexity: dense.perplexity(),
            compressed_perplexity: compressed.perplexity(),
            tokens_scored: compressed.tokens,
        },
        counted: (backend.name() == "sparse").then(|| CountedZeros::of(&candidate.model)),
        levels: space
            .units()
            .iter()
            .map(|u| u.name.clone())
            .zip(space.level_ids(&best))
            .map(|(name, level)| (name, toml::Value::from(level)))
            .collect(),
    };
    write_atomically(
        &out.join("result.toml"),
        toml::to_string(&result)?.as_bytes(),
    )?;
    plot::convergence_svg(&out.join("convergence.svg"), &state.history)?;
    // Units away from the base level (depth: kept; sparsity: level 0).
    let base = space.level_ids(&space.base_genome());
    let changed: Vec<&str> = (space.units().iter())
        .zip(space.level_ids(&best))
        .zip(base)
        .filter(|((_, level), b)| level != b)
        .map(|((u, _), _)| u.name.as_str())
        .collect();
    println!(
        "compressed units: {}\nheld-out perplexity: dense {:.4} -> compressed {:.4} ({} tokens)\nresults in {}",
        changed.join(" "),
        result.held_out.dense_perplexity,
        result.held_out.compressed_perplexity,
        result.held_out.tokens_scored,
        out.display()
    );
    if let Some(c) = &result.counted {
        println!(
            "counted zeros: {} / {} = {:.6}",
            c.zeros, c.weights, c.sparsity
        );
    }
    Ok(())
}
