//! The strided GEMM (the `gemm` crate) behind a safe signature: GPTQ's lazy batch update
//! reads the inverse factor through strides. (The factor itself comes from
//! `evopress_core::hessian`.)

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

#[cfg(test)]
mod tests {
    use super::*;

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
