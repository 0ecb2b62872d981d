//! llama.cpp's tensor formats (the `ggml_type`s of a GGUF file): their block layouts, decoding
//! to f32, encoding from f32 (bit-exact with llama.cpp's reference quantizers, with or without
//! an importance vector), and [`GgmlMatrix`], a weight kept in its blocks and multiplied from
//! them. This is the one place that knows the layouts; the GGUF reader in `evopress-core` only
//! parses the file and hands the bytes here. Layouts and quantizer algorithms are described in
//! `docs/ggml-formats.md`.
//!
//! - `legacy`: 32-element blocks (`Q4_0`, `Q4_1`, `Q5_0`, `Q5_1`, `Q8_0`),
//! - `kquants`: 256-element super-blocks (`Q2_K` .. `Q6_K`, `Q8_K`),
//! - `fit`: the scale searches the quantizers share,
//! - `matrix`: [`GgmlMatrix`],
//! - plain `F32`, `F16`, `BF16` rows are handled here directly.
//!
//! The quantizers are a port of llama.cpp's `ggml-quants.c` (MIT licence, the ggml authors).

mod fit;
mod kquants;
mod legacy;
mod matrix;
mod types;

pub use matrix::GgmlMatrix;
pub use types::GgmlType;

use half::{bf16, f16};
use rayon::prelude::*;

/// Why a conversion was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GgmlError {
    #[error("{ty} cannot be {what} here (supported: {})", supported(what))]
    Unsupported { ty: GgmlType, what: &'static str },
    #[error("{ty} rows are whole blocks of {block} elements; a row of {cols} is not")]
    PartialBlock {
        ty: GgmlType,
        cols: usize,
        block: usize,
    },
    #[error("{ty}: {len} {unit} are not whole rows of {row} {unit}")]
    Length {
        ty: GgmlType,
        len: usize,
        row: usize,
        unit: &'static str,
    },
    #[error("the importance vector has {got} entries for rows of {cols}")]
    Importance { got: usize, cols: usize },
}

