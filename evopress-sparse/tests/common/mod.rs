//! A synthetic layer with LLM-like statistics, shared by the tests and the benchmark.
//!
//! Inputs `X [tokens, cols]` are correlated (a low-rank factor model plus noise), have per-channel
//! scales spread over two orders of magnitude with a few outlier channels (as LLM activations
//! do), and optionally some dead channels that are always zero. `H = X^T X` in f64.

use faer::linalg::matmul::matmul;
use faer::{Mat, Parallelism};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub struct Layer {
    pub rows: usize,
    pub cols: usize,
    /// `[rows, cols]` row-major.
    pub w: Vec<f32>,
    /// `[cols, cols]` row-major, `X^T X`.
    pub h: Vec<f64>,
}

/// A standard normal sample (Box-Muller).
pub fn gaussian(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

pub fn layer(rows: usize, cols: usize, tokens: usize, dead: &[usize], seed: u64) -> Layer {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let rank = (cols / 4).max(1);
    let z = Mat::<f64>::from_fn(tokens, rank, |_, _| gaussian(&mut rng));
    let mix = Mat::<f64>::from_fn(rank, cols, |_, _| gaussian(&mut rng) / (rank as f64).sqrt());
    let mut x = Mat::<f64>::from_fn(tokens, cols, |_, _| 0.3 * gaussian(&mut rng));
    matmul(
        x.as_mut(),
        z.as_ref(),
        mix.as_ref(),
        Some(1.0),
        1.0,
        Parallelism::Rayon(0),
    );
    for j in 0..cols {
        let outlier = if j % 97 == 13 { 10.0 } else { 1.0 };
        let scale = outlier * (gaussian(&mut rng)).exp();
        let scale = if dead.contains(&j) { 0.0 } else { scale };
        for t in 0..tokens {
            x.write(t, j, x.read(t, j) * scale);
        }
    }
    let mut h = Mat::<f64>::zeros(cols, cols);
    matmul(
        h.as_mut(),
        x.transpose(),
        x.as_ref(),
        None,
        1.0,
        Parallelism::Rayon(0),
    );

    let w = (0..rows * cols)
        .map(|_| (0.05 * gaussian(&mut rng)) as f32)
        .collect();
    let h = (0..cols * cols)
        .map(|k| h.read(k / cols, k % cols))
        .collect();
    Layer { rows, cols, w, h }
}
