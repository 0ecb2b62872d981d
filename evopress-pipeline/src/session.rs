//! A loaded model with the data a run needs: calibration windows and the dense targets on
//! them (memory checked first), and held-out perplexity and KL to the dense model of any
//! candidate.

use crate::config::{CalibrationSection, EvalSection, FitnessSection, ModelSection, ModelWeights};
use crate::progress;
use evopress_core::data;
use evopress_core::evaluate::Calibration;
use evopress_core::fsutil::write_atomically;
use evopress_core::gguf::{GgufFile, GgufWeights};
use evopress_core::held_out::{DenseReference, HeldOutScore};
use evopress_core::self_text::{self, Generation};
use evopress_core::{load_model_with, Candidate, Error, LoadOptions, LoadedModel, Result};
use evopress_kernels::Device;
use serde::{Deserialize, Serialize};
use std::path::Path;

const GB: f64 = 1e9;

/// The model of a run and the device it runs on.
pub struct Session<'d> {
    pub loaded: LoadedModel,
    pub dev: &'d dyn Device,
    pub quiet: bool,
    /// What the model's GGUF block-format tensors were loaded as (`[model] weights` resolved).
    pub gguf_weights: GgufWeights,
    /// The model file's name and size, which generated calibration text is tied to.
    model_name: String,
}

impl<'d> Session<'d> {
    pub fn open(model: &ModelSection, dev: &'d dyn Device, quiet: bool) -> Result<Self> {
        let path = &model.path;
        let gguf_weights = gguf_weights(path, model.weights)?;
        let bar = progress::spinner(&format!("loading {}", path.display()), quiet);
        let loaded = load_model_with(path, LoadOptions { gguf_weights })?;
        bar.finish_and_clear();
        Ok(Session {
            loaded,
            dev,
            quiet,
            gguf_weights,
            model_name: model_identity(path),
        })
    }

    /// The calibration windows and the dense model's targets on them; generated windows are
    /// kept in `keep_in` (see [`Session::calibration_windows`]).
    pub fn calibrate(
        &self,
        section: &CalibrationSection,
        fitness: &FitnessSection,
        keep_in: Option<&Path>,
    ) -> Result<Calibration> {
        let model = &self.loaded.model;
        fitness.validate_for(model.vocab_size())?;
        let samples = self.calibration_windows(section, keep_in)?;
        let kind = fitness.kind();
        let positions: usize = samples.iter().map(|s| s.len() - 1).sum();
        kind.check_target_memory(
            positions,
            model.vocab_size(),
            (fitness.max_target_gb * GB) as usize,
        )?;
        let bar = progress::bar(samples.len(), "dense targets", self.quiet);
        let cal = Calibration::new(model, self.dev, samples, kind, |i| {
            bar.set_position(i as u64)
        })?;
        bar.finish_and_clear();
        Ok(cal)
    }

    /// The windows cut from the calibration files with the generated ones spread among them.
    /// Generated windows are written to `keep_in/`[`self_text::KEPT_FILE`] (tokens and text) and read
    /// back by a later run with the same settings, so a resumed run scores the same tokens
    /// without writing them again.
    pub fn calibration_windows(
        &self,
        section: &CalibrationSection,
        keep_in: Option<&Path>,
    ) -> Result<Vec<Vec<u32>>> {
        let tokenizer = self.loaded.tokenizer()?;
        let bar = progress::spinner("tokenizing calibration files", self.quiet);
        let files = section.file_windows(tokenizer)?;
        bar.finish_and_clear();
        if section.generated == 0 {
            return Ok(files);
        }
        let settings = GeneratedSettings {
            model: self.model_name.clone(),
            generation: section.generation(),
        };
        let kept = keep_in.map(|dir| dir.join(self_text::KEPT_FILE));
        if let Some(found) = kept
            .as_deref()
            .and_then(|p| GeneratedFile::read(p, &settings))
        {
            return Ok(self_text::interleave(files, found.tokens));
        }
        let model = &self.loaded.model;
        let bos = model.config.bos_token_id.ok_or_else(|| {
            Error::Invalid(format!(
                "calibration.generated = {}: the model names no BOS token to start from",
                section.generated
            ))
        })?;
        let g = section.generation();
        let bar = progress::bar(
            g.windows * g.seq_len,
            "writing calibration text",
            self.quiet,
        );
        let tokens =
            self_text::generate_windows(model, self.dev, bos, g, |n| bar.set_position(n as u64))?;
        bar.finish_and_clear();
        if let Some(path) = kept {
            let text = (tokens.iter())
                .map(|t| tokenizer.decode(t))
                .collect::<Result<_>>()?;
            let file = GeneratedFile {
                settings,
                tokens: tokens.clone(),
                text,
            };
            let json = serde_json::to_vec_pretty(&file)
                .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
            write_atomically(&path, &json)?;
        }
        Ok(self_text::interleave(files, tokens))
    }

