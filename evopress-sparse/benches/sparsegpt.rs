//! SparseGPT timings and codec sizes on SmolLM2-135M-shaped layers (synthetic weights and
//! Hessians from `tests/common`). Run with `cargo bench -p evopress-sparse`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use evopress_core::hessian::rel_error;
use evopress_sparse::{
    decode_into, encode, magnitude_prune, LevelScheme, SparseGpt, SparseGptConfig, ValueType,
};

fn main() {
    let ten_levels: Vec<f64> = (0..10).map(|i| 0.05 + 0.1 * i as f64).collect();
    println!(
        "SparseGPT, 10 levels {ten_levels:.2?}, {} rayon threads",
        rayon::current_num_threads()
    );
    for (rows, cols) in [(1536, 576), (576, 1536)] {
        let layer = common::layer(rows, cols, 2 * cols, &[], 1);
        let cfg = SparseGptConfig::default();
        let mut best = (f64::INFINITY, f64::INFINITY);
        for _ in 0..3 {
            let t = Instant::now();
            let sgpt = SparseGpt::new(&layer.w, rows, cols, &layer.h, cfg).unwrap();
            let prepare = t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            let levels = sgpt.prune_levels(&ten_levels).unwrap();
            let prune = t.elapsed().as_secs_f64() * 1e3;
            assert_eq!(levels.len(), 10);
            best = (best.0.min(prepare), best.1.min(prune));
        }
        println!(
            "  [{rows:>4}, {cols:>4}]: factorise {:7.1} ms, 10 levels {:7.1} ms, total {:7.1} ms",
            best.0,
            best.1,
            best.0 + best.1
        );
        let sgpt = SparseGpt::new(&layer.w, rows, cols, &layer.h, cfg).unwrap();
        for p in [0.5, 0.7] {
            let ours = rel_error(&layer.w, &sgpt.prune(p).unwrap(), &layer.h, rows, cols).unwrap();
            let mag = magnitude_prune(&layer.w, p).unwrap();
            let base = rel_error(&layer.w, &mag, &layer.h, rows, cols).unwrap();
            println!(
                "    p = {p}: rel_error SparseGPT {ours:.4}, magnitude {base:.4} ({:.2}x)",
                ours / base
            );
        }
    }

    // Codec speed on a 50 % variant of the largest layer shape.
    let (rows, cols) = (1536, 576);
    let layer = common::layer(rows, cols, 2 * cols, &[], 3);
    let sgpt = SparseGpt::new(&layer.w, rows, cols, &layer.h, SparseGptConfig::default()).unwrap();
    let half_sparse = sgpt.prune(0.5).unwrap();
    let t = Instant::now();
    let enc = encode(&half_sparse, rows, cols, ValueType::F16).unwrap();
    let encode_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut out = vec![0.0f32; rows * cols];
    let reps = 50;
    let t = Instant::now();
    for _ in 0..reps {
        decode_into(&enc, &mut out).unwrap();
    }
    let decode_ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
    let mut block = vec![0.0f32; 64 * cols];
    let t = Instant::now();
    for _ in 0..reps {
        for r in (0..rows).step_by(64) {
            enc.decode_rows(r..r + 64, &mut block).unwrap();
        }
    }
    let stream_ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
    println!(
        "codec [{rows}, {cols}] at 50 %: encode {encode_ms:.2} ms, decode_into {decode_ms:.3} ms \
         ({:.1} GB/s of f32), decode_rows in 64-row blocks {stream_ms:.3} ms",
        (rows * cols * 4) as f64 / decode_ms / 1e6
    );

    // Codec: bytes of every variant over bytes of as many dense f16 tensors.
    let demo_block: [(&str, usize, usize); 7] = [
        ("q_proj", 576, 576),
        ("k_proj", 192, 576),
        ("v_proj", 192, 576),
        ("o_proj", 576, 576),
        ("gate_proj", 1536, 576),
        ("up_proj", 1536, 576),
        ("down_proj", 576, 1536),
    ];
    let uniform: Vec<f64> = (0..10).map(|i| 0.1 * i as f64).collect();
    let (mut stored, mut dense) = (0usize, 0usize);
    for &(_, rows, cols) in &demo_block {
        let (s, d) = codec_bytes(rows, cols, &uniform);
        stored += s;
        dense += d;
    }
    println!(
        "codec, levels 0%..90% step 10%, one SmolLM2 block: {:.4}x dense f16",
        stored as f64 / dense as f64
    );
    for s in [0.5, 0.6, 0.7] {
        let scheme = LevelScheme::with_default_weights_diff(s, 8, 576).unwrap();
        let (mut stored, mut dense) = (0usize, 0usize);
        for &(name, rows, cols) in &demo_block {
            let levels: Vec<f64> = scheme
                .levels(rows * cols)
                .into_iter()
                .map(|(_, p)| p)
                .collect();
            if s == 0.5 {
                let range = scheme.range(rows * cols);
                println!(
                    "  s = 0.5, wd = {}: {name} levels {range:?} sparsity {:.3}..{:.3}",
                    scheme.weights_diff,
                    levels[0],
                    levels[levels.len() - 1]
                );
            }
            let (st, de) = codec_bytes(rows, cols, &levels);
            stored += st;
            dense += de;
        }
        println!(
            "codec, level scheme s = {s}, L = 8, default wd = {}: {:.4}x dense f16",
            scheme.weights_diff,
            stored as f64 / dense as f64
        );
    }
}

/// (encoded bytes, dense f16 bytes) over SparseGPT variants of one synthetic layer.
fn codec_bytes(rows: usize, cols: usize, levels: &[f64]) -> (usize, usize) {
    let layer = common::layer(rows, cols, 2 * cols, &[], 2);
    let (rows, cols) = (layer.rows, layer.cols);
    let sgpt = SparseGpt::new(&layer.w, rows, cols, &layer.h, SparseGptConfig::default()).unwrap();
    let mut stored = 0;
    for w in sgpt.prune_levels(levels).unwrap() {
        stored += encode(&w, rows, cols, ValueType::F16)
            .unwrap()
            .stored_bytes();
    }
    (stored, levels.len() * rows * cols * 2)
}
