//! The SparseGPT variant database (docs/sparsegpt-gptq.md) and the OWL database (docs/baselines.md)
//! as [`VariantBuilder`]s of the core's block-wise build driver.
//!
//! ```text
//! per unit (one linear, fused parts stacked):
//!     SparseGpt::new(W, H)                 one factorisation of the damped H^-1
//!     for each level's sparsity p:          every level from the original W (not incremental)
//!         W_p = prune(p), rounded to f16    what the forward pass will multiply
//!         <unit>/<level>/mask   u64 [rows, ceil(cols/64)]   (absent: dense variant)
//!         <unit>/<level>/values f16 [nnz]
//!         rel_error = tr(dW H dW^T) / tr(W H W^T)  on the UNDAMPED H (dead diagonal -> 1)
//! ```
//!
//! A stored variant reads back as a masked [`Weight`] whose mask and values are views into the
//! store's memory map ([`load_masked`]), so the search never copies or decodes a variant.

use crate::codec::{encode, ValueType};
use crate::levels::LevelScheme;
use crate::owl::{block_sparsities, outlier_ratio, OwlLayer};
use crate::sparsegpt::{SparseGpt, SparseGptConfig};
use crate::SparseError;
use evopress_core::build::{Variant, VariantBuilder};
use evopress_core::calibrate::{BlockCalibrator, Hessian};
use evopress_core::error::{Error, Result};
use evopress_core::hessian::{HessianError, RelError};
use evopress_core::model::Model;
use evopress_core::store::{TensorData, UnitEntry, VariantDType, VariantStore};
use evopress_core::units::{linear_units, LinearUnit};
use evopress_kernels::{Buf, Device, MaskedValues, Weight};
use half::f16;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Backend name of a SparseGPT level database.
pub const SPARSEGPT_BACKEND: &str = "sparsegpt";
/// Backend name of an OWL (λ × M grid) database.
pub const OWL_BACKEND: &str = "owl-sparsegpt";
/// The store format of sparse variants: a 1-bit mask per weight plus the kept values in f16
/// ([`load_masked`] reads it).
pub const MASKED_FORMAT: &str = "masked";

fn default_num_levels() -> u32 {
    8
}
fn default_rel_damp() -> f64 {
    0.01
}
fn default_block_size() -> usize {
    128
}
/// The original script's λ grid.
fn default_owl_lambdas() -> Vec<f64> {
    vec![0.02, 0.05, 0.08, 0.1, 0.2]
}
/// The original script's M grid.
fn default_owl_ms() -> Vec<f64> {
    vec![3.0, 5.0, 7.0, 10.0]
}

/// Hyper-parameters of a SparseGPT level database (`prune.py`'s flags).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparseGptParams {
    /// Target average sparsity `s` (level 0).
    pub sparsity: f64,
    /// Weights per level step; default `int(0.5 · min(s, 1−s) / L · hidden²)`
    /// (docs/level-schemes.md).
    #[serde(default)]
    pub weights_diff: Option<u64>,
    #[serde(default = "default_num_levels")]
    pub num_levels: u32,
    #[serde(default = "default_rel_damp")]
    pub rel_damp: f64,
    #[serde(default = "default_block_size")]
    pub block_size: usize,
}

/// Hyper-parameters of an OWL database (`owl_prune.py`'s flags).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwlParams {
    pub sparsity: f64,
    #[serde(default = "default_owl_lambdas")]
    pub lambdas: Vec<f64>,
    #[serde(default = "default_owl_ms")]
    pub ms: Vec<f64>,
    #[serde(default = "default_rel_damp")]
    pub rel_damp: f64,
    #[serde(default = "default_block_size")]
    pub block_size: usize,
}

fn sparse_err(unit: &str) -> impl Fn(SparseError) -> Error + '_ {
    move |e| Error::Invalid(format!("`{unit}`: {e}"))
}

fn hessian_err(unit: &str) -> impl Fn(HessianError) -> Error + '_ {
    move |e| Error::Invalid(format!("`{unit}`: {e}"))
}

