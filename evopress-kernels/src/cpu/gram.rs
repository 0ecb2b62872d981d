//! `out[c, c] = Xᵀ·X` for `x[n, c]`: the Gram matrix of a linear layer's inputs, from which
//! the calibration engine accumulates Hessians (docs/sparsegpt-gptq.md).
//!
//! One gemm call with `Xᵀ` read through swapped strides (no transposed copy). gemm splits
//! the `c × c` output across the rayon pool itself; with `n` (tokens) as the reduction
//! dimension that is the shape it handles best. The result is then made exactly symmetric
//! (`(G + Gᵀ)/2`): gemm's blocking may round the two triangles differently, and the
//! Cholesky factorisations downstream assume symmetry.
//!
//! The plain oracle is [`reference::gram`](super::reference::gram).

use gemm::Parallelism;

/// Below this many multiply-adds gemm's threading costs more than it saves.
const PARALLEL_MIN_FMAS: usize = 1 << 18;

/// Fast `out = xᵀ·x`; see the module docs.
pub fn gram(x: &[f32], cols: usize, out: &mut [f32]) {
    assert_eq!(out.len(), cols * cols, "gram: out is not [{cols}, {cols}]");
    if cols == 0 {
        return;
    }
    let n = x.len() / cols;
    assert_eq!(x.len(), n * cols, "gram: x is not [n, {cols}]");
    if n == 0 {
        out.fill(0.0);
        return;
    }
    let par = if n * cols * cols >= PARALLEL_MIN_FMAS {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // SAFETY: lhs = xᵀ (`cols × n`, element (i, l) at l·cols + i), rhs = x (`n × cols`,
    // element (l, j) at l·cols + j), dst `cols × cols` row-major: every index lies within
    // the slices checked above.
    unsafe {
        gemm::gemm(
            cols,
            cols,
            n,
            out.as_mut_ptr(),
            1,
            cols as isize,
            false,
            x.as_ptr(),
            cols as isize,
            1,
            x.as_ptr(),
            1,
            cols as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
    symmetrize(out, cols);
}

/// `g = (g + gᵀ)/2` in place.
fn symmetrize(g: &mut [f32], c: usize) {
    for i in 0..c {
        for j in i + 1..c {
            let v = 0.5 * (g[i * c + j] + g[j * c + i]);
            g[i * c + j] = v;
            g[j * c + i] = v;
        }
    }
}
