//! The 32-element block formats: `Q4_0`, `Q4_1`, `Q5_0`, `Q5_1`, `Q8_0` (layouts in
//! `docs/ggml-formats.md`). Decoding follows llama.cpp's `dequantize_row_*` and encoding its
//! `quantize_row_*_ref` (no importance) and `quantize_row_*_impl` (with importance),
//! operation for operation (llama.cpp, MIT licence), so the bytes match llama.cpp's.

// Indexed loops mirror llama.cpp's, so the port can be checked against it line by line.
#![allow(clippy::needless_range_loop)]

use super::fit::{make_qkx_quants, make_qx_quants, AffineSearch, AffineWeights};
use crate::cpu::simd::f16_to_f32;
use half::f16;

/// Elements per block.
pub(super) const QK: usize = 32;

#[inline(always)]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_to_f32(f16::from_le_bytes([b[at], b[at + 1]]))
}

#[inline(always)]
fn put_f16(b: &mut [u8], at: usize, x: f32) {
    b[at..at + 2].copy_from_slice(&f16::from_f32(x).to_le_bytes());
}

/// Byte `j` of the 16 nibble bytes: low nibble element `j`, high nibble element `j + 16`.
#[inline(always)]
fn pack_nibbles(qs: &mut [u8], levels: impl Fn(usize) -> u8) {
    for j in 0..QK / 2 {
        qs[j] = (levels(j) & 0x0f) | ((levels(j + QK / 2) & 0x0f) << 4);
    }
}

/// The fifth bits of the 32 levels as the little-endian `qh` word: bit `j` is element `j`.
#[inline(always)]
fn fifth_bits(levels: impl Fn(usize) -> u8) -> [u8; 4] {
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        qh |= ((levels(j) as u32 & 0x10) >> 4) << j;
        qh |= ((levels(j + QK / 2) as u32 & 0x10) >> 4) << (j + QK / 2);
    }
    qh.to_le_bytes()
}

// ---------------------------------------------------------------- decoding

/// `Q4_0` (18 bytes): f16 `d`, 16 nibble bytes; `x = (q − 8) · d`.
#[inline(always)]
pub(super) fn decode_q4_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let (lo, hi) = out.split_at_mut(QK / 2);
    for (j, &q) in b[2..2 + QK / 2].iter().enumerate() {
        lo[j] = ((q & 0x0f) as i32 - 8) as f32 * d;
        hi[j] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// `Q4_1` (20 bytes): f16 `d`, f16 `m`, 16 nibble bytes; `x = q · d + m`.
#[inline(always)]
pub(super) fn decode_q4_1(b: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let (lo, hi) = out.split_at_mut(QK / 2);
    for (j, &q) in b[4..4 + QK / 2].iter().enumerate() {
        lo[j] = (q & 0x0f) as f32 * d + m;
        hi[j] = (q >> 4) as f32 * d + m;
    }
}

/// `Q5_0` (22 bytes): f16 `d`, u32 `qh` of fifth bits, 16 nibble bytes; `x = (q − 16) · d`.
#[inline(always)]
pub(super) fn decode_q5_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let (lo, hi) = out.split_at_mut(QK / 2);
    for (j, &q) in b[6..6 + QK / 2].iter().enumerate() {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        lo[j] = (((q & 0x0f) as u32 | h0) as i32 - 16) as f32 * d;
        hi[j] = (((q >> 4) as u32 | h1) as i32 - 16) as f32 * d;
    }
}

/// `Q5_1` (24 bytes): f16 `d`, f16 `m`, u32 `qh`, 16 nibble bytes; `x = q · d + m`.
#[inline(always)]
pub(super) fn decode_q5_1(b: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let (lo, hi) = out.split_at_mut(QK / 2);
    for (j, &q) in b[8..8 + QK / 2].iter().enumerate() {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        lo[j] = ((q & 0x0f) as u32 | h0) as f32 * d + m;
        hi[j] = ((q >> 4) as u32 | h1) as f32 * d + m;
    }
}

/// `Q8_0` (34 bytes): f16 `d`, 32 signed bytes; `x = q · d`.
#[inline(always)]
pub(super) fn decode_q8_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for (o, &q) in out.iter_mut().zip(&b[2..2 + QK]) {
        *o = (q as i8) as f32 * d;
    }
}

// ---------------------------------------------------------------- encoding

/// The element of largest magnitude (the first one on ties), sign kept.
fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// C's `MIN(FLT_MAX...)` scan: the smallest and largest element.
fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// `d = max / −8` with `max` the signed element of largest magnitude; `q = min(15, trunc(x/d + 8.5))`.
pub(super) fn encode_q4_0(x: &[f32], b: &mut [u8]) {
    let d = signed_absmax(x) / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(b, 0, d);
    pack_nibbles(&mut b[2..18], |j| ((x[j] * id + 8.5) as i8).min(15) as u8);
}

