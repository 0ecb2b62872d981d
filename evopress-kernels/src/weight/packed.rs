//! Packed (quantized) weights: bit-packed integer codes with per-(row, group) f16 scales and
//! zeros, multiplied straight from this form by [`matmul_wt`](crate::cpu::matmul::matmul_wt).
//!
//! Layout with `b` bits per code (`b` in 2..=8):
//!
//! ```text
//!   codes:  a row is cut into chunks of 32 codes; a chunk fills exactly b u32 words (32·b bits)
//!           and row r occupies words [r·wpr, (r+1)·wpr), wpr = ceil(cols/32)·b
//!   chunk:  the b bits of each code are split into power-of-two slices, the binary digits of
//!           b, low bits first (3 = 1+2, 5 = 1+4, 6 = 2+4, 7 = 1+2+4; 2, 4, 8 are one slice).
//!           The slice of width p that holds code bits [o, o+p) (o = b mod p) takes chunk words
//!           [o, o+p); code i of the chunk sits in word o + i·p/32 at bits (i·p mod 32)..+p.
//!   scales, zeros: [rows, n_groups] f16, group g = stored positions [g·gs, (g+1)·gs)
//!           (the last group may be partial); value = scale · (q − zero)
//!   perm:   stored position k holds original column perm[k] (act-order); None = identity
//! ```
//!
//! Why slices: with a plain bitstream, 3-, 5-, 6- and 7-bit codes straddle words and each lane
//! needs its own gather; with power-of-two slices no field crosses a word, so decoding a word is
//! one broadcast, one shift by a constant vector and one mask, for every width. Every bit is
//! used: the only waste is padding the last chunk of a row (none when `cols` is a multiple of
//! 32, as every dimension of the target models is).
//!
//! The builder (GPTQ / RTN packing codes into this layout) lives in `evopress-quant`; this
//! module owns the format as the matmul reads it: validation and row decoding.

use super::buf::Buf;
use super::WeightError;
use crate::cpu::simd::f16_to_f32;
use half::f16;

/// Codes per decoding chunk: 32 codes of `b` bits are exactly `b` u32 words.
pub const CHUNK: usize = 32;

/// The stored parts of a packed `[rows, cols]` matrix, as a store reads them back (each table
/// owned or a region of a mapped file). Checked by [`PackedMatrix::new`].
#[derive(Clone, Debug)]
pub struct PackedParts {
    pub rows: usize,
    pub cols: usize,
    /// Bits per code, 2..=8.
    pub bits: u8,
    pub group_size: usize,
    /// `rows · words_per_row(cols, bits)` words.
    pub codes: Buf<u32>,
    /// `rows · ceil(cols / group_size)` each.
    pub scales: Buf<f16>,
    pub zeros: Buf<f16>,
    /// `cols` entries, a permutation of `0..cols`, or `None`.
    pub perm: Option<Buf<u32>>,
}

/// A validated packed matrix (see the module docs for the layout).
#[derive(Clone, Debug)]
pub struct PackedMatrix {
    parts: PackedParts,
}

impl PackedMatrix {
    /// Checks that the parts agree with each other: bit width, group size, table lengths, and
    /// that `perm` is a permutation.
    pub fn new(parts: PackedParts) -> Result<Self, WeightError> {
        let p = &parts;
        let bad = |msg: String| Err(WeightError::Layout(format!("packed: {msg}")));
        if !(2..=8).contains(&p.bits) {
            return bad(format!("bit width {} is not in 2..=8", p.bits));
        }
        if p.group_size == 0 {
            return bad("group size 0".into());
        }
        let wpr = words_per_row(p.cols, p.bits);
        if p.codes.len() != p.rows * wpr {
            return bad(format!(
                "{} code words, a [{}, {}] matrix at {} bits needs {}",
                p.codes.len(),
                p.rows,
                p.cols,
                p.bits,
                p.rows * wpr
            ));
        }
        let ng = p.cols.div_ceil(p.group_size);
        for (what, t) in [("scales", &p.scales), ("zeros", &p.zeros)] {
            if t.len() != p.rows * ng {
                return bad(format!("{} {what}, [{}, {ng}] expected", t.len(), p.rows));
            }
        }
        if let Some(perm) = &p.perm {
            let perm = perm.as_slice();
            if perm.len() != p.cols {
                return bad(format!(
                    "permutation of {} for {} columns",
                    perm.len(),
                    p.cols
                ));
            }
            let mut seen = vec![false; p.cols];
            for &k in perm {
                match seen.get_mut(k as usize) {
                    Some(s) if !*s => *s = true,
                    _ => return bad(format!("perm is not a permutation (entry {k})")),
                }
            }
        }
        Ok(PackedMatrix { parts })
    }

