//! `evopress build-db --config FILE`: build (or resume) a variant database (SPEC §5).
//!
//! ```toml
//! [model]        path = "assets/smollm2-135m-instruct.gguf"
//! [calibration]  files = [...], seq_len, windows, sampling, seed
//! [database]     kind = "gptq", bits = [2, 3, 4, 5, 6], group_size = 64, ...
//! [output]       dir = "db/..."
//! ```
//!
//! Each `[database] kind` is one arm of [`DatabaseSection`] with its own function below.

use crate::progress;
use crate::run_config::{expand_files, CalibrationSection, ModelSection, OutputSection};
use anyhow::{Context, Result};
use evopress_core::build::{build_database, BuildEvent, BuildRequest, BuildSummary};
use evopress_core::store::CalibrationInfo;
use evopress_core::{load_model, LoadedModel};
use evopress_kernels::cpu::Cpu;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The build's TOML file (see `examples/quant-db.toml`).
    #[arg(long)]
    config: PathBuf,
    /// Stop after building this many blocks (the database stays resumable).
    #[arg(long)]
    stop_after_blocks: Option<usize>,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BuildConfig {
    pub model: ModelSection,
    pub calibration: CalibrationSection,
    pub database: DatabaseSection,
    pub output: OutputSection,
}

/// Which database, and its parameters.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DatabaseSection {
    /// GPTQ at several bit widths (SPEC §5.2).
    Gptq(evopress_quant::GptqParams),
}

pub fn run(a: Args) -> Result<()> {
    let text = std::fs::read_to_string(&a.config)
        .with_context(|| format!("reading config {}", a.config.display()))?;
    let cfg: BuildConfig =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", a.config.display()))?;
    let loaded = load_model(&cfg.model.path)
        .with_context(|| format!("loading {}", cfg.model.path.display()))?;
    match &cfg.database {
        DatabaseSection::Gptq(p) => build_gptq(&a, &cfg, &loaded, p),
    }
}

/// The calibration windows and their description for the manifest.
fn calibration(
    cfg: &BuildConfig,
    loaded: &LoadedModel,
) -> Result<(Vec<Vec<u32>>, serde_json::Value)> {
    let c = &cfg.calibration;
    let windows = c.windows(loaded.tokenizer()?)?;
    let files = expand_files(&c.files, "calibration.files")?;
    let info = CalibrationInfo {
        files: files.iter().map(|p| p.display().to_string()).collect(),
        seq_len: c.seq_len,
        windows: windows.len(),
        sampling: c.sampling,
        seed: c.seed,
        tokens: windows.iter().map(Vec::len).sum(),
    };
    Ok((windows, info.to_value()))
}

/// Runs `build_database` with a progress bar over blocks.
fn build(
    a: &Args,
    cfg: &BuildConfig,
    loaded: &LoadedModel,
    builder: &dyn evopress_core::build::VariantBuilder,
) -> Result<BuildSummary> {
    let (windows, calibration) = calibration(cfg, loaded)?;
    std::fs::create_dir_all(&cfg.output.dir)
        .with_context(|| format!("creating {}", cfg.output.dir.display()))?;
    let bar = progress::bar(loaded.model.layers.len(), "blocks", a.quiet);
    let req = BuildRequest {
        model: &loaded.model,
        model_path: &cfg.model.path,
        windows,
        calibration,
        dir: &cfg.output.dir,
        stop_after: a.stop_after_blocks,
    };
    let summary = build_database(req, &Cpu, builder, |e| match e {
        BuildEvent::Resumed { done, .. } => bar.set_position(done as u64),
        BuildEvent::Unit { block, unit } => bar.set_message(format!("block {block}: {unit}")),
        BuildEvent::BlockDone { block, .. } => bar.set_position(block as u64 + 1),
    })
    .with_context(|| format!("building {}", cfg.output.dir.display()))?;
    bar.finish_and_clear();
    Ok(summary)
}

/// The `gptq` arm: every unit at every bit width, packed.
fn build_gptq(
    a: &Args,
    cfg: &BuildConfig,
    loaded: &LoadedModel,
    params: &evopress_quant::GptqParams,
) -> Result<()> {
    let builder = evopress_quant::GptqBuilder::new(params.clone())?;
    let summary = build(a, cfg, loaded, &builder)?;
    let dir = &cfg.output.dir;
    if !summary.complete {
        println!(
            "built {} block(s) in {:.1}s; {} of {} on disk; resume with the same command",
            summary.blocks_built,
            summary.seconds,
            evopress_core::store::Manifest::read(dir)?.blocks_done.len(),
            summary.blocks_total
        );
        return Ok(());
    }
    let b = evopress_quant::QuantBackend::open_database(&loaded.model, dir)?;
    let manifest = b.table().store().manifest();
    let build_seconds: f64 = manifest.build_seconds.values().sum();
    let (db, orig) = (b.database_bytes(), b.original_layout_bytes());
    println!(
        "database {} complete: {} blocks built now in {:.1}s ({:.1}s of block solves in \
         total); {db} bytes vs {orig} bytes in the original layout (one fp16 tensor per width): \
         {:.3}x",
        dir.display(),
        summary.blocks_built,
        summary.seconds,
        build_seconds,
        db as f64 / orig as f64
    );
    Ok(())
}