    /// The held-out windows of `eval`, tokenized once.
    pub fn held_out_windows(&self, eval: &EvalSection) -> Result<Vec<Vec<u32>>> {
        let bar = progress::spinner("tokenizing held-out files", self.quiet);
        let files =
            crate::config::tokenize_files(&eval.files, "eval.files", self.loaded.tokenizer()?)?;
        bar.finish_and_clear();
        let windows = data::windows(&files, eval.seq_len, eval.windows)?;
        Ok(windows.into_iter().map(<[u32]>::to_vec).collect())
    }

    /// The dense model on the held-out `windows`: its perplexity, and the final states every
    /// candidate's KL is measured against (one dense forward per window, once per run).
    pub fn dense_reference(&self, windows: Vec<Vec<u32>>) -> Result<DenseReference<'_>> {
        let bar = progress::bar(windows.len(), "held-out dense", self.quiet);
        let reference = DenseReference::new(&self.loaded.model, self.dev, windows, |i| {
            bar.set_position(i as u64)
        })?;
        bar.finish_and_clear();
        Ok(reference)
    }

    /// Perplexity and KL to the dense model of `candidate` on `reference`'s windows.
    pub fn score(
        &self,
        reference: &DenseReference,
        candidate: &Candidate,
        what: &str,
    ) -> Result<HeldOutScore> {
        let bar = progress::bar(reference.windows().len(), what, self.quiet);
        let score = reference
            .score(self.dev, &candidate.model, &candidate.plan, |i| {
                bar.set_position(i as u64)
            })
            .map_err(|e| Error::Invalid(format!("{what}: {e}")))?;
        bar.finish_and_clear();
        Ok(score)
    }
}

/// What determines the generated windows: a file written under other settings is not reused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct GeneratedSettings {
    model: String,
    generation: Generation,
}

/// The generated windows as ids (what is reused) and as text (for a person to read).
#[derive(Serialize, Deserialize)]
struct GeneratedFile {
    #[serde(flatten)]
    settings: GeneratedSettings,
    tokens: Vec<Vec<u32>>,
    text: Vec<String>,
}

impl GeneratedFile {
    /// The file at `path` when it was written under `settings`; anything else (no file, other
    /// settings, a damaged file) means writing the windows again.
    fn read(path: &Path, settings: &GeneratedSettings) -> Option<GeneratedFile> {
        let file: GeneratedFile = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        let g = &settings.generation;
        let whole =
            file.tokens.len() == g.windows && file.tokens.iter().all(|t| t.len() == g.seq_len);
        (file.settings == *settings && whole).then_some(file)
    }
}

/// What `[model] weights` means for the file at `path` (an HF directory ignores it).
fn gguf_weights(path: &Path, choice: ModelWeights) -> Result<GgufWeights> {
    Ok(match choice {
        ModelWeights::Packed => GgufWeights::Packed,
        ModelWeights::F32 => GgufWeights::F32,
        ModelWeights::F16 => GgufWeights::F16,
        ModelWeights::Auto if path.is_dir() => GgufWeights::Packed,
        ModelWeights::Auto => {
            let decoded = GgufFile::open(path)?.decoded_f32_bytes();
            match available_memory() {
                Some(free) if decoded <= free / 4 => GgufWeights::F32,
                _ => GgufWeights::Packed,
            }
        }
    })
}

/// `path`'s file name and size (a directory's name alone): enough to tell models apart
/// without hashing gigabytes.
fn model_identity(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => format!("{name} ({} bytes)", m.len()),
        _ => name,
    }
}

/// `MemAvailable` of `/proc/meminfo` in bytes; `None` where there is no such file.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
