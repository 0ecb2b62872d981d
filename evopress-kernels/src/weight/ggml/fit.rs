//! The scale searches llama.cpp's quantizers share: given a group of values (and optionally a
//! weight per value), choose a scale (and for the asymmetric formats a minimum) and the integer
//! levels. Ported from `ggml-quants.c` (llama.cpp, MIT licence) operation for operation, in
//! f32 and in the same order, because the point is bit-exact agreement with llama.cpp's files;
//! `docs/ggml-formats.md` describes what each search does.
//!
//! Integer-to-float conversions, the C `MIN`/`MAX` macros and the narrowing stores into
//! `int8_t`/`uint8_t` arrays are reproduced as written (a store into a `uint8_t` wraps, and a
//! later read sees the wrapped value).

// Indexed loops mirror llama.cpp's, so the port can be checked against it line by line.
#![allow(clippy::needless_range_loop)]

/// Groups whose largest magnitude is below this are stored as zeros.
pub(super) const GROUP_MAX_EPS: f32 = 1e-15;

/// Round half to even for `|x| <= 4194303`, by adding `1.5 · 2^23` and reading the mantissa
/// (llama.cpp's `nearest_int`).
#[inline(always)]
pub(super) fn nearest_int(x: f32) -> i32 {
    let val = x + 12_582_912.0;
    (val.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// C's `MAX(a, b)`: `a > b ? a : b`.
#[inline(always)]
fn c_max(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// Symmetric levels `L[i] ∈ [0, 2·nmax)` (the stored code; the level is `L[i] − nmax`) and the
/// scale, for `x ≈ scale · (L − nmax)` (`make_qx_quants`). `rmse_type` 0 takes the max-based
/// scale as is; otherwise 19 scales around it are tried and the one maximising
/// `(Σ w·x·l)² / Σ w·l²` kept, with `w` the given weights or, without them, `x²` (type 1),
/// 1 (2), `|x|` (3) or `√|x|` (4). A negative type returns early after the first refit.
pub(super) fn make_qx_quants(
    nmax: i32,
    x: &[f32],
    levels: &mut [i8],
    rmse_type: i32,
    qw: Option<&[f32]>,
) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = -nmaxf / max;
    let clamp = |l: i32| l.clamp(-nmax, nmax - 1);
    if rmse_type == 0 {
        for (o, &v) in levels.iter_mut().zip(x) {
            *o = (nmax + clamp(nearest_int(iscale * v))) as i8;
        }
        return 1.0 / iscale;
    }
    let (rmse_type, return_early) = if rmse_type < 0 {
        (-rmse_type, true)
    } else {
        (rmse_type, false)
    };
    let weight = |i: usize| match qw {
        Some(q) => q[i],
        None => match rmse_type {
            1 => x[i] * x[i],
            2 => 1.0,
            3 => x[i].abs(),
            _ => x[i].abs().sqrt(),
        },
    };
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for i in 0..x.len() {
        let l = clamp(nearest_int(iscale * x[i]));
        levels[i] = (l + nmax) as i8;
        let w = weight(i);
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    if return_early {
        return if suml2 > 0.0 {
            0.5 * (scale + 1.0 / iscale)
        } else {
            1.0 / iscale
        };
    }
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmaxf + 0.1 * is as f32) / max;
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for i in 0..x.len() {
            let l = clamp(nearest_int(iscale * x[i]));
            let w = weight(i);
            sumlx += w * x[i] * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (o, &v) in levels.iter_mut().zip(x) {
                *o = (nmax + clamp(nearest_int(iscale * v))) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Q3_K's symmetric search (`make_q3_quants`): with `do_rmse`, start from the max-based
/// levels and move single levels while that raises `(Σ w·x·l)² / Σ w·l²` (`w = x²`), up to
/// five sweeps. Levels are stored `+ nmax`.
pub(super) fn make_q3_quants(nmax: i32, x: &[f32], levels: &mut [i8], do_rmse: bool) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let clamp = |l: i32| l.clamp(-nmax, nmax - 1);
    if !do_rmse {
        for (o, &v) in levels.iter_mut().zip(x) {
            *o = (clamp(nearest_int(iscale * v)) + nmax) as i8;
        }
        return 1.0 / iscale;
    }
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for i in 0..x.len() {
        let l = clamp(nearest_int(iscale * x[i]));
        levels[i] = l as i8;
        let w = x[i] * x[i];
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..x.len() {
            let w = x[i] * x[i];
            let li = levels[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = clamp(nearest_int(x[i] * sl2 / slx));
                if new_l != levels[i] as i32 {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        levels[i] = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for l in levels.iter_mut() {
        *l += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// The search parameters of [`make_qkx_quants`].
#[derive(Clone, Copy)]
pub(super) struct AffineSearch {
    /// First candidate: `nmax + rmin` levels over the range, then `+ rdelta` per step.
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
    /// Absolute instead of squared error.
    pub use_mad: bool,
}

/// Which of llama.cpp's two affine searches: `make_qkx2_quants` (explicit weights) or
/// `make_qkx3_quants` (weights or, when absent, `x²`; a degenerate range is tested with `<=`).
#[derive(Clone, Copy)]
pub(super) enum AffineWeights<'a> {
    Qkx2(&'a [f32]),
    Qkx3(Option<&'a [f32]>),
}

/// Asymmetric levels `L ∈ [0, nmax]` with `x ≈ scale · L − min`: start from the min/max range,
/// then for each of `nstep + 1` level counts requantize and solve the weighted least-squares
/// (scale, min) in closed form, keeping the lowest weighted error. Returns the scale and
/// stores the (non-negative) minimum in `the_min`.
pub(super) fn make_qkx_quants(
    nmax: i32,
    x: &[f32],
    weights: AffineWeights<'_>,
    levels: &mut [u8],
    the_min: &mut f32,
    aux: &mut [u8],
    p: AffineSearch,
) -> f32 {
    let n = x.len();
    let weight = |i: usize| match weights {
        AffineWeights::Qkx2(w) | AffineWeights::Qkx3(Some(w)) => w[i],
        AffineWeights::Qkx3(None) => x[i] * x[i],
    };
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weight(0);
    let mut sum_x = sum_w * x[0];
    for (i, &v) in x.iter().enumerate().skip(1) {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
        let w = weight(i);
        sum_w += w;
        sum_x += w * v;
    }
    if min > 0.0 {
        min = 0.0;
    }
    let degenerate = match weights {
        AffineWeights::Qkx2(_) => max == min,
        AffineWeights::Qkx3(_) => max <= min,
    };
    if degenerate {
        levels[..n].fill(0);
        *the_min = -min;
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let err = |d: f32| if p.use_mad { d.abs() } else { d * d };
    let mut best_error = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min));
        levels[i] = l.clamp(0, nmax) as u8;
        let diff = scale * levels[i] as f32 + min - x[i];
        best_error += weight(i) * err(diff);
    }
    if p.nstep < 1 {
        *the_min = -min;
        return scale;
    }
    for is in 0..=p.nstep {
        let iscale = (p.rmin + p.rdelta * is as f32 + nmaxf) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            aux[i] = l as u8;
            let (w, lf) = (weight(i), l as f32);
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * aux[i] as f32 + this_min - x[i];
                cur_error += weight(i) * err(diff);
            }
            if cur_error < best_error {
                levels[..n].copy_from_slice(&aux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    scale
}

/// Non-negative levels `L ∈ [0, nmax]` for a group of non-negative values (the sub-block
/// scales or minima of a K-quant super-block) under `quant_weights` (`make_qp_quants`): the
/// best of 9 max-based scales by weighted squared error, then up to five sweeps of single-level
/// moves that raise `(Σ w·x·l)² / Σ w·l²`. Returns the scale.
pub(super) fn make_qp_quants(nmax: i32, x: &[f32], levels: &mut [u8], qw: &[f32]) -> f32 {
    let mut max = 0f32;
    for &v in x {
        max = c_max(max, v);
    }
    if max < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / max;
    for (o, &v) in levels.iter_mut().zip(x) {
        *o = nearest_int(iscale * v) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0f32;
    for i in 0..x.len() {
        let diff = x[i] - scale * levels[i] as f32;
        best_mse += qw[i] * diff * diff;
    }
    for is in -4..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1 * is as f32 + nmaxf) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0f32;
        for i in 0..x.len() {
            let l = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * l as f32;
            mse += qw[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for i in 0..x.len() {
        let l = nearest_int(iscale * x[i]).min(nmax);
        levels[i] = l as u8;
        let w = qw[i];
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..x.len() {
            let w = qw[i];
            let li = levels[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            let mut sl2 = suml2 - w * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != levels[i] as i32 {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        levels[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        for (x, want) in [
            (0.5, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (3.49, 3),
        ] {
            assert_eq!(nearest_int(x), want, "{x}");
        }
        assert_eq!(nearest_int(-4_194_303.0), -4_194_303);
    }
}