fn supported(what: &str) -> String {
    let list = if what == "decoded" {
        &GgmlType::DECODABLE
    } else {
        &GgmlType::ENCODABLE
    };
    list.iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Bytes of one row of `cols` elements of `ty`.
fn checked_row_bytes(ty: GgmlType, cols: usize) -> Result<usize, GgmlError> {
    ty.row_bytes(cols).ok_or(GgmlError::PartialBlock {
        ty,
        cols,
        block: ty.block_len(),
    })
}

/// Decodes whole rows of `cols` elements of type `ty` to f32 (in parallel over rows).
pub fn decode_rows(ty: GgmlType, bytes: &[u8], cols: usize) -> Result<Vec<f32>, GgmlError> {
    let row = checked_row_bytes(ty, cols)?;
    let rows = whole_rows(ty, bytes.len(), row, "bytes")?;
    let mut out = vec![0f32; rows * cols];
    decode_rows_into(ty, bytes, cols, &mut out)?;
    Ok(out)
}

/// [`decode_rows`] into a caller's buffer of `rows · cols` elements.
pub fn decode_rows_into(
    ty: GgmlType,
    bytes: &[u8],
    cols: usize,
    out: &mut [f32],
) -> Result<(), GgmlError> {
    if !ty.is_decodable() {
        return Err(GgmlError::Unsupported {
            ty,
            what: "decoded",
        });
    }
    let row = checked_row_bytes(ty, cols)?;
    let rows = whole_rows(ty, bytes.len(), row, "bytes")?;
    if out.len() != rows * cols {
        return Err(GgmlError::Length {
            ty,
            len: out.len(),
            row: cols,
            unit: "output elements",
        });
    }
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    // Rows are the unit of parallel work; a minimum keeps short rows from being scheduled
    // one by one.
    out.par_chunks_mut(cols)
        .zip(bytes.par_chunks(row))
        .with_min_len(16)
        .for_each(|(o, b)| crate::cpu::simd::vectorized!(decode_row(ty, b, o)));
    Ok(())
}

fn whole_rows(
    ty: GgmlType,
    len: usize,
    row: usize,
    unit: &'static str,
) -> Result<usize, GgmlError> {
    match len.checked_div(row) {
        Some(n) if n * row == len => Ok(n),
        None if len == 0 => Ok(0),
        _ => Err(GgmlError::Length { ty, len, row, unit }),
    }
}

/// Encodes rows of `cols` f32 values as `ty`, bit for bit as llama.cpp's `quantize_chunk`
/// does: without `importance`, its reference quantizers (`quantize_row_*_ref`); with a
/// per-column `importance` (llama.cpp's imatrix, e.g. the diagonal of a layer's Hessian
/// `XᵀX`), its importance-weighted ones. `Q8_0`, `Q8_K` and the plain types ignore the
/// importance, as llama.cpp does.
pub fn encode_rows(
    ty: GgmlType,
    data: &[f32],
    cols: usize,
    importance: Option<&[f32]>,
) -> Result<Vec<u8>, GgmlError> {
    if !ty.is_encodable() {
        return Err(GgmlError::Unsupported {
            ty,
            what: "encoded",
        });
    }
    let row = checked_row_bytes(ty, cols)?;
    let rows = whole_rows(ty, data.len(), cols.max(1), "values")?;
    if let Some(imp) = importance {
        if imp.len() != cols {
            return Err(GgmlError::Importance {
                got: imp.len(),
                cols,
            });
        }
    }
    let mut out = vec![0u8; rows * row];
    if rows == 0 || cols == 0 {
        return Ok(out);
    }
    out.par_chunks_mut(row)
        .zip(data.par_chunks(cols))
        .for_each(|(b, x)| encode_row(ty, x, importance, b));
    Ok(out)
}

/// One row of whole blocks to f32. `ty` must be decodable and the lengths must agree (checked
/// by every public caller).
#[inline(always)]
pub(crate) fn decode_row(ty: GgmlType, row: &[u8], out: &mut [f32]) {
    #[inline(always)]
    fn blocks(row: &[u8], out: &mut [f32], bb: usize, bl: usize, f: fn(&[u8], &mut [f32])) {
        for (b, o) in row.chunks_exact(bb).zip(out.chunks_exact_mut(bl)) {
            f(b, o)
        }
    }
    let (bb, bl) = (ty.block_bytes(), ty.block_len());
    match ty {
        GgmlType::Q4_0 => blocks(row, out, bb, bl, legacy::decode_q4_0),
        GgmlType::Q4_1 => blocks(row, out, bb, bl, legacy::decode_q4_1),
        GgmlType::Q5_0 => blocks(row, out, bb, bl, legacy::decode_q5_0),
        GgmlType::Q5_1 => blocks(row, out, bb, bl, legacy::decode_q5_1),
        GgmlType::Q8_0 => blocks(row, out, bb, bl, legacy::decode_q8_0),
        GgmlType::Q2_K => blocks(row, out, bb, bl, kquants::decode_q2_k),
        GgmlType::Q3_K => blocks(row, out, bb, bl, kquants::decode_q3_k),
        GgmlType::Q4_K => blocks(row, out, bb, bl, kquants::decode_q4_k),
        GgmlType::Q5_K => blocks(row, out, bb, bl, kquants::decode_q5_k),
        GgmlType::Q6_K => blocks(row, out, bb, bl, kquants::decode_q6_k),
        GgmlType::Q8_K => blocks(row, out, bb, bl, kquants::decode_q8_k),
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(row.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = crate::cpu::simd::f16_to_f32(f16::from_le_bytes([c[0], c[1]]));
            }
        }
        GgmlType::BF16 => {
            for (o, c) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = crate::cpu::simd::bf16_to_f32(bf16::from_le_bytes([c[0], c[1]]));
            }
        }
        other => unreachable!("{other} has no decoder (checked by the callers)"),
    }
}

