//! `evopress`: non-uniform compression of language models (EvoPress), on CPU or GPU.
//!
//! The binary is thin: it parses flags and config files, calls the library crates, prints
//! progress and writes results. Each subcommand lives in its own module.

mod baseline;
mod baseline_sparse;
mod bench;
mod build_db;
mod candidate;
mod convert;
mod eval;
mod generate;
mod plot;
mod progress;
mod quant;
mod run_config;
mod search;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "evopress", version, about)]
struct Cli {
    /// Worker threads for compute (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Perplexity of a model on text files (the original EvoPress protocol).
    Eval(eval::Args),
    /// Greedy decoding from a prompt.
    Generate(generate::Args),
    /// Convert a GGUF file (or HF directory) into an HF directory other tools load.
    Convert(convert::Args),
    /// EvoPress search for a compression backend, described by a TOML file.
    Search(search::Args),
    /// One-shot baselines for comparison with the search.
    #[command(subcommand)]
    Baseline(baseline::Command),
    /// Build (or resume) a variant database described by a TOML file.
    BuildDb(build_db::Args),
    /// Speed measurements.
    #[command(subcommand)]
    Bench(bench::Command),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()?;
    }
    match cli.command {
        Command::Eval(a) => eval::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Search(a) => search::run(a),
        Command::Baseline(c) => baseline::run(c),
        Command::Bench(c) => bench::run(c),
        Command::BuildDb(a) => build_db::run(a),
    }
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename; see
/// [`evopress_core::fsutil`]).
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    Ok(evopress_core::fsutil::write_atomically(path, bytes)?)
}
