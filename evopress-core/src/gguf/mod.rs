//! GGUF files, llama.cpp's single-file model format: a header of typed metadata and tensor
//! descriptions, then aligned tensor data, here memory-mapped.
//!
//! [`GgufFile`] presents the tensors through [`TensorSource`] under HF names and shapes, with
//! llama.cpp's Q/K row permutation undone, so the model code never sees a GGUF convention.
//! Plain F32/F16/BF16 tensors stay zero-copy views of the map; tensors in llama.cpp's block
//! formats stay mapped blocks multiplied from storage, or are decoded at load, as
//! [`GgufWeights`] says. The block formats themselves live in
//! [`evopress_kernels::weight::ggml`].

mod names;
mod parse;
mod permute;
mod types;
mod writer;

pub use evopress_kernels::GgmlType;
pub use names::{gguf_name, hf_name};
pub use parse::TensorInfo;
pub use permute::unpermuted_source_row;
pub use types::MetaValue;
pub use writer::GgufWriter;

use crate::config::{Arch, ModelConfig};
use crate::error::{Error, Result};
use crate::source::TensorSource;
use evopress_kernels::weight::ggml;
use evopress_kernels::{Buf, DType, Weight};
use half::f16;
use memmap2::Mmap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a tensor in a llama.cpp block format (`Q4_K`, `Q8_0`, ...) becomes when loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GgufWeights {
    /// The blocks, mapped from the file, decoded tile by tile inside every matmul: the
    /// weights take the file's size in memory, and values are exactly llama.cpp's.
    #[default]
    Packed,
    /// Decoded to f32 at load: exact, 4 bytes per weight.
    F32,
    /// Decoded to f32 then rounded to f16 at load: 2 bytes per weight, not exact.
    F16,
}

impl GgufWeights {
    pub const NAMES: [&'static str; 3] = ["packed", "f32", "f16"];

    /// The name [`from_name`](Self::from_name) reads.
    pub fn name(self) -> &'static str {
        match self {
            GgufWeights::Packed => "packed",
            GgufWeights::F32 => "f32",
            GgufWeights::F16 => "f16",
        }
    }

    /// `packed`, `f32` or `f16`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "packed" => Some(GgufWeights::Packed),
            "f32" => Some(GgufWeights::F32),
            "f16" => Some(GgufWeights::F16),
            _ => None,
        }
    }
}

/// An open, validated GGUF file. Opening parses the header and checks that every tensor's
/// data lies inside the file; tensor data is only touched by [`TensorSource::weight`].
pub struct GgufFile {
    path: PathBuf,
    map: Arc<Mmap>,
    version: u32,
    alignment: u64,
    data_start: u64,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<TensorInfo>,
    /// The HF name of each tensor, index-aligned with `tensors`.
    hf_names: Vec<String>,
    by_hf_name: HashMap<String, usize>,
    weights: GgufWeights,
}