    pub fn parts(&self) -> &PackedParts {
        &self.parts
    }
    pub fn rows(&self) -> usize {
        self.parts.rows
    }
    pub fn cols(&self) -> usize {
        self.parts.cols
    }
    pub fn bits(&self) -> u8 {
        self.parts.bits
    }
    pub fn group_size(&self) -> usize {
        self.parts.group_size
    }
    pub fn n_groups(&self) -> usize {
        self.parts.cols.div_ceil(self.parts.group_size)
    }
    pub fn words_per_row(&self) -> usize {
        words_per_row(self.parts.cols, self.parts.bits)
    }
    pub fn perm(&self) -> Option<&[u32]> {
        self.parts.perm.as_ref().map(Buf::as_slice)
    }

    /// Storage bytes of rows `[first, first + count)`: their codes, scales and zeros, plus the
    /// whole permutation.
    pub fn bytes_of_rows(&self, count: usize) -> usize {
        count * (4 * self.words_per_row() + 2 * 2 * self.n_groups())
            + self.parts.perm.as_ref().map_or(0, Buf::bytes)
    }

    /// Borrowed tables for a hot loop (one slice cast per call, not per row).
    pub(crate) fn tables(&self) -> PackedTables<'_> {
        PackedTables {
            codes: self.parts.codes.as_slice(),
            scales: self.parts.scales.as_slice(),
            zeros: self.parts.zeros.as_slice(),
            bits: self.parts.bits,
            group_size: self.parts.group_size,
            cols: self.parts.cols,
            wpr: self.words_per_row(),
            n_groups: self.n_groups(),
        }
    }

    /// Dequantizes row `r` into `out[cols]` in *stored* column order (permuted under act-order).
    pub fn dequantize_row_into(&self, r: usize, out: &mut [f32]) {
        self.tables().row_into(r, out)
    }
}

/// [`PackedMatrix`]'s tables as slices.
#[derive(Clone, Copy)]
pub(crate) struct PackedTables<'a> {
    codes: &'a [u32],
    scales: &'a [f16],
    zeros: &'a [f16],
    bits: u8,
    group_size: usize,
    cols: usize,
    wpr: usize,
    n_groups: usize,
}

impl PackedTables<'_> {
    /// Row `r`, stored order, into `out[cols]`.
    #[inline(always)]
    pub(crate) fn row_into(&self, r: usize, out: &mut [f32]) {
        let g = r * self.n_groups..(r + 1) * self.n_groups;
        dequantize_row(
            &self.codes[r * self.wpr..(r + 1) * self.wpr],
            self.bits,
            self.group_size,
            &self.scales[g.clone()],
            &self.zeros[g],
            out,
        )
    }

    /// Rows `first..first + out.len()/cols`, stored order, into `out` (row-major).
    #[inline(always)]
    pub(crate) fn rows_into(&self, first: usize, out: &mut [f32]) {
        for (i, row) in out.chunks_exact_mut(self.cols).enumerate() {
            self.row_into(first + i, row);
        }
    }
}

/// u32 words holding one row of `cols` codes of `bits` bits (whole chunks of 32 codes).
pub fn words_per_row(cols: usize, bits: u8) -> usize {
    cols.div_ceil(CHUNK) * bits as usize
}

/// The power-of-two slices of a `bits`-wide code as `(width p, offset o)`: code bits
/// `[o, o+p)`, stored in chunk words `[o, o+p)`. (The decoder spells these out per width;
/// packers use this.)
pub fn slices(bits: usize) -> impl Iterator<Item = (usize, usize)> {
    [1, 2, 4, 8]
        .into_iter()
        .filter(move |p| bits & p != 0)
        .map(move |p| (p, bits & (p - 1)))
}

