//! A linear layer's input Hessian `H = (2/n) Σ XᵀX` as every weight-compression method uses
//! it: which inputs are dead, how `H` is damped, the upper Cholesky factor of its inverse
//! that the OBS-based solvers (SparseGPT, GPTQ) sweep with, and the relative output error a
//! database records per variant. One implementation of each, for every builder
//! (docs/sparsegpt-gptq.md).
//!
//! ```text
//!   dead       = { j : H_jj == 0 }                 inputs calibration never activated
//!   λ          = rel_damp · mean(diag H), dead H_jj counted as 1, added to the diagonal
//!   decoupled  = dead ∪ caller's columns           row and column zeroed, diagonal 1
//!   U          = upper Cholesky factor of the damped H⁻¹   (H⁻¹ = Uᵀ U)
//!   rel_error  = tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)          on the undamped H, zero diagonal -> 1
//! ```

use faer::linalg::matmul::matmul;
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::{Mat, Parallelism, Side};

/// Why a Hessian (or a matrix measured against it) was rejected.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum HessianError {
    #[error("{what}: expected {expected} elements, got {got}")]
    Shape {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error(
        "Hessian entry ({row}, {col}) is not finite ({value}): the calibration activations \
         overflowed or hold NaN"
    )]
    NonFinite { row: usize, col: usize, value: f64 },
    #[error(
        "the damped Hessian is not positive definite (first failing pivot: input {input} of \
         {cols}); increase rel_damp or check the calibration data"
    )]
    NotPositiveDefinite { input: usize, cols: usize },
}

fn check_len(what: &'static str, got: usize, expected: usize) -> Result<(), HessianError> {
    let wrong = HessianError::Shape {
        what,
        expected,
        got,
    };
    (got == expected).then_some(()).ok_or(wrong)
}

/// The inputs never active during calibration (`H_jj == 0`). Nothing constrains their
/// weights, so every method zeroes them.
pub fn dead_inputs<T: Copy + Into<f64>>(h: &[T], cols: usize) -> Vec<bool> {
    (0..cols).map(|j| h[j * cols + j].into() == 0.0).collect()
}

/// The damping `λ = rel_damp · mean(diag H)` added to the diagonal before factoring, where
/// each dead input's diagonal counts as 1: the original SparseGPT's and GPTQ's rule (they set
/// a dead diagonal to 1 before damping), so per-layer errors equal the original's. With no
/// dead input `λ` scales with `H` and the damped problem does not depend on the Hessian's
/// scale; each dead input moves `λ` by at most `1/cols` of it (see docs/sparsegpt-gptq.md).
pub fn damping<T: Copy + Into<f64>>(h: &[T], cols: usize, dead: &[bool], rel_damp: f64) -> f64 {
    if cols == 0 {
        return 0.0;
    }
    let diag = |j: usize| if dead[j] { 1.0 } else { h[j * cols + j].into() };
    rel_damp * (0..cols).map(diag).sum::<f64>() / cols as f64
}

/// A layer's damped inverse Hessian, factored once and shared by every level the layer is
/// compressed to.
#[derive(Clone, Debug)]
pub struct InverseFactor {
    cols: usize,
    dead: Vec<bool>,
    /// `U` with `Uᵀ U = H_damped⁻¹`, `[cols, cols]` row-major in processing order (zeros below
    /// the diagonal). Factored in f64, stored in f32 for the solvers' f32 sweeps.
    u: Vec<f32>,
}

