//! `out[m, n] = x[m, k] · Wᵀ` with `W` row-major `[n, k]` (a linear layer).
//!
//! Three paths, chosen by shape and weight dtype:
//! - **GEMV** (`m <= GEMV_MAX_M`, decode): memory-bound, so the only goal is to stream `W`
//!   once at full bandwidth. Rayon splits the rows of `W`; each row is dotted with every
//!   `x` row while it is in L1. f16/bf16 elements are widened in registers inside the dot.
//! - **GEMM**: the output is cut into column blocks (a block of rows of `W`, up to
//!   `TILE_ROWS`), and rayon runs one single-threaded `gemm::gemm` call per block. `Wᵀ` is
//!   just `W` read with swapped strides (row stride 1, column stride `k`), so no transposed
//!   copy is made; gemm packs panels itself. f16/bf16 blocks are first widened into a
//!   thread-local f32 buffer, so no full f32 copy of the weight ever exists, which is what
//!   lets mapped bf16 models run in their file size. Column blocks beat gemm's own rayon
//!   split on every projection of the forward (m=512: 5-10% on the demo model's shapes),
//!   since each task's slice of `W` stays in its core's L2 while all of `x` streams past.
//!
//! Compressed weights ([packed](crate::weight::packed) codes, [masked](crate::weight::masked)
//! sparse rows, [masked-packed](crate::weight::masked_packed) codes of the kept weights,
//! [ggml](crate::weight::ggml) blocks) take the same two paths: GEMV decodes one row of `W` at
//! a time into a per-thread f32 row and dots it with every `x` row; GEMM decodes a task's block
//! of rows into the thread-local tile, exactly where f16/bf16 blocks are widened. A packed matrix with an
//! act-order permutation is multiplied in its stored column order against `x[:, perm]`,
//! gathered once per call: `x · Wᵀ = x[:, perm] · W_storedᵀ`.
//!
//! The plain oracle is [`reference::matmul_wt`](super::reference::matmul_wt).

use super::simd::{bf16_to_f32, dot, dot_with, f16_to_f32, vectorized};
use super::SyncPtr;
use crate::weight::Source;
use crate::{Weight, WeightView};
use gemm::Parallelism;
use rayon::prelude::*;
use std::cell::RefCell;

/// Up to this many rows of `x` take the GEMV path (weight-streaming beats gemm's packing).
const GEMV_MAX_M: usize = 4;
/// Rows of `W` per rayon task in the GEMV path (~1-2 k elements per row: tens of KiB).
const GEMV_ROWS_PER_TASK: usize = 16;
/// Most rows of `W` per GEMM task: 256 × k=576 × 4 B = 576 KiB, within an L2. Fewer when
/// that would leave a thread idle (n=192 on 2 threads: two tasks of 96).
const TILE_ROWS: usize = 256;
/// Task widths are rounded to this many columns (gemm's micro-kernel width for f32 on
/// AVX-512 is a multiple of 16).
const TILE_ALIGN: usize = 16;
/// Below this many multiply-adds gemm's own threading costs more than it saves.
const PARALLEL_MIN_FMAS: usize = 1 << 18;

/// Fast `out = x · Wᵀ`; see the module docs.
pub fn matmul_wt(x: &[f32], w: &Weight, out: &mut [f32]) {
    let (k, n) = (w.cols, w.rows);
    // With k == 0 the rows of x carry no data; take m from the output instead.
    let m = x.len().checked_div(k).unwrap_or(out.len() / n.max(1));
    assert_eq!(x.len(), m * k, "matmul_wt: x is not [m, {k}]");
    assert_eq!(out.len(), m * n, "matmul_wt: out is not [m, {n}]");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out.fill(0.0);
        return;
    }
    match w.source() {
        Source::Dense(view) if m <= GEMV_MAX_M => gemv(x, m, k, view, n, out),
        Source::Dense(view) => gemm_tiled(x, m, k, view, n, out),
        Source::Packed(p, row0) => {
            let gathered;
            let x = match p.perm() {
                Some(perm) => {
                    gathered = gather_columns(x, k, perm);
                    &gathered[..]
                }
                None => x,
            };
            let t = p.tables();
            let decode = |j: usize, rows: &mut [f32]| t.rows_into(row0 + j, rows);
            matmul_decoded(x, m, k, n, out, decode)
        }
        Source::Masked(mm, row0) => {
            let t = mm.tables();
            let decode = |j: usize, rows: &mut [f32]| t.rows_into(row0 + j, rows);
            matmul_decoded(x, m, k, n, out, decode)
        }
        Source::MaskedPacked(mp, row0) => {
            let t = mp.tables();
            let decode = |j: usize, rows: &mut [f32]| t.rows_into(row0 + j, rows);
            matmul_decoded(x, m, k, n, out, decode)
        }
        Source::Ggml(g, row0) => {
            let t = g.tables();
            let decode = |j: usize, rows: &mut [f32]| t.rows_into(row0 + j, rows);
            matmul_decoded(x, m, k, n, out, decode)
        }
    }
}

