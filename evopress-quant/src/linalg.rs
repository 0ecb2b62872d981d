//! The two pieces of dense linear algebra this crate needs, behind safe signatures:
//! a strided GEMM (the `gemm` crate) and the upper Cholesky factor of an inverse (faer, f64).

use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::{Mat, Side};
pub(crate) use gemm::Parallelism;

/// A read-only strided matrix: element `(i, j)` is `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Strided<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> Strided<'a, T> {
    /// A row-major `[rows, cols]` matrix with row stride `rs`.
    pub fn row_major(data: &'a [T], rows: usize, cols: usize, rs: usize) -> Self {
        Strided {
            data,
            rows,
            cols,
            rs,
            cs: 1,
        }
    }

    /// The transpose of a row-major `[cols, rows]` matrix with row stride `rs`.
    pub fn transposed(data: &'a [T], rows: usize, cols: usize, rs: usize) -> Self {
        Strided {
            data,
            rows,
            cols,
            rs: 1,
            cs: rs,
        }
    }

    fn assert_in_bounds(&self, len: usize) {
        if self.rows > 0 && self.cols > 0 {
            assert!((self.rows - 1) * self.rs + (self.cols - 1) * self.cs < len);
        }
    }
}

/// `dst = alpha·dst + beta·lhs·rhs` where `dst` is row-major `[lhs.rows, rhs.cols]` with row
/// stride `dst_rs` (`alpha` is ignored, `dst` only written, when `read_dst` is false).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm<T: Copy + 'static>(
    dst: &mut [T],
    dst_rs: usize,
    lhs: Strided<'_, T>,
    rhs: Strided<'_, T>,
    alpha: T,
    beta: T,
    read_dst: bool,
    par: Parallelism,
) {
    let (m, n, k) = (lhs.rows, rhs.cols, lhs.cols);
    assert_eq!(rhs.rows, k, "gemm inner dimensions");
    lhs.assert_in_bounds(lhs.data.len());
    rhs.assert_in_bounds(rhs.data.len());
    Strided::row_major(&*dst, m, n, dst_rs).assert_in_bounds(dst.len());
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: every index the three strided views can reach is in bounds (checked above), and
    // `dst` is a unique borrow that does not alias the shared `lhs` / `rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            read_dst,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            alpha,
            beta,
            false,
            false,
            false,
            par,
        );
    }
}

/// The upper-triangular `U` with `Uᵀ U = H⁻¹` (what GPTQ and SparseGPT call
/// `cholesky(cholesky_inverse(cholesky(H)), upper=True)`), row-major `[n, n]`, f64.
///
/// The original factors H, inverts it, and factors the inverse again. One factorisation is
/// enough: with `J` the exchange matrix (reverses the index order), factor `J H J = L Lᵀ`. Then
/// `H = R Rᵀ` with `R = J L J` upper triangular, so `H⁻¹ = R⁻ᵀ R⁻¹ = Uᵀ U` with
/// `U = R⁻¹ = J L⁻¹ J`, which is upper triangular with a positive diagonal: the unique upper
/// Cholesky factor of `H⁻¹`. Cost: one Cholesky and one triangular inverse, and the explicit
/// inverse of an ill-conditioned H never forms.
///
/// Errors with the index of the first non-positive pivot if `H` is not positive definite.
pub(crate) fn inverse_cholesky_upper(h: &[f64], n: usize) -> Result<Vec<f64>, usize> {
    assert_eq!(h.len(), n * n);
    let rev = |i: usize| n - 1 - i;
    let jhj = Mat::<f64>::from_fn(n, n, |i, j| h[rev(i) * n + rev(j)]);
    // faer reports the size of the first leading minor that is not positive definite.
    let l = jhj
        .cholesky(Side::Lower)
        .map_err(|e| rev(e.non_positive_definite_minor.max(1) - 1))?
        .compute_l();
    let mut l_inv = Mat::<f64>::zeros(n, n);
    invert_lower_triangular(l_inv.as_mut(), l.as_ref(), faer::Parallelism::Rayon(0));
    let mut u = vec![0f64; n * n];
    for i in 0..n {
        for j in i..n {
            u[i * n + j] = l_inv[(rev(i), rev(j))];
        }
    }
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_cholesky_upper_factors_the_inverse() {
        // A well-conditioned SPD matrix: A Aᵀ + n I.
        let n = 7;
        let a: Vec<f64> = (0..n * n).map(|i| ((i * 37 % 11) as f64) - 5.0).collect();
        let mut h = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                h[i * n + j] = (0..n).map(|k| a[i * n + k] * a[j * n + k]).sum::<f64>();
            }
            h[i * n + i] += n as f64;
        }
        let u = inverse_cholesky_upper(&h, n).unwrap();
        // Upper triangular with a positive diagonal, and (Uᵀ U) H = I.
        for i in 0..n {
            assert!(u[i * n + i] > 0.0);
            for j in 0..i {
                assert_eq!(u[i * n + j], 0.0);
            }
        }
        for i in 0..n {
            for j in 0..n {
                let uu_h: f64 = (0..n)
                    .map(|k| {
                        (0..n).map(|l| u[l * n + i] * u[l * n + k]).sum::<f64>() * h[k * n + j]
                    })
                    .sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((uu_h - want).abs() < 1e-9, "({i},{j}) = {uu_h}");
            }
        }
    }

    #[test]
    fn indefinite_matrix_is_reported() {
        let h = [1.0, 2.0, 2.0, 1.0];
        assert!(inverse_cholesky_upper(&h, 2).is_err());
    }

    #[test]
    fn strided_gemm_matches_naive() {
        // dst[2x3] (row stride 4) = 2·dst - lhs[2x2] · rhsᵀ where rhs is stored [3, 2].
        let lhs = [1.0f32, 2.0, 3.0, 4.0];
        let rhs_t = [1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0];
        let mut dst = [1.0f32; 8];
        gemm(
            &mut dst,
            4,
            Strided::row_major(&lhs, 2, 2, 2),
            Strided::transposed(&rhs_t, 2, 3, 2),
            2.0,
            -1.0,
            true,
            Parallelism::None,
        );
        assert_eq!(dst, [1.0, 0.0, -1.0, 1.0, -1.0, -2.0, -5.0, 1.0]);
    }
}
