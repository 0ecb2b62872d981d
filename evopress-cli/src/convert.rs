//! `evopress convert`: write an HF directory (config.json, tokenizer.json, model.safetensors)
//! that HF transformers and this tool load with identical logits, optionally of a compressed
//! model (any method's result files applied: see [`ConfigArgs`]).

use crate::configs::ConfigArgs;
use anyhow::{Context, Result};
use evopress_core::hf::write_hf_dir;
use evopress_core::source::read_all;
use evopress_core::units::linear_units;
use evopress_core::Candidate;
use evopress_core::{Model, ModelSource};
use evopress_kernels::DType;
use evopress_kernels::Weight;
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
    configs: ConfigArgs,
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
    if !a.configs.is_empty() {
        let model = Model::from_source(config.clone(), src.tensors())?;
        let (candidate, report) = a.configs.configs().apply(&model)?;
        replace_tensors(&candidate, &mut tensors)?;
        for line in &report.summary {
            println!("{line}");
        }
    }
    write_hf_dir(&a.out, &config, tensors, dtype)?;
    if let Some(tok) = src.tokenizer()? {
        tok.save(a.out.join("tokenizer.json"))?;
    }
    println!("wrote {}", a.out.display());
    Ok(())
}

/// The candidate's weights under their HF names, replacing the dense ones in `tensors`: every
/// compressed unit as the dense matrix it stands for, and every dropped sub-block as a zero
/// output projection (its residual branch then adds exactly nothing, so any tool that loads
/// the directory computes what our forward pass computes).
fn replace_tensors(candidate: &Candidate, tensors: &mut [(String, Weight)]) -> Result<()> {
    let model = &candidate.model;
    let mut replaced: Vec<(String, Weight)> = Vec::new();
    for unit in linear_units(model) {
        let mut data = Vec::with_capacity(unit.numel());
        for p in &unit.parts {
            data.extend(model.linear(unit.block, p.kind).weight.to_f32_vec());
        }
        replaced.push((
            format!("{}.weight", unit.name),
            Weight::from_f32(unit.rows, unit.cols, data),
        ));
    }
    for (b, p) in candidate.plan.iter().enumerate() {
        let layer = &model.layers[b];
        let zero = |w: &Weight| Weight::from_f32(w.rows, w.cols, vec![0.0; w.numel()]);
        if !p.attn {
            let o = &layer.self_attn.o_proj.weight;
            replaced.push((format!("model.layers.{b}.self_attn.o_proj.weight"), zero(o)));
        }
        if !p.mlp {
            let d = &layer.mlp.down_proj.weight;
            replaced.push((format!("model.layers.{b}.mlp.down_proj.weight"), zero(d)));
        }
    }
    for (name, w) in replaced {
        let slot = tensors
            .iter_mut()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| anyhow::anyhow!("the model file has no tensor `{name}`"))?;
        slot.1 = w;
    }
    Ok(())
}
