//! Bit-packed storage of quantized weights.
//!
//! Layout of a [`PackedMatrix`] with `b` bits per code:
//!
//! ```text
//!   codes:  a row is cut into chunks of 32 codes; a chunk fills exactly b u32 words (32·b bits)
//!           and row r occupies words [r·wpr, (r+1)·wpr), wpr = ceil(cols/32)·b
//!   chunk:  the b bits of each code are split into power-of-two slices, the binary digits of
//!           b, low bits first (3 = 1+2, 5 = 1+4, 6 = 2+4, 7 = 1+2+4; 2, 4, 8 are one slice).
//!           The slice of width p that holds code bits [o, o+p) (o = b mod p) takes chunk words
//!           [o, o+p); code i of the chunk sits in word o + i·p/32 at bits (i·p mod 32)..+p.
//!   scales, zeros: [rows, n_groups] f16, group g = stored positions [g·gs, (g+1)·gs)
//!   perm:   stored position k holds original column perm[k] (act-order); None = identity
//! ```
//!
//! Why slices: with a plain bitstream, 3-, 5-, 6- and 7-bit codes straddle words and each lane
//! needs its own gather; with power-of-two slices no field crosses a word, so decoding a word is
//! one broadcast, one shift by a constant vector and one mask, for every width. Every bit is
//! used: the only waste is padding the last chunk of a row (none when `cols` is a multiple of
//! 32, as every dimension of the target models is).
//!
//! Compared with the original database, which stores one dequantized fp16 `[out, in]` tensor per
//! bit width, a packed matrix costs `b/16 + 2/gs` of it (plus 2/rows for a permutation):
//! 0.28x at 4 bits and group 64, 0.16x at 2 bits.

use half::f16;

use crate::{GroupParams, QuantSpec};

/// Codes per decoding chunk: 32 codes of `b` bits are exactly `b` u32 words.
const CHUNK: usize = 32;

/// A quantized `[rows, cols]` matrix: packed codes plus per-(row, group) f16 scales and zeros.
/// See the module docs for the layout.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedMatrix {
    pub rows: usize,
    pub cols: usize,
    pub bits: u8,
    pub group_size: usize,
    pub codes: Vec<u32>,
    pub scales: Vec<f16>,
    pub zeros: Vec<f16>,
    pub perm: Option<Vec<u32>>,
}

impl PackedMatrix {
    /// Packs `codes` (`[rows, cols]`, one code per byte, stored order) with their grids
    /// (`[rows, n_groups]`, f16-exact as [`GroupParams::from_range`] makes them).
    ///
    /// Panics if the slice lengths do not match the shape; callers are this crate's quantizers.
    pub fn from_codes(
        rows: usize,
        cols: usize,
        spec: &QuantSpec,
        codes: &[u8],
        params: &[GroupParams],
        perm: Option<Vec<u32>>,
    ) -> Self {
        let bits = spec.bits as usize;
        let n_groups = spec.n_groups(cols);
        assert_eq!(codes.len(), rows * cols, "codes shape");
        assert_eq!(params.len(), rows * n_groups, "group params shape");
        if let Some(p) = &perm {
            assert_eq!(p.len(), cols, "permutation length");
        }
        let wpr = words_per_row(cols, spec.bits);
        let mut words = vec![0u32; rows * wpr];
        if cols > 0 {
            for (row_codes, row_words) in codes.chunks_exact(cols).zip(words.chunks_exact_mut(wpr))
            {
                for (chunk_codes, chunk) in row_codes
                    .chunks(CHUNK)
                    .zip(row_words.chunks_exact_mut(bits))
                {
                    for (i, &q) in chunk_codes.iter().enumerate() {
                        debug_assert!(u32::from(q) <= spec.maxq(), "code {q} exceeds {bits} bits");
                        for (p, o) in slices(bits) {
                            let field = (u32::from(q) >> o) & ((1 << p) - 1);
                            chunk[o + i * p / 32] |= field << (i * p % 32);
                        }
                    }
                }
            }
        }
        PackedMatrix {
            rows,
            cols,
            bits: spec.bits,
            group_size: spec.group_size,
            codes: words,
            scales: params.iter().map(|p| f16::from_f32(p.scale)).collect(),
            zeros: params.iter().map(|p| f16::from_f32(p.zero)).collect(),
            perm,
        }
    }

