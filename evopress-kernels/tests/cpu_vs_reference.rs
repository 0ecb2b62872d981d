//! Every fast CPU op against its plain reference, on random inputs of awkward shapes.

use evopress_kernels::cpu::{reduce, reference, Cpu};
use evopress_kernels::{AttnShape, Device, RopeTable, Weight};
use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn rand_vec(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-scale..scale)).collect()
}

/// Asserts `|got - want| <= atol + rtol · |want|` element-wise.
#[track_caller]
fn assert_close(got: &[f32], want: &[f32], atol: f32, rtol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= atol + rtol * w.abs(),
            "{what}: element {i}: got {g}, want {w}"
        );
    }
}

fn weights(rng: &mut StdRng, n: usize, k: usize) -> [Weight; 3] {
    let data = rand_vec(rng, n * k, 1.0);
    [
        Weight::from_f32(n, k, data.clone()),
        Weight::from_f16(n, k, data.iter().map(|&v| f16::from_f32(v)).collect()),
        Weight::from_bf16(n, k, data.iter().map(|&v| bf16::from_f32(v)).collect()),
    ]
}

fn check_matmul(rng: &mut StdRng, w: &Weight, m: usize) {
    let x = rand_vec(rng, m * w.cols, 1.0);
    let (mut got, mut want) = (vec![f32::NAN; m * w.rows], vec![0.0; m * w.rows]);
    Cpu.matmul_wt(&x, w, &mut got);
    reference::matmul_wt(&x, w, &mut want);
    // Sums of k products of magnitude <= 1: rounding grows like sqrt(k) ulps.
    let atol = 1e-6 * w.cols as f32;
    let what = format!("matmul m={m} n={} k={} {:?}", w.rows, w.cols, w.dtype());
    assert_close(&got, &want, atol, 1e-5, &what);
}

#[test]
fn matmul_matches_reference() {
    let mut rng = StdRng::seed_from_u64(1);
    for &(n, k) in &[
        (1, 1),
        (7, 13),
        (33, 70),
        (130, 61),
        (257, 576),
        (300, 1000),
    ] {
        for w in weights(&mut rng, n, k) {
            for m in [1, 2, 3, 5, 17, 512] {
                check_matmul(&mut rng, &w, m);
            }
        }
    }
}

#[test]
fn matmul_on_row_slices() {
    let mut rng = StdRng::seed_from_u64(2);
    for w in weights(&mut rng, 300, 77) {
        let slice = w.row_slice(101, 131);
        for m in [1, 3, 17, 200] {
            check_matmul(&mut rng, &slice, m);
        }
    }
}

#[test]
fn matmul_degenerate_shapes() {
    let w = Weight::from_f32(4, 0, vec![]);
    let mut out = vec![f32::NAN; 12];
    Cpu.matmul_wt(&[], &w, &mut out);
    assert!(out.iter().all(|&v| v == 0.0));
    let w = Weight::from_f32(0, 5, vec![]);
    Cpu.matmul_wt(&[0.0; 15], &w, &mut []);
}

fn check_attention(rng: &mut StdRng, s: AttnShape) {
    let qw = s.n_heads * s.head_dim;
    let kw = s.n_kv_heads * s.head_dim;
    let q = rand_vec(rng, s.batch * s.q_len * qw, 2.0);
    let k = rand_vec(rng, s.batch * s.kv_len * kw, 2.0);
    let v = rand_vec(rng, s.batch * s.kv_len * kw, 1.0);
    let (mut got, mut want) = (vec![f32::NAN; q.len()], vec![0.0; q.len()]);
    Cpu.attention(&q, &k, &v, &mut got, s);
    reference::attention(&q, &k, &v, &mut want, s);
    assert_close(&got, &want, 2e-6, 1e-5, &format!("attention {s:?}"));
}

#[test]
fn attention_matches_reference() {
    let mut rng = StdRng::seed_from_u64(3);
    let shape = |batch, q_len, kv_len, n_heads, n_kv_heads, head_dim| AttnShape {
        batch,
        q_len,
        kv_len,
        n_heads,
        n_kv_heads,
        head_dim,
    };
    for s in [
        shape(1, 1, 1, 1, 1, 4),
        shape(1, 17, 17, 3, 1, 64),   // GQA group 3
        shape(2, 65, 65, 6, 2, 24),   // two sequences, a partial query block
        shape(1, 1, 100, 9, 3, 64),   // decode with a cache
        shape(2, 13, 150, 4, 4, 32),  // prefill chunk after a cache
        shape(1, 130, 200, 2, 1, 17), // odd head_dim, several query blocks, cache
        shape(1, 512, 512, 9, 3, 64), // SmolLM-135M prefill
    ] {
        check_attention(&mut rng, s);
    }
}

#[test]
fn rms_norm_matches_reference() {
    let mut rng = StdRng::seed_from_u64(4);
    for &(rows, d) in &[(1, 1), (3, 17), (17, 576), (512, 576), (100, 1003)] {
        let x = rand_vec(&mut rng, rows * d, 3.0);
        let gamma = rand_vec(&mut rng, d, 1.5);
        let (mut got, mut want) = (vec![f32::NAN; x.len()], vec![0.0; x.len()]);
        Cpu.rms_norm(&x, &gamma, 1e-5, &mut got);
        reference::rms_norm(&x, &gamma, 1e-5, &mut want);
        assert_close(&got, &want, 1e-6, 1e-5, &format!("rms_norm {rows}x{d}"));
    }
}

