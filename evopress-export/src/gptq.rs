//! GPTQ checkpoints (AutoGPTQ / GPTQModel layout): every quantized linear layer as
//! `qweight`/`qzeros`/`scales`/`g_idx` holding our codes, zero points and f16 scales exactly,
//! per-layer widths and group sizes as GPTQModel `dynamic` overrides in `quantize_config.json`
//! (and `config.json`'s `quantization_config`).
//!
//! Zero points: GPTQ v1 (`checkpoint_format: "gptq"`) stores `zero − 1`, so a zero point of 0
//! cannot be stored, and GPTQModel only loads asymmetric v1 files it made itself. Our
//! asymmetric min-max grids have zero points anywhere in `[0, 2^b − 1]`, so they are written
//! as `gptq_v2` (zero stored as is), the format GPTQModel uses for asymmetric checkpoints;
//! symmetric ones as v1. A layer whose zero points fall outside what the chosen format holds is
//! an error naming it, never silently changed.
//!
//! Depth: removed blocks are gone; the layers of a dropped attention or MLP are written as
//! quantized layers at the base width whose every weight is exactly zero (code = zero point),
//! so their residual branch adds zero at the cost of a quantized layer, not a dense one. Layers that are not quantized (dense or sparse) are written as plain f16
//! weights and excluded from quantization by a negative `dynamic` rule.

use crate::gptq_pack::{self, Logical};
use crate::hf::{config_json, plain_tensor, write_json};
use crate::pieces::{LinearData, OutModel, Piece};
use crate::report::ExportReport;
use crate::st::{self, float_bytes, StTensor};
use crate::tokenizer_files;
use evopress_core::{Candidate, Error, ModelSource, Result};
use evopress_kernels::weight::packed::unpack_row;
use evopress_kernels::weight::PackedMatrix;
use evopress_kernels::DType;
use half::f16;
use safetensors::Dtype;
use serde_json::{json, Map};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Which zero-point convention to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GptqFormat {
    /// v1 when every layer is symmetric, else v2.
    Auto,
    /// `gptq`: zero − 1 stored (AutoGPTQ, vLLM, exllama); zero points must be ≥ 1.
    V1,
    /// `gptq_v2`: zero stored as is (GPTQModel, and transformers through it).
    V2,
}

#[derive(Clone, Copy, Debug)]
pub struct GptqOptions {
    pub format: GptqFormat,
}

/// Widths AutoGPTQ-era readers (and transformers' `GPTQConfig`) accept; 5-7 bits need
/// GPTQModel's split-plane layout.
const CLASSIC_WIDTHS: [u8; 4] = [2, 3, 4, 8];

/// One linear layer of the export, as GPTQ sees it.
enum Module<'a> {
    Quantized(Logical),
    /// Written as a plain f16 weight.
    Plain(&'a LinearData<'a>, usize, usize),
}

