//! The flags that turn a loaded model into a compressed one (a depth config, or a sparsity or
//! bit-width config over a variant database), shared by `eval` and `convert` so both read the
//! same files the same way.

use anyhow::{Context, Result};
use evopress_core::{BlockPlan, Candidate, Model};
use evopress_prune::drop_config;
use serde_json::{json, Map, Value};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct CandidateArgs {
    /// Drop the sub-blocks a depth config names (original `layer_drop_config.txt` or our TOML).
    #[arg(long)]
    drop_config: Option<PathBuf>,
    /// Prune the linear layers to the levels a sparsity config names (the original
    /// `name: level` text or our TOML), taken from `--database`.
    #[arg(long, requires = "database", conflicts_with = "quant_config")]
    sparse_config: Option<PathBuf>,
    /// Per-layer bit widths (original `name: bits` format or our TOML) over `--database`.
    #[arg(long, requires = "database")]
    quant_config: Option<PathBuf>,
    /// The variant database `--sparse-config` or `--quant-config` picks variants from.
    #[arg(long)]
    database: Option<PathBuf>,
}

/// A candidate and what was measured about its compression (for `--json` and printing).
pub struct Compressed {
    pub candidate: Candidate,
    pub report: Map<String, Value>,
}

impl CandidateArgs {
    /// `model` with the configs applied; the dense model when no flag is given.
    pub fn apply(&self, model: &Model) -> Result<Compressed> {
        let n = model.layers.len();
        let mut report = Map::new();
        let plan = match &self.drop_config {
            Some(p) => {
                report.insert("drop_config".into(), json!(p));
                drop_config::plan(&drop_config::read(p, n)?)
            }
            None => vec![BlockPlan::FULL; n],
        };
        let mut compressed = model.clone();
        if let (Some(cfg), Some(db)) = (&self.sparse_config, &self.database) {
            let backend = evopress_sparse::SparseBackend::open(model, db)
                .with_context(|| format!("opening the database {}", db.display()))?;
            let genome = backend.read_config(cfg)?;
            compressed = backend.candidate(model, &genome)?.model;
            let c = crate::search::CountedZeros::of(&compressed);
            report.extend([
                ("sparse_config".into(), json!(cfg)),
                ("database".into(), json!(db)),
                ("counted_zeros".into(), json!(c.zeros)),
                ("weights".into(), json!(c.weights)),
                ("counted_sparsity".into(), json!(c.sparsity)),
            ]);
        }
        if let (Some(cfg), Some(db)) = (&self.quant_config, &self.database) {
            let q = crate::quant::assemble_from_config(model, db, cfg)?;
            compressed = q.model;
            report.extend([
                ("quant_config".into(), json!(cfg)),
                ("database".into(), json!(db)),
                ("average_bits".into(), json!(q.average_bits)),
                ("stored_bytes".into(), json!(q.stored_bytes)),
                (
                    "stored_bits_per_weight".into(),
                    json!(q.stored_bits_per_weight),
                ),
            ]);
        }
        Ok(Compressed {
            candidate: Candidate {
                model: compressed,
                plan,
            },
            report,
        })
    }
}

/// A one-line human summary of the report's compression figures (empty for a dense model).
pub fn describe(report: &Map<String, Value>) -> Vec<String> {
    let mut lines = Vec::new();
    if let (Some(z), Some(w), Some(s)) = (
        report.get("counted_zeros"),
        report.get("weights"),
        report.get("counted_sparsity"),
    ) {
        lines.push(format!(
            "counted zeros in the linear layers: {z} / {w} = {s:.6}"
        ));
    }
    if let (Some(b), Some(bytes), Some(bpw)) = (
        report.get("average_bits").and_then(Value::as_f64),
        report.get("stored_bytes"),
        report.get("stored_bits_per_weight").and_then(Value::as_f64),
    ) {
        lines.push(format!(
            "quantized: {b:.4} average bits per weight, {bytes} bytes stored ({bpw:.4} bits per \
             weight with scales and zeros)"
        ));
    }
    lines
}
