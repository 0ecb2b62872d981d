//! GPTQ: quantize a linear layer so that its outputs on the calibration inputs move as little
//! as possible (docs/sparsegpt-gptq.md, with the original's defects fixed).
//!
//! The objective for one row `w` of `W [rows, cols]` (rows are independent and share `H`):
//!
//! ```text
//!   E(ŵ) = (w − ŵ) H (w − ŵ)ᵀ,      H = 2/n Σ xᵀx  (the layer-input Hessian, §2.4)
//! ```
//!
//! GPTQ quantizes the columns left to right. After rounding column `j` to `ŵ_j` it moves the
//! not-yet-quantized columns `j+1..` to the optimum of `E` given the columns fixed so far,
//! which is the OBS update
//!
//! ```text
//!   δ_j = (w_j − ŵ_j) / U[j, j]
//!   w[j+1..] −= δ_j · U[j, j+1..]        where Uᵀ U = H⁻¹, U upper triangular
//! ```
//!
//! (the rows of the upper Cholesky factor of `H⁻¹` are exactly the successive inverse Hessians
//! restricted to the remaining columns, so no re-inversion is needed). Done literally, every
//! column touches every later column. Lazy batching keeps the updates inside a block of 128
//! columns, remembers the `δ`s, and applies them to the columns after the block in one GEMM:
//! `W[:, c2..] −= Δ[:, c1..c2] · U[c1..c2, c2..]`.
//!
//! Fixed relative to the original:
//! - a group's grid is fitted when the loop enters it, from the group's *current* (already
//!   error-compensated) weights, and every weight it fits on has received all updates so far:
//!   blocks never contain a group that started inside them and ends after them (the original
//!   fits a group that crosses a block boundary on stale columns), so any group size works,
//!   including a last partial group;
//! - act-order (columns by descending `diag(H)`, the most salient first) stays usable: see
//!   [`GptqConfig::act_order`] for how groups and the permutation are kept consistent;
//! - codes are computed with the f16 scales that are stored, so `Ŵ` is exactly what the packed
//!   format decodes to.

use rayon::prelude::*;

use crate::linalg::{self, Parallelism, Strided};
use crate::{check_len, GroupParams, PackedMatrix, QuantError, QuantSpec, Quantized};
use evopress_core::hessian::InverseFactor;

/// GPTQ settings that do not depend on the bit width.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GptqConfig {
    /// Damping `λ = rel_damp · mean(diag H)` added to the diagonal: keeps `H` invertible
    /// when the calibration set is small and regularises the updates. 0.01 in the original.
    pub rel_damp: f32,
    /// Columns per lazy-update block (128 in the original): a cache-size knob, not a quality one.
    pub block_size: usize,
    /// Quantize columns in order of descending `diag(H)`, so the error of the salient inputs is
    /// compensated by the many columns after them.
    ///
    /// With dynamic groups (the default) the groups are runs of consecutive columns *in
    /// processing order*, so the codes are stored in that order and the [`PackedMatrix`]
    /// carries the permutation; [`PackedMatrix::dequantize`] scatters the columns back and the
    /// quantized matmul gathers the activations instead (`x[:, perm] · Ŵ_permᵀ`). With
    /// `static_groups` the codes are stored in natural order and no permutation is needed.
    /// (The original kept the permuted weights and loaded them as if unpermuted.)
    pub act_order: bool,
    /// Fit every group's grid up front on the original weights (groups of consecutive original
    /// columns) instead of when the loop reaches the group. Loses a little accuracy; with
    /// act-order it keeps the natural storage order.
    pub static_groups: bool,
}

impl Default for GptqConfig {
    fn default() -> Self {
        GptqConfig {
            rel_damp: 0.01,
            block_size: 128,
            act_order: false,
            static_groups: false,
        }
    }
}

