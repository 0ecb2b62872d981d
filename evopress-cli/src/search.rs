//! `evopress search --config FILE`: the EvoPress search of a config's method, end to end (see
//! `evopress_pipeline::search` for the files it writes).

use crate::METHODS;
use anyhow::Result;
use evopress_kernels::Device;
use evopress_pipeline::{run_search, SearchOptions};
use evopress_search::Stop;
use std::num::NonZeroUsize;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The run's TOML file (see `examples/`).
    #[arg(long)]
    pub config: PathBuf,
    /// Continue from the output directory's checkpoint.
    #[arg(long, conflicts_with = "force")]
    resume: bool,
    /// Discard a previous search in the output directory and start afresh.
    #[arg(long)]
    force: bool,
    /// Stop after this many generations in this invocation (the checkpoint stays resumable).
    #[arg(long)]
    stop_after: Option<NonZeroUsize>,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

pub fn run(a: Args, dev: &dyn Device) -> Result<()> {
    let opts = SearchOptions {
        resume: a.resume,
        force: a.force,
        stop_after: a.stop_after.map(NonZeroUsize::get),
        quiet: a.quiet,
    };
    let outcome = run_search(METHODS, &a.config, dev, &opts)?;
    let Some(r) = outcome.result else {
        println!(
            "stopped after generation {}; continue with --resume",
            outcome.generation
        );
        return Ok(());
    };
    let why = match outcome.stop {
        Stop::Converged => " (converged: the best parent stopped changing)",
        Stop::TimeBudget => " (the time budget is spent)",
        _ => "",
    };
    println!(
        "{} generations in {:.0}s{why}; {} evaluations over {} tokens",
        r.generations, r.search_seconds, r.evaluations, r.tokens_evaluated
    );
    if let Some(t) = &r.tournament {
        println!(
            "final tournament on {} tokens: `{}` wins among {} entrants",
            t.tokens,
            t.winner,
            t.entrants.len()
        );
    }
    println!(
        "held-out perplexity: dense {:.4} -> compressed {:.4}, KL to dense {:.5} ({} tokens)",
        r.held_out.dense_perplexity,
        r.held_out.compressed_perplexity,
        r.held_out.compressed_kl,
        r.held_out.tokens_scored
    );
    for (key, value) in &r.report {
        println!("  {key} = {value}");
    }
    if !r.baselines.is_empty() {
        println!("baselines on the same held-out text (perplexity, KL to dense):");
        for b in &r.baselines {
            let verdict = match (b.same_as_search, b.search_beats, b.search_beats_kl) {
                (true, _, _) => "the search's own choice",
                (false, Some(true), Some(true)) => "search beats it on both",
                (false, Some(true), _) => "search beats it on perplexity only",
                (false, _, Some(true)) => "search beats it on KL only",
                (false, _, _) => "search does NOT beat it",
            };
            println!(
                "  {:<16} {:>10.4} {:>9.5}  {verdict}",
                b.name,
                b.held_out_perplexity,
                b.held_out_kl.unwrap_or(f64::NAN)
            );
        }
        // With seeded starts the final tournament holds the cheap baselines, so the search is
        // no worse than them on the calibration tokens: losing on held-out text then means the
        // two texts differ (docs/calibration.md).
        if (r.baselines.iter()).any(|b| !b.same_as_search && b.search_beats == Some(false)) {
            println!(
                "note: a baseline beats the search on the held-out text. The search fits its \
                 calibration text, so the held-out text is likely unlike it: calibrate on text \
                 like the one the model will see or, when that is unknown, on text the model \
                 writes itself (`[calibration] windows = 0, generated = 24`; docs/calibration.md)"
            );
        }
    }
    println!("results in {}", outcome.out.display());
    Ok(())
}