impl InverseFactor {
    /// Prepares `h` (`[cols, cols]`, symmetric; only its lower triangle is read, as
    /// `torch.linalg.cholesky` does).
    ///
    /// `order[k]` is the input handled at processing position `k` (GPTQ's act-order), `None`
    /// for the natural order; `U` comes out in processing order. `decouple` lists inputs
    /// (original indices) whose row and column are cut from `H` on top of the dead ones
    /// (SparseGPT's all-zero weight columns): with a unit diagonal they neither move nor move
    /// the others.
    pub fn new<T: Copy + Into<f64>>(
        h: &[T],
        cols: usize,
        rel_damp: f64,
        order: Option<&[u32]>,
        decouple: &[usize],
    ) -> Result<Self, HessianError> {
        check_len("Hessian H", h.len(), cols * cols)?;
        if let Some(k) = h.iter().position(|&x| !x.into().is_finite()) {
            return Err(HessianError::NonFinite {
                row: k / cols,
                col: k % cols,
                value: h[k].into(),
            });
        }
        if let Some(o) = order {
            check_len("processing order", o.len(), cols)?;
        }
        let orig = |k: usize| order.map_or(k, |o| o[k] as usize);
        let dead = dead_inputs(h, cols);
        let damp = damping(h, cols, &dead, rel_damp);

        let mut cut = dead.clone();
        for &j in decouple {
            cut[j] = true;
        }
        // The damped H in processing order, in f64; a cut input keeps only a unit diagonal.
        let mut hp = vec![0f64; cols * cols];
        for a in 0..cols {
            if cut[orig(a)] {
                hp[a * cols + a] = 1.0;
                continue;
            }
            for b in 0..cols {
                if !cut[orig(b)] {
                    hp[a * cols + b] = h[orig(a) * cols + orig(b)].into();
                }
            }
            hp[a * cols + a] += damp;
        }
        let u =
            inverse_cholesky_upper(&hp, cols).map_err(|k| HessianError::NotPositiveDefinite {
                input: orig(k),
                cols,
            })?;
        Ok(InverseFactor { cols, dead, u })
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Dead inputs, original order.
    pub fn dead(&self) -> &[bool] {
        &self.dead
    }

    /// `U`, row-major `[cols, cols]`, processing order.
    pub fn u(&self) -> &[f32] {
        &self.u
    }

    /// `U`, for a solver that keeps it.
    pub fn into_u(self) -> Vec<f32> {
        self.u
    }
}

/// `U` upper triangular with a positive diagonal and `Uᵀ U = H⁻¹`, row-major `[n, n]`,
/// computed in f64 from the lower triangle of `h`. Errors with the (row) index of the first
/// pivot that is not positive when `h` is not positive definite.
///
/// The original computes it as `chol_upper(cholesky_inverse(chol(H)))`: three cubic steps
/// and an explicit `H⁻¹`. One Cholesky and one triangular inverse give the same factor once
/// the index order is reversed (`J` the exchange matrix, `J = Jᵀ = J⁻¹`):
///
/// ```text
///   J H J = L Lᵀ                 lower Cholesky of the reversed H
///   H     = (J L J)(J L J)ᵀ      J L J is upper triangular
///   H⁻¹   = (J L J)⁻ᵀ (J L J)⁻¹  so U = (J L J)⁻¹ = J L⁻¹ J
/// ```
///
/// Cholesky factors with a positive diagonal are unique, so this is the same `U`, in half
/// the flops and without squaring the condition number by forming `H⁻¹`.
pub fn inverse_cholesky_upper(h: &[f64], n: usize) -> Result<Vec<f32>, usize> {
    assert_eq!(
        h.len(),
        n * n,
        "inverse_cholesky_upper: h is not [{n}, {n}]"
    );
    let rev = |i: usize| n - 1 - i;
    // Column j of J H J is row rev(j) of H reversed; faer's lower Cholesky reads the lower
    // triangle of J H J, which is the lower triangle of H.
    let mut jhj = Mat::<f64>::zeros(n, n);
    for j in 0..n {
        let row = &h[rev(j) * n..(rev(j) + 1) * n];
        for (dst, &x) in jhj.col_as_slice_mut(j).iter_mut().zip(row.iter().rev()) {
            *dst = x;
        }
    }
    // faer reports the size of the first leading minor that is not positive definite.
    let l = jhj
        .cholesky(Side::Lower)
        .map_err(|e| rev(e.non_positive_definite_minor.max(1) - 1))?
        .compute_l();
    let mut l_inv = Mat::<f64>::zeros(n, n);
    invert_lower_triangular(l_inv.as_mut(), l.as_ref(), Parallelism::Rayon(0));
    // U[i][j] = L⁻¹[rev(i)][rev(j)], read column by column from L⁻¹.
    let mut u = vec![0f32; n * n];
    for j in 0..n {
        let col = l_inv.col_as_slice(rev(j));
        for i in 0..=j {
            u[i * n + j] = col[rev(i)] as f32;
        }
    }
    Ok(u)
}

/// The relative output error of many compressed versions of one layer,
/// `tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)` with `ΔW = W − Ŵ`: the share of the layer's output energy on
/// the calibration inputs, `‖X Wᵀ‖²`, that compression destroys.
///
/// `H` is used undamped, with a zero diagonal entry set to 1 (the original's error
/// estimator): a dead input's weight then counts as output it would have produced. The
/// denominator is computed once; each error is one f32 GEMM `ΔW·H` reduced against `ΔW` in
/// f64 (within ~1e-6 relative of an all-f64 computation on real layers, at a quarter of its
/// cost).
pub struct RelError {
    rows: usize,
    cols: usize,
    w: Vec<f32>,
    h: Mat<f32>,
    denom: f64,
}

impl RelError {
    /// Measures against `w` (`[rows, cols]`, row-major) and `h` (`[cols, cols]`).
    pub fn new<T: Copy + Into<f64>>(
        w: &[f32],
        rows: usize,
        cols: usize,
        h: &[T],
    ) -> Result<Self, HessianError> {
        check_len("weight W", w.len(), rows * cols)?;
        check_len("Hessian H", h.len(), cols * cols)?;
        let mut hm = Mat::<f32>::from_fn(cols, cols, |i, j| h[i * cols + j].into() as f32);
        for j in 0..cols {
            if hm.read(j, j) == 0.0 {
                hm.write(j, j, 1.0);
            }
        }
        let mut m = RelError {
            rows,
            cols,
            w: w.to_vec(),
            h: hm,
            denom: 1.0,
        };
        m.denom = m.quadratic_form(w);
        Ok(m)
    }