/// `d = (max − min) / 15`, `m = min`; `q = min(15, trunc((x − min)/d + 0.5))`.
pub(super) fn encode_q4_1(x: &[f32], b: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(b, 0, d);
    put_f16(b, 2, min);
    pack_nibbles(&mut b[4..20], |j| {
        (((x[j] - min) * id + 0.5) as i8).min(15) as u8
    });
}

/// `d = max / −16`; `q = min(31, trunc(x/d + 16.5))`.
pub(super) fn encode_q5_0(x: &[f32], b: &mut [u8]) {
    let d = signed_absmax(x) / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(b, 0, d);
    let q = |j: usize| ((x[j] * id + 16.5) as i8).min(31) as u8;
    b[2..6].copy_from_slice(&fifth_bits(q));
    pack_nibbles(&mut b[6..22], q);
}

/// `d = (max − min) / 31`, `m = min`; `q = trunc((x − min)/d + 0.5)`.
pub(super) fn encode_q5_1(x: &[f32], b: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(b, 0, d);
    put_f16(b, 2, min);
    let q = |j: usize| ((x[j] - min) * id + 0.5) as u8;
    b[4..8].copy_from_slice(&fifth_bits(q));
    pack_nibbles(&mut b[8..24], q);
}

/// `d = absmax / 127`; `q = round(x / d)` (half away from zero).
pub(super) fn encode_q8_0(x: &[f32], b: &mut [u8]) {
    let amax = x
        .iter()
        .fold(0f32, |a, &v| if a > v.abs() { a } else { v.abs() });
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(b, 0, d);
    for (o, &v) in b[2..2 + QK].iter_mut().zip(x) {
        *o = (v * id).round() as i8 as u8;
    }
}

/// The importance-weighted encoders of one row (`quantize_row_q*_impl`): each block's weights
/// are `importance[j] · √(σ² + x_j²)`, `σ²` the row's mean square.
pub(super) struct Weighted<'a> {
    x: &'a [f32],
    importance: &'a [f32],
    sigma2: f32,
}

impl<'a> Weighted<'a> {
    pub fn new(x: &'a [f32], importance: &'a [f32]) -> Self {
        let mut sum_x2 = 0f32;
        for &v in x {
            sum_x2 += v * v;
        }
        Weighted {
            x,
            importance,
            sigma2: sum_x2 / x.len() as f32,
        }
    }

    /// Block `ib`'s values and weights.
    fn block(&self, ib: usize) -> (&'a [f32], [f32; QK]) {
        let xb = &self.x[ib * QK..(ib + 1) * QK];
        let qw = &self.importance[ib * QK..(ib + 1) * QK];
        let w = std::array::from_fn(|j| qw[j] * (self.sigma2 + xb[j] * xb[j]).sqrt());
        (xb, w)
    }

    /// Symmetric formats (`Q4_0`: `nmax` 8, `Q5_0`: 16): the weighted [`make_qx_quants`].
    fn symmetric(&self, ib: usize, nmax: i32) -> (f32, [u8; QK]) {
        let (xb, w) = self.block(ib);
        let mut l = [0i8; QK];
        let d = make_qx_quants(nmax, xb, &mut l, 1, Some(&w));
        (d, l.map(|v| v as u8))
    }

    /// Affine formats (`Q4_1`: `nmax` 15, `Q5_1`: 31): the weighted `make_qkx3_quants`.
    fn affine(&self, ib: usize, nmax: i32) -> (f32, f32, [u8; QK]) {
        let (xb, w) = self.block(ib);
        let (mut l, mut aux, mut min) = ([0u8; QK], [0u8; QK], 0f32);
        let search = AffineSearch {
            rmin: -0.9,
            rdelta: 0.05,
            nstep: 36,
            use_mad: false,
        };
        let weights = AffineWeights::Qkx3(Some(&w));
        let d = make_qkx_quants(nmax, xb, weights, &mut l, &mut min, &mut aux, search);
        (d, -min, l)
    }

    pub fn q4_0(&self, ib: usize, b: &mut [u8]) {
        let (d, l) = self.symmetric(ib, 8);
        put_f16(b, 0, d);
        pack_nibbles(&mut b[2..18], |j| l[j]);
    }

    pub fn q4_1(&self, ib: usize, b: &mut [u8]) {
        let (d, m, l) = self.affine(ib, 15);
        put_f16(b, 0, d);
        put_f16(b, 2, m);
        pack_nibbles(&mut b[4..20], |j| l[j]);
    }

    pub fn q5_0(&self, ib: usize, b: &mut [u8]) {
        let (d, l) = self.symmetric(ib, 16);
        put_f16(b, 0, d);
        b[2..6].copy_from_slice(&fifth_bits(|j| l[j]));
        pack_nibbles(&mut b[6..22], |j| l[j]);
    }

    pub fn q5_1(&self, ib: usize, b: &mut [u8]) {
        let (d, m, l) = self.affine(ib, 31);
        put_f16(b, 0, d);
        put_f16(b, 2, m);
        b[4..8].copy_from_slice(&fifth_bits(|j| l[j]));
        pack_nibbles(&mut b[8..24], |j| l[j]);
    }
}
