//! Weight matrices as the compute side sees them: a row-major `[rows, cols]` matrix whose
//! elements are f32, f16 or bf16, either owned or borrowed from a memory-mapped file.
//!
//! Keeping mapped weights in their file dtype (no f32 copy) is what lets a multi-GB model
//! run with one copy of its weights in RAM; the matmul converts tiles to f32 on the fly.

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
    /// Element offset of this matrix within `storage` (non-zero for row slices of a fused
    /// tensor such as Phi-3's `qkv_proj`, which are views, not copies).
    start: usize,
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
}

impl Weight {
    pub fn from_f32(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), rows * cols, "weight data length != rows * cols");
        Weight {
            rows,
            cols,
            storage: Storage::F32(Arc::new(data)),
            start: 0,
        }
    }
    pub fn from_f16(rows: usize, cols: usize, data: Vec<f16>) -> Self {
        assert_eq!(data.len(), rows * cols, "weight data length != rows * cols");
        Weight {
            rows,
            cols,
            storage: Storage::F16(Arc::new(data)),
            start: 0,
        }
    }
    pub fn from_bf16(rows: usize, cols: usize, data: Vec<bf16>) -> Self {
        assert_eq!(data.len(), rows * cols, "weight data length != rows * cols");
        Weight {
            rows,
            cols,
            storage: Storage::BF16(Arc::new(data)),
            start: 0,
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
        let end = offset + rows * cols * dtype.size_of();
        if end > map.len() {
            return Err(WeightError::OutOfBounds {
                offset,
                end,
                file_len: map.len(),
            });
        }
        let addr = map.as_ptr() as usize + offset;
        if !addr.is_multiple_of(dtype.size_of()) {
            return Err(WeightError::Misaligned {
                offset,
                align: dtype.size_of(),
            });
        }
        Ok(Weight {
            rows,
            cols,
            storage: Storage::Mapped { map, offset, dtype },
            start: 0,
        })
    }

    pub fn dtype(&self) -> DType {
        match &self.storage {
            Storage::F32(_) => DType::F32,
            Storage::F16(_) => DType::F16,
            Storage::BF16(_) => DType::BF16,
            Storage::Mapped { dtype, .. } => *dtype,
        }
    }

    pub fn numel(&self) -> usize {
        self.rows * self.cols
    }

    /// Rows `[first, first + count)` as a weight of their own, sharing the storage.
    pub fn row_slice(&self, first: usize, count: usize) -> Weight {
        assert!(first + count <= self.rows, "row slice out of range");
        Weight {
            rows: count,
            cols: self.cols,
            storage: self.storage.clone(),
            start: self.start + first * self.cols,
        }
    }

    pub fn view(&self) -> WeightView<'_> {
        let (s, n) = (self.start, self.numel());
        match &self.storage {
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
        }
    }

    /// All elements as f32 (a copy; for small tensors such as norms and biases).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.numel()];
        self.view().to_f32_into(0, &mut out);
        out
    }
}
