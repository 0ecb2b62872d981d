//! SparseGPT ("FastOBC" in the original, docs/sparsegpt-gptq.md): prune a linear layer to a target
//! sparsity while compensating the error with the remaining weights, using the layer-input Hessian.
//!
//! The problem, per row `w` of `W` (rows are independent): minimise the output error on the
//! calibration inputs, `(w - w_hat) H (w - w_hat)^T` with `H = sum X^T X`, subject to the
//! sparsity. Optimal Brain Surgeon answers it one weight at a time: zeroing weight `j` costs
//! `w_j^2 / [H^-1]_jj`, and the best fix-up of the other weights is
//! `-(w_j / [H^-1]_jj) * H^-1[j, :]`.
//!
//! SparseGPT walks the columns left to right and never revisits one. Once the columns `< j` are
//! fixed, the inverse Hessian of the weights still free is the Schur complement of `H^-1` that
//! eliminates those columns. With `U` the upper Cholesky factor of `H^-1` (`H^-1 = U^T U`), that
//! complement is simply `U[j.., j..]^T U[j.., j..]`: its first row is `U_jj * U[j, j..]` and its
//! first diagonal entry `U_jj^2`. So one factorisation, done once, holds every OBS step of the
//! sweep, and the step for column `j` of a row reads:
//!
//! ```text
//!   q    = 0 if pruned else w_j        the new value of w_j
//!   err  = (w_j - q) / U_jj            the scaled error
//!   w[j..] -= err * U[j, j..]          OBS compensation; sets w_j to q exactly
//! ```
//!
//! Columns are processed in blocks of 128. Inside a block the updates are applied eagerly (small,
//! in cache); the effect on all later columns is deferred and applied once per block as one matrix
//! product, `W[:, c2..] -= Err[:, block] @ U[block, c2..]` (the "lazy batch update"). This is the
//! same arithmetic, reordered so that almost all flops are in a GEMM.
//!
//! Mask selection is adaptive: at the start of each block, score every weight of the block by the
//! OBS saliency `w^2 / U_jj^2` (with the block's weights already updated by earlier blocks) and
//! prune the block's share of the target with the smallest scores, across all rows at once.

use evopress_core::hessian::InverseFactor;
use faer::linalg::matmul::matmul;
use faer::Parallelism;
use rayon::prelude::*;

use crate::{check_shape, SparseError};

/// Solver hyper-parameters (the original's defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SparseGptConfig {
    /// Dampening added to the Hessian diagonal, relative to its mean (`--rel_damp`, 0.01).
    pub rel_damp: f64,
    /// Columns per block for mask selection and the lazy update (`--block_size`, 128).
    pub block_size: usize,
}

impl Default for SparseGptConfig {
    fn default() -> Self {
        Self {
            rel_damp: 0.01,
            block_size: 128,
        }
    }
}

/// One layer prepared for pruning: the dense weights and the Cholesky factor of the inverse
/// Hessian, computed once and shared by every sparsity level (each level starts from the
/// original `W`, as in the original).
pub struct SparseGpt {
    rows: usize,
    cols: usize,
    block_size: usize,
    /// The input `W`, untouched (level 0% returns it as is).
    w: Vec<f32>,
    /// Inputs never seen in calibration (`H_jj == 0`), zeroed at every level above 0%.
    dead: Vec<usize>,
    /// `U`, upper Cholesky factor of the damped `H^-1`, `[cols, cols]` row-major (zeros below the
    /// diagonal). Factorised in f64, stored in f32 like the original's fp32 loop.
    u: Vec<f32>,
}

