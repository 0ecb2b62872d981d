//! GGUF files llama.cpp loads, written from a GGUF source: every metadata key (tokenizer and
//! chat template included) is carried over, tensors the candidate left unchanged are copied
//! byte for byte, and changed ones are encoded:
//!
//! - quantized layers: [`GgufQuant::Compact`] puts widths up to 4 bits in `Q4_1` (the codes as
//!   they are; the block minimum `−zero·scale` rounded to f16, reported) and wider ones in
//!   `Q8_0` (exact); [`GgufQuant::Exact`] puts every width in `Q8_0`. Layers with no block form
//!   (act-order, groups that are not whole 32-blocks) are written dense, reported;
//! - sparse layers: dense (GGUF has no sparse type), in the chosen [`DenseType`]: a float
//!   type, or `Q8_0` encoded by llama.cpp's reference quantizer (rows that are not whole
//!   32-blocks fall back to F16, reported by tensor name);
//! - any tensor can instead be handed over already encoded in any ggml type
//!   ([`Encoded`]), e.g. by a ggml quantizer;
//! - a linear, the embedding or the head that the candidate holds in ggml blocks other than
//!   the source's (variants of a GGUF database) is written as those blocks;
//! - depth: removed blocks are gone and the rest renumbered (`block_count` updated). A dropped
//!   attention in a Llama model makes the file a `deci` model (llama.cpp's Llama variant with
//!   per-layer head counts) whose layer has 0 heads and no attention tensors; a dropped MLP,
//!   or a dropped attention in another architecture, is written as exact-zero `Q4_0` weights.
//!
//! llama.cpp stores Llama q/k rows interleaved for its RoPE; the source file already has them
//! so, and re-encoded q/k layers are permuted the same way.

use crate::ggml_blocks;
use crate::pieces::{LinearData, OutModel, OutTensor, Piece};
use crate::report::ExportReport;
use crate::st::float_bytes;
use evopress_core::gguf::{hf_name, unpermuted_source_row, GgmlType, GgufWriter, MetaValue};
use evopress_core::{Candidate, Error, LinearKind, ModelSource, Result};
use evopress_kernels::weight::ggml::encode_rows;
use evopress_kernels::{DType, Weight};
use std::collections::HashMap;
use std::path::Path;

/// How quantized layers are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgufQuant {
    /// The smallest block type holding the codes (`Q4_1` up to 4 bits, else `Q8_0`).
    Compact,
    /// `Q8_0` for every width: the stored weights equal ours bit for bit.
    Exact,
}

/// The type linears written dense take (sparse layers, layers with no block form).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenseType {
    /// A float type: the values up to its rounding.
    Float(DType),
    /// `Q8_0` (8.5 bits per weight, half of F16): llama.cpp's reference quantizer, so the
    /// file holds what `llama-quantize` would write for these values. Needs rows of whole
    /// 32-blocks; other rows are written F16.
    Q8_0,
}

