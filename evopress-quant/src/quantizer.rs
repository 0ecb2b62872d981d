//! The per-group affine quantizer and the round-to-nearest (RTN) baseline.
//!
//! A row of `W` is cut into groups of `group_size` consecutive columns (the last group may be
//! shorter: hidden 576 is not a multiple of 128). Each (row, group) gets its own grid
//!
//! ```text
//!   q  = clamp(round(x / scale + zero), 0, maxq)      maxq = 2^bits − 1
//!   x̂  = scale · (q − zero)
//! ```
//!
//! - asymmetric: the grid spans the group's `[lo, hi]`: `scale = (hi − lo)/maxq`,
//!   `zero = round(−lo/scale)` (an integer, so `x = 0` is exactly representable);
//! - symmetric: `scale = 2·max(|lo|, |hi|)/maxq`, `zero = (maxq + 1)/2`, fixed.
//!
//! `[lo, hi]` is the group's min and max (as in the original EvoPress, which does NOT widen the
//! range to include 0), or, with [`RangeSearch::Mse`], the min-max range shrunk by the factor
//! that minimises `Σ|x − x̂|^norm` (reference GPTQ's `mse` option).
//!
//! Scales are rounded to f16 *before* the zero point and the codes are computed, so the f16
//! tables that [`PackedMatrix`](crate::PackedMatrix) stores reproduce `x̂` bit for bit. (The
//! original computes codes with f32 scales and stores f16 ones, so its saved weights drift from
//! the ones GPTQ compensated for.)

use half::f16;
use rayon::prelude::*;

use crate::{check_len, PackedMatrix, QuantError, Quantized};

/// How a group's clipping range `[lo, hi]` is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RangeSearch {
    /// The group's min and max (the original EvoPress quantizer).
    MinMax,
    /// Try `[p·lo, p·hi]` for `p = 1 − i/grid`, `i = 0 .. max_shrink·grid`, keep the `p` with the
    /// least `Σ|x − x̂|^norm`. Clipping a few outliers buys a finer grid for everything else.
    Mse {
        grid: u32,
        max_shrink: f32,
        norm: f32,
    },
}

impl RangeSearch {
    /// Reference GPTQ's `mse=True` setting: 100 grid points, shrink down to 20%, norm 2.4.
    pub const GPTQ_MSE: RangeSearch = RangeSearch::Mse {
        grid: 100,
        max_shrink: 0.8,
        norm: 2.4,
    };
}

/// Everything that defines the quantization grid of a matrix.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantSpec {
    /// Bits per weight, 2..=8.
    pub bits: u8,
    /// Columns per group (≥ 1); `cols` itself means one group per row (per channel).
    pub group_size: usize,
    /// Symmetric grid (fixed zero point) instead of asymmetric.
    pub sym: bool,
    pub range: RangeSearch,
}

impl QuantSpec {
    /// Asymmetric min-max quantization: the setting of the original database builds.
    pub fn new(bits: u8, group_size: usize) -> Self {
        QuantSpec {
            bits,
            group_size,
            sym: false,
            range: RangeSearch::MinMax,
        }
    }

    pub fn validate(&self) -> Result<(), QuantError> {
        if !(2..=8).contains(&self.bits) {
            return Err(QuantError::Bits(self.bits));
        }
        if self.group_size == 0 {
            return Err(QuantError::GroupSize);
        }
        Ok(())
    }

    /// The largest code, `2^bits − 1`.
    pub fn maxq(&self) -> u32 {
        (1u32 << self.bits) - 1
    }

    /// Groups per row of `cols` columns, counting a last partial group.
    pub fn n_groups(&self, cols: usize) -> usize {
        cols.div_ceil(self.group_size)
    }

    /// Fits the grid of one group (one row's `x`) with this spec's range search.
    pub fn fit(&self, x: &[f32]) -> GroupParams {
        let (lo, hi) = x
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        let min_max = GroupParams::from_range(lo, hi, self.bits, self.sym);
        match self.range {
            RangeSearch::MinMax => min_max,
            RangeSearch::Mse {
                grid,
                max_shrink,
                norm,
            } => {
                let maxq = self.maxq();
                let err = |p: GroupParams| -> f32 {
                    x.iter()
                        .map(|&v| (v - p.dequantize(p.quantize(v, maxq))).abs().powf(norm))
                        .sum()
                };
                let steps = (max_shrink * grid as f32) as u32;
                let mut best = (err(min_max), min_max);
                for i in 1..steps {
                    let s = 1.0 - i as f32 / grid as f32;
                    let cand = GroupParams::from_range(s * lo, s * hi, self.bits, self.sym);
                    let e = err(cand);
                    if e < best.0 {
                        best = (e, cand);
                    }
                }
                best.1
            }
        }
    }
}

