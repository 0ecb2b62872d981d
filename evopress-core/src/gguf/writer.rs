//! A small GGUF v3 writer: metadata plus tensors whose bytes the caller encodes, in any ggml
//! type (F16, Q4_1, Q8_0, ...; the writer only checks the byte count against the type's block
//! size). Export uses it to write llama.cpp-loadable files; tests use it to make synthetic
//! models.
//!
//! A tensor's bytes may be given now ([`GgufWriter::add_tensor`]) or as an encoder run while
//! the file is written ([`GgufWriter::add_tensor_with`]), so a multi-GB model is never held
//! encoded in memory at once.

use super::parse::MAGIC;
use super::types::MetaValue;
use crate::error::{Error, Result};
use crate::fsutil::write_atomically_with;
use evopress_kernels::GgmlType;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Produces one tensor's encoded bytes when the file is written.
pub type TensorEncoder = Box<dyn FnOnce() -> Result<Vec<u8>> + Send>;

enum TensorBytes {
    Ready(Vec<u8>),
    Deferred(TensorEncoder),
}

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    len: u64,
    bytes: TensorBytes,
}

/// Collects metadata and tensors, then writes them in one go.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<PendingTensor>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a metadata key. A `general.alignment` value (u32) sets the data alignment.
    pub fn add_meta(&mut self, key: impl Into<String>, value: MetaValue) -> &mut Self {
        self.metadata.push((key.into(), value));
        self
    }

    /// Adds a tensor under its GGUF name with ggml dims (innermost first) and its encoded
    /// bytes, whose length must match the dims and type.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ty: GgmlType,
        data: Vec<u8>,
    ) -> Result<&mut Self> {
        let name = name.into();
        let len = encoded_len(&name, dims, ty)?;
        if len != data.len() as u64 {
            return Err(Error::Invalid(format!(
                "GGUF writer: tensor `{name}` of type {ty} and dims {dims:?} needs {len} bytes, \
                 got {}",
                data.len()
            )));
        }
        self.tensors.push(PendingTensor {
            name,
            dims: dims.to_vec(),
            ty,
            len,
            bytes: TensorBytes::Ready(data),
        });
        Ok(self)
    }

    /// Adds a tensor whose bytes `encode` produces while the file is written (checked then
    /// against the dims and type, like [`add_tensor`](Self::add_tensor)).
    pub fn add_tensor_with(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ty: GgmlType,
        encode: TensorEncoder,
    ) -> Result<&mut Self> {
        let name = name.into();
        let len = encoded_len(&name, dims, ty)?;
        self.tensors.push(PendingTensor {
            name,
            dims: dims.to_vec(),
            ty,
            len,
            bytes: TensorBytes::Deferred(encode),
        });
        Ok(self)
    }

    fn alignment(&self) -> u64 {
        self.metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_i128())
            .map_or(32, |a| a as u64)
    }

    /// Header, metadata and tensor descriptions, padded to the data alignment.
    fn header(&self) -> Result<Vec<u8>> {
        let align = self.alignment();
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        put_u32(&mut out, 3);
        put_u64(&mut out, self.tensors.len() as u64);
        put_u64(&mut out, self.metadata.len() as u64);
        for (key, value) in &self.metadata {
            put_str(&mut out, key);
            put_u32(&mut out, value.type_id());
            put_value(&mut out, key, value)?;
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            put_u32(&mut out, t.dims.len() as u32);
            t.dims.iter().for_each(|&d| put_u64(&mut out, d));
            put_u32(&mut out, t.ty.id());
            put_u64(&mut out, offset);
            offset = (offset + t.len).div_ceil(align) * align;
        }
        pad_to(&mut out, align);
        Ok(out)
    }

    /// Writes the whole file to `out`, encoding deferred tensors one at a time.
    fn write_to(self, out: &mut impl Write, path: &Path) -> Result<()> {
        let align = self.alignment();
        let io = |e| Error::io(path, e);
        out.write_all(&self.header()?).map_err(io)?;
        let mut written = 0u64;
        for t in self.tensors {
            // Pad up to the tensor's offset (no padding after the last tensor).
            let pad = (written.div_ceil(align) * align - written) as usize;
            out.write_all(&vec![0u8; pad]).map_err(io)?;
            written += pad as u64;
            let data = match t.bytes {
                TensorBytes::Ready(d) => d,
                TensorBytes::Deferred(encode) => encode()?,
            };
            if data.len() as u64 != t.len {
                return Err(Error::Invalid(format!(
                    "GGUF writer: the encoder of tensor `{}` ({} {:?}) produced {} bytes, {} \
                     expected",
                    t.name,
                    t.ty,
                    t.dims,
                    data.len(),
                    t.len
                )));
            }
            out.write_all(&data).map_err(io)?;
            written += t.len;
        }
        Ok(())
    }

    /// The complete file contents (for tests that corrupt them).
    pub fn to_bytes(self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.write_to(&mut out, Path::new("<memory>"))?;
        Ok(out)
    }

    /// Writes the file atomically (temporary file, sync, rename).
    pub fn write(self, path: &Path) -> Result<()> {
        write_atomically_with(path, |tmp| {
            let f = std::fs::File::create(tmp).map_err(|e| Error::io(tmp, e))?;
            let mut w = BufWriter::new(f);
            self.write_to(&mut w, tmp)?;
            w.flush().map_err(|e| Error::io(tmp, e))
        })
    }
}

/// Bytes of a tensor of `dims` in type `ty`: whole blocks along the innermost dim.
fn encoded_len(name: &str, dims: &[u64], ty: GgmlType) -> Result<u64> {
    let numel: u64 = dims.iter().product();
    let (block, block_bytes) = (ty.block_len() as u64, ty.block_bytes() as u64);
    let row = dims.first().copied().unwrap_or(1);
    if !row.is_multiple_of(block) {
        return Err(Error::Invalid(format!(
            "GGUF writer: tensor `{name}` of type {ty} has rows of {row} elements, not whole \
             blocks of {block}"
        )));
    }
    Ok(numel / block * block_bytes)
}

fn pad_to(out: &mut Vec<u8>, align: u64) {
    let len = (out.len() as u64).div_ceil(align) * align;
    out.resize(len as usize, 0);
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, key: &str, v: &MetaValue) -> Result<()> {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => put_u32(out, *x),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(u8::from(*x)),
        MetaValue::String(s) => put_str(out, s),
        MetaValue::U64(x) => put_u64(out, *x),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Array(items) => {
            // The element type is stored once; an empty array's type does not matter.
            let elem = items.first().map_or(0, MetaValue::type_id);
            if items.iter().any(|x| x.type_id() != elem) {
                return Err(Error::Invalid(format!(
                    "GGUF writer: metadata array `{key}` mixes element types"
                )));
            }
            put_u32(out, elem);
            put_u64(out, items.len() as u64);
            for item in items {
                put_value(out, key, item)?;
            }
        }
    }
    Ok(())
}