/// `x[:, perm]`: row `i` of the result holds `x[i, perm[c]]` at column `c`.
fn gather_columns(x: &[f32], k: usize, perm: &[u32]) -> Vec<f32> {
    let mut g = vec![0f32; x.len()];
    for (gi, xi) in g.chunks_exact_mut(k).zip(x.chunks_exact(k)) {
        for (o, &p) in gi.iter_mut().zip(perm) {
            *o = xi[p as usize];
        }
    }
    g
}

/// `out = x · Wᵀ` for a `W` that `decode(j, rows)` writes as f32, rows `j..j + rows.len()/k`
/// (row-major). `decode` must be `#[inline(always)]`-able: it runs inside [`vectorized!`].
fn matmul_decoded(
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    out: &mut [f32],
    decode: impl Fn(usize, &mut [f32]) + Sync,
) {
    let out_ptr = SyncPtr(out.as_mut_ptr());
    if m <= GEMV_MAX_M {
        let run = |t: usize| {
            let rows = t * GEMV_ROWS_PER_TASK..((t + 1) * GEMV_ROWS_PER_TASK).min(n);
            with_tile_buffer(k, |wr| {
                vectorized!({
                    for j in rows {
                        decode(j, wr);
                        for i in 0..m {
                            let v = dot(&x[i * k..(i + 1) * k], wr);
                            // SAFETY: (i, j) is inside out, and row j belongs to this task only.
                            unsafe { *out_ptr.get().add(i * n + j) = v };
                        }
                    }
                })
            })
        };
        return for_each_task(
            n.div_ceil(GEMV_ROWS_PER_TASK),
            n * k >= PARALLEL_MIN_FMAS,
            run,
        );
    }
    let (tasks, tile, parallel) = gemm_tasks(m, n, k);
    let run = |t: usize| {
        let j0 = t * tile;
        if j0 >= n {
            return;
        }
        let rows = tile.min(n - j0);
        with_tile_buffer(rows * k, |block| {
            vectorized!(decode(j0, block));
            // SAFETY: block is [rows, k] row-major; output columns j0..j0+rows of every row of
            // out are written by this task only.
            unsafe {
                gemm_abt(
                    (m, rows, k),
                    (out_ptr.get().add(j0), n),
                    (x.as_ptr(), k),
                    (block.as_ptr(), k),
                    Parallelism::None,
                )
            }
        })
    };
    for_each_task(tasks, parallel, run)
}

/// Runs `run(0..tasks)`, on the rayon pool when `parallel`.
fn for_each_task(tasks: usize, parallel: bool, run: impl Fn(usize) + Sync + Send) {
    if parallel {
        (0..tasks).into_par_iter().for_each(run);
    } else {
        (0..tasks).for_each(run);
    }
}

/// The GEMM path's split: `(tasks, rows of W per task, parallel)`. As many tasks as
/// [`TILE_ROWS`] asks for, but at least one per thread, in whole rounds.
fn gemm_tasks(m: usize, n: usize, k: usize) -> (usize, usize, bool) {
    let parallel = m * n * k >= PARALLEL_MIN_FMAS;
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    let tasks = n.div_ceil(TILE_ROWS).max(threads).next_multiple_of(threads);
    let tile = n.div_ceil(tasks).next_multiple_of(TILE_ALIGN).min(n);
    (tasks, tile, parallel)
}

/// `dst = a · bᵀ`: `dst[i, j] = Σ_l a[i, l] · b[j, l]` for `i < m, j < n, l < k`, with row
/// strides `ldd`, `lda`, `ldb` and unit column strides. Transposing `b` is only a matter of
/// the strides handed to gemm, so nothing is copied.
///
/// # Safety
/// `dst` and `a` must address `m` rows and `b` `n` rows of the given strides and length.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_abt(
    (m, n, k): (usize, usize, usize),
    (dst, ldd): (*mut f32, usize),
    (a, lda): (*const f32, usize),
    (b, ldb): (*const f32, usize),
    par: Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        ldd as isize,
        false,
        a,
        1,
        lda as isize,
        b,
        ldb as isize,
        1,
        0.0,
        1.0,
        false,
        false,
        false,
        par,
    )
}