/// A zero point this far from the grid would lose integer precision in f16 (exact to 2048);
/// see [`GroupParams::from_range`].
const MAX_ZERO: f32 = 1024.0;

/// The grid of one (row, group): `x̂ = scale · (q − zero)`. Both values are exactly
/// representable in f16 (they are stored that way) and `scale > 0`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupParams {
    pub scale: f32,
    pub zero: f32,
}

impl GroupParams {
    /// The grid that covers `[lo, hi]` with `2^bits` levels.
    ///
    /// Degenerate ranges need care because the range need not contain 0. A group of nearly
    /// equal values `c` far from 0 would get a tiny scale and a zero point `≈ −c/scale` too large
    /// for f16, so the scale is raised to at least `max|x| / 1024`: then `|zero| ≤ 1024` is an
    /// exact f16 integer and the grid still covers `[lo, hi]` (it only got coarser, and only for
    /// groups whose spread is below `maxq/1024` of their magnitude). A constant group `c` then
    /// decodes to within `|c|/2048` of `c`; an all-zero group gets scale 1 and decodes to 0.
    pub fn from_range(lo: f32, hi: f32, bits: u8, sym: bool) -> Self {
        let maxq = ((1u32 << bits) - 1) as f32;
        let amax = lo.abs().max(hi.abs());
        let raw = if sym {
            2.0 * amax / maxq
        } else {
            ((hi - lo) / maxq).max(amax / MAX_ZERO)
        };
        let scale = round_up_to_f16(if raw > 0.0 { raw } else { 1.0 });
        let zero = if sym {
            (maxq + 1.0) / 2.0
        } else {
            (-lo / scale).round_ties_even()
        };
        GroupParams { scale, zero }
    }

    /// The code of `x`: nearest grid point (ties to even, like `torch.round`), clamped.
    #[inline]
    pub fn quantize(self, x: f32, maxq: u32) -> u8 {
        (x / self.scale + self.zero)
            .round_ties_even()
            .clamp(0.0, maxq as f32) as u8
    }

    /// `scale · (q − zero)`. `q − zero` is exact in f32, so this is one rounding, the same
    /// one every consumer of the packed format performs.
    #[inline]
    pub fn dequantize(self, q: u8) -> f32 {
        (q as f32 - self.zero) * self.scale
    }
}

/// Rounds a positive scale *up* to an f16 value, so the stored grid still covers `[lo, hi]` and
/// `|zero| ≤ MAX_ZERO` survives the rounding (nearest rounding could shrink a subnormal scale by
/// half and double the zero point).
fn round_up_to_f16(scale: f32) -> f32 {
    let h = f16::from_f32(scale);
    let up = if h.to_f32() < scale {
        f16::from_bits(h.to_bits() + 1) // next f16 towards +inf (h ≥ 0 here)
    } else {
        h
    };
    up.to_f32()
}

