//! HF model directories: `config.json` plus `model.safetensors` (or a sharded
//! `model.safetensors.index.json` and its shards), and `tokenizer.json` beside them.
//!
//! Every safetensors file is memory-mapped once; tensors are zero-copy [`Weight`] views into
//! those maps, so a model costs one copy of its weights in RAM (the page cache's).

mod header;
mod shapes;
mod write;

pub(crate) use header::describe as describe_safetensors_error;
pub use shapes::{check_shapes, expected_tensors};
pub use write::write_hf_dir;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::source::TensorSource;
use evopress_kernels::{DType, Weight, WeightError};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File names, as transformers spells them. A single file takes precedence over an index,
/// as it does in transformers.
const CONFIG: &str = "config.json";
const SINGLE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";
const TOKENIZER: &str = "tokenizer.json";

/// An opened HF model directory.
pub struct HfDir {
    dir: PathBuf,
    config: ModelConfig,
    files: Vec<MappedFile>,
    /// Tensors in file order (files in index order, then by data offset).
    tensors: Vec<TensorEntry>,
    by_name: HashMap<String, usize>,
}

/// One memory-mapped safetensors file.
struct MappedFile {
    path: PathBuf,
    map: Arc<Mmap>,
}

/// Where one tensor's bytes are, as the header says (already validated against the file size).
struct TensorEntry {
    name: String,
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte offset of the first element from the start of the file.
    offset: usize,
}

impl HfDir {
    /// Opens `dir`: parses and validates `config.json`, maps every safetensors file and parses
    /// its header. Tensor data is not touched until [`TensorSource::weight`] is called.
    pub fn open(dir: impl AsRef<Path>) -> Result<HfDir> {
        let dir = dir.as_ref().to_path_buf();
        let config = ModelConfig::from_hf_json(&dir.join(CONFIG))?;
        let files = weight_files(&dir)?;
        let mut hf = HfDir {
            dir,
            config,
            files: Vec::with_capacity(files.len()),
            tensors: Vec::new(),
            by_name: HashMap::new(),
        };
        for (path, expected) in files {
            hf.add_file(path, &expected)?;
        }
        hf.check_all_used()?;
        Ok(hf)
    }

    /// Every tensor the files hold must be one the model reads: a `config.json` that declares
    /// fewer layers (or another layout) than the weights hold would otherwise run a different
    /// model than the checkpoint's, silently. Rotary `inv_freq` buffers (recomputed from
    /// `rope_theta`) and the stored copy of a tied `lm_head.weight` are the only tensors
    /// skipped.
    fn check_all_used(&self) -> Result<()> {
        let used: BTreeSet<String> = expected_tensors(&self.config)
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        let ignorable = |name: &str| {
            name.ends_with(".rotary_emb.inv_freq")
                || (name == "lm_head.weight" && self.config.tie_word_embeddings)
        };
        let unused: Vec<&TensorEntry> = (self.tensors.iter())
            .filter(|t| !used.contains(&t.name) && !ignorable(&t.name))
            .collect();
        let Some(first) = unused.first() else {
            return Ok(());
        };
        let mut names: Vec<&str> = unused.iter().take(5).map(|t| t.name.as_str()).collect();
        if unused.len() > names.len() {
            names.push("...");
        }
        let c = &self.config;
        Err(Error::format(
            &self.files[first.file].path,
            format!(
                "{} tensors are not used by the model {CONFIG} describes ({} layers of {}, \
                 hidden size {}): {}; does {CONFIG} declare fewer layers or another \
                 architecture than the checkpoint holds?",
                unused.len(),
                c.num_hidden_layers,
                c.arch.model_type(),
                c.hidden_size,
                names.join(", ")
            ),
        ))
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// `tokenizer.json` beside the weights, if the directory has one.
    pub fn tokenizer_path(&self) -> Option<PathBuf> {
        let path = self.dir.join(TOKENIZER);
        path.is_file().then_some(path)
    }

    /// Maps `path`, registers its tensors and checks that it holds every tensor in `expected`
    /// (the names the index assigns to it).
    fn add_file(&mut self, path: PathBuf, expected: &[String]) -> Result<()> {
        let map = Arc::new(map_file(&path)?);
        let (header_len, metadata) = SafeTensors::read_metadata(&map).map_err(|e| {
            Error::format(
                &path,
                format!(
                    "not a valid safetensors file: {}",
                    header::describe(&map, &e)
                ),
            )
        })?;
        let data_start = 8 + header_len;
        let file = self.files.len();
        let mut infos: Vec<_> = metadata.tensors().into_iter().collect();
        infos.sort_by_key(|(_, info)| info.data_offsets.0);
        for (name, info) in infos {
            if self.by_name.contains_key(&name) {
                return Err(Error::format(
                    &path,
                    format!("tensor `{name}` also appears in an earlier file"),
                ));
            }
            self.by_name.insert(name.clone(), self.tensors.len());
            self.tensors.push(TensorEntry {
                name,
                file,
                dtype: info.dtype,
                shape: info.shape.clone(),
                offset: data_start + info.data_offsets.0,
            });
        }
        for name in expected {
            if self.by_name.get(name).map(|&i| self.tensors[i].file) != Some(file) {
                return Err(Error::format(
                    self.dir.join(INDEX),
                    format!("maps tensor `{name}` to {}, which lacks it", path.display()),
                ));
            }
        }
        self.files.push(MappedFile { path, map });
        Ok(())
    }

    fn entry(&self, name: &str) -> Result<&TensorEntry> {
        self.by_name
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| Error::MissingTensor {
                path: self.dir.clone(),
                name: name.into(),
            })
    }
}

