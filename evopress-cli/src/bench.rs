//! `evopress bench ...`: speed measurements whose numbers go into reports (never into tests).

use anyhow::{Context, Result};
use evopress_core::gguf::GgufWeights;
use evopress_core::units::linear_units;
use evopress_core::{load_model_with, BlockPlan, LoadOptions, Model};
use evopress_kernels::cpu::{fma_ceiling_gflops, Cpu};
use evopress_kernels::{AttnShape, Device, RopeTable, Weight};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Tokens/s and effective GFLOP/s of the dense forward pass (logits for every position).
    Forward(ForwardArgs),
    /// Seconds per generation of a search config with incremental evaluation and racing, and
    /// without each, in one run (same seed, so the same candidates), with a time profile.
    Search(SearchArgs),
}

#[derive(clap::Args)]
pub struct SearchArgs {
    #[arg(long)]
    config: PathBuf,
    /// Generations to time (after the initial selection).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    generations: u32,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct ForwardArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    seq_len: u32,
    /// Timed repetitions (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    iters: u32,
    #[arg(long)]
    json: bool,
    /// Also time every device op over one more forward and print a per-op table.
    #[arg(long)]
    profile: bool,
    /// Time the model these result files make (packed, masked or dropped) against the dense
    /// model with its linears in f32, interleaved in one run.
    #[command(flatten)]
    configs: crate::configs::ConfigArgs,
    /// What GGUF block-format tensors load as; several (`packed,f32,f16`) load the model once
    /// per choice and time them in turn in one run.
    #[arg(long, value_delimiter = ',', default_value = "packed", value_parser = parse_gguf_weights)]
    gguf_weights: Vec<GgufWeights>,
}

/// `packed`, `f32` or `f16`.
pub fn parse_gguf_weights(s: &str) -> Result<GgufWeights, String> {
    GgufWeights::from_name(s)
        .ok_or_else(|| format!("expected one of {}", GgufWeights::NAMES.join(", ")))
}

pub fn run(c: Command, device: Option<&str>) -> Result<()> {
    match c {
        Command::Forward(a) => forward(a),
        Command::Search(a) => {
            let dev = crate::device::choose(device, Some(&a.config))?;
            search(a, &*dev)
        }
    }
}

/// FLOPs of one forward over `t` tokens: 2 per multiply-add in every linear and the LM head,
/// plus causal attention's two `t x t/2` products per head.
fn forward_flops(m: &Model, t: usize) -> f64 {
    let c = &m.config;
    let linear =
        (c.linear_params_per_block() * c.num_hidden_layers + c.vocab_size * c.hidden_size) as f64;
    let attn = (c.num_hidden_layers * c.num_attention_heads * c.head_dim) as f64
        * (t * (t + 1)) as f64
        * 2.0;
    2.0 * linear * t as f64 + attn
}

/// The model with every linear unit's weights as owned dense f32: the reference forward a
/// compressed model is timed against.
fn dense_f32(model: &Model) -> Model {
    let mut out = model.clone();
    for unit in linear_units(model) {
        let w = Weight::from_f32(unit.rows, unit.cols, unit.dense_weight(model));
        evopress_core::build::swap_unit(&mut out.layers[unit.block], &unit, &w);
    }
    out
}

/// Bytes of a model's linear weights as they are stored.
fn linear_bytes(model: &Model) -> u64 {
    linear_units(model)
        .iter()
        .flat_map(|u| u.parts.iter().map(move |p| (u.block, p.kind)))
        .map(|(b, kind)| model.linear(b, kind).weight.bytes() as u64)
        .sum()
}