impl SparseGpt {
    /// Prepares `W` (`[rows, cols]`, row-major, a linear's `[out, in]`) with its Hessian `H`
    /// (`[cols, cols]`, symmetric, f32 or f64, any positive scale since the damping is
    /// relative; like `torch.linalg.cholesky`, only its lower triangle is read).
    ///
    /// The Hessian is prepared by [`InverseFactor`] (docs/sparsegpt-gptq.md): dead inputs
    /// found (their weights are zeroed at every level above 0%), `H` damped by
    /// `rel_damp * mean(diag H)` (a dead diagonal counting as 1), every all-zero column of `W`
    /// decoupled (its row and column cut, diagonal 1) so it neither moves nor is moved, then `U`,
    /// the upper Cholesky factor of `H^-1`, in f64.
    pub fn new<T: Copy + Into<f64>>(
        w: &[f32],
        rows: usize,
        cols: usize,
        h: &[T],
        config: SparseGptConfig,
    ) -> Result<Self, SparseError> {
        check_shape("weight W", w, rows, cols)?;
        check_shape("Hessian H", h, cols, cols)?;
        assert!(config.block_size > 0, "block_size must be positive");

        // All-zero columns of W (dead inputs' columns are zeroed anyway) stay zero at every
        // level: decoupled, they are pruned for free without moving the other weights.
        let mut zero_col = vec![true; cols];
        for row in w.chunks_exact(cols) {
            for (z, &x) in zero_col.iter_mut().zip(row) {
                *z &= x == 0.0;
            }
        }
        let zero_cols: Vec<usize> = (0..cols).filter(|&j| zero_col[j]).collect();
        let factor = InverseFactor::new(h, cols, config.rel_damp, None, &zero_cols)?;
        let dead = (0..cols).filter(|&j| factor.dead()[j]).collect();
        let u = factor.into_u();
        Ok(Self {
            rows,
            cols,
            block_size: config.block_size,
            w: w.to_vec(),
            dead,
            u,
        })
    }

    /// `[rows, cols]` of the layer.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Prunes a fresh copy of `W` to `sparsity` and returns it (`[rows, cols]`, row-major).
    ///
    /// Exactly `round(sparsity * rows * cols)` weights are selected for pruning, spread over the
    /// column blocks in proportion to their size (the original rounds per block, so its total can
    /// drift by up to one weight per block). Weights of dead inputs are zeroed on top of that,
    /// but are always the first ones selected, since their score is 0. `sparsity == 0` returns
    /// `W` bit for bit; `sparsity == 1` returns all zeros.
    pub fn prune(&self, sparsity: f64) -> Result<Vec<f32>, SparseError> {
        if !(0.0..=1.0).contains(&sparsity) {
            return Err(SparseError::Sparsity(sparsity));
        }
        let (rows, cols, bs) = (self.rows, self.cols, self.block_size);
        let mut w = self.w.clone();
        // Number of weights to prune among the first `n` (in column-block order).
        let target = |n: usize| ((sparsity * n as f64).round() as usize).min(n);
        if target(rows * cols) == 0 {
            return Ok(w);
        }
        for row in w.chunks_exact_mut(cols) {
            for &j in &self.dead {
                row[j] = 0.0;
            }
        }

        let (u, sweep) = (&self.u, obs_sweep_kernel());
        let mut errs = vec![0.0f32; rows * bs];
        let mut pruned = vec![false; rows * bs];
        let mut scores = Vec::with_capacity(rows * bs);
        for c1 in (0..cols).step_by(bs) {
            let c2 = (c1 + bs).min(cols);
            let width = c2 - c1;
            let errs = &mut errs[..rows * width];
            let pruned = &mut pruned[..rows * width];

            let k = target(rows * c2) - target(rows * c1);
            self.select_mask(&w, c1, c2, k, &mut scores, pruned);

            // Column sweep inside the block, every row independently.
            let u_block = &u[c1 * cols + c1..];
            w.par_chunks_mut(cols)
                .zip(errs.par_chunks_mut(width))
                .zip(pruned.par_chunks(width))
                .for_each(|((row, err), mask)| sweep(&mut row[c1..c2], err, mask, u_block, cols));

            // Lazy batch update of every later column: W[:, c2..] -= Err @ U[c1..c2, c2..].
            if c2 < cols && k > 0 {
                let rest = cols - c2;
                let acc =
                    faer::mat::from_row_major_slice_with_stride_mut(&mut w[c2..], rows, rest, cols);
                let lhs = faer::mat::from_row_major_slice(errs, rows, width);
                let rhs = faer::mat::from_row_major_slice_with_stride(
                    &u[c1 * cols + c2..],
                    width,
                    rest,
                    cols,
                );
                matmul(acc, lhs, rhs, Some(1.0), -1.0, Parallelism::Rayon(0));
            }
        }
        Ok(w)
    }

