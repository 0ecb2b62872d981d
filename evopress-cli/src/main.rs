//! `evopress`: non-uniform compression of language models (EvoPress), on CPU or GPU.
//!
//! The binary is thin: it parses flags, calls `evopress-pipeline` with the registered methods,
//! and prints. Each subcommand lives in its own module.

mod baseline;
mod bench;
mod build_db;
mod configs;
mod convert;
mod device;
mod eval;
mod generate;
mod search;

use clap::{Parser, Subcommand};
use evopress_core::Method;
use std::process::ExitCode;

/// The compression methods this build knows: one line per method crate.
pub static METHODS: &[&dyn Method] = &[
    &evopress_prune::DEPTH,
    &evopress_sparse::SPARSE,
    &evopress_quant::QUANT,
    &evopress_wanda::WANDA,
    &evopress_gguf::GGUF,
    &evopress_joint::JOINT,
];

#[derive(Parser)]
#[command(name = "evopress", version, about)]
struct Cli {
    /// Worker threads for compute (default: all cores).
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// Where compute runs: cpu, cuda or cuda:N (default: a config file's `device`, else cpu).
    #[arg(long, global = true)]
    device: Option<String>,
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
    /// EvoPress search for a compression method, described by a TOML file.
    Search(search::Args),
    /// One-shot baselines of a search config's method, scored on its held-out text.
    Baseline(baseline::Args),
    /// Build (or resume) a variant database described by a TOML file.
    BuildDb(build_db::Args),
    /// Speed measurements.
    #[command(subcommand)]
    Bench(bench::Command),
    /// The compression methods, their database kinds and baselines.
    Methods,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The error chain only: user errors are not crashes, whatever RUST_BACKTRACE says.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n as usize)
            .build_global()?;
    }
    let dev = cli.device.as_deref();
    match cli.command {
        Command::Eval(a) => eval::run(a, &*device::choose(dev, None)?),
        Command::Generate(a) => generate::run(a, &*device::choose(dev, None)?),
        Command::Convert(a) => convert::run(a),
        Command::Search(a) => {
            let d = device::choose(dev, Some(&a.config))?;
            search::run(a, &*d)
        }
        Command::Baseline(a) => {
            let d = device::choose(dev, Some(&a.config))?;
            baseline::run(a, &*d)
        }
        Command::Bench(c) => bench::run(c, dev),
        Command::BuildDb(a) => {
            let d = device::choose(dev, Some(&a.config))?;
            build_db::run(a, &*d)
        }
        Command::Methods => {
            for m in METHODS {
                println!("{:<8} {}", m.name(), m.about());
                if let Some(flag) = m.config_flag() {
                    println!("         eval/convert flag: --{}", flag.long);
                }
                if !m.database_kinds().is_empty() {
                    println!("         database kinds: {}", m.database_kinds().join(", "));
                }
            }
            Ok(())
        }
    }
}
