//! Synthetic weights and Hessians for tests and benchmarks, deterministic given a seed.
//!
//! GPTQ only beats round-to-nearest when `H` is far from a multiple of the identity, i.e. when
//! the layer inputs are correlated and unevenly scaled. Real LLM activations are both: they live
//! near a low-dimensional subspace and a few channels carry outliers. [`correlated_hessian`]
//! imitates that, so quality tests do not need a model.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::linalg::{self, Parallelism, Strided};

/// `n` standard normal samples (Box–Muller).
pub fn gaussian(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
        let u2: f64 = rng.gen();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out.push((r * t.cos()) as f32);
        out.push((r * t.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// `H = 2/n Xᵀ X` for `n_tokens` synthetic input rows `X [n, cols]`:
/// `X = (Z A + 0.3 E) · diag(s)`, with `Z [n, cols/4]` latent factors, a random mixing `A`, noise
/// `E`, log-normal channel scales `s` and every 50th channel an outlier (×8).
pub fn correlated_hessian(cols: usize, n_tokens: usize, seed: u64) -> Vec<f32> {
    let latent = (cols / 4).max(1);
    let z = gaussian(n_tokens * latent, seed);
    let a = gaussian(latent * cols, seed + 1);
    let e = gaussian(n_tokens * cols, seed + 2);
    let s: Vec<f32> = gaussian(cols, seed + 3)
        .iter()
        .enumerate()
        .map(|(j, g)| (0.5 * g).exp() * if j % 50 == 7 { 8.0 } else { 1.0 })
        .collect();
    let mut x: Vec<f32> = e.iter().map(|v| 0.3 * v).collect();
    linalg::gemm(
        &mut x,
        cols,
        Strided::row_major(&z, n_tokens, latent, latent),
        Strided::row_major(&a, latent, cols, cols),
        1.0,
        (latent as f32).sqrt().recip(),
        true,
        Parallelism::Rayon(0),
    );
    for row in x.chunks_exact_mut(cols) {
        for (v, sj) in row.iter_mut().zip(&s) {
            *v *= sj;
        }
    }
    let mut h = vec![0f32; cols * cols];
    linalg::gemm(
        &mut h,
        cols,
        Strided::transposed(&x, cols, n_tokens, cols),
        Strided::row_major(&x, n_tokens, cols, cols),
        0.0,
        2.0 / n_tokens as f32,
        false,
        Parallelism::Rayon(0),
    );
    h
}
