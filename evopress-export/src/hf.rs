//! HF directories transformers loads: `config.json`, `model.safetensors` and the tokenizer
//! files. Linear layers are written dense, or, with [`SparseFormat::Bitmask`], sparse ones in
//! compressed-tensors' `sparse-bitmask` form (which transformers and compressed-tensors
//! decompress at load).
//!
//! Depth: removed blocks are gone (`num_hidden_layers` counts the rest). transformers has no
//! per-layer switch to skip a Llama/Qwen2/Phi-3 attention or MLP, so a dropped sub-block is
//! written as zero weights (its residual branch then adds exactly zero); in bitmask form those
//! zeros cost only their mask.

use crate::bitmask;
use crate::pieces::{LinearData, OutModel, Piece};
use crate::report::ExportReport;
use crate::st::{self, float_bytes, st_dtype, torch_dtype, weight_bytes, StTensor};
use crate::tokenizer_files::{self, SpecialIds};
use evopress_core::fsutil::write_atomically;
use evopress_core::{Candidate, Error, ModelConfig, ModelSource, Result};
use evopress_kernels::DType;
use safetensors::Dtype;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

/// How sparse (and dropped) linear layers are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SparseFormat {
    /// Every linear layer as a dense matrix.
    Dense,
    /// Sparse and dropped layers in compressed-tensors' `sparse-bitmask` form, dense ones as
    /// they are.
    Bitmask,
}

#[derive(Clone, Copy, Debug)]
pub struct HfOptions {
    /// Element type of every stored weight (sparse values included).
    pub dtype: DType,
    pub sparse: SparseFormat,
}

/// Writes `candidate` as an HF directory in `out` (created).
pub fn write_hf(
    candidate: &Candidate,
    source: &ModelSource,
    out: &Path,
    opts: &HfOptions,
) -> Result<ExportReport> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let model = OutModel::of(candidate)?;
    let mut report = ExportReport {
        layers: model.layout.blocks.len(),
        notes: vec![format!("depth: {}", model.layout.describe())],
        ..Default::default()
    };
    let dtype = opts.dtype;
    let mut tensors: Vec<(String, StTensor<'_>)> = Vec::new();
    let (mut quantized, mut dropped, mut sparse) = (0usize, 0usize, 0usize);
    let (mut zeros, mut weights) = (0usize, 0usize);
    let mut dense_linears: Vec<String> = Vec::new();
    for t in &model.tensors {
        let Piece::Linear {
            data, rows, cols, ..
        } = &t.piece
        else {
            tensors.push((t.name.clone(), plain_tensor(&t.piece, &t.shape, dtype)));
            continue;
        };
        let (rows, cols) = (*rows, *cols);
        report.linear_bf16_bytes += 2 * rows * cols;
        weights += rows * cols;
        match data {
            LinearData::Packed(_) => quantized += 1,
            LinearData::Masked(_) => sparse += 1,
            LinearData::Dropped => dropped += 1,
            LinearData::Dense(_) => {}
        }
        let module = t.name.strip_suffix(".weight").expect("linear weights");
        let as_bitmask = opts.sparse == SparseFormat::Bitmask
            && matches!(data, LinearData::Masked(_) | LinearData::Dropped);
        if as_bitmask {
            let values = data.to_f32(rows, cols);
            let enc = bitmask::encode(&values, rows, cols, dtype);
            zeros += rows * cols - enc.nnz;
            for (name, tensor) in bitmask_tensors(module, enc, dtype) {
                report.linear_bytes += tensor.n_bytes();
                tensors.push((name, tensor));
            }
        } else {
            if opts.sparse == SparseFormat::Bitmask {
                dense_linears.push(module.to_string());
            }
            if let LinearData::Masked(_) = data {
                zeros += data
                    .to_f32(rows, cols)
                    .iter()
                    .filter(|&&v| v == 0.0)
                    .count();
            }
            let tensor = StTensor::new(
                st_dtype(dtype),
                t.shape.clone(),
                Box::new(move || float_bytes(&data.to_f32(rows, cols), dtype)),
            );
            report.linear_bytes += tensor.n_bytes();
            tensors.push((t.name.clone(), tensor));
        }
    }
    if quantized > 0 {
        report.notes.push(format!(
            "{quantized} quantized linear layers written as the dense {} matrices they stand for \
             (--to gptq or --to gguf keeps their codes)",
            dtype.name()
        ));
    }
    let mut quantization_config = None;
    match opts.sparse {
        SparseFormat::Bitmask => {
            report.notes.push(format!(
                "{sparse} sparse and {dropped} dropped-sub-block linear layers in \
                 compressed-tensors sparse-bitmask form, {} dense linear layers as they are; \
                 {zeros} of {weights} linear weights are zero",
                dense_linears.len()
            ));
            let mut ignore = dense_linears;
            ignore.push("lm_head".into());
            quantization_config = Some(json!({
                "quant_method": "compressed-tensors",
                "version": "0.9.0",
                "sparsity_config": {
                    "format": "sparse-bitmask",
                    "global_sparsity": zeros as f64 / weights.max(1) as f64,
                    "sparsity_structure": "unstructured",
                    "targets": ["Linear"],
                    "ignore": ignore,
                },
            }));
        }
        SparseFormat::Dense => {
            if sparse > 0 {
                report.notes.push(format!(
                    "{sparse} sparse linear layers written dense ({zeros} of {weights} linear \
                     weights are zero)"
                ));
            }
            if dropped > 0 {
                report.notes.push(format!(
                    "{dropped} linear layers of dropped sub-blocks written as dense zeros \
                     (transformers has no per-layer switch to skip an attention or MLP)"
                ));
            }
        }
    }

    let weights_path = out.join("model.safetensors");
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    st::write(&weights_path, tensors, metadata)?;
    report.files.push(weights_path);
    let ids = tokenizer_files::write(out, source, &model.config)?;
    let mut config = config_json(&model.config, &ids, dtype);
    if let Some(q) = quantization_config {
        config["quantization_config"] = q;
    }
    let config_path = out.join("config.json");
    write_json(&config_path, &config)?;
    report.files.push(config_path);
    Ok(report)
}

