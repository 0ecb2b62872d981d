//! [`GgmlMatrix`]: a weight kept in llama.cpp's block format (for example a GGUF tensor's bytes,
//! mapped) and multiplied straight from it by [`matmul_wt`](crate::cpu::matmul::matmul_wt),
//! which decodes a tile of rows at a time into f32.

use super::{decode_row, GgmlType};
use crate::weight::{Buf, WeightError};

/// A validated `[rows, cols]` matrix of `ty` blocks, row-major: row `r` is bytes
/// `[r·row_bytes, (r+1)·row_bytes)`, each row a whole number of blocks.
#[derive(Clone, Debug)]
pub struct GgmlMatrix {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    blocks: Buf<u8>,
}

impl GgmlMatrix {
    /// Checks that `ty` is a decodable block format, that rows are whole blocks and that
    /// `blocks` holds exactly `rows` of them.
    pub fn new(
        ty: GgmlType,
        rows: usize,
        cols: usize,
        blocks: Buf<u8>,
    ) -> Result<Self, WeightError> {
        let bad = |msg: String| Err(WeightError::Layout(format!("ggml {ty}: {msg}")));
        if !ty.is_block() || !ty.is_decodable() {
            return bad("not a block format this crate decodes".into());
        }
        let Some(row_bytes) = ty.row_bytes(cols) else {
            return bad(format!(
                "rows of {cols} are not whole blocks of {}",
                ty.block_len()
            ));
        };
        if blocks.len() != rows * row_bytes {
            return bad(format!(
                "{} bytes, a [{rows}, {cols}] matrix needs {}",
                blocks.len(),
                rows * row_bytes
            ));
        }
        Ok(GgmlMatrix {
            ty,
            rows,
            cols,
            row_bytes,
            blocks,
        })
    }

    pub fn ty(&self) -> GgmlType {
        self.ty
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }
    /// The encoded rows.
    pub fn blocks(&self) -> &Buf<u8> {
        &self.blocks
    }

    /// Storage bytes of `count` rows.
    pub fn bytes_of_rows(&self, count: usize) -> usize {
        count * self.row_bytes
    }

    /// A matrix whose row `r` is this one's row `source(r)` (an owned copy of the blocks):
    /// reorders rows without decoding them.
    pub fn permute_rows(&self, source: impl Fn(usize) -> usize) -> Self {
        let b = self.blocks.as_slice();
        let rb = self.row_bytes;
        let mut out = Vec::with_capacity(b.len());
        for r in 0..self.rows {
            let s = source(r);
            out.extend_from_slice(&b[s * rb..(s + 1) * rb]);
        }
        GgmlMatrix {
            blocks: Buf::owned(out),
            ..self.clone()
        }
    }

    pub(crate) fn tables(&self) -> GgmlTables<'_> {
        GgmlTables {
            ty: self.ty,
            cols: self.cols,
            row_bytes: self.row_bytes,
            bytes: self.blocks.as_slice(),
        }
    }

    /// Decodes rows `first..first + out.len()/cols` into `out` (row-major).
    pub fn decode_rows_into(&self, first: usize, out: &mut [f32]) {
        self.tables().rows_into(first, out)
    }
}

/// [`GgmlMatrix`]'s blocks as a slice, for a hot loop.
#[derive(Clone, Copy)]
pub(crate) struct GgmlTables<'a> {
    ty: GgmlType,
    cols: usize,
    row_bytes: usize,
    bytes: &'a [u8],
}

impl GgmlTables<'_> {
    /// Rows `first..first + out.len()/cols` into `out`.
    #[inline(always)]
    pub(crate) fn rows_into(&self, first: usize, out: &mut [f32]) {
        if self.cols == 0 {
            return;
        }
        let rows = out.len() / self.cols;
        let bytes = &self.bytes[first * self.row_bytes..(first + rows) * self.row_bytes];
        for (o, b) in out
            .chunks_exact_mut(self.cols)
            .zip(bytes.chunks_exact(self.row_bytes))
        {
            decode_row(self.ty, b, o);
        }
    }
}