impl GgufFile {
    /// Maps and parses `path` (GGUF v2 or v3).
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; as with any mmap, the file must not be truncated by
        // another process while it is open.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let header = parse::parse_header(&map, path)?;
        let arch = header
            .metadata
            .iter()
            .find(|(k, _)| k == "general.architecture")
            .and_then(|(_, v)| v.as_str());
        let fused_gate_up = arch == Some("phi3");
        let hf_names: Vec<String> = header
            .tensors
            .iter()
            .map(|t| names::hf_name(&t.name, fused_gate_up).unwrap_or_else(|| t.name.clone()))
            .collect();
        let by_hf_name = hf_names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        Ok(GgufFile {
            path: path.into(),
            map: Arc::new(map),
            version: header.version,
            alignment: header.alignment,
            data_start: header.data_start,
            metadata: header.metadata,
            tensors: header.tensors,
            hf_names,
            by_hf_name,
            weights: GgufWeights::default(),
        })
    }

    /// What block-format tensors load as from now on (default [`GgufWeights::Packed`]).
    pub fn set_weights(&mut self, weights: GgufWeights) {
        self.weights = weights;
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// `general.alignment` (32 when absent): tensor data offsets are multiples of it.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Every metadata key and value, in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }

    /// Tensor descriptions under their GGUF names, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Bytes the tensors held in llama.cpp block formats take once decoded to f32: what
    /// loading with [`GgufWeights::F32`] adds to memory over [`GgufWeights::Packed`].
    pub fn decoded_f32_bytes(&self) -> u64 {
        self.tensors
            .iter()
            .filter(|t| !matches!(t.ggml_type, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16))
            .map(|t| 4 * t.numel())
            .sum()
    }

    /// A tensor's encoded bytes as stored (any ggml type), for writers that copy tensors
    /// unchanged. Opening checked that they lie inside the file.
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        let start = self.data_offset(t) as usize;
        let len = t.n_bytes().expect("checked at open") as usize;
        &self.map[start..start + len]
    }

    /// Byte offset of a tensor's data in the file.
    pub fn data_offset(&self, t: &TensorInfo) -> u64 {
        self.data_start + t.offset
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn config_err(&self, key: &str, msg: impl Into<String>) -> Error {
        Error::Config {
            path: self.path.clone(),
            key: key.into(),
            msg: msg.into(),
        }
    }

    /// The value of `key` converted by `conv`; errors say whether the key is missing or of
    /// the wrong type (`expected` names the wanted type).
    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        conv: impl FnOnce(&'a MetaValue) -> Option<T>,
    ) -> Result<T> {
        let v = self
            .get(key)
            .ok_or_else(|| self.config_err(key, "missing from the GGUF metadata"))?;
        conv(v).ok_or_else(|| {
            self.config_err(
                key,
                format!("expected {expected}, found {} {v}", v.type_name()),
            )
        })
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.typed(key, "a string", MetaValue::as_str)
    }

    /// Any integer type whose value fits in a u32.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.typed(key, "an integer in u32 range", |v| {
            v.as_i128().and_then(|x| u32::try_from(x).ok())
        })
    }

    /// An f32 or f64 value.
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.typed(key, "a float", MetaValue::as_f32)
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        self.typed(key, "a bool", MetaValue::as_bool)
    }

    pub fn get_array(&self, key: &str) -> Result<&[MetaValue]> {
        self.typed(key, "an array", MetaValue::as_array)
    }

    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        self.typed(key, "an array of strings", |v| {
            v.as_array()?.iter().map(MetaValue::as_str).collect()
        })
    }

    /// An array of any integer type, widened to i64.
    pub fn get_int_array(&self, key: &str) -> Result<Vec<i64>> {
        self.typed(key, "an array of integers", |v| {
            v.as_array()?
                .iter()
                .map(|x| x.as_i128().and_then(|i| i64::try_from(i).ok()))
                .collect()
        })
    }

    /// `Ok(None)` when `key` is absent, otherwise `get(self, key)`.
    fn optional<'a, T>(
        &'a self,
        key: &str,
        get: impl FnOnce(&'a Self, &str) -> Result<T>,
    ) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => get(self, key).map(Some),
        }
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    fn info(&self, hf_name: &str) -> Option<&TensorInfo> {
        self.by_hf_name.get(hf_name).map(|&i| &self.tensors[i])
    }

    /// The model hyper-parameters from the metadata (`{arch}.block_count` etc.) and the
    /// tensor list (vocabulary size, tied embeddings, biases).
    pub fn model_config(&self) -> Result<ModelConfig> {
        let arch_name = self.architecture()?;
        let arch = match arch_name {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "phi3" => Arch::Phi3,
            other => {
                return Err(Error::Unsupported {
                    path: self.path.clone(),
                    what: format!("general.architecture `{other}`"),
                    hint: "supported: llama (also Mistral), qwen2, phi3".into(),
                })
            }
        };
        self.check_rope_scaling(arch_name)?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let count = |k: &str| self.get_u32(&key(k)).map(|v| v as usize);
        let n_head = count("attention.head_count")?;
        if n_head == 0 {
            // Checked before the head size is derived from it.
            return Err(self.config_err(&key("attention.head_count"), "must be positive"));
        }
        let hidden = count("embedding_length")?;
        let head_dim = match self.optional(&key("attention.key_length"), Self::get_u32)? {
            Some(d) => d as usize,
            None => hidden / n_head,
        };
        self.check_full_rotary(arch_name, head_dim)?;
        let token_ids = |k: &str| self.optional(&format!("tokenizer.ggml.{k}"), Self::get_u32);
        let cfg = ModelConfig {
            arch,
            hidden_size: hidden,
            intermediate_size: count("feed_forward_length")?,
            num_hidden_layers: count("block_count")?,
            num_attention_heads: n_head,
            num_key_value_heads: self
                .optional(&key("attention.head_count_kv"), Self::get_u32)?
                .map_or(n_head, |v| v as usize),
            head_dim,
            vocab_size: self.vocab_rows()?,
            rms_norm_eps: self.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
            rope_theta: self
                .optional(&key("rope.freq_base"), Self::get_f32)?
                .unwrap_or(10000.0),
            rope_scaling: None,
            max_position_embeddings: count("context_length")?,
            tie_word_embeddings: self.info("lm_head.weight").is_none(),
            attention_bias: self.info("model.layers.0.self_attn.q_proj.bias").is_some()
                || self
                    .info("model.layers.0.self_attn.qkv_proj.bias")
                    .is_some(),
            bos_token_id: token_ids("bos_token_id")?,
            eos_token_id: token_ids("eos_token_id")?,
        };
        // The metadata key (or tensor) each field was read or derived from.
        let has = |k: &str| self.get(&key(k)).is_some();
        let (kv_from, dim_from) = (has("attention.head_count_kv"), has("attention.key_length"));
        let source = |field: &str| match field {
            "hidden_size" => key("embedding_length"),
            "intermediate_size" => key("feed_forward_length"),
            "num_hidden_layers" => key("block_count"),
            "num_attention_heads" => key("attention.head_count"),
            "num_key_value_heads" if kv_from => key("attention.head_count_kv"),
            "num_key_value_heads" => format!(
                "{} (no {} key: as many KV heads as query heads)",
                key("attention.head_count"),
                key("attention.head_count_kv")
            ),
            "head_dim" if dim_from => key("attention.key_length"),
            "head_dim" => format!(
                "{} / {}",
                key("embedding_length"),
                key("attention.head_count")
            ),
            "vocab_size" => "tensor token_embd.weight (its rows)".to_string(),
            "rms_norm_eps" => key("attention.layer_norm_rms_epsilon"),
            "rope_theta" => key("rope.freq_base"),
            other => other.to_string(),
        };
        cfg.validate(&self.path, &source)?;
        Ok(cfg)
    }

    /// Rows of the token embedding: the vocabulary size the model computes logits over.
    fn vocab_rows(&self) -> Result<usize> {
        let name = "model.embed_tokens.weight";
        match self.shape(name).as_deref() {
            Some([rows, _]) => Ok(*rows),
            Some(other) => Err(Error::format(
                &self.path,
                format!("tensor `token_embd.weight` has shape {other:?}, expected 2-D"),
            )),
            None => Err(Error::MissingTensor {
                path: self.path.clone(),
                name: "token_embd.weight".into(),
            }),
        }
    }

    /// RoPE scaling in GGUF is either a scaling type key or precomputed per-frequency factor
    /// tensors; neither maps onto the config's Llama-3 parameters, so refuse rather than run
    /// a subtly wrong model.
    fn check_rope_scaling(&self, arch: &str) -> Result<()> {
        let key = format!("{arch}.rope.scaling.type");
        let scaling = self.optional(&key, Self::get_str)?;
        let what = match scaling {
            Some(kind) if kind != "none" => format!("RoPE scaling `{kind}` ({key})"),
            _ => match ["rope_freqs.weight", "rope_factors_long.weight"]
                .into_iter()
                .find(|n| self.info(n).is_some())
            {
                Some(tensor) => format!("RoPE frequency factors (tensor `{tensor}`)"),
                None => return Ok(()),
            },
        };
        Err(Error::Unsupported {
            path: self.path.clone(),
            what,
            hint: "load the model from its HF checkpoint instead".into(),
        })
    }

    /// The forward pass rotates whole heads; partial rotary embeddings are not implemented.
    fn check_full_rotary(&self, arch: &str, head_dim: usize) -> Result<()> {
        let key = format!("{arch}.rope.dimension_count");
        match self.optional(&key, Self::get_u32)? {
            Some(d) if d as usize != head_dim => Err(Error::Unsupported {
                path: self.path.clone(),
                what: format!("partial rotary embedding ({key} = {d}, head_dim = {head_dim})"),
                hint: "RoPE must cover the whole head".into(),
            }),
            _ => Ok(()),
        }
    }

    /// For a llama-arch q/k projection (weight or bias): the head count its rows were
    /// permuted over by llama.cpp's converter, with the metadata key it was read from. Other
    /// architectures are stored unpermuted.
    fn permuted_heads(&self, hf_name: &str) -> Result<Option<(&'static str, usize)>> {
        if self.architecture().ok() != Some("llama") {
            return Ok(None);
        }
        let key = if hf_name.contains("self_attn.q_proj.") {
            "llama.attention.head_count"
        } else if hf_name.contains("self_attn.k_proj.") {
            // Files without the KV key have as many KV heads as query heads.
            match self.get("llama.attention.head_count_kv") {
                Some(_) => "llama.attention.head_count_kv",
                None => "llama.attention.head_count",
            }
        } else {
            return Ok(None);
        };
        self.get_u32(key).map(|n| Some((key, n as usize)))
    }

    /// The tensor's data as a weight in file layout (GGUF row order).
    fn load(&self, t: &TensorInfo, rows: usize, cols: usize) -> Result<Weight> {
        let offset = self.data_offset(t) as usize;
        let tensor_err = |e: &dyn std::fmt::Display| {
            Error::format(&self.path, format!("tensor `{}`: {e}", t.name))
        };
        let plain = match t.ggml_type {
            GgmlType::F32 => Some(DType::F32),
            GgmlType::F16 => Some(DType::F16),
            GgmlType::BF16 => Some(DType::BF16),
            _ => None,
        };
        if let Some(dtype) = plain {
            return Weight::mapped(self.map.clone(), offset, dtype, rows, cols)
                .map_err(|e| tensor_err(&e));
        }
        if !t.ggml_type.is_decodable() {
            let decodable: Vec<String> =
                GgmlType::DECODABLE.iter().map(|t| t.to_string()).collect();
            return Err(Error::Unsupported {
                path: self.path.clone(),
                what: format!("tensor `{}` of type {}", t.name, t.ggml_type),
                hint: format!("loadable types: {}", decodable.join(", ")),
            });
        }
        let n_bytes = t.n_bytes().expect("checked at open") as usize;
        match self.weights {
            GgufWeights::Packed => {
                let blocks =
                    Buf::mapped(self.map.clone(), offset, n_bytes).map_err(|e| tensor_err(&e))?;
                Weight::ggml(t.ggml_type, rows, cols, blocks).map_err(|e| tensor_err(&e))
            }
            GgufWeights::F32 => {
                let bytes = &self.map[offset..offset + n_bytes];
                let data =
                    ggml::decode_rows(t.ggml_type, bytes, cols).map_err(|e| tensor_err(&e))?;
                Ok(Weight::from_f32(rows, cols, data))
            }
            GgufWeights::F16 => {
                // Through an f32 buffer of a few rows, so no f32 copy of the tensor exists.
                const ROWS: usize = 64;
                let row_bytes = n_bytes.checked_div(rows).unwrap_or(0);
                let mut data = vec![f16::ZERO; rows * cols];
                let mut buf = vec![0f32; ROWS * cols];
                for (i, out) in data.chunks_mut(ROWS * cols.max(1)).enumerate() {
                    let n = out.len() / cols.max(1);
                    let at = offset + i * ROWS * row_bytes;
                    let bytes = &self.map[at..at + n * row_bytes];
                    ggml::decode_rows_into(t.ggml_type, bytes, cols, &mut buf[..out.len()])
                        .map_err(|e| tensor_err(&e))?;
                    for (o, &x) in out.iter_mut().zip(&buf) {
                        *o = f16::from_f32(x);
                    }
                }
                Ok(Weight::from_f16(rows, cols, data))
            }
        }
    }
}

