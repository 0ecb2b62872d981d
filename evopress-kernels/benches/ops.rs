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
use evopress_kernels::weight::ggml::encode_rows;
use evopress_kernels::weight::packed::words_per_row;
use evopress_kernels::{AttnShape, Buf, Device, GgmlType, MaskedValues, PackedParts, Weight};
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

/// How a [`COMPRESSED_CASES`] weight is stored.
#[derive(Clone, Copy, Debug)]
enum Kind {
    F32,
    F16,
    /// Packed codes of this many bits, group 64.
    Packed(u8),
    /// Half the weights kept, f16 values.
    Masked50,
    /// llama.cpp blocks of this type, encoded from the same values.
    Ggml(GgmlType),
}

#[derive(Clone, Copy)]
struct KindCase {
    kind: Kind,
    m: usize,
    k: usize,
    n: usize,
}

impl fmt::Display for KindCase {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let KindCase { kind, m, k, n } = self;
        write!(f, "m={m} k={k} n={n} {kind:?}")
    }
}

const fn kc(kind: Kind, m: usize, k: usize, n: usize) -> KindCase {
    KindCase { kind, m, k, n }
}

/// The demo model's MLP shapes (up/gate `[1536, 576]`, down `[576, 1536]`) in every weight
/// kind, so one run shows each kind's ratio to dense f32.
const COMPRESSED_CASES: &[KindCase] = &[
    kc(Kind::F32, 512, 576, 1536),
    kc(Kind::F16, 512, 576, 1536),
    kc(Kind::Packed(4), 512, 576, 1536),
    kc(Kind::Packed(2), 512, 576, 1536),
    kc(Kind::Masked50, 512, 576, 1536),
    kc(Kind::F32, 512, 1536, 576),
    kc(Kind::F16, 512, 1536, 576),
    kc(Kind::Packed(4), 512, 1536, 576),
    kc(Kind::Packed(2), 512, 1536, 576),
    kc(Kind::Masked50, 512, 1536, 576),
    kc(Kind::Ggml(GgmlType::Q4_K), 512, 1536, 576),
    kc(Kind::Ggml(GgmlType::Q6_K), 512, 1536, 576),
    kc(Kind::Ggml(GgmlType::Q4_1), 512, 1536, 576),
    kc(Kind::F32, 1, 576, 1536),
    kc(Kind::Packed(4), 1, 576, 1536),
    kc(Kind::Packed(2), 1, 576, 1536),
    kc(Kind::Masked50, 1, 576, 1536),
    kc(Kind::F32, 1, 1536, 576),
    kc(Kind::Ggml(GgmlType::Q4_K), 1, 1536, 576),
    kc(Kind::Ggml(GgmlType::Q6_K), 1, 1536, 576),
];

fn compressed_weight(kind: Kind, n: usize, k: usize) -> Weight {
    let data = values(n * k, 1);
    let hash = |i: usize| (i.wrapping_mul(2_654_435_761) >> 7) as u32;
    match kind {
        Kind::F32 => Weight::from_f32(n, k, data),
        Kind::F16 => Weight::from_f16(n, k, data.iter().map(|&v| f16::from_f32(v)).collect()),
        Kind::Packed(bits) => {
            let ng = k.div_ceil(64);
            let codes = (0..n * words_per_row(k, bits)).map(hash).collect();
            let scales = (0..n * ng).map(|i| f16::from_f32(0.01 + (i % 7) as f32 * 1e-3));
            let zeros = (0..n * ng).map(|i| f16::from_f32((i % (1 << bits)) as f32));
            Weight::packed(PackedParts {
                rows: n,
                cols: k,
                bits,
                group_size: 64,
                codes: Buf::owned(codes),
                scales: Buf::owned(scales.collect()),
                zeros: Buf::owned(zeros.collect()),
                perm: None,
            })
            .unwrap()
        }
        Kind::Masked50 => {
            let words = k.div_ceil(64);
            let mut mask = vec![0u64; n * words];
            let mut kept = Vec::new();
            for r in 0..n {
                for c in 0..k {
                    if hash(r * k + c) & 1 == 1 {
                        mask[r * words + c / 64] |= 1 << (c % 64);
                        kept.push(f16::from_f32(data[r * k + c]));
                    }
                }
            }
            let values = MaskedValues::F16(Buf::owned(kept));
            Weight::masked(n, k, Some(Buf::owned(mask)), values).unwrap()
        }
        Kind::Ggml(ty) => {
            let blocks = encode_rows(ty, &data, k, None).unwrap();
            Weight::ggml(ty, n, k, Buf::owned(blocks)).unwrap()
        }
    }
}

/// Dense and compressed weights through the same `matmul_wt` (decoded tile by tile).
#[divan::bench(args = COMPRESSED_CASES, max_time = 2)]
fn matmul_kinds(bencher: Bencher, c: &KindCase) {
    let w = compressed_weight(c.kind, c.n, c.k);
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
