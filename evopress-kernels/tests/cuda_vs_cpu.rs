//! The CUDA kernels against the CPU oracle (`cpu::reference`, and f64 versions of the vocabulary
//! reductions below) on seeded random inputs, through the host-slice [`Device`] API; plus a
//! timing of each op on the GPU against the CPU device (ignored by default: `scripts/gpu-check`
//! runs it). On a machine without a CUDA driver every test says it skipped and passes.
#![cfg(feature = "cuda")]

use evopress_kernels::cpu::{reference, Cpu};
use evopress_kernels::cuda::{CudaDevice, CudaError};
use evopress_kernels::{AttnShape, Device, RopeTable, Weight};
use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::OnceLock;
use std::time::Instant;

/// The shared device, or `None` (saying so) where no driver is installed. Any other failure
/// to start, such as a kernel that does not load, fails the test.
fn gpu() -> Option<&'static CudaDevice> {
    static DEV: OnceLock<Option<CudaDevice>> = OnceLock::new();
    let dev = DEV.get_or_init(|| match CudaDevice::new(0) {
        Ok(d) => Some(d),
        Err(CudaError::NoDriver) => None,
        Err(e) => panic!("the CUDA device failed to start: {e}"),
    });
    if dev.is_none() {
        eprintln!("skipped: {}", CudaError::NoDriver);
    }
    dev.as_ref()
}

fn uniform(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-scale..scale)).collect()
}

/// Every `got[i]` within `atol + rtol * |want[i]|` of `want[i]`; the message names the worst.
fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let excess = |i: usize| (got[i] - want[i]).abs() - (atol + rtol * want[i].abs());
    let worst = (0..got.len()).max_by(|&a, &b| excess(a).total_cmp(&excess(b)));
    if let Some(i) = worst {
        assert!(
            excess(i) <= 0.0 && got[i].is_finite(),
            "{what}: element {i}: gpu {} vs cpu {} (atol {atol}, rtol {rtol})",
            got[i],
            want[i]
        );
    }
}

#[test]
fn cuda_missing_driver_is_a_clear_error() {
    if gpu().is_none() {
        let err = CudaDevice::new(0).err().expect("no driver, so no device");
        assert_eq!(err.to_string(), "no CUDA driver found; falling back to CPU");
    }
}

fn weight_as(dtype: &str, rows: usize, cols: usize, data: Vec<f32>) -> Weight {
    match dtype {
        "f32" => Weight::from_f32(rows, cols, data),
        "f16" => Weight::from_f16(rows, cols, data.iter().map(|&v| f16::from_f32(v)).collect()),
        "bf16" => Weight::from_bf16(
            rows,
            cols,
            data.iter().map(|&v| bf16::from_f32(v)).collect(),
        ),
        _ => unreachable!(),
    }
}

#[test]
fn cuda_matmul_wt_matches_reference() {
    let Some(dev) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(1);
    // (m, n, k): one token (GEMV), ragged tile edges, exact tiles, a single output column.
    let shapes = [
        (1, 300, 257),
        (37, 130, 200),
        (64, 64, 16),
        (5, 1, 1000),
        (130, 70, 33),
    ];
    for dtype in ["f32", "f16", "bf16"] {
        for (m, n, k) in shapes {
            let x = uniform(&mut rng, m * k, 1.0);
            let w = weight_as(dtype, n, k, uniform(&mut rng, n * k, 1.0));
            let (mut got, mut want) = (vec![0.0; m * n], vec![0.0; m * n]);
            dev.matmul_wt(&x, &w, &mut got);
            reference::matmul_wt(&x, &w, &mut want);
            assert_close(
                &format!("matmul {dtype} {m}x{n}x{k}"),
                &got,
                &want,
                1e-3,
                1e-4,
            );
        }
    }
    // A row slice of a fused weight is a view at an offset.
    let fused = weight_as("bf16", 96, 40, uniform(&mut rng, 96 * 40, 1.0));
    let w = fused.row_slice(32, 48);
    let x = uniform(&mut rng, 3 * 40, 1.0);
    let (mut got, mut want) = (vec![0.0; 3 * 48], vec![0.0; 3 * 48]);
    dev.matmul_wt(&x, &w, &mut got);
    reference::matmul_wt(&x, &w, &mut want);
    assert_close("matmul of a row slice", &got, &want, 1e-3, 1e-4);
}