impl DenseType {
    pub fn name(self) -> &'static str {
        match self {
            DenseType::Float(d) => d.name(),
            DenseType::Q8_0 => "Q8_0",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct GgufOptions {
    pub dense: DenseType,
    pub quant: GgufQuant,
}

/// A tensor already encoded by the caller, written as given.
pub struct Encoded {
    pub ty: GgmlType,
    /// ggml dims, innermost first.
    pub dims: Vec<u64>,
    pub bytes: Vec<u8>,
}

/// Writes `candidate` as a GGUF file at `path`. `encoded` replaces tensors by their output
/// GGUF name (`blk.N.…` with output block numbers) with bytes the caller encoded.
pub fn write_gguf(
    candidate: &Candidate,
    source: &ModelSource,
    path: &Path,
    opts: &GgufOptions,
    mut encoded: HashMap<String, Encoded>,
) -> Result<ExportReport> {
    let ModelSource::Gguf(src) = source else {
        return Err(Error::Unsupported {
            path: source.tensors().path().into(),
            what: "GGUF export from an HF directory".into(),
            hint: "the GGUF writer carries a GGUF source's metadata and tokenizer over; convert \
                   the HF model to GGUF with llama.cpp first, or export with --to hf"
                .into(),
        });
    };
    let model = OutModel::of(candidate)?;
    let layout = &model.layout;
    let arch = src.architecture()?.to_string();
    let deci = arch == "llama" && !layout.attention_dropped().is_empty();
    let out_arch = if deci { "deci" } else { arch.as_str() };
    let fused = arch == "phi3";
    let cfg = &model.config;
    let permute_qk = matches!(out_arch, "llama" | "deci");

    let mut report = ExportReport {
        layers: layout.blocks.len(),
        notes: vec![format!("depth: {}", layout.describe())],
        ..Default::default()
    };
    if deci {
        report.notes.push(format!(
            "dropped attention in output layers {:?}: written as a `deci` model with 0 heads in \
             those layers (no attention tensors)",
            layout.attention_dropped()
        ));
    }

    let mut w = GgufWriter::new();
    for (key, value) in src.metadata() {
        let key = match key.strip_prefix(&format!("{arch}.")) {
            Some(rest) => format!("{out_arch}.{rest}"),
            None => key.clone(),
        };
        let value = match key.as_str() {
            "general.architecture" => MetaValue::String(out_arch.into()),
            k if k == format!("{out_arch}.block_count") => {
                MetaValue::U32(layout.blocks.len() as u32)
            }
            _ => value.clone(),
        };
        if deci
            && (key == format!("{out_arch}.attention.head_count")
                || key == format!("{out_arch}.attention.head_count_kv"))
        {
            continue;
        }
        w.add_meta(key, value);
    }
    if deci {
        let per_layer = |n: usize| {
            MetaValue::Array(
                layout
                    .blocks
                    .iter()
                    .map(|b| MetaValue::U32(if b.plan.attn { n as u32 } else { 0 }))
                    .collect(),
            )
        };
        w.add_meta(
            "deci.attention.head_count",
            per_layer(cfg.num_attention_heads),
        );
        w.add_meta(
            "deci.attention.head_count_kv",
            per_layer(cfg.num_key_value_heads),
        );
    }

    let by_name: HashMap<&str, &OutTensor<'_>> =
        model.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let source_to_out: HashMap<usize, usize> = layout
        .blocks
        .iter()
        .enumerate()
        .map(|(i, b)| (b.source, i))
        .collect();
    let mut stats = Stats::default();
    for info in src.tensors() {
        let Some(out_name) = out_gguf_name(&info.name, &source_to_out) else {
            continue;
        };
        let hf = hf_name(&out_name, fused);
        let tensor = hf.as_deref().and_then(|n| by_name.get(n).copied());
        if let Some(e) = encoded.remove(&out_name) {
            if e.dims != info.dims {
                return Err(Error::Invalid(format!(
                    "the encoded tensor `{out_name}` has dims {:?}, the model's has {:?}",
                    e.dims, info.dims
                )));
            }
            w.add_tensor(out_name, &e.dims, e.ty, e.bytes)?;
            stats.given += 1;
            continue;
        }
        let block = tensor.and_then(|t| t.block);
        if deci && block.is_some_and(|b| !layout.blocks[b].plan.attn) && is_attention(&out_name) {
            continue;
        }
        let linear = match tensor.map(|t| &t.piece) {
            Some(Piece::Linear {
                data,
                rows,
                cols,
                kinds,
            }) => Some((data, *rows, *cols, kinds)),
            _ => None,
        };
        let Some((data, rows, cols, kinds)) = linear else {
            // Norms and biases as stored; the embedding and head too, unless the candidate
            // holds other ggml blocks for them (a GGUF variant database's).
            let held = match tensor.map(|t| &t.piece) {
                Some(Piece::Matrix(m)) => ggml_rows(&[*m], m.rows, &row_order(m.rows, None)),
                _ => None,
            };
            let (ty, bytes) = match held {
                Some(b) if b.0 != info.ggml_type || b.1 != src.tensor_bytes(info) => {
                    stats.ggml += 1;
                    b
                }
                _ => (info.ggml_type, src.tensor_bytes(info).to_vec()),
            };
            w.add_tensor(out_name, &info.dims, ty, bytes)?;
            continue;
        };
        report.linear_bf16_bytes += 2 * rows * cols;
        let heads = match kinds.as_slice() {
            [LinearKind::Q] if permute_qk => Some(cfg.num_attention_heads),
            [LinearKind::K] if permute_qk => Some(cfg.num_key_value_heads),
            _ => None,
        };
        let order = row_order(rows, heads);
        let dims = [cols as u64, rows as u64];
        let (ty, bytes) = match data {
            // Weights the model holds as loaded are the source's tensor, or the other ggml
            // blocks the candidate holds (a GGUF variant database's).
            LinearData::Dense(parts) if data.is_as_loaded() => {
                match ggml_rows(parts, rows, &order) {
                    Some(b) if b.0 != info.ggml_type || b.1 != src.tensor_bytes(info) => {
                        stats.ggml += 1;
                        b
                    }
                    _ => {
                        stats.copied += 1;
                        (info.ggml_type, src.tensor_bytes(info).to_vec())
                    }
                }
            }
            LinearData::Dropped => {
                stats.zeroed += 1;
                (GgmlType::Q4_0, ggml_blocks::q4_0_zeros(rows * cols))
            }
            // Sparse layers, and compressed ones ggml has no type for (masked-packed).
            LinearData::Masked(_) | LinearData::Dense(_) => {
                stats.sparse_dense += 1;
                let values = data.to_f32(rows, cols);
                dense_tensor(&values, cols, &order, opts.dense, &out_name, &mut stats)?
            }
            LinearData::Packed(m) => {
                let compact = opts.quant == GgufQuant::Compact && m.bits() <= 4;
                match ggml_blocks::blockable(m) {
                    Ok(()) if compact => {
                        let (bytes, worst) = ggml_blocks::q4_1(m, &order);
                        stats.q4_1 += 1;
                        stats.q4_1_inexact += usize::from(worst > 0.0);
                        stats.q4_1_worst = stats.q4_1_worst.max(worst);
                        (GgmlType::Q4_1, bytes)
                    }
                    fits => match fits.and_then(|()| ggml_blocks::q8_0_fits(m)) {
                        Ok(()) => {
                            stats.q8_0 += 1;
                            (GgmlType::Q8_0, ggml_blocks::q8_0(m, &order))
                        }
                        Err(why) => {
                            stats
                                .packed_dense
                                .push(format!("{out_name} ({}-bit: {why})", m.bits()));
                            let values = data.to_f32(rows, cols);
                            dense_tensor(&values, cols, &order, opts.dense, &out_name, &mut stats)?
                        }
                    },
                }
            }
        };
        report.linear_bytes += bytes.len();
        w.add_tensor(out_name, &dims, ty, bytes)?;
    }
    if let Some(name) = encoded.keys().next() {
        return Err(Error::Invalid(format!(
            "an encoded tensor was given for `{name}`, which the exported model does not have"
        )));
    }
    report.notes.extend(stats.lines(opts.dense));
    w.write(path)?;
    report.files.push(path.to_path_buf());
    Ok(report)
}

/// What happened to the linear layers, for the report.
#[derive(Default)]
struct Stats {
    copied: usize,
    zeroed: usize,
    sparse_dense: usize,
    q4_1: usize,
    q4_1_inexact: usize,
    q4_1_worst: f32,
    q8_0: usize,
    packed_dense: Vec<String>,
    given: usize,
    /// Tensors written from the ggml blocks the candidate holds (other than the source's).
    ggml: usize,
    /// Tensors meant for `Q8_0` written F16: their rows are not whole blocks.
    q8_0_fallback: Vec<String>,
}

impl Stats {
    fn lines(&self, dense: DenseType) -> Vec<String> {
        let mut out = vec![format!(
            "linear layers: {} copied from the source, {} quantized in Q8_0 (exact), {} in Q4_1, \
             {} sparse written dense {}, {} of dropped sub-blocks as zero Q4_0, {} given encoded",
            self.copied,
            self.q8_0,
            self.q4_1,
            self.sparse_dense,
            dense.name(),
            self.zeroed,
            self.given
        )];
        if self.ggml > 0 {
            out.push(format!(
                "{} tensors written as the ggml blocks the candidate holds (a GGUF variant \
                 database's types)",
                self.ggml
            ));
        }
        if self.q4_1 > 0 {
            out.push(format!(
                "Q4_1 stores the block minimum -zero*scale in f16: {} of {} layers have blocks \
                 where it is not exact; largest shift {:.2e} of a quantization step (all \
                 weights of such a block move by it)",
                self.q4_1_inexact, self.q4_1, self.q4_1_worst
            ));
        }
        if !self.q8_0_fallback.is_empty() {
            out.push(format!(
                "{} tensors written F16 instead of Q8_0 (rows are not whole blocks of {}): {}",
                self.q8_0_fallback.len(),
                ggml_blocks::QK,
                self.q8_0_fallback.join("; ")
            ));
        }
        if !self.packed_dense.is_empty() {
            out.push(format!(
                "{} quantized layers have no ggml block form and were written dense {}: {}",
                self.packed_dense.len(),
                dense.name(),
                self.packed_dense.join("; ")
            ));
        }
        out
    }
}

/// The GGUF name of source tensor `name` in the output: block tensors renumbered, those of
/// removed blocks `None`.
fn out_gguf_name(name: &str, source_to_out: &HashMap<usize, usize>) -> Option<String> {
    let Some(rest) = name.strip_prefix("blk.") else {
        return Some(name.to_string());
    };
    let (index, local) = rest.split_once('.')?;
    let out = source_to_out.get(&index.parse::<usize>().ok()?)?;
    Some(format!("blk.{out}.{local}"))
}

fn is_attention(gguf: &str) -> bool {
    [
        "attn_q.",
        "attn_k.",
        "attn_v.",
        "attn_output.",
        "attn_qkv.",
        "attn_norm.",
    ]
    .iter()
    .any(|s| gguf.contains(s))
}

/// For each file row, the HF row it holds: llama.cpp's interleaved order for a permuted q/k
/// projection of `heads` heads, else identity.
fn row_order(rows: usize, heads: Option<usize>) -> Vec<usize> {
    let Some(n) = heads else {
        return (0..rows).collect();
    };
    let per_head = rows / n;
    let mut order = vec![0; rows];
    for hf_row in 0..rows {
        order[unpermuted_source_row(hf_row, per_head)] = hf_row;
    }
    order
}

/// The blocks of a tensor whose parts are the rows, in order, of one ggml matrix holding
/// exactly `rows` rows, with file row `i` the matrix's row `order[i]`; `None` for any other
/// storage.
fn ggml_rows(parts: &[&Weight], rows: usize, order: &[usize]) -> Option<(GgmlType, Vec<u8>)> {
    let m = parts.first()?.as_ggml()?;
    let same = parts
        .iter()
        .all(|p| p.as_ggml().is_some_and(|x| std::ptr::eq(x, m)));
    let covered: usize = parts.iter().map(|p| p.rows).sum();
    if !same || m.rows() != rows || covered != rows {
        return None;
    }
    let permuted = m.permute_rows(|r| order[r]);
    Some((m.ty(), permuted.blocks().as_slice().to_vec()))
}

fn float_type(d: DType) -> GgmlType {
    match d {
        DType::F32 => GgmlType::F32,
        DType::F16 => GgmlType::F16,
        DType::BF16 => GgmlType::BF16,
    }
}

/// `values` (`[rows, cols]`) with rows in `order`, encoded as `dense`: the tensor's type and
/// bytes. A `Q8_0` tensor whose rows are not whole blocks is written F16 and named in `stats`.
fn dense_tensor(
    values: &[f32],
    cols: usize,
    order: &[usize],
    dense: DenseType,
    name: &str,
    stats: &mut Stats,
) -> Result<(GgmlType, Vec<u8>)> {
    let mut rows = Vec::with_capacity(values.len());
    for &r in order {
        rows.extend_from_slice(&values[r * cols..(r + 1) * cols]);
    }
    let dtype = match dense {
        DenseType::Float(d) => d,
        DenseType::Q8_0 if cols.is_multiple_of(ggml_blocks::QK) => {
            let bytes = encode_rows(GgmlType::Q8_0, &rows, cols, None)
                .map_err(|e| Error::Invalid(format!("encoding `{name}` as Q8_0: {e}")))?;
            return Ok((GgmlType::Q8_0, bytes));
        }
        DenseType::Q8_0 => {
            stats.q8_0_fallback.push(format!("{name} ({cols} columns)"));
            DType::F16
        }
    };
    Ok((float_type(dtype), float_bytes(&rows, dtype)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_go_back_to_llama_cpp_order() {
        // One head of 4 rows: HF (rotate-half) rows 0,1 | 2,3 are pairs (0,2) and (1,3);
        // llama.cpp interleaves them as 0,2,1,3.
        assert_eq!(row_order(4, Some(1)), [0, 2, 1, 3]);
        assert_eq!(row_order(3, None), [0, 1, 2]);
    }

    #[test]
    fn q8_0_dense_rows_that_are_not_whole_blocks_fall_back_to_f16_by_name() {
        let values: Vec<f32> = (0..2 * 48).map(|i| i as f32 / 7.0).collect();
        let mut stats = Stats::default();
        let (ty, bytes) =
            dense_tensor(&values, 48, &[1, 0], DenseType::Q8_0, "blk.0.x", &mut stats).unwrap();
        assert_eq!((ty, bytes.len()), (GgmlType::F16, 2 * 48 * 2));
        assert_eq!(&bytes[..2], &half::f16::from_f32(48.0 / 7.0).to_le_bytes());
        let line = stats.lines(DenseType::Q8_0).join("\n");
        assert!(line.contains("blk.0.x (48 columns)"), "{line}");

        let (ty, bytes) =
            dense_tensor(&values[..64], 32, &[1, 0], DenseType::Q8_0, "y", &mut stats).unwrap();
        assert_eq!(ty, GgmlType::Q8_0);
        let back = evopress_kernels::weight::ggml::decode_rows(ty, &bytes, 32).unwrap();
        assert!((back[0] - 32.0 / 7.0).abs() < 0.6 * (63.0 / 7.0) / 127.0);
    }

    #[test]
    fn removed_blocks_vanish_and_the_rest_are_renumbered() {
        let map = HashMap::from([(0, 0), (2, 1)]);
        assert_eq!(
            out_gguf_name("blk.2.ffn_up.weight", &map).as_deref(),
            Some("blk.1.ffn_up.weight")
        );
        assert_eq!(out_gguf_name("blk.1.ffn_up.weight", &map), None);
        assert_eq!(
            out_gguf_name("token_embd.weight", &map).as_deref(),
            Some("token_embd.weight")
        );
    }
}
