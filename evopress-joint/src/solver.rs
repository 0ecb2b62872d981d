//! Joint sparsification and quantization of one linear layer (docs/joint-search.md): the
//! SparseGPT paper's "50% + 4-bit" done in one column sweep, with one factorisation of the
//! inverse Hessian shared by every (sparsity, bit width) variant of the layer.
//!
//! Both SparseGPT and GPTQ walk the columns of `W` left to right and, after fixing column `j`
//! to a value `q`, push the error onto the columns not yet fixed with the OBS update
//!
//! ```text
//!   err = (w_j − q) / U_jj          w[j+1..] −= err · U[j, j+1..]         (Uᵀ U = H⁻¹)
//! ```
//!
//! SparseGPT's `q` is 0 or `w_j`; GPTQ's is `w_j` rounded to its group's grid. The joint sweep
//! uses `q = 0` for a pruned weight and the rounded `w_j` for a kept one. Columns go in blocks:
//! at a block's start the mask of the block is chosen adaptively (the block's share of the
//! pruned weights with the least OBS saliency `w²/U_jj²`, over all rows at once, on weights
//! that already carry every earlier block's updates: SparseGPT's rule), then each group of the
//! block gets its grid from its *kept* weights as they are when the sweep enters the group
//! (pruned weights do not stretch the range), then the columns are swept; the updates past the
//! block are applied once per block as one matrix product (the lazy batch update).
//!
//! Blocks hold whole groups, so a grid is never fitted on columns that still miss updates. At
//! sparsity 0 nothing is pruned and the sweep is GPTQ's (same blocks of 128 columns at groups of
//! 64, same grids, same order of operations inside a block).

use evopress_core::hessian::{HessianError, InverseFactor};
use evopress_quant::{GroupParams, QuantSpec};
use faer::linalg::matmul::matmul;
use faer::Parallelism;
use rayon::prelude::*;

/// Columns of the adaptive-mask and lazy-update blocks, before rounding up to whole groups.
pub const BLOCK: usize = 128;

/// A layer prepared once for all its variants: the weights (dead inputs zeroed) and `U`.
pub struct JointSolver {
    rows: usize,
    cols: usize,
    w: Vec<f32>,
    u: Vec<f32>,
}

/// One variant: which weights are kept, their codes and grids, and the weights they decode to.
#[derive(Clone, Debug, PartialEq)]
pub struct Solved {
    pub rows: usize,
    pub cols: usize,
    /// `[rows, cols]`: true where the weight is kept (stored as a code).
    pub kept: Vec<bool>,
    /// `[rows, cols]`: the code of every kept weight (0 where pruned).
    pub codes: Vec<u8>,
    /// `[rows, n_groups]`: each (row, group of columns)'s grid, f16-exact.
    pub grids: Vec<GroupParams>,
    /// `[rows, cols]`: what the variant decodes to (0 where pruned).
    pub w_hat: Vec<f32>,
}

impl JointSolver {
    /// Prepares `w` (`[rows, cols]`, row-major `[out, in]`) with its Hessian `h` (`[cols,
    /// cols]`), damped by `rel_damp · mean(diag H)` (docs/sparsegpt-gptq.md).
    pub fn new(
        w: &[f32],
        rows: usize,
        cols: usize,
        h: &[f32],
        rel_damp: f64,
    ) -> Result<Self, HessianError> {
        if w.len() != rows * cols {
            return Err(HessianError::Shape {
                what: "weight W",
                expected: rows * cols,
                got: w.len(),
            });
        }
        let factor = InverseFactor::new(h, cols, rel_damp, None, &[])?;
        let dead = factor.dead();
        let w = (w.iter().enumerate())
            .map(|(i, &v)| if dead[i % cols] { 0.0 } else { v })
            .collect();
        Ok(JointSolver {
            rows,
            cols,
            w,
            u: factor.into_u(),
        })
    }