#[test]
fn cuda_rms_norm_matches_reference() {
    let Some(dev) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(2);
    for (rows, d) in [(7, 2048), (3, 100), (1, 5000)] {
        let x = uniform(&mut rng, rows * d, 3.0);
        let gamma = uniform(&mut rng, d, 1.0);
        let (mut got, mut want) = (vec![0.0; rows * d], vec![0.0; rows * d]);
        dev.rms_norm(&x, &gamma, 1e-5, &mut got);
        reference::rms_norm(&x, &gamma, 1e-5, &mut want);
        assert_close(&format!("rms_norm {rows}x{d}"), &got, &want, 1e-5, 1e-5);
    }
}

#[test]
fn cuda_rope_matches_reference() {
    let Some(dev) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(3);
    for head_dim in [64, 96, 128] {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 10000f32.powf(-2.0 * i as f32 / head_dim as f32))
            .collect();
        let table = RopeTable::new(&inv_freq, 512);
        let (n_tok, n_heads) = (11, 3);
        let positions: Vec<usize> = (0..n_tok).map(|_| rng.gen_range(0..512)).collect();
        let mut got = uniform(&mut rng, n_tok * n_heads * head_dim, 2.0);
        let mut want = got.clone();
        dev.rope(&mut got, n_heads, &positions, &table);
        reference::rope(&mut want, n_heads, &positions, &table);
        assert_close(
            &format!("rope head_dim {head_dim}"),
            &got,
            &want,
            1e-5,
            1e-5,
        );
    }
}

#[test]
fn cuda_attention_matches_reference() {
    let Some(dev) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(4);
    let shape = |batch, q_len, kv_len, n_heads, n_kv_heads, head_dim| AttnShape {
        batch,
        q_len,
        kv_len,
        n_heads,
        n_kv_heads,
        head_dim,
    };
    let shapes = [
        shape(2, 13, 13, 4, 2, 64), // prefill, GQA groups of 2, a ragged query tile
        shape(1, 5, 40, 8, 8, 128), // a cache of 35 before 5 new queries, multi-head
        shape(1, 1, 77, 4, 1, 96),  // one decoded token, multi-query
        shape(1, 40, 40, 2, 1, 256), // the largest head_dim (dynamic shared memory > 48 KB)
        shape(3, 33, 33, 2, 2, 80), // head_dim not a multiple of 32
        shape(1, 100, 100, 4, 2, 64), // several key tiles
    ];
    for s in shapes {
        let q = uniform(&mut rng, s.batch * s.q_len * s.n_heads * s.head_dim, 1.0);
        let kv = s.batch * s.kv_len * s.n_kv_heads * s.head_dim;
        let (k, v) = (uniform(&mut rng, kv, 1.0), uniform(&mut rng, kv, 1.0));
        let (mut got, mut want) = (vec![0.0; q.len()], vec![0.0; q.len()]);
        dev.attention(&q, &k, &v, &mut got, s);
        reference::attention(&q, &k, &v, &mut want, s);
        assert_close(&format!("attention {s:?}"), &got, &want, 1e-5, 1e-4);
    }
}

#[test]
fn cuda_elementwise_ops_match_reference() {
    let Some(dev) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(5);
    let (rows, d) = (97, 1031);
    let a = uniform(&mut rng, rows * d, 6.0);
    let b = uniform(&mut rng, rows * d, 6.0);
    let bias = uniform(&mut rng, d, 1.0);

    let (mut got, mut want) = (a.clone(), a.clone());
    dev.silu_mul(&mut got, &b);
    reference::silu_mul(&mut want, &b);
    assert_close("silu_mul", &got, &want, 1e-6, 1e-5);

    let (mut got, mut want) = (a.clone(), a.clone());
    dev.add_assign(&mut got, &b);
    reference::add_assign(&mut want, &b);
    assert_close("add_assign", &got, &want, 0.0, 0.0);

    let (mut got, mut want) = (a.clone(), a);
    dev.add_bias(&mut got, &bias);
    reference::add_bias(&mut want, &bias);
    assert_close("add_bias", &got, &want, 0.0, 0.0);
}