/// One row: codes from `words` (`words_per_row(out.len(), bits)` of them), then
/// `out[k] = scale[g] · (q − zero[g])` with `g = k / group_size`. Bit for bit
/// `(q − zero) · scale` in f32, as the quantizer computes it.
#[inline(always)]
pub fn dequantize_row(
    words: &[u32],
    bits: u8,
    group_size: usize,
    scales: &[f16],
    zeros: &[f16],
    out: &mut [f32],
) {
    unpack_row(words, bits, out);
    for ((x, &s), &z) in out.chunks_mut(group_size).zip(scales).zip(zeros) {
        let (s, z) = (f16_to_f32(s), f16_to_f32(z));
        for v in x {
            *v = (*v - z) * s;
        }
    }
}

/// Decodes one row's codes to f32 (`out.len()` codes), dispatching on the width once per row.
/// On AVX-512 machines the whole chunks go through [`avx512::unpack_row`] (the portable loop
/// below does not vectorize its per-code word selection and costs about 1 ns per weight, which
/// made a 4-bit forward 12 % slower than f32).
#[inline(always)]
pub fn unpack_row(words: &[u32], bits: u8, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if matches!(
        crate::cpu::simd::simd_level(),
        crate::cpu::simd::SimdLevel::Avx512
    ) {
        let full = out.len() / CHUNK * CHUNK;
        let b = bits as usize;
        // SAFETY: AVX-512F was detected at run time; `full` codes fill `full / 32 * b` words.
        unsafe { avx512::unpack_row(&words[..full / CHUNK * b], b, &mut out[..full]) };
        if full == out.len() {
            return;
        }
    }
    unpack_row_portable(words, bits, out)
}

/// The plain decoder: every width, any row length (the AVX-512 path's tail and reference).
#[inline(always)]
fn unpack_row_portable(words: &[u32], bits: u8, out: &mut [f32]) {
    match bits {
        2 => unpack_row_b::<2>(words, out),
        3 => unpack_row_b::<3>(words, out),
        4 => unpack_row_b::<4>(words, out),
        5 => unpack_row_b::<5>(words, out),
        6 => unpack_row_b::<6>(words, out),
        7 => unpack_row_b::<7>(words, out),
        8 => unpack_row_b::<8>(words, out),
        _ => unreachable!("bit width {bits} is validated by PackedMatrix::new"),
    }
}

#[inline(always)]
fn unpack_row_b<const B: usize>(words: &[u32], out: &mut [f32]) {
    let mut chunks = words.chunks_exact(B);
    for (w, o) in (&mut chunks).zip(out.chunks_exact_mut(CHUNK)) {
        unpack_chunk::<B>(w.try_into().unwrap(), o.try_into().unwrap());
    }
    // A last, partial chunk (its padding codes decode to 0 and are dropped).
    let rest = out.len() % CHUNK;
    if rest > 0 {
        let last = &words[words.len() - B..];
        let mut o = [0f32; CHUNK];
        unpack_chunk::<B>(last.try_into().unwrap(), &mut o);
        let n = out.len();
        out[n - rest..].copy_from_slice(&o[..rest]);
    }
}

/// 32 codes from the `B` words of a chunk: the slices of `B`, each a const-width pass.
/// (Codes are < 256, so the signed conversion, which every SIMD level has, is exact.)
#[inline(always)]
fn unpack_chunk<const B: usize>(w: &[u32; B], out: &mut [f32; CHUNK]) {
    let mut codes = [0u32; CHUNK];
    if B & 1 != 0 {
        add_slice::<1>(&w[..1], 0, &mut codes);
    }
    if B & 2 != 0 {
        add_slice::<2>(&w[B & 1..(B & 1) + 2], B & 1, &mut codes);
    }
    if B & 4 != 0 {
        add_slice::<4>(&w[B & 3..(B & 3) + 4], B & 3, &mut codes);
    }
    if B & 8 != 0 {
        add_slice::<8>(&w[..8], 0, &mut codes);
    }
    for (o, c) in out.iter_mut().zip(codes) {
        *o = c as i32 as f32;
    }
}