/// One row to `ty`'s bytes (see [`encode_rows`]).
fn encode_row(ty: GgmlType, x: &[f32], importance: Option<&[f32]>, out: &mut [u8]) {
    let (bl, bb) = (ty.block_len(), ty.block_bytes());
    match (ty, importance) {
        (GgmlType::F32, _) => {
            for (o, v) in out.chunks_exact_mut(4).zip(x) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        (GgmlType::F16, _) => {
            for (o, &v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&f16::from_f32(v).to_le_bytes());
            }
        }
        (GgmlType::BF16, _) => {
            for (o, &v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&bf16::from_f32(v).to_le_bytes());
            }
        }
        (GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1, Some(imp)) => {
            let w = legacy::Weighted::new(x, imp);
            let f = match ty {
                GgmlType::Q4_0 => legacy::Weighted::q4_0,
                GgmlType::Q4_1 => legacy::Weighted::q4_1,
                GgmlType::Q5_0 => legacy::Weighted::q5_0,
                _ => legacy::Weighted::q5_1,
            };
            for (ib, b) in out.chunks_exact_mut(bb).enumerate() {
                f(&w, ib, b)
            }
        }
        (GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K, Some(imp)) => {
            let f = match ty {
                GgmlType::Q2_K => kquants::encode_q2_k_weighted,
                GgmlType::Q3_K => kquants::encode_q3_k_weighted,
                GgmlType::Q4_K => kquants::encode_q4_k_weighted,
                _ => kquants::encode_q5_k_weighted,
            };
            for ((b, xs), qw) in out
                .chunks_exact_mut(bb)
                .zip(x.chunks_exact(bl))
                .zip(imp.chunks_exact(bl))
            {
                f(xs, qw, b)
            }
        }
        (GgmlType::Q6_K, imp) => {
            for (i, (b, xs)) in out.chunks_exact_mut(bb).zip(x.chunks_exact(bl)).enumerate() {
                kquants::encode_q6_k(xs, imp.map(|q| &q[i * bl..(i + 1) * bl]), b)
            }
        }
        _ => {
            let f: fn(&[f32], &mut [u8]) = match ty {
                GgmlType::Q4_0 => legacy::encode_q4_0,
                GgmlType::Q4_1 => legacy::encode_q4_1,
                GgmlType::Q5_0 => legacy::encode_q5_0,
                GgmlType::Q5_1 => legacy::encode_q5_1,
                GgmlType::Q8_0 => legacy::encode_q8_0,
                GgmlType::Q2_K => kquants::encode_q2_k,
                GgmlType::Q3_K => kquants::encode_q3_k,
                GgmlType::Q4_K => kquants::encode_q4_k,
                GgmlType::Q5_K => kquants::encode_q5_k,
                GgmlType::Q8_K => kquants::encode_q8_k,
                other => unreachable!("{other} has no encoder (checked by encode_rows)"),
            };
            for (b, xs) in out.chunks_exact_mut(bb).zip(x.chunks_exact(bl)) {
                f(xs, b)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q8_0_is_scale_times_signed_byte() {
        let mut b = f16_bytes(0.5).to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let got = decode_rows(GgmlType::Q8_0, &b, 32).unwrap();
        let want: Vec<f32> = (0..32).map(|i| 0.5 * (i as f32 - 16.0)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn q4_0_low_nibbles_first_then_high() {
        let mut b = f16_bytes(2.0).to_vec();
        // Byte j: low nibble j % 16, high nibble 15 - j.
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let got = decode_rows(GgmlType::Q4_0, &b, 32).unwrap();
        for j in 0..16 {
            assert_eq!(got[j], 2.0 * (j as f32 - 8.0), "element {j}");
            assert_eq!(got[j + 16], 2.0 * (7.0 - j as f32), "element {}", j + 16);
        }
    }

    #[test]
    fn q4_1_is_scale_times_nibble_plus_min() {
        let mut b = f16_bytes(0.25).to_vec();
        b.extend(f16_bytes(-1.5));
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let got = decode_rows(GgmlType::Q4_1, &b, 32).unwrap();
        assert_eq!(got[0], -1.5);
        assert_eq!(got[3], 0.25 * 3.0 - 1.5);
        assert_eq!(got[16], 0.25 * 15.0 - 1.5);
        assert_eq!(got[31], 0.25 * 0.0 - 1.5);
    }

    #[test]
    fn multi_row_decode_keeps_row_order() {
        // Two rows of two Q8_0 blocks each, block k filled with value k.
        let mut b = Vec::new();
        for k in 0..4 {
            b.extend(f16_bytes(1.0));
            b.extend([k as u8; 32]);
        }
        let got = decode_rows(GgmlType::Q8_0, &b, 64).unwrap();
        for (i, x) in got.iter().enumerate() {
            assert_eq!(*x, (i / 32) as f32);
        }
    }

    #[test]
    fn encoding_an_all_zero_row_decodes_to_zeros() {
        for ty in GgmlType::ENCODABLE {
            let bytes = encode_rows(ty, &[0.0; 512], 256, Some(&[1.0; 256])).unwrap();
            let back = decode_rows(ty, &bytes, 256).unwrap();
            assert!(back.iter().all(|&v| v == 0.0), "{ty}");
        }
    }
}