fn forward(a: ForwardArgs) -> Result<()> {
    let models = (a.gguf_weights.iter())
        .map(|&gguf_weights| {
            load_model_with(&a.model, LoadOptions { gguf_weights })
                .map(|l| l.model)
                .with_context(|| format!("loading {}", a.model.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let model = &models[0];
    let seq_len = a.seq_len as usize;
    let vocab = model.vocab_size() as u32;
    // Deterministic pseudo-text: the speed of a dense forward does not depend on the ids.
    let tokens: Vec<u32> = (0..seq_len as u32)
        .map(|i| (i * 7919 + 13) % vocab)
        .collect();
    let time = |m: &Model, plan: &[BlockPlan]| -> Result<f64> {
        let t0 = Instant::now();
        let h = m.hidden_states(&Cpu, &tokens, 1, plan)?;
        std::hint::black_box(m.lm_head(&Cpu, &h));
        Ok(t0.elapsed().as_secs_f64())
    };
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let full = vec![BlockPlan::FULL; model.layers.len()];
    if !a.configs.is_empty() {
        let (candidate, report) = a.configs.configs().apply(model)?;
        let dense = dense_f32(model);
        time(&dense, &full)?;
        time(&candidate.model, &candidate.plan)?;
        let (mut td, mut tc) = (Vec::new(), Vec::new());
        for _ in 0..a.iters {
            td.push(time(&dense, &full)?);
            tc.push(time(&candidate.model, &candidate.plan)?);
        }
        let (md, mc) = (median(&mut td), median(&mut tc));
        let n = seq_len as f64;
        let (bd, bc) = (linear_bytes(&dense), linear_bytes(&candidate.model));
        let out = serde_json::json!({
            "seq_len": seq_len,
            "threads": rayon::current_num_threads(),
            "dense_f32_tokens_per_second": n / md,
            "compressed_tokens_per_second": n / mc,
            "compressed_over_dense": md / mc,
            "dense_f32_linear_bytes": bd,
            "compressed_linear_bytes": bc,
            "report": report.fields,
        });
        if a.json {
            println!("{out}");
        } else {
            println!(
                "forward L={seq_len} threads={}: dense f32 {:.1} tokens/s, compressed {:.1} \
                 tokens/s: {:.2}x; linear weights {bd} -> {bc} bytes",
                rayon::current_num_threads(),
                n / md,
                n / mc,
                md / mc
            );
            report.summary.iter().for_each(|l| println!("{l}"));
        }
        return Ok(());
    }
    for m in &models {
        time(m, &full)?;
    }
    // Rounds over the loaded variants, so that a drift in machine speed hits them alike.
    let mut times = vec![Vec::new(); models.len()];
    for _ in 0..a.iters {
        for (m, t) in models.iter().zip(&mut times) {
            t.push(time(m, &full)?);
        }
    }
    let medians: Vec<f64> = times.iter_mut().map(median).collect();
    if a.profile {
        let dev = Profiled::default();
        let t0 = Instant::now();
        let h = model.hidden_states(&dev, &tokens, 1, &full)?;
        let start = Instant::now();
        std::hint::black_box(model.lm_head(&Cpu, &h));
        dev.record("lm_head".into(), start.elapsed());
        dev.print(t0.elapsed());
    }
    let median = medians[0];
    let threads = rayon::current_num_threads();
    let tokens_per_s = seq_len as f64 / median;
    let gflops = forward_flops(model, seq_len) / median / 1e9;
    let ceiling = fma_ceiling_gflops(threads);
    let peak_rss_mb = peak_rss_bytes().map(|b| b as f64 / 1e6);
    let variants: Vec<serde_json::Value> = (models.iter().zip(&a.gguf_weights).zip(&medians))
        .map(|((m, &w), &s)| {
            serde_json::json!({
                "gguf_weights": w.name(), "median_seconds": s,
                "tokens_per_second": seq_len as f64 / s, "speed_vs_first": median / s,
                "weight_bytes": m.weight_bytes(),
            })
        })
        .collect();
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "seq_len": seq_len, "threads": threads, "median_seconds": median,
                "tokens_per_second": tokens_per_s, "gflops": gflops,
                "fma_ceiling_gflops": ceiling, "fraction_of_ceiling": gflops / ceiling,
                "peak_rss_mb": peak_rss_mb, "variants": variants,
            })
        );
    } else {
        println!(
            "forward L={seq_len} threads={threads}: {tokens_per_s:.1} tokens/s, {gflops:.1} \
             GFLOP/s ({:.0}% of the measured FMA ceiling {ceiling:.1} GFLOP/s), median {median:.3}s",
            100.0 * gflops / ceiling
        );
        if models.len() > 1 {
            for v in &variants {
                println!(
                    "  gguf weights {:<6} {:>8.1} tokens/s ({:.3}x the first), weights {:.0} MB",
                    v["gguf_weights"].as_str().unwrap_or("?"),
                    v["tokens_per_second"].as_f64().unwrap_or(f64::NAN),
                    v["speed_vs_first"].as_f64().unwrap_or(f64::NAN),
                    v["weight_bytes"].as_f64().unwrap_or(f64::NAN) / 1e6
                );
            }
        }
        if let Some(mb) = peak_rss_mb {
            println!("peak RSS {mb:.0} MB");
        }
    }
    Ok(())
}

