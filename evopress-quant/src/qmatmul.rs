//! `out = x · Ŵᵀ` straight from a [`PackedMatrix`], never materialising `Ŵ` in f32.
//!
//! The rows of `Ŵ` (output features) are split into tiles, one rayon task per tile. A task
//! decodes its rows into a small buffer it owns (one row for few tokens, a tile of rows for
//! many) and multiplies:
//!
//! ```text
//!   m ≤ SMALL_M (decoding, GEMV):  for each row r: buf = Ŵ[r, :];  out[i, r] = dot(buf, x[i, :])
//!   m > SMALL_M (prefill, GEMM):   buf = Ŵ[r0..r1, :];  out[:, r0..r1] = x · bufᵀ   (gemm crate)
//! ```
//!
//! For few tokens the work is all decoding (one multiply-add per decoded weight per token), and
//! the packed matrix is 5-16x smaller than f32 to stream from memory. For many tokens the decode
//! is amortised over `m` tokens and the GEMM micro-kernel dominates.
//!
//! Act-order matrices store columns permuted; rather than un-permuting `Ŵ`, the activations are
//! gathered once: `x · Ŵᵀ = x[:, perm] · Ŵ_permᵀ`.

use evopress_kernels::cpu::simd::{dispatch, dot};
use rayon::prelude::*;

use crate::PackedMatrix;

/// Up to this many tokens, dot products on decoded rows beat packing a GEMM.
const SMALL_M: usize = 4;
/// Output rows per task in the dot-product path.
const GEMV_TILE: usize = 16;
/// Most bytes of decoded f32 weights per task in the GEMM path: big enough to amortise the
/// GEMM's packing of `x` (repeated per tile), small enough to stay in L2.
const GEMM_TILE_BYTES: usize = 512 * 1024;

/// `out[m, rows] = x[m, cols] · Ŵᵀ`, all row-major, `Ŵ` decoded tile by tile.
///
/// Panics if the shapes disagree or the packed tables are inconsistent.
pub fn qmatmul(x: &[f32], m: usize, w: &PackedMatrix, out: &mut [f32]) {
    let (rows, cols) = (w.rows, w.cols);
    assert_eq!(x.len(), m * cols, "qmatmul: x must be [m, cols]");
    assert_eq!(out.len(), m * rows, "qmatmul: out must be [m, rows]");
    assert_eq!(
        w.codes.len(),
        rows * w.words_per_row(),
        "qmatmul: packed codes"
    );
    assert_eq!(w.scales.len(), rows * w.n_groups(), "qmatmul: scales");
    assert_eq!(w.zeros.len(), w.scales.len(), "qmatmul: zeros");
    if m == 0 || rows == 0 {
        return;
    }
    let gathered;
    let x = match &w.perm {
        Some(perm) => {
            assert_eq!(perm.len(), cols, "qmatmul: permutation");
            gathered = x
                .chunks_exact(cols)
                .flat_map(|xi| perm.iter().map(move |&p| xi[p as usize]))
                .collect::<Vec<f32>>();
            &gathered[..]
        }
        None => x,
    };
    let out = OutPtr(out.as_mut_ptr());
    if m <= SMALL_M {
        (0..rows.div_ceil(GEMV_TILE)).into_par_iter().for_each_init(
            || (vec![0f32; cols], vec![0f32; GEMV_TILE * m]),
            |(buf, res), t| {
                let r0 = t * GEMV_TILE;
                let r1 = (r0 + GEMV_TILE).min(rows);
                dispatch(
                    #[inline(always)]
                    || dot_rows(w, r0, r1, x, m, buf, res),
                );
                for (k, r) in (r0..r1).enumerate() {
                    for i in 0..m {
                        // SAFETY: out is [m, rows] and only this task writes its columns r0..r1.
                        unsafe { *out.get().add(i * rows + r) = res[k * m + i] };
                    }
                }
            },
        );
    } else {
        let tile = gemm_tile_rows(rows, cols);
        (0..rows.div_ceil(tile)).into_par_iter().for_each_init(
            || vec![0f32; tile * cols],
            |buf, t| {
                let r0 = t * tile;
                let nr = tile.min(rows - r0);
                let buf = &mut buf[..nr * cols];
                dispatch(
                    #[inline(always)]
                    || decode_rows(w, r0, buf),
                );
                // SAFETY: dst is out[:, r0..r0+nr] (m × nr, row stride `rows`), which only this
                // task writes; lhs is x (m × cols, row-major) and rhs is bufᵀ (buf is nr × cols
                // row-major), both fully in bounds.
                unsafe {
                    gemm::gemm(
                        m,
                        nr,
                        cols,
                        out.get().add(r0),
                        1,
                        rows as isize,
                        false,
                        x.as_ptr(),
                        1,
                        cols as isize,
                        buf.as_ptr(),
                        cols as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    )
                }
            },
        );
    }
}

