//! Weight matrices as the compute side sees them: a row-major `[rows, cols]` matrix stored
//! either dense (f32, f16 or bf16 elements) or compressed:
//!
//! - [`PackedMatrix`] (quantized: bit-packed codes, f16 scales and zeros, optional act-order
//!   permutation; see [`packed`]),
//! - [`MaskedMatrix`] (sparse: a bitmask plus the kept values; see [`masked`]),
//! - [`MaskedPackedMatrix`] (sparse and quantized: a bitmask plus the kept weights' packed codes,
//!   f16 scales and zeros; see [`masked_packed`]),
//! - [`GgmlMatrix`] (llama.cpp's block formats, e.g. a GGUF tensor's `Q4_K` blocks; see
//!   [`ggml`]).
//!
//! Every table is owned or borrowed from a memory-mapped file ([`Buf`]). Keeping mapped
//! weights in their file form (no f32 copy) is what lets a multi-GB model, or a database of
//! compressed variants, run with one copy of its weights in RAM; the matmul decodes rows or
//! tiles to f32 on the fly.

pub mod buf;
pub mod ggml;
pub mod masked;
pub mod masked_packed;
pub mod packed;

pub use buf::Buf;
pub use ggml::{GgmlMatrix, GgmlType};
pub use masked::{MaskedMatrix, MaskedValues};
pub use masked_packed::{MaskedPackedMatrix, MaskedPackedParts};
pub use packed::{PackedMatrix, PackedParts};

use half::{bf16, f16};
use memmap2::Mmap;
use std::sync::Arc;

/// Element type of a stored weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    pub fn size_of(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
        }
    }
}

/// Where a weight's bytes live.
#[derive(Clone, Debug)]
pub enum Storage {
    F32(Arc<Vec<f32>>),
    F16(Arc<Vec<f16>>),
    BF16(Arc<Vec<bf16>>),
    /// `len` elements of `dtype` starting at byte `offset` of a mapped file. The offset is
    /// aligned to the dtype's size (checked by [`Weight::mapped`]).
    Mapped {
        map: Arc<Mmap>,
        offset: usize,
        dtype: DType,
    },
    /// Quantized codes (see [`packed`]).
    Packed(Arc<PackedMatrix>),
    /// Sparse mask + values (see [`masked`]).
    Masked(Arc<MaskedMatrix>),
    /// Sparse mask + quantized codes of the kept weights (see [`masked_packed`]).
    MaskedPacked(Arc<MaskedPackedMatrix>),
    /// llama.cpp blocks (see [`ggml`]).
    Ggml(Arc<GgmlMatrix>),
}

/// How a weight is stored, for reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightKind {
    Dense(DType),
    Packed { bits: u8, group_size: usize },
    Masked { values: DType, has_mask: bool },
    MaskedPacked { bits: u8, group_size: usize },
    Ggml(GgmlType),
}

impl std::fmt::Display for WeightKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WeightKind::Dense(d) => write!(f, "dense {}", d.name()),
            WeightKind::Packed { bits, group_size } => write!(f, "packed {bits}-bit g{group_size}"),
            WeightKind::Masked { values, has_mask } => {
                write!(f, "masked {}", values.name())?;
                if !has_mask {
                    write!(f, " (no mask)")?;
                }
                Ok(())
            }
            WeightKind::MaskedPacked { bits, group_size } => {
                write!(f, "masked packed {bits}-bit g{group_size}")
            }
            WeightKind::Ggml(ty) => write!(f, "ggml {ty}"),
        }
    }
}