/// One pruned version of `weight` as stored: the variant's parts, its relative error on `h`,
/// and its zero count (after rounding to f16, i.e. what the forward pass multiplies).
fn store_variant(
    unit: &LinearUnit,
    pruned: Vec<f32>,
    meter: &RelError,
    level: i32,
    mut extra: Map<String, Value>,
) -> Result<Variant> {
    let (rows, cols) = (unit.rows, unit.cols);
    // Round to the stored type first, so the mask, the zero count and the error all describe
    // exactly the weights the forward pass will use.
    let rounded: Vec<f32> = pruned.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
    drop(pruned);
    let zeros = rounded.iter().filter(|&&x| x == 0.0).count();
    let err = meter.of(&rounded).map_err(hessian_err(&unit.name))?;
    let enc = encode(&rounded, rows, cols, ValueType::F16).map_err(sparse_err(&unit.name))?;
    let mut tensors = Vec::with_capacity(2);
    if let Some(mask) = enc.mask() {
        tensors.push((
            "mask".to_string(),
            TensorData::u64(&[rows, cols.div_ceil(64)], mask),
        ));
    }
    let MaskedValues::F16(values) = enc.values() else {
        unreachable!("encoded as f16");
    };
    tensors.push((
        "values".to_string(),
        TensorData::f16(&[values.len()], values.as_slice()),
    ));
    extra.insert("zeros".into(), json!(zeros));
    Ok(Variant {
        level,
        tensors,
        rel_error: err,
        extra,
    })
}

/// Stores pruned versions of one unit as masked variants: each `(level id, pruned weights,
/// extras)` becomes a bitmask plus its kept values in f16, with its zero count (after the f16
/// rounding) and its `rel_error` on `h`. Any sparse builder (SparseGPT, Wanda, ...) ends here,
/// so every sparse store has the same layout and can be searched by the same backend.
pub fn masked_variants(
    unit: &LinearUnit,
    weight: &[f32],
    h: &Hessian,
    pruned: Vec<(i32, Vec<f32>, Map<String, Value>)>,
) -> Result<Vec<Variant>> {
    let meter =
        RelError::new(weight, unit.rows, unit.cols, &h.data).map_err(hessian_err(&unit.name))?;
    pruned
        .into_iter()
        .map(|(level, w, extra)| store_variant(unit, w, &meter, level, extra))
        .collect()
}

/// Every level of `unit` from one factorisation: `(level id, sparsity, extras)`.
fn build_levels(
    unit: &LinearUnit,
    weight: &[f32],
    h: &Hessian,
    config: SparseGptConfig,
    levels: &[(i32, f64, Map<String, Value>)],
) -> Result<Vec<Variant>> {
    let (rows, cols) = (unit.rows, unit.cols);
    let solver =
        SparseGpt::new(weight, rows, cols, &h.data, config).map_err(sparse_err(&unit.name))?;
    let meter = RelError::new(weight, rows, cols, &h.data).map_err(hessian_err(&unit.name))?;
    // Distinct sparsities only once (OWL grids repeat them when a block's LOD is extreme).
    let mut distinct: Vec<f64> = levels.iter().map(|l| l.1).collect();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    let pruned = solver
        .prune_levels(&distinct)
        .map_err(sparse_err(&unit.name))?;
    let mut out = Vec::with_capacity(levels.len());
    for (id, p, extra) in levels {
        let at = distinct.iter().position(|d| d == p).expect("listed");
        out.push(store_variant(
            unit,
            pruned[at].clone(),
            &meter,
            *id,
            extra.clone(),
        )?);
    }
    Ok(out)
}

