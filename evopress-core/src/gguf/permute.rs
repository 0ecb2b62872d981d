//! The undoing of llama.cpp's Q/K row permutation, for every weight kind.

use evopress_kernels::{Weight, WeightView};
use rayon::prelude::*;

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
    if let Some(g) = w.as_ggml() {
        // Block rows are independent: move them whole. (A loader's weight is the whole
        // matrix, never a row slice; 1-D tensors are not stored in blocks.)
        return Weight::from_ggml(g.permute_rows(|r| unpermuted_source_row(r, per_head)));
    }
    match w.view() {
        WeightView::F32(s) => Weight::from_f32(rows, cols, unpermute_rows(s, row_len, per_head)),
        WeightView::F16(s) => Weight::from_f16(rows, cols, unpermute_rows(s, row_len, per_head)),
        WeightView::BF16(s) => Weight::from_bf16(rows, cols, unpermute_rows(s, row_len, per_head)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn unpermute_moves_ggml_rows_whole() {
        use evopress_kernels::{Buf, GgmlType};
        // Four Q8_0 rows of one block, row r filled with the value r (scale 1).
        let one = half::f16::from_f32(1.0).to_le_bytes();
        let blocks: Vec<u8> = (0..4u8)
            .flat_map(|r| one.into_iter().chain([r; 32]))
            .collect();
        let w = Weight::ggml(GgmlType::Q8_0, 4, 32, Buf::owned(blocks)).unwrap();
        let got = unpermute(&w, 1);
        assert_eq!(got.kind(), w.kind());
        let first: Vec<f32> = got.to_f32_vec().chunks(32).map(|r| r[0]).collect();
        assert_eq!(first, vec![0.0, 2.0, 1.0, 3.0]);
    }

    #[test]
    fn unpermute_bias_and_f16_keep_dtype() {
        let bias = Weight::from_f16(1, 4, [0.0, 1.0, 2.0, 3.0].map(half::f16::from_f32).to_vec());
        let got = unpermute(&bias, 1);
        assert_eq!(got.dtype(), evopress_kernels::DType::F16);
        assert_eq!((got.rows, got.cols), (1, 4));
        assert_eq!(got.to_f32_vec(), vec![0.0, 2.0, 1.0, 3.0]);
    }
}