impl TensorSource for GgufFile {
    fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF dims reversed: `[out, in]` for a linear.
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let t = self.info(name)?;
        Some(t.dims.iter().rev().map(|&d| d as usize).collect())
    }

    fn weight(&self, name: &str) -> Result<Weight> {
        let t = self.info(name).ok_or_else(|| Error::MissingTensor {
            path: self.path.clone(),
            name: name.into(),
        })?;
        // The innermost ggml dim is the row; all outer dims flatten into rows.
        let cols = t.dims[0] as usize;
        let rows = (t.numel() / t.dims[0].max(1)) as usize;
        let w = self.load(t, rows, cols)?;
        let Some(n_heads) = self.permuted_heads(name)? else {
            return Ok(w);
        };
        let (key, n_heads) = n_heads;
        let out_features = if w.rows == 1 { w.cols } else { w.rows };
        if n_heads == 0 || !out_features.is_multiple_of(2 * n_heads) {
            return Err(Error::Config {
                path: self.path.clone(),
                key: key.into(),
                msg: format!(
                    "{n_heads} heads: tensor `{}` has {out_features} output rows, which do not \
                     split into {n_heads} heads of rotary pairs",
                    t.name
                ),
            });
        }
        Ok(permute::unpermute(&w, n_heads))
    }

    fn names(&self) -> Vec<String> {
        self.hf_names.clone()
    }
}
