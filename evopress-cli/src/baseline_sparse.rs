//! `evopress baseline sparse`: the sparsity baselines (docs/baselines.md) on the same model,
//! database, calibration and held-out text as a sparsity search config:
//!
//! - `uniform`: every layer at level 0 (uniform SparseGPT, the search's start);
//! - `dp`: per-layer relative errors of the database taken as additive, levels chosen by
//!   dynamic programming under `Σ level = 0` (SPDY-style);
//! - `owl`: an OWL database's λ × M grid, the point with the best calibration perplexity.
//!
//! Writes `<output.dir>/baselines.json` (held-out perplexity and counted sparsity per method)
//! and each method's level file in both formats under `<output.dir>/baseline-<method>/`.

use crate::run_config::{BackendSection, RunConfig};
use crate::search::{held_out_ppl, CountedZeros};
use crate::{progress, write_atomically};
use anyhow::{bail, Context, Result};
use evopress_core::data;
use evopress_core::search::dp::dp_allocate;
use evopress_core::{load_model, Candidate, LoadedModel};
use evopress_kernels::cpu::Cpu;
use evopress_sparse::SparseBackend;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct SparseArgs {
    /// A sparsity search config (`[backend] kind = "sparse"`): model, database, calibration,
    /// eval, output.dir.
    #[arg(long)]
    config: PathBuf,
    /// uniform, dp, owl or all (owl only with --owl-database).
    #[arg(long, default_value = "all")]
    method: String,
    /// The OWL database (`evopress build-db` with `kind = "owl"`), for `owl`.
    #[arg(long)]
    owl_database: Option<PathBuf>,
    /// Calibration windows OWL's grid points are compared on (the first N of the config's;
    /// default all).
    #[arg(long)]
    selection_windows: Option<usize>,
    #[arg(long)]
    quiet: bool,
}

/// Calibration perplexity of a candidate on the config's calibration windows.
fn calibration_ppl(
    loaded: &LoadedModel,
    cfg: &RunConfig,
    limit: Option<usize>,
    candidate: &Candidate,
) -> Result<f64> {
    let windows = cfg.calibration.windows(loaded.tokenizer()?)?;
    let n = limit.unwrap_or(windows.len()).min(windows.len());
    let refs: Vec<&[u32]> = windows[..n].iter().map(Vec::as_slice).collect();
    let sum = data::perplexity(&candidate.model, &Cpu, &refs, &candidate.plan, |_| {})?;
    Ok(sum.perplexity())
}