/// A prepared Hessian: dead inputs found, damped, permuted and factored once, then reused for
/// every bit width of a layer (the database builder quantizes each layer at 2..=6 bits).
#[derive(Clone, Debug)]
pub struct GptqHessian {
    cols: usize,
    cfg: GptqConfig,
    /// Inputs never active during calibration (`H[j, j] == 0`), original column order.
    dead: Vec<bool>,
    /// Processing position `k` handles original column `perm[k]` (act-order only).
    perm: Option<Vec<u32>>,
    /// Upper triangular `U` with `Uᵀ U = (H + λI)⁻¹`, `[cols, cols]` in processing order.
    u: Vec<f32>,
}

impl GptqHessian {
    /// Prepares `h` (`[cols, cols]`, symmetric, as accumulated by the calibration engine):
    /// dead inputs, damping and the inverse factor come from [`InverseFactor`]
    /// (docs/sparsegpt-gptq.md), in processing order.
    pub fn new<T: Copy + Into<f64>>(
        h: &[T],
        cols: usize,
        cfg: &GptqConfig,
    ) -> Result<Self, QuantError> {
        check_len("gptq: Hessian", h.len(), cols * cols)?;
        // Act-order: most salient inputs first (stable, so ties keep their natural order; dead
        // inputs have diag 0 and go last).
        let diag = |j: usize| h[j * cols + j].into();
        let perm = cfg.act_order.then(|| {
            let mut p: Vec<u32> = (0..cols as u32).collect();
            p.sort_by(|&a, &b| diag(b as usize).total_cmp(&diag(a as usize)));
            p
        });
        let factor = InverseFactor::new(h, cols, cfg.rel_damp as f64, perm.as_deref(), &[])?;
        Ok(GptqHessian {
            cols,
            cfg: *cfg,
            dead: factor.dead().to_vec(),
            perm,
            u: factor.into_u(),
        })
    }

