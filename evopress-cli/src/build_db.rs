//! `evopress build-db --config FILE`: build (or resume) a variant database.
//!
//! ```toml
//! [model]        path = "..."
//! [calibration]  files, seq_len, windows, sampling, seed   (as in a search config)
//! [database]     kind = "sparsegpt" | "owl" | "gptq", dir = "...", then the method's parameters
//! ```
//!
//! A killed build resumes where it stopped (the store keeps whole blocks). At the end
//! `build.json` in the database directory holds the timings (per block, per layer, total) and
//! the stored bytes against the original layout (one dense fp16 tensor per level).

use crate::progress;
use crate::run_config::{CalibrationSection, ModelSection};
use crate::write_atomically;
use anyhow::{Context, Result};
use evopress_core::build::{build_database, BuildEvent, BuildRequest, VariantBuilder};
use evopress_core::store::{CalibrationInfo, Manifest};
use evopress_core::{load_model, Model};
use evopress_kernels::cpu::Cpu;
use evopress_sparse::{outlier_ratios, OwlBuilder, OwlParams, SparseGptBuilder, SparseGptParams};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// The database's TOML file (see `examples/sparse-db-50.toml`).
    #[arg(long)]
    config: PathBuf,
    /// Build at most this many blocks in this invocation (the store stays resumable).
    #[arg(long)]
    stop_after_blocks: Option<usize>,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DbConfig {
    pub model: ModelSection,
    pub calibration: CalibrationSection,
    pub database: DatabaseSection,
}

/// Which database, where, and the method's parameters.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DatabaseSection {
    /// SparseGPT levels `s + ℓ·wd/N` (docs/level-schemes.md).
    Sparsegpt(WithDir<SparseGptParams>),
    /// OWL: SparseGPT at per-block sparsities for a λ × M grid (docs/baselines.md).
    Owl(WithDir<OwlParams>),
    /// GPTQ at several bit widths, bit-packed (docs/sparsegpt-gptq.md).
    Gptq(WithDir<evopress_quant::GptqParams>),
}

/// `dir` plus a builder's parameters, which are recorded in the manifest without the
/// directory (a moved store still resumes). Read through a table so that unknown keys stay
/// errors of the parameters' own `deny_unknown_fields` (serde's `flatten` would accept them).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(
    try_from = "toml::Table",
    bound(deserialize = "P: serde::de::DeserializeOwned")
)]
pub struct WithDir<P> {
    pub dir: PathBuf,
    #[serde(flatten)]
    pub params: P,
}

impl<P: serde::de::DeserializeOwned> TryFrom<toml::Table> for WithDir<P> {
    type Error = String;
    fn try_from(mut t: toml::Table) -> Result<Self, String> {
        let dir = match t.remove("dir") {
            Some(toml::Value::String(d)) => PathBuf::from(d),
            Some(other) => return Err(format!("`dir` must be a path string, not {other}")),
            None => return Err("missing field `dir`".into()),
        };
        let params = P::deserialize(toml::Value::Table(t)).map_err(|e| e.to_string())?;
        Ok(WithDir { dir, params })
    }
}

impl DbConfig {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }
}

impl DatabaseSection {
    pub fn dir(&self) -> &Path {
        match self {
            DatabaseSection::Sparsegpt(WithDir { dir, .. })
            | DatabaseSection::Owl(WithDir { dir, .. })
            | DatabaseSection::Gptq(WithDir { dir, .. }) => dir,
        }
    }
}

