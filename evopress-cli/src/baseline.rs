//! `evopress baseline drop`: the one-shot block-dropping baselines (docs/baselines.md) on the same
//! model, calibration data, k and held-out text as a search config, for a comparison table.

use crate::run_config::{BackendSection, FitnessKindName, RunConfig};
use crate::search::{calibrate, held_out_ppl};
use crate::write_atomically;
use anyhow::{Context, Result};
use evopress_core::{load_model, Candidate};
use evopress_kernels::cpu::Cpu;
use evopress_prune::baselines::{self, Method};
use evopress_prune::drop_config;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Drop k whole blocks chosen by a scoring method (k from the config's backend.sparsity).
    Drop(DropArgs),
    /// Uniform SparseGPT, DP over per-layer errors and OWL at a sparsity search config's
    /// database (docs/baselines.md).
    Sparse(crate::baseline_sparse::SparseArgs),
    /// Bit-width baselines on a quant search config: uniform, best-of-32 random, DP.
    Quant(crate::quant::BaselineArgs),
}

#[derive(clap::Args)]
pub struct DropArgs {
    /// A depth search config: model, calibration, eval, backend.sparsity, output.dir.
    #[arg(long)]
    config: PathBuf,
    /// cosine, norm_ratio, window_cosine, perplexity, kl, brute_force, or all (the five
    /// scoring methods).
    #[arg(long, default_value = "all")]
    method: String,
    #[arg(long)]
    quiet: bool,
}

pub fn run(c: Command) -> Result<()> {
    let a = match c {
        Command::Drop(a) => a,
        Command::Sparse(a) => return crate::baseline_sparse::run(a),
        Command::Quant(a) => return crate::quant::baseline(a),
    };
    let mut cfg = RunConfig::read(&a.config)?;
    let BackendSection::Depth(backend) = cfg.backend.clone() else {
        anyhow::bail!(
            "{}: `baseline drop` needs a depth config ([backend] kind = \"depth\")",
            a.config.display()
        );
    };
    let loaded = load_model(&cfg.model.path)
        .with_context(|| format!("loading {}", cfg.model.path.display()))?;
    let model = &loaded.model;
    let n = model.layers.len();
    let k = backend.k(n)?;
    let methods: Vec<&str> = match a.method.as_str() {
        "all" => Method::ALL.iter().map(|m| m.name()).collect(),
        m => vec![m],
    };

    let (mut cal_kl, mut cal_ppl) = (None, None);
    let mut rows = Vec::new();
    for name in methods {
        let (mask, score) = if name == "brute_force" {
            let legal: Vec<usize> = match &backend.legal {
                Some(p) => {
                    let m = drop_config::read(p, n)?;
                    (0..n).filter(|&i| m.attn[i] && m.mlp[i]).collect()
                }
                None => (0..n).collect(),
            };
            let cal = calibrate(&loaded, &cfg, a.quiet)?;
            let bar = crate::progress::bar(0, "brute force", a.quiet);
            let (mask, f) = baselines::brute_force(model, &Cpu, &cal, &legal, k, |i, n| {
                bar.set_length(n as u64);
                bar.set_position(i as u64);
            })?;
            bar.finish_and_clear();
            (mask, Some(f))
        } else {
            let method = Method::parse(name).map_err(|_| {
                anyhow::anyhow!("unknown --method `{name}`; expected cosine, norm_ratio, window_cosine, perplexity, kl, brute_force or all")
            })?;
            // Single-block perplexity needs perplexity calibration; every other method is
            // content with the KL one (the hidden-state scores use only its tokens).
            let (slot, kind) = match method {
                Method::Perplexity => (&mut cal_ppl, FitnessKindName::Ppl),
                _ => (&mut cal_kl, FitnessKindName::Kl),
            };
            if slot.is_none() {
                cfg.fitness.kind = kind;
                *slot = Some(calibrate(&loaded, &cfg, a.quiet)?);
            }
            let cal = slot.as_ref().expect("just filled");
            (baselines::run(model, &Cpu, cal, method, k)?.config, None)
        };
        let candidate = Candidate {
            model: model.clone(),
            plan: drop_config::plan(&mask),
        };
        let ppl = held_out_ppl(&loaded, &cfg.eval, &candidate, a.quiet)?;
        let blocks: Vec<usize> = (0..n).filter(|&i| mask.attn[i]).collect();
        println!(
            "{name:>14}  blocks {blocks:?}  held-out perplexity {:.4}",
            ppl.perplexity()
        );
        rows.push(serde_json::json!({
            "method": name, "k": k, "blocks": blocks, "calibration_fitness": score,
            "held_out_perplexity": ppl.perplexity(), "tokens_scored": ppl.tokens,
        }));
    }
    std::fs::create_dir_all(&cfg.output.dir)?;
    let path = cfg.output.dir.join("baselines.json");
    write_atomically(&path, serde_json::to_string_pretty(&rows)?.as_bytes())?;
    println!("written {}", path.display());
    Ok(())
}
