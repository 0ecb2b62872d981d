//! The GPTQ database builder (docs/sparsegpt-gptq.md): every unit at every bit width from one
//! factorised Hessian, stored as bit-packed codes with f16 scales and zeros, the way
//! [`evopress_core::build::build_database`] persists variants.
//!
//! Per variant the store holds `<unit>/<bits>/codes` (u32 `[rows, words_per_row]`),
//! `<unit>/<bits>/scales` and `<unit>/<bits>/zeros` (f16 `[rows, n_groups]`) and, with dynamic
//! act-order groups, `<unit>/<bits>/perm` (u32 `[cols]`). The manifest records per level
//! `bits`, `group_size` and the relative output error on the *undamped* Hessian.

use crate::{GptqConfig, GptqHessian, PackedMatrix, QuantError, QuantSpec, RangeSearch};
use evopress_core::build::{Variant, VariantBuilder};
use evopress_core::calibrate::Hessian;
use evopress_core::hessian::RelError;
use evopress_core::store::{TensorData, UnitEntry, VariantStore};
use evopress_core::units::LinearUnit;
use evopress_core::{Error, Result};
use evopress_kernels::weight::packed::words_per_row;
use evopress_kernels::{Buf, PackedParts, Weight};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The backend name in a GPTQ store's manifest.
pub const BACKEND: &str = "gptq";
/// The store format of quantized variants: bit-packed codes plus f16 scales and zeros per
/// group ([`load_packed`] reads it).
pub const PACKED_FORMAT: &str = "packed";

/// Which activations the blocks after a built block see (docs/sparsegpt-gptq.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Propagation {
    /// Earlier blocks dense, as SparseGPT's build.
    Dense,
    /// Earlier blocks replaced by their variants at `calibration_bits` (the original `quant.py`).
    #[default]
    Quantized,
}

/// GPTQ database hyper-parameters (the `[database]` section of a `gptq` build config and the
/// manifest's `params`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptqParams {
    /// Bit widths stored per unit (2..=8).
    #[serde(default = "default_bits")]
    pub bits: Vec<u8>,
    /// Columns per quantization group; the last group of a row may be partial.
    #[serde(default = "default_group_size")]
    pub group_size: usize,
    /// Symmetric grid instead of asymmetric.
    #[serde(default)]
    pub sym: bool,
    /// Quantize columns by descending Hessian diagonal (the permutation is stored).
    #[serde(default)]
    pub act_order: bool,
    /// Fit all groups up front on the original weights (natural storage order with act-order).
    #[serde(default)]
    pub static_groups: bool,
    /// MSE-clipped range search (reference GPTQ's grid) instead of min-max.
    #[serde(default)]
    pub mse: bool,
    #[serde(default = "default_rel_damp")]
    pub rel_damp: f32,
    #[serde(default = "default_block_size")]
    pub block_size: usize,
    #[serde(default)]
    pub propagation: Propagation,
    /// The bit width whose variants feed the next blocks under quantized propagation.
    #[serde(default = "default_calibration_bits")]
    pub calibration_bits: u8,
}

fn default_bits() -> Vec<u8> {
    vec![2, 3, 4, 5, 6]
}
fn default_group_size() -> usize {
    128
}
fn default_rel_damp() -> f32 {
    0.01
}
fn default_block_size() -> usize {
    128
}
fn default_calibration_bits() -> u8 {
    3
}

impl Default for GptqParams {
    fn default() -> Self {
        GptqParams {
            bits: default_bits(),
            group_size: default_group_size(),
            sym: false,
            act_order: false,
            static_groups: false,
            mse: false,
            rel_damp: default_rel_damp(),
            block_size: default_block_size(),
            propagation: Propagation::default(),
            calibration_bits: default_calibration_bits(),
        }
    }
}