/// ORs the `P`-bit slice held in `w` (`P` words) into code bits `[o, o+P)`. Written over the
/// 32 codes (the SIMD lanes) so that, with `P` a constant, a code's word is a fixed shuffle and
/// its shift a constant vector.
#[inline(always)]
fn add_slice<const P: usize>(w: &[u32], o: usize, codes: &mut [u32; CHUNK]) {
    let per = 32 / P; // codes per word
    let mask = (1u32 << P) - 1;
    for (i, c) in codes.iter_mut().enumerate() {
        *c |= ((w[i / per] >> ((i % per) * P)) & mask) << o;
    }
}

/// Whole chunks decoded 16 codes per vector: for each power-of-two slice of the width, the
/// slice's words are loaded once, each lane picks its code's word (a permute), shifts it to
/// the code's bit offset, masks and ORs the bits into place; then one int-to-float convert.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{slices, CHUNK};
    use std::arch::x86_64::*;

    /// `out.len()` is a multiple of 32 and `words` holds exactly its chunks.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn unpack_row(words: &[u32], bits: usize, out: &mut [f32]) {
        // Per slice and half-chunk: which word each lane reads and by how much it shifts.
        let mut plan: Vec<(usize, __m512i, __m512i, __m512i, __m512i, __m512i, __m512i)> =
            Vec::with_capacity(4);
        for (p, o) in slices(bits) {
            let per = 32 / p;
            let lane = |half: usize, f: &dyn Fn(usize) -> i32| {
                let v: [i32; 16] = std::array::from_fn(|i| f(i + 16 * half));
                _mm512_loadu_si512(v.as_ptr().cast())
            };
            plan.push((
                o,
                lane(0, &|i| (i / per) as i32),
                lane(1, &|i| (i / per) as i32),
                lane(0, &|i| ((i % per) * p) as i32),
                lane(1, &|i| ((i % per) * p) as i32),
                _mm512_set1_epi32(((1u32 << p) - 1) as i32),
                _mm512_set1_epi32(o as i32),
            ));
        }
        for (w, o) in words.chunks_exact(bits).zip(out.chunks_exact_mut(CHUNK)) {
            let (mut lo, mut hi) = (_mm512_setzero_si512(), _mm512_setzero_si512());
            for &(first, idx_lo, idx_hi, sh_lo, sh_hi, mask, up) in &plan {
                let n = bits - first; // words from this slice's first to the chunk's end
                let load_mask: __mmask16 = if n >= 16 { !0 } else { (1u16 << n) - 1 };
                let v = _mm512_maskz_loadu_epi32(load_mask, w.as_ptr().add(first).cast());
                let pick = |idx, sh| {
                    let x = _mm512_srlv_epi32(_mm512_permutexvar_epi32(idx, v), sh);
                    _mm512_sllv_epi32(_mm512_and_si512(x, mask), up)
                };
                lo = _mm512_or_si512(lo, pick(idx_lo, sh_lo));
                hi = _mm512_or_si512(hi, pick(idx_hi, sh_hi));
            }
            _mm512_storeu_ps(o.as_mut_ptr(), _mm512_cvtepi32_ps(lo));
            _mm512_storeu_ps(o.as_mut_ptr().add(16), _mm512_cvtepi32_ps(hi));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avx512_decoder_equals_the_portable_one() {
        for bits in 2u8..=8 {
            let cols = 32 * 5 + 7;
            let words: Vec<u32> = (0..words_per_row(cols, bits))
                .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(7))
                .collect();
            let (mut fast, mut plain) = (vec![0f32; cols], vec![0f32; cols]);
            unpack_row(&words, bits, &mut fast);
            unpack_row_portable(&words, bits, &mut plain);
            assert_eq!(fast, plain, "{bits} bits");
        }
    }

    #[test]
    fn only_the_last_chunk_of_a_row_is_padded() {
        // 576 · 3 = 1728 bits = 54 words exactly; 100 codes pad to 128 -> 12 words.
        assert_eq!(words_per_row(576, 3), 54);
        assert_eq!(words_per_row(1536, 3), 144);
        assert_eq!(words_per_row(100, 3), 12);
        assert_eq!(words_per_row(100, 8), 32);
    }

    #[test]
    fn slices_are_the_binary_digits() {
        assert_eq!(slices(7).collect::<Vec<_>>(), [(1, 0), (2, 1), (4, 3)]);
        assert_eq!(slices(6).collect::<Vec<_>>(), [(2, 0), (4, 2)]);
        assert_eq!(slices(8).collect::<Vec<_>>(), [(8, 0)]);
    }
}
