//! What is wrong with a safetensors file the `safetensors` crate refused, in words: its errors
//! are bare variant names (`MetadataIncompleteBuffer`, `TensorInvalidInfo`) that say neither
//! which tensor nor whether the file is truncated or its header is bad. The file layout:
//!
//! ```text
//!   u64 LE  n                  header length
//!   n bytes JSON               { name: {dtype, shape, data_offsets: [begin, end]}, ... }
//!   data                       tensors back to back; offsets count from the data start
//! ```

use safetensors::SafeTensorError;
use serde_json::Value;

/// A sentence saying what `bytes` (a whole safetensors file) does wrong, for an error that
/// `SafeTensors::read_metadata` returned on it.
pub(crate) fn describe(bytes: &[u8], err: &SafeTensorError) -> String {
    use SafeTensorError as E;
    let file_len = bytes.len();
    let declared = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    match err {
        E::HeaderTooSmall => format!(
            "the file has {file_len} bytes, fewer than the 8-byte header length that starts a \
             safetensors file: truncated or empty file"
        ),
        E::HeaderTooLarge => format!(
            "the first 8 bytes declare a {}-byte header, over the format's 100 MB limit: not a \
             safetensors file",
            declared.unwrap_or(0)
        ),
        E::InvalidHeaderLength => format!(
            "the first 8 bytes declare a {}-byte header but the file has only {file_len} bytes: \
             truncated file, or not a safetensors file",
            declared.unwrap_or(0)
        ),
        E::InvalidHeader | E::InvalidHeaderStart | E::InvalidHeaderDeserialization => {
            "the header is not a JSON object of tensor descriptions: bad header, or not a \
             safetensors file"
                .to_string()
        }
        E::JsonError(e) => format!("the header is not valid: {e}: bad header"),
        E::MetadataIncompleteBuffer => match header(bytes) {
            Some((data_start, tensors)) => {
                let end = tensors.iter().map(|t| t.end).max().unwrap_or(0);
                let data = file_len.saturating_sub(data_start);
                if data < end {
                    format!(
                        "the header places tensor data up to byte {end} of the data section, \
                         but the file holds only {data} bytes of data: truncated file \
                         ({} bytes missing)",
                        end - data
                    )
                } else {
                    format!(
                        "the file holds {} bytes after the last tensor's data (byte {end} of \
                         the data section): trailing garbage or a bad header",
                        data - end
                    )
                }
            }
            None => "the tensor data does not cover the file exactly".to_string(),
        },
        E::TensorInvalidInfo | E::ValidationOverflow => match header(bytes) {
            Some((_, tensors)) => match tensors.iter().find(|t| t.need != Some(t.end - t.begin)) {
                Some(t) => format!(
                    "tensor `{}` is {} {:?}, which takes {} bytes, but its data_offsets \
                     [{}, {}] span {}: bad header",
                    t.name,
                    t.dtype,
                    t.shape,
                    t.need
                        .map_or_else(|| "an overflowing number of".into(), |n| n.to_string()),
                    t.begin,
                    t.end,
                    t.end - t.begin
                ),
                None => "a tensor's shape, dtype and data_offsets disagree: bad header".into(),
            },
            None => "a tensor's shape, dtype and data_offsets disagree: bad header".into(),
        },
        E::InvalidOffset(name) => format!(
            "tensor `{name}`'s data_offsets do not start where the previous tensor's data \
             ends: bad header"
        ),
        other => other.to_string(),
    }
}

/// One tensor as the header describes it.
struct Described {
    name: String,
    dtype: String,
    shape: Vec<u64>,
    begin: usize,
    end: usize,
    /// Bytes the dtype and shape take (`None`: unknown dtype or overflow).
    need: Option<usize>,
}

/// The data start and the tensors of a header that parses as JSON, sorted by offset.
fn header(bytes: &[u8]) -> Option<(usize, Vec<Described>)> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let json: Value = serde_json::from_slice(bytes.get(8..8usize.checked_add(n)?)?).ok()?;
    let mut tensors = Vec::new();
    for (name, info) in json.as_object()? {
        if name == "__metadata__" {
            continue;
        }
        let dtype = info.get("dtype")?.as_str()?.to_string();
        let shape: Vec<u64> = (info.get("shape")?.as_array()?.iter())
            .map(Value::as_u64)
            .collect::<Option<_>>()?;
        let offsets = info.get("data_offsets")?.as_array()?;
        let (begin, end) = (
            offsets.first()?.as_u64()? as usize,
            offsets.get(1)?.as_u64()? as usize,
        );
        let need = shape
            .iter()
            .try_fold(dtype_size(&dtype)? as u64, |acc, &d| acc.checked_mul(d))
            .map(|b| b as usize);
        tensors.push(Described {
            name: name.clone(),
            dtype,
            shape,
            begin,
            end: end.max(begin),
            need,
        });
    }
    tensors.sort_by_key(|t| t.begin);
    Some((8 + n, tensors))
}

fn dtype_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" => 8,
        _ => return None,
    })
}
