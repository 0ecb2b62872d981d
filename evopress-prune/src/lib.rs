//! Depth pruning: drop whole attention and MLP sub-blocks. Needs no database; a dropped
//! sub-block skips its residual branch.
//!
//! - [`backend`]: the [`evopress_core::Method`] the binary registers ([`DEPTH`]);
//! - [`space`]: the search space (k of each sub-block kind, or k whole blocks);
//! - [`drop_config`]: the original `layer_drop_config.txt` and our TOML;
//! - [`evaluator`]: the search's fitness for depth genomes, run incrementally per stage;
//! - [`baselines`]: ShortGPT cosine, norm ratio, window cosine, single-block PPL/KL (whole
//!   blocks and sub-blocks), brute force.

pub mod backend;
pub mod baselines;
pub mod drop_config;
pub mod evaluator;
pub mod space;

pub use backend::{Depth, DepthBackend, DepthParams};
pub use evaluator::DepthEvaluator;
pub use space::{DepthLayout, DropMask};

/// The registry entry for depth pruning.
pub static DEPTH: Depth = Depth;