/// Reads a stored sparse variant as a masked weight whose buffers are views into the store's
/// memory map. A variant without a `mask` part is dense (every value stored).
pub fn load_masked(store: &VariantStore, unit: &UnitEntry, level: i32) -> Result<Weight> {
    let prefix = format!("{}/{level}", unit.name);
    let values = store.tensor(&format!("{prefix}/values"))?;
    let bad =
        |what: String| Error::Invalid(format!("{}: `{prefix}`: {what}", store.dir().display()));
    if values.dtype != VariantDType::F16 {
        return Err(bad(format!("values are {:?}, expected F16", values.dtype)));
    }
    let values = Buf::<f16>::mapped(values.map.clone(), values.offset, values.numel())
        .map_err(|e| bad(e.to_string()))?;
    // A dense variant stores every value and no mask; a sparse one must have its mask.
    let mask = match store.tensor(&format!("{prefix}/mask")) {
        Ok(m) if m.dtype == VariantDType::U64 => Some(
            Buf::<u64>::mapped(m.map.clone(), m.offset, m.numel())
                .map_err(|e| bad(e.to_string()))?,
        ),
        Ok(m) => return Err(bad(format!("mask is {:?}, expected U64", m.dtype))),
        Err(_) if values.len() == unit.rows * unit.cols => None,
        Err(e) => return Err(e),
    };
    Weight::masked(unit.rows, unit.cols, mask, MaskedValues::F16(values))
        .map_err(|e| bad(e.to_string()))
}

/// SparseGPT levels `s + ℓ·wd/N` for every unit (docs/level-schemes.md).
pub struct SparseGptBuilder {
    pub params: SparseGptParams,
    pub scheme: LevelScheme,
}

impl SparseGptBuilder {
    /// Resolves the default `weights_diff` from the model's hidden size.
    pub fn new(params: SparseGptParams, model: &Model) -> Result<Self> {
        let bad = |e: SparseError| Error::Invalid(format!("sparsegpt database: {e}"));
        if params.block_size == 0 || params.rel_damp < 0.0 {
            return Err(Error::Invalid(format!(
                "sparsegpt database: block_size {} must be positive and rel_damp {} non-negative",
                params.block_size, params.rel_damp
            )));
        }
        let scheme = LevelScheme::configured(
            params.sparsity,
            params.weights_diff,
            params.num_levels,
            model.hidden_size(),
        )
        .map_err(bad)?;
        Ok(SparseGptBuilder { params, scheme })
    }
}

impl VariantBuilder for SparseGptBuilder {
    fn backend(&self) -> &'static str {
        SPARSEGPT_BACKEND
    }

    fn format(&self) -> &'static str {
        MASKED_FORMAT
    }

    fn params(&self) -> Value {
        json!({
            "sparsity": self.scheme.sparsity,
            "weights_diff": self.scheme.weights_diff,
            "num_levels": self.scheme.num_levels,
            "rel_damp": self.params.rel_damp,
            "block_size": self.params.block_size,
            "value_type": "f16",
        })
    }

    fn build_unit(&self, unit: &LinearUnit, weight: &[f32], h: &Hessian) -> Result<Vec<Variant>> {
        let levels: Vec<_> = self
            .scheme
            .levels(unit.numel())
            .into_iter()
            .map(|(id, p)| {
                let mut extra = Map::new();
                extra.insert("sparsity".into(), json!(p));
                (id, p, extra)
            })
            .collect();
        let config = SparseGptConfig {
            rel_damp: self.params.rel_damp,
            block_size: self.params.block_size,
        };
        build_levels(unit, weight, h, config, &levels)
    }

    fn load_weight(&self, store: &VariantStore, unit: &UnitEntry, level: i32) -> Result<Weight> {
        load_masked(store, unit, level)
    }
}

/// Outlier ratios `LOD_b(M)` of every block (`[block][m]`), from a dense calibration pass that
/// keeps only the Hessians' diagonals (OWL's pass 1, docs/baselines.md).
pub fn outlier_ratios<D: Device + ?Sized>(
    model: &Model,
    dev: &D,
    windows: Vec<Vec<u32>>,
    ms: &[f64],
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<Vec<f64>>> {
    let units = linear_units(model);
    let n = model.layers.len();
    let mut cal = BlockCalibrator::new(model, dev, windows)?;
    let mut out = Vec::with_capacity(n);
    for b in 0..n {
        let hessians = cal.hessians_and_advance()?;
        let block_units: Vec<&LinearUnit> = units.iter().filter(|u| u.block == b).collect();
        let weights: Vec<Vec<f32>> = block_units.iter().map(|u| u.dense_weight(model)).collect();
        let diags: Vec<Vec<f64>> = block_units
            .iter()
            .map(|u| hessians.get(u.input()).diag())
            .collect();
        drop(hessians);
        let layers: Vec<OwlLayer<'_>> = (block_units.iter().zip(&weights).zip(&diags))
            .map(|((u, w), d)| OwlLayer {
                weight: w,
                rows: u.rows,
                cols: u.cols,
                hessian_diag: d,
            })
            .collect();
        let row = ms
            .iter()
            .map(|&m| outlier_ratio(&layers, m))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Invalid(format!("OWL block {b}: {e}")))?;
        out.push(row);
        progress(b + 1, n);
    }
    Ok(out)
}

