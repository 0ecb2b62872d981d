//! `evopress eval`: perplexity of a model, dense or compressed, on text files, and optionally
//! its KL to the model as loaded.

use crate::configs::ConfigArgs;
use anyhow::{Context, Result};
use evopress_core::data::{self, TokenizedFile};
use evopress_core::gguf::GgufWeights;
use evopress_core::held_out::DenseReference;
use evopress_core::{load_model_with, LoadOptions};
use evopress_kernels::Device;
use evopress_pipeline::progress;
use std::num::NonZeroUsize;
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
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(2..))]
    seq_len: u32,
    /// Number of windows to score (default: all).
    #[arg(long)]
    windows: Option<NonZeroUsize>,
    #[command(flatten)]
    configs: ConfigArgs,
    /// What GGUF block-format tensors load as: kept packed (default: exact, smallest), or
    /// decoded to f32 or f16 at load.
    #[arg(long, default_value = "packed", value_parser = crate::bench::parse_gguf_weights)]
    gguf_weights: GgufWeights,
    /// Also report the mean per-token KL(dense || model) on the same windows, where dense is
    /// the model as loaded, before `--*-config` files apply (one extra dense pass per window).
    #[arg(long)]
    kl_to_dense: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, dev: &dyn Device) -> Result<()> {
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
    let seq_len = a.seq_len as usize;
    let windows = data::windows(&files, seq_len, a.windows.map(NonZeroUsize::get))?;
    let (candidate, report) = a.configs.configs().apply(&loaded.model)?;
    let t1 = Instant::now();
    let (sum, kl) = if a.kl_to_dense {
        let bar = progress::bar(windows.len(), "dense windows", a.json);
        let owned = windows.iter().map(|w| w.to_vec()).collect();
        let reference =
            DenseReference::new(&loaded.model, dev, owned, |i| bar.set_position(i as u64))?;
        bar.finish_and_clear();
        let bar = progress::bar(windows.len(), "windows", a.json);
        let score = reference.score(dev, &candidate.model, &candidate.plan, |i| {
            bar.set_position(i as u64)
        })?;
        bar.finish_and_clear();
        (
            score.nll,
            Some((score.kl(), reference.dense_nll().perplexity())),
        )
    } else {
        let bar = progress::bar(windows.len(), "windows", a.json);
        let sum = data::perplexity(&candidate.model, dev, &windows, &candidate.plan, |i| {
            bar.set_position(i as u64)
        })?;
        bar.finish_and_clear();
        (sum, None)
    };
    let seconds = t1.elapsed().as_secs_f64();
    anyhow::ensure!(
        sum.perplexity().is_finite(),
        "the perplexity is {} (non-finite logits): check the model's weights and the variant \
         database for NaN or inf values",
        sum.perplexity()
    );
    if a.json {
        let mut out = serde_json::json!({
            "model": a.model,
            "data": a.data,
            "seq_len": seq_len,
            "windows": windows.len(),
            "perplexity": sum.perplexity(),
            "nll": sum.nll / sum.tokens as f64,
            "tokens_scored": sum.tokens,
            "seconds": seconds,
            "load_seconds": (t1 - t0).as_secs_f64(),
            "peak_rss_mb": crate::bench::peak_rss_bytes().map(|b| b as f64 / 1e6),
        });
        if let (Some(o), Some((kl, dense))) = (out.as_object_mut(), kl) {
            o.insert("kl_to_dense".into(), kl.into());
            o.insert("dense_perplexity".into(), dense.into());
        }
        let fields = serde_json::to_value(&report.fields)?;
        if let (Some(o), serde_json::Value::Object(f)) = (out.as_object_mut(), fields) {
            o.extend(f);
        }
        println!("{out}");
    } else {
        println!(
            "perplexity {:.4} over {} tokens ({} windows of {seq_len}) in {:.1}s",
            sum.perplexity(),
            sum.tokens,
            windows.len(),
            seconds
        );
        if let Some((kl, dense)) = kl {
            println!("KL to the dense model {kl:.6} nats/token (dense perplexity {dense:.4})");
        }
        for line in &report.summary {
            println!("{line}");
        }
    }
    Ok(())
}
