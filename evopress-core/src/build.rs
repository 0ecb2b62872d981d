//! Building a variant database (docs/variant-store.md): the calibration engine walks the model
//! block by block, a [`VariantBuilder`] turns each linear's dense weight and input Hessian into its
//! compressed variants (SparseGPT levels, GPTQ bit widths), and the store persists one block at a
//! time, so a killed build resumes at the first block not on disk and never redoes one.
//!
//! ```text
//! for each block b:
//!     H[input] = (2/n) Σ XᵀX  for the block's four linear inputs   (calibration engine)
//!     if b is on disk: skip the solve
//!     else: variants of every unit from (W, H) -> block-b.safetensors + manifest
//!     next inputs = block b run dense, or with its units at the propagation level (GPTQ)
//! ```

use crate::calibrate::{BlockCalibrator, Hessian};
use crate::error::{Error, Result};
use crate::model::{Block, Model};
use crate::store::{
    LevelEntry, ModelInfo, StoreHeader, StoreWriter, TensorData, UnitEntry, VariantStore,
};
use crate::units::{linear_units, LinearUnit};
use evopress_kernels::{Device, Weight};
use serde_json::{Map, Value};
use std::path::Path;
use std::time::Instant;

/// One compressed version of a unit, as a builder hands it to the store.
pub struct Variant {
    /// The level id the search and the config files use (sparsity offset, bit width).
    pub level: i32,
    /// Parts, stored as `<unit>/<level>/<part>`.
    pub tensors: Vec<(String, TensorData)>,
    /// `tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)` on the undamped calibration Hessian.
    pub rel_error: f64,
    /// What else the manifest should say about the level (`sparsity`, `bits`, ...).
    pub extra: Map<String, Value>,
}

impl Variant {
    /// Bytes this variant occupies in the store.
    pub fn bytes(&self) -> u64 {
        self.tensors.iter().map(|(_, t)| t.bytes.len() as u64).sum()
    }
}

/// A compression method's half of a database build.
pub trait VariantBuilder: Sync {
    /// Backend name recorded in the manifest (`sparsegpt`, `gptq`).
    fn backend(&self) -> &'static str;
    /// How the variants are stored (`masked`, `packed`), recorded in the manifest so that any
    /// reader of the format can open the store whichever builder wrote it.
    fn format(&self) -> &'static str;
    /// Hyper-parameters recorded in the manifest: a store built with other ones is not resumed.
    fn params(&self) -> Value;
    /// Every level of `unit` from its dense weight (`[rows, cols]`, fused parts stacked) and
    /// the Hessian of its inputs.
    fn build_unit(&self, unit: &LinearUnit, weight: &[f32], h: &Hessian) -> Result<Vec<Variant>>;
    /// The level whose variants stand in for the block's units when the next blocks' inputs
    /// are computed (GPTQ's quantized propagation, docs/sparsegpt-gptq.md); `None` propagates
    /// dense.
    fn propagation_level(&self) -> Option<i32> {
        None
    }
    /// A stored variant as a weight the forward pass multiplies directly.
    fn load_weight(&self, store: &VariantStore, unit: &UnitEntry, level: i32) -> Result<Weight>;
}

/// Progress of a build, for bars and logs.
pub enum BuildEvent<'a> {
    /// Blocks already on disk when the build (re)started.
    Resumed { done: usize, total: usize },
    /// Starting the solve of `unit` in `block`.
    Unit { block: usize, unit: &'a str },
    /// `block` is written.
    BlockDone {
        block: usize,
        total: usize,
        seconds: f64,
    },
}

/// What a build did.
#[derive(Debug, Clone)]
pub struct BuildSummary {
    pub blocks_built: usize,
    pub blocks_total: usize,
    pub complete: bool,
    pub seconds: f64,
}

/// The knobs of one build.
pub struct BuildRequest<'a> {
    pub model: &'a Model,
    pub model_path: &'a Path,
    pub windows: Vec<Vec<u32>>,
    /// How the windows were made, recorded in the manifest (a rebuild with other windows is
    /// not mixed into this store).
    pub calibration: Value,
    pub dir: &'a Path,
    /// Stop after building this many blocks (the store stays resumable).
    pub stop_after: Option<usize>,
}

