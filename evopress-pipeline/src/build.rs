//! `evopress build-db`: build (or resume) the variant database a config describes, with the
//! registered method that knows its `[database] kind` (docs/variant-store.md).
//!
//! At the end `build.json` in the database directory holds the timings (per block, per layer,
//! total) and the stored bytes against the original layout (one dense fp16 tensor per level).

use crate::config::{expand_files, DbConfig};
use crate::progress;
use crate::session::Session;
use evopress_core::build::{build_database, BuildEvent, BuildRequest};
use evopress_core::fsutil::{write_atomically, DirLock};
use evopress_core::method::find_database_method;
use evopress_core::store::{CalibrationInfo, Manifest};
use evopress_core::{BuildContext, Method, Result};
use evopress_kernels::Device;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a build did, for printing.
pub struct BuildOutcome {
    pub dir: PathBuf,
    pub blocks_built: usize,
    pub blocks_total: usize,
    pub complete: bool,
    pub seconds: f64,
    /// The contents of `build.json`.
    pub summary: Value,
}

pub fn run_build(
    methods: &[&dyn Method],
    config: &Path,
    dev: &dyn Device,
    stop_after_blocks: Option<usize>,
    quiet: bool,
) -> Result<BuildOutcome> {
    let t0 = Instant::now();
    let cfg = DbConfig::read(config)?;
    let (kind, dir, params) = cfg.parts()?;
    let method = find_database_method(methods, &kind)?;
    let _lock = DirLock::acquire(&dir, "building a database")?;
    let session = Session::open(&cfg.model, dev, quiet)?;
    let model = &session.loaded.model;
    let windows = session.calibration_windows(&cfg.calibration, Some(&dir))?;
    let files = match cfg.calibration.windows {
        0 => Vec::new(),
        _ => expand_files(&cfg.calibration.files, "calibration.files")?,
    };
    let info = CalibrationInfo {
        files: (files.iter())
            .map(|p| {
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect(),
        seq_len: cfg.calibration.seq_len,
        windows: cfg.calibration.windows,
        sampling: cfg.calibration.sampling,
        seed: cfg.calibration.seed,
        tokens: windows.iter().map(Vec::len).sum(),
        generated: cfg.calibration.generated,
        temperature: (cfg.calibration.generated > 0).then_some(cfg.calibration.temperature),
    };
    let pre = progress::bar(0, "preparing", quiet);
    let on_pre = |what: &str, done: usize, total: usize| {
        pre.set_message(progress::short(what));
        pre.set_length(total as u64);
        pre.set_position(done as u64);
    };
    let ctx = BuildContext {
        model,
        dev,
        windows: &windows,
        progress: &on_pre,
    };
    let builder = method.database_builder(&kind, &params, &ctx)?;
    pre.finish_and_clear();

    let bar = progress::bar(model.layers.len(), "blocks", quiet);
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
        calibration: info.to_value(),
        dir: &dir,
        stop_after: stop_after_blocks,
    };
    let built = build_database(req, dev, builder.as_ref(), |e| match e {
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
            let short = unit.rsplit('.').next().unwrap_or(unit);
            bar.set_message(format!("block {block}: {short}"));
        }
        BuildEvent::BlockDone { .. } => {
            close(&mut current, &mut unit_seconds);
            bar.inc(1);
        }
    })?;
    bar.finish_and_clear();
    let mut s = summary(&dir, &unit_seconds)?;
    s["seconds_this_run"] = json!(t0.elapsed().as_secs_f64());
    s["blocks_built_this_run"] = json!(built.blocks_built);
    let text = serde_json::to_vec_pretty(&s).expect("json serializes");
    write_atomically(&dir.join("build.json"), &text)?;
    Ok(BuildOutcome {
        dir,
        blocks_built: built.blocks_built,
        blocks_total: built.blocks_total,
        complete: built.complete,
        seconds: t0.elapsed().as_secs_f64(),
        summary: s,
    })
}

/// Timings and sizes of a database, from its manifest and files.
pub fn summary(dir: &Path, unit_seconds: &BTreeMap<String, f64>) -> Result<Value> {
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
    Ok(json!({
        "backend": m.header.backend,
        "variant_format": m.header.variant_format,
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
