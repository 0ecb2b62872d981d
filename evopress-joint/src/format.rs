//! How a joint variant is stored (docs/joint-search.md), and read back as a weight the forward
//! pass multiplies without decoding the matrix first.
//!
//! A variant with every weight kept is a packed matrix, exactly as a GPTQ database stores one
//! (`codes`, `scales`, `zeros`). A sparse one is a masked-packed matrix
//! ([`evopress_kernels::weight::masked_packed`]): `mask` (u64 words, a row per fresh word),
//! `codes` (the kept weights' codes as one u32 stream of 32-code chunks), `scales` and `zeros`
//! (f16, one per row and group of `group_size` original columns). The manifest records per level
//! `sparsity`, `bits` and `group_size`.

use crate::solver::Solved;
use evopress_core::store::{RawTensor, TensorData, UnitEntry, VariantStore};
use evopress_core::{Error, Result};
use evopress_kernels::weight::masked::mask_words_per_row;
use evopress_kernels::weight::masked_packed::stream_words;
use evopress_kernels::weight::packed::{slices, CHUNK};
use evopress_kernels::{Buf, MaskedPackedParts, Weight, WeightError};
use evopress_quant::builder::{load_packed, packed_tensors};
use evopress_quant::{PackedMatrix, QuantSpec};
use half::f16;
use serde_json::Value;

/// The store format of joint variants: packed where dense, masked-packed where sparse.
pub const FORMAT: &str = "masked_packed";

/// The tensors of `solved` (quantized with `spec`) under their part names.
pub fn variant_tensors(solved: &Solved, spec: &QuantSpec) -> Vec<(String, TensorData)> {
    let (rows, cols) = (solved.rows, solved.cols);
    if solved.kept.iter().all(|&k| k) {
        let p = PackedMatrix::from_codes(rows, cols, spec, &solved.codes, &solved.grids, None);
        return packed_tensors(&p);
    }
    let words = mask_words_per_row(cols);
    let mut mask = vec![0u64; rows * words];
    let mut kept = Vec::new();
    for r in 0..rows {
        for c in 0..cols {
            if solved.kept[r * cols + c] {
                mask[r * words + c / 64] |= 1 << (c % 64);
                kept.push(solved.codes[r * cols + c]);
            }
        }
    }
    let ng = solved.grids.len() / rows.max(1);
    let scales: Vec<f16> = solved
        .grids
        .iter()
        .map(|g| f16::from_f32(g.scale))
        .collect();
    let zeros: Vec<f16> = solved.grids.iter().map(|g| f16::from_f32(g.zero)).collect();
    let codes = pack_stream(&kept, spec.bits);
    vec![
        ("mask".into(), TensorData::u64(&[rows, words], &mask)),
        ("codes".into(), TensorData::u32(&[codes.len()], &codes)),
        ("scales".into(), TensorData::f16(&[rows, ng], &scales)),
        ("zeros".into(), TensorData::f16(&[rows, ng], &zeros)),
    ]
}

/// Packs `codes` (one per byte, each below `2^bits`) as one stream of 32-code chunks in the
/// packed layout's chunk encoding.
pub fn pack_stream(codes: &[u8], bits: u8) -> Vec<u32> {
    let b = bits as usize;
    let mut words = vec![0u32; stream_words(codes.len(), bits)];
    for (chunk_codes, chunk) in codes.chunks(CHUNK).zip(words.chunks_exact_mut(b)) {
        for (i, &q) in chunk_codes.iter().enumerate() {
            for (p, o) in slices(b) {
                let field = (u32::from(q) >> o) & ((1 << p) - 1);
                chunk[o + i * p / 32] |= field << (i * p % 32);
            }
        }
    }
    words
}

/// A stored joint variant as a weight whose tables are views into the store's maps.
pub fn load_variant(store: &VariantStore, unit: &UnitEntry, level: i32) -> Result<Weight> {
    let name = &unit.name;
    let mask = match store.tensor(&format!("{name}/{level}/mask")) {
        Ok(m) => m,
        Err(Error::MissingTensor { .. }) => return load_packed(store, unit, level),
        Err(e) => return Err(e),
    };
    let entry = unit
        .level(level)
        .ok_or_else(|| Error::Invalid(format!("`{name}` has no level {level} in the database")))?;
    let int = |key: &str| {
        entry.extra.get(key).and_then(Value::as_u64).ok_or_else(|| {
            Error::format(
                store.dir().join("manifest.json"),
                format!("`{name}` level {level} has no integer `{key}`"),
            )
        })
    };
    let bits = int("bits")? as u8;
    let group_size = int("group_size")? as usize;
    let bad = |part: &str, e: evopress_kernels::WeightError| {
        Error::format(
            store.dir(),
            format!("`{name}/{level}/{part}` cannot be used: {e}"),
        )
    };
    fn buf<T: bytemuck::Pod>(t: &RawTensor) -> std::result::Result<Buf<T>, WeightError> {
        Buf::mapped(t.map.clone(), t.offset, t.numel())
    }
    let codes = store.tensor(&format!("{name}/{level}/codes"))?;
    let scales = store.tensor(&format!("{name}/{level}/scales"))?;
    let zeros = store.tensor(&format!("{name}/{level}/zeros"))?;
    let parts = MaskedPackedParts {
        rows: unit.rows,
        cols: unit.cols,
        bits,
        group_size,
        mask: buf(&mask).map_err(|e| bad("mask", e))?,
        codes: buf(&codes).map_err(|e| bad("codes", e))?,
        scales: buf(&scales).map_err(|e| bad("scales", e))?,
        zeros: buf(&zeros).map_err(|e| bad("zeros", e))?,
    };
    Weight::masked_packed(parts).map_err(|e| bad("mask", e))
}