    /// Prunes exactly `round(sparsity · rows · cols)` weights and quantizes the rest with
    /// `spec` (its `group_size` counts original columns).
    pub fn solve(&self, sparsity: f64, spec: &QuantSpec) -> Solved {
        let (rows, cols, gs) = (self.rows, self.cols, spec.group_size.max(1));
        let bs = gs * BLOCK.div_ceil(gs);
        let n_groups = cols.div_ceil(gs);
        let maxq = spec.maxq();
        let target = |n: usize| ((sparsity * n as f64).round() as usize).min(n);
        let mut w = self.w.clone();
        let mut kept = vec![true; rows * cols];
        let mut codes = vec![0u8; rows * cols];
        let fallback = GroupParams {
            scale: 1.0,
            zero: 0.0,
        };
        let mut grids = vec![fallback; rows * n_groups];
        let mut delta = vec![0f32; rows * bs];
        let mut scores = Vec::new();
        let u = &self.u;
        for c1 in (0..cols).step_by(bs) {
            let c2 = (c1 + bs).min(cols);
            let width = c2 - c1;
            let k = target(rows * c2) - target(rows * c1);
            self.select_mask(&w, c1, c2, k, &mut scores, &mut kept);
            let delta = &mut delta[..rows * width];
            w.par_chunks_mut(cols)
                .zip(kept.par_chunks(cols))
                .zip(codes.par_chunks_mut(cols))
                .zip(delta.par_chunks_mut(width))
                .zip(grids.par_chunks_mut(n_groups))
                .for_each(|((((w, keep), q), d), grid)| {
                    let mut fit = Vec::with_capacity(gs);
                    for j in c1..c2 {
                        if j % gs == 0 {
                            let end = (j + gs).min(cols);
                            fit.clear();
                            fit.extend((j..end).filter(|&c| keep[c]).map(|c| w[c]));
                            grid[j / gs] = if fit.is_empty() {
                                fallback
                            } else {
                                spec.fit(&fit)
                            };
                        }
                        let x = w[j];
                        w[j] = if keep[j] {
                            let g = grid[j / gs];
                            q[j] = g.quantize(x, maxq);
                            g.dequantize(q[j])
                        } else {
                            0.0
                        };
                        let dj = (x - w[j]) / u[j * cols + j];
                        d[j - c1] = dj;
                        let u_row = &u[j * cols + j + 1..j * cols + c2];
                        for (wv, &uv) in w[j + 1..c2].iter_mut().zip(u_row) {
                            *wv -= dj * uv;
                        }
                    }
                });
            if c2 < cols {
                let rest = cols - c2;
                let acc =
                    faer::mat::from_row_major_slice_with_stride_mut(&mut w[c2..], rows, rest, cols);
                let lhs = faer::mat::from_row_major_slice(delta, rows, width);
                let rhs = faer::mat::from_row_major_slice_with_stride(
                    &u[c1 * cols + c2..],
                    width,
                    rest,
                    cols,
                );
                matmul(acc, lhs, rhs, Some(1.0), -1.0, Parallelism::Rayon(0));
            }
        }
        Solved {
            rows,
            cols,
            kept,
            codes,
            grids,
            w_hat: w,
        }
    }

