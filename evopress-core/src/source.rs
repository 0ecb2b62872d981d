//! Where a model's tensors come from: an HF directory of safetensors, or a GGUF file. Both
//! present tensors under their HF names and shapes (`[out, in]` for linears), so the model
//! is assembled by one code path.

use crate::error::Result;
use evopress_kernels::Weight;
use std::path::Path;

pub trait TensorSource {
    /// The file or directory, for error messages.
    fn path(&self) -> &Path;
    /// HF-convention shape of tensor `name` (`[out, in]` for a linear), or `None` if absent.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// Tensor `name` as a weight; a 1-D tensor comes back as `rows == 1`. Errors name the
    /// file and tensor (missing, unsupported dtype, truncated data).
    fn weight(&self, name: &str) -> Result<Weight>;
    /// Every tensor name, in file order.
    fn names(&self) -> Vec<String>;
}

/// Every tensor of `src` under its HF name (what `convert` writes out).
pub fn read_all(src: &dyn TensorSource) -> Result<Vec<(String, Weight)>> {
    src.names()
        .into_iter()
        .map(|n| src.weight(&n).map(|w| (n, w)))
        .collect()
}