/// The CPU device with a stopwatch around every op, totals keyed by op and shape: the
/// per-op profile of `bench forward --profile`. The gap between the sum and the wall time is
/// what runs outside the device (allocation, embedding, RoPE positions).
#[derive(Default)]
struct Profiled {
    totals: Mutex<BTreeMap<String, (Duration, usize)>>,
}

impl Profiled {
    fn time<R>(&self, op: impl FnOnce() -> String, f: impl FnOnce() -> R) -> R {
        let t0 = Instant::now();
        let r = f();
        self.record(op(), t0.elapsed());
        r
    }
    fn record(&self, op: String, d: Duration) {
        let mut t = self.totals.lock().unwrap();
        let e = t.entry(op).or_default();
        e.0 += d;
        e.1 += 1;
    }
    fn print(&self, wall: Duration) {
        let t = self.totals.lock().unwrap();
        let mut rows: Vec<_> = t.iter().collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.1 .0));
        let sum: Duration = rows.iter().map(|r| r.1 .0).sum();
        eprintln!("{:<28} {:>9} {:>6} {:>6}", "op", "ms", "calls", "%");
        for (op, (d, n)) in rows {
            let ms = d.as_secs_f64() * 1e3;
            let pct = 100.0 * d.as_secs_f64() / wall.as_secs_f64();
            eprintln!("{op:<28} {ms:>9.1} {n:>6} {pct:>5.1}%");
        }
        let other = wall.saturating_sub(sum).as_secs_f64();
        let pct = 100.0 * other / wall.as_secs_f64();
        eprintln!(
            "{:<28} {:>9.1} {:>6} {pct:>5.1}%",
            "outside ops",
            other * 1e3,
            ""
        );
        eprintln!("{:<28} {:>9.1}", "wall", wall.as_secs_f64() * 1e3);
    }
}

impl Device for Profiled {
    fn matmul_wt(&self, x: &[f32], w: &Weight, out: &mut [f32]) {
        let m = out.len() / w.rows.max(1);
        let op = || format!("matmul m={m} n={} k={}", w.rows, w.cols);
        self.time(op, || Cpu.matmul_wt(x, w, out))
    }
    fn rms_norm(&self, x: &[f32], gamma: &[f32], eps: f32, out: &mut [f32]) {
        self.time(|| "rms_norm".into(), || Cpu.rms_norm(x, gamma, eps, out))
    }
    fn rope(&self, x: &mut [f32], n_heads: usize, positions: &[usize], table: &RopeTable) {
        let op = || "rope".into();
        self.time(op, || Cpu.rope(x, n_heads, positions, table))
    }
    fn attention(&self, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], shape: AttnShape) {
        self.time(|| "attention".into(), || Cpu.attention(q, k, v, out, shape))
    }
    fn silu_mul(&self, gate: &mut [f32], up: &[f32]) {
        self.time(|| "silu_mul".into(), || Cpu.silu_mul(gate, up))
    }
    fn add_assign(&self, x: &mut [f32], y: &[f32]) {
        self.time(|| "add_assign".into(), || Cpu.add_assign(x, y))
    }
    fn add_bias(&self, x: &mut [f32], bias: &[f32]) {
        self.time(|| "add_bias".into(), || Cpu.add_bias(x, bias))
    }
}

/// Peak resident set size of this process (Linux `VmHWM`), if available.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn search(a: SearchArgs, dev: &dyn Device) -> Result<()> {
    let runs =
        evopress_pipeline::bench::search(crate::METHODS, &a.config, dev, a.generations as usize)?;
    if a.json {
        println!("{}", serde_json::to_string(&runs)?);
        return Ok(());
    }
    println!("model weights held as {}", runs.weights);
    for r in &runs.modes {
        println!(
            "{:>23}: {:.2} s/generation ({:.2} CPU s), {:.2} evaluations/s, final fitness {:.6}",
            r.mode,
            r.seconds_per_generation,
            r.cpu_seconds_per_generation,
            r.evaluations_per_second,
            r.final_fitness
        );
    }
    let p = &runs.profile;
    println!(
        "where a generation's time goes (default mode): blocks {:.0}%, LM head {:.0}%, fitness \
         reduction {:.0}%, stage caches {:.0}%, the rest (sampling, assembly, bookkeeping) {:.0}%",
        100.0 * p.blocks,
        100.0 * p.lm_head,
        100.0 * p.fitness,
        100.0 * p.stage_cache,
        100.0 * p.other
    );
    Ok(())
}
