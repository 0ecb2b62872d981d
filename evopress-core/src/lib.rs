//! evopress-core: everything between a model file and a fitness number.
//!
//! - [`config`], [`source`], [`hf`], [`gguf`], [`tokenizer`]: loading real models;
//! - [`model`]: the decoder forward pass, written once over [`evopress_kernels::Device`];
//! - [`data`]: text files to token windows, perplexity;
//! - [`search`]: the evolutionary search, which knows nothing about transformers.

pub mod config;
pub mod error;
pub mod gguf;
pub mod hf;
pub mod search;
pub mod source;
pub mod tokenizer;

pub use config::{Arch, ModelConfig};
pub use error::{Error, Result};
pub use source::TensorSource;
