//! Dequantization of ggml block formats to f32, and the undoing of llama.cpp's Q/K row
//! permutation. Formulas follow llama.cpp's `dequantize_row_*` exactly.

use super::types::GgmlType;
use evopress_kernels::{Weight, WeightView};
use half::f16;
use rayon::prelude::*;

/// Elements per block of every format handled here.
const QK: usize = 32;

/// Dequantizes `bytes` (whole rows of `row_len` elements of type `ty`) to f32, in parallel
/// over rows. `None` when `ty` is not a block format this module decodes.
pub(super) fn dequantize(ty: GgmlType, bytes: &[u8], row_len: usize) -> Option<Vec<f32>> {
    let block: fn(&[u8], &mut [f32]) = match ty {
        GgmlType::Q8_0 => q8_0_block,
        GgmlType::Q4_0 => q4_0_block,
        GgmlType::Q4_1 => q4_1_block,
        _ => return None,
    };
    let n_blocks = bytes.len() / ty.block_bytes();
    let mut out = vec![0f32; n_blocks * QK];
    let row_bytes = row_len / QK * ty.block_bytes();
    // Rows are the unit of parallel work; a minimum length keeps tiny rows from being
    // scheduled one by one.
    out.par_chunks_mut(row_len.max(1))
        .zip(bytes.par_chunks(row_bytes.max(1)))
        .with_min_len(16)
        .for_each(|(out_row, row)| {
            for (o, b) in out_row
                .chunks_exact_mut(QK)
                .zip(row.chunks_exact(ty.block_bytes()))
            {
                block(b, o);
            }
        });
    Some(out)
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// `Q8_0`: f16 scale `d`, then 32 signed bytes; `x = d * q`.
fn q8_0_block(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for (o, &q) in out.iter_mut().zip(&b[2..2 + QK]) {
        *o = d * f32::from(q as i8);
    }
}

/// `Q4_0`: f16 scale `d`, then 16 bytes of nibbles; `x = d * (q - 8)`. The low nibble of byte
/// `j` is element `j`, the high nibble element `j + 16`.
fn q4_0_block(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let (lo, hi) = out.split_at_mut(QK / 2);
    for (j, &q) in b[2..2 + QK / 2].iter().enumerate() {
        lo[j] = d * (f32::from(q & 0x0f) - 8.0);
        hi[j] = d * (f32::from(q >> 4) - 8.0);
    }
}

/// `Q4_1`: f16 scale `d`, f16 minimum `m`, then 16 bytes of nibbles; `x = d * q + m`, same
/// nibble order as `Q4_0`.
fn q4_1_block(b: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let (lo, hi) = out.split_at_mut(QK / 2);
    for (j, &q) in b[4..4 + QK / 2].iter().enumerate() {
        lo[j] = d * f32::from(q & 0x0f) + m;
        hi[j] = d * f32::from(q >> 4) + m;
    }
}

/// Source row of HF row `r` for a projection whose rows llama.cpp's converter permuted.
///
/// The converter interleaves each head's two rotary halves (`reshape(n_head, 2, half, cols)
/// .swapaxes(1, 2)`), so that its RoPE rotates adjacent pairs. HF's rotate-half layout is
/// `reshape(n_head, half, 2, cols).swapaxes(1, 2)` of the file: HF row `(h, i, j)` is file
/// row `(h, j, i)`.
pub fn unpermuted_source_row(r: usize, rows_per_head: usize) -> usize {
    let half = rows_per_head / 2;
    let (head, within) = (r / rows_per_head, r % rows_per_head);
    let (i, j) = (within / half, within % half);
    head * rows_per_head + j * 2 + i
}

/// Reorders the rows of `data` (`rows` rows of `row_len` elements) into HF layout.
fn unpermute_rows<T: Copy + Send + Sync>(
    data: &[T],
    row_len: usize,
    rows_per_head: usize,
) -> Vec<T> {
    let mut out = data.to_vec();
    out.par_chunks_mut(row_len)
        .enumerate()
        .for_each(|(r, dst)| {
            let src = unpermuted_source_row(r, rows_per_head);
            dst.copy_from_slice(&data[src * row_len..(src + 1) * row_len]);
        });
    out
}

/// A q/k projection weight or bias in HF row order. `n_heads` is the head count of the
/// projection (KV heads for k); the caller checks that `out_features` is a multiple of
/// `2 * n_heads`. A bias (`rows == 1`) is permuted element-wise.
pub(super) fn unpermute(w: &Weight, n_heads: usize) -> Weight {
    let (out_features, row_len) = if w.rows == 1 {
        (w.cols, 1)
    } else {
        (w.rows, w.cols)
    };
    let per_head = out_features / n_heads;
    let (rows, cols) = (w.rows, w.cols);
    match w.view() {
        WeightView::F32(s) => Weight::from_f32(rows, cols, unpermute_rows(s, row_len, per_head)),
        WeightView::F16(s) => Weight::from_f16(rows, cols, unpermute_rows(s, row_len, per_head)),
        WeightView::BF16(s) => Weight::from_bf16(rows, cols, unpermute_rows(s, row_len, per_head)),
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
        let got = dequantize(GgmlType::Q8_0, &b, 32).unwrap();
        let want: Vec<f32> = (0..32).map(|i| 0.5 * (i as f32 - 16.0)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn q4_0_low_nibbles_first_then_high() {
        let mut b = f16_bytes(2.0).to_vec();
        // Byte j: low nibble j % 16, high nibble 15 - j.
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let got = dequantize(GgmlType::Q4_0, &b, 32).unwrap();
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
        let got = dequantize(GgmlType::Q4_1, &b, 32).unwrap();
        assert_eq!(got[0], -1.5);
        assert_eq!(got[3], 0.25 * 3.0 - 1.5);
        assert_eq!(got[16], 0.25 * 15.0 - 1.5);
        assert_eq!(got[31], 0.25 * 0.0 - 1.5);
    }

    #[test]
    fn multi_row_dequant_keeps_row_order() {
        // Two rows of two Q8_0 blocks each, block k filled with value k.
        let mut b = Vec::new();
        for k in 0..4 {
            b.extend(f16_bytes(1.0));
            b.extend([k as u8; 32]);
        }
        let got = dequantize(GgmlType::Q8_0, &b, 64).unwrap();
        for (i, x) in got.iter().enumerate() {
            assert_eq!(*x, (i / 32) as f32);
        }
    }

    #[test]
    fn unsupported_block_type_is_none() {
        assert!(dequantize(GgmlType::Q6_K, &[0; 210], 256).is_none());
    }

    /// llama.cpp's `convert_hf_to_gguf.py` permute, written out index by index:
    /// `w.reshape(n_head, 2, half, cols).swapaxes(1, 2).reshape(rows, cols)`.
    fn llama_cpp_permute(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
        let half = rows / n_head / 2;
        let mut out = vec![0.0; rows * cols];
        for h in 0..n_head {
            for j in 0..half {
                for i in 0..2 {
                    let dst = h * 2 * half + j * 2 + i;
                    let src = h * 2 * half + i * half + j;
                    out[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&w[src * cols..(src + 1) * cols]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        let (rows, cols, n_head) = (24, 3, 3);
        let hf: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
        let file = Weight::from_f32(rows, cols, llama_cpp_permute(&hf, rows, cols, n_head));
        assert_eq!(unpermute(&file, n_head).to_f32_vec(), hf);
    }

    #[test]
    fn unpermute_one_head_of_four_rows() {
        // File rows interleave the halves: (a0, b0, a1, b1) -> HF (a0, a1, b0, b1).
        let file = Weight::from_f32(4, 1, vec![0.0, 1.0, 2.0, 3.0]);
        assert_eq!(unpermute(&file, 1).to_f32_vec(), vec![0.0, 2.0, 1.0, 3.0]);
    }

    #[test]
    fn unpermute_bias_and_f16_keep_dtype() {
        let bias = Weight::from_f16(1, 4, [0.0, 1.0, 2.0, 3.0].map(f16::from_f32).to_vec());
        let got = unpermute(&bias, 1);
        assert_eq!(got.dtype(), evopress_kernels::DType::F16);
        assert_eq!((got.rows, got.cols), (1, 4));
        assert_eq!(got.to_f32_vec(), vec![0.0, 2.0, 1.0, 3.0]);
    }
}