/// Round-to-nearest: every (row, group) gets its grid from the weights themselves and every
/// weight goes to its nearest grid point. The baseline GPTQ must beat.
///
/// `w` is `[rows, cols]` row-major; the result stores codes in natural column order.
pub fn rtn(w: &[f32], rows: usize, cols: usize, spec: &QuantSpec) -> Result<Quantized, QuantError> {
    spec.validate()?;
    check_len("rtn: weight", w.len(), rows * cols)?;
    let gs = spec.group_size;
    let n_groups = spec.n_groups(cols);
    let maxq = spec.maxq();
    let mut codes = vec![0u8; rows * cols];
    let mut params = vec![
        GroupParams {
            scale: 1.0,
            zero: 0.0
        };
        rows * n_groups
    ];
    let mut w_hat = vec![0f32; rows * cols];
    codes
        .par_chunks_mut(cols.max(1))
        .zip(params.par_chunks_mut(n_groups.max(1)))
        .zip(w_hat.par_chunks_mut(cols.max(1)))
        .zip(w.par_chunks(cols.max(1)))
        .for_each(|(((codes, params), w_hat), w)| {
            for (g, p) in params.iter_mut().enumerate() {
                let range = g * gs..((g + 1) * gs).min(cols);
                *p = spec.fit(&w[range.clone()]);
                for j in range {
                    codes[j] = p.quantize(w[j], maxq);
                    w_hat[j] = p.dequantize(codes[j]);
                }
            }
        });
    let packed = PackedMatrix::from_codes(rows, cols, spec, &codes, &params, None);
    Ok(Quantized { packed, w_hat })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asymmetric_min_max_hits_both_ends() {
        // Range [-1, 2] at 2 bits: scale 1 (f16-exact), zero 1, grid {-1, 0, 1, 2}.
        let p = GroupParams::from_range(-1.0, 2.0, 2, false);
        assert_eq!(
            p,
            GroupParams {
                scale: 1.0,
                zero: 1.0
            }
        );
        for (x, q) in [(-1.0, 0), (0.0, 1), (1.2, 2), (2.0, 3), (7.0, 3), (-9.0, 0)] {
            assert_eq!(p.quantize(x, 3), q, "x = {x}");
        }
        assert_eq!(p.dequantize(3), 2.0);
    }

    #[test]
    fn range_not_containing_zero_is_used_as_is() {
        // The original does not widen [lo, hi] to include 0: the zero point goes negative.
        let p = GroupParams::from_range(1.0, 4.0, 2, false);
        assert_eq!(
            p,
            GroupParams {
                scale: 1.0,
                zero: -1.0
            }
        );
        assert_eq!(p.dequantize(p.quantize(4.0, 3)), 4.0);
        assert_eq!(p.dequantize(p.quantize(1.0, 3)), 1.0);
    }

    #[test]
    fn symmetric_grid_is_centred() {
        let p = GroupParams::from_range(-0.5, 3.0, 3, true);
        assert_eq!(p.zero, 4.0);
        assert!((p.scale - 6.0 / 7.0).abs() < 1e-3);
        assert_eq!(p.dequantize(4), 0.0);
        // Symmetric: -x lands on the mirror point of x (up to the one extra negative level).
        let q = p.quantize(1.7, 7);
        assert_eq!(p.dequantize(p.quantize(-1.7, 7)), -p.dequantize(q));
    }

    #[test]
    fn degenerate_groups_are_exact() {
        for bits in 2..=8 {
            for c in [0.0f32, 0.37, -1234.5, 1e-3] {
                let p = GroupParams::from_range(c, c, bits, false);
                let maxq = (1 << bits) - 1;
                let q = p.quantize(c, maxq);
                assert!(p.zero.abs() <= MAX_ZERO, "zero {}", p.zero);
                assert_eq!(f16::from_f32(p.scale).to_f32(), p.scale);
                assert!(
                    (p.dequantize(q) - c).abs() <= c.abs() * 1e-3,
                    "bits {bits} c {c}"
                );
            }
        }
    }

    #[test]
    fn params_are_f16_exact() {
        let p = GroupParams::from_range(-0.0123, 0.0456, 3, false);
        assert_eq!(f16::from_f32(p.scale).to_f32(), p.scale);
        assert_eq!(f16::from_f32(p.zero).to_f32(), p.zero);
    }

    #[test]
    fn rtn_error_is_within_half_a_step_and_shrinks_with_bits() {
        let (rows, cols) = (8, 200); // 200 = 3 groups of 64 + a partial group of 8
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let mut prev = f32::INFINITY;
        for bits in 2..=8 {
            let spec = QuantSpec::new(bits, 64);
            let q = rtn(&w, rows, cols, &spec).unwrap();
            let mse: f32 = w.iter().zip(&q.w_hat).map(|(a, b)| (a - b).powi(2)).sum();
            for r in 0..rows {
                for j in 0..cols {
                    let p = q.packed.group_params(r, j / 64);
                    let e = (w[r * cols + j] - q.w_hat[r * cols + j]).abs();
                    assert!(e <= 0.5 * p.scale * 1.001, "bits {bits} ({r},{j}) err {e}");
                }
            }
            assert!(mse < prev, "bits {bits}: {mse} !< {prev}");
            prev = mse;
        }
    }

    #[test]
    fn mse_range_search_never_loses_to_min_max() {
        // Heavy-tailed group: one outlier stretches the min-max grid.
        let mut x: Vec<f32> = (0..128)
            .map(|i| ((i * 37) % 101) as f32 / 100.0 - 0.5)
            .collect();
        x[5] = 6.0;
        for bits in [2u8, 3, 4] {
            let maxq = (1u32 << bits) - 1;
            let err = |p: GroupParams| -> f32 {
                x.iter()
                    .map(|&v| (v - p.dequantize(p.quantize(v, maxq))).abs().powf(2.4))
                    .sum()
            };
            let plain = QuantSpec::new(bits, 128).fit(&x);
            let mse = QuantSpec {
                range: RangeSearch::GPTQ_MSE,
                ..QuantSpec::new(bits, 128)
            }
            .fit(&x);
            assert!(err(mse) <= err(plain));
            assert!(
                mse.scale < plain.scale,
                "bits {bits}: outlier should be clipped"
            );
        }
    }

    #[test]
    fn invalid_specs_are_rejected() {
        assert_eq!(QuantSpec::new(1, 64).validate(), Err(QuantError::Bits(1)));
        assert_eq!(QuantSpec::new(9, 64).validate(), Err(QuantError::Bits(9)));
        assert_eq!(QuantSpec::new(4, 0).validate(), Err(QuantError::GroupSize));
    }
}