/// Rows per GEMM task: at most [`GEMM_TILE_BYTES`] of f32, a multiple of 16 (the micro-kernel
/// width), and tiles in a multiple of the thread count so no thread idles at the end.
fn gemm_tile_rows(rows: usize, cols: usize) -> usize {
    let threads = rayon::current_num_threads();
    let max_rows = (GEMM_TILE_BYTES / (4 * cols.max(1))).max(16);
    let tiles = rows.div_ceil(max_rows).next_multiple_of(threads);
    rows.div_ceil(tiles)
        .next_multiple_of(16)
        .min(max_rows.next_multiple_of(16))
}

/// The output pointer shared by the tasks, each of which writes a disjoint set of elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks only write disjoint elements through it (see the call sites).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}
impl OutPtr {
    /// A method (not field access) so closures capture the `Sync` wrapper, not the raw pointer.
    fn get(self) -> *mut f32 {
        self.0
    }
}

// The kernels below run inside `dispatch`, the workspace's SIMD trampoline (AVX-512 / AVX2+FMA
// / baseline, chosen from CPUID): they and everything they call are `#[inline(always)]` so the
// decode and the dot vectorise with the wide registers.

/// `res[k·m + i] = dot(Ŵ[r0 + k, :], x[i, :])` for rows `r0..r1` and tokens `i < m`, decoding
/// one row at a time into `buf` (`cols` long, stays in L1).
#[inline(always)]
fn dot_rows(
    w: &PackedMatrix,
    r0: usize,
    r1: usize,
    x: &[f32],
    m: usize,
    buf: &mut [f32],
    res: &mut [f32],
) {
    for (r, res) in (r0..r1).zip(res.chunks_exact_mut(m)) {
        w.dequantize_row_into(r, buf);
        for (xi, o) in x.chunks_exact(w.cols).zip(res) {
            *o = dot(buf, xi);
        }
    }
}

/// Decodes rows `r0 .. r0 + buf.len()/cols` of `Ŵ` into `buf` (row-major).
#[inline(always)]
fn decode_rows(w: &PackedMatrix, r0: usize, buf: &mut [f32]) {
    for (i, row) in buf.chunks_exact_mut(w.cols).enumerate() {
        w.dequantize_row_into(r0 + i, row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::gaussian;
    use crate::{rtn, QuantSpec};

    /// `x · Wᵀ` in f64 on the dequantized matrix, and `Σ|x||w|` per output (the scale that
    /// float rounding error is relative to).
    fn dense_reference(
        x: &[f32],
        m: usize,
        w: &[f32],
        rows: usize,
        cols: usize,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut out = vec![0f64; m * rows];
        let mut mag = vec![0f64; m * rows];
        for i in 0..m {
            for r in 0..rows {
                for k in 0..cols {
                    let p = x[i * cols + k] as f64 * w[r * cols + k] as f64;
                    out[i * rows + r] += p;
                    mag[i * rows + r] += p.abs();
                }
            }
        }
        (out, mag)
    }

    #[test]
    fn matches_dense_matmul_on_the_dequantized_weights() {
        // Ragged shapes (cols not a multiple of 32 or of the group), every width, both paths
        // (m ≤ SMALL_M and the tile GEMM), with and without a column permutation.
        let (rows, cols) = (37, 200);
        let w = gaussian(rows * cols, 11);
        for bits in 2..=8 {
            let mut packed = rtn(&w, rows, cols, &QuantSpec::new(bits, 48))
                .unwrap()
                .packed;
            for permuted in [false, true] {
                packed.perm =
                    permuted.then(|| (0..cols as u32).map(|k| (k * 7 + 3) % 200).collect());
                let w_hat = packed.dequantize();
                for m in [1, 3, 5, 64] {
                    let x = gaussian(m * cols, 12 + m as u64);
                    let mut out = vec![f32::NAN; m * rows];
                    qmatmul(&x, m, &packed, &mut out);
                    let (want, mag) = dense_reference(&x, m, &w_hat, rows, cols);
                    for i in 0..m * rows {
                        let err = (out[i] as f64 - want[i]).abs();
                        assert!(
                            err <= 1e-4 * mag[i],
                            "bits {bits} perm {permuted} m {m} [{i}]: {} vs {}",
                            out[i],
                            want[i]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn many_tiles_and_threads_cover_every_output() {
        let (rows, cols, m) = (1000, 64, 9);
        let w = gaussian(rows * cols, 21);
        let packed = rtn(&w, rows, cols, &QuantSpec::new(4, 64)).unwrap().packed;
        let x = gaussian(m * cols, 22);
        let mut out = vec![f32::NAN; m * rows];
        qmatmul(&x, m, &packed, &mut out);
        let (want, mag) = dense_reference(&x, m, &packed.dequantize(), rows, cols);
        for i in 0..m * rows {
            assert!((out[i] as f64 - want[i]).abs() <= 1e-4 * mag[i]);
        }
    }
}
