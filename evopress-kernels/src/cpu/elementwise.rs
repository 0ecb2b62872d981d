//! Row-wise and element-wise ops: RMSNorm, RoPE, SwiGLU's `silu(gate)·up`, residual adds.
//!
//! All are memory-bound (a few flops per element loaded), so the recipe is the same for each:
//! tight loops with independent lanes that auto-vectorize inside
//! [`vectorized!`](super::simd::vectorized), and rayon over chunks of whole rows once a call
//! touches more than `PAR_MIN_ELEMS` elements (below that, waking the pool costs more than
//! the work). Plain oracles live in [`reference`](super::reference).

use super::simd::{exp, sum_map, vectorized};
use crate::RopeTable;
use rayon::prelude::*;

/// Element count above which an op is split across the rayon pool.
const PAR_MIN_ELEMS: usize = 1 << 15;
/// Elements per rayon task for flat element-wise ops (64 KiB of f32).
const FLAT_CHUNK: usize = 1 << 14;

/// Runs `f` on matching `rows`-row chunks of `a` (and `b`), in parallel when large.
fn for_row_chunks<B: Sync>(
    a: &mut [f32],
    a_row: usize,
    b: &[B],
    b_row: usize,
    f: impl Fn(&mut [f32], &[B]) + Sync + Send,
) {
    let rows_per_task = (FLAT_CHUNK / a_row.max(1)).max(1);
    if a.len() >= PAR_MIN_ELEMS {
        a.par_chunks_mut(rows_per_task * a_row)
            .zip(b.par_chunks(rows_per_task * b_row))
            .for_each(|(ca, cb)| f(ca, cb));
    } else {
        f(a, b);
    }
}

/// `out = x / sqrt(mean(x²) + eps) · gamma` per row of `gamma.len()`.
pub fn rms_norm(x: &[f32], gamma: &[f32], eps: f32, out: &mut [f32]) {
    let d = gamma.len();
    assert!(
        d > 0 && x.len().is_multiple_of(d),
        "rms_norm: x is not [n, {d}]"
    );
    assert_eq!(out.len(), x.len(), "rms_norm: out length");
    for_row_chunks(out, d, x, d, |oc, xc| {
        vectorized!({
            for (or, xr) in oc.chunks_exact_mut(d).zip(xc.chunks_exact(d)) {
                let inv = 1.0 / (sum_map(xr, |v| v * v) / d as f32 + eps).sqrt();
                for ((o, v), g) in or.iter_mut().zip(xr).zip(gamma) {
                    *o = v * inv * g;
                }
            }
        })
    });
}

/// Rotate-half RoPE in place on `x[n_tok, n_heads, head_dim]`; token `t` at `positions[t]`.
pub fn rope(x: &mut [f32], n_heads: usize, positions: &[usize], table: &RopeTable) {
    let hd = table.head_dim;
    let half = hd / 2;
    let tok = n_heads * hd;
    assert_eq!(
        x.len(),
        positions.len() * tok,
        "rope: x is not [n_tok, n_heads, head_dim]"
    );
    if let Some(&p) = positions.iter().max() {
        assert!(
            p < table.max_positions,
            "rope: position {p} beyond the table"
        );
    }
    for_row_chunks(x, tok, positions, 1, |xc, pc| {
        vectorized!({
            for (xt, &p) in xc.chunks_exact_mut(tok).zip(pc) {
                let cos = &table.cos[p * half..(p + 1) * half];
                let sin = &table.sin[p * half..(p + 1) * half];
                for head in xt.chunks_exact_mut(hd) {
                    let (lo, hi) = head.split_at_mut(half);
                    for (((a, b), c), s) in lo.iter_mut().zip(hi.iter_mut()).zip(cos).zip(sin) {
                        let (va, vb) = (*a, *b);
                        *a = va * c - vb * s;
                        *b = vb * c + va * s;
                    }
                }
            }
        })
    });
}

/// `gate = silu(gate) · up = gate / (1 + e^-gate) · up`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "silu_mul: length mismatch");
    for_row_chunks(gate, 1, up, 1, |g, u| {
        vectorized!({
            for (g, u) in g.iter_mut().zip(u) {
                *g = *g / (1.0 + exp(-*g)) * u;
            }
        })
    });
}

/// `x += y`.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len(), "add_assign: length mismatch");
    for_row_chunks(x, 1, y, 1, |x, y| {
        vectorized!({
            for (a, b) in x.iter_mut().zip(y) {
                *a += b;
            }
        })
    });
}

/// `x[r, :] += bias` for every row `r`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    let d = bias.len();
    assert!(
        d > 0 && x.len().is_multiple_of(d),
        "add_bias: x is not [n, {d}]"
    );
    let add_rows = |xc: &mut [f32]| {
        vectorized!({
            for row in xc.chunks_exact_mut(d) {
                for (a, b) in row.iter_mut().zip(bias) {
                    *a += b;
                }
            }
        })
    };
    if x.len() >= PAR_MIN_ELEMS {
        let rows_per_task = (FLAT_CHUNK / d).max(1);
        x.par_chunks_mut(rows_per_task * d).for_each(add_rows);
    } else {
        add_rows(x);
    }
}