    pub fn words_per_row(&self) -> usize {
        words_per_row(self.cols, self.bits)
    }

    pub fn n_groups(&self) -> usize {
        self.cols.div_ceil(self.group_size)
    }

    /// The grid of row `r`, group `g`.
    pub fn group_params(&self, r: usize, g: usize) -> GroupParams {
        let i = r * self.n_groups() + g;
        GroupParams {
            scale: self.scales[i].to_f32(),
            zero: self.zeros[i].to_f32(),
        }
    }

    /// Storage in bytes: codes, scales, zeros and the permutation.
    pub fn bytes(&self) -> usize {
        4 * self.codes.len()
            + 2 * (self.scales.len() + self.zeros.len())
            + self.perm.as_ref().map_or(0, |p| 4 * p.len())
    }

    /// What the original database spends on the same matrix: one dequantized fp16 tensor.
    pub fn dense_f16_bytes(&self) -> usize {
        2 * self.rows * self.cols
    }

    /// All codes, `[rows, cols]` in stored order (for inspection and tests; the hot paths decode
    /// row by row).
    pub fn unpack_codes(&self) -> Vec<u8> {
        let mut row = vec![0f32; self.cols];
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            unpack_row(self.row_words(r), self.bits, &mut row);
            out.extend(row.iter().map(|&q| q as u8));
        }
        out
    }

    /// Dequantizes row `r` into `out[cols]`, in stored column order (permuted under act-order).
    /// This is the inner loop of the quantized matmul.
    #[inline(always)]
    pub fn dequantize_row_into(&self, r: usize, out: &mut [f32]) {
        assert_eq!(out.len(), self.cols);
        unpack_row(self.row_words(r), self.bits, out);
        let n_groups = self.n_groups();
        let scales = &self.scales[r * n_groups..(r + 1) * n_groups];
        let zeros = &self.zeros[r * n_groups..(r + 1) * n_groups];
        for ((x, s), z) in out.chunks_mut(self.group_size).zip(scales).zip(zeros) {
            let (s, z) = (s.to_f32(), z.to_f32());
            for v in x {
                *v = (*v - z) * s; // = GroupParams::dequantize, bit for bit
            }
        }
    }

    /// The dense `[rows, cols]` matrix in original column order.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        let mut row = vec![0f32; self.cols];
        for r in 0..self.rows {
            self.dequantize_row_into(r, &mut row);
            let dst = &mut out[r * self.cols..(r + 1) * self.cols];
            match &self.perm {
                Some(perm) => {
                    for (&p, &v) in perm.iter().zip(&row) {
                        dst[p as usize] = v;
                    }
                }
                None => dst.copy_from_slice(&row),
            }
        }
        out
    }

    fn row_words(&self, r: usize) -> &[u32] {
        let wpr = self.words_per_row();
        &self.codes[r * wpr..(r + 1) * wpr]
    }
}

/// u32 words holding one row of `cols` codes of `bits` bits (whole chunks of 32 codes).
pub fn words_per_row(cols: usize, bits: u8) -> usize {
    cols.div_ceil(CHUNK) * bits as usize
}

/// The power-of-two slices of a `bits`-wide code as `(width p, offset o)`: code bits
/// `[o, o+p)`, stored in chunk words `[o, o+p)`. (The decoder spells these out per width.)
fn slices(bits: usize) -> impl Iterator<Item = (usize, usize)> {
    [1, 2, 4, 8]
        .into_iter()
        .filter(move |p| bits & p != 0)
        .map(move |p| (p, bits & (p - 1)))
}

