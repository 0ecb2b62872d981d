//! `evopress convert`: write an HF directory (config.json, tokenizer.json, model.safetensors)
//! that HF transformers and this tool load with identical logits, optionally of a compressed
//! model (a depth, sparsity or bit-width config applied: see [`CandidateArgs`]).

use crate::candidate::{replace_tensors, CandidateArgs};
use anyhow::{Context, Result};
use evopress_core::hf::write_hf_dir;
use evopress_core::source::read_all;
use evopress_core::{Model, ModelSource};
use evopress_kernels::DType;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A `.gguf` file or an HF directory.
    #[arg(long)]
    model: PathBuf,
    /// Output directory (created).
    #[arg(long)]
    out: PathBuf,
    /// Element type of the written weights. f32 keeps dequantized GGUF weights exact.
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    dtype: String,
    /// Write the model compressed by these configs (sparse and quantized layers as the dense
    /// matrices they stand for, dropped sub-blocks as zero output projections).
    #[command(flatten)]
    compress: CandidateArgs,
}

pub fn run(a: Args) -> Result<()> {
    let src =
        ModelSource::open(&a.model).with_context(|| format!("opening {}", a.model.display()))?;
    let config = src.config()?;
    let dtype = match a.dtype.as_str() {
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        _ => DType::F32,
    };
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut tensors = read_all(src.tensors())?;
    let compressed = a
        .compress
        .apply(&Model::from_source(config.clone(), src.tensors())?)?;
    if !compressed.report.is_empty() {
        replace_tensors(&compressed.candidate, &mut tensors)?;
    }
    for line in crate::candidate::describe(&compressed.report) {
        println!("{line}");
    }
    write_hf_dir(&a.out, &config, tensors, dtype)?;
    if let Some(tok) = src.tokenizer()? {
        tok.save(a.out.join("tokenizer.json"))?;
    }
    println!("wrote {}", a.out.display());
    Ok(())
}