/// A norm, bias, embedding or head tensor in `dtype`.
pub(crate) fn plain_tensor<'a>(piece: &Piece<'a>, shape: &[usize], dtype: DType) -> StTensor<'a> {
    let encode: st::Encoder<'a> = match piece {
        Piece::Vector(v) => {
            let v: &'a [f32] = v;
            Box::new(move || float_bytes(v, dtype))
        }
        Piece::Matrix(w) => {
            let w = *w;
            Box::new(move || weight_bytes(w, dtype))
        }
        Piece::Linear { .. } => unreachable!("linear layers are written by the format"),
    };
    StTensor::new(st_dtype(dtype), shape.to_vec(), encode)
}

/// The four tensors of a bitmask-encoded weight.
fn bitmask_tensors(
    module: &str,
    enc: bitmask::Bitmask,
    dtype: DType,
) -> Vec<(String, StTensor<'static>)> {
    let shape = [enc.rows as i64, enc.cols as i64];
    let row_bytes = bitmask::mask_row_bytes(enc.cols);
    let (rows, nnz) = (enc.rows, enc.nnz);
    let (mask, values, offsets) = (enc.mask, enc.values, enc.row_offsets);
    vec![
        (
            format!("{module}.shape"),
            StTensor::new(
                Dtype::I64,
                vec![2],
                Box::new(move || bytemuck::cast_slice(&shape).to_vec()),
            ),
        ),
        (
            format!("{module}.compressed"),
            StTensor::new(st_dtype(dtype), vec![nnz], Box::new(move || values.clone())),
        ),
        (
            format!("{module}.bitmask"),
            StTensor::new(
                Dtype::U8,
                vec![rows, row_bytes],
                Box::new(move || mask.clone()),
            ),
        ),
        (
            format!("{module}.row_offsets"),
            StTensor::new(
                Dtype::I64,
                vec![rows],
                Box::new(move || bytemuck::cast_slice(&offsets).to_vec()),
            ),
        ),
    ]
}

/// `config.json` for the exported model: the architecture with its new layer count, the
/// special token ids (a pad id always, so generation never invents one) and the dtype.
pub(crate) fn config_json(cfg: &ModelConfig, ids: &SpecialIds, dtype: DType) -> Value {
    let mut v = cfg.to_hf_json();
    v["torch_dtype"] = torch_dtype(dtype).into();
    if let Some(b) = ids.bos {
        v["bos_token_id"] = b.into();
    }
    if let Some(e) = ids.eos {
        v["eos_token_id"] = e.into();
    }
    if let Some(p) = ids.pad.filter(|&p| (p as usize) < cfg.vocab_size) {
        v["pad_token_id"] = p.into();
    }
    v
}

pub(crate) fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).expect("a JSON value serializes") + "\n";
    write_atomically(path, text.as_bytes())
}
