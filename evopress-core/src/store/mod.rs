//! The variant store: a database directory of compressed variants (docs/variant-store.md),
//! memory-mapped for reading, written atomically, resumable and checksummed. Backend-agnostic: a
//! backend decides which tensors make up a variant.
//!
//! ```text
//! <dir>/manifest.json              header, units and levels, files with xxh3, progress
//! <dir>/block-NNN.safetensors      every variant of block NNN's units
//! ```
//!
//! Tensors are named `<unit>/<level id>/<part>` (e.g. `model.layers.3.mlp.up_proj/-2/mask`)
//! in a standard safetensors container, so other tools can open a block file. The crate pads
//! the header to 8 bytes and lays tensors out by descending dtype size, so each tensor starts
//! at a multiple of its element size within the (page-aligned) map: typed slices are
//! zero-copy. [`VariantStore::open`] still checks every offset.

pub mod manifest;
pub mod writer;

pub use manifest::{
    block_file, CalibrationInfo, FileEntry, LevelEntry, Manifest, ModelInfo, StoreHeader, UnitEntry,
};
pub use writer::StoreWriter;

use crate::error::{Error, Result};
use half::f16;
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Element types a variant's tensors use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VariantDType {
    /// Bit masks, 64 weights per element.
    U64,
    /// Packed integer codes, permutations.
    U32,
    /// Values, scales, zero points.
    F16,
    F32,
    U8,
}

impl VariantDType {
    pub fn size_of(self) -> usize {
        match self {
            VariantDType::U64 => 8,
            VariantDType::U32 | VariantDType::F32 => 4,
            VariantDType::F16 => 2,
            VariantDType::U8 => 1,
        }
    }
    fn to_safetensors(self) -> Dtype {
        match self {
            VariantDType::U64 => Dtype::U64,
            VariantDType::U32 => Dtype::U32,
            VariantDType::F16 => Dtype::F16,
            VariantDType::F32 => Dtype::F32,
            VariantDType::U8 => Dtype::U8,
        }
    }
    fn from_safetensors(d: Dtype) -> Option<Self> {
        Some(match d {
            Dtype::U64 => VariantDType::U64,
            Dtype::U32 => VariantDType::U32,
            Dtype::F16 => VariantDType::F16,
            Dtype::F32 => VariantDType::F32,
            Dtype::U8 => VariantDType::U8,
            _ => return None,
        })
    }
}

/// A tensor to write: raw little-endian bytes with dtype and shape.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorData {
    pub dtype: VariantDType,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl TensorData {
    fn new(dtype: VariantDType, shape: &[usize], bytes: Vec<u8>) -> Self {
        let n: usize = shape.iter().product();
        assert_eq!(
            bytes.len(),
            n * dtype.size_of(),
            "tensor data != shape {shape:?}"
        );
        TensorData {
            dtype,
            shape: shape.to_vec(),
            bytes,
        }
    }
    pub fn u64(shape: &[usize], v: &[u64]) -> Self {
        Self::new(VariantDType::U64, shape, bytemuck::cast_slice(v).to_vec())
    }
    pub fn u32(shape: &[usize], v: &[u32]) -> Self {
        Self::new(VariantDType::U32, shape, bytemuck::cast_slice(v).to_vec())
    }
    pub fn f16(shape: &[usize], v: &[f16]) -> Self {
        Self::new(VariantDType::F16, shape, bytemuck::cast_slice(v).to_vec())
    }
    pub fn f32(shape: &[usize], v: &[f32]) -> Self {
        Self::new(VariantDType::F32, shape, bytemuck::cast_slice(v).to_vec())
    }
    pub fn u8(shape: &[usize], v: &[u8]) -> Self {
        Self::new(VariantDType::U8, shape, v.to_vec())
    }
}

