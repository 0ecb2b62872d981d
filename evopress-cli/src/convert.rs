//! `evopress convert`: write a model, optionally compressed by any method's result files
//! ([`ConfigArgs`]), in a format other tools deploy (the `evopress-export` crate): an HF
//! directory, a GPTQ checkpoint directory or a GGUF file.

use crate::configs::ConfigArgs;
use anyhow::{bail, Context, Result};
use evopress_core::units::linear_units;
use evopress_core::{Model, ModelSource};
use evopress_export::gguf::{DenseType, GgufOptions, GgufQuant};
use evopress_export::gptq::{GptqFormat, GptqOptions};
use evopress_export::hf::{HfOptions, SparseFormat};
use evopress_kernels::DType;
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A `.gguf` file or an HF directory.
    #[arg(long)]
    model: PathBuf,
    /// Output: a directory for hf and gptq (created), a file for gguf.
    #[arg(long)]
    out: PathBuf,
    /// hf: transformers directory; gptq: GPTQ checkpoint of a bit-width result; gguf: llama.cpp
    /// file (needs a GGUF model).
    #[arg(long, default_value = "hf", value_parser = ["hf", "gptq", "gguf"])]
    to: String,
    /// hf: dense | sparse-bitmask (default: sparse-bitmask when the model has sparse layers);
    /// gptq: auto | gptq | gptq_v2 (zero-point convention, default auto);
    /// gguf: compact | exact (quantized layers in Q4_1 where they fit, or all in exact Q8_0).
    #[arg(long)]
    format: Option<String>,
    /// Element type of dense weights (hf, and re-encoded dense tensors of gguf). f32 keeps
    /// dequantized GGUF weights exact; q8_0 (gguf only) halves F16's size.
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16", "q8_0"])]
    dtype: String,
    #[command(flatten)]
    configs: ConfigArgs,
}

pub fn run(a: Args) -> Result<()> {
    let src =
        ModelSource::open(&a.model).with_context(|| format!("opening {}", a.model.display()))?;
    let dtype = match a.dtype.as_str() {
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        _ => DType::F32,
    };
    if a.dtype == "q8_0" && a.to != "gguf" {
        bail!("--dtype q8_0 is a GGUF type: use it with --to gguf");
    }
    let model = Model::from_source(src.config()?, src.tensors())?;
    let (candidate, compressed) = a.configs.configs().apply(&model)?;
    for line in &compressed.summary {
        println!("{line}");
    }
    let format = a.format.as_deref();
    let report = match a.to.as_str() {
        "gptq" => {
            let format = match format.unwrap_or("auto") {
                "auto" => GptqFormat::Auto,
                "gptq" => GptqFormat::V1,
                "gptq_v2" => GptqFormat::V2,
                other => bail!("--format {other}: gptq formats are auto, gptq, gptq_v2"),
            };
            evopress_export::gptq::write_gptq(&candidate, &src, &a.out, &GptqOptions { format })
        }
        "gguf" => {
            let quant = match format.unwrap_or("compact") {
                "compact" => GgufQuant::Compact,
                "exact" => GgufQuant::Exact,
                other => bail!("--format {other}: gguf formats are compact, exact"),
            };
            let dense = match a.dtype.as_str() {
                "q8_0" => DenseType::Q8_0,
                _ => DenseType::Float(dtype),
            };
            let opts = GgufOptions { dense, quant };
            evopress_export::gguf::write_gguf(&candidate, &src, &a.out, &opts, HashMap::new())
        }
        _ => {
            let has_masked = (linear_units(&candidate.model).iter())
                .flat_map(|u| u.parts.iter().map(move |p| (u.block, p.kind)))
                .any(|(b, k)| candidate.model.linear(b, k).weight.as_masked().is_some());
            let sparse = match format {
                None if has_masked => SparseFormat::Bitmask,
                None | Some("dense") => SparseFormat::Dense,
                Some("sparse-bitmask") => SparseFormat::Bitmask,
                Some(other) => bail!("--format {other}: hf formats are dense, sparse-bitmask"),
            };
            evopress_export::hf::write_hf(&candidate, &src, &a.out, &HfOptions { dtype, sparse })
        }
    }
    .with_context(|| format!("writing {}", a.out.display()))?;
    for line in report.lines() {
        println!("{line}");
    }
    println!("wrote {}", a.out.display());
    Ok(())
}
