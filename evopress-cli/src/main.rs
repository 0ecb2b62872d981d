//! `evopress`: non-uniform compression of language models (EvoPress), on CPU or GPU.
//!
//! The binary is thin: it parses flags and config files, calls the library crates, prints
//! progress and writes results. Each subcommand lives in its own module.

mod bench;
mod convert;
mod eval;
mod generate;
mod progress;

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
        Command::Bench(c) => bench::run(c),
    }
}
