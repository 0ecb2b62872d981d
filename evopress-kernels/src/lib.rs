//! Compute for evopress: the handful of ops a decoder forward pass and the database builders
//! need, behind one [`Device`] seam so the model is written once.
//!
//! - [`cpu::Cpu`]: always available; rayon across cores and a SIMD GEMM.
//! - [`cpu::reference`]: plain, obviously-correct versions of every op, used by tests as the
//!   oracle for the fast ones (and for the CUDA kernels in `kernels/`).

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod weight;

pub use weight::{
    Buf, DType, GgmlMatrix, GgmlType, MaskedMatrix, MaskedPackedMatrix, MaskedPackedParts,
    MaskedValues, PackedMatrix, PackedParts, Storage, Weight, WeightError, WeightKind, WeightView,
};

/// Cos/sin tables for rotate-half RoPE: `cos[p * half + i]`, `sin[p * half + i]` for position
/// `p` and frequency `i < half = head_dim / 2`. Built by the model (it knows the scaling rule).
#[derive(Clone, Debug)]
pub struct RopeTable {
    pub head_dim: usize,
    pub max_positions: usize,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

impl RopeTable {
    /// Tables for `max_positions` positions from per-frequency inverse frequencies
    /// (`inv_freq.len() == head_dim / 2`). Angles are computed in f64 then rounded, which
    /// matches the f32 reference within an ulp at the positions we use.
    pub fn new(inv_freq: &[f32], max_positions: usize) -> Self {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(half * max_positions);
        let mut sin = Vec::with_capacity(half * max_positions);
        for p in 0..max_positions {
            for &f in inv_freq {
                // HF computes (p as f32) * inv_freq in f32, then cos/sin in f32.
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        RopeTable {
            head_dim: 2 * half,
            max_positions,
            cos,
            sin,
        }
    }
}

/// Shape of one causal grouped-query attention call over a batch of sequences.
///
/// `q` is `[batch, q_len, n_heads * head_dim]`, `k`/`v` are `[batch, kv_len, n_kv_heads *
/// head_dim]` (the first `kv_len - q_len` positions are the cache), `out` is like `q`. Query
/// `i` sits at absolute position `kv_len - q_len + i` and sees keys `0..=` that position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub batch: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// The ops the forward pass and the calibration engine are written against.
///
/// Slices are row-major; "rows" are tokens. Every op is deterministic for a given input and
/// thread count.
pub trait Device: Sync {
    /// `out[n, w.rows] = x[n, w.cols] · Wᵀ` (a linear layer without bias).
    fn matmul_wt(&self, x: &[f32], w: &Weight, out: &mut [f32]);
    /// Row-wise RMSNorm: `out = x / sqrt(mean(x²) + eps) * gamma`, rows of `gamma.len()`.
    fn rms_norm(&self, x: &[f32], gamma: &[f32], eps: f32, out: &mut [f32]);
    /// Rotate-half RoPE in place on `x[n_tok, n_heads, head_dim]`, token `t` at `positions[t]`.
    fn rope(&self, x: &mut [f32], n_heads: usize, positions: &[usize], table: &RopeTable);
    /// Causal GQA softmax attention, scale `1/sqrt(head_dim)`; see [`AttnShape`].
    fn attention(&self, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], shape: AttnShape);
    /// `gate = silu(gate) * up`, element-wise (SwiGLU).
    fn silu_mul(&self, gate: &mut [f32], up: &[f32]);
    /// `x += y`, element-wise (residual connections).
    fn add_assign(&self, x: &mut [f32], y: &[f32]);
    /// `x[r, :] += bias` for every row `r`.
    fn add_bias(&self, x: &mut [f32], bias: &[f32]);
    /// `out[cols, cols] = Xᵀ·X` for `x[n, cols]`, exactly symmetric: one sequence's
    /// contribution to a linear layer's Hessian. The default runs on the CPU, so a device
    /// without its own kernel (or a wrapper such as a profiler) still calibrates.
    fn gram(&self, x: &[f32], cols: usize, out: &mut [f32]) {
        cpu::gram::gram(x, cols, out)
    }
}
