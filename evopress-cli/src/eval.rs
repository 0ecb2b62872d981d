//! `evopress eval`: perplexity of a model on text files.

use crate::candidate::CandidateArgs;
use crate::progress;
use anyhow::{Context, Result};
use evopress_core::data::{self, TokenizedFile};
use evopress_core::gguf::GgufWeights;
use evopress_core::{load_model_with, LoadOptions};
use evopress_kernels::cpu::Cpu;
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
    #[command(flatten)]
    compress: CandidateArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// What GGUF tensors in llama.cpp block formats load as: `packed` (kept in their blocks,
    /// decoded inside each matmul), `f32` or `f16` (decoded at load).
    #[arg(long, default_value = "packed", value_parser = crate::bench::parse_gguf_weights)]
    gguf_weights: GgufWeights,
}

pub fn run(a: Args) -> Result<()> {
    let t0 = Instant::now();
    let options = LoadOptions {
        gguf_weights: a.gguf_weights,
    };
    let loaded = load_model_with(&a.model, options)
        .with_context(|| format!("loading {}", a.model.display()))?;
    let tokenizer = loaded.tokenizer()?;
    let files = a
        .data
        .iter()
        .map(|p| TokenizedFile::read(p, tokenizer))
        .collect::<Result<Vec<_>, _>>()?;
    let windows = data::windows(&files, a.seq_len, a.windows)?;
    let compressed = a.compress.apply(&loaded.model)?;
    let (model, plan) = (&compressed.candidate.model, &compressed.candidate.plan);
    let bar = progress::bar(windows.len(), "windows", a.json);
    let t1 = Instant::now();
    let sum = data::perplexity(model, &Cpu, &windows, plan, |i| bar.set_position(i as u64))?;
    bar.finish_and_clear();
    let seconds = t1.elapsed().as_secs_f64();
    if a.json {
        let mut out = serde_json::json!({
            "model": a.model,
            "data": a.data,
            "seq_len": a.seq_len,
            "windows": windows.len(),
            "perplexity": sum.perplexity(),
            "nll": sum.nll / sum.tokens as f64,
            "tokens_scored": sum.tokens,
            "seconds": seconds,
            "load_seconds": (t1 - t0).as_secs_f64(),
            "peak_rss_mb": crate::bench::peak_rss_bytes().map(|b| b as f64 / 1e6),
        });
        out.as_object_mut()
            .expect("an object")
            .extend(compressed.report);
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
        for line in crate::candidate::describe(&compressed.report) {
            println!("{line}");
        }
    }
    Ok(())
}