    /// Prunes to every sparsity in `sparsities` (levels run in parallel; each holds one copy of
    /// `W`). The result is in the order of `sparsities`.
    pub fn prune_levels(&self, sparsities: &[f64]) -> Result<Vec<Vec<f32>>, SparseError> {
        sparsities.par_iter().map(|&p| self.prune(p)).collect()
    }

    /// Marks the `k` weights of block `[c1, c2)` with the smallest OBS score `w^2 / U_jj^2` in
    /// `pruned` (`[rows, c2 - c1]` row-major). Ties go to the lower index, so the mask is
    /// deterministic.
    fn select_mask(
        &self,
        w: &[f32],
        c1: usize,
        c2: usize,
        k: usize,
        scores: &mut Vec<u64>,
        pruned: &mut [bool],
    ) {
        let width = c2 - c1;
        pruned.fill(false);
        if k == 0 {
            return;
        }
        if k >= pruned.len() {
            pruned.fill(true);
            return;
        }
        // Scores are >= 0, so their f32 bits order like the values; the index in the low half
        // breaks ties and one integer sort key replaces a float comparison.
        scores.clear();
        for (r, row) in w.chunks_exact(self.cols).enumerate() {
            for (i, &x) in row[c1..c2].iter().enumerate() {
                let d = self.u[(c1 + i) * self.cols + c1 + i];
                let score = (x * x) / (d * d);
                scores.push(((score.to_bits() as u64) << 32) | (r * width + i) as u64);
            }
        }
        scores.select_nth_unstable(k - 1);
        for &key in &scores[..k] {
            pruned[key as u32 as usize] = true;
        }
    }
}

/// The OBS sweep of one row over one column block (see the module docs): for each column `i`,
/// `q = 0` if pruned else `w_i`, `err_i = (w_i - q) / U_ii`, then `w[i..] -= err_i * U[i, i..]`.
///
/// `wb` is the row's block (`width` weights), `err` receives the scaled errors for the lazy
/// update, `u` starts at the block's diagonal entry `U[c1, c1]` and has row stride `stride`.
/// Kept weights have `err == 0`, so their (no-op) update is skipped.
#[inline(always)]
fn obs_sweep_row(wb: &mut [f32], err: &mut [f32], pruned: &[bool], u: &[f32], stride: usize) {
    let width = wb.len();
    for i in 0..width {
        let u_row = &u[i * stride + i..i * stride + width];
        let q = if pruned[i] { 0.0 } else { wb[i] };
        let e = (wb[i] - q) / u_row[0];
        err[i] = e;
        if e != 0.0 {
            for (x, &uij) in wb[i + 1..].iter_mut().zip(&u_row[1..]) {
                *x -= e * uij;
            }
        }
        wb[i] = q;
    }
}

type SweepFn = fn(&mut [f32], &mut [f32], &[bool], &[f32], usize);

/// [`obs_sweep_row`] compiled for the widest vectors this CPU has (the crate itself is built for
/// baseline x86-64, i.e. 4-wide SSE2, and the sweep is a large share of a level's time).
fn obs_sweep_kernel() -> SweepFn {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(wb: &mut [f32], err: &mut [f32], pruned: &[bool], u: &[f32], stride: usize) {
            obs_sweep_row(wb, err, pruned, u, stride)
        }
        // SAFETY: only reached when the CPU supports AVX2.
        return |wb, err, pruned, u, stride| unsafe { avx2(wb, err, pruned, u, stride) };
    }
    obs_sweep_row
}

