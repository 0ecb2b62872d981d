//! Masked (unstructured-sparse) weights: a bitmask saying which weights are kept, plus the kept
//! values in row-major order, multiplied straight from this form by
//! [`matmul_wt`](crate::cpu::matmul::matmul_wt).
//!
//! ```text
//!   mask:   1 bit per weight, row-major; each row starts on a fresh u64 word (bit c%64 of word
//!           c/64 is column c), padding bits are 0
//!   values: the kept weights in row-major order, as f16, bf16 or f32
//!           (no mask: all rows·cols weights, i.e. a dense matrix)
//! ```
//!
//! Rows decode independently: where each row's values start is rebuilt from the mask's
//! popcounts at construction (not stored). The encoder lives in `evopress-sparse`.

use super::buf::Buf;
use super::{DType, WeightError};
use crate::cpu::simd::{bf16_to_f32, f16_to_f32};
use half::{bf16, f16};

/// The kept values, in their storage type.
#[derive(Clone, Debug)]
pub enum MaskedValues {
    F16(Buf<f16>),
    BF16(Buf<bf16>),
    F32(Buf<f32>),
}

impl MaskedValues {
    pub fn len(&self) -> usize {
        match self {
            MaskedValues::F16(v) => v.len(),
            MaskedValues::BF16(v) => v.len(),
            MaskedValues::F32(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn dtype(&self) -> DType {
        match self {
            MaskedValues::F16(_) => DType::F16,
            MaskedValues::BF16(_) => DType::BF16,
            MaskedValues::F32(_) => DType::F32,
        }
    }
    fn as_slices(&self) -> ValueSlice<'_> {
        match self {
            MaskedValues::F16(v) => ValueSlice::F16(v.as_slice()),
            MaskedValues::BF16(v) => ValueSlice::BF16(v.as_slice()),
            MaskedValues::F32(v) => ValueSlice::F32(v.as_slice()),
        }
    }
}

#[derive(Clone, Copy)]
enum ValueSlice<'a> {
    F16(&'a [f16]),
    BF16(&'a [bf16]),
    F32(&'a [f32]),
}

/// A validated masked matrix (see the module docs for the layout).
#[derive(Clone, Debug)]
pub struct MaskedMatrix {
    rows: usize,
    cols: usize,
    mask: Option<Buf<u64>>,
    values: MaskedValues,
    /// `row_start[r]..row_start[r + 1]` are row r's values (from the mask's popcounts).
    row_start: Vec<usize>,
}

/// u64 mask words per row.
pub fn mask_words_per_row(cols: usize) -> usize {
    cols.div_ceil(64)
}

impl MaskedMatrix {
    /// Reassembles a masked matrix from its stored parts, checking that they agree: mask length,
    /// zero padding bits, and one value per set bit (or `rows · cols` values without a mask).
    pub fn new(
        rows: usize,
        cols: usize,
        mask: Option<Buf<u64>>,
        values: MaskedValues,
    ) -> Result<Self, WeightError> {
        let bad = |msg: String| Err(WeightError::Layout(format!("masked: {msg}")));
        let row_start: Vec<usize> = match &mask {
            None => (0..=rows).map(|r| r * cols).collect(),
            Some(mask) => {
                let mask = mask.as_slice();
                let words = mask_words_per_row(cols);
                if mask.len() != rows * words {
                    return bad(format!(
                        "mask has {} words, a [{rows}, {cols}] matrix needs {}",
                        mask.len(),
                        rows * words
                    ));
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
                for r in 0..rows {
                    let mask_row = &mask[r * words..(r + 1) * words];
                    if mask_row.last().is_some_and(|&w| w & padding != 0) {
                        return bad(format!("mask padding bits are set in row {r}"));
                    }
                    n += mask_row
                        .iter()
                        .map(|w| w.count_ones() as usize)
                        .sum::<usize>();
                    start.push(n);
                }
                start
            }
        };
        if values.len() != row_start[rows] {
            return bad(format!(
                "{} values for {} kept weights",
                values.len(),
                row_start[rows]
            ));
        }
        Ok(MaskedMatrix {
            rows,
            cols,
            mask,
            values,
            row_start,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// The mask words (`None` when stored dense).
    pub fn mask(&self) -> Option<&[u64]> {
        self.mask.as_ref().map(Buf::as_slice)
    }
    pub fn mask_buf(&self) -> Option<&Buf<u64>> {
        self.mask.as_ref()
    }
    pub fn values(&self) -> &MaskedValues {
        &self.values
    }
    /// Stored values (all weights when dense).
    pub fn nnz(&self) -> usize {
        self.values.len()
    }
    /// Values of rows `[first, first + count)`.
    pub fn nnz_of_rows(&self, first: usize, count: usize) -> usize {
        self.row_start[first + count] - self.row_start[first]
    }

    /// Storage bytes of rows `[first, first + count)`: their mask words and values.
    pub fn bytes_of_rows(&self, first: usize, count: usize) -> usize {
        let mask = self
            .mask
            .as_ref()
            .map_or(0, |_| count * mask_words_per_row(self.cols) * 8);
        mask + self.nnz_of_rows(first, count) * self.values.dtype().size_of()
    }

    /// Borrowed tables for a hot loop.
    pub(crate) fn tables(&self) -> MaskedTables<'_> {
        MaskedTables {
            cols: self.cols,
            mask: self.mask(),
            values: self.values.as_slices(),
            row_start: &self.row_start,
        }
    }

    /// Decodes rows `first..first + out.len()/cols` into `out` (row-major, zeros where the mask
    /// is clear).
    pub fn decode_rows_into(&self, first: usize, out: &mut [f32]) {
        self.tables().rows_into(first, out)
    }
}

/// [`MaskedMatrix`]'s tables as slices.
#[derive(Clone, Copy)]
pub(crate) struct MaskedTables<'a> {
    cols: usize,
    mask: Option<&'a [u64]>,
    values: ValueSlice<'a>,
    row_start: &'a [usize],
}

impl MaskedTables<'_> {
    /// Rows `first..first + out.len()/cols` into `out`.
    #[inline(always)]
    pub(crate) fn rows_into(&self, first: usize, out: &mut [f32]) {
        if self.cols == 0 {
            return;
        }
        let rows = out.len() / self.cols;
        let span = self.row_start[first]..self.row_start[first + rows];
        let Some(mask) = self.mask else {
            // Dense values: rows are contiguous, one widening pass.
            return widen(self.values, span.start, out);
        };
        match self.values {
            ValueSlice::F16(v) => scatter(mask, self.cols, first, &v[span], out, f16_to_f32),
            ValueSlice::BF16(v) => scatter(mask, self.cols, first, &v[span], out, bf16_to_f32),
            ValueSlice::F32(v) => scatter(mask, self.cols, first, &v[span], out, |x| x),
        }
    }
}

/// `out[i] = widen(values[start + i])`.
#[inline(always)]
fn widen(values: ValueSlice<'_>, start: usize, out: &mut [f32]) {
    let n = out.len();
    match values {
        ValueSlice::F16(v) => {
            for (o, &h) in out.iter_mut().zip(&v[start..start + n]) {
                *o = f16_to_f32(h);
            }
        }
        ValueSlice::BF16(v) => {
            for (o, &b) in out.iter_mut().zip(&v[start..start + n]) {
                *o = bf16_to_f32(b);
            }
        }
        ValueSlice::F32(v) => out.copy_from_slice(&v[start..start + n]),
    }
}

/// Zero-fills `out` (whole rows from `first`) and writes the kept values to the set bits of the
/// rows' mask words, walking each word's bits with `trailing_zeros`.
#[inline(always)]
fn scatter<T: Copy>(
    mask: &[u64],
    cols: usize,
    first: usize,
    kept: &[T],
    out: &mut [f32],
    widen: impl Fn(T) -> f32,
) {
    let words = mask_words_per_row(cols);
    out.fill(0.0);
    let mut next = 0;
    let rows = out.len() / cols;
    for (r, row_out) in out.chunks_exact_mut(cols).enumerate() {
        let row_mask = &mask[(first + r) * words..(first + r + 1) * words];
        for (w, &word) in row_mask.iter().enumerate() {
            let base = &mut row_out[w * 64..(w * 64 + 64).min(cols)];
            let mut bits = word;
            while bits != 0 {
                let c = bits.trailing_zeros() as usize;
                base[c] = widen(kept[next]);
                next += 1;
                bits &= bits - 1;
            }
        }
    }
    debug_assert_eq!(next, kept.len(), "{rows} rows: mask and values agree");
}