/// `dst = a · b`: `dst[i, j] = Σ_l a[i, l] · b[l, j]`, row strides as in [`gemm_abt`].
///
/// # Safety
/// `dst` and `a` must address `m` rows and `b` `k` rows of the given strides and length.
pub(crate) unsafe fn gemm_ab(
    (m, n, k): (usize, usize, usize),
    (dst, ldd): (*mut f32, usize),
    (a, lda): (*const f32, usize),
    (b, ldb): (*const f32, usize),
    par: Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        ldd as isize,
        false,
        a,
        1,
        lda as isize,
        b,
        1,
        ldb as isize,
        0.0,
        1.0,
        false,
        false,
        false,
        par,
    )
}

/// Small-`m` path: stream `W` once, rows split across rayon tasks.
fn gemv(x: &[f32], m: usize, k: usize, w: WeightView<'_>, n: usize, out: &mut [f32]) {
    let out_ptr = SyncPtr(out.as_mut_ptr());
    let tasks = n.div_ceil(GEMV_ROWS_PER_TASK);
    let run = |t: usize| {
        let rows = t * GEMV_ROWS_PER_TASK..((t + 1) * GEMV_ROWS_PER_TASK).min(n);
        vectorized!({
            for j in rows {
                let wr = j * k..(j + 1) * k;
                for i in 0..m {
                    let xi = &x[i * k..(i + 1) * k];
                    let v = match w {
                        WeightView::F32(s) => dot(xi, &s[wr.clone()]),
                        // Half-precision rows are widened in registers, inside the dot.
                        WeightView::BF16(s) => dot_with(xi, &s[wr.clone()], bf16_to_f32),
                        WeightView::F16(s) => dot_with(xi, &s[wr.clone()], f16_to_f32),
                    };
                    // SAFETY: (i, j) is inside out, and row j belongs to this task only.
                    unsafe { *out_ptr.get().add(i * n + j) = v };
                }
            }
        })
    };
    for_each_task(tasks, n * k >= PARALLEL_MIN_FMAS, run)
}

/// GEMM by column blocks of the output: one single-threaded gemm per block of `W` rows,
/// widened first when `W` is f16/bf16.
fn gemm_tiled(x: &[f32], m: usize, k: usize, w: WeightView<'_>, n: usize, out: &mut [f32]) {
    let out_ptr = SyncPtr(out.as_mut_ptr());
    let (tasks, tile, parallel) = gemm_tasks(m, n, k);
    let run = |t: usize| {
        let j0 = t * tile;
        if j0 >= n {
            return;
        }
        let rows = tile.min(n - j0);
        // SAFETY (both arms): the block is [rows, k] row-major; output columns j0..j0+rows of
        // every row of out are written by this task only.
        let gemm_block = |block: &[f32]| unsafe {
            gemm_abt(
                (m, rows, k),
                (out_ptr.get().add(j0), n),
                (x.as_ptr(), k),
                (block.as_ptr(), k),
                Parallelism::None,
            )
        };
        match w {
            WeightView::F32(wf) => gemm_block(&wf[j0 * k..(j0 + rows) * k]),
            _ => with_tile_buffer(rows * k, |block| {
                widen(w, j0 * k, block);
                gemm_block(block)
            }),
        }
    };
    for_each_task(tasks, parallel, run)
}

/// Converts `out.len()` elements of `w` from `start` to f32, vectorized.
fn widen(w: WeightView<'_>, start: usize, out: &mut [f32]) {
    match w {
        WeightView::BF16(s) => {
            let src = &s[start..start + out.len()];
            vectorized!({
                for (o, &b) in out.iter_mut().zip(src) {
                    *o = bf16_to_f32(b);
                }
            })
        }
        WeightView::F16(s) => {
            let src = &s[start..start + out.len()];
            vectorized!({
                for (o, &h) in out.iter_mut().zip(src) {
                    *o = f16_to_f32(h);
                }
            })
        }
        WeightView::F32(_) => w.to_f32_into(start, out),
    }
}

/// Lends `f` this thread's scratch buffer resized to `len` (kept between calls, so tiles
/// allocate once per thread, not once per task).
pub(crate) fn with_tile_buffer<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    thread_local! {
        static BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    }
    BUF.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < len {
            b.resize(len, 0.0);
        }
        f(&mut b[..len])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    #[test]
    fn half_widening_is_exact() {
        for b in 0..=u16::MAX {
            let (h, want) = (f16::from_bits(b), f16::from_bits(b).to_f32());
            let got = f16_to_f32(h);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{b:#x}"
            );
            let (h, want) = (bf16::from_bits(b), bf16::from_bits(b).to_f32());
            let got = bf16_to_f32(h);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{b:#x}"
            );
        }
    }
}
