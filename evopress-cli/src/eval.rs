//! `evopress eval`: perplexity of a model on text files.

use crate::progress;
use anyhow::{Context, Result};
use evopress_core::data::{self, TokenizedFile};
use evopress_core::{load_model, BlockPlan};
use evopress_kernels::cpu::Cpu;
use evopress_prune::drop_config;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// A `.gguf` file or an HF directory.
    #[arg(long)]
    model: PathBuf,
    /// Text files; windows are cut from each file in order.
    #[arg(long, num_args = 1.., required = true)]
    data: Vec<PathBuf>,
    /// Tokens per window.
    #[arg(long, default_value_t = 512)]
    seq_len: usize,
    /// Number of windows to score (default: all).
    #[arg(long)]
    windows: Option<usize>,
    /// Drop the sub-blocks a depth config names (original `layer_drop_config.txt` or our TOML).
    #[arg(long)]
    drop_config: Option<PathBuf>,
    /// Prune the linear layers to the levels a sparsity config names (the original
    /// `name: level` text or our TOML), taken from `--database`.
    #[arg(long, requires = "database", conflicts_with = "quant_config")]
    sparse_config: Option<PathBuf>,
    /// Per-layer bit widths (original `name: bits` format or our TOML) over `--database`.
    #[arg(long, requires = "database")]
    quant_config: Option<PathBuf>,
    /// The variant database `--sparse-config` or `--quant-config` picks variants from.
    #[arg(long)]
    database: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let t0 = Instant::now();
    let loaded = load_model(&a.model).with_context(|| format!("loading {}", a.model.display()))?;
    let tokenizer = loaded.tokenizer()?;
    let files = a
        .data
        .iter()
        .map(|p| TokenizedFile::read(p, tokenizer))
        .collect::<Result<Vec<_>, _>>()?;
    let windows = data::windows(&files, a.seq_len, a.windows)?;
    let n = loaded.model.layers.len();
    let plan = match &a.drop_config {
        Some(p) => drop_config::plan(&drop_config::read(p, n)?),
        None => vec![BlockPlan::FULL; n],
    };
    let sparse_model = match (&a.sparse_config, &a.database) {
        (Some(cfg), Some(db)) => {
            let backend = evopress_sparse::SparseBackend::open(&loaded.model, db)
                .with_context(|| format!("opening the database {}", db.display()))?;
            let genome = backend.read_config(cfg)?;
            Some(backend.candidate(&loaded.model, &genome)?.model)
        }
        _ => None,
    };
    let model = sparse_model.as_ref().unwrap_or(&loaded.model);
    let counted = sparse_model.as_ref().map(crate::search::CountedZeros::of);
    let quant = match (&a.quant_config, &a.database) {
        (Some(cfg), Some(db)) => Some(crate::quant::assemble_from_config(&loaded.model, db, cfg)?),
        _ => None,
    };
    let model = quant.as_ref().map_or(model, |q| &q.model);
    let bar = progress::bar(windows.len(), "windows", a.json);
    let t1 = Instant::now();
    let sum = data::perplexity(model, &Cpu, &windows, &plan, |i| bar.set_position(i as u64))?;
    bar.finish_and_clear();
    let seconds = t1.elapsed().as_secs_f64();
    if a.json {
        let out = serde_json::json!({
            "model": a.model,
            "data": a.data,
            "seq_len": a.seq_len,
            "windows": windows.len(),
            "perplexity": sum.perplexity(),
            "nll": sum.nll / sum.tokens as f64,
            "tokens_scored": sum.tokens,
            "seconds": seconds,
            "load_seconds": (t1 - t0).as_secs_f64(),
            "drop_config": a.drop_config,
            "sparse_config": a.sparse_config,
            "database": a.database,
            "counted_zeros": counted.as_ref().map(|c| c.zeros),
            "weights": counted.as_ref().map(|c| c.weights),
            "counted_sparsity": counted.as_ref().map(|c| c.sparsity),
            "quant_config": a.quant_config,
            "average_bits": quant.as_ref().map(|q| q.average_bits),
            "stored_bytes": quant.as_ref().map(|q| q.stored_bytes),
            "stored_bits_per_weight": quant.as_ref().map(|q| q.stored_bits_per_weight),
            "peak_rss_mb": crate::bench::peak_rss_bytes().map(|b| b as f64 / 1e6),
        });
        println!("{out}");
    } else {
        println!(
            "perplexity {:.4} over {} tokens ({} windows of {}) in {:.1}s",
            sum.perplexity(),
            sum.tokens,
            windows.len(),
            a.seq_len,
            seconds
        );
        if let Some(c) = &counted {
            println!(
                "counted zeros in the linear layers: {} / {} = {:.6}",
                c.zeros, c.weights, c.sparsity
            );
        }
        if let Some(q) = &quant {
            println!(
                "quantized: {:.4} average bits per weight, {} bytes stored ({:.4} bits per \
                 weight with scales and zeros)",
                q.average_bits, q.stored_bytes, q.stored_bits_per_weight
            );
        }
    }
    Ok(())
}
