//! The TOML file that describes a compression run: model, data, fitness, backend, search
//! hyper-parameters and where results go. Unknown keys and bad values are errors that name
//! the key and the line (toml's span-aware messages).

use anyhow::{bail, Context, Result};
use evopress_core::data::{self, Sampling, TokenizedFile};
use evopress_core::fitness::FitnessKind;
use evopress_core::search::SearchConfig;
use evopress_core::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub model: ModelSection,
    pub calibration: CalibrationSection,
    pub eval: EvalSection,
    #[serde(default)]
    pub fitness: FitnessSection,
    pub backend: BackendSection,
    pub search: SearchConfig,
    pub output: OutputSection,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A `.gguf` file or an HF directory.
    pub path: PathBuf,
}

/// Calibration text: files (glob patterns allowed) cut into windows.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationSection {
    pub files: Vec<String>,
    pub seq_len: usize,
    /// Number of windows (calibration tokens = windows x seq_len).
    pub windows: usize,
    #[serde(default = "default_sampling")]
    pub sampling: Sampling,
    #[serde(default)]
    pub seed: u64,
}

fn default_sampling() -> Sampling {
    Sampling::Random
}

/// Held-out text for the before/after perplexity.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    pub files: Vec<String>,
    pub seq_len: usize,
    /// At most this many windows (default: all).
    pub windows: Option<usize>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FitnessSection {
    #[serde(default = "default_fitness")]
    pub kind: FitnessKindName,
    /// k for `topk_kl`.
    #[serde(default = "default_topk")]
    pub k: usize,
    /// Refuse dense targets larger than this.
    #[serde(default = "default_max_target_gb")]
    pub max_target_gb: f64,
    /// Largest per-stage cache of the parent's block inputs (incremental evaluation);
    /// 0 turns incremental evaluation off.
    #[serde(default = "default_stage_cache_gb")]
    pub stage_cache_gb: f64,
}

impl Default for FitnessSection {
    fn default() -> Self {
        FitnessSection {
            kind: default_fitness(),
            k: default_topk(),
            max_target_gb: default_max_target_gb(),
            stage_cache_gb: default_stage_cache_gb(),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FitnessKindName {
    Kl,
    TopkKl,
    Ppl,
}

fn default_fitness() -> FitnessKindName {
    FitnessKindName::Kl
}
fn default_topk() -> usize {
    256
}
fn default_max_target_gb() -> f64 {
    4.0
}
fn default_stage_cache_gb() -> f64 {
    2.0
}

impl FitnessSection {
    pub fn kind(&self) -> FitnessKind {
        match self.kind {
            FitnessKindName::Kl => FitnessKind::Kl,
            FitnessKindName::TopkKl => FitnessKind::TopkKl { k: self.k },
            FitnessKindName::Ppl => FitnessKind::Ppl,
        }
    }
}

/// Which compression backend, and its parameters.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BackendSection {
    Depth(DepthBackend),
    /// Unstructured sparsity over a SparseGPT database (`evopress build-db`).
    Sparse(SparseBackendSection),
    /// Bit-width allocation over a GPTQ database (docs/level-schemes.md).
    Quant(evopress_quant::QuantSearchParams),
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SparseBackendSection {
    /// The database directory (`[database] dir` of its build config).
    pub database: PathBuf,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DepthBackend {
    /// Fraction of blocks: k = int(sparsity * n) attention and k MLP sub-blocks are dropped.
    pub sparsity: f64,
    #[serde(default)]
    pub drop_entire_block: bool,
    /// Optional whitelist of droppable sub-blocks (original format or our TOML).
    pub legal: Option<PathBuf>,
}

impl DepthBackend {
    pub fn k(&self, n_blocks: usize) -> Result<usize> {
        if !(0.0..=1.0).contains(&self.sparsity) {
            bail!(
                "backend.sparsity = {} must be between 0 and 1",
                self.sparsity
            );
        }
        Ok((self.sparsity * n_blocks as f64 + 1e-9) as usize)
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    pub dir: PathBuf,
}

impl RunConfig {
    /// Reads the file; relative paths inside it are resolved against the current directory.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        let cfg: RunConfig =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        cfg.search
            .validate()
            .with_context(|| format!("{}: [search]", path.display()))?;
        Ok(cfg)
    }
}

/// Expands glob patterns into a sorted, de-duplicated file list; a pattern matching nothing is
/// an error naming it.
pub fn expand_files(patterns: &[String], key: &str) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in patterns {
        let mut matched: Vec<PathBuf> = glob::glob(p)
            .with_context(|| format!("{key}: bad pattern `{p}`"))?
            .collect::<Result<_, _>>()?;
        if matched.is_empty() {
            bail!("{key}: `{p}` matches no file");
        }
        matched.sort();
        out.extend(matched);
    }
    out.dedup();
    Ok(out)
}

/// Tokenizes every file matched by `patterns`.
pub fn tokenize_files(
    patterns: &[String],
    key: &str,
    tok: &Tokenizer,
) -> Result<Vec<TokenizedFile>> {
    expand_files(patterns, key)?
        .iter()
        .map(|p| TokenizedFile::read(p, tok).map_err(Into::into))
        .collect()
}

impl CalibrationSection {
    pub fn windows(&self, tok: &Tokenizer) -> Result<Vec<Vec<u32>>> {
        let files = tokenize_files(&self.files, "calibration.files", tok)?;
        Ok(data::calibration_windows(
            &files,
            self.seq_len,
            self.windows,
            self.sampling,
            self.seed,
        )?)
    }
}