impl GptqParams {
    /// Checks the values and returns the sorted, de-duplicated bit widths.
    pub fn validate(&self) -> Result<Vec<u8>> {
        let bad = |msg: String| Err(Error::Invalid(format!("gptq database: {msg}")));
        let mut bits = self.bits.clone();
        bits.sort_unstable();
        bits.dedup();
        if bits.is_empty() {
            return bad("`bits` is empty".into());
        }
        if let Some(b) = bits.iter().find(|b| !(2..=8).contains(*b)) {
            return bad(format!("bit width {b} is not in 2..=8"));
        }
        if self.group_size == 0 {
            return bad("`group_size` must be at least 1".into());
        }
        if self.block_size == 0 {
            return bad("`block_size` must be at least 1".into());
        }
        if !(self.rel_damp.is_finite() && self.rel_damp >= 0.0) {
            return bad(format!("`rel_damp` = {} must be ≥ 0", self.rel_damp));
        }
        if self.propagation == Propagation::Quantized && !bits.contains(&self.calibration_bits) {
            return bad(format!(
                "`calibration_bits` = {} must be one of `bits` {bits:?} for quantized \
                 propagation",
                self.calibration_bits
            ));
        }
        Ok(bits)
    }

    fn spec(&self, bits: u8) -> QuantSpec {
        QuantSpec {
            bits,
            group_size: self.group_size,
            sym: self.sym,
            range: if self.mse {
                RangeSearch::GPTQ_MSE
            } else {
                RangeSearch::MinMax
            },
        }
    }

    fn gptq_config(&self) -> GptqConfig {
        GptqConfig {
            rel_damp: self.rel_damp,
            block_size: self.block_size,
            act_order: self.act_order,
            static_groups: self.static_groups,
        }
    }
}

/// [`VariantBuilder`] for GPTQ: one variant per bit width (level id = bits).
pub struct GptqBuilder {
    params: GptqParams,
    bits: Vec<u8>,
}

impl GptqBuilder {
    pub fn new(params: GptqParams) -> Result<Self> {
        let bits = params.validate()?;
        Ok(GptqBuilder { params, bits })
    }
    pub fn params(&self) -> &GptqParams {
        &self.params
    }
}

fn quant_err(unit: &str, e: QuantError) -> Error {
    Error::Invalid(format!("gptq of `{unit}`: {e}"))
}

/// The stored tensors of a packed matrix under their part names.
pub fn packed_tensors(p: &PackedMatrix) -> Vec<(String, TensorData)> {
    let g = p.n_groups();
    let mut t = vec![
        (
            "codes".to_string(),
            TensorData::u32(&[p.rows, p.words_per_row()], &p.codes),
        ),
        ("scales".into(), TensorData::f16(&[p.rows, g], &p.scales)),
        ("zeros".into(), TensorData::f16(&[p.rows, g], &p.zeros)),
    ];
    if let Some(perm) = &p.perm {
        t.push(("perm".into(), TensorData::u32(&[p.cols], perm)));
    }
    t
}

impl VariantBuilder for GptqBuilder {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn format(&self) -> &'static str {
        PACKED_FORMAT
    }

    fn params(&self) -> Value {
        serde_json::to_value(&self.params).expect("params serialize")
    }

    fn build_unit(&self, unit: &LinearUnit, weight: &[f32], h: &Hessian) -> Result<Vec<Variant>> {
        let (rows, cols) = (unit.rows, unit.cols);
        if h.dim != cols {
            return Err(Error::Invalid(format!(
                "`{}`: Hessian is {}x{}, the weight has {cols} columns",
                unit.name, h.dim, h.dim
            )));
        }
        // GPTQ's rounding decisions cascade, so a last-bit change of `H` moves a 2-bit error by
        // percents: the solver keeps the f32-rounded Hessian it has always been given, so that
        // a resumed build and a rebuild reproduce the stored variants bit for bit.
        let h32: Vec<f32> = h.data.iter().map(|&v| v as f32).collect();
        let prepared = GptqHessian::new(&h32, cols, &self.params.gptq_config())
            .map_err(|e| quant_err(&unit.name, e))?;
        let meter = RelError::new(weight, rows, cols, &h.data)
            .map_err(|e| quant_err(&unit.name, e.into()))?;
        self.bits
            .par_iter()
            .map(|&bits| {
                let q = prepared
                    .quantize(weight, rows, &self.params.spec(bits))
                    .map_err(|e| quant_err(&unit.name, e))?;
                let rel_error = meter
                    .of(&q.w_hat)
                    .map_err(|e| quant_err(&unit.name, e.into()))?;
                let mut extra = Map::new();
                extra.insert("bits".into(), json!(bits));
                extra.insert("group_size".into(), json!(self.params.group_size));
                Ok(Variant {
                    level: bits as i32,
                    tensors: packed_tensors(&q.packed),
                    rel_error,
                    extra,
                })
            })
            .collect()
    }

    fn propagation_level(&self) -> Option<i32> {
        match self.params.propagation {
            Propagation::Dense => None,
            Propagation::Quantized => Some(self.params.calibration_bits as i32),
        }
    }

    fn load_weight(&self, store: &VariantStore, unit: &UnitEntry, level: i32) -> Result<Weight> {
        load_packed(store, unit, level)
    }
}

