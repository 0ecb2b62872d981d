//! evopress-core: everything between a model file and a fitness number.
//!
//! - [`fsutil`]: the one atomic file write every output goes through;
//! - [`config`], [`source`], [`hf`], [`gguf`], [`tokenizer`], [`load`]: loading real models;
//! - [`model`]: the decoder forward pass, written once over [`evopress_kernels::Device`];
//! - [`data`]: text files to token windows, perplexity;
//! - [`held_out`]: held-out perplexity and KL to the dense model of any candidate;
//! - [`calibrate`]: the block-wise calibration engine (Hessians of linear inputs);
//! - [`hessian`]: dead inputs, damping, the inverse Cholesky factor and the relative layer
//!   error, shared by every compression method;
//! - [`units`]: the compressible linear units in HF naming, the model fingerprint;
//! - [`store`]: the memory-mapped, checksummed, resumable variant store of a database;
//! - [`fitness`], [`evaluate`]: KL / top-k KL / perplexity against the dense model, scored
//!   incrementally from the first block a candidate changes;

pub mod build;
pub mod calibrate;
pub mod config;
pub mod data;
pub mod error;
pub mod evaluate;
pub mod fitness;
pub mod fsutil;
pub mod gguf;
pub mod held_out;
pub mod hessian;
pub mod hf;
pub mod level_config;
pub mod load;
pub mod method;
pub mod model;
pub mod self_text;
pub mod source;
pub mod store;
pub mod tokenizer;
pub mod units;
pub mod variants;

pub use config::{Arch, ModelConfig};
pub use error::{Error, Result};
pub use load::{load_model, load_model_with, LoadOptions, LoadedModel, ModelSource};
pub use method::{
    Baseline, BaselineContext, BaselineInfo, BuildContext, Candidate, CompressionBackend,
    ConfigFlag, Method, Report,
};
pub use model::{BlockPlan, LinearInput, LinearKind, Model};
pub use source::TensorSource;