/// One OWL variant per `(λ, M)` of the grid, level id `λ_idx·|M| + M_idx`; every unit of block
/// `b` pruned by SparseGPT at `s_b(λ, M)` (OWL's pass 2).
pub struct OwlBuilder {
    pub params: OwlParams,
    /// `lod[b][m_idx]`.
    pub lod: Vec<Vec<f64>>,
    /// `sparsity[level][b]`.
    pub sparsity: Vec<Vec<f64>>,
}

impl OwlBuilder {
    /// The grid's per-block sparsities from the outlier ratios of [`outlier_ratios`].
    pub fn new(params: OwlParams, lod: Vec<Vec<f64>>) -> Result<Self> {
        if params.lambdas.is_empty() || params.ms.is_empty() {
            return Err(Error::Invalid(
                "owl database: lambdas and ms must not be empty".into(),
            ));
        }
        let mut sparsity = Vec::new();
        for &lambda in &params.lambdas {
            for m in 0..params.ms.len() {
                let col: Vec<f64> = lod.iter().map(|row| row[m]).collect();
                let s = block_sparsities(&col, params.sparsity, lambda).map_err(|e| {
                    Error::Invalid(format!(
                        "owl database: λ = {lambda}, M = {}: {e}",
                        params.ms[m]
                    ))
                })?;
                sparsity.push(s);
            }
        }
        Ok(OwlBuilder {
            params,
            lod,
            sparsity,
        })
    }

    /// `(λ, M)` of level `id`.
    pub fn grid_point(&self, id: usize) -> (f64, f64) {
        let nm = self.params.ms.len();
        (self.params.lambdas[id / nm], self.params.ms[id % nm])
    }
}

impl VariantBuilder for OwlBuilder {
    fn backend(&self) -> &'static str {
        OWL_BACKEND
    }

    fn format(&self) -> &'static str {
        MASKED_FORMAT
    }

    fn params(&self) -> Value {
        json!({
            "sparsity": self.params.sparsity,
            "lambdas": self.params.lambdas,
            "ms": self.params.ms,
            "rel_damp": self.params.rel_damp,
            "block_size": self.params.block_size,
            "value_type": "f16",
            "outlier_ratios": self.lod,
            "block_sparsities": self.sparsity,
        })
    }

    fn build_unit(&self, unit: &LinearUnit, weight: &[f32], h: &Hessian) -> Result<Vec<Variant>> {
        let levels: Vec<_> = (0..self.sparsity.len())
            .map(|id| {
                let (lambda, m) = self.grid_point(id);
                let p = self.sparsity[id][unit.block];
                let mut extra = Map::new();
                extra.insert("lambda".into(), json!(lambda));
                extra.insert("m".into(), json!(m));
                extra.insert("sparsity".into(), json!(p));
                (id as i32, p, extra)
            })
            .collect();
        let config = SparseGptConfig {
            rel_damp: self.params.rel_damp,
            block_size: self.params.block_size,
        };
        build_levels(unit, weight, h, config, &levels)
    }

    fn load_weight(&self, store: &VariantStore, unit: &UnitEntry, level: i32) -> Result<Weight> {
        load_masked(store, unit, level)
    }
}

/// Zeros and weights over every compressible unit of `model` (counted on the weights the
/// forward pass multiplies).
pub fn count_zeros(model: &Model) -> (u64, u64) {
    use rayon::prelude::*;
    linear_units(model)
        .par_iter()
        .map(|u| {
            let w = u.dense_weight(model);
            (
                w.iter().filter(|&&x| x == 0.0).count() as u64,
                w.len() as u64,
            )
        })
        .reduce(|| (0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}
