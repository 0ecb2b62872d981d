//! Parsing of the GGUF header: magic, version, metadata key/values and tensor infos.
//!
//! Everything here reads from the mapped bytes through a bounds-checked [`Reader`], so a
//! truncated or garbage file yields an error naming the byte offset and the field, never a
//! panic or a huge allocation.

use super::types::MetaValue;
use crate::error::{Error, Result};
use evopress_kernels::GgmlType;
use std::fmt::Display;
use std::path::Path;

pub(super) const MAGIC: &[u8; 4] = b"GGUF";
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays nested deeper than this are garbage (real files nest at most once).
const MAX_ARRAY_DEPTH: usize = 4;

/// A tensor as described in the header, before any name or layout translation.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// The GGUF name (`blk.0.attn_q.weight`).
    pub name: String,
    /// ggml dimensions, innermost (contiguous) first: the reverse of the HF shape.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset from the start of the data section, as stored in the file.
    pub offset: u64,
}

impl TensorInfo {
    pub fn numel(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Bytes of tensor data; `None` when the size overflows or rows are not whole blocks.
    pub fn n_bytes(&self) -> Option<u64> {
        let block = self.ggml_type.block_len() as u64;
        if !self
            .dims
            .first()
            .copied()
            .unwrap_or(1)
            .is_multiple_of(block)
        {
            return None;
        }
        let numel = self
            .dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))?;
        (numel / block).checked_mul(self.ggml_type.block_bytes() as u64)
    }
}

/// The parsed header; `data_start` is where tensor offsets count from.
pub(super) struct Header {
    pub version: u32,
    pub metadata: Vec<(String, MetaValue)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    pub data_start: u64,
}

/// A cursor over the file bytes whose every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn err(&self, msg: impl Display) -> Error {
        Error::format(self.path, format!("{msg} (at byte {})", self.pos))
    }

    fn bytes(&mut self, n: usize, what: &dyn Display) -> Result<&'a [u8]> {
        let left = self.buf.len() - self.pos;
        if n > left {
            return Err(self.err(format!(
                "file truncated while reading {what}: need {n} bytes, {left} left"
            )));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &dyn Display) -> Result<[u8; N]> {
        Ok(self.bytes(N, what)?.try_into().expect("length checked"))
    }

    fn u32(&mut self, what: &dyn Display) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Display) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items that each take at least `min_bytes` in the file. Checking it against
    /// the bytes left stops a garbage count from driving a huge allocation.
    ///
    /// `what` names the field for errors; it is a `Display` (usually `format_args!`) so that
    /// the 100k strings of a vocabulary cost no formatting unless something is wrong.
    fn count(&mut self, what: &dyn Display, min_bytes: u64) -> Result<usize> {
        let n = self.u64(what)?;
        let left = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min_bytes) > left {
            return Err(self.err(format!(
                "{what} is {n}, impossible with {left} bytes left (corrupt or truncated file)"
            )));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &dyn Display) -> Result<String> {
        let n = self.count(&format_args!("length of {what}"), 1)?;
        let at = self.pos;
        let bytes = self.bytes(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| {
            Error::format(self.path, format!("{what} at byte {at} is not valid UTF-8"))
        })
    }

    fn value(&mut self, type_id: u32, key: &str, depth: usize) -> Result<MetaValue> {
        let v = match type_id {
            0 => MetaValue::U8(self.array::<1>(&key)?[0]),
            1 => MetaValue::I8(i8::from_le_bytes(self.array(&key)?)),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(&key)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(&key)?)),
            4 => MetaValue::U32(self.u32(&key)?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(&key)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(&key)?)),
            7 => match self.array::<1>(&key)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(self.err(format!("key `{key}`: bool byte is {b}, not 0 or 1"))),
            },
            8 => MetaValue::String(self.string(&format_args!("value of key `{key}`"))?),
            9 => self.array_value(key, depth)?,
            10 => MetaValue::U64(self.u64(&key)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(&key)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(&key)?)),
            t => return Err(self.err(format!("key `{key}`: unknown metadata value type {t}"))),
        };
        Ok(v)
    }

    fn array_value(&mut self, key: &str, depth: usize) -> Result<MetaValue> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.err(format!("key `{key}`: arrays nested too deep")));
        }
        let elem_type = self.u32(&key)?;
        let min_bytes = match elem_type {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => 12,
            t => return Err(self.err(format!("key `{key}`: unknown array element type {t}"))),
        };
        let n = self.count(&format_args!("length of array `{key}`"), min_bytes)?;
        let items = (0..n)
            .map(|_| self.value(elem_type, key, depth + 1))
            .collect::<Result<Vec<_>>>()?;
        Ok(MetaValue::Array(items))
    }

    fn tensor_info(&mut self) -> Result<TensorInfo> {
        let name = self.string(&"tensor name")?;
        let n_dims = self.u32(&"tensor dimension count")?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(self.err(format!(
                "tensor `{name}` has {n_dims} dimensions (1..={MAX_DIMS} allowed)"
            )));
        }
        let dims = (0..n_dims)
            .map(|_| self.u64(&"tensor dimension"))
            .collect::<Result<Vec<_>>>()?;
        let type_id = self.u32(&"tensor type")?;
        let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
            self.err(format!(
                "tensor `{name}` has unknown tensor type id {type_id}"
            ))
        })?;
        let offset = self.u64(&"tensor data offset")?;
        Ok(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        })
    }
}

