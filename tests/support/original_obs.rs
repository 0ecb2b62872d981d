//! The original EvoPress OBS loop (`fast_obc.py` / `fast_obq.py`) transcribed literally, in
//! f64 and without any of our restructuring: the oracle that SparseGPT and GPTQ are compared
//! with (docs/sparsegpt-gptq.md). Shared by the crates' tests through `#[path]`.
//!
//! ```text
//!   dead: H_jj = 1, W[:, j] = 0;   H += 0.01 · mean(diag H) · I
//!   U = chol(chol_inverse(chol(H)))ᵀ   (upper)
//!   per 128-column block, per column j:  hook(j) (mask / grid), q = round(r, j, w),
//!       err = (w_j − q) / U_jj,  w[j..c2] −= err · U[j, j..c2],  w_j = q
//!   after the block: W[:, c2..] −= Err · U[c1..c2, c2..]
//! ```
//! (The zero-column decoupling of the original `_prepare` is left out: the layers compared
//! have no all-zero columns besides the dead ones.)

#![allow(dead_code)] // each test binary uses a different subset

use faer::solvers::SolverCore;
use faer::{Mat, Side};
use std::cell::RefCell;

/// The upper factor `U` of the damped inverse Hessian as the original computes it, and the
/// weights with dead columns zeroed, in f64.
pub struct Prepared {
    pub u: Mat<f64>,
    pub w: Vec<f64>,
}

impl Prepared {
    /// `U[i, j]`.
    pub fn u(&self, i: usize, j: usize) -> f64 {
        self.u.read(i, j)
    }
}

pub fn prepare<T: Copy + Into<f64>>(w: &[f32], h: &[T], rows: usize, cols: usize) -> Prepared {
    let mut hm = Mat::<f64>::from_fn(cols, cols, |i, j| h[i * cols + j].into());
    let mut w: Vec<f64> = w.iter().map(|&x| x as f64).collect();
    for j in 0..cols {
        if hm.read(j, j) == 0.0 {
            hm.write(j, j, 1.0);
            (0..rows).for_each(|r| w[r * cols + j] = 0.0);
        }
    }
    let damp = 0.01 * (0..cols).map(|j| hm.read(j, j)).sum::<f64>() / cols as f64;
    (0..cols).for_each(|j| hm.write(j, j, hm.read(j, j) + damp));
    let hinv = hm.cholesky(Side::Lower).unwrap().inverse();
    let l = hinv.cholesky(Side::Lower).unwrap().compute_l();
    Prepared {
        u: l.transpose().to_owned(),
        w,
    }
}

/// The column loop. `hook(j, w, p)` runs before column `j` (mask selection at a block start,
/// a grid fit at a group start) and sees the current weights; `round(r, j, x)` is the value
/// row `r` keeps at column `j`.
pub fn sweep(
    p: &Prepared,
    rows: usize,
    cols: usize,
    mut hook: impl FnMut(usize, &[f64]),
    mut round: impl FnMut(usize, usize, f64) -> f64,
) -> Vec<f32> {
    let mut w = p.w.clone();
    for c1 in (0..cols).step_by(128) {
        let c2 = (c1 + 128).min(cols);
        let width = c2 - c1;
        let mut err = vec![0.0; rows * width];
        for i in 0..width {
            let j = c1 + i;
            hook(j, &w);
            for r in 0..rows {
                let x = w[r * cols + j];
                let q = round(r, j, x);
                let e = (x - q) / p.u(j, j);
                for jj in j..c2 {
                    w[r * cols + jj] -= e * p.u(j, jj);
                }
                w[r * cols + j] = q;
                err[r * width + i] = e;
            }
        }
        for r in 0..rows {
            for jj in c2..cols {
                w[r * cols + jj] -= (0..width)
                    .map(|i| err[r * width + i] * p.u(c1 + i, jj))
                    .sum::<f64>();
            }
        }
    }
    w.iter().map(|&x| x as f32).collect()
}

/// SparseGPT: at each block start, prune the `round(numel · p)` weights of the block with the
/// smallest `w² / U_jj²`, across all rows.
pub fn sparsegpt<T: Copy + Into<f64>>(
    w: &[f32],
    h: &[T],
    rows: usize,
    cols: usize,
    sparsity: f64,
) -> Vec<f32> {
    let p = prepare(w, h, rows, cols);
    let pruned = RefCell::new(vec![false; rows * cols]);
    let select = |j: usize, w: &[f64]| {
        if !j.is_multiple_of(128) {
            return;
        }
        let c2 = (j + 128).min(cols);
        let mut scores: Vec<(f64, usize)> = (0..rows)
            .flat_map(|r| (j..c2).map(move |c| r * cols + c))
            .map(|k| (w[k].powi(2) / p.u(k % cols, k % cols).powi(2), k))
            .collect();
        let count = (scores.len() as f64 * sparsity).round() as usize;
        scores.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut m = pruned.borrow_mut();
        for &(_, k) in &scores[..count] {
            m[k] = true;
        }
    };
    let keep = |r: usize, j: usize, x: f64| {
        if pruned.borrow()[r * cols + j] {
            0.0
        } else {
            x
        }
    };
    sweep(&p, rows, cols, select, keep)
}

/// GPTQ with the original's min-max quantizer (asymmetric, range not forced to hold 0, f32-
/// style unrounded scales): at each group start, fit `min`/`max` per row on the current
/// (error-updated) weights of the group.
pub fn gptq<T: Copy + Into<f64>>(
    w: &[f32],
    h: &[T],
    rows: usize,
    cols: usize,
    bits: u32,
    group_size: usize,
) -> Vec<f32> {
    let p = prepare(w, h, rows, cols);
    let maxq = ((1u32 << bits) - 1) as f64;
    let grid = RefCell::new(vec![(1.0, 0.0); rows]); // (scale, zero) per row
    let fit = |j: usize, w: &[f64]| {
        if !j.is_multiple_of(group_size) {
            return;
        }
        for (r, g) in grid.borrow_mut().iter_mut().enumerate() {
            let group = &w[r * cols + j..r * cols + (j + group_size).min(cols)];
            let (mut lo, mut hi) = group
                .iter()
                .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
            if lo == hi {
                (lo, hi) = (-1.0, 1.0);
            }
            let scale = (hi - lo) / maxq;
            *g = (scale, (-lo / scale).round());
        }
    };
    let quantize = |r: usize, _: usize, x: f64| {
        let (s, z) = grid.borrow()[r];
        let q = (x / s.max(1e-9) + z).round().clamp(0.0, maxq);
        s * (q - z)
    };
    sweep(&p, rows, cols, fit, quantize)
}

/// `tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)` in f64 by plain loops (a zero diagonal counts as 1), the
/// check on the library's f32 GEMM.
pub fn rel_error_f64<T: Copy + Into<f64>>(
    w: &[f32],
    w_hat: &[f32],
    h: &[T],
    rows: usize,
    cols: usize,
) -> f64 {
    let hij = |i: usize, j: usize| match h[i * cols + j].into() {
        0.0 if i == j => 1.0,
        v => v,
    };
    let form = |m: &dyn Fn(usize) -> f64| -> f64 {
        (0..rows)
            .map(|r| {
                (0..cols)
                    .map(|i| {
                        let mi = m(r * cols + i);
                        (0..cols)
                            .map(|j| mi * hij(i, j) * m(r * cols + j))
                            .sum::<f64>()
                    })
                    .sum::<f64>()
            })
            .sum()
    };
    form(&|k| w[k] as f64 - w_hat[k] as f64) / form(&|k| w[k] as f64)
}
