//! The TOML files that describe a run (docs/config-files.md): a search (model, data, fitness,
//! backend, search hyper-parameters, baselines, output) and a database build (model,
//! calibration, database). Unknown keys and bad values are errors naming the key; every
//! section is checked before any work starts. A method's own section (`[backend]`,
//! `[database]`) is kept as a table and read by the method itself.

use evopress_core::data::{self, Sampling, TokenizedFile};
use evopress_core::fitness::FitnessKind;
use evopress_core::tokenizer::Tokenizer;
use evopress_core::{Error, Result};
use evopress_search::SearchConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Where compute runs: `cpu` (default), `cuda` or `cuda:N`; `--device` overrides it.
    pub device: Option<String>,
    pub model: ModelSection,
    pub calibration: CalibrationSection,
    pub eval: EvalSection,
    #[serde(default)]
    pub fitness: FitnessSection,
    /// `kind` names the method; the rest is the method's.
    pub backend: toml::Table,
    pub search: SearchConfig,
    #[serde(default)]
    pub baselines: BaselinesSection,
    pub output: OutputSection,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A `.gguf` file or an HF directory.
    pub path: PathBuf,
    /// What a GGUF's block-format tensors (`Q4_1`, `Q4_K`, ...) become in memory. Packed and
    /// f32 give bit-identical logits; f32 multiplies faster (no per-tile decoding) at 4 bytes
    /// per weight, which is what a search's thousands of forwards want on a model that fits.
    #[serde(default)]
    pub weights: ModelWeights,
}

/// `[model] weights`: `auto` (the default: f32 when the decoded tensors take at most a quarter
/// of the memory available, else packed), `packed`, `f32` or `f16` (rounded, not exact).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelWeights {
    #[default]
    Auto,
    Packed,
    F32,
    F16,
}

/// Calibration text: files (glob patterns allowed) cut into windows, and windows the dense
/// model writes itself mixed in evenly (docs/calibration.md).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationSection {
    #[serde(default)]
    pub files: Vec<String>,
    pub seq_len: usize,
    /// Number of windows cut from the files (their tokens = windows x seq_len).
    pub windows: usize,
    #[serde(default = "default_sampling")]
    pub sampling: Sampling,
    #[serde(default)]
    pub seed: u64,
    /// Windows of `seq_len` tokens sampled from the dense model after its BOS token, added to
    /// the files' windows: they keep a fitness measured on one domain's text from ranking
    /// compressions by that domain alone.
    #[serde(default)]
    pub generated: usize,
    /// Softmax temperature of the generated windows (1: the model's own distribution).
    #[serde(default = "default_temperature")]
    pub temperature: f64,
}

fn default_temperature() -> f64 {
    1.0
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

impl FitnessKindName {
    pub fn name(self) -> &'static str {
        match self {
            FitnessKindName::Kl => "kl",
            FitnessKindName::TopkKl => "topk_kl",
            FitnessKindName::Ppl => "ppl",
        }
    }
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

    fn validate(&self) -> Result<()> {
        if self.kind == FitnessKindName::TopkKl && self.k == 0 {
            return Err(invalid("fitness.k", "must be at least 1 for topk_kl"));
        }
        for (key, v) in [
            ("fitness.max_target_gb", self.max_target_gb),
            ("fitness.stage_cache_gb", self.stage_cache_gb),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(invalid(key, &format!("{v} must be a non-negative number")));
            }
        }
        Ok(())
    }

    /// The checks that need the model: top-k within the vocabulary.
    pub fn validate_for(&self, vocab: usize) -> Result<()> {
        if self.kind == FitnessKindName::TopkKl && self.k > vocab {
            return Err(invalid(
                "fitness.k",
                &format!("{} exceeds the model's vocabulary of {vocab}", self.k),
            ));
        }
        Ok(())
    }
}

/// The baselines a search scores next to its result.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BaselinesSection {
    /// Score the method's cheap baselines on the held-out text and list them in `result.toml`
    /// (they are computed anyway when `[search] initial` seeds from them).
    #[serde(default = "default_true")]
    pub held_out: bool,
    /// Calibration tokens baselines score on: the first `tokens` of the calibration set.
    #[serde(default = "default_baseline_tokens")]
    pub tokens: usize,
}

fn default_baseline_tokens() -> usize {
    1024
}

impl BaselinesSection {
    /// The batch baselines score on: the first `tokens` calibration tokens, whole samples in
    /// order (all of them when there are fewer).
    pub fn batch(&self, sample_lens: &[usize]) -> evopress_search::TokenBatch {
        let available: usize = sample_lens.iter().sum();
        evopress_search::batch::all_tokens(sample_lens, self.tokens.min(available))
    }
}

impl Default for BaselinesSection {
    fn default() -> Self {
        BaselinesSection {
            held_out: true,
            tokens: default_baseline_tokens(),
        }
    }
}

fn default_true() -> bool {
    true
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    pub dir: PathBuf,
}

fn invalid(key: &str, msg: &str) -> Error {
    Error::Invalid(format!("`{key}` {msg}"))
}

/// Reads a TOML file into `T`; toml's messages name the key and the line.
fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    toml::from_str(&text).map_err(|e| Error::format(path, e.to_string().trim_end()))
}

/// The top-level `device` key of a search or database config, if any.
pub fn device_key(path: &Path) -> Result<Option<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| Error::format(path, e.to_string().trim_end()))?;
    match table.get("device") {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(Error::format(
            path,
            format!("`device` must be a string (cpu, cuda, cuda:N), not {other}"),
        )),
    }
}

