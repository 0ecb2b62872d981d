//! compressed-tensors' `sparse-bitmask` encoding of one `[rows, cols]` weight, as its
//! `BitmaskCompressor` writes it (see docs/export-formats.md):
//!
//! ```text
//!   <module>.shape        int64 [2]                 rows, cols
//!   <module>.compressed   dtype [nnz]               the non-zero weights, row-major
//!   <module>.bitmask      uint8 [rows, ceil(cols/8)] bit c%8 of byte c/8 of row r = weight (r, c) != 0
//!   <module>.row_offsets  int64 [rows]              index in `compressed` of each row's first value
//! ```
//!
//! "Non-zero" is judged on the value as stored in the file's dtype: a kept weight that rounds
//! to zero is not stored (decompression gives the same zero).

use crate::st::float_bytes;
use evopress_kernels::DType;

/// One weight in bitmask form.
pub struct Bitmask {
    pub rows: usize,
    pub cols: usize,
    /// `rows · ceil(cols/8)` bytes.
    pub mask: Vec<u8>,
    /// Little-endian bytes of the non-zero values in the target dtype.
    pub values: Vec<u8>,
    pub nnz: usize,
    pub row_offsets: Vec<i64>,
}

/// Bytes per row of the mask.
pub fn mask_row_bytes(cols: usize) -> usize {
    cols.div_ceil(8)
}

/// Encodes `dense` (`[rows, cols]`, f32) as stored in `dtype`.
pub fn encode(dense: &[f32], rows: usize, cols: usize, dtype: DType) -> Bitmask {
    let size = dtype.size_of();
    let bytes = float_bytes(dense, dtype);
    let row_bytes = mask_row_bytes(cols);
    let mut mask = vec![0u8; rows * row_bytes];
    let mut values = Vec::new();
    let mut row_offsets = Vec::with_capacity(rows);
    let mut nnz = 0usize;
    for r in 0..rows {
        row_offsets.push(nnz as i64);
        for c in 0..cols {
            let i = r * cols + c;
            let v = &bytes[i * size..(i + 1) * size];
            if is_nonzero(v) {
                mask[r * row_bytes + c / 8] |= 1 << (c % 8);
                values.extend_from_slice(v);
                nnz += 1;
            }
        }
    }
    Bitmask {
        rows,
        cols,
        mask,
        values,
        nnz,
        row_offsets,
    }
}

/// Non-zero as torch's `tensor != 0` sees it: any bit set except the sign (so `-0.0` is zero).
fn is_nonzero(le_bytes: &[u8]) -> bool {
    let n = le_bytes.len();
    le_bytes[..n - 1].iter().any(|&b| b != 0) || le_bytes[n - 1] & 0x7f != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_bits_are_little_endian_per_row() {
        // Row 0: columns 0 and 9 set; row 1: column 7 only; -0.0 counts as zero.
        let cols = 10;
        let mut dense = vec![0f32; 2 * cols];
        dense[0] = 1.5;
        dense[9] = -2.0;
        dense[cols + 7] = 0.25;
        dense[cols + 3] = -0.0;
        let b = encode(&dense, 2, cols, DType::F32);
        assert_eq!(b.mask, [0b0000_0001, 0b0000_0010, 0b1000_0000, 0]);
        assert_eq!(b.nnz, 3);
        assert_eq!(b.row_offsets, [0, 2]);
        let values: &[f32] = bytemuck::cast_slice(&b.values);
        assert_eq!(values, [1.5, -2.0, 0.25]);
    }

    #[test]
    fn values_that_round_to_zero_in_the_dtype_are_not_stored() {
        let b = encode(&[1e-30, 1.0], 1, 2, DType::F16);
        assert_eq!((b.nnz, b.mask.as_slice()), (1, &[0b10u8][..]));
    }
}
