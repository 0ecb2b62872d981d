//! Runtime SIMD dispatch and the two vector-friendly primitives the fast ops share.
//!
//! Rust compiles for the x86_64 baseline (SSE2) unless told otherwise, so a plain loop in a
//! library never uses AVX2/AVX-512 or FMA. [`vectorized!`] fixes that without `unsafe` at the
//! call sites: it runs a closure inside a `#[target_feature]` trampoline chosen once from
//! CPUID, and because the closure and the `#[inline(always)]` helpers below are inlined into
//! it, LLVM auto-vectorizes their loops with the wide registers. The loops are written with
//! explicit independent lanes (no reassociation needed), so the results do not depend on the
//! level chosen beyond the last bits of [`exp`] vs libm.

use half::{bf16, f16};
use std::sync::OnceLock;

/// The widest instruction set the fast ops may use on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimdLevel {
    /// AVX-512 F/VL/BW/DQ with FMA: 16 f32 lanes.
    Avx512,
    /// AVX2 with FMA: 8 f32 lanes.
    Avx2,
    /// The x86_64 (or other arch) baseline.
    Baseline,
}

/// Detected once per process.
pub fn simd_level() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> SimdLevel {
    use std::arch::is_x86_feature_detected as has;
    if has!("avx512f") && has!("avx512vl") && has!("avx512bw") && has!("avx512dq") && has!("fma") {
        SimdLevel::Avx512
    } else if has!("avx2") && has!("fma") {
        SimdLevel::Avx2
    } else {
        SimdLevel::Baseline
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> SimdLevel {
    SimdLevel::Baseline
}

/// Evaluates a block compiled for [`simd_level`] (see the module docs): `vectorized!({ ... })`.
///
/// The block becomes an `#[inline(always)]` closure, so it is inlined into the
/// `#[target_feature]` trampoline and gets the wide registers. Helpers it calls must be
/// `#[inline(always)]` too; anything not inlined runs at the baseline.
macro_rules! vectorized {
    ($body:expr) => {
        $crate::cpu::simd::dispatch(
            #[inline(always)]
            || $body,
        )
    };
}
pub(crate) use vectorized;

/// Calls `f` through the trampoline for [`simd_level`]; use it via [`vectorized!`].
#[inline(always)]
pub fn dispatch<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        match simd_level() {
            // SAFETY: the level was detected from CPUID, so the enabled features exist.
            SimdLevel::Avx512 => unsafe { with_avx512(f) },
            SimdLevel::Avx2 => unsafe { with_avx2(f) },
            SimdLevel::Baseline => f(),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Independent accumulators per reduction: two AVX-512 registers' worth, enough to hide the
/// add latency on the hot dot products.
pub(crate) const LANES: usize = 32;

/// `Σ a[i]·b[i]` with [`LANES`] partial sums (vectorizes inside [`vectorized!`]).
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_with(a, b, |v| v)
}

/// `Σ a[i]·widen(b[i])`: [`dot`] against a narrower element type, widened in registers.
#[inline(always)]
pub fn dot_with<T: Copy>(a: &[f32], b: &[T], widen: impl Fn(T) -> f32) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (xa, xb) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += xa[l] * widen(xb[l]);
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(&x, &y)| x * widen(y)).sum();
    hsum(&acc) + tail
}

/// Pairwise sum of the lane accumulators (a fixed order, so results are deterministic).
#[inline(always)]
pub fn hsum(acc: &[f32; LANES]) -> f32 {
    let mut v = *acc;
    let mut w = LANES / 2;
    while w > 0 {
        for l in 0..w {
            v[l] += v[l + w];
        }
        w /= 2;
    }
    v[0]
}

/// Largest element, `-inf` for an empty slice (NaNs are skipped, as by `f32::max`).
#[inline(always)]
pub fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    for c in chunks {
        for l in 0..LANES {
            acc[l] = acc[l].max(c[l]);
        }
    }
    acc.iter().fold(tail, |m, &x| m.max(x))
}

/// `Σ f(x)` with [`LANES`] partial sums.
#[inline(always)]
pub fn sum_map(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|&x| f(x)).sum();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += f(c[l]);
        }
    }
    hsum(&acc) + tail
}

/// `e^x` in f32 to within ~2 ulp, written so that LLVM vectorizes it (no libm call, no
/// branches): Cody-Waite range reduction `x = n·ln2 + r`, a degree-6 polynomial for `e^r`
/// (Cephes' `expf`), and `2^n` built in the exponent bits. Inputs are clamped to
/// `[-87.3, 88.7]`, so `exp(-inf)` is ~1e-38 rather than 0 — harmless inside softmax sums —
/// and NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2^23 rounds to the nearest integer and leaves it in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.7);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    let ni = t.to_bits() as i32 - ROUND.to_bits() as i32;
    er * f32::from_bits(((ni + 127) << 23) as u32)
}

/// bf16 is the top half of an f32, so widening is a shift (vectorizes, unlike a call into
/// `half`, which is compiled for the baseline).
#[inline(always)]
pub fn bf16_to_f32(b: bf16) -> f32 {
    f32::from_bits((b.to_bits() as u32) << 16)
}

/// Exact f16 → f32 with integer ops only, so it vectorizes (F. Giesen's method): move the
/// exponent and mantissa into place and rebias; fix up Inf/NaN (exponent all ones) and
/// subnormals (exponent zero, renormalized by one float subtraction) with selects.
#[inline(always)]
pub fn f16_to_f32(h: f16) -> f32 {
    const EXP_MASK: u32 = 0x7c00 << 13;
    let h = h.to_bits() as u32;
    let bits = (h & 0x7fff) << 13;
    let exp = bits & EXP_MASK;
    let normal = bits + ((127 - 15) << 23);
    let magnitude = if exp == EXP_MASK {
        normal + ((128 - 16) << 23)
    } else if exp == 0 {
        (f32::from_bits(normal + (1 << 23)) - f32::from_bits(113 << 23)).to_bits()
    } else {
        normal
    };
    f32::from_bits(magnitude | (h & 0x8000) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (exp(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.013;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn dot_matches_sequential() {
        let a: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.11).cos()).collect();
        let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let got = vectorized!(dot(&a, &b));
        assert!((got as f64 - want).abs() < 1e-4);
    }
}
