//! evopress-core: everything between a model file and a fitness number.
//!
//! - [`config`], [`source`], [`hf`], [`gguf`], [`tokenizer`], [`load`]: loading real models;
//! - [`model`]: the decoder forward pass, written once over [`evopress_kernels::Device`];
//! - [`data`]: text files to token windows, perplexity;
//! - [`calibrate`]: the block-wise calibration engine (Hessians of linear inputs);
//! - [`units`]: the compressible linear units in HF naming, the model fingerprint;
//! - [`store`]: the memory-mapped, checksummed, resumable variant store of a database;
//! - [`fitness`], [`evaluate`]: KL / top-k KL / perplexity against the dense model, scored
//!   incrementally from the first block a candidate changes;
//! - [`search`]: the evolutionary search, which knows nothing about transformers.

pub mod backend;
pub mod build;
pub mod calibrate;
pub mod config;
pub mod data;
pub mod error;
pub mod evaluate;
pub mod fitness;
pub mod gguf;
pub mod hf;
pub mod level_config;
pub mod load;
pub mod model;
pub mod search;
pub mod source;
pub mod store;
pub mod tokenizer;
pub mod units;
pub mod variants;

pub use backend::{Candidate, CompressionBackend};
pub use config::{Arch, ModelConfig};
pub use error::{Error, Result};
pub use load::{load_model, load_model_with, LoadOptions, LoadedModel, ModelSource};
pub use model::{BlockPlan, LinearInput, LinearKind, Model};
pub use source::TensorSource;
