//! One error type for the library, each variant naming the file, tensor or key at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file exists but its bytes are not what its format promises (truncated, garbage header).
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },
    #[error(
        "{path}: tensor `{name}` has shape {got:?}, expected {expected:?} from the model config"
    )]
    Shape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("{path}: {what} is not supported ({hint})")]
    Unsupported {
        path: PathBuf,
        what: String,
        hint: String,
    },
    /// A configuration value is missing or wrong; `key` is the dotted key path.
    #[error("{path}: key `{key}`: {msg}")]
    Config {
        path: PathBuf,
        key: String,
        msg: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Search(#[from] evopress_search::Error),
}

/// Errors of a model-backed evaluator travel through the search as its `Evaluator` errors.
impl From<Error> for evopress_search::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Search(inner) => inner,
            other => evopress_search::Error::Evaluator(Box::new(other)),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }

    /// A score (`what`: a perplexity, a fitness, a window's NLL) came out NaN or infinite:
    /// never printed as a number, always this error with the likely causes.
    pub fn non_finite(what: impl std::fmt::Display, value: f64) -> Self {
        Error::Invalid(format!(
            "{what} is {value}: the model's logits overflowed or are NaN. Likely causes: NaN \
             or inf in the weights or in a compressed variant, activations overflowing f32 \
             (a broken or mis-scaled checkpoint), or a config value such as rope_theta or \
             rms_norm_eps out of range"
        ))
    }
}