/// Builds (or resumes) the database in `req.dir`.
pub fn build_database<D: Device + ?Sized>(
    req: BuildRequest<'_>,
    dev: &D,
    builder: &dyn VariantBuilder,
    mut progress: impl FnMut(BuildEvent<'_>),
) -> Result<BuildSummary> {
    let started = Instant::now();
    let model = req.model;
    let header = StoreHeader {
        backend: builder.backend().to_string(),
        variant_format: builder.format().to_string(),
        model: ModelInfo::of(model, req.model_path),
        params: builder.params(),
        calibration: req.calibration,
    };
    let mut writer = StoreWriter::create_or_resume(req.dir, header)?;
    let n = model.layers.len();
    let units = linear_units(model);
    let todo: Vec<usize> = (0..n).filter(|&b| !writer.is_block_done(b)).collect();
    progress(BuildEvent::Resumed {
        done: n - todo.len(),
        total: n,
    });
    let mut summary = BuildSummary {
        blocks_built: 0,
        blocks_total: n,
        complete: false,
        seconds: 0.0,
    };
    let Some(&first) = todo.first() else {
        writer.finish()?;
        summary.complete = true;
        return Ok(summary);
    };

    // Inputs of the first block to build: blocks before it run as they ran when they were
    // built (dense, or at the propagation level read back from the store).
    let mut cal = BlockCalibrator::new(model, dev, req.windows)?;
    let mut prefix = Vec::with_capacity(first);
    for b in 0..first {
        prefix.push(propagation_block(model, builder, req.dir, &units, b)?);
    }
    let mut prefix = prefix.into_iter();
    cal.skip_to(first, |_| prefix.next().flatten())?;

    let propagate_dense = builder.propagation_level().is_none();
    for b in first..n {
        if writer.is_block_done(b) {
            let replacement = propagation_block(model, builder, req.dir, &units, b)?;
            cal.advance(replacement.as_ref())?;
            continue;
        }
        if req.stop_after.is_some_and(|s| summary.blocks_built >= s) {
            break;
        }
        let t0 = Instant::now();
        let hessians = if propagate_dense {
            cal.hessians_and_advance()?
        } else {
            cal.hessians()?
        };
        let mut tensors = Vec::new();
        let mut entries = Vec::new();
        for unit in units.iter().filter(|u| u.block == b) {
            progress(BuildEvent::Unit {
                block: b,
                unit: &unit.name,
            });
            let weight = unit.dense_weight(model);
            let variants = builder.build_unit(unit, &weight, hessians.get(unit.input()))?;
            let mut levels = Vec::with_capacity(variants.len());
            for v in variants {
                levels.push(LevelEntry {
                    id: v.level,
                    bytes: v.bytes(),
                    rel_error: v.rel_error,
                    extra: v.extra,
                });
                for (part, t) in v.tensors {
                    tensors.push((format!("{}/{}/{part}", unit.name, v.level), t));
                }
            }
            entries.push(UnitEntry {
                name: unit.name.clone(),
                block: b,
                rows: unit.rows,
                cols: unit.cols,
                levels,
            });
        }
        drop(hessians);
        let seconds = t0.elapsed().as_secs_f64();
        writer.write_block(b, &tensors, entries, seconds)?;
        drop(tensors);
        if !propagate_dense {
            let replacement = propagation_block(model, builder, req.dir, &units, b)?;
            cal.advance(replacement.as_ref())?;
        }
        summary.blocks_built += 1;
        progress(BuildEvent::BlockDone {
            block: b,
            total: n,
            seconds,
        });
    }
    if (0..n).all(|b| writer.is_block_done(b)) {
        writer.finish()?;
        summary.complete = true;
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Block `b` as the next blocks' inputs see it: `None` (dense) unless the builder propagates
/// a level, then a copy of the block whose units are that level's stored variants.
fn propagation_block(
    model: &Model,
    builder: &dyn VariantBuilder,
    dir: &Path,
    units: &[LinearUnit],
    b: usize,
) -> Result<Option<Block>> {
    let Some(level) = builder.propagation_level() else {
        return Ok(None);
    };
    let store = VariantStore::open(dir)?;
    let mut block = model.layers[b].clone();
    for unit in units.iter().filter(|u| u.block == b) {
        let entry = store.unit(&unit.name).ok_or_else(|| {
            Error::Invalid(format!(
                "{}: unit `{}` of block {b} is not in the manifest",
                dir.display(),
                unit.name
            ))
        })?;
        let weight = builder.load_weight(&store, entry, level)?;
        swap_unit(&mut block, unit, &weight);
    }
    Ok(Some(block))
}

/// Puts `weight` (the whole unit, fused parts stacked) into the block's linears, each part a
/// row view of it.
pub fn swap_unit(block: &mut Block, unit: &LinearUnit, weight: &Weight) {
    for part in &unit.parts {
        block.linear_mut(part.kind).weight = weight.row_slice(part.row_offset, part.rows);
    }
}