/// Writes `candidate` as a GPTQ checkpoint directory in `out` (created).
pub fn write_gptq(
    candidate: &Candidate,
    source: &ModelSource,
    out: &Path,
    opts: &GptqOptions,
) -> Result<ExportReport> {
    let model = OutModel::of(candidate)?;
    let mut report = ExportReport {
        layers: model.layout.blocks.len(),
        notes: vec![format!("depth: {}", model.layout.describe())],
        ..Default::default()
    };
    // Every quantized layer in logical form, checked before anything is written.
    let mut problems: Vec<String> = Vec::new();
    let mut logicals: HashMap<&str, Logical> = HashMap::new();
    for t in &model.tensors {
        if let Piece::Linear {
            data: LinearData::Packed(p),
            ..
        } = &t.piece
        {
            let name = t.name.strip_suffix(".weight").expect("linear weights");
            match logical(p) {
                Ok(l) => {
                    logicals.insert(name, l);
                }
                Err(e) => problems.push(format!("{name}: {e}")),
            }
        }
    }
    // The base setting is the most common one (a width older readers know, if any layer has
    // one); every other layer gets a `dynamic` override.
    let setting = |l: &Logical| (l.bits, l.group_size, act_order(l));
    let mut counts: BTreeMap<(u8, usize, bool), usize> = BTreeMap::new();
    for l in logicals.values() {
        *counts.entry(setting(l)).or_default() += 1;
    }
    let Some(base) = counts
        .iter()
        .max_by_key(|(s, n)| (CLASSIC_WIDTHS.contains(&s.0), **n))
        .map(|(s, _)| *s)
    else {
        return Err(Error::Invalid(if problems.is_empty() {
            "the candidate has no quantized linear layer: write it with --to hf instead".into()
        } else {
            format!(
                "no linear layer can be stored as GPTQ:\n  {}",
                problems.join("\n  ")
            )
        }));
    };

    // Every linear layer, in order: quantized ones, dropped ones as zero layers at the base
    // setting (no override needed), the rest plain.
    let mut modules: Vec<(String, Module<'_>)> = Vec::new();
    let mut dropped = 0usize;
    for t in &model.tensors {
        if let Piece::Linear {
            data, rows, cols, ..
        } = &t.piece
        {
            let name = t.name.strip_suffix(".weight").expect("linear weights");
            let m = match data {
                LinearData::Packed(_) => match logicals.remove(name) {
                    Some(l) => Module::Quantized(l),
                    None => continue,
                },
                LinearData::Dropped => {
                    dropped += 1;
                    Module::Quantized(zero_layer(*rows, *cols, base.0, base.1))
                }
                other => Module::Plain(other, *rows, *cols),
            };
            modules.push((name.to_string(), m));
        }
    }
    let quantized: Vec<(&str, &Logical)> = modules
        .iter()
        .filter_map(|(n, m)| match m {
            Module::Quantized(l) => Some((n.as_str(), l)),
            Module::Plain(..) => None,
        })
        .collect();
    let symmetric = quantized
        .iter()
        .all(|(_, l)| l.zeros.iter().all(|&z| z == 1 << (l.bits - 1)));
    let v1 = match opts.format {
        GptqFormat::V1 => true,
        GptqFormat::V2 => false,
        GptqFormat::Auto => symmetric,
    };
    let zero_offset = i32::from(v1);
    problems.extend(quantized.iter().filter_map(|(n, l)| {
        gptq_pack::unrepresentable(l, zero_offset).map(|p| format!("{n}: {p}"))
    }));
    if !problems.is_empty() {
        return Err(Error::Invalid(format!(
            "{} linear layers cannot be stored as GPTQ {}:\n  {}",
            problems.len(),
            if v1 {
                "v1 (checkpoint_format gptq)"
            } else {
                "v2"
            },
            problems.join("\n  ")
        )));
    }

    let mut dynamic = Map::new();
    for (name, m) in &modules {
        let key = format!("{}$", regex_escape(name));
        match m {
            Module::Plain(..) => {
                dynamic.insert(format!("-:{key}"), json!({}));
            }
            Module::Quantized(l) if setting(l) != base => {
                dynamic.insert(
                    format!("+:{key}"),
                    json!({ "bits": l.bits, "group_size": l.group_size, "desc_act": act_order(l) }),
                );
            }
            Module::Quantized(_) => {}
        }
    }

    let mut widths: BTreeMap<u8, usize> = BTreeMap::new();
    for (_, l) in &quantized {
        *widths.entry(l.bits).or_default() += 1;
    }
    report.notes.push(format!(
        "GPTQ {}: {} quantized linear layers by width {:?} (base {} bits, group {}, desc_act {}; \
         {} dynamic overrides), {} plain f16 layers, {dropped} layers of dropped sub-blocks as \
         exact-zero layers at the base setting",
        if v1 {
            "v1 (checkpoint_format gptq, zero - 1 stored)"
        } else {
            "v2 (checkpoint_format gptq_v2, zero stored)"
        },
        quantized.len(),
        widths,
        base.0,
        base.1,
        base.2,
        dynamic.len(),
        modules.len() - quantized.len(),
    ));
    if widths.keys().any(|b| !CLASSIC_WIDTHS.contains(b)) {
        report.notes.push(
            "5/6/7-bit layers use GPTQModel's split-plane packing: GPTQModel reads them; \
             AutoGPTQ, vLLM and transformers' GPTQConfig (bits 2, 3, 4, 8) do not"
                .into(),
        );
    }
    if !dynamic.is_empty() {
        report.notes.push(
            "per-layer settings are GPTQModel `dynamic` overrides: GPTQModel (and vLLM) apply \
             them; transformers' optimum loader ignores them and only loads exports whose \
             quantized layers all share the base setting"
                .into(),
        );
    }

    let quantize_config = json!({
        "bits": base.0,
        "group_size": base.1,
        "desc_act": base.2,
        "sym": symmetric,
        "lm_head": false,
        "quant_method": "gptq",
        "checkpoint_format": if v1 { "gptq" } else { "gptq_v2" },
        "format": if v1 { "gptq" } else { "gptq_v2" },
        "pack_dtype": "int32",
        "true_sequential": true,
        "damp_percent": 0.01,
        "dynamic": dynamic,
        "meta": { "quantizer": [format!("evopress:{}", env!("CARGO_PKG_VERSION"))] },
    });

    // Tensors: plain ones in f16, GPTQ layers as their four tensors.
    let mut tensors: Vec<(String, StTensor<'_>)> = Vec::new();
    let mut by_name: HashMap<&str, &Module<'_>> =
        modules.iter().map(|(n, m)| (n.as_str(), m)).collect();
    for t in &model.tensors {
        report.linear_bf16_bytes += match t.piece {
            Piece::Linear { rows, cols, .. } => 2 * rows * cols,
            _ => 0,
        };
        let Piece::Linear { .. } = t.piece else {
            tensors.push((t.name.clone(), plain_tensor(&t.piece, &t.shape, DType::F16)));
            continue;
        };
        let name = t.name.strip_suffix(".weight").expect("linear weights");
        let module = by_name
            .remove(name)
            .expect("every linear layer has a module");
        match module {
            Module::Plain(data, rows, cols) => {
                let (data, rows, cols) = (*data, *rows, *cols);
                let tensor = StTensor::new(
                    Dtype::F16,
                    vec![rows, cols],
                    Box::new(move || float_bytes(&data.to_f32(rows, cols), DType::F16)),
                );
                report.linear_bytes += tensor.n_bytes();
                tensors.push((t.name.clone(), tensor));
            }
            Module::Quantized(l) => {
                let g = gptq_pack::pack(l, zero_offset);
                let (rows, cols, b, groups) = (l.rows, l.cols, l.bits as usize, l.groups);
                let parts: Vec<(&str, StTensor<'_>)> = vec![
                    ("qweight", int_tensor(vec![cols * b / 32, rows], g.qweight)),
                    ("qzeros", int_tensor(vec![groups, rows * b / 32], g.qzeros)),
                    ("g_idx", int_tensor(vec![cols], g.g_idx)),
                    (
                        "scales",
                        StTensor::new(
                            Dtype::F16,
                            vec![groups, rows],
                            Box::new(move || bytemuck::cast_slice(&g.scales).to_vec()),
                        ),
                    ),
                ];
                for (suffix, tensor) in parts {
                    report.linear_bytes += tensor.n_bytes();
                    tensors.push((format!("{name}.{suffix}"), tensor));
                }
            }
        }
    }

    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let weights_path = out.join("model.safetensors");
    let metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("quantizer".to_string(), "evopress".to_string()),
    ]);
    st::write(&weights_path, tensors, metadata)?;
    report.files.push(weights_path);
    let ids = tokenizer_files::write(out, source, &model.config)?;
    let mut config = config_json(&model.config, &ids, DType::F16);
    config["quantization_config"] = quantize_config.clone();
    for (name, v) in [
        ("config.json", &config),
        ("quantize_config.json", &quantize_config),
    ] {
        let p = out.join(name);
        write_json(&p, v)?;
        report.files.push(p);
    }
    Ok(report)
}

