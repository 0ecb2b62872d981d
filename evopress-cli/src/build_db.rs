//! `evopress build-db --config FILE`: build (or resume) a variant database.
//!
//! ```toml
//! [model]        path = "..."
//! [calibration]  files, seq_len, windows, sampling, seed   (as in a search config)
//! [database]     kind = "sparsegpt" | "owl" | "gptq" | ..., dir = "...", then the method's parameters
//! ```

use crate::METHODS;
use anyhow::Result;
use evopress_kernels::Device;
use evopress_pipeline::run_build;
use std::num::NonZeroUsize;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The database's TOML file (see `examples/sparse-db-50.toml`).
    #[arg(long)]
    pub config: PathBuf,
    /// Build at most this many blocks in this invocation (the store stays resumable).
    #[arg(long)]
    stop_after_blocks: Option<NonZeroUsize>,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

pub fn run(a: Args, dev: &dyn Device) -> Result<()> {
    let stop = a.stop_after_blocks.map(NonZeroUsize::get);
    let b = run_build(METHODS, &a.config, dev, stop, a.quiet)?;
    let s = &b.summary;
    let f = |key: &str| s[key].as_f64().unwrap_or(0.0);
    println!(
        "{} blocks built this run in {:.1}s ({}/{} blocks on disk{})",
        b.blocks_built,
        b.seconds,
        s["blocks"],
        b.blocks_total,
        if b.complete {
            ", complete"
        } else {
            "; resume with the same command"
        },
    );
    println!(
        "stored {:.2} MB vs original layout {:.2} MB ({:.3}x); {:.2}s per block, {:.2}s per layer",
        f("stored_bytes") / 1e6,
        f("original_layout_bytes") / 1e6,
        f("ratio_stored_to_original"),
        f("mean_seconds_per_block"),
        f("mean_seconds_per_layer"),
    );
    println!("summary in {}", b.dir.join("build.json").display());
    Ok(())
}