    /// The error of `w_hat` (`[rows, cols]`); exactly 0 when it equals `W`.
    pub fn of(&self, w_hat: &[f32]) -> Result<f64, HessianError> {
        check_len("compressed weight", w_hat.len(), self.rows * self.cols)?;
        let dw: Vec<f32> = self.w.iter().zip(w_hat).map(|(a, b)| a - b).collect();
        if dw.iter().all(|&x| x == 0.0) {
            return Ok(0.0);
        }
        Ok(self.quadratic_form(&dw) / self.denom)
    }

    /// `tr(M H Mᵀ)` of a row-major `[rows, cols]` matrix.
    fn quadratic_form(&self, m: &[f32]) -> f64 {
        let (rows, cols) = (self.rows, self.cols);
        let a = faer::mat::from_row_major_slice(m, rows, cols);
        let mut ah = Mat::<f32>::zeros(rows, cols);
        matmul(
            ah.as_mut(),
            a,
            self.h.as_ref(),
            None,
            1.0,
            Parallelism::Rayon(0),
        );
        (0..cols)
            .map(|j| {
                let col = ah.col_as_slice(j);
                (0..rows)
                    .map(|i| col[i] as f64 * m[i * cols + j] as f64)
                    .sum::<f64>()
            })
            .sum()
    }
}

/// [`RelError`] of one compressed matrix.
pub fn rel_error<T: Copy + Into<f64>>(
    w: &[f32],
    w_hat: &[f32],
    h: &[T],
    rows: usize,
    cols: usize,
) -> Result<f64, HessianError> {
    RelError::new(w, rows, cols, h)?.of(w_hat)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A well-conditioned SPD matrix `A Aᵀ + n I`.
    fn spd(n: usize) -> Vec<f64> {
        let a: Vec<f64> = (0..n * n).map(|i| ((i * 37 % 11) as f64) - 5.0).collect();
        let mut h = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                h[i * n + j] = (0..n).map(|k| a[i * n + k] * a[j * n + k]).sum::<f64>();
            }
            h[i * n + i] += n as f64;
        }
        h
    }

    /// `(Uᵀ U) H`, which must be the identity.
    fn utu_h(u: &[f32], h: &[f64], n: usize) -> Vec<f64> {
        let u = |i: usize, j: usize| u[i * n + j] as f64;
        let mut out = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                out[i * n + j] = (0..n)
                    .map(|k| (0..n).map(|l| u(l, i) * u(l, k)).sum::<f64>() * h[k * n + j])
                    .sum();
            }
        }
        out
    }

    #[test]
    fn inverse_cholesky_upper_factors_the_inverse() {
        let n = 7;
        let h = spd(n);
        let u = inverse_cholesky_upper(&h, n).unwrap();
        for i in 0..n {
            assert!(u[i * n + i] > 0.0);
            for j in 0..i {
                assert_eq!(u[i * n + j], 0.0);
            }
        }
        for (k, x) in utu_h(&u, &h, n).into_iter().enumerate() {
            let want = if k / n == k % n { 1.0 } else { 0.0 };
            assert!((x - want).abs() < 1e-5, "({}, {}) = {x}", k / n, k % n);
        }
    }

    #[test]
    fn indefinite_matrix_names_its_pivot() {
        // Leading 1x1 minor fine, 2x2 minor [[1, 2], [2, 1]] indefinite.
        let h = [1.0, 2.0, 2.0, 1.0];
        assert!(inverse_cholesky_upper(&h, 2).is_err());
        let err = InverseFactor::new(&h, 2, 0.01, None, &[]).unwrap_err();
        assert!(
            matches!(err, HessianError::NotPositiveDefinite { cols: 2, .. }),
            "{err}"
        );
    }

    /// Dead inputs are found and cut; the damping counts a dead diagonal as 1 (the original's
    /// rule), and the factor inverts exactly the damped, decoupled H in processing order.
    #[test]
    fn dead_inputs_damping_order_and_decoupling() {
        let n = 6;
        let mut h = spd(n);
        for k in 0..n {
            h[2 * n + k] = 0.0;
            h[k * n + 2] = 0.0;
        }
        let dead = dead_inputs(&h, n);
        assert_eq!(dead, [false, false, true, false, false, false]);
        let mean = (1.0 + [0, 1, 3, 4, 5].iter().map(|&j| h[j * n + j]).sum::<f64>()) / 6.0;
        assert_eq!(damping(&h, n, &dead, 0.01), 0.01 * mean);
        // Without dead inputs, scaling H scales λ: the damped problem is scale-free.
        let h10: Vec<f64> = spd(n).iter().map(|x| 10.0 * x).collect();
        let none = [false; 6];
        let ratio = damping(&h10, n, &none, 0.01) / damping(&spd(n), n, &none, 0.01);
        assert!((ratio - 10.0).abs() < 1e-12);

        let order = [5u32, 0, 2, 1, 4, 3];
        let f = InverseFactor::new(&h, n, 0.01, Some(&order), &[4]).unwrap();
        assert_eq!(f.dead(), &dead[..]);
        let cut = |j: usize| j == 2 || j == 4;
        let mut want = vec![0f64; n * n];
        for a in 0..n {
            for b in 0..n {
                let (i, j) = (order[a] as usize, order[b] as usize);
                want[a * n + b] = match (cut(i), cut(j)) {
                    (false, false) => h[i * n + j] + if i == j { 0.01 * mean } else { 0.0 },
                    _ if i == j => 1.0,
                    _ => 0.0,
                };
            }
        }
        for (k, x) in utu_h(f.u(), &want, n).into_iter().enumerate() {
            let id = if k / n == k % n { 1.0 } else { 0.0 };
            assert!((x - id).abs() < 1e-5, "({}, {}) = {x}", k / n, k % n);
        }
    }

    #[test]
    fn bad_hessians_are_errors() {
        let mut h = spd(3);
        assert!(matches!(
            InverseFactor::new(&h[..8], 3, 0.01, None, &[]),
            Err(HessianError::Shape { .. })
        ));
        h[5] = f64::NAN;
        let err = InverseFactor::new(&h, 3, 0.01, None, &[]).unwrap_err();
        assert!(
            matches!(err, HessianError::NonFinite { row: 1, col: 2, value } if value.is_nan()),
            "{err}"
        );
    }

    #[test]
    fn rel_error_is_zero_for_exact_one_for_zero_and_matches_f64() {
        let (rows, cols) = (5, 7);
        let h = spd(cols);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 13 % 7) as f32) - 3.0)
            .collect();
        let meter = RelError::new(&w, rows, cols, &h).unwrap();
        assert_eq!(meter.of(&w).unwrap(), 0.0);
        assert!((meter.of(&vec![0.0; rows * cols]).unwrap() - 1.0).abs() < 1e-6);
        // Against the quadratic forms in f64.
        let w_hat: Vec<f32> = w.iter().map(|x| x.round() * 0.9).collect();
        let q = |m: &[f64]| -> f64 {
            (0..rows)
                .map(|r| {
                    (0..cols)
                        .map(|i| {
                            (0..cols)
                                .map(|j| m[r * cols + i] * h[i * cols + j] * m[r * cols + j])
                                .sum::<f64>()
                        })
                        .sum::<f64>()
                })
                .sum()
        };
        let dw: Vec<f64> = w.iter().zip(&w_hat).map(|(a, b)| (a - b) as f64).collect();
        let w64: Vec<f64> = w.iter().map(|&x| x as f64).collect();
        let want = q(&dw) / q(&w64);
        let got = rel_error(&w, &w_hat, &h, rows, cols).unwrap();
        assert!((got - want).abs() < 1e-6 * want, "{got} vs {want}");
        assert!(meter.of(&w[1..]).is_err());
    }
}
