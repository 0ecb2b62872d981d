//! Causal grouped-query attention, `softmax(Q·Kᵀ/√d + causal mask)·V` per (sequence, head).
//!
//! Work is cut into tasks of (sequence, head, block of up to `Q_BLOCK` query rows), disjoint
//! rectangles of the output, and rayon runs them. Each task does two small single-threaded
//! gemm calls straight on the strided `q`/`k`/`v` buffers (no head-split copies):
//! `S = Q_blk · K_hᵀ` over the keys the block's last row can see, then a numerically stable
//! masked softmax on each row of `S` in f32 (max-subtracted, with the vectorized
//! [`exp`](super::simd::exp)), then `O_blk = P · V_h`. Masked entries are set to zero, so the
//! upper triangle of a block costs a few wasted multiply-adds instead of branches.
//! GQA needs nothing special: query head `h` reads key/value head `h / group`.
//!
//! The plain oracle is [`reference::attention`](super::reference::attention).

use super::matmul::{gemm_ab, gemm_abt, with_tile_buffer};
use super::simd::{exp, max, sum_map, vectorized};
use super::SyncPtr;
use crate::AttnShape;
use gemm::Parallelism;
use rayon::prelude::*;

/// Query rows per task: a 64 × kv_len score block stays in L2 up to kv_len ≈ 4 k.
const Q_BLOCK: usize = 64;

/// Fast causal GQA attention; see the module docs and [`AttnShape`] for layouts.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], s: AttnShape) {
    let hd = s.head_dim;
    assert!(
        s.n_kv_heads > 0 && s.n_heads.is_multiple_of(s.n_kv_heads),
        "attention: bad GQA heads"
    );
    assert!(s.q_len <= s.kv_len, "attention: q_len > kv_len");
    let (qw, kw) = (s.n_heads * hd, s.n_kv_heads * hd);
    assert_eq!(q.len(), s.batch * s.q_len * qw, "attention: q shape");
    assert_eq!(k.len(), s.batch * s.kv_len * kw, "attention: k shape");
    assert_eq!(v.len(), s.batch * s.kv_len * kw, "attention: v shape");
    assert_eq!(out.len(), q.len(), "attention: out shape");
    if out.is_empty() {
        return;
    }
    let group = s.n_heads / s.n_kv_heads;
    let past = s.kv_len - s.q_len;
    let scale = 1.0 / (hd as f32).sqrt();
    let blocks = s.q_len.div_ceil(Q_BLOCK);
    let out_ptr = SyncPtr(out.as_mut_ptr());

    let task = |t: usize| {
        let (b, rest) = (t / (s.n_heads * blocks), t % (s.n_heads * blocks));
        let (h, blk) = (rest / blocks, rest % blocks);
        let kvh = h / group;
        let i0 = blk * Q_BLOCK;
        let rows = Q_BLOCK.min(s.q_len - i0);
        // Keys visible to the block's last query row.
        let keys = past + i0 + rows;
        let q_blk = &q[(b * s.q_len + i0) * qw + h * hd..];
        let k_h = &k[b * s.kv_len * kw + kvh * hd..];
        let v_h = &v[b * s.kv_len * kw + kvh * hd..];
        with_tile_buffer(rows * keys, |scores| {
            // SAFETY: q_blk has `rows` rows of stride qw from column h·hd, k_h `keys` rows of
            // stride kw from column kvh·hd (keys <= kv_len), scores is [rows, keys].
            unsafe {
                gemm_abt(
                    (rows, keys, hd),
                    (scores.as_mut_ptr(), keys),
                    (q_blk.as_ptr(), qw),
                    (k_h.as_ptr(), kw),
                    Parallelism::None,
                )
            }
            vectorized!({
                for (r, row) in scores.chunks_exact_mut(keys).enumerate() {
                    let visible = past + i0 + r + 1;
                    softmax_in_place(&mut row[..visible], scale);
                    row[visible..].fill(0.0);
                }
            });
            // SAFETY: this task alone writes output rows i0..i0+rows, columns h·hd..+hd of
            // sequence b; v_h has `keys` rows of stride kw.
            unsafe {
                gemm_ab(
                    (rows, hd, keys),
                    (out_ptr.get().add((b * s.q_len + i0) * qw + h * hd), qw),
                    (scores.as_ptr(), keys),
                    (v_h.as_ptr(), kw),
                    Parallelism::None,
                )
            }
        })
    };
    (0..s.batch * s.n_heads * blocks)
        .into_par_iter()
        .for_each(task);
}

/// `row = softmax(row · scale)`, max-subtracted so no exponent overflows.
#[inline(always)]
fn softmax_in_place(row: &mut [f32], scale: f32) {
    let shift = max(row) * scale;
    for x in row.iter_mut() {
        *x = exp(*x * scale - shift);
    }
    let inv = 1.0 / sum_map(row, |x| x);
    for x in row.iter_mut() {
        *x *= inv;
    }
}