pub fn run(a: SparseArgs) -> Result<()> {
    let cfg = RunConfig::read(&a.config)?;
    let BackendSection::Sparse(section) = &cfg.backend else {
        bail!(
            "{}: `baseline sparse` needs a config with [backend] kind = \"sparse\"",
            a.config.display()
        );
    };
    let methods: Vec<&str> = match a.method.as_str() {
        "all" if a.owl_database.is_some() => vec!["uniform", "dp", "owl"],
        "all" => vec!["uniform", "dp"],
        m @ ("uniform" | "dp" | "owl") => vec![m],
        m => bail!("unknown --method `{m}`; expected uniform, dp, owl or all"),
    };
    if methods.contains(&"owl") && a.owl_database.is_none() {
        bail!("--method owl needs --owl-database DIR (an `evopress build-db` OWL database)");
    }
    let loaded = load_model(&cfg.model.path)
        .with_context(|| format!("loading {}", cfg.model.path.display()))?;
    let model = &loaded.model;
    let db = SparseBackend::open(model, &section.database)
        .with_context(|| format!("opening {}", section.database.display()))?;
    let space = db.space()?;
    std::fs::create_dir_all(&cfg.output.dir)?;

    let mut rows = Vec::new();
    for method in methods {
        let t0 = Instant::now();
        let (backend, genome, detail) = match method {
            "uniform" => (&db, db.uniform(0)?, json!(null)),
            "dp" => {
                let errors: Vec<Vec<f64>> = (0..db.table.units().len())
                    .map(|u| {
                        let entry = db.table.entry(u);
                        (db.table.level_ids(u).iter())
                            .map(|&id| entry.level(id).expect("listed").rel_error)
                            .collect()
                    })
                    .collect();
                let g = dp_allocate(&space, &errors)?;
                let total: f64 = (g.0.iter().enumerate())
                    .map(|(u, &l)| errors[u][l as usize])
                    .sum();
                (&db, g, json!({ "sum_rel_error": total }))
            }
            _ => {
                let dir = a.owl_database.as_ref().expect("checked");
                let owl = SparseBackend::open(model, dir)
                    .with_context(|| format!("opening {}", dir.display()))?;
                let ids = owl.table.level_ids(0).to_vec();
                let bar = progress::bar(ids.len(), "OWL grid", a.quiet);
                let mut grid = Vec::new();
                let mut best: Option<(f64, i32)> = None;
                for (i, &id) in ids.iter().enumerate() {
                    let candidate = owl.candidate(model, &owl.uniform(id)?)?;
                    let ppl = calibration_ppl(&loaded, &cfg, a.selection_windows, &candidate)?;
                    let level = owl.table.entry(0).level(id).expect("listed");
                    grid.push(json!({
                        "level": id, "lambda": level.extra.get("lambda"), "m": level.extra.get("m"),
                        "calibration_perplexity": ppl,
                    }));
                    if best.is_none_or(|(b, _)| ppl < b) {
                        best = Some((ppl, id));
                    }
                    bar.set_position(i as u64 + 1);
                }
                bar.finish_and_clear();
                let (ppl, id) = best.expect("a non-empty grid");
                let level = owl.table.entry(0).level(id).expect("listed").clone();
                let detail = json!({
                    "database": dir, "level": id, "lambda": level.extra.get("lambda"),
                    "m": level.extra.get("m"), "calibration_perplexity": ppl, "grid": grid,
                });
                let genome = owl.uniform(id)?;
                // Owned by this iteration: evaluate here and push the row.
                let candidate = owl.candidate(model, &genome)?;
                let row = finish(
                    &loaded, &cfg, &owl, &genome, &candidate, method, detail, t0, a.quiet,
                )?;
                rows.push(row);
                continue;
            }
        };
        let candidate = backend.candidate(model, &genome)?;
        let row = finish(
            &loaded, &cfg, backend, &genome, &candidate, method, detail, t0, a.quiet,
        )?;
        rows.push(row);
    }
    // Methods run separately accumulate in one file: a method's new row replaces its old one.
    let path = cfg.output.dir.join("baselines.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(serde_json::Value::Array(old)) = serde_json::from_str(&text) {
            let mut merged: Vec<serde_json::Value> = (old.into_iter())
                .filter(|o| rows.iter().all(|r| r["method"] != o["method"]))
                .collect();
            merged.append(&mut rows);
            rows = merged;
        }
    }
    write_atomically(&path, serde_json::to_string_pretty(&rows)?.as_bytes())?;
    println!("written {}", path.display());
    Ok(())
}

/// Held-out perplexity and counted zeros of one method's candidate; writes its level files.
#[allow(clippy::too_many_arguments)]
fn finish(
    loaded: &LoadedModel,
    cfg: &RunConfig,
    backend: &SparseBackend,
    genome: &evopress_core::search::Genome,
    candidate: &Candidate,
    method: &str,
    detail: serde_json::Value,
    t0: Instant,
    quiet: bool,
) -> Result<serde_json::Value> {
    let dir = cfg.output.dir.join(format!("baseline-{method}"));
    std::fs::create_dir_all(&dir)?;
    for (name, text) in backend.config_texts(genome) {
        write_atomically(&dir.join(name), text.as_bytes())?;
    }
    let ppl = held_out_ppl(loaded, &cfg.eval, candidate, quiet)?;
    let counted = CountedZeros::of(&candidate.model);
    let level_sum: i64 = backend.ids(genome).iter().map(|&i| i as i64).sum();
    println!(
        "{method:>8}  held-out perplexity {:.4}  counted sparsity {} / {} = {:.6}  level sum {level_sum}",
        ppl.perplexity(),
        counted.zeros,
        counted.weights,
        counted.sparsity
    );
    Ok(json!({
        "method": method,
        "held_out_perplexity": ppl.perplexity(),
        "tokens_scored": ppl.tokens,
        "counted_zeros": counted.zeros,
        "weights": counted.weights,
        "counted_sparsity": counted.sparsity,
        "level_sum": level_sum,
        "config": dir.join(evopress_sparse::backend::ORIGINAL_CONFIG),
        "detail": detail,
        "seconds": t0.elapsed().as_secs_f64(),
    }))
}