    /// Runs GPTQ on `w` (`[rows, cols]`, row-major `[out, in]`) at one bit width.
    pub fn quantize(
        &self,
        w: &[f32],
        rows: usize,
        spec: &QuantSpec,
    ) -> Result<Quantized, QuantError> {
        spec.validate()?;
        let cols = self.cols;
        check_len("gptq: weight", w.len(), rows * cols)?;
        let (gs, bs) = (spec.group_size, self.cfg.block_size.max(1));
        let n_groups = spec.n_groups(cols);
        let maxq = spec.maxq();
        let dynamic = !self.cfg.static_groups;
        let orig = |k: usize| self.perm.as_ref().map_or(k, |p| p[k] as usize);

        // Dead inputs carry no signal: zero their weights (the quantizer maps 0 to exactly 0).
        let w0: Vec<f32> = w
            .iter()
            .enumerate()
            .map(|(i, &v)| if self.dead[i % cols] { 0.0 } else { v })
            .collect();
        // The working copy in processing order; it ends up holding Ŵ.
        let mut wp = vec![0f32; rows * cols];
        for (dst, src) in wp
            .chunks_exact_mut(cols.max(1))
            .zip(w0.chunks_exact(cols.max(1)))
        {
            for (k, d) in dst.iter_mut().enumerate() {
                *d = src[orig(k)];
            }
        }

        // Group of each processing position: runs of positions (dynamic) or of original
        // columns (static, grids fitted now on the untouched weights).
        let group_of: Vec<usize> = (0..cols)
            .map(|k| if dynamic { k } else { orig(k) } / gs)
            .collect();
        let mut params = vec![
            GroupParams {
                scale: 1.0,
                zero: 0.0
            };
            rows * n_groups
        ];
        if !dynamic {
            for (p, row) in params.chunks_exact_mut(n_groups).zip(w0.chunks_exact(cols)) {
                for (g, pg) in p.iter_mut().enumerate() {
                    *pg = spec.fit(&row[g * gs..((g + 1) * gs).min(cols)]);
                }
            }
        }

        let mut codes = vec![0u8; rows * cols];
        let mut delta = vec![0f32; rows * bs]; // δ of the current block, [rows, bs]
        let u = &self.u;
        let mut c1 = 0;
        while c1 < cols {
            let c2 = self.block_end(c1, gs, dynamic);
            // Inside the block: rows are independent, so quantize them in parallel, each row
            // column by column with the rank-1 OBS update restricted to the block.
            wp.par_chunks_mut(cols)
                .zip(codes.par_chunks_mut(cols))
                .zip(delta.par_chunks_mut(bs))
                .zip(params.par_chunks_mut(n_groups))
                .for_each(|(((w, q), d), p)| {
                    for j in c1..c2 {
                        let g = group_of[j];
                        if dynamic && j % gs == 0 {
                            p[g] = spec.fit(&w[j..(j + gs).min(cols)]);
                        }
                        let x = w[j];
                        q[j] = p[g].quantize(x, maxq);
                        w[j] = p[g].dequantize(q[j]);
                        let dj = (x - w[j]) / u[j * cols + j];
                        d[j - c1] = dj;
                        let u_row = &u[j * cols + j + 1..j * cols + c2];
                        for (wv, &uv) in w[j + 1..c2].iter_mut().zip(u_row) {
                            *wv -= dj * uv;
                        }
                    }
                });
            // Lazy batch update of everything right of the block: W[:, c2..] −= Δ · U[c1..c2, c2..].
            if c2 < cols {
                linalg::gemm(
                    &mut wp[c2..],
                    cols,
                    Strided::row_major(&delta, rows, c2 - c1, bs),
                    Strided::row_major(&u[c1 * cols + c2..], c2 - c1, cols - c2, cols),
                    1.0,
                    -1.0,
                    true,
                    Parallelism::Rayon(0),
                );
            }
            c1 = c2;
        }

        // Back to original column order where the storage wants it.
        let unpermute = |v: &[f32]| -> Vec<f32> {
            let mut out = vec![0f32; v.len()];
            for (dst, src) in out.chunks_exact_mut(cols).zip(v.chunks_exact(cols)) {
                for (k, &x) in src.iter().enumerate() {
                    dst[orig(k)] = x;
                }
            }
            out
        };
        let (codes, perm) = match &self.perm {
            Some(perm) if dynamic => (codes, Some(perm.clone())),
            Some(_) => {
                let mut natural = vec![0u8; rows * cols];
                for (dst, src) in natural.chunks_exact_mut(cols).zip(codes.chunks_exact(cols)) {
                    for (k, &c) in src.iter().enumerate() {
                        dst[orig(k)] = c;
                    }
                }
                (natural, None)
            }
            None => (codes, None),
        };
        let w_hat = if self.perm.is_some() {
            unpermute(&wp)
        } else {
            wp
        };
        let packed = PackedMatrix::from_codes(rows, cols, spec, &codes, &params, perm);
        Ok(Quantized { packed, w_hat })
    }

    /// End of the block that starts at `c1`. With dynamic groups a group that starts inside a
    /// block must also end inside it, because its grid is fitted on its current weights and the
    /// columns after the block have not received this block's updates yet. So blocks hold
    /// whole groups (`gs ≤ block`), or stop at the next group start (`gs > block`).
    fn block_end(&self, c1: usize, gs: usize, dynamic: bool) -> usize {
        let bs = self.cfg.block_size.max(1);
        let end = if !dynamic {
            c1 + bs
        } else if gs <= bs {
            c1 + bs - bs % gs // c1 is a group start here: every earlier block ended on one
        } else {
            (c1 + bs).min((c1 / gs + 1) * gs)
        };
        end.min(self.cols)
    }
}