/// Decodes one row's codes to f32 (`out.len()` codes), dispatching on the width once per row.
#[inline(always)]
fn unpack_row(words: &[u32], bits: u8, out: &mut [f32]) {
    match bits {
        2 => unpack_row_b::<2>(words, out),
        3 => unpack_row_b::<3>(words, out),
        4 => unpack_row_b::<4>(words, out),
        5 => unpack_row_b::<5>(words, out),
        6 => unpack_row_b::<6>(words, out),
        7 => unpack_row_b::<7>(words, out),
        8 => unpack_row_b::<8>(words, out),
        _ => unreachable!("bit width {bits} is validated at quantization"),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An independent, bit-by-bit reader of the layout described in the module docs.
    fn naive_code(row: &[u32], k: usize, bits: usize) -> u8 {
        let (chunk, i) = (k / 32, k % 32);
        let mut q = 0u8;
        let mut o = 0; // first code bit of the current slice = its first word in the chunk
        for p in [1, 2, 4, 8] {
            if bits & p == 0 {
                continue;
            }
            for b in 0..p {
                let word = row[chunk * bits + o + i * p / 32];
                let bit = (word >> (i * p % 32 + b)) & 1;
                q |= (bit as u8) << (o + b);
            }
            o += p;
        }
        q
    }

    fn pattern(rows: usize, cols: usize, bits: u8) -> Vec<u8> {
        (0..rows * cols)
            .map(|i| ((i * 2654435761usize) >> 7) as u8 & ((1u16 << bits) - 1) as u8)
            .collect()
    }

    fn unit_params(rows: usize, cols: usize, gs: usize) -> Vec<GroupParams> {
        vec![
            GroupParams {
                scale: 1.0,
                zero: 0.0
            };
            rows * cols.div_ceil(gs)
        ]
    }

    #[test]
    fn round_trip_every_width_and_ragged_widths() {
        for bits in 2..=8u8 {
            for cols in [1, 5, 31, 32, 33, 64, 100, 576] {
                let rows = 3;
                let spec = QuantSpec::new(bits, 64);
                let codes = pattern(rows, cols, bits);
                let p = PackedMatrix::from_codes(
                    rows,
                    cols,
                    &spec,
                    &codes,
                    &unit_params(rows, cols, 64),
                    None,
                );
                assert_eq!(p.codes.len(), rows * cols.div_ceil(32) * bits as usize);
                assert_eq!(p.unpack_codes(), codes, "bits {bits} cols {cols}");
                let wpr = p.words_per_row();
                for r in 0..rows {
                    for k in 0..cols {
                        let got = naive_code(&p.codes[r * wpr..(r + 1) * wpr], k, bits as usize);
                        assert_eq!(got, codes[r * cols + k]);
                    }
                }
            }
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
    fn dequantize_applies_group_grids_and_undoes_the_permutation() {
        let (rows, cols, gs) = (2, 5, 2); // groups {0,1} {2,3} {4}
        let spec = QuantSpec::new(3, gs);
        let codes: Vec<u8> = vec![0, 1, 2, 3, 4, 7, 6, 5, 4, 3];
        let params: Vec<GroupParams> = [(1.0, 0.0), (0.5, 2.0), (2.0, 4.0)]
            .iter()
            .cycle()
            .take(rows * 3)
            .map(|&(scale, zero)| GroupParams { scale, zero })
            .collect();
        let perm = vec![4, 0, 3, 1, 2];
        let p = PackedMatrix::from_codes(rows, cols, &spec, &codes, &params, Some(perm.clone()));
        let dense = p.dequantize();
        for r in 0..rows {
            for k in 0..cols {
                let want = params[r * 3 + k / gs].dequantize(codes[r * cols + k]);
                assert_eq!(dense[r * cols + perm[k] as usize], want);
            }
        }
    }

    #[test]
    fn bytes_counts_every_table() {
        let spec = QuantSpec::new(4, 128);
        let (rows, cols) = (4, 576); // 5 groups, the last one of 64
        let codes = pattern(rows, cols, 4);
        let p = PackedMatrix::from_codes(
            rows,
            cols,
            &spec,
            &codes,
            &unit_params(rows, cols, 128),
            Some((0..cols as u32).collect()),
        );
        assert_eq!(p.bytes(), 4 * rows * 72 + 2 * 2 * rows * 5 + 4 * cols); // 576·4/32 = 72
        assert_eq!(p.dense_f16_bytes(), 2 * rows * cols);
    }
}
