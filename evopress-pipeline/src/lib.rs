//! The library behind every `evopress` command, over any registered [`Method`]: the run
//! config files, calibration and held-out data, the search pipeline (seeds, generations,
//! final tournament, held-out comparison with the baselines, result files), `evopress
//! baseline`, database builds, and applying result files for `eval` and `convert`. The binary
//! and the tests both call it; it branches on no method's name.
//!
//! [`Method`]: evopress_core::Method

pub mod apply;
pub mod baselines;
pub mod bench;
pub mod build;
pub mod config;
pub mod plot;
pub mod progress;
pub mod search;
pub mod session;

pub use apply::Configs;
pub use baselines::{run_baselines, BaselineRow, Selection};
pub use build::{run_build, BuildOutcome};
pub use config::{DbConfig, RunConfig};
pub use search::{run_search, ResultFile, SearchOptions, SearchOutcome};
pub use session::Session;
