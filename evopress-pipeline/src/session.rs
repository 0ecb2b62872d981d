//! A loaded model with the data a run needs: calibration windows and the dense targets on
//! them (memory checked first), and held-out perplexity and KL to the dense model of any
//! candidate.

use crate::config::{CalibrationSection, EvalSection, FitnessSection, ModelSection, ModelWeights};
use crate::progress;
use evopress_core::data;
use evopress_core::evaluate::Calibration;
use evopress_core::gguf::{GgufFile, GgufWeights};
use evopress_core::held_out::{DenseReference, HeldOutScore};
use evopress_core::{load_model_with, Candidate, Error, LoadOptions, LoadedModel, Result};
use evopress_kernels::Device;
use std::path::Path;

const GB: f64 = 1e9;

/// The model of a run and the device it runs on.
pub struct Session<'d> {
    pub loaded: LoadedModel,
    pub dev: &'d dyn Device,
    pub quiet: bool,
    /// What the model's GGUF block-format tensors were loaded as (`[model] weights` resolved).
    pub gguf_weights: GgufWeights,
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
        })
    }

    /// The calibration windows and the dense model's targets on them.
    pub fn calibrate(
        &self,
        section: &CalibrationSection,
        fitness: &FitnessSection,
    ) -> Result<Calibration> {
        let model = &self.loaded.model;
        fitness.validate_for(model.vocab_size())?;
        let bar = progress::spinner("tokenizing calibration files", self.quiet);
        let samples = section.windows(self.loaded.tokenizer()?)?;
        bar.finish_and_clear();
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

/// `MemAvailable` of `/proc/meminfo` in bytes; `None` where there is no such file.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
