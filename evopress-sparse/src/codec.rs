//! Compact storage of one sparse variant: a bitmask saying which weights are kept, plus the kept
//! values in row-major order.
//!
//! ```text
//!   mask:   1 bit per weight, row-major; each row starts on a fresh u64 word (bit c%64 of word
//!           c/64 is column c), padding bits are 0
//!   values: the non-zero weights in row-major order, as f16, bf16 or f32
//! ```
//!
//! Cost relative to a dense f16 tensor at sparsity p (f16 values): `1/16 + (1 - p)`. Below
//! p = 1/16 the mask costs more than it saves, so such variants are stored dense (no mask).
//!
//! Rows decode independently (an index of where each row's values start is rebuilt from the mask,
//! not stored), so a consumer can stream a matrix in row blocks with [`Encoded::decode_rows`].

use std::ops::Range;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use crate::{check_shape, SparseError};

/// The type the kept values are stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    F16,
    Bf16,
    F32,
}

impl ValueType {
    /// Bytes per stored value.
    pub fn size(self) -> usize {
        match self {
            ValueType::F16 | ValueType::Bf16 => 2,
            ValueType::F32 => 4,
        }
    }
}

/// The kept values, in their storage type.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
    F32(Vec<f32>),
}

impl Values {
    fn from_f32(kept: &[f32], ty: ValueType) -> Self {
        match ty {
            ValueType::F16 => {
                let mut v = vec![f16::ZERO; kept.len()];
                v.convert_from_f32_slice(kept);
                Values::F16(v)
            }
            ValueType::Bf16 => {
                let mut v = vec![bf16::ZERO; kept.len()];
                v.convert_from_f32_slice(kept);
                Values::Bf16(v)
            }
            ValueType::F32 => Values::F32(kept.to_vec()),
        }
    }

    /// Number of stored values.
    pub fn len(&self) -> usize {
        match self {
            Values::F16(v) => v.len(),
            Values::Bf16(v) => v.len(),
            Values::F32(v) => v.len(),
        }
    }

    /// True when no value is stored (an all-zero variant).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The storage type.
    pub fn value_type(&self) -> ValueType {
        match self {
            Values::F16(_) => ValueType::F16,
            Values::Bf16(_) => ValueType::Bf16,
            Values::F32(_) => ValueType::F32,
        }
    }

    /// Widens `range` of the values to f32 into `out` (SIMD slice conversion for f16/bf16).
    fn to_f32(&self, range: Range<usize>, out: &mut [f32]) {
        match self {
            Values::F16(v) => v[range].convert_to_f32_slice(out),
            Values::Bf16(v) => v[range].convert_to_f32_slice(out),
            Values::F32(v) => out.copy_from_slice(&v[range]),
        }
    }
}

/// One encoded `[rows, cols]` matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    rows: usize,
    cols: usize,
    /// `rows * words_per_row` words, or `None` when stored dense.
    mask: Option<Vec<u64>>,
    values: Values,
    /// `row_start[r]..row_start[r + 1]` are row r's values (derived from the mask).
    row_start: Vec<usize>,
}

/// Encodes `w` (`[rows, cols]`, row-major): zeros go to the mask, everything else to the values.
/// A variant too dense for the mask to pay off (sparsity below 1/16) is stored dense.
pub fn encode(w: &[f32], rows: usize, cols: usize, ty: ValueType) -> Result<Encoded, SparseError> {
    check_shape("encoded weight", w, rows, cols)?;
    let nnz = w.iter().filter(|&&x| x != 0.0).count();
    let words = cols.div_ceil(64);
    let sparse_bytes = rows * words * 8 + nnz * ty.size();
    if sparse_bytes >= w.len() * ty.size() {
        return Encoded::from_parts(rows, cols, None, Values::from_f32(w, ty));
    }
    let mut mask = vec![0u64; rows * words];
    let mut kept = Vec::with_capacity(nnz);
    for (row, mask_row) in w.chunks_exact(cols).zip(mask.chunks_exact_mut(words)) {
        for (c, &x) in row.iter().enumerate() {
            if x != 0.0 {
                mask_row[c / 64] |= 1 << (c % 64);
                kept.push(x);
            }
        }
    }
    Encoded::from_parts(rows, cols, Some(mask), Values::from_f32(&kept, ty))
}

