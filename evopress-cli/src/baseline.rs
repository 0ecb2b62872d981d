//! `evopress baseline --config FILE`: a search config's method's one-shot baselines on the
//! same model, calibration and held-out text, for a comparison table.

use crate::METHODS;
use anyhow::Result;
use evopress_kernels::Device;
use evopress_pipeline::{run_baselines, Selection};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A search config: model, calibration, eval, backend, output.dir.
    #[arg(long)]
    pub config: PathBuf,
    /// Baselines by name (repeatable); `cheap` (the default: those a search seeds from) or
    /// `all`. `evopress methods` lists each method's.
    #[arg(long = "method", default_value = "cheap")]
    methods: Vec<String>,
    #[arg(long)]
    quiet: bool,
}

pub fn run(a: Args, dev: &dyn Device) -> Result<()> {
    let selection = match a.methods.as_slice() {
        [one] if one == "cheap" => Selection::Cheap,
        [one] if one == "all" => Selection::All,
        names => Selection::Named(names.to_vec()),
    };
    let rows = run_baselines(METHODS, &a.config, dev, &selection, a.quiet)?;
    for r in &rows {
        println!(
            "{:>16}  held-out perplexity {:.4}  KL to dense {:.5}  ({:.1}s)",
            r.name,
            r.held_out_perplexity,
            r.held_out_kl.unwrap_or(f64::NAN),
            r.seconds
        );
    }
    Ok(())
}
