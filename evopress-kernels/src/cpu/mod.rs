//! The CPU device.

pub mod reference;

use crate::{AttnShape, Device, RopeTable, Weight};

/// CPU device: every op runs on the global rayon pool.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

impl Device for Cpu {
    fn matmul_wt(&self, x: &[f32], w: &Weight, out: &mut [f32]) {
        reference::matmul_wt(x, w, out)
    }
    fn rms_norm(&self, x: &[f32], gamma: &[f32], eps: f32, out: &mut [f32]) {
        reference::rms_norm(x, gamma, eps, out)
    }
    fn rope(&self, x: &mut [f32], n_heads: usize, positions: &[usize], table: &RopeTable) {
        reference::rope(x, n_heads, positions, table)
    }
    fn attention(&self, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], shape: AttnShape) {
        reference::attention(q, k, v, out, shape)
    }
    fn silu_mul(&self, gate: &mut [f32], up: &[f32]) {
        reference::silu_mul(gate, up)
    }
    fn add_assign(&self, x: &mut [f32], y: &[f32]) {
        reference::add_assign(x, y)
    }
    fn add_bias(&self, x: &mut [f32], bias: &[f32]) {
        reference::add_bias(x, bias)
    }
}