/// A method's section: its `kind` and the rest of its keys.
pub fn split_kind(section: &toml::Table, what: &str) -> Result<(String, toml::Table)> {
    let mut rest = section.clone();
    match rest.remove("kind") {
        Some(toml::Value::String(kind)) => Ok((kind, rest)),
        Some(other) => Err(Error::Invalid(format!(
            "{what}: `kind` must be a string, not {other}"
        ))),
        None => Err(Error::Invalid(format!("{what}: missing `kind`"))),
    }
}

impl CalibrationSection {
    fn validate(&self, key: &str) -> Result<()> {
        if self.seq_len < 2 {
            return Err(invalid(
                &format!("{key}.seq_len"),
                "must be at least 2 (one token predicts the next)",
            ));
        }
        if self.windows + self.generated == 0 {
            return Err(invalid(
                &format!("{key}.windows"),
                "must be at least 1 (or `generated` must be)",
            ));
        }
        if self.windows == 0 && !self.files.is_empty() {
            // A config switched to generated text alone must not look as if it still used
            // the files it lists.
            return Err(invalid(
                &format!("{key}.files"),
                "lists files, but `windows = 0` cuts no window from them: set `windows` to \
                 use them, or remove `files` to calibrate on generated text alone",
            ));
        }
        if self.windows > 0 {
            expand_files(&self.files, &format!("{key}.files")).map_err(|e| {
                Error::Invalid(format!(
                    "{e} (with `windows = 0` and `generated` set, no files are needed)"
                ))
            })?;
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(invalid(
                &format!("{key}.temperature"),
                "must be a finite number >= 0",
            ));
        }
        Ok(())
    }

    /// The windows cut from the files (none when `windows = 0`).
    pub fn file_windows(&self, tok: &Tokenizer) -> Result<Vec<Vec<u32>>> {
        if self.windows == 0 {
            return Ok(Vec::new());
        }
        let files = tokenize_files(&self.files, "calibration.files", tok)?;
        data::calibration_windows(&files, self.seq_len, self.windows, self.sampling, self.seed)
    }

    /// What the generated windows are, for [`evopress_core::self_text::generate_windows`].
    pub fn generation(&self) -> evopress_core::self_text::Generation {
        evopress_core::self_text::Generation {
            windows: self.generated,
            seq_len: self.seq_len,
            temperature: self.temperature,
            seed: self.seed,
        }
    }
}

impl EvalSection {
    fn validate(&self) -> Result<()> {
        if self.seq_len < 2 {
            return Err(invalid("eval.seq_len", "must be at least 2"));
        }
        if self.windows == Some(0) {
            return Err(invalid(
                "eval.windows",
                "must be at least 1 (leave it out to score every window)",
            ));
        }
        expand_files(&self.files, "eval.files").map(|_| ())
    }
}

impl RunConfig {
    /// Reads and checks every section that can be checked without the model, so a typo in
    /// `[eval]` fails before the search, not after it.
    pub fn read(path: &Path) -> Result<Self> {
        let cfg: RunConfig = read_toml(path)?;
        let at = |e: Error| Error::format(path, e.to_string());
        cfg.search.validate().map_err(|e| at(e.into()))?;
        cfg.calibration.validate("calibration").map_err(at)?;
        cfg.eval.validate().map_err(at)?;
        cfg.fitness.validate().map_err(at)?;
        split_kind(&cfg.backend, "[backend]").map_err(at)?;
        Ok(cfg)
    }
}

/// `evopress build-db`'s file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DbConfig {
    /// As in a search config.
    pub device: Option<String>,
    pub model: ModelSection,
    pub calibration: CalibrationSection,
    /// `kind` and `dir`, then the builder's parameters.
    pub database: toml::Table,
}

impl DbConfig {
    pub fn read(path: &Path) -> Result<Self> {
        let cfg: DbConfig = read_toml(path)?;
        let at = |e: Error| Error::format(path, e.to_string());
        cfg.calibration.validate("calibration").map_err(at)?;
        cfg.parts().map_err(at)?;
        Ok(cfg)
    }

    /// The database kind, its directory, and the builder's parameters.
    pub fn parts(&self) -> Result<(String, PathBuf, toml::Table)> {
        let (kind, mut params) = split_kind(&self.database, "[database]")?;
        let dir = match params.remove("dir") {
            Some(toml::Value::String(d)) => PathBuf::from(d),
            Some(other) => {
                return Err(invalid(
                    "database.dir",
                    &format!("must be a path string, not {other}"),
                ))
            }
            None => return Err(invalid("database.dir", "is missing")),
        };
        Ok((kind, dir, params))
    }
}

/// Expands glob patterns into a sorted, de-duplicated file list; a pattern matching nothing is
/// an error naming it.
pub fn expand_files(patterns: &[String], key: &str) -> Result<Vec<PathBuf>> {
    if patterns.is_empty() {
        return Err(invalid(key, "lists no files"));
    }
    let mut out = Vec::new();
    for p in patterns {
        let paths =
            glob::glob(p).map_err(|e| Error::Invalid(format!("{key}: bad pattern `{p}`: {e}")))?;
        let mut matched: Vec<PathBuf> = paths
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Invalid(format!("{key}: `{p}`: {e}")))?;
        if matched.is_empty() {
            return Err(Error::Invalid(format!("{key}: `{p}` matches no file")));
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
        .map(|p| TokenizedFile::read(p, tok))
        .collect()
}
