//! Unstructured sparsity for EvoPress: the SparseGPT solver that fills the variant database, the
//! level scheme that makes levels tradeable across layers of any size, and a compact codec for the
//! sparse variants.
//!
//! Everything here works on plain row-major matrices (`W` is a linear's `[out, in]` weight, `H`
//! the `[in, in]` Hessian `sum X^T X` of its inputs); the block-wise calibration engine that
//! produces `H` and the store that persists the variants live elsewhere.
//!
//! - [`sparsegpt`]: SparseGPT (docs/sparsegpt-gptq.md) and magnitude pruning.
//! - [`levels`]: the original's `weights_diff` level scheme (docs/level-schemes.md).
//! - [`codec`]: bitmask + kept values, for storing and streaming variants.
//! - [`owl`]: OWL's per-block sparsities from outlier ratios (docs/baselines.md).
//! - [`builder`]: the SparseGPT and OWL variant databases (core's block-wise build driver).
//! - [`backend`]: the sparsity method ([`SPARSE`]): search backend over a database of masked
//!   variants, its baselines (uniform, DP, OWL) and database builders.

pub mod backend;
pub mod builder;
pub mod codec;
pub mod levels;
pub mod owl;
pub mod sparsegpt;

pub use backend::{Sparse, SparseBackend, SparseParams};
pub use builder::{
    count_zeros, load_masked, masked_variants, outlier_ratios, OwlBuilder, OwlParams,
    SparseGptBuilder, SparseGptParams, MASKED_FORMAT,
};
pub use codec::{decode_into, encode, Encoded, ValueType, Values};
pub use evopress_kernels::{MaskedMatrix, MaskedValues};
pub use levels::LevelScheme;
pub use sparsegpt::{magnitude_prune, SparseGpt, SparseGptConfig};

use evopress_core::hessian::HessianError;

/// The registry entry for unstructured sparsity.
pub static SPARSE: Sparse = Sparse;

/// Everything that can go wrong in this crate; each variant says what was expected.
#[derive(Debug, thiserror::Error)]
pub enum SparseError {
    #[error("{what}: a [{rows}, {cols}] matrix needs {expected} elements, got {got}")]
    Shape {
        what: &'static str,
        rows: usize,
        cols: usize,
        expected: usize,
        got: usize,
    },
    #[error("sparsity {0} is outside [0, 1]")]
    Sparsity(f64),
    #[error(transparent)]
    Hessian(#[from] HessianError),
    #[error("level scheme: {0}")]
    Levels(String),
    #[error("encoded variant is inconsistent: {0}")]
    Codec(String),
}

/// Checks that `data` holds a `[rows, cols]` matrix.
pub(crate) fn check_shape<T>(
    what: &'static str,
    data: &[T],
    rows: usize,
    cols: usize,
) -> Result<(), SparseError> {
    let expected = rows * cols;
    if data.len() == expected {
        Ok(())
    } else {
        Err(SparseError::Shape {
            what,
            rows,
            cols,
            expected,
            got: data.len(),
        })
    }
}
