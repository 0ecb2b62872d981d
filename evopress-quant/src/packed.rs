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
//! The format (layout, validation, row decoding) is owned by
//! [`evopress_kernels::weight::packed`], whose matmul reads it directly; this module builds it
//! from GPTQ/RTN codes and hands it over with [`PackedMatrix::to_weight`].
//!
//! Compared with the original database, which stores one dequantized fp16 `[out, in]` tensor per
//! bit width, a packed matrix costs `b/16 + 2/gs` of it (plus 2/rows for a permutation):
//! 0.28x at 4 bits and group 64, 0.16x at 2 bits.

pub use evopress_kernels::weight::packed::words_per_row;
use evopress_kernels::weight::packed::{dequantize_row, slices, unpack_row, CHUNK};
use evopress_kernels::{Buf, PackedParts, Weight, WeightError};
use half::f16;

use crate::{GroupParams, QuantSpec};

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
    pub fn dequantize_row_into(&self, r: usize, out: &mut [f32]) {
        assert_eq!(out.len(), self.cols);
        let g = r * self.n_groups()..(r + 1) * self.n_groups();
        dequantize_row(
            self.row_words(r),
            self.bits,
            self.group_size,
            &self.scales[g.clone()],
            &self.zeros[g],
            out,
        );
    }

    /// The dense `[rows, cols]` matrix in original column order.
    pub fn dequantize(&self) -> Vec<f32> {
        self.to_weight()
            .expect("a packed matrix built by from_codes is consistent")
            .to_f32_vec()
    }

    /// The kernels' [`Weight`] for this matrix (copies the tables into owned buffers), which
    /// `Device::matmul_wt` multiplies without decoding the whole matrix. Fails if the public
    /// fields were edited into an inconsistent state.
    pub fn to_weight(&self) -> Result<Weight, WeightError> {
        self.clone().into_weight()
    }

    /// As [`PackedMatrix::to_weight`], moving the tables.
    pub fn into_weight(self) -> Result<Weight, WeightError> {
        Weight::packed(PackedParts {
            rows: self.rows,
            cols: self.cols,
            bits: self.bits,
            group_size: self.group_size,
            codes: Buf::owned(self.codes),
            scales: Buf::owned(self.scales),
            zeros: Buf::owned(self.zeros),
            perm: self.perm.map(Buf::owned),
        })
    }

    fn row_words(&self, r: usize) -> &[u32] {
        let wpr = self.words_per_row();
        &self.codes[r * wpr..(r + 1) * wpr]
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
