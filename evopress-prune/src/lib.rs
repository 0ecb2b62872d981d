//! Depth pruning: drop whole attention and MLP sub-blocks. Needs no database; a dropped
//! sub-block skips its residual branch.

pub mod baselines;
pub mod drop_config;

pub use drop_config::DropConfig;