/// GPTQ of one matrix: [`GptqHessian::new`] then [`GptqHessian::quantize`].
pub fn gptq<T: Copy + Into<f64>>(
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &[T],
    spec: &QuantSpec,
    cfg: &GptqConfig,
) -> Result<Quantized, QuantError> {
    GptqHessian::new(h, cols, cfg)?.quantize(w, rows, spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{correlated_hessian, gaussian};
    use crate::{rtn, RangeSearch};
    use evopress_core::hessian::{rel_error, HessianError};

    struct Layer {
        rows: usize,
        cols: usize,
        w: Vec<f32>,
        h: Vec<f32>,
    }

    fn layer(rows: usize, cols: usize, seed: u64) -> Layer {
        Layer {
            rows,
            cols,
            w: gaussian(rows * cols, seed),
            h: correlated_hessian(cols, 2 * cols, seed + 10),
        }
    }

    impl Layer {
        fn err(&self, q: &Quantized) -> f64 {
            rel_error(&self.w, &q.w_hat, &self.h, self.rows, self.cols).unwrap()
        }
        fn gptq(&self, spec: &QuantSpec, cfg: &GptqConfig) -> Quantized {
            gptq(&self.w, self.rows, self.cols, &self.h, spec, cfg).unwrap()
        }
        fn rtn(&self, spec: &QuantSpec) -> Quantized {
            rtn(&self.w, self.rows, self.cols, spec).unwrap()
        }
    }

    /// The packed codes and grids decode to exactly the returned Ŵ, in the right columns, and
    /// every weight sits on its group's grid.
    fn assert_consistent(q: &Quantized, spec: &QuantSpec) {
        let p = &q.packed;
        assert_eq!(p.dequantize(), q.w_hat, "packed form disagrees with w_hat");
        let codes = p.unpack_codes();
        for r in 0..p.rows {
            for k in 0..p.cols {
                let j = p.perm.as_ref().map_or(k, |perm| perm[k] as usize);
                let g = p.group_params(r, k / spec.group_size);
                assert_eq!(g.dequantize(codes[r * p.cols + k]), q.w_hat[r * p.cols + j]);
                if spec.sym {
                    assert_eq!(g.zero, (spec.maxq() + 1) as f32 / 2.0);
                }
            }
        }
    }

    #[test]
    fn gptq_beats_rtn_at_every_low_bit_width() {
        let l = layer(64, 256, 1);
        for (bits, bound) in [(2u8, 0.8), (3, 0.8), (4, 0.8)] {
            let spec = QuantSpec::new(bits, 64);
            let g = l.err(&l.gptq(&spec, &GptqConfig::default()));
            let r = l.err(&l.rtn(&spec));
            assert!(g < bound * r, "{bits} bits: gptq {g:.4} vs rtn {r:.4}");
        }
    }

    #[test]
    fn error_falls_with_every_extra_bit() {
        let l = layer(16, 128, 2);
        let mut prev = f64::INFINITY;
        for bits in 2..=8 {
            let spec = QuantSpec::new(bits, 32);
            let q = l.gptq(&spec, &GptqConfig::default());
            assert_consistent(&q, &spec);
            let e = l.err(&q);
            assert!(e < prev, "{bits} bits: {e} !< {prev}");
            prev = e;
        }
        assert!(prev < 1e-4, "8 bits: {prev}");
    }

    #[test]
    fn act_order_and_static_groups_stay_consistent() {
        let l = layer(32, 192, 3);
        let spec = QuantSpec::new(3, 64);
        let rtn_err = l.err(&l.rtn(&spec));
        for act_order in [false, true] {
            for static_groups in [false, true] {
                let cfg = GptqConfig {
                    act_order,
                    static_groups,
                    ..GptqConfig::default()
                };
                let q = l.gptq(&spec, &cfg);
                assert_consistent(&q, &spec);
                // The permutation is stored exactly when groups follow the processing order.
                assert_eq!(q.packed.perm.is_some(), act_order && !static_groups);
                let e = l.err(&q);
                assert!(e < 0.8 * rtn_err, "{cfg:?}: {e} vs rtn {rtn_err}");
            }
        }
    }

    #[test]
    fn act_order_permutation_sorts_by_salience() {
        let l = layer(4, 96, 4);
        let cfg = GptqConfig {
            act_order: true,
            ..GptqConfig::default()
        };
        let q = l.gptq(&QuantSpec::new(4, 32), &cfg);
        let perm = q.packed.perm.unwrap();
        let d = |k: usize| l.h[perm[k] as usize * 96 + perm[k] as usize];
        assert!((1..96).all(|k| d(k - 1) >= d(k)));
    }

    #[test]
    fn identity_hessian_reduces_to_rtn() {
        // No correlations: nothing to compensate, GPTQ must round exactly like RTN.
        let (rows, cols) = (8, 100);
        let w = gaussian(rows * cols, 5);
        let mut h = vec![0f32; cols * cols];
        for j in 0..cols {
            h[j * cols + j] = 1.0;
        }
        let spec = QuantSpec::new(3, 32);
        let g = gptq(&w, rows, cols, &h, &spec, &GptqConfig::default()).unwrap();
        let r = rtn(&w, rows, cols, &spec).unwrap();
        assert_eq!(g.packed, r.packed);
        assert_eq!(g.w_hat, r.w_hat);
    }

    #[test]
    fn any_group_size_including_partial_and_block_crossing_groups() {
        // 576 = hidden size of the test model: 128 leaves a partial group of 64; 96 does not
        // divide the 128-column block; 300 spans several blocks.
        let l = layer(24, 576, 6);
        for gs in [96, 300, 64, 128, 576] {
            let spec = QuantSpec::new(3, gs);
            let rtn_err = l.err(&l.rtn(&spec));
            let blocked = l.gptq(&spec, &GptqConfig::default());
            assert_consistent(&blocked, &spec);
            // Lazy batching only reorders the updates: one block for the whole matrix must give
            // the same codes up to float rounding (which can flip a rare tie). Fitting a grid on
            // columns that have not received the block's updates yet would change whole groups.
            let unblocked = l.gptq(
                &spec,
                &GptqConfig {
                    block_size: 576,
                    ..GptqConfig::default()
                },
            );
            let (cb, cu) = (
                blocked.packed.unpack_codes(),
                unblocked.packed.unpack_codes(),
            );
            let flips = cb.iter().zip(&cu).filter(|(a, b)| a != b).count();
            assert!(
                flips * 1000 < cb.len(),
                "group {gs}: {flips} codes differ from unblocked"
            );
            let eb = l.err(&blocked);
            assert!(eb < 0.8 * rtn_err, "group {gs}: {eb} vs rtn {rtn_err}");
        }
    }

    #[test]
    fn symmetric_and_mse_variants_work() {
        let l = layer(32, 128, 7);
        for spec in [
            QuantSpec {
                sym: true,
                ..QuantSpec::new(4, 64)
            },
            QuantSpec {
                range: RangeSearch::GPTQ_MSE,
                ..QuantSpec::new(3, 64)
            },
        ] {
            let q = l.gptq(&spec, &GptqConfig::default());
            assert_consistent(&q, &spec);
            assert!(l.err(&q) < 0.8 * l.err(&l.rtn(&spec)), "{spec:?}");
        }
    }

    #[test]
    fn dead_inputs_are_zeroed_and_harmless() {
        let mut l = layer(16, 96, 8);
        for j in [0, 5, 50, 95] {
            for k in 0..96 {
                l.h[j * 96 + k] = 0.0;
                l.h[k * 96 + j] = 0.0;
            }
        }
        for act_order in [false, true] {
            let cfg = GptqConfig {
                act_order,
                ..GptqConfig::default()
            };
            let q = l.gptq(&QuantSpec::new(3, 32), &cfg);
            assert!(q.w_hat.iter().all(|v| v.is_finite()));
            for r in 0..16 {
                for j in [0, 5, 50, 95] {
                    assert_eq!(q.w_hat[r * 96 + j], 0.0);
                }
            }
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let h = vec![1.0f32, 2.0, 2.0, 1.0]; // indefinite, even after 1% damping
        let w = vec![0.5f32; 4];
        let spec = QuantSpec::new(3, 2);
        let err = gptq(&w, 2, 2, &h, &spec, &GptqConfig::default()).unwrap_err();
        assert!(matches!(
            err,
            QuantError::Hessian(HessianError::NotPositiveDefinite { .. })
        ));
        let err = gptq(
            &w,
            3,
            2,
            &[1.0, 0.0, 0.0, 1.0],
            &spec,
            &GptqConfig::default(),
        );
        assert!(matches!(err, Err(QuantError::Shape { .. })));
    }
}