/// Parses the header and checks every tensor's extent against the file length.
pub(super) fn parse_header(buf: &[u8], path: &Path) -> Result<Header> {
    let mut r = Reader { buf, pos: 0, path };
    let magic = r.bytes(4, &"magic")?;
    if magic != MAGIC {
        return Err(Error::format(
            path,
            format!("not a GGUF file: magic is {magic:02x?}, expected \"GGUF\""),
        ));
    }
    let version = r.u32(&"version")?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(Error::Unsupported {
                path: path.into(),
                what: "GGUF version 1".into(),
                hint: "re-convert the model with a current llama.cpp".into(),
            })
        }
        v => {
            return Err(Error::format(
                path,
                format!("GGUF version {v:#x} is unknown (2 or 3 expected; a big-endian file?)"),
            ))
        }
    }
    // A tensor info takes at least 8 (name) + 4 + 8 + 4 + 8 bytes; a key/value 8 + 4 + 1.
    let n_tensors = r.count(&"tensor count", 32)?;
    let n_kv = r.count(&"metadata key count", 13)?;
    let metadata = (0..n_kv)
        .map(|_| {
            let key = r.string(&"metadata key")?;
            let type_id = r.u32(&key)?;
            let value = r.value(type_id, &key, 0)?;
            Ok((key, value))
        })
        .collect::<Result<Vec<_>>>()?;
    let tensors = (0..n_tensors)
        .map(|_| r.tensor_info())
        .collect::<Result<Vec<_>>>()?;
    let alignment = alignment(&metadata, path)?;
    let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
    let header = Header {
        version,
        metadata,
        tensors,
        alignment,
        data_start,
    };
    check_extents(&header, buf.len() as u64, path)?;
    Ok(header)
}

/// `general.alignment`, default 32; llama.cpp requires a power of two.
fn alignment(metadata: &[(String, MetaValue)], path: &Path) -> Result<u64> {
    let Some((_, v)) = metadata.iter().find(|(k, _)| k == "general.alignment") else {
        return Ok(32);
    };
    match v.as_i128() {
        Some(a) if a > 0 && (a as u64).is_power_of_two() && a <= 1 << 30 => Ok(a as u64),
        _ => Err(Error::Config {
            path: path.into(),
            key: "general.alignment".into(),
            msg: format!("{v} is not a power of two"),
        }),
    }
}

/// Every tensor must be aligned, made of whole blocks, and lie inside the file.
fn check_extents(h: &Header, file_len: u64, path: &Path) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for t in &h.tensors {
        let bad = |msg: String| Error::format(path, format!("tensor `{}`: {msg}", t.name));
        if !seen.insert(t.name.as_str()) {
            return Err(bad("appears twice in the header".into()));
        }
        if !t.offset.is_multiple_of(h.alignment) {
            return Err(bad(format!(
                "data offset {} is not a multiple of the alignment {}",
                t.offset, h.alignment
            )));
        }
        let n_bytes = t.n_bytes().ok_or_else(|| {
            bad(format!(
                "dims {:?} do not make whole {} blocks of {}",
                t.dims,
                t.ggml_type,
                t.ggml_type.block_len()
            ))
        })?;
        let start = h.data_start.saturating_add(t.offset);
        let end = start.saturating_add(n_bytes);
        if end > file_len {
            return Err(bad(format!(
                "data needs bytes {start}..{end} but the file has only {file_len} (truncated file?)"
            )));
        }
    }
    Ok(())
}
