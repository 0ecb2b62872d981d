//! A small GGUF v3 writer: metadata plus tensors whose bytes the caller has already encoded.
//! Export uses it to write llama.cpp-loadable files; tests use it to make synthetic models.

use super::parse::MAGIC;
use super::types::MetaValue;
use crate::error::{Error, Result};
use evopress_kernels::GgmlType;
use std::io::Write;
use std::path::Path;

/// Collects metadata and tensors in memory, then writes them in one go.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
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
        let numel: u64 = dims.iter().product();
        let (block, block_bytes) = (ty.block_len() as u64, ty.block_bytes() as u64);
        let expected = numel
            .is_multiple_of(block)
            .then_some(numel / block * block_bytes);
        if expected != Some(data.len() as u64) {
            return Err(Error::Invalid(format!(
                "GGUF writer: tensor `{name}` of type {ty} and dims {dims:?} needs {} bytes, got {}",
                expected.map_or("whole blocks and".into(), |e| e.to_string()),
                data.len()
            )));
        }
        self.tensors.push((name, dims.to_vec(), ty, data));
        Ok(self)
    }

    fn alignment(&self) -> u64 {
        self.metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_i128())
            .map_or(32, |a| a as u64)
    }

    /// The complete file contents.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
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
        for (name, dims, ty, data) in &self.tensors {
            put_str(&mut out, name);
            put_u32(&mut out, dims.len() as u32);
            dims.iter().for_each(|&d| put_u64(&mut out, d));
            put_u32(&mut out, ty.id());
            put_u64(&mut out, offset);
            offset = (offset + data.len() as u64).div_ceil(align) * align;
        }
        for (_, _, _, data) in &self.tensors {
            pad_to(&mut out, align);
            out.extend_from_slice(data);
        }
        Ok(out)
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        f.write_all(&bytes).map_err(|e| Error::io(path, e))
    }
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
