//! Depth pruning: drop whole attention and MLP sub-blocks. Needs no database; a dropped
//! sub-block skips its residual branch.
//!
//! - [`backend`]: the [`evopress_core::CompressionBackend`] the CLI registers;
//! - [`drop_config`]: the original `layer_drop_config.txt` and our TOML;
//! - [`evaluator`]: the search's fitness for depth genomes, run incrementally per stage;
//! - [`baselines`]: ShortGPT cosine, norm ratio, window cosine, single-block PPL/KL, brute force.

pub mod backend;
pub mod baselines;
pub mod drop_config;
pub mod evaluator;

pub use backend::DepthBackend;
pub use evaluator::DepthEvaluator;