impl safetensors::View for &TensorData {
    fn dtype(&self) -> Dtype {
        self.dtype.to_safetensors()
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// A stored tensor: a location in a mapped block file. Cheap to clone; keeps the map alive.
#[derive(Clone, Debug)]
pub struct RawTensor {
    pub map: Arc<Mmap>,
    /// Absolute byte offset in the file, a multiple of `dtype.size_of()`.
    pub offset: usize,
    pub dtype: VariantDType,
    pub shape: Vec<usize>,
}

impl RawTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn bytes(&self) -> &[u8] {
        &self.map[self.offset..self.offset + self.numel() * self.dtype.size_of()]
    }
    fn typed<T: bytemuck::Pod>(&self, want: VariantDType) -> &[T] {
        assert_eq!(
            self.dtype, want,
            "tensor is {:?}, read as {want:?}",
            self.dtype
        );
        bytemuck::cast_slice(self.bytes())
    }
    /// Panics if the tensor is not U64 (a backend reading its own format).
    pub fn as_u64(&self) -> &[u64] {
        self.typed(VariantDType::U64)
    }
    pub fn as_u32(&self) -> &[u32] {
        self.typed(VariantDType::U32)
    }
    pub fn as_f16(&self) -> &[f16] {
        self.typed(VariantDType::F16)
    }
    pub fn as_f32(&self) -> &[f32] {
        self.typed(VariantDType::F32)
    }
    pub fn as_u8(&self) -> &[u8] {
        self.typed(VariantDType::U8)
    }
}

/// An opened store: manifest plus every block file mapped and verified.
pub struct VariantStore {
    dir: PathBuf,
    manifest: Manifest,
    /// Tensor name → (file name, its map, offset, dtype, shape).
    index: HashMap<String, (String, RawTensor)>,
}

impl VariantStore {
    /// Reads the manifest, checks every listed file's size and xxh3 (fast: ~GB/s), maps it,
    /// indexes its tensors and checks that every float in it (values, scales, zeros) is
    /// finite. Files are verified in parallel. Errors name the file (and the tensor) and say
    /// what was expected.
    pub fn open(dir: &Path) -> Result<VariantStore> {
        let manifest = Manifest::read(dir)?;
        let names: Vec<&String> = manifest.files.keys().collect();
        let files = names
            .par_iter()
            .map(|name| open_file(dir, name, &manifest.files[*name]))
            .collect::<Result<Vec<_>>>()?;
        let mut index = HashMap::new();
        for (name, tensors) in names.into_iter().zip(files) {
            for (tname, raw) in tensors {
                index.insert(tname, (name.clone(), raw));
            }
        }
        Ok(VariantStore {
            dir: dir.into(),
            manifest,
            index,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn unit(&self, name: &str) -> Option<&UnitEntry> {
        self.manifest.unit(name)
    }

    /// The stored tensor `name` (`<unit>/<level>/<part>`); a missing one is an error naming
    /// the file its block would be in.
    pub fn tensor(&self, name: &str) -> Result<RawTensor> {
        match self.index.get(name) {
            Some((_, t)) => Ok(t.clone()),
            None => {
                let file = block_of(name)
                    .map(block_file)
                    .unwrap_or_else(|| "any block file".into());
                Err(Error::MissingTensor {
                    path: self.dir.join(file),
                    name: name.into(),
                })
            }
        }
    }
}

/// Maps one listed block file, checks its size and checksum against `want`, and returns its
/// tensors, each checked to be aligned and, for float dtypes, finite.
fn open_file(dir: &Path, name: &str, want: &FileEntry) -> Result<Vec<(String, RawTensor)>> {
    let path = dir.join(name);
    let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
    // SAFETY: store files are only ever replaced by rename, never modified in place.
    let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?);
    let got = FileEntry {
        bytes: map.len() as u64,
        xxh3: hex(xxhash_rust::xxh3::xxh3_64(&map)),
    };
    if got != *want {
        return Err(Error::format(
            &path,
            format!(
                "expected {} bytes with xxh3 {}, found {} bytes with xxh3 {}: the file is \
                 damaged; rebuild the database (delete the directory, or resume the build to \
                 rewrite this block)",
                want.bytes, want.xxh3, got.bytes, got.xxh3
            ),
        ));
    }
    let (header_len, meta) = SafeTensors::read_metadata(&map).map_err(|e| {
        let what = crate::hf::describe_safetensors_error(&map, &e);
        Error::format(&path, format!("bad safetensors file: {what}"))
    })?;
    let data_start = 8 + header_len;
    let mut out = Vec::new();
    for (tname, info) in meta.tensors() {
        let dtype = VariantDType::from_safetensors(info.dtype).ok_or_else(|| {
            Error::format(
                &path,
                format!("tensor `{tname}` has dtype {:?}", info.dtype),
            )
        })?;
        let offset = data_start + info.data_offsets.0;
        if offset % dtype.size_of() != 0 {
            return Err(Error::format(
                &path,
                format!(
                    "tensor `{tname}` starts at byte {offset}, not aligned to {}",
                    dtype.size_of()
                ),
            ));
        }
        let raw = RawTensor {
            map: map.clone(),
            offset,
            dtype,
            shape: info.shape.clone(),
        };
        check_finite(&tname, raw.dtype, raw.bytes())
            .map_err(|msg| Error::format(&path, format!("{msg}: rebuild the database")))?;
        out.push((tname, raw));
    }
    Ok(out)
}

/// Refuses a float tensor holding NaN or inf (a variant built from a broken Hessian, or bytes
/// damaged before their checksum was taken), naming the tensor and the first bad element.
pub(crate) fn check_finite(
    name: &str,
    dtype: VariantDType,
    bytes: &[u8],
) -> std::result::Result<(), String> {
    let bad = match dtype {
        VariantDType::F16 => (bytes.chunks_exact(2))
            .position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7c00 == 0x7c00)
            .map(|i| {
                (
                    i,
                    f16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f64(),
                )
            }),
        VariantDType::F32 => (bytes.chunks_exact(4))
            .position(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7f80_0000 == 0x7f80_0000)
            .map(|i| {
                let b: [u8; 4] = bytes[4 * i..4 * i + 4].try_into().expect("4 bytes");
                (i, f32::from_le_bytes(b) as f64)
            }),
        VariantDType::U64 | VariantDType::U32 | VariantDType::U8 => None,
    };
    match bad {
        Some((i, v)) => Err(format!(
            "tensor `{name}` holds {v} at element {i}, but a variant must be finite"
        )),
        None => Ok(()),
    }
}

/// The block of a tensor named `model.layers.<b>.…`.
fn block_of(name: &str) -> Option<usize> {
    name.strip_prefix("model.layers.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

fn hex(h: u64) -> String {
    format!("{h:016x}")
}

/// Size and xxh3 of a file, hashed through a map.
pub(crate) fn hash_file(path: &Path) -> Result<FileEntry> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let hash = if len == 0 {
        xxhash_rust::xxh3::xxh3_64(&[])
    } else {
        // SAFETY: read-only map of a file only this process writes (before this call).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        xxhash_rust::xxh3::xxh3_64(&map)
    };
    Ok(FileEntry {
        bytes: len,
        xxh3: hex(hash),
    })
}

#[cfg(test)]
mod tests;