#[test]
fn rope_matches_reference() {
    let mut rng = StdRng::seed_from_u64(5);
    for &(n_tok, n_heads, hd) in &[(1, 1, 2), (3, 3, 10), (17, 9, 64), (512, 9, 64)] {
        let inv: Vec<f32> = (0..hd / 2)
            .map(|i| 10000f32.powf(-2.0 * i as f32 / hd as f32))
            .collect();
        let table = RopeTable::new(&inv, 2048);
        let positions: Vec<usize> = (0..n_tok).map(|t| (t * 7 + 3) % 2048).collect();
        let x = rand_vec(&mut rng, n_tok * n_heads * hd, 2.0);
        let (mut got, mut want) = (x.clone(), x);
        Cpu.rope(&mut got, n_heads, &positions, &table);
        reference::rope(&mut want, n_heads, &positions, &table);
        assert_close(
            &got,
            &want,
            1e-6,
            1e-6,
            &format!("rope {n_tok}x{n_heads}x{hd}"),
        );
    }
}

#[test]
fn elementwise_match_reference() {
    let mut rng = StdRng::seed_from_u64(6);
    for n in [1, 17, 1000, 100_003] {
        let x = rand_vec(&mut rng, n, 20.0);
        let y = rand_vec(&mut rng, n, 2.0);
        let (mut got, mut want) = (x.clone(), x.clone());
        Cpu.silu_mul(&mut got, &y);
        reference::silu_mul(&mut want, &y);
        assert_close(&got, &want, 1e-6, 1e-6, &format!("silu_mul {n}"));

        let (mut got, mut want) = (x.clone(), x.clone());
        Cpu.add_assign(&mut got, &y);
        reference::add_assign(&mut want, &y);
        assert_eq!(got, want, "add_assign {n}");
    }
    for &(rows, d) in &[(1, 1), (3, 17), (700, 129)] {
        let x = rand_vec(&mut rng, rows * d, 2.0);
        let bias = rand_vec(&mut rng, d, 2.0);
        let (mut got, mut want) = (x.clone(), x);
        Cpu.add_bias(&mut got, &bias);
        reference::add_bias(&mut want, &bias);
        assert_eq!(got, want, "add_bias {rows}x{d}");
    }
}

/// Logits like a language model's: a few large ones, a long tail.
fn logits(rng: &mut StdRng, rows: usize, vocab: usize) -> Vec<f32> {
    (0..rows * vocab)
        .map(|_| rng.gen_range(-8.0f32..8.0) + if rng.gen_bool(0.01) { 15.0 } else { 0.0 })
        .collect()
}

#[test]
fn reductions_match_reference() {
    let mut rng = StdRng::seed_from_u64(7);
    for &(rows, vocab) in &[(1, 1), (3, 17), (17, 1001), (64, 49_152)] {
        let p = logits(&mut rng, rows, vocab);
        let q: Vec<f32> = p.iter().map(|&v| v + rng.gen_range(-0.5..0.5)).collect();
        let targets: Vec<u32> = (0..rows).map(|_| rng.gen_range(0..vocab as u32)).collect();

        let (got, want) = (
            reduce::log_softmax_nll(&p, vocab, &targets),
            reference::log_softmax_nll(&p, vocab, &targets),
        );
        assert!(
            (got - want).abs() <= 1e-6 * want.abs().max(1.0),
            "nll {got} vs {want}"
        );

        let got = reduce::logsumexp_rows(&p, vocab);
        let want = reference::logsumexp_rows(&p, vocab);
        assert_close(&got, &want, 1e-6, 1e-6, "logsumexp_rows");

        let (got, want) = (
            reduce::kl_rows(&p, &q, vocab),
            reference::kl_rows(&p, &q, vocab),
        );
        assert!(
            (got - want).abs() <= 1e-5 * want.abs() + 1e-6,
            "kl {got} vs {want}"
        );
        assert!(
            reduce::kl_rows(&p, &p, vocab).abs() < 1e-5 * rows as f64,
            "kl(p, p) != 0"
        );
    }
}

#[test]
fn gram_matches_reference() {
    let mut rng = StdRng::seed_from_u64(7);
    for &(n, c) in &[(1, 1), (5, 3), (17, 33), (64, 130), (300, 257), (513, 576)] {
        let x = rand_vec(&mut rng, n * c, 1.0);
        let (mut got, mut want) = (vec![f32::NAN; c * c], vec![0.0; c * c]);
        Cpu.gram(&x, c, &mut got);
        reference::gram(&x, c, &mut want);
        assert_close(
            &got,
            &want,
            1e-6 * n as f32,
            1e-5,
            &format!("gram n={n} c={c}"),
        );
        for i in 0..c {
            for j in 0..c {
                assert_eq!(
                    got[i * c + j],
                    got[j * c + i],
                    "gram n={n} c={c}: symmetric"
                );
            }
        }
    }
}