/// Decodes the whole matrix into `out` (`[rows, cols]`), rows in parallel.
pub fn decode_into(enc: &Encoded, out: &mut [f32]) -> Result<(), SparseError> {
    check_shape("decode output", out, enc.rows, enc.cols)?;
    let rows_per_task = (4096 / enc.cols.max(1)).max(1);
    out.par_chunks_mut(rows_per_task * enc.cols.max(1))
        .enumerate()
        .for_each_init(
            || vec![0.0f32; enc.cols],
            |scratch, (t, chunk)| {
                let first = t * rows_per_task;
                enc.decode_rows_with(first..first + chunk.len() / enc.cols, chunk, scratch);
            },
        );
    Ok(())
}

impl Encoded {
    /// Reassembles an encoded matrix from its stored parts (as a store reads them back), checking
    /// that they agree: mask length, zero padding bits, and one value per set bit.
    pub fn from_parts(
        rows: usize,
        cols: usize,
        mask: Option<Vec<u64>>,
        values: Values,
    ) -> Result<Self, SparseError> {
        let row_start: Vec<usize> = match &mask {
            None => (0..=rows).map(|r| r * cols).collect(),
            Some(mask) => {
                let words = cols.div_ceil(64);
                if mask.len() != rows * words {
                    return Err(SparseError::Codec(format!(
                        "mask has {} words, a [{rows}, {cols}] matrix needs {}",
                        mask.len(),
                        rows * words
                    )));
                }
                let tail_bits = cols % 64;
                let padding = if tail_bits == 0 {
                    0
                } else {
                    !0u64 << tail_bits
                };
                let mut start = Vec::with_capacity(rows + 1);
                let mut n = 0;
                start.push(0);
                for mask_row in mask.chunks_exact(words.max(1)).take(rows) {
                    if mask_row.last().is_some_and(|&w| w & padding != 0) {
                        return Err(SparseError::Codec("mask padding bits are set".into()));
                    }
                    n += mask_row
                        .iter()
                        .map(|w| w.count_ones() as usize)
                        .sum::<usize>();
                    start.push(n);
                }
                start.resize(rows + 1, n);
                start
            }
        };
        if values.len() != row_start[rows] {
            return Err(SparseError::Codec(format!(
                "{} values for {} kept weights",
                values.len(),
                row_start[rows]
            )));
        }
        Ok(Self {
            rows,
            cols,
            mask,
            values,
            row_start,
        })
    }

    /// `(rows, cols)` of the matrix.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The mask words (`None` for a dense variant), for a store to persist.
    pub fn mask(&self) -> Option<&[u64]> {
        self.mask.as_deref()
    }

    /// The kept values, for a store to persist.
    pub fn values(&self) -> &Values {
        &self.values
    }

    /// Number of stored values (all weights when dense).
    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    /// Bytes a store needs for this variant: mask plus values (the row index is rebuilt on load).
    pub fn stored_bytes(&self) -> usize {
        self.mask.as_ref().map_or(0, |m| m.len() * 8) + self.nnz() * self.values.value_type().size()
    }

    /// Decodes rows `rows` into `out` (`[rows.len(), cols]`), for streaming a matrix in pieces.
    pub fn decode_rows(&self, rows: Range<usize>, out: &mut [f32]) -> Result<(), SparseError> {
        if rows.start > rows.end || rows.end > self.rows {
            return Err(SparseError::Codec(format!(
                "rows {rows:?} out of range for a matrix with {} rows",
                self.rows
            )));
        }
        check_shape("decode output", out, rows.len(), self.cols)?;
        let mut scratch = vec![0.0f32; self.cols];
        self.decode_rows_with(rows, out, &mut scratch);
        Ok(())
    }

