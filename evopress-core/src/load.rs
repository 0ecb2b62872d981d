//! One entry point for every model format: a `.gguf` file or an HF directory.

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, GgufWeights};
use crate::hf::HfDir;
use crate::model::Model;
use crate::source::TensorSource;
use crate::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

/// A model ready to run, with its tokenizer when the source has one.
pub struct LoadedModel {
    pub model: Model,
    pub tokenizer: Option<Tokenizer>,
    pub path: PathBuf,
}

impl LoadedModel {
    /// The tokenizer, or an error saying the model came without one.
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| {
            Error::Invalid(format!(
                "{}: the model has no tokenizer (tokenizer.json or GGUF tokenizer metadata)",
                self.path.display()
            ))
        })
    }
}

/// An opened model source before the model is assembled: what `convert` reads from.
pub enum ModelSource {
    Gguf(GgufFile),
    Hf(HfDir),
}

/// Choices that only some sources act on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// What GGUF tensors in llama.cpp block formats become (ignored for HF directories).
    pub gguf_weights: GgufWeights,
}

impl ModelSource {
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, LoadOptions::default())
    }

    pub fn open_with(path: &Path, options: LoadOptions) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            Ok(ModelSource::Hf(HfDir::open(path)?))
        } else {
            let mut g = GgufFile::open(path)?;
            g.set_weights(options.gguf_weights);
            Ok(ModelSource::Gguf(g))
        }
    }

    pub fn tensors(&self) -> &dyn TensorSource {
        match self {
            ModelSource::Gguf(g) => g,
            ModelSource::Hf(h) => h,
        }
    }

    pub fn config(&self) -> Result<crate::ModelConfig> {
        match self {
            ModelSource::Gguf(g) => g.model_config(),
            ModelSource::Hf(h) => Ok(h.config().clone()),
        }
    }

    pub fn tokenizer(&self) -> Result<Option<Tokenizer>> {
        match self {
            ModelSource::Gguf(g) => Tokenizer::from_gguf(g).map(Some),
            ModelSource::Hf(h) => h
                .tokenizer_path()
                .map(|p| Tokenizer::from_file(&p))
                .transpose(),
        }
    }
}

/// Loads a model from a `.gguf` file or an HF directory (`config.json` + safetensors), with
/// the default [`LoadOptions`].
pub fn load_model(path: &Path) -> Result<LoadedModel> {
    load_model_with(path, LoadOptions::default())
}

/// [`load_model`] with explicit options.
pub fn load_model_with(path: &Path, options: LoadOptions) -> Result<LoadedModel> {
    let source = ModelSource::open_with(path, options)?;
    let model = Model::from_source(source.config()?, source.tensors())?;
    Ok(LoadedModel {
        model,
        tokenizer: source.tokenizer()?,
        path: path.into(),
    })
}