/// What the matmul reads: a dense view, or a compressed matrix and the first row of this
/// weight in it.
#[derive(Clone, Copy)]
pub(crate) enum Source<'a> {
    Dense(WeightView<'a>),
    Packed(&'a PackedMatrix, usize),
    Masked(&'a MaskedMatrix, usize),
    MaskedPacked(&'a MaskedPackedMatrix, usize),
    Ggml(&'a GgmlMatrix, usize),
}

/// A borrowed, typed view of a weight's elements.
#[derive(Clone, Copy, Debug)]
pub enum WeightView<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
}

impl WeightView<'_> {
    pub fn len(&self) -> usize {
        match self {
            WeightView::F32(s) => s.len(),
            WeightView::F16(s) => s.len(),
            WeightView::BF16(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn dtype(&self) -> DType {
        match self {
            WeightView::F32(_) => DType::F32,
            WeightView::F16(_) => DType::F16,
            WeightView::BF16(_) => DType::BF16,
        }
    }
    /// Converts elements `[start, start + out.len())` to f32.
    pub fn to_f32_into(&self, start: usize, out: &mut [f32]) {
        let end = start + out.len();
        match self {
            WeightView::F32(s) => out.copy_from_slice(&s[start..end]),
            WeightView::F16(s) => {
                use half::slice::HalfFloatSliceExt;
                s[start..end].convert_to_f32_slice(out)
            }
            WeightView::BF16(s) => {
                use half::slice::HalfFloatSliceExt;
                s[start..end].convert_to_f32_slice(out)
            }
        }
    }
}

/// A row-major `[rows, cols]` weight matrix (a linear layer's `[out, in]`, an embedding table,
/// or a 1-D vector with `rows == 1`).
#[derive(Clone, Debug)]
pub struct Weight {
    pub rows: usize,
    pub cols: usize,
    storage: Storage,
    /// First row of this matrix within `storage` (non-zero for row slices of a fused tensor
    /// such as Phi-3's `qkv_proj`, which are views, not copies).
    row0: usize,
}

/// Why a mapped region cannot be viewed as a weight.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("tensor data at byte offset {offset} is not aligned to {align} bytes")]
    Misaligned { offset: usize, align: usize },
    #[error("tensor needs bytes {offset}..{end} but the file has only {file_len}")]
    OutOfBounds {
        offset: usize,
        end: usize,
        file_len: usize,
    },
    #[error("inconsistent compressed weight: {0}")]
    Layout(String),
}

impl Weight {
    pub fn from_f32(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), rows * cols, "weight data length != rows * cols");
        Weight {
            rows,
            cols,
            storage: Storage::F32(Arc::new(data)),
            row0: 0,
        }
    }
    pub fn from_f16(rows: usize, cols: usize, data: Vec<f16>) -> Self {
        assert_eq!(data.len(), rows * cols, "weight data length != rows * cols");
        Weight {
            rows,
            cols,
            storage: Storage::F16(Arc::new(data)),
            row0: 0,
        }
    }
    pub fn from_bf16(rows: usize, cols: usize, data: Vec<bf16>) -> Self {
        assert_eq!(data.len(), rows * cols, "weight data length != rows * cols");
        Weight {
            rows,
            cols,
            storage: Storage::BF16(Arc::new(data)),
            row0: 0,
        }
    }

    /// A zero-copy view of `rows * cols` elements at byte `offset` of `map`.
    pub fn mapped(
        map: Arc<Mmap>,
        offset: usize,
        dtype: DType,
        rows: usize,
        cols: usize,
    ) -> Result<Self, WeightError> {
        buf::check_region(&map, offset, rows * cols * dtype.size_of(), dtype.size_of())?;
        Ok(Weight {
            rows,
            cols,
            storage: Storage::Mapped { map, offset, dtype },
            row0: 0,
        })
    }

    /// A packed (quantized) weight from its stored parts, each owned or a region of a mapped
    /// file; the parts are checked against each other.
    pub fn packed(parts: PackedParts) -> Result<Self, WeightError> {
        Ok(Self::from_packed(PackedMatrix::new(parts)?))
    }

    pub fn from_packed(p: PackedMatrix) -> Self {
        Weight {
            rows: p.rows(),
            cols: p.cols(),
            storage: Storage::Packed(Arc::new(p)),
            row0: 0,
        }
    }

    /// A masked (sparse) weight from its stored parts: the mask (`None` = dense values) and the
    /// kept values, each owned or a region of a mapped file; the parts are checked.
    pub fn masked(
        rows: usize,
        cols: usize,
        mask: Option<Buf<u64>>,
        values: MaskedValues,
    ) -> Result<Self, WeightError> {
        Ok(Self::from_masked(MaskedMatrix::new(
            rows, cols, mask, values,
        )?))
    }

    pub fn from_masked(m: MaskedMatrix) -> Self {
        Weight {
            rows: m.rows(),
            cols: m.cols(),
            storage: Storage::Masked(Arc::new(m)),
            row0: 0,
        }
    }

    /// A masked-packed (sparse and quantized) weight from its stored parts, each owned or a
    /// region of a mapped file; the parts are checked against each other.
    pub fn masked_packed(parts: MaskedPackedParts) -> Result<Self, WeightError> {
        let m = MaskedPackedMatrix::new(parts)?;
        Ok(Weight {
            rows: m.rows(),
            cols: m.cols(),
            storage: Storage::MaskedPacked(Arc::new(m)),
            row0: 0,
        })
    }

    /// A weight in one of llama.cpp's block formats (`blocks` owned or a region of a mapped
    /// file); the blocks are checked against the type and shape.
    pub fn ggml(
        ty: GgmlType,
        rows: usize,
        cols: usize,
        blocks: Buf<u8>,
    ) -> Result<Self, WeightError> {
        Ok(Self::from_ggml(GgmlMatrix::new(ty, rows, cols, blocks)?))
    }

    pub fn from_ggml(g: GgmlMatrix) -> Self {
        Weight {
            rows: g.rows(),
            cols: g.cols(),
            storage: Storage::Ggml(Arc::new(g)),
            row0: 0,
        }
    }

    /// The block matrix behind a ggml weight (the whole matrix, for a row slice too).
    pub fn as_ggml(&self) -> Option<&GgmlMatrix> {
        match &self.storage {
            Storage::Ggml(g) => Some(g),
            _ => None,
        }
    }

    /// How the weight is stored.
    pub fn kind(&self) -> WeightKind {
        match &self.storage {
            Storage::Packed(p) => WeightKind::Packed {
                bits: p.bits(),
                group_size: p.group_size(),
            },
            Storage::Masked(m) => WeightKind::Masked {
                values: m.values().dtype(),
                has_mask: m.mask().is_some(),
            },
            Storage::MaskedPacked(m) => WeightKind::MaskedPacked {
                bits: m.bits(),
                group_size: m.group_size(),
            },
            Storage::Ggml(g) => WeightKind::Ggml(g.ty()),
            _ => WeightKind::Dense(self.dtype()),
        }
    }

    /// The quantized matrix behind this weight and this weight's first row in it, for writers
    /// that store the codes as they are (exporters); `None` for other kinds.
    pub fn as_packed(&self) -> Option<(&PackedMatrix, usize)> {
        match &self.storage {
            Storage::Packed(p) => Some((p, self.row0)),
            _ => None,
        }
    }

    /// The sparse matrix behind this weight and this weight's first row in it; `None` for
    /// other kinds.
    pub fn as_masked(&self) -> Option<(&MaskedMatrix, usize)> {
        match &self.storage {
            Storage::Masked(m) => Some((m, self.row0)),
            _ => None,
        }
    }

    /// True for f32/f16/bf16 storage (which [`Weight::view`] can show).
    pub fn is_dense(&self) -> bool {
        matches!(self.kind(), WeightKind::Dense(_))
    }

    /// Bytes this weight's storage takes (for a row slice: its rows' share; a packed matrix's
    /// permutation counts in full).
    pub fn bytes(&self) -> usize {
        match &self.storage {
            Storage::Packed(p) => p.bytes_of_rows(self.rows),
            Storage::Masked(m) => m.bytes_of_rows(self.row0, self.rows),
            Storage::MaskedPacked(m) => m.bytes_of_rows(self.row0, self.rows),
            Storage::Ggml(g) => g.bytes_of_rows(self.rows),
            _ => self.numel() * self.dtype().size_of(),
        }
    }

    /// The element type of a dense weight. For compressed kinds, the type values are decoded
    /// from (f16 scales for packed, masked-packed and ggml blocks, f32 for `Q8_K`, the values'
    /// type for masked); see [`Weight::kind`].
    pub fn dtype(&self) -> DType {
        match &self.storage {
            Storage::F32(_) => DType::F32,
            Storage::F16(_) => DType::F16,
            Storage::BF16(_) => DType::BF16,
            Storage::Mapped { dtype, .. } => *dtype,
            Storage::Packed(_) | Storage::MaskedPacked(_) => DType::F16,
            Storage::Masked(m) => m.values().dtype(),
            Storage::Ggml(g) if g.ty() == GgmlType::Q8_K => DType::F32,
            Storage::Ggml(_) => DType::F16,
        }
    }

    pub fn numel(&self) -> usize {
        self.rows * self.cols
    }

    /// Rows `[first, first + count)` as a weight of their own, sharing the storage (for every
    /// kind: a view with a row offset, not a copy).
    pub fn row_slice(&self, first: usize, count: usize) -> Weight {
        assert!(first + count <= self.rows, "row slice out of range");
        Weight {
            rows: count,
            cols: self.cols,
            storage: self.storage.clone(),
            row0: self.row0 + first,
        }
    }

    /// The elements of a dense weight.
    ///
    /// # Panics
    /// On a packed or masked weight, which has no dense elements to show; use
    /// [`Weight::dense_view`] to ask, or [`Weight::decode_rows_into`] / [`Weight::to_f32_vec`]
    /// to decode.
    pub fn view(&self) -> WeightView<'_> {
        self.dense_view().unwrap_or_else(|| {
            panic!(
                "Weight::view on a {} weight (no dense elements); decode it with \
                 decode_rows_into or to_f32_vec",
                self.kind()
            )
        })
    }

    /// The elements of a dense weight, `None` for compressed kinds.
    pub fn dense_view(&self) -> Option<WeightView<'_>> {
        let (s, n) = (self.row0 * self.cols, self.numel());
        Some(match &self.storage {
            Storage::F32(v) => WeightView::F32(&v[s..s + n]),
            Storage::F16(v) => WeightView::F16(&v[s..s + n]),
            Storage::BF16(v) => WeightView::BF16(&v[s..s + n]),
            Storage::Mapped { map, offset, dtype } => {
                let bytes = &map[*offset..];
                match dtype {
                    DType::F32 => WeightView::F32(
                        &bytemuck::cast_slice(&bytes[..bytes.len() / 4 * 4])[s..s + n],
                    ),
                    DType::F16 => WeightView::F16(
                        &bytemuck::cast_slice(&bytes[..bytes.len() / 2 * 2])[s..s + n],
                    ),
                    DType::BF16 => WeightView::BF16(
                        &bytemuck::cast_slice(&bytes[..bytes.len() / 2 * 2])[s..s + n],
                    ),
                }
            }
            Storage::Packed(_)
            | Storage::Masked(_)
            | Storage::MaskedPacked(_)
            | Storage::Ggml(_) => return None,
        })
    }

    pub(crate) fn source(&self) -> Source<'_> {
        match &self.storage {
            Storage::Packed(p) => Source::Packed(p, self.row0),
            Storage::Masked(m) => Source::Masked(m, self.row0),
            Storage::MaskedPacked(m) => Source::MaskedPacked(m, self.row0),
            Storage::Ggml(g) => Source::Ggml(g, self.row0),
            _ => Source::Dense(self.dense_view().expect("dense storage")),
        }
    }

    /// Decodes rows `[first, first + out.len() / cols)` to f32 into `out` (row-major, original
    /// column order), for every kind.
    pub fn decode_rows_into(&self, first: usize, out: &mut [f32]) {
        let k = self.cols;
        assert_eq!(
            out.len() % k.max(1),
            0,
            "decode_rows_into: out is not whole rows"
        );
        let count = out.len().checked_div(k).unwrap_or(0);
        assert!(
            first + count <= self.rows,
            "decode_rows_into: rows out of range"
        );
        match self.source() {
            Source::Dense(v) => v.to_f32_into(first * k, out),
            Source::Packed(p, row0) => {
                let t = p.tables();
                match p.perm() {
                    None => t.rows_into(row0 + first, out),
                    Some(perm) => {
                        let mut row = vec![0f32; k];
                        for (i, dst) in out.chunks_exact_mut(k).enumerate() {
                            t.row_into(row0 + first + i, &mut row);
                            for (&c, &v) in perm.iter().zip(&row) {
                                dst[c as usize] = v;
                            }
                        }
                    }
                }
            }
            Source::Masked(m, row0) => m.decode_rows_into(row0 + first, out),
            Source::MaskedPacked(m, row0) => m.decode_rows_into(row0 + first, out),
            Source::Ggml(g, row0) => g.decode_rows_into(row0 + first, out),
        }
    }

    /// All elements as f32, decoded (a copy: for small tensors such as norms and biases, and
    /// for tests).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.numel()];
        self.decode_rows_into(0, &mut out);
        out
    }
}