/// A stored GPTQ variant as a packed [`Weight`] whose tables are views into the store's
/// memory maps (nothing is decoded or copied).
pub fn load_packed(store: &VariantStore, unit: &UnitEntry, level: i32) -> Result<Weight> {
    let name = &unit.name;
    let entry = unit
        .level(level)
        .ok_or_else(|| Error::Invalid(format!("`{name}` has no level {level} in the database")))?;
    let int = |key: &str| {
        entry.extra.get(key).and_then(Value::as_u64).ok_or_else(|| {
            Error::format(
                store.dir().join("manifest.json"),
                format!("`{name}` level {level} has no integer `{key}`"),
            )
        })
    };
    let bits = int("bits")? as u8;
    let group_size = int("group_size")? as usize;
    let (rows, cols) = (unit.rows, unit.cols);
    let part = |p: &str| store.tensor(&format!("{name}/{level}/{p}"));
    let layout = |p: &str, e: evopress_kernels::WeightError| {
        Error::format(
            store.dir(),
            format!("`{name}/{level}/{p}` cannot be used: {e}"),
        )
    };
    let expect = |p: &str, t: &evopress_core::store::RawTensor, n: usize| {
        if t.numel() == n {
            Ok(())
        } else {
            Err(Error::format(
                store.dir(),
                format!(
                    "`{name}/{level}/{p}` has {} elements, expected {n}",
                    t.numel()
                ),
            ))
        }
    };
    let codes = part("codes")?;
    let scales = part("scales")?;
    let zeros = part("zeros")?;
    let n_groups = cols.div_ceil(group_size);
    expect("codes", &codes, rows * words_per_row(cols, bits))?;
    expect("scales", &scales, rows * n_groups)?;
    expect("zeros", &zeros, rows * n_groups)?;
    let perm = match store.tensor(&format!("{name}/{level}/perm")) {
        Ok(p) => {
            expect("perm", &p, cols)?;
            Some(Buf::mapped(p.map.clone(), p.offset, cols).map_err(|e| layout("perm", e))?)
        }
        Err(Error::MissingTensor { .. }) => None,
        Err(e) => return Err(e),
    };
    let parts = PackedParts {
        rows,
        cols,
        bits,
        group_size,
        codes: Buf::mapped(codes.map.clone(), codes.offset, codes.numel())
            .map_err(|e| layout("codes", e))?,
        scales: Buf::mapped(scales.map.clone(), scales.offset, scales.numel())
            .map_err(|e| layout("scales", e))?,
        zeros: Buf::mapped(zeros.map.clone(), zeros.offset, zeros.numel())
            .map_err(|e| layout("zeros", e))?,
        perm,
    };
    Weight::packed(parts).map_err(|e| layout("codes", e))
}

/// What the original database layout spends on `unit` at every bit width: one dense fp16
/// `[rows, cols]` tensor per level.
pub fn original_layout_bytes(unit: &UnitEntry) -> u64 {
    2 * (unit.rows * unit.cols) as u64 * unit.levels.len() as u64
}
