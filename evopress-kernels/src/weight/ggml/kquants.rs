//! The K-quant super-block formats (256 elements): `Q2_K`, `Q3_K`, `Q4_K`, `Q5_K`, `Q6_K`, and
//! the 8-bit `Q8_K` (layouts in `docs/ggml-formats.md`). Decoding follows llama.cpp's
//! `dequantize_row_*`, encoding its `quantize_row_*_ref` (no importance) and
//! `quantize_row_*_impl` (with importance), operation for operation (llama.cpp, MIT licence),
//! so the bytes match llama.cpp's.

// Indexed loops mirror llama.cpp's, so the port can be checked against it line by line.
#![allow(clippy::needless_range_loop)]

use super::fit::{
    make_q3_quants, make_qkx_quants, make_qp_quants, make_qx_quants, nearest_int, AffineSearch,
    AffineWeights, GROUP_MAX_EPS,
};
use crate::cpu::simd::f16_to_f32;
use half::f16;

/// Elements per super-block.
pub(super) const QK_K: usize = 256;

#[inline(always)]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_to_f32(f16::from_le_bytes([b[at], b[at + 1]]))
}

#[inline(always)]
fn put_f16(b: &mut [u8], at: usize, x: f32) {
    b[at..at + 2].copy_from_slice(&f16::from_f32(x).to_le_bytes());
}

/// Scale and minimum (6 bits each) of sub-block `j` of `Q4_K`/`Q5_K`'s 12 scale bytes
/// (`get_scale_min_k4`).
#[inline(always)]
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Packs eight 6-bit (scale, min) pairs into `Q4_K`/`Q5_K`'s 12 scale bytes.
fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8], q: &mut [u8]) {
    for j in 0..8 {
        if j < 4 {
            q[j] = ls[j];
            q[j + 4] = lm[j];
        } else {
            q[j + 4] = (ls[j] & 0x0f) | ((lm[j] & 0x0f) << 4);
            q[j - 4] |= (ls[j] >> 4) << 6;
            q[j] |= (lm[j] >> 4) << 6;
        }
    }
}

/// Signed 6-bit scale `j` of `Q3_K`'s 12 scale bytes (stored `+ 32`: low nibbles in bytes
/// 0..8, high bit pairs in bytes 8..12).
#[inline(always)]
fn scale_q3(j: usize, s: &[u8]) -> i32 {
    let lo = if j < 8 { s[j] & 0x0f } else { s[j - 8] >> 4 };
    let hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    (lo | (hi << 4)) as i32 - 32
}

