//! The CPU device: every op runs on the global rayon pool, with SIMD inner loops.
//!
//! One module per op family, each with its plain oracle in [`reference`]:
//! [`matmul`] (gemm / GEMV, f16/bf16 widened in tiles), [`attention`] (causal GQA),
//! [`elementwise`] (RMSNorm, RoPE, SwiGLU, adds), [`gram`] (XᵀX for Hessians), [`reduce`] (NLL, log-sum-exp, KL over
//! logits), [`peak`] (the measured FMA ceiling), and [`simd`] (runtime dispatch).
//!
//! Ops are called one after another from a single thread (the forward pass); each one
//! parallelises internally on the global pool, so they never nest rayon scopes.

pub mod attention;
pub mod elementwise;
pub mod gram;
pub mod matmul;
pub mod peak;
pub mod reduce;
pub mod reference;
pub mod simd;

pub use peak::fma_ceiling_gflops;

use crate::{AttnShape, Device, RopeTable, Weight};

/// CPU device: every op runs on the global rayon pool.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

impl Device for Cpu {
    fn matmul_wt(&self, x: &[f32], w: &Weight, out: &mut [f32]) {
        matmul::matmul_wt(x, w, out)
    }
    fn rms_norm(&self, x: &[f32], gamma: &[f32], eps: f32, out: &mut [f32]) {
        elementwise::rms_norm(x, gamma, eps, out)
    }
    fn rope(&self, x: &mut [f32], n_heads: usize, positions: &[usize], table: &RopeTable) {
        elementwise::rope(x, n_heads, positions, table)
    }
    fn attention(&self, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], shape: AttnShape) {
        attention::attention(q, k, v, out, shape)
    }
    fn silu_mul(&self, gate: &mut [f32], up: &[f32]) {
        elementwise::silu_mul(gate, up)
    }
    fn add_assign(&self, x: &mut [f32], y: &[f32]) {
        elementwise::add_assign(x, y)
    }
    fn add_bias(&self, x: &mut [f32], bias: &[f32]) {
        elementwise::add_bias(x, bias)
    }
    fn gram(&self, x: &[f32], cols: usize, out: &mut [f32]) {
        gram::gram(x, cols, out)
    }
}

/// An output pointer shared by rayon tasks that each write a disjoint region of it (column
/// blocks of a matmul output, head slices of an attention output), which safe slices cannot
/// express. Access goes through [`SyncPtr::get`] so closures capture the whole wrapper.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);

// SAFETY: users guarantee that concurrent tasks write disjoint elements.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}
