//! [`Buf`]: a typed, read-only array that is either owned or a region of a memory-mapped file.
//! The compressed weight kinds keep each of their tables (codes, scales, mask, values) in one.

use super::WeightError;
use memmap2::Mmap;
use std::marker::PhantomData;
use std::sync::Arc;

/// `len` elements of `T`, owned (`Arc<Vec<T>>`, cheap to clone) or at a byte offset of a mapped
/// file (zero-copy). Mapped regions are checked for bounds and alignment when made, so
/// [`Buf::as_slice`] never fails.
#[derive(Debug)]
pub struct Buf<T>(Inner<T>);

#[derive(Debug)]
enum Inner<T> {
    Owned(Arc<Vec<T>>),
    Mapped {
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
        _t: PhantomData<fn() -> T>,
    },
}

impl<T> Clone for Buf<T> {
    fn clone(&self) -> Self {
        Buf(match &self.0 {
            Inner::Owned(v) => Inner::Owned(v.clone()),
            Inner::Mapped {
                map, offset, len, ..
            } => Inner::Mapped {
                map: map.clone(),
                offset: *offset,
                len: *len,
                _t: PhantomData,
            },
        })
    }
}

impl<T: bytemuck::Pod> Buf<T> {
    /// An owned buffer.
    pub fn owned(data: Vec<T>) -> Self {
        Buf(Inner::Owned(Arc::new(data)))
    }

    /// `len` elements of `T` at byte `offset` of `map` (e.g. a safetensors tensor's
    /// `data_offsets.0` plus the header length). Fails if the region runs past the file or is not
    /// aligned to `align_of::<T>()`.
    pub fn mapped(map: Arc<Mmap>, offset: usize, len: usize) -> Result<Self, WeightError> {
        check_region(&map, offset, len * size_of::<T>(), align_of::<T>())?;
        Ok(Buf(Inner::Mapped {
            map,
            offset,
            len,
            _t: PhantomData,
        }))
    }

    pub fn as_slice(&self) -> &[T] {
        match &self.0 {
            Inner::Owned(v) => v,
            Inner::Mapped {
                map, offset, len, ..
            } => bytemuck::cast_slice(&map[*offset..*offset + *len * size_of::<T>()]),
        }
    }

    pub fn len(&self) -> usize {
        match &self.0 {
            Inner::Owned(v) => v.len(),
            Inner::Mapped { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Storage size in bytes.
    pub fn bytes(&self) -> usize {
        self.len() * size_of::<T>()
    }

    /// True when the elements live in a mapped file.
    pub fn is_mapped(&self) -> bool {
        matches!(self.0, Inner::Mapped { .. })
    }
}

impl<T: bytemuck::Pod> From<Vec<T>> for Buf<T> {
    fn from(v: Vec<T>) -> Self {
        Buf::owned(v)
    }
}

/// Checks that bytes `[offset, offset + bytes)` lie in `map` and start `align`-aligned in memory.
pub(crate) fn check_region(
    map: &Mmap,
    offset: usize,
    bytes: usize,
    align: usize,
) -> Result<(), WeightError> {
    let end = offset.checked_add(bytes).ok_or(WeightError::OutOfBounds {
        offset,
        end: usize::MAX,
        file_len: map.len(),
    })?;
    if end > map.len() {
        return Err(WeightError::OutOfBounds {
            offset,
            end,
            file_len: map.len(),
        });
    }
    let addr = map.as_ptr() as usize + offset;
    if !addr.is_multiple_of(align) {
        return Err(WeightError::Misaligned { offset, align });
    }
    Ok(())
}