    /// Clears `kept` for the `k` weights of columns `[c1, c2)` with the least OBS saliency
    /// `w²/U_jj²` (over all rows; ties to the lower row-major index, so the mask is
    /// deterministic).
    fn select_mask(
        &self,
        w: &[f32],
        c1: usize,
        c2: usize,
        k: usize,
        scores: &mut Vec<u64>,
        kept: &mut [bool],
    ) {
        if k == 0 {
            return;
        }
        let (cols, width) = (self.cols, c2 - c1);
        // Saliencies are ≥ 0, so their f32 bits order like the values; the index in the low
        // half breaks ties.
        scores.clear();
        for (r, row) in w.chunks_exact(cols).enumerate() {
            for (i, &x) in row[c1..c2].iter().enumerate() {
                let d = self.u[(c1 + i) * cols + c1 + i];
                let score = (x * x) / (d * d);
                scores.push(((score.to_bits() as u64) << 32) | (r * width + i) as u64);
            }
        }
        let k = k.min(scores.len());
        scores.select_nth_unstable(k - 1);
        for &key in &scores[..k] {
            let i = key as u32 as usize;
            kept[(i / width) * cols + c1 + i % width] = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use evopress_core::hessian::rel_error;
    use evopress_quant::{gptq, rtn, GptqConfig};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Random W and a correlated `H = XᵀX` with input 5 dead.
    fn layer(rows: usize, cols: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let tokens = 2 * cols;
        let base: Vec<f32> = (0..tokens).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let x: Vec<f32> = (0..tokens * cols)
            .map(|i| {
                let (t, c) = (i / cols, i % cols);
                if c == 5 {
                    0.0
                } else {
                    0.6 * base[t] + rng.gen_range(-1.0f32..1.0)
                }
            })
            .collect();
        let mut h = vec![0f32; cols * cols];
        for t in x.chunks_exact(cols) {
            for i in 0..cols {
                for j in 0..cols {
                    h[i * cols + j] += t[i] * t[j];
                }
            }
        }
        let w = (0..rows * cols).map(|_| rng.gen_range(-1.0..1.0)).collect();
        (w, h)
    }

    #[test]
    fn sparsity_zero_is_gptq() {
        let (rows, cols) = (24, 576);
        let (w, h) = layer(rows, cols, 1);
        let damp = GptqConfig::default().rel_damp as f64;
        let solver = JointSolver::new(&w, rows, cols, &h, damp).unwrap();
        for bits in [2u8, 4] {
            let spec = QuantSpec::new(bits, 64);
            let ours = solver.solve(0.0, &spec);
            let theirs = gptq(&w, rows, cols, &h, &spec, &GptqConfig::default()).unwrap();
            assert!(ours.kept.iter().all(|&k| k));
            let codes = theirs.packed.unpack_codes();
            let flips = ours
                .codes
                .iter()
                .zip(&codes)
                .filter(|(a, b)| a != b)
                .count();
            // Same sweep; only the lazy update's GEMM may sum in another order.
            assert!(
                flips * 1000 < codes.len(),
                "{bits} bits: {flips} codes differ"
            );
        }
    }

    #[test]
    fn exact_sparsity_codes_on_their_grids_and_better_than_prune_then_round() {
        let (rows, cols) = (32, 300);
        let (w, h) = layer(rows, cols, 2);
        let solver = JointSolver::new(&w, rows, cols, &h, 0.01).unwrap();
        for (sparsity, gs) in [(0.5, 128), (0.75, 256), (0.3, 96)] {
            let spec = QuantSpec::new(3, gs);
            let s = solver.solve(sparsity, &spec);
            let pruned = s.kept.iter().filter(|&&k| !k).count();
            assert_eq!(pruned, (sparsity * (rows * cols) as f64).round() as usize);
            let ng = cols.div_ceil(gs);
            for r in 0..rows {
                // The dead input is pruned first (its saliency is 0).
                assert!(!s.kept[r * cols + 5]);
                for c in 0..cols {
                    let i = r * cols + c;
                    let want = if s.kept[i] {
                        s.grids[r * ng + c / gs].dequantize(s.codes[i])
                    } else {
                        0.0
                    };
                    assert_eq!(s.w_hat[i], want);
                }
            }
            // Against pruning by magnitude then rounding the survivors to nearest: the joint
            // sweep compensates both errors.
            let mut naive = w.clone();
            let mut order: Vec<usize> = (0..w.len()).collect();
            order.sort_by(|&a, &b| w[a].abs().total_cmp(&w[b].abs()));
            for &i in &order[..pruned] {
                naive[i] = 0.0;
            }
            let rounded = rtn(&naive, rows, cols, &spec).unwrap().w_hat;
            let e_joint = rel_error(&w, &s.w_hat, &h, rows, cols).unwrap();
            let e_naive = rel_error(&w, &rounded, &h, rows, cols).unwrap();
            assert!(
                e_joint < 0.7 * e_naive,
                "{sparsity}: {e_joint} vs {e_naive}"
            );
        }
    }

    #[test]
    fn more_bits_and_less_sparsity_lower_the_error() {
        let (rows, cols) = (16, 256);
        let (w, h) = layer(rows, cols, 3);
        let solver = JointSolver::new(&w, rows, cols, &h, 0.01).unwrap();
        let err = |s: f64, b: u8| {
            let v = solver.solve(s, &QuantSpec::new(b, 64));
            rel_error(&w, &v.w_hat, &h, rows, cols).unwrap()
        };
        for s in [0.0, 0.5] {
            assert!(
                err(s, 2) > err(s, 3) && err(s, 3) > err(s, 4),
                "sparsity {s}"
            );
        }
        assert!(err(0.5, 4) > err(0.0, 4));
    }
}