/// Magnitude pruning, the baseline SparseGPT must beat: zero the `round(sparsity * numel)`
/// weights of smallest absolute value in the whole matrix (ties to the lower index).
pub fn magnitude_prune(w: &[f32], sparsity: f64) -> Result<Vec<f32>, SparseError> {
    if !(0.0..=1.0).contains(&sparsity) {
        return Err(SparseError::Sparsity(sparsity));
    }
    let k = ((sparsity * w.len() as f64).round() as usize).min(w.len());
    let mut out = w.to_vec();
    if k == 0 {
        return Ok(out);
    }
    let mut order: Vec<(f32, u32)> = w
        .iter()
        .enumerate()
        .map(|(i, x)| (x.abs(), i as u32))
        .collect();
    order.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    for &(_, i) in &order[..k] {
        out[i as usize] = 0.0;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// A small layer: random W and H = X^T X from uniform random X, with input 3 dead.
    fn small_layer(rows: usize, cols: usize) -> (Vec<f32>, Vec<f64>) {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let tokens = 3 * cols;
        let x: Vec<f64> = (0..tokens * cols)
            .map(|k| {
                if k % cols == 3 {
                    0.0
                } else {
                    rng.gen_range(-1.0..1.0)
                }
            })
            .collect();
        let mut h = vec![0.0; cols * cols];
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

    /// U^T U must be the inverse of the damped Hessian with the dead input decoupled.
    #[test]
    fn u_is_the_upper_cholesky_factor_of_the_inverse_hessian() {
        let (rows, cols) = (4, 40);
        let (w, mut h) = small_layer(rows, cols);
        let sgpt = SparseGpt::new(&w, rows, cols, &h, SparseGptConfig::default()).unwrap();
        h[3 * cols + 3] = 1.0;
        let damp = 0.01 * (0..cols).map(|j| h[j * cols + j]).sum::<f64>() / cols as f64;
        for j in 0..cols {
            h[j * cols + j] += damp;
        }
        // The dead input's column of W is zero, so it is decoupled after the damping.
        h[3 * cols + 3] = 1.0;
        let u = |i: usize, j: usize| sgpt.u[i * cols + j] as f64;
        for i in 0..cols {
            for j in 0..i {
                assert_eq!(u(i, j), 0.0, "U is upper triangular");
            }
            // (U^T U H)[i, j] = identity
            for j in 0..cols {
                let mut s = 0.0;
                for k in 0..cols {
                    let utu: f64 = (0..cols).map(|m| u(m, i) * u(m, k)).sum();
                    s += utu * h[k * cols + j];
                }
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((s - want).abs() < 1e-4, "(U^T U H)[{i}, {j}] = {s}");
            }
        }
    }

    /// The lazy batch update only reorders the arithmetic: applying every column's OBS update to
    /// all later columns at once (no blocks in the update) gives the same weights.
    #[test]
    fn lazy_batch_update_equals_eager_updates() {
        let (rows, cols) = (16, 300);
        let (w, h) = small_layer(rows, cols);
        let sgpt = SparseGpt::new(&w, rows, cols, &h, SparseGptConfig::default()).unwrap();
        let p = 0.6;
        let lazy = sgpt.prune(p).unwrap();

        let mut eager = w.clone();
        for row in eager.chunks_exact_mut(cols) {
            row[3] = 0.0;
        }
        let target = |n: usize| (p * n as f64).round() as usize;
        let (mut scores, mut pruned) = (Vec::new(), vec![false; rows * 128]);
        for c1 in (0..cols).step_by(128) {
            let c2 = (c1 + 128).min(cols);
            let width = c2 - c1;
            let k = target(rows * c2) - target(rows * c1);
            sgpt.select_mask(&eager, c1, c2, k, &mut scores, &mut pruned[..rows * width]);
            for (r, row) in eager.chunks_exact_mut(cols).enumerate() {
                for j in c1..c2 {
                    let q = if pruned[r * width + j - c1] {
                        0.0
                    } else {
                        row[j]
                    };
                    let e = (row[j] - q) / sgpt.u[j * cols + j];
                    for (x, &ujm) in row[j..]
                        .iter_mut()
                        .zip(&sgpt.u[j * cols + j..(j + 1) * cols])
                    {
                        *x -= e * ujm;
                    }
                    row[j] = q;
                }
            }
        }
        let scale = w.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        for (a, b) in lazy.iter().zip(&eager) {
            assert!((a - b).abs() <= 1e-4 * scale, "{a} vs {b}");
        }
    }
}