/// log(sum exp(row)) in f64.
fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    max + row
        .iter()
        .map(|&v| (v as f64 - max).exp())
        .sum::<f64>()
        .ln()
}

fn nll_f64(logits: &[f32], targets: &[u32]) -> Vec<f32> {
    let vocab = logits.len() / targets.len();
    let rows = logits.chunks_exact(vocab).zip(targets);
    rows.map(|(row, &t)| (log_sum_exp(row) - row[t as usize] as f64) as f32)
        .collect()
}

fn kl_f64(p: &[f32], q: &[f32], vocab: usize) -> Vec<f32> {
    let rows = p.chunks_exact(vocab).zip(q.chunks_exact(vocab));
    rows.map(|(a, b)| {
        let (la, lb) = (log_sum_exp(a), log_sum_exp(b));
        let terms = a.iter().zip(b).map(|(&x, &y)| {
            let (lp, lq) = (x as f64 - la, y as f64 - lb);
            lp.exp() * (lp - lq)
        });
        terms.sum::<f64>() as f32
    })
    .collect()
}

#[test]
fn cuda_nll_and_kl_match_f64() {
    let Some(dev) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(6);
    for (rows, vocab) in [(5, 32_000), (3, 1000), (2, 151_936)] {
        let p = uniform(&mut rng, rows * vocab, 8.0);
        let q: Vec<f32> = p.iter().map(|v| v + rng.gen_range(-1.0..1.0)).collect();
        let targets: Vec<u32> = (0..rows).map(|_| rng.gen_range(0..vocab as u32)).collect();

        let mut got = vec![0.0; rows];
        dev.nll_rows(&p, &targets, &mut got);
        assert_close(
            &format!("nll {rows}x{vocab}"),
            &got,
            &nll_f64(&p, &targets),
            1e-4,
            1e-5,
        );

        dev.kl_rows(&p, &q, vocab, &mut got);
        assert_close(
            &format!("kl {rows}x{vocab}"),
            &got,
            &kl_f64(&p, &q, vocab),
            1e-4,
            1e-4,
        );

        dev.kl_rows(&p, &p, vocab, &mut got);
        assert_close(
            &format!("kl(p||p) {rows}x{vocab}"),
            &got,
            &vec![0.0; rows],
            1e-5,
            0.0,
        );
    }
}

/// Median wall time of `reps` runs of `f`, in milliseconds.
fn median_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[reps / 2]
}

/// Kernel time in ms: `reps` launches queued back to back, one synchronize, divided.
fn kernel_ms(dev: &CudaDevice, reps: usize, mut launch: impl FnMut()) -> f64 {
    launch();
    dev.stream().synchronize().unwrap();
    let start = Instant::now();
    for _ in 0..reps {
        launch();
    }
    dev.stream().synchronize().unwrap();
    start.elapsed().as_secs_f64() * 1e3 / reps as f64
}

struct Row {
    op: &'static str,
    shape: String,
    cpu_ms: f64,
    call_ms: f64,
    kernel_ms: f64,
    /// FLOPs (matmul, attention) or bytes moved (the rest) per call, for the GPU rate.
    work: f64,
    flops: bool,
}