    /// Decodes `rows` into `out`: widen each row's values into `scratch`, then scatter them to the
    /// set bits of the row's mask (zeros elsewhere).
    fn decode_rows_with(&self, rows: Range<usize>, out: &mut [f32], scratch: &mut [f32]) {
        let words = self.cols.div_ceil(64);
        for (r, row_out) in rows.zip(out.chunks_exact_mut(self.cols)) {
            let span = self.row_start[r]..self.row_start[r + 1];
            let Some(mask) = &self.mask else {
                self.values.to_f32(span, row_out);
                continue;
            };
            let kept = &mut scratch[..span.len()];
            self.values.to_f32(span, kept);
            row_out.fill(0.0);
            let mut next = kept.iter();
            for (w, &word) in mask[r * words..(r + 1) * words].iter().enumerate() {
                let mut bits = word;
                while bits != 0 {
                    let c = w * 64 + bits.trailing_zeros() as usize;
                    row_out[c] = *next.next().expect("mask and values agree");
                    bits &= bits - 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_sparse(rows: usize, cols: usize, sparsity: f64, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..rows * cols)
            .map(|_| {
                if rng.gen_bool(sparsity) {
                    0.0
                } else {
                    rng.gen_range(-0.2f32..0.2)
                }
            })
            .collect()
    }

    fn rounded(w: &[f32], ty: ValueType) -> Vec<f32> {
        w.iter()
            .map(|&x| match ty {
                ValueType::F16 => f16::from_f32(x).to_f32(),
                ValueType::Bf16 => bf16::from_f32(x).to_f32(),
                ValueType::F32 => x,
            })
            .collect()
    }

    #[test]
    fn round_trips_exactly_up_to_value_rounding() {
        for (rows, cols) in [(7, 576), (5, 100), (3, 64), (1, 1)] {
            for p in [0.0, 0.03, 0.5, 0.9, 1.0] {
                for ty in [ValueType::F16, ValueType::Bf16, ValueType::F32] {
                    let w = random_sparse(rows, cols, p, 7);
                    let enc = encode(&w, rows, cols, ty).unwrap();
                    let mut out = vec![f32::NAN; rows * cols];
                    decode_into(&enc, &mut out).unwrap();
                    let want = rounded(&w, ty);
                    let same = out
                        .iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "[{rows}, {cols}] p = {p} {ty:?}");
                }
            }
        }
    }

    #[test]
    fn decode_rows_matches_the_full_decode() {
        let (rows, cols) = (37, 200);
        let w = random_sparse(rows, cols, 0.6, 3);
        let enc = encode(&w, rows, cols, ValueType::F16).unwrap();
        let mut full = vec![0.0; rows * cols];
        decode_into(&enc, &mut full).unwrap();
        for range in [0..37, 5..6, 10..30, 36..37, 4..4] {
            let mut part = vec![f32::NAN; range.len() * cols];
            enc.decode_rows(range.clone(), &mut part).unwrap();
            assert_eq!(part, full[range.start * cols..range.end * cols]);
        }
        assert!(enc.decode_rows(30..38, &mut [0.0; 8 * 200]).is_err());
    }

    #[test]
    fn size_is_mask_plus_kept_values_or_dense() {
        let (rows, cols) = (64, 576);
        let dense_f16 = rows * cols * 2;
        let w = random_sparse(rows, cols, 0.5, 1);
        let enc = encode(&w, rows, cols, ValueType::F16).unwrap();
        assert_eq!(enc.stored_bytes(), rows * cols / 8 + enc.nnz() * 2);
        let ratio = enc.stored_bytes() as f64 / dense_f16 as f64;
        assert!((ratio - 0.5625).abs() < 0.01, "{ratio}");
        let dense = encode(
            &random_sparse(rows, cols, 0.01, 1),
            rows,
            cols,
            ValueType::F16,
        )
        .unwrap();
        assert!(dense.mask().is_none());
        assert_eq!(dense.stored_bytes(), dense_f16);
    }

    #[test]
    fn from_parts_rejects_inconsistent_parts() {
        let w = random_sparse(4, 70, 0.5, 9);
        let enc = encode(&w, 4, 70, ValueType::F32).unwrap();
        let mask = enc.mask().unwrap().to_vec();
        let Values::F32(values) = enc.values().clone() else {
            unreachable!()
        };
        let again = Encoded::from_parts(4, 70, Some(mask.clone()), Values::F32(values.clone()));
        assert_eq!(again.unwrap(), enc);
        let mut short = values.clone();
        short.pop();
        assert!(Encoded::from_parts(4, 70, Some(mask.clone()), Values::F32(short)).is_err());
        let mut padded = mask.clone();
        padded[1] |= 1 << 63;
        assert!(Encoded::from_parts(4, 70, Some(padded), Values::F32(values.clone())).is_err());
        assert!(Encoded::from_parts(4, 70, Some(mask[1..].to_vec()), Values::F32(values)).is_err());
    }
}