/// The calibration windows and their description for the manifest.
fn calibration(
    section: &CalibrationSection,
    loaded: &evopress_core::LoadedModel,
) -> Result<(Vec<Vec<u32>>, serde_json::Value)> {
    let windows = section.windows(loaded.tokenizer()?)?;
    let files = crate::run_config::expand_files(&section.files, "calibration.files")?;
    let info = CalibrationInfo {
        files: files
            .iter()
            .map(|p| {
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect(),
        seq_len: section.seq_len,
        windows: windows.len(),
        sampling: section.sampling,
        seed: section.seed,
        tokens: windows.iter().map(Vec::len).sum(),
    };
    Ok((windows, info.to_value()))
}

fn builder(
    db: &DatabaseSection,
    model: &Model,
    windows: &[Vec<u32>],
    quiet: bool,
) -> Result<Box<dyn VariantBuilder>> {
    Ok(match db {
        DatabaseSection::Sparsegpt(d) => Box::new(SparseGptBuilder::new(d.params.clone(), model)?),
        DatabaseSection::Owl(d) => {
            let bar = progress::bar(model.layers.len(), "OWL pass 1", quiet);
            let lod = outlier_ratios(model, &Cpu, windows.to_vec(), &d.params.ms, |i, _| {
                bar.set_position(i as u64)
            })?;
            bar.finish_and_clear();
            Box::new(OwlBuilder::new(d.params.clone(), lod)?)
        }
        DatabaseSection::Gptq(d) => Box::new(evopress_quant::GptqBuilder::new(d.params.clone())?),
    })
}

/// Timings and sizes of a finished database, from its manifest and files.
pub fn summary(dir: &Path, unit_seconds: &BTreeMap<String, f64>) -> Result<serde_json::Value> {
    let m = Manifest::read(dir)?;
    let stored: u64 = m
        .units
        .iter()
        .flat_map(|u| &u.levels)
        .map(|l| l.bytes)
        .sum();
    let original: u64 = (m.units.iter())
        .map(|u| (u.rows * u.cols * 2 * u.levels.len()) as u64)
        .sum();
    let files: u64 = m.files.values().map(|f| f.bytes).sum();
    let block_seconds: f64 = m.build_seconds.values().sum();
    let n_units = m.units.len().max(1);
    Ok(serde_json::json!({
        "backend": m.header.backend,
        "params": m.header.params,
        "blocks": m.blocks_done.len(),
        "units": m.units.len(),
        "variants": m.units.iter().map(|u| u.levels.len()).sum::<usize>(),
        "complete": m.complete,
        "stored_bytes": stored,
        "file_bytes": files,
        "original_layout_bytes": original,
        "ratio_stored_to_original": stored as f64 / original.max(1) as f64,
        "ratio_files_to_original": files as f64 / original.max(1) as f64,
        "seconds_per_block": m.build_seconds,
        "seconds_all_blocks": block_seconds,
        "mean_seconds_per_block": block_seconds / m.build_seconds.len().max(1) as f64,
        "mean_seconds_per_layer": block_seconds / n_units as f64,
        "seconds_per_layer_this_run": unit_seconds,
    }))
}

pub fn run(a: Args) -> Result<()> {
    let t0 = Instant::now();
    let cfg = DbConfig::read(&a.config)?;
    let loaded = load_model(&cfg.model.path)
        .with_context(|| format!("loading {}", cfg.model.path.display()))?;
    let model = &loaded.model;
    let (windows, cal_info) = calibration(&cfg.calibration, &loaded)?;
    let dir = cfg.database.dir().to_path_buf();
    let builder = builder(&cfg.database, model, &windows, a.quiet)?;

    let bar = progress::bar(model.layers.len(), "blocks", a.quiet);
    let mut unit_seconds = BTreeMap::new();
    let mut current: Option<(String, Instant)> = None;
    let close = |current: &mut Option<(String, Instant)>, map: &mut BTreeMap<String, f64>| {
        if let Some((name, t)) = current.take() {
            map.insert(name, t.elapsed().as_secs_f64());
        }
    };
    let req = BuildRequest {
        model,
        model_path: &cfg.model.path,
        windows,
        calibration: cal_info,
        dir: &dir,
        stop_after: a.stop_after_blocks,
    };
    let built = build_database(req, &Cpu, builder.as_ref(), |e| match e {
        BuildEvent::Resumed { done, total } => {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            if done > 0 {
                bar.println(format!("resuming: {done} of {total} blocks on disk"));
            }
        }
        BuildEvent::Unit { block, unit } => {
            close(&mut current, &mut unit_seconds);
            current = Some((unit.to_string(), Instant::now()));
            bar.set_message(format!("block {block}: {}", short(unit)));
        }
        BuildEvent::BlockDone { block, seconds, .. } => {
            close(&mut current, &mut unit_seconds);
            bar.inc(1);
            if a.quiet {
                eprintln!("block {block} built in {seconds:.1}s");
            }
        }
    })?;
    bar.finish_and_clear();
    let mut s = summary(&dir, &unit_seconds)?;
    s["seconds_this_run"] = serde_json::json!(t0.elapsed().as_secs_f64());
    s["blocks_built_this_run"] = serde_json::json!(built.blocks_built);
    write_atomically(
        &dir.join("build.json"),
        serde_json::to_string_pretty(&s)?.as_bytes(),
    )?;
    println!(
        "{} blocks built this run in {:.1}s ({}/{} blocks on disk{})\nstored {:.2} MB vs original layout {:.2} MB ({:.3}x); {:.2}s per block, {:.2}s per layer\nsummary in {}",
        built.blocks_built,
        t0.elapsed().as_secs_f64(),
        s["blocks"],
        built.blocks_total,
        if built.complete { ", complete" } else { "; resume with the same command" },
        s["stored_bytes"].as_f64().unwrap_or(0.0) / 1e6,
        s["original_layout_bytes"].as_f64().unwrap_or(0.0) / 1e6,
        s["ratio_stored_to_original"].as_f64().unwrap_or(0.0),
        s["mean_seconds_per_block"].as_f64().unwrap_or(0.0),
        s["mean_seconds_per_layer"].as_f64().unwrap_or(0.0),
        dir.join("build.json").display()
    );
    Ok(())
}

fn short(unit: &str) -> &str {
    unit.rsplit('.').next().unwrap_or(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gptq_section_takes_dir_and_rejects_unknown_keys() {
        let ok: DatabaseSection =
            toml::from_str("kind = \"gptq\"\ndir = \"db\"\nbits = [2, 4]\ngroup_size = 64")
                .unwrap();
        let DatabaseSection::Gptq(d) = ok else {
            panic!("parsed as another kind")
        };
        assert_eq!(
            (d.dir, d.params.bits, d.params.group_size),
            ("db".into(), vec![2, 4], 64)
        );
        let bad = toml::from_str::<DatabaseSection>("kind = \"gptq\"\ndir = \"db\"\nbitz = [2]");
        assert!(bad.unwrap_err().to_string().contains("bitz"));
    }
}