impl TensorSource for HfDir {
    fn path(&self) -> &Path {
        &self.dir
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.entry(name).ok().map(|t| t.shape.clone())
    }

    /// Unsupported dtypes are rejected here, when the tensor is read, naming it.
    fn weight(&self, name: &str) -> Result<Weight> {
        let t = self.entry(name)?;
        let file = &self.files[t.file];
        let unsupported = |what: String, hint: &str| Error::Unsupported {
            path: file.path.clone(),
            what: format!("tensor `{name}`: {what}"),
            hint: hint.into(),
        };
        let dtype = match t.dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            other => {
                return Err(unsupported(
                    format!("dtype {other:?}"),
                    "supported: F32, F16, BF16",
                ))
            }
        };
        let (rows, cols) = match t.shape[..] {
            [] => (1, 1),
            [n] => (1, n),
            [r, c] => (r, c),
            _ => {
                let hint = "supported: rank 0, 1 or 2";
                return Err(unsupported(format!("shape {:?}", t.shape), hint));
            }
        };
        match Weight::mapped(file.map.clone(), t.offset, dtype, rows, cols) {
            Ok(w) => Ok(w),
            Err(WeightError::Misaligned { .. }) => {
                Ok(owned_copy(&file.map, t.offset, dtype, rows, cols))
            }
            Err(e) => Err(Error::format(&file.path, format!("tensor `{name}`: {e}"))),
        }
    }

    fn names(&self) -> Vec<String> {
        self.tensors.iter().map(|t| t.name.clone()).collect()
    }
}

/// The safetensors files of `dir`, each with the tensor names the index assigns to it (none
/// for a single `model.safetensors`, whose header is the only authority).
fn weight_files(dir: &Path) -> Result<Vec<(PathBuf, Vec<String>)>> {
    let single = dir.join(SINGLE);
    if single.is_file() {
        return Ok(vec![(single, Vec::new())]);
    }
    let index = dir.join(INDEX);
    if !index.is_file() {
        let msg = format!("no model weights: neither {SINGLE} nor {INDEX} exists");
        return Err(Error::io(
            dir,
            std::io::Error::new(ErrorKind::NotFound, msg),
        ));
    }
    let weight_map = read_index(&index)?;
    let shards: BTreeSet<&String> = weight_map.values().collect();
    let mut files = Vec::with_capacity(shards.len());
    for shard in shards {
        let path = dir.join(shard);
        if !path.is_file() {
            return Err(Error::format(
                &index,
                format!("references shard `{shard}`, which does not exist"),
            ));
        }
        let names = weight_map
            .iter()
            .filter(|(_, file)| *file == shard)
            .map(|(name, _)| name.clone())
            .collect();
        files.push((path, names));
    }
    Ok(files)
}

/// The `weight_map` (tensor name -> shard file name) of a `model.safetensors.index.json`.
fn read_index(path: &Path) -> Result<HashMap<String, String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let index: Index = serde_json::from_str(&text)
        .map_err(|e| Error::format(path, format!("not a valid safetensors index: {e}")))?;
    Ok(index.weight_map)
}

fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only; like every mmap-based loader we rely on nobody truncating
    // or rewriting the file while it is open (our own writers replace files by rename).
    unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

/// An owned copy of a tensor whose bytes are not aligned for its dtype in the file (possible
/// when a writer did not pad the header to 8 bytes). Bounds were validated with the header.
fn owned_copy(map: &Mmap, offset: usize, dtype: DType, rows: usize, cols: usize) -> Weight {
    let bytes = &map[offset..offset + rows * cols * dtype.size_of()];
    match dtype {
        DType::F32 => Weight::from_f32(rows, cols, bytemuck::pod_collect_to_vec(bytes)),
        DType::F16 => Weight::from_f16(rows, cols, bytemuck::pod_collect_to_vec(bytes)),
        DType::BF16 => Weight::from_bf16(rows, cols, bytemuck::pod_collect_to_vec(bytes)),
    }
}