/// Each op at the shapes of a 1B-class model (hidden 2048, MLP 8192, 32 heads and 8 KV heads
/// of 64, vocab 32000) on 128 tokens (attention: 512): the CPU device (or, for the vocabulary
/// reductions, the f64 oracle), the host-slice GPU call with its transfers, and the kernel alone.
#[test]
#[ignore = "timing; scripts/gpu-check runs it"]
fn cuda_timing_vs_cpu() {
    let Some(dev) = gpu() else { return };
    let s = dev.stream();
    let mut rng = StdRng::seed_from_u64(7);
    let (tok, hidden, mlp, vocab) = (128, 2048, 8192, 32_000);
    let mut rows = Vec::new();

    let x = uniform(&mut rng, tok * hidden, 1.0);
    let w = weight_as("bf16", mlp, hidden, uniform(&mut rng, mlp * hidden, 0.05));
    let dw = dev.upload_weight(&w).unwrap();
    for m in [tok, 1] {
        let x = &x[..m * hidden];
        let mut out = vec![0.0; m * mlp];
        let (dx, mut dout) = (s.clone_htod(x).unwrap(), s.alloc_zeros(m * mlp).unwrap());
        rows.push(Row {
            op: if m == 1 { "gemv bf16" } else { "matmul bf16" },
            shape: format!("{m}x{hidden} . {mlp}x{hidden}^T"),
            cpu_ms: median_ms(1, || Cpu.matmul_wt(x, &w, &mut out)),
            call_ms: median_ms(5, || dev.matmul_wt(x, &w, &mut out)),
            kernel_ms: kernel_ms(dev, 20, || dev.matmul_wt_dev(&dx, &dw, &mut dout).unwrap()),
            work: 2.0 * (m * hidden * mlp) as f64,
            flops: true,
        });
    }

    let gamma = uniform(&mut rng, hidden, 1.0);
    let mut out = vec![0.0; tok * hidden];
    let (dx, dg) = (s.clone_htod(&x).unwrap(), s.clone_htod(&gamma).unwrap());
    let mut dout = s.alloc_zeros(tok * hidden).unwrap();
    rows.push(Row {
        op: "rms_norm",
        shape: format!("{tok}x{hidden}"),
        cpu_ms: median_ms(5, || Cpu.rms_norm(&x, &gamma, 1e-5, &mut out)),
        call_ms: median_ms(5, || dev.rms_norm(&x, &gamma, 1e-5, &mut out)),
        kernel_ms: kernel_ms(dev, 50, || {
            dev.rms_norm_dev(&dx, &dg, 1e-5, &mut dout).unwrap()
        }),
        work: 8.0 * (tok * hidden) as f64,
        flops: false,
    });

    let (heads, kv_heads, hd) = (32, 8, 64);
    let inv_freq: Vec<f32> = (0..hd / 2)
        .map(|i| 10000f32.powf(-2.0 * i as f32 / hd as f32))
        .collect();
    let table = RopeTable::new(&inv_freq, 4096);
    let dtable = dev.upload_rope(&table).unwrap();
    let positions: Vec<usize> = (0..tok).collect();
    let mut qh = uniform(&mut rng, tok * heads * hd, 1.0);
    let mut dq = s.clone_htod(&qh).unwrap();
    rows.push(Row {
        op: "rope",
        shape: format!("{tok}x{heads}x{hd}"),
        cpu_ms: median_ms(5, || Cpu.rope(&mut qh, heads, &positions, &table)),
        call_ms: median_ms(5, || dev.rope(&mut qh, heads, &positions, &table)),
        kernel_ms: kernel_ms(dev, 50, || {
            dev.rope_dev(&mut dq, heads, &positions, &dtable).unwrap()
        }),
        work: 8.0 * (tok * heads * hd) as f64,
        flops: false,
    });

    let seq = 512;
    let shape = AttnShape {
        batch: 1,
        q_len: seq,
        kv_len: seq,
        n_heads: heads,
        n_kv_heads: kv_heads,
        head_dim: hd,
    };
    let q = uniform(&mut rng, seq * heads * hd, 1.0);
    let k = uniform(&mut rng, seq * kv_heads * hd, 1.0);
    let v = uniform(&mut rng, seq * kv_heads * hd, 1.0);
    let mut out = vec![0.0; q.len()];
    let (dq, dk, dv) = (
        s.clone_htod(&q).unwrap(),
        s.clone_htod(&k).unwrap(),
        s.clone_htod(&v).unwrap(),
    );
    let mut dout = s.alloc_zeros(q.len()).unwrap();
    rows.push(Row {
        op: "attention",
        shape: format!("{seq} tok, {heads}/{kv_heads} heads of {hd}"),
        cpu_ms: median_ms(1, || Cpu.attention(&q, &k, &v, &mut out, shape)),
        call_ms: median_ms(5, || dev.attention(&q, &k, &v, &mut out, shape)),
        kernel_ms: kernel_ms(dev, 20, || {
            dev.attention_dev(&dq, &dk, &dv, &mut dout, shape).unwrap()
        }),
        // Causal: half of the q.k and p.v products.
        work: 2.0 * 2.0 * (seq * seq / 2 * heads * hd) as f64,
        flops: true,
    });

    let mut gate = uniform(&mut rng, tok * mlp, 1.0);
    let up = uniform(&mut rng, tok * mlp, 1.0);
    let (mut dgate, dup) = (s.clone_htod(&gate).unwrap(), s.clone_htod(&up).unwrap());
    rows.push(Row {
        op: "silu_mul",
        shape: format!("{tok}x{mlp}"),
        cpu_ms: median_ms(5, || Cpu.silu_mul(&mut gate, &up)),
        call_ms: median_ms(5, || dev.silu_mul(&mut gate, &up)),
        kernel_ms: kernel_ms(dev, 50, || dev.silu_mul_dev(&mut dgate, &dup).unwrap()),
        work: 12.0 * (tok * mlp) as f64,
        flops: false,
    });

    let mut resid = x.clone();
    let mut dresid = s.clone_htod(&resid).unwrap();
    rows.push(Row {
        op: "add_assign",
        shape: format!("{tok}x{hidden}"),
        cpu_ms: median_ms(5, || Cpu.add_assign(&mut resid, &x)),
        call_ms: median_ms(5, || dev.add_assign(&mut resid, &x)),
        kernel_ms: kernel_ms(dev, 50, || dev.add_assign_dev(&mut dresid, &dx).unwrap()),
        work: 12.0 * (tok * hidden) as f64,
        flops: false,
    });

    let p = uniform(&mut rng, tok * vocab, 8.0);
    let q: Vec<f32> = p.iter().map(|v| v + rng.gen_range(-1.0..1.0)).collect();
    let mut out = vec![0.0; tok];
    let (dp, dq) = (s.clone_htod(&p).unwrap(), s.clone_htod(&q).unwrap());
    let mut dout = s.alloc_zeros(tok).unwrap();
    rows.push(Row {
        op: "kl_rows",
        shape: format!("{tok}x{vocab} (cpu: f64 oracle)"),
        cpu_ms: median_ms(1, || drop(kl_f64(&p, &q, vocab))),
        call_ms: median_ms(5, || dev.kl_rows(&p, &q, vocab, &mut out)),
        kernel_ms: kernel_ms(dev, 20, || {
            dev.kl_rows_dev(&dp, &dq, vocab, &mut dout).unwrap()
        }),
        work: 8.0 * (tok * vocab) as f64,
        flops: false,
    });

    println!("TIMING device: {}", dev.name().unwrap());
    println!(
        "TIMING {:<12} {:<34} {:>10} {:>10} {:>10} {:>9} {:>14}",
        "op", "shape", "cpu ms", "gpu call", "kernel ms", "speedup", "kernel rate"
    );
    for r in rows {
        let rate = r.work / (r.kernel_ms * 1e-3) / 1e9;
        let unit = if r.flops { "GFLOP/s" } else { "GB/s" };
        println!(
            "TIMING {:<12} {:<34} {:>10.3} {:>10.3} {:>10.4} {:>8.1}x {:>8.0} {unit}",
            r.op,
            r.shape,
            r.cpu_ms,
            r.call_ms,
            r.kernel_ms,
            r.cpu_ms / r.kernel_ms,
            rate,
        );
    }
}
