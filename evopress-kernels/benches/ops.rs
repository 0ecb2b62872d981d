//! CPU op throughput: `cargo bench -p evopress-kernels`.
//!
//! Counters are flops, so divan's "item/s" column reads as FLOP/s ("Gitem/s" = GFLOP/s; a
//! multiply-add is 2). The measured FMA ceiling is printed first so every number can be read
//! as a fraction of this machine's peak. Shapes are SmolLM-135M's (hidden 576, kv 192, MLP
//! 1536, vocab 49152) at decode (m = 1), a 512-token window and a long batch.

use divan::counter::ItemsCount;
use divan::Bencher;
use evopress_kernels::cpu::simd::{dispatch, sum_map};
use evopress_kernels::cpu::{fma_ceiling_gflops, Cpu};
use evopress_kernels::{AttnShape, Device, Weight};
use half::{bf16, f16};
use std::fmt;

fn main() {
    let threads = rayon::current_num_threads();
    println!(
        "FMA ceiling: {:.1} GFLOP/s on 1 thread, {:.1} GFLOP/s on {threads} threads",
        fma_ceiling_gflops(1),
        fma_ceiling_gflops(threads)
    );
    divan::main();
}

#[derive(Clone, Copy, Debug)]
enum Dt {
    F32,
    F16,
    BF16,
}

#[derive(Clone, Copy)]
struct Case {
    dt: Dt,
    m: usize,
    k: usize,
    n: usize,
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let Case { dt, m, k, n } = self;
        write!(f, "{dt:?} m={m} k={k} n={n}")
    }
}

const fn case(dt: Dt, m: usize, k: usize, n: usize) -> Case {
    Case { dt, m, k, n }
}

const MATMUL_CASES: &[Case] = &[
    case(Dt::F32, 512, 576, 576),
    case(Dt::F32, 512, 576, 192),
    case(Dt::F32, 512, 576, 1536),
    case(Dt::F32, 512, 1536, 576),
    case(Dt::F32, 512, 576, 49152),
    case(Dt::F32, 2048, 576, 1536),
    case(Dt::F32, 8192, 576, 1536),
    case(Dt::F32, 1, 576, 1536),
    case(Dt::F32, 1, 576, 49152),
    case(Dt::BF16, 512, 576, 576),
    case(Dt::BF16, 512, 576, 1536),
    case(Dt::BF16, 512, 1536, 576),
    case(Dt::BF16, 512, 576, 49152),
    case(Dt::BF16, 1, 576, 1536),
    case(Dt::BF16, 1, 576, 49152),
    case(Dt::F16, 512, 576, 1536),
    case(Dt::F16, 512, 576, 49152),
    case(Dt::F16, 1, 576, 1536),
];

/// Deterministic, cheap, non-trivial values.
fn values(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (((i * 2_654_435_761 + seed) % 1000) as f32 - 500.0) / 1000.0)
        .collect()
}

#[divan::bench(args = MATMUL_CASES, max_time = 2)]
fn matmul(bencher: Bencher, c: &Case) {
    let data = values(c.n * c.k, 1);
    let w = match c.dt {
        Dt::F32 => Weight::from_f32(c.n, c.k, data),
        Dt::F16 => Weight::from_f16(c.n, c.k, data.iter().map(|&v| f16::from_f32(v)).collect()),
        Dt::BF16 => Weight::from_bf16(c.n, c.k, data.iter().map(|&v| bf16::from_f32(v)).collect()),
    };
    let x = values(c.m * c.k, 2);
    let mut out = vec![0.0; c.m * c.n];
    bencher
        .counter(ItemsCount::new(2 * c.m * c.k * c.n))
        .bench_local(|| Cpu.matmul_wt(&x, &w, &mut out));
}

/// Causal attention flops: QKᵀ and PV over the visible keys, 2 flops per multiply-add.
fn attention_flops(s: &AttnShape) -> usize {
    let past = s.kv_len - s.q_len;
    let visible: usize = (0..s.q_len).map(|i| past + i + 1).sum();
    s.batch * s.n_heads * visible * s.head_dim * 4
}

const ATTN_SHAPES: &[AttnShape] = &[
    AttnShape {
        batch: 1,
        q_len: 512,
        kv_len: 512,
        n_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
    },
    AttnShape {
        batch: 1,
        q_len: 1,
        kv_len: 512,
        n_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
    },
];

#[divan::bench(args = ATTN_SHAPES, max_time = 2)]
fn attention(bencher: Bencher, s: &AttnShape) {
    let (qw, kw) = (s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim);
    let q = values(s.batch * s.q_len * qw, 3);
    let k = values(s.batch * s.kv_len * kw, 4);
    let v = values(s.batch * s.kv_len * kw, 5);
    let mut out = vec![0.0; q.len()];
    bencher
        .counter(ItemsCount::new(attention_flops(s)))
        .bench_local(|| Cpu.attention(&q, &k, &v, &mut out, *s));
}

/// Single-thread streaming read of a 128 MiB buffer: the memory bandwidth the m = 1 (GEMV)
/// matmuls should be compared with, since they read each weight byte once.
#[divan::bench(max_time = 2)]
fn read_bandwidth(bencher: Bencher) {
    let buf = values(32 << 20, 6);
    bencher
        .counter(divan::counter::BytesCount::of_slice(&buf))
        .bench_local(|| {
            dispatch(
                #[inline(always)]
                || sum_map(&buf, |x| x),
            )
        });
}
