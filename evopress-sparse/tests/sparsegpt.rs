//! SparseGPT against magnitude pruning and its own contract, on a synthetic layer.

mod common;
#[path = "../../tests/support/original_obs.rs"]
mod original_obs;

use evopress_core::hessian::rel_error;
use evopress_sparse::{magnitude_prune, SparseGpt, SparseGptConfig};

const DEAD: [usize; 3] = [5, 200, 301];

fn prepared(rows: usize, cols: usize) -> (common::Layer, SparseGpt) {
    let layer = common::layer(rows, cols, 4 * cols, &DEAD, 42);
    let sgpt = SparseGpt::new(&layer.w, rows, cols, &layer.h, SparseGptConfig::default()).unwrap();
    (layer, sgpt)
}

fn zeros(w: &[f32]) -> usize {
    w.iter().filter(|&&x| x == 0.0).count()
}

#[test]
fn beats_magnitude_pruning() {
    let (l, sgpt) = prepared(192, 320);
    for p in [0.5, 0.7] {
        let ours = rel_error(&l.w, &sgpt.prune(p).unwrap(), &l.h, l.rows, l.cols).unwrap();
        let magnitude = magnitude_prune(&l.w, p).unwrap();
        let baseline = rel_error(&l.w, &magnitude, &l.h, l.rows, l.cols).unwrap();
        println!(
            "p = {p}: rel_error SparseGPT {ours:.4}, magnitude {baseline:.4}, ratio {:.3}",
            ours / baseline
        );
        assert!(
            ours < 0.7 * baseline,
            "p = {p}: {ours} vs magnitude {baseline}"
        );
    }
}

#[test]
fn exact_zero_count_per_level_and_per_block() {
    let (l, sgpt) = prepared(96, 320);
    let n = l.rows * l.cols;
    for p in [0.1, 0.25, 0.5, 0.7, 0.9] {
        let pruned = sgpt.prune(p).unwrap();
        assert_eq!(zeros(&pruned), (p * n as f64).round() as usize, "p = {p}");
        // Blocks of 128, 128, 64 columns: each gets its proportional share, within one weight.
        for (c1, c2) in [(0, 128), (128, 256), (256, 320)] {
            let block: Vec<f32> = pruned
                .chunks_exact(l.cols)
                .flat_map(|row| row[c1..c2].to_vec())
                .collect();
            let share = p * block.len() as f64;
            assert!(
                (zeros(&block) as f64 - share).abs() <= 1.0,
                "p = {p} block {c1}..{c2}"
            );
        }
        for row in pruned.chunks_exact(l.cols) {
            assert!(
                DEAD.iter().all(|&j| row[j] == 0.0),
                "dead inputs are pruned"
            );
        }
    }
}

#[test]
fn zero_sparsity_is_the_dense_layer_and_full_sparsity_is_empty() {
    let (l, sgpt) = prepared(64, 320);
    let dense = sgpt.prune(0.0).unwrap();
    assert!(dense
        .iter()
        .zip(&l.w)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    assert!(sgpt.prune(1.0).unwrap().iter().all(|&x| x == 0.0));
    assert!(sgpt.prune(1.5).is_err() && sgpt.prune(f64::NAN).is_err());
}

#[test]
fn levels_share_one_factorisation_and_are_deterministic() {
    let (_, sgpt) = prepared(64, 320);
    let levels = [0.3, 0.5, 0.8];
    let batch = sgpt.prune_levels(&levels).unwrap();
    for (p, w) in levels.iter().zip(&batch) {
        assert_eq!(&sgpt.prune(*p).unwrap(), w);
    }
}

#[test]
fn error_grows_with_sparsity() {
    let (l, sgpt) = prepared(64, 320);
    let errors: Vec<f64> = sgpt
        .prune_levels(&[0.1, 0.3, 0.5, 0.7, 0.9])
        .unwrap()
        .iter()
        .map(|w| rel_error(&l.w, w, &l.h, l.rows, l.cols).unwrap())
        .collect();
    assert!(errors.windows(2).all(|e| e[0] < e[1]), "{errors:?}");
    assert!(errors[0] > 0.0 && errors[4] < 1.0, "{errors:?}");
}

#[test]
fn f32_and_f64_hessians_agree() {
    let l = common::layer(32, 160, 640, &[], 7);
    let h32: Vec<f32> = l.h.iter().map(|&x| x as f32).collect();
    let cfg = SparseGptConfig::default();
    let a = SparseGpt::new(&l.w, 32, 160, &l.h, cfg)
        .unwrap()
        .prune(0.5)
        .unwrap();
    let b = SparseGpt::new(&l.w, 32, 160, &h32, cfg)
        .unwrap()
        .prune(0.5)
        .unwrap();
    let ea = rel_error(&l.w, &a, &l.h, 32, 160).unwrap();
    let eb = rel_error(&l.w, &b, &l.h, 32, 160).unwrap();
    assert!((ea - eb).abs() < 1e-3 * ea, "{ea} vs {eb}");
}

#[test]
fn rejects_bad_shapes_and_hessians() {
    let cfg = SparseGptConfig::default();
    assert!(SparseGpt::new(&[0.0; 6], 2, 3, &[1.0f64; 4], cfg).is_err());
    assert!(SparseGpt::new(&[0.0; 5], 2, 3, &[1.0f64; 9], cfg).is_err());
    let mut h = vec![0.0f64; 9];
    h[4] = f64::NAN;
    assert!(SparseGpt::new(&[1.0; 6], 2, 3, &h, cfg).is_err());
    // Indefinite: -1 on the diagonal is not rescued by a 1 % damping.
    let h = [1.0f64, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0];
    assert!(SparseGpt::new(&[1.0; 6], 2, 3, &h, cfg).is_err());
}

#[test]
fn reaches_what_the_original_algorithm_reaches_on_the_same_hessian() {
    // 256 columns: two whole blocks, so the original's per-block count equals ours exactly.
    let (l, sgpt) = prepared(64, 256);
    for p in [0.5, 0.7] {
        let ours = rel_error(&l.w, &sgpt.prune(p).unwrap(), &l.h, l.rows, l.cols).unwrap();
        let original = original_obs::sparsegpt(&l.w, &l.h, l.rows, l.cols, p);
        let theirs = rel_error(&l.w, &original, &l.h, l.rows, l.cols).unwrap();
        println!("p = {p}: rel_error ours {ours:.6}, original loop {theirs:.6}");
        assert!(
            (ours - theirs).abs() <= 1e-3 * theirs,
            "p = {p}: ours {ours} vs the original's {theirs}"
        );
        // The original rounds the pruned count per block; we round the total (one weight
        // apart at most per block: here 2 x round(5734.4) = 11468 against round(11468.8)).
        let (a, b) = (zeros(&sgpt.prune(p).unwrap()), zeros(&original));
        assert!(
            a.abs_diff(b) <= 2,
            "p = {p}: {a} zeros vs the original's {b}"
        );
    }
}
