//! Joint compression for EvoPress (docs/joint-search.md): one genome over depth, sparsity and
//! bit width under one exact byte budget.
//!
//! - [`solver`]: SparseGPT followed by GPTQ on the kept weights in one column sweep with one
//!   factorisation of the inverse Hessian per layer (the SparseGPT paper's "50 % + 4-bit");
//! - [`levels`]: the (sparsity, bit width) combinations and their level ids;
//! - [`format`]: how a variant is stored (packed when dense, masked-packed when sparse) and read
//!   back as a weight the kernels multiply directly;
//! - [`builder`]: the `[database] kind = "sparse_gptq"` builder;
//! - [`space`]: the search space, a switch per sub-block gating its layers' levels under one
//!   cost ceiling in bytes;
//! - [`evaluator`]: the incremental fitness of joint candidates;
//! - [`backend`]: the [`Joint`] method (`[backend] kind = "joint"`, `--joint-config`);
//! - [`baselines`]: uniform, uniform with drops, and DP over `rel_error` at the same budget;
//! - [`config_file`]: the result file, `joint_config.toml`.

pub mod backend;
pub mod baselines;
pub mod builder;
pub mod config_file;
pub mod evaluator;
pub mod format;
pub mod levels;
pub mod solver;
pub mod space;

pub use backend::{Joint, JointBackend, JointSearchParams};
pub use builder::{JointBuilder, JointParams};
pub use levels::Combo;

/// The registry entry.
pub static JOINT: Joint = Joint;