fn int_tensor(shape: Vec<usize>, values: Vec<i32>) -> StTensor<'static> {
    StTensor::new(
        Dtype::I32,
        shape,
        Box::new(move || bytemuck::cast_slice(&values).to_vec()),
    )
}

/// Whether the layer's groups follow a permutation (act-order) rather than column order.
fn act_order(l: &Logical) -> bool {
    l.g_idx
        .iter()
        .enumerate()
        .any(|(c, &g)| g as usize != c / l.group_size)
}

/// A packed matrix's codes, zero points and scales in the layer's own column order.
fn logical(m: &PackedMatrix) -> std::result::Result<Logical, String> {
    let (rows, cols, gs) = (m.rows(), m.cols(), m.group_size());
    let groups = m.n_groups();
    let p = m.parts();
    let codes_words = p.codes.as_slice();
    let wpr = m.words_per_row();
    let perm = m.perm();
    let mut codes = vec![0u8; rows * cols];
    let mut row = vec![0f32; cols];
    for r in 0..rows {
        unpack_row(&codes_words[r * wpr..(r + 1) * wpr], m.bits(), &mut row);
        for (k, &q) in row.iter().enumerate() {
            let c = perm.map_or(k, |p| p[k] as usize);
            codes[r * cols + c] = q as u8;
        }
    }
    let mut g_idx = vec![0i32; cols];
    for k in 0..cols {
        let c = perm.map_or(k, |p| p[k] as usize);
        g_idx[c] = (k / gs) as i32;
    }
    let mut zeros = Vec::with_capacity(rows * groups);
    for z in p.zeros.as_slice() {
        let z = z.to_f32();
        // Our quantizers store integer zero points; a fractional one has no GPTQ form.
        if z.fract() != 0.0 {
            return Err(format!("zero point {z} is not an integer"));
        }
        zeros.push(z as i32);
    }
    Ok(Logical {
        rows,
        cols,
        bits: m.bits(),
        group_size: gs,
        codes,
        zeros,
        scales: p.scales.as_slice().to_vec(),
        g_idx,
        groups,
    })
}

/// A layer whose every weight decodes to exactly 0: every code equals its zero point
/// `2^(bits-1)` (a symmetric grid, storable in v1 and v2), scale 1.
fn zero_layer(rows: usize, cols: usize, bits: u8, group_size: usize) -> Logical {
    let groups = cols.div_ceil(group_size);
    let mid = 1u8 << (bits - 1);
    Logical {
        rows,
        cols,
        bits,
        group_size,
        codes: vec![mid; rows * cols],
        zeros: vec![i32::from(mid); rows * groups],
        scales: vec![f16::ONE; rows * groups],
        g_idx: (0..cols).map(|c| (c / group_size) as i32).collect(),
        groups,
    }
}

/// `name` with regex metacharacters escaped (module names only contain dots among them).
fn regex_escape(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 8);
    for ch in name.chars() {
        if "\\.^$|?*+()[]{}".contains(ch) {
            s.push('\\');
        }
        s.push(ch);
    }
    s
}
