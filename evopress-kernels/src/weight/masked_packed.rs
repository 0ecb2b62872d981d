//! Sparse *and* quantized weights: a bitmask saying which weights are kept, plus the kept
//! weights' integer codes bit-packed in one stream, with per-(row, group) f16 scales and zeros.
//! What SparseGPT's joint sparsify-and-quantize produces, multiplied straight from this form by
//! [`matmul_wt`](crate::cpu::matmul::matmul_wt).
//!
//! ```text
//!   mask:   1 bit per weight, row-major; each row starts on a fresh u64 word (bit c%64 of word
//!           c/64 is column c), padding bits are 0 (the masked layout)
//!   codes:  the kept weights' codes in row-major order as ONE stream, cut into chunks of 32
//!           codes of b bits, each chunk b u32 words in the packed layout's chunk encoding;
//!           ceil(nnz/32)·b words, the last chunk zero-padded. Rows are not padded: row r's codes
//!           start wherever row r−1's end (found from the mask's popcounts at construction)
//!   scales, zeros: [rows, n_groups] f16; group g of a row is the ORIGINAL columns
//!           [g·gs, (g+1)·gs) (the last may be partial); a kept weight decodes to
//!           scale · (q − zero), exactly as the quantizer computes it; a cleared bit is 0
//! ```
//!
//! A group of original columns keeps the grids aligned with the solver's column sweep, so a
//! builder that wants a fixed number of kept weights per grid scales `gs` with the density.
//! The encoder lives in the method crate that builds such variants (`evopress-joint`).

use super::buf::Buf;
use super::masked::mask_words_per_row;
use super::packed::{unpack_row, CHUNK};
use super::WeightError;
use crate::cpu::simd::f16_to_f32;
use half::f16;
use std::cell::RefCell;

/// The stored parts of a masked-packed `[rows, cols]` matrix, each owned or a region of a
/// mapped file. Checked by [`MaskedPackedMatrix::new`].
#[derive(Clone, Debug)]
pub struct MaskedPackedParts {
    pub rows: usize,
    pub cols: usize,
    /// Bits per code, 2..=8.
    pub bits: u8,
    /// Original columns per quantization group.
    pub group_size: usize,
    /// `rows · ceil(cols / 64)` words.
    pub mask: Buf<u64>,
    /// `ceil(nnz / 32) · bits` words.
    pub codes: Buf<u32>,
    /// `rows · ceil(cols / group_size)` each.
    pub scales: Buf<f16>,
    pub zeros: Buf<f16>,
}

/// A validated masked-packed matrix (see the module docs for the layout).
#[derive(Clone, Debug)]
pub struct MaskedPackedMatrix {
    parts: MaskedPackedParts,
    /// `row_start[r]..row_start[r + 1]` are row r's positions in the code stream.
    row_start: Vec<usize>,
}

/// u32 words holding a stream of `nnz` codes of `bits` bits (whole chunks of 32 codes).
pub fn stream_words(nnz: usize, bits: u8) -> usize {
    nnz.div_ceil(CHUNK) * bits as usize
}

impl MaskedPackedMatrix {
    /// Checks that the parts agree: bit width, group size, mask length and padding, one code
    /// per set bit, one scale and zero per (row, group).
    pub fn new(parts: MaskedPackedParts) -> Result<Self, WeightError> {
        let p = &parts;
        let bad = |msg: String| Err(WeightError::Layout(format!("masked-packed: {msg}")));
        if !(2..=8).contains(&p.bits) {
            return bad(format!("bit width {} is not in 2..=8", p.bits));
        }
        if p.group_size == 0 {
            return bad("group size 0".into());
        }
        let words = mask_words_per_row(p.cols);
        let mask = p.mask.as_slice();
        if mask.len() != p.rows * words {
            return bad(format!(
                "mask has {} words, a [{}, {}] matrix needs {}",
                mask.len(),
                p.rows,
                p.cols,
                p.rows * words
            ));
        }
        let padding = match p.cols % 64 {
            0 => 0,
            tail => !0u64 << tail,
        };
        let mut row_start = Vec::with_capacity(p.rows + 1);
        let mut n = 0;
        row_start.push(0);
        for r in 0..p.rows {
            let row = &mask[r * words..(r + 1) * words];
            if row.last().is_some_and(|&w| w & padding != 0) {
                return bad(format!("mask padding bits are set in row {r}"));
            }
            n += row.iter().map(|w| w.count_ones() as usize).sum::<usize>();
            row_start.push(n);
        }
        if p.codes.len() != stream_words(n, p.bits) {
            return bad(format!(
                "{} code words for {n} kept weights at {} bits (expected {})",
                p.codes.len(),
                p.bits,
                stream_words(n, p.bits)
            ));
        }
        let ng = p.cols.div_ceil(p.group_size);
        for (what, t) in [("scales", &p.scales), ("zeros", &p.zeros)] {
            if t.len() != p.rows * ng {
                return bad(format!("{} {what}, [{}, {ng}] expected", t.len(), p.rows));
            }
        }
        Ok(MaskedPackedMatrix { parts, row_start })
    }

