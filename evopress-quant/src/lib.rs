//! GPTQ quantization for evopress: the math, the storage and the matmul.
//!
//! The pieces, in the order data flows through them:
//!
//! - [`quantizer`]: the per-group affine quantizer `x̂ = scale · (q − zero)` (2..=8 bits,
//!   asymmetric or symmetric, min-max or MSE-clipped range) and the round-to-nearest baseline
//!   [`rtn`].
//! - [`gptq`]: GPTQ (OBQ with lazy batched updates): quantize the columns of `W` one at a time and
//!   push each column's rounding error onto the not-yet-quantized columns through the inverse
//!   Hessian, so that `‖X Wᵀ − X Ŵᵀ‖²` stays small (`evopress_core::hessian::rel_error` is
//!   the metric it minimises).
//! - [`packed`]: [`PackedMatrix`], codes bit-packed at their width plus f16 scales and zeros:
//!   what a database or an export stores instead of one dequantized fp16 tensor per bit width.
//!   [`PackedMatrix::to_weight`] hands it to `evopress-kernels`, whose `matmul_wt` multiplies
//!   `x · Ŵᵀ` straight from the packed codes (the kernels crate owns the format's decoding).
//!
//! - [`builder`]: the GPTQ database builder ([`GptqBuilder`], a core `VariantBuilder`) and
//!   the mapped loader of its packed variants; [`backend`]: bit-width allocation over such a
//!   database as a core `CompressionBackend` ([`QuantBackend`]).
//!
//! All matrices are plain row-major `f32` slices with explicit shapes; weights are `[out, in]`
//! (`rows × cols`) as in HF checkpoints, Hessians are `[in, in]`. Model loading, calibration and
//! the database layout live elsewhere and call into this crate.

pub mod backend;
pub mod builder;
pub mod gptq;
pub mod packed;
pub mod quantizer;
pub mod space;
pub mod synth;

mod linalg;

pub use backend::{Quant, QuantBackend, QuantSearchParams};
pub use builder::{GptqBuilder, GptqParams, Propagation};
pub use gptq::{gptq, GptqConfig, GptqHessian};
pub use packed::PackedMatrix;
pub use quantizer::{rtn, GroupParams, QuantSpec, RangeSearch};
pub use space::{quantization_space, GroupRule, QuantUnit};

/// The registry entry for bit-width allocation.
pub static QUANT: Quant = Quant;

/// A quantized weight matrix: the packed form and its dequantization.
///
/// `w_hat` is exactly (bit for bit) `packed.dequantize()`; it is returned because GPTQ produces
/// it anyway and callers that want dense weights (error metrics, a dense forward pass) need it.
#[derive(Clone, Debug)]
pub struct Quantized {
    pub packed: PackedMatrix,
    /// Dequantized weights `[rows, cols]`, original column order.
    pub w_hat: Vec<f32>,
}

/// Why a quantization request was rejected or failed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QuantError {
    #[error("bit width {0} is not supported (expected 2..=8)")]
    Bits(u8),
    #[error("group size must be at least 1")]
    GroupSize,
    #[error("{what}: expected {expected} elements, got {got}")]
    Shape {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error(transparent)]
    Hessian(#[from] evopress_core::hessian::HessianError),
}

/// Checks that a slice holds exactly `expected` elements.
fn check_len(what: &'static str, got: usize, expected: usize) -> Result<(), QuantError> {
    if got == expected {
        Ok(())
    } else {
        Err(QuantError::Shape {
            what,
            expected,
            got,
        })
    }
}