/// Packs sixteen 6-bit `Q3_K` scale codes (`0..64`) into 12 bytes.
fn pack_scales_q3(codes: impl Fn(usize) -> u8, s: &mut [u8]) {
    s[..12].fill(0);
    for j in 0..16 {
        let l = codes(j);
        if j < 8 {
            s[j] = l & 0x0f;
        } else {
            s[j - 8] |= (l & 0x0f) << 4;
        }
        s[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
    }
}

/// Two-bit codes of a super-block: byte `l` of each 32-byte quarter holds elements
/// `l, l+32, l+64, l+96` of its 128-element half at bits 0, 2, 4, 6.
fn pack_2bit(levels: &[u8; QK_K], qs: &mut [u8]) {
    for j in (0..QK_K).step_by(128) {
        for l in 0..32 {
            qs[j / 4 + l] = levels[j + l]
                | (levels[j + l + 32] << 2)
                | (levels[j + l + 64] << 4)
                | (levels[j + l + 96] << 6);
        }
    }
}

// ---------------------------------------------------------------- decoding

/// `Q2_K` (84 bytes): 16 scale bytes (low nibble scale, high nibble min), 64 bytes of 2-bit
/// codes, f16 `d`, f16 `dmin`; `x = d·sc · q − dmin·m` per 16 elements.
#[inline(always)]
pub(super) fn decode_q2_k(b: &[u8], out: &mut [f32]) {
    let (scales, qs) = (&b[..16], &b[16..80]);
    let (d, min) = (f16_at(b, 80), f16_at(b, 82));
    let mut is = 0;
    for (half, y) in out.chunks_exact_mut(128).enumerate() {
        let q = &qs[32 * half..32 * half + 32];
        for (j, y) in y.chunks_exact_mut(32).enumerate() {
            let shift = 2 * j;
            for (part, y) in y.chunks_exact_mut(16).enumerate() {
                let sc = scales[is];
                is += 1;
                let (dl, ml) = (d * (sc & 0x0f) as f32, min * (sc >> 4) as f32);
                for (l, o) in y.iter_mut().enumerate() {
                    *o = dl * ((q[16 * part + l] >> shift) & 3) as f32 - ml;
                }
            }
        }
    }
}

/// `Q3_K` (110 bytes): 32 bytes of high bits, 64 bytes of 2-bit codes, 12 bytes of 6-bit
/// scales, f16 `d`; `x = d·(sc − 32) · (q − 4)` per 16 elements, `q` 3 bits.
#[inline(always)]
pub(super) fn decode_q3_k(b: &[u8], out: &mut [f32]) {
    let (hm, qs, scales) = (&b[..32], &b[32..96], &b[96..108]);
    let d_all = f16_at(b, 108);
    let (mut is, mut m) = (0, 1u8);
    for (half, y) in out.chunks_exact_mut(128).enumerate() {
        let q = &qs[32 * half..32 * half + 32];
        for (j, y) in y.chunks_exact_mut(32).enumerate() {
            let shift = 2 * j;
            for (part, y) in y.chunks_exact_mut(16).enumerate() {
                let dl = d_all * scale_q3(is, scales) as f32;
                is += 1;
                for (l, o) in y.iter_mut().enumerate() {
                    let i = 16 * part + l;
                    let low = ((q[i] >> shift) & 3) as i32;
                    let sub = if hm[i] & m != 0 { 0 } else { 4 };
                    *o = dl * (low - sub) as f32;
                }
            }
            m <<= 1;
        }
    }
}

/// `Q4_K` (144 bytes): f16 `d`, f16 `dmin`, 12 bytes of 6-bit scales and mins, 128 nibble
/// bytes; `x = d·sc · q − dmin·m` per 32 elements.
#[inline(always)]
pub(super) fn decode_q4_k(b: &[u8], out: &mut [f32]) {
    let (d, min) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for (pair, y) in out.chunks_exact_mut(64).enumerate() {
        let q = &qs[32 * pair..32 * pair + 32];
        let (sc1, m1) = scale_min_k4(2 * pair, scales);
        let (sc2, m2) = scale_min_k4(2 * pair + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let (lo, hi) = y.split_at_mut(32);
        for l in 0..32 {
            lo[l] = d1 * (q[l] & 0x0f) as f32 - m1;
            hi[l] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// `Q5_K` (176 bytes): as `Q4_K` plus 32 bytes of fifth bits before the nibbles.
#[inline(always)]
pub(super) fn decode_q5_k(b: &[u8], out: &mut [f32]) {
    let (d, min) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for (pair, y) in out.chunks_exact_mut(64).enumerate() {
        let ql = &qs[32 * pair..32 * pair + 32];
        let (u1, u2) = (1u8 << (2 * pair), 2u8 << (2 * pair));
        let (sc1, m1) = scale_min_k4(2 * pair, scales);
        let (sc2, m2) = scale_min_k4(2 * pair + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let (lo, hi) = y.split_at_mut(32);
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            lo[l] = d1 * ((ql[l] & 0x0f) + h1) as f32 - m1;
            hi[l] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
        }
    }
}

/// `Q6_K` (210 bytes): 128 bytes of low nibbles, 64 bytes of high bit pairs, 16 signed scale
/// bytes, f16 `d`; `x = d · sc · (q − 32)` per 16 elements, `q` 6 bits. Written per
/// 16-element run with the four scales `d · sc` hoisted (the same products llama.cpp forms per
/// element), so the inner loop is a plain 16-lane map.
#[inline(always)]
pub(super) fn decode_q6_k(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 208);
    for (half, y) in out.chunks_exact_mut(128).enumerate() {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let sc = &b[192 + 8 * half..192 + 8 * half + 8];
        let (y01, y23) = y.split_at_mut(64);
        let (y0, y1) = y01.split_at_mut(32);
        let (y2, y3) = y23.split_at_mut(32);
        for is in 0..2 {
            let s: [f32; 4] = std::array::from_fn(|k| d * (sc[is + 2 * k] as i8) as f32);
            let r = 16 * is..16 * is + 16;
            let (lo, hi, h) = (
                &ql[r.clone()],
                &ql[32 + 16 * is..48 + 16 * is],
                &qh[r.clone()],
            );
            let (o0, o1) = (&mut y0[r.clone()], &mut y1[r.clone()]);
            let (o2, o3) = (&mut y2[r.clone()], &mut y3[r]);
            for i in 0..16 {
                let q1 = ((lo[i] & 0x0f) | ((h[i] & 3) << 4)) as i32 - 32;
                let q2 = ((hi[i] & 0x0f) | (((h[i] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((lo[i] >> 4) | (((h[i] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((hi[i] >> 4) | (((h[i] >> 6) & 3) << 4)) as i32 - 32;
                o0[i] = s[0] * q1 as f32;
                o1[i] = s[1] * q2 as f32;
                o2[i] = s[2] * q3 as f32;
                o3[i] = s[3] * q4 as f32;
            }
        }
    }
}

/// `Q8_K` (292 bytes): f32 `d`, 256 signed bytes, 16 i16 partial sums; `x = d · q`.
#[inline(always)]
pub(super) fn decode_q8_k(b: &[u8], out: &mut [f32]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for (o, &q) in out.iter_mut().zip(&b[4..4 + QK_K]) {
        *o = d * (q as i8) as f32;
    }
}

// ---------------------------------------------------------------- encoding

/// Requantizes 16- or 32-element groups against their stored (f16-rounded) affine scale and
/// minimum: `L = clamp(round((x + m) / d), 0, nmax)`, skipping groups whose scale is zero.
fn requantize_affine(
    x: &[f32],
    levels: &mut [u8; QK_K],
    group: usize,
    nmax: i32,
    dm: impl Fn(usize) -> (f32, f32),
) {
    for j in 0..QK_K / group {
        let (d, m) = dm(j);
        if d == 0.0 {
            continue;
        }
        for ii in 0..group {
            let l = nearest_int((x[group * j + ii] + m) / d);
            levels[group * j + ii] = l.clamp(0, nmax) as u8;
        }
    }
}

/// Requantizes 16-element groups against their stored symmetric scale:
/// `L = clamp(round(x / d), −half, half − 1) + half`.
fn requantize_symmetric(x: &[f32], levels: &mut [i8; QK_K], half: i32, d: impl Fn(usize) -> f32) {
    for j in 0..QK_K / 16 {
        let d = d(j);
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let l = nearest_int(x[16 * j + ii] / d).clamp(-half, half - 1);
            levels[16 * j + ii] = (l + half) as i8;
        }
    }
}

/// The largest of `v` (0 when none is positive).
fn positive_max(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, &s| if s > m { s } else { m })
}

/// `Q2_K` without importance: per 16 elements an affine fit weighted by `|x|` (absolute
/// error), then the 16 scales and 16 minima each quantized to 4 bits against their maximum.
pub(super) fn encode_q2_k(x: &[f32], b: &mut [u8]) {
    let mut levels = [0u8; QK_K];
    let (mut scales, mut mins, mut aux) = ([0f32; 16], [0f32; 16], [0u8; 16]);
    let search = AffineSearch {
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: true,
    };
    for j in 0..16 {
        let xs = &x[16 * j..16 * j + 16];
        let weights: [f32; 16] = std::array::from_fn(|l| xs[l].abs());
        let w = AffineWeights::Qkx2(&weights);
        let l = &mut levels[16 * j..16 * j + 16];
        scales[j] = make_qkx_quants(3, xs, w, l, &mut mins[j], &mut aux, search);
    }
    let (max_scale, max_min) = (positive_max(&scales), positive_max(&mins));
    let sb = &mut b[..16];
    if max_scale > 0.0 {
        let iscale = 15.0 / max_scale;
        for j in 0..16 {
            sb[j] = nearest_int(iscale * scales[j]) as u8;
        }
        put_f16(b, 80, max_scale / 15.0);
    } else {
        sb.fill(0);
        put_f16(b, 80, 0.0);
    }
    if max_min > 0.0 {
        let iscale = 15.0 / max_min;
        for j in 0..16 {
            b[j] = (b[j] as i32 | (nearest_int(iscale * mins[j]) << 4)) as u8;
        }
        put_f16(b, 82, max_min / 15.0);
    } else {
        put_f16(b, 82, 0.0);
    }
    finish_q2_k(x, &mut levels, b);
}

/// Requantizes against the stored scales and packs the 2-bit codes.
fn finish_q2_k(x: &[f32], levels: &mut [u8; QK_K], b: &mut [u8]) {
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    let sb: [u8; 16] = b[..16].try_into().unwrap();
    requantize_affine(x, levels, 16, 3, |j| {
        (d * (sb[j] & 0x0f) as f32, dmin * (sb[j] >> 4) as f32)
    });
    pack_2bit(levels, &mut b[16..80]);
}

/// `Q2_K` with importance (`quantize_row_q2_K_impl`): weights `imp · √(σ² + x²)`, σ² the
/// super-block's mean square; a weighted affine fit per 16 elements, then the scales and
/// minima quantized by [`make_qp_quants`] under the groups' summed weights.
pub(super) fn encode_q2_k_weighted(x: &[f32], imp: &[f32], b: &mut [u8]) {
    let mut levels = [0u8; QK_K];
    let (mut scales, mut mins, mut sw, mut aux) = ([0f32; 16], [0f32; 16], [0f32; 16], [0u8; 16]);
    let mut sumx2 = 0f32;
    for &v in &x[..QK_K] {
        sumx2 += v * v;
    }
    let sigma2 = sumx2 / QK_K as f32;
    let search = AffineSearch {
        rmin: -0.9,
        rdelta: 0.05,
        nstep: 36,
        use_mad: false,
    };
    for j in 0..16 {
        let xs = &x[16 * j..16 * j + 16];
        let qw = &imp[16 * j..16 * j + 16];
        let weight: [f32; 16] = std::array::from_fn(|l| qw[l] * (sigma2 + xs[l] * xs[l]).sqrt());
        for &w in &weight {
            sw[j] += w;
        }
        let w = AffineWeights::Qkx3(Some(&weight));
        let l = &mut levels[16 * j..16 * j + 16];
        scales[j] = make_qkx_quants(3, xs, w, l, &mut mins[j], &mut aux, search);
    }
    let (mut ls, mut lm) = ([0u8; 16], [0u8; 16]);
    let dm = make_qp_quants(15, &scales, &mut ls, &sw);
    let mm = make_qp_quants(15, &mins, &mut lm, &sw);
    put_f16(b, 80, dm);
    put_f16(b, 82, mm);
    for j in 0..16 {
        b[j] = ls[j] | (lm[j] << 4);
    }
    finish_q2_k(x, &mut levels, b);
}

/// Splits `Q3_K`'s 3-bit levels (`0..8`) into the high-bit mask (bit `k` of byte `m` is element
/// `32k + m`) and the 2-bit codes.
fn finish_q3_k(x: &[f32], levels: &mut [i8; QK_K], b: &mut [u8]) {
    let d = f16_at(b, 108);
    let sb: [u8; 12] = b[96..108].try_into().unwrap();
    requantize_symmetric(x, levels, 4, |j| d * scale_q3(j, &sb) as f32);
    let hmask = &mut b[..32];
    hmask.fill(0);
    let mut low = [0u8; QK_K];
    for (j, (&l, lo)) in levels.iter().zip(&mut low).enumerate() {
        let l = l as u8;
        if l > 3 {
            hmask[j % 32] |= 1 << (j / 32);
            *lo = l - 4;
        } else {
            *lo = l;
        }
    }
    pack_2bit(&low, &mut b[32..96]);
}

/// `Q3_K` without importance: per 16 elements a symmetric 3-bit fit ([`make_q3_quants`]),
/// then the 16 signed scales quantized to 6 bits against the one of largest magnitude.
pub(super) fn encode_q3_k(x: &[f32], b: &mut [u8]) {
    let mut levels = [0i8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut amax) = (0f32, 0f32);
    for j in 0..16 {
        let l = &mut levels[16 * j..16 * j + 16];
        scales[j] = make_q3_quants(4, &x[16 * j..16 * j + 16], l, true);
        if scales[j].abs() > amax {
            amax = scales[j].abs();
            max_scale = scales[j];
        }
    }
    if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        let code = |j: usize| {
            // C stores the rounded value in an int8_t before clamping.
            let l = nearest_int(iscale * scales[j]) as i8 as i32;
            (l.clamp(-32, 31) + 32) as u8
        };
        pack_scales_q3(code, &mut b[96..108]);
        put_f16(b, 108, 1.0 / iscale);
    } else {
        b[96..108].fill(0);
        put_f16(b, 108, 0.0);
    }
    finish_q3_k(x, &mut levels, b);
}

/// `Q3_K` with importance (`quantize_row_q3_K_impl`): weights `imp · √(σ² + x²)` (σ² twice
/// the super-block's mean square), a weighted symmetric fit per 16 elements, then the scales
/// fitted by [`make_qx_quants`] under the groups' summed weights.
pub(super) fn encode_q3_k_weighted(x: &[f32], imp: &[f32], b: &mut [u8]) {
    let mut levels = [0i8; QK_K];
    let (mut scales, mut sw) = ([0f32; 16], [0f32; 16]);
    let sigma2 = 2.0 * sum_squares(x) / QK_K as f32;
    for j in 0..16 {
        let xs = &x[16 * j..16 * j + 16];
        let qw = &imp[16 * j..16 * j + 16];
        let weight: [f32; 16] = std::array::from_fn(|l| qw[l] * (sigma2 + xs[l] * xs[l]).sqrt());
        let mut sumw = 0f32;
        for &w in &weight {
            sumw += w;
        }
        sw[j] = sumw;
        let l = &mut levels[16 * j..16 * j + 16];
        scales[j] = make_qx_quants(4, xs, l, 1, Some(&weight));
    }
    let mut ls = [0i8; 16];
    let d_block = make_qx_quants(32, &scales, &mut ls, 1, Some(&sw));
    pack_scales_q3(|j| ls[j] as u8, &mut b[96..108]);
    put_f16(b, 108, d_block);
    finish_q3_k(x, &mut levels, b);
}

fn sum_squares(x: &[f32]) -> f32 {
    let mut s = 0f32;
    for &v in &x[..QK_K] {
        s += v * v;
    }
    s
}

/// The shared tail of `Q4_K`/`Q5_K`: requantize every 32 elements against the stored
/// 6-bit scale and minimum.
fn requantize_k4(x: &[f32], levels: &mut [u8; QK_K], nmax: i32, b: &[u8]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let sb = &b[4..16];
    requantize_affine(x, levels, 32, nmax, |j| {
        let (sc, m) = scale_min_k4(j, sb);
        (d * sc as f32, dmin * m as f32)
    });
}

/// `Q4_K`/`Q5_K` without importance: per 32 elements an affine fit weighted by
/// `rms + |x|`, then the 8 scales and 8 minima quantized to 6 bits against their maxima.
fn encode_k4_ref(x: &[f32], b: &mut [u8], nmax: i32, search: AffineSearch) -> [u8; QK_K] {
    let mut levels = [0u8; QK_K];
    let (mut scales, mut mins, mut aux) = ([0f32; 8], [0f32; 8], [0u8; 32]);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights: [f32; 32] = std::array::from_fn(|l| av_x + xs[l].abs());
        let w = AffineWeights::Qkx2(&weights);
        let l = &mut levels[32 * j..32 * j + 32];
        scales[j] = make_qkx_quants(nmax, xs, w, l, &mut mins[j], &mut aux, search);
    }
    let (max_scale, max_min) = (positive_max(&scales), positive_max(&mins));
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let ls = std::array::from_fn(|j| (nearest_int(inv_scale * scales[j]) as u8).min(63));
    let lm = std::array::from_fn(|j| (nearest_int(inv_min * mins[j]) as u8).min(63));
    pack_scale_min_k4(&ls, &lm, &mut b[4..16]);
    put_f16(b, 0, max_scale / 63.0);
    put_f16(b, 2, max_min / 63.0);
    requantize_k4(x, &mut levels, nmax, b);
    levels
}

/// `Q4_K`/`Q5_K` with importance (`quantize_row_q{4,5}_K_impl`): weights
/// `imp · √(σ² + x²)` (σ² twice the mean square), a weighted affine fit per 32 elements, then
/// scales and minima by [`make_qp_quants`] under the groups' summed weights. llama.cpp clamps
/// the 6-bit codes to 63 before packing for `Q5_K` but not for `Q4_K` (`clamp_codes`); the two
/// differ only if a code wrapped below zero.
fn encode_k4_weighted(
    x: &[f32],
    imp: &[f32],
    b: &mut [u8],
    nmax: i32,
    clamp_codes: bool,
) -> [u8; QK_K] {
    let mut levels = [0u8; QK_K];
    let (mut scales, mut mins, mut sw, mut aux) = ([0f32; 8], [0f32; 8], [0f32; 8], [0u8; 32]);
    let sigma2 = 2.0 * sum_squares(x) / QK_K as f32;
    let search = AffineSearch {
        rmin: -0.9,
        rdelta: 0.05,
        nstep: 36,
        use_mad: false,
    };
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let qw = &imp[32 * j..32 * j + 32];
        let weights: [f32; 32] = std::array::from_fn(|l| qw[l] * (sigma2 + xs[l] * xs[l]).sqrt());
        let mut sumw = 0f32;
        for &w in &weights {
            sumw += w;
        }
        sw[j] = sumw;
        let w = AffineWeights::Qkx3(Some(&weights));
        let l = &mut levels[32 * j..32 * j + 32];
        scales[j] = make_qkx_quants(nmax, xs, w, l, &mut mins[j], &mut aux, search);
    }
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    let d_block = make_qp_quants(63, &scales, &mut ls, &sw);
    let m_block = make_qp_quants(63, &mins, &mut lm, &sw);
    if clamp_codes {
        (ls, lm) = (ls.map(|v| v.min(63)), lm.map(|v| v.min(63)));
    }
    pack_scale_min_k4(&ls, &lm, &mut b[4..16]);
    put_f16(b, 0, d_block);
    put_f16(b, 2, m_block);
    requantize_k4(x, &mut levels, nmax, b);
    levels
}

/// `Q4_K` codes: byte `l` of each 32-byte quarter holds elements `l` (low nibble) and `l + 32`
/// (high nibble) of its 64 elements.
fn pack_q4_k(levels: &[u8; QK_K], b: &mut [u8]) {
    let qs = &mut b[16..144];
    for (n, q) in (0..QK_K).step_by(64).zip(qs.chunks_exact_mut(32)) {
        for l in 0..32 {
            q[l] = levels[n + l] | (levels[n + l + 32] << 4);
        }
    }
}

/// `Q5_K` codes: nibbles as `Q4_K`; the fifth bit of element `l` (`l + 32`) of 64-element
/// chunk `c` is bit `2c` (`2c + 1`) of `qh[l]`.
fn pack_q5_k(levels: &[u8; QK_K], b: &mut [u8]) {
    let (qh, ql) = b[16..176].split_at_mut(32);
    qh.fill(0);
    for (c, q) in ql.chunks_exact_mut(32).enumerate() {
        let (m1, m2) = (1u8 << (2 * c), 2u8 << (2 * c));
        for l in 0..32 {
            let (mut l1, mut l2) = (levels[64 * c + l], levels[64 * c + l + 32]);
            if l1 > 15 {
                l1 -= 16;
                qh[l] |= m1;
            }
            if l2 > 15 {
                l2 -= 16;
                qh[l] |= m2;
            }
            q[l] = l1 | (l2 << 4);
        }
    }
}

const Q4_K_REF: AffineSearch = AffineSearch {
    rmin: -1.0,
    rdelta: 0.1,
    nstep: 20,
    use_mad: false,
};
const Q5_K_REF: AffineSearch = AffineSearch {
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
    use_mad: false,
};

pub(super) fn encode_q4_k(x: &[f32], b: &mut [u8]) {
    let levels = encode_k4_ref(x, b, 15, Q4_K_REF);
    pack_q4_k(&levels, b);
}

pub(super) fn encode_q4_k_weighted(x: &[f32], imp: &[f32], b: &mut [u8]) {
    let levels = encode_k4_weighted(x, imp, b, 15, false);
    pack_q4_k(&levels, b);
}

pub(super) fn encode_q5_k(x: &[f32], b: &mut [u8]) {
    let levels = encode_k4_ref(x, b, 31, Q5_K_REF);
    pack_q5_k(&levels, b);
}

pub(super) fn encode_q5_k_weighted(x: &[f32], imp: &[f32], b: &mut [u8]) {
    let levels = encode_k4_weighted(x, imp, b, 31, true);
    pack_q5_k(&levels, b);
}

/// `Q6_K`: per 16 elements a symmetric 6-bit fit ([`make_qx_quants`], weighted by `x²`, or by
/// the importance itself when given), then the 16 signed scales quantized to 8 bits against
/// the one of largest magnitude. A super-block of (near) zeros is stored as zeros.
pub(super) fn encode_q6_k(x: &[f32], imp: Option<&[f32]>, b: &mut [u8]) {
    let mut levels = [0i8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for ib in 0..16 {
        let xs = &x[16 * ib..16 * ib + 16];
        let qw = imp.map(|q| &q[16 * ib..16 * ib + 16]);
        scales[ib] = make_qx_quants(32, xs, &mut levels[16 * ib..16 * ib + 16], 1, qw);
        if scales[ib].abs() > max_abs_scale {
            max_abs_scale = scales[ib].abs();
            max_scale = scales[ib];
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        b[..210].fill(0);
        return;
    }
    let iscale = -128.0 / max_scale;
    put_f16(b, 208, 1.0 / iscale);
    for ib in 0..16 {
        b[192 + ib] = nearest_int(iscale * scales[ib]).min(127) as i8 as u8;
    }
    let d = f16_at(b, 208);
    let sc: [u8; 16] = b[192..208].try_into().unwrap();
    requantize_symmetric(x, &mut levels, 32, |j| d * (sc[j] as i8) as f32);
    let (ql, qh) = b[..192].split_at_mut(128);
    for (half, (ql, qh)) in ql
        .chunks_exact_mut(64)
        .zip(qh.chunks_exact_mut(32))
        .enumerate()
    {
        let l6 = |i: usize| levels[128 * half + i] as u8;
        for l in 0..32 {
            ql[l] = (l6(l) & 0x0f) | ((l6(l + 64) & 0x0f) << 4);
            ql[l + 32] = (l6(l + 32) & 0x0f) | ((l6(l + 96) & 0x0f) << 4);
            qh[l] = (l6(l) >> 4)
                | ((l6(l + 32) >> 4) << 2)
                | ((l6(l + 64) >> 4) << 4)
                | ((l6(l + 96) >> 4) << 6);
        }
    }
}

/// `Q8_K`: `d = max / −127` (f32) with `max` the signed element of largest magnitude,
/// `q = min(127, round(x / d))`, plus the sums of each 16 codes.
pub(super) fn encode_q8_k(x: &[f32], b: &mut [u8]) {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in &x[..QK_K] {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        b[..292].fill(0);
        return;
    }
    let iscale = -127.0 / max;
    let mut qs = [0i8; QK_K];
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = nearest_int(iscale * v).min(127) as i8;
    }
    b[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
    for (o, &q) in b[4..260].iter_mut().zip(&qs) {
        *o = q as u8;
    }
    for (j, o) in b[260..292].chunks_exact_mut(2).enumerate() {
        let sum: i32 = qs[16 * j..16 * j + 16].iter().map(|&q| q as i32).sum();
        o.copy_from_slice(&(sum as i16).to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q3_k_scale_packing_round_trips() {
        let mut s = [0u8; 12];
        pack_scales_q3(|j| (j as u8 * 7 + 3) % 64, &mut s);
        for j in 0..16 {
            assert_eq!(scale_q3(j, &s), ((j as i32 * 7 + 3) % 64) - 32, "scale {j}");
        }
    }

    #[test]
    fn k4_scale_packing_round_trips() {
        let ls: [u8; 8] = std::array::from_fn(|j| (j as u8 * 9 + 1) % 64);
        let lm: [u8; 8] = std::array::from_fn(|j| 63 - (j as u8 * 5) % 64);
        let mut q = [0u8; 12];
        pack_scale_min_k4(&ls, &lm, &mut q);
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &q), (ls[j], lm[j]), "sub-block {j}");
        }
    }
}