    pub fn parts(&self) -> &MaskedPackedParts {
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
    /// Kept weights.
    pub fn nnz(&self) -> usize {
        self.row_start[self.parts.rows]
    }
    /// Kept weights of rows `[first, first + count)`.
    pub fn nnz_of_rows(&self, first: usize, count: usize) -> usize {
        self.row_start[first + count] - self.row_start[first]
    }

    /// Storage bytes of rows `[first, first + count)`: their mask words, scales and zeros, and
    /// their codes (the whole stream, padding included, when all rows are asked for; the rows'
    /// share in bits rounded up to bytes otherwise).
    pub fn bytes_of_rows(&self, first: usize, count: usize) -> usize {
        let per_row = 8 * mask_words_per_row(self.parts.cols) + 2 * 2 * self.n_groups();
        let codes = if first == 0 && count == self.parts.rows {
            self.parts.codes.bytes()
        } else {
            (self.nnz_of_rows(first, count) * self.parts.bits as usize).div_ceil(8)
        };
        count * per_row + codes
    }

    /// Decodes rows `first..first + out.len()/cols` into `out` (row-major, zeros where the mask
    /// is clear).
    pub fn decode_rows_into(&self, first: usize, out: &mut [f32]) {
        self.tables().rows_into(first, out)
    }

    pub(crate) fn tables(&self) -> MaskedPackedTables<'_> {
        MaskedPackedTables {
            cols: self.parts.cols,
            bits: self.parts.bits,
            group_size: self.parts.group_size,
            n_groups: self.n_groups(),
            mask: self.parts.mask.as_slice(),
            codes: self.parts.codes.as_slice(),
            scales: self.parts.scales.as_slice(),
            zeros: self.parts.zeros.as_slice(),
            row_start: &self.row_start,
        }
    }
}

/// [`MaskedPackedMatrix`]'s tables as slices.
#[derive(Clone, Copy)]
pub(crate) struct MaskedPackedTables<'a> {
    cols: usize,
    bits: u8,
    group_size: usize,
    n_groups: usize,
    mask: &'a [u64],
    codes: &'a [u32],
    scales: &'a [f16],
    zeros: &'a [f16],
    row_start: &'a [usize],
}

impl MaskedPackedTables<'_> {
    /// Rows `first..first + out.len()/cols` into `out`: the rows' codes are unpacked in whole
    /// chunks into a per-thread buffer, then scattered to the set bits and dequantized with
    /// their group's grid.
    #[inline(always)]
    pub(crate) fn rows_into(&self, first: usize, out: &mut [f32]) {
        let cols = self.cols;
        if cols == 0 {
            return;
        }
        let rows = out.len() / cols;
        let (a, b) = (self.row_start[first], self.row_start[first + rows]);
        let (c0, c1) = (a / CHUNK, b.div_ceil(CHUNK));
        let bits = self.bits as usize;
        with_code_buffer((c1 - c0) * CHUNK, |codes| {
            unpack_row(&self.codes[c0 * bits..c1 * bits], self.bits, codes);
            let mut next = a - c0 * CHUNK;
            let words = mask_words_per_row(cols);
            let (gs, ng) = (self.group_size, self.n_groups);
            for (i, row_out) in out.chunks_exact_mut(cols).enumerate() {
                let r = first + i;
                row_out.fill(0.0);
                let row_mask = &self.mask[r * words..(r + 1) * words];
                let (scales, zeros) = (
                    &self.scales[r * ng..(r + 1) * ng],
                    &self.zeros[r * ng..(r + 1) * ng],
                );
                let mut group_end = gs;
                let (mut s, mut z) = (f16_to_f32(scales[0]), f16_to_f32(zeros[0]));
                for (w, &word) in row_mask.iter().enumerate() {
                    let mut bits = word;
                    while bits != 0 {
                        let c = w * 64 + bits.trailing_zeros() as usize;
                        if c >= group_end {
                            let g = c / gs;
                            group_end = (g + 1) * gs;
                            (s, z) = (f16_to_f32(scales[g]), f16_to_f32(zeros[g]));
                        }
                        row_out[c] = (codes[next] - z) * s;
                        next += 1;
                        bits &= bits - 1;
                    }
                }
            }
            debug_assert_eq!(next, b - c0 * CHUNK, "mask and code stream agree");
        })
    }
}

/// Lends `f` this thread's code buffer resized to `len` (the matmul's own tile buffer is
/// already borrowed while a tile is decoded, so the codes need a second one).
fn with_code_buffer<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    thread_local! {
        static BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    }
    BUF.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < len {
            b.resize(len, 0.0);
        }
        f(&mut b[..len])
    })
}
