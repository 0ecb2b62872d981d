//! The joint database builder (`[database] kind = "sparse_gptq"`): every linear layer at every
//! (sparsity, bit width) pair, each from the layer's one factorised Hessian by the joint sweep
//! of [`crate::solver`], stored packed or masked-packed ([`crate::format`]).

use crate::format::{load_variant, variant_tensors, FORMAT};
use crate::levels::Combo;
use crate::solver::JointSolver;
use evopress_core::build::{Variant, VariantBuilder};
use evopress_core::calibrate::Hessian;
use evopress_core::hessian::RelError;
use evopress_core::store::{UnitEntry, VariantStore};
use evopress_core::units::LinearUnit;
use evopress_core::{Error, Result};
use evopress_kernels::Weight;
use evopress_quant::{QuantSpec, RangeSearch};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The backend name in a joint store's manifest.
pub const BACKEND: &str = "sparse_gptq";

/// `[database] kind = "sparse_gptq"`: which combinations to store, and the solver's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JointParams {
    /// Sparsities, multiples of 0.001 in `[0, 1)`; 0 stores plain GPTQ variants.
    pub sparsities: Vec<f64>,
    /// Bit widths, 2..=8. Every sparsity is stored at every width.
    pub bits: Vec<u8>,
    /// Kept weights per quantization group: the group spans this many columns when dense and
    /// proportionally more when sparse (docs/joint-search.md).
    #[serde(default = "default_group_size")]
    pub group_size: usize,
    /// MSE-clipped grid ranges instead of min-max.
    #[serde(default)]
    pub mse: bool,
    #[serde(default = "default_rel_damp")]
    pub rel_damp: f32,
    /// The `[sparsity, bits]` variant the next blocks' inputs see while building; dense when
    /// absent.
    #[serde(default)]
    pub propagation: Option<(f64, u8)>,
}

fn default_group_size() -> usize {
    64
}
fn default_rel_damp() -> f32 {
    0.01
}

impl JointParams {
    /// The combinations, sorted, checked and de-duplicated.
    pub fn combos(&self) -> Result<Vec<Combo>> {
        let bad = |msg: String| Error::Invalid(format!("sparse_gptq database: {msg}"));
        if self.sparsities.is_empty() || self.bits.is_empty() {
            return Err(bad("`sparsities` and `bits` must not be empty".into()));
        }
        if self.group_size == 0 {
            return Err(bad("`group_size` must be at least 1".into()));
        }
        if !(self.rel_damp.is_finite() && self.rel_damp >= 0.0) {
            return Err(bad(format!("`rel_damp` = {} must be ≥ 0", self.rel_damp)));
        }
        let mut combos = Vec::new();
        for &s in &self.sparsities {
            for &b in &self.bits {
                combos.push(Combo::new(s, b).map_err(|e| bad(e.to_string()))?);
            }
        }
        combos.sort_unstable();
        combos.dedup();
        if let Some((s, b)) = self.propagation {
            let c = Combo::new(s, b).map_err(|e| bad(format!("`propagation`: {e}")))?;
            if !combos.contains(&c) {
                return Err(bad(format!(
                    "`propagation` = [{s}, {b}] is not a stored combination"
                )));
            }
        }
        Ok(combos)
    }

    fn spec(&self, c: Combo) -> QuantSpec {
        QuantSpec {
            bits: c.bits,
            group_size: c.group_columns(self.group_size),
            sym: false,
            range: if self.mse {
                RangeSearch::GPTQ_MSE
            } else {
                RangeSearch::MinMax
            },
        }
    }
}

/// [`VariantBuilder`] of the joint database.
pub struct JointBuilder {
    params: JointParams,
    combos: Vec<Combo>,
}

impl JointBuilder {
    pub fn new(params: JointParams) -> Result<Self> {
        let combos = params.combos()?;
        Ok(JointBuilder { params, combos })
    }
}

impl VariantBuilder for JointBuilder {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn format(&self) -> &'static str {
        FORMAT
    }

    fn params(&self) -> Value {
        serde_json::to_value(&self.params).expect("params serialize")
    }

    fn build_unit(&self, unit: &LinearUnit, weight: &[f32], h: &Hessian) -> Result<Vec<Variant>> {
        let (rows, cols) = (unit.rows, unit.cols);
        let fail = |e: evopress_core::hessian::HessianError| {
            Error::Invalid(format!("sparse_gptq of `{}`: {e}", unit.name))
        };
        if h.dim != cols {
            return Err(Error::Invalid(format!(
                "`{}`: Hessian is {}x{}, the weight has {cols} columns",
                unit.name, h.dim, h.dim
            )));
        }
        // As the GPTQ builder: the solver sees the f32-rounded Hessian, so a resumed build
        // reproduces the stored variants bit for bit.
        let h32: Vec<f32> = h.data.iter().map(|&v| v as f32).collect();
        let solver = JointSolver::new(weight, rows, cols, &h32, self.params.rel_damp as f64)
            .map_err(fail)?;
        let meter = RelError::new(weight, rows, cols, &h.data).map_err(fail)?;
        self.combos
            .par_iter()
            .map(|&c| {
                let spec = self.params.spec(c);
                let solved = solver.solve(c.sparsity(), &spec);
                let rel_error = meter.of(&solved.w_hat).map_err(fail)?;
                let mut extra = Map::new();
                extra.insert("sparsity".into(), json!(c.sparsity()));
                extra.insert("bits".into(), json!(c.bits));
                extra.insert("group_size".into(), json!(spec.group_size));
                Ok(Variant {
                    level: c.id(),
                    tensors: variant_tensors(&solved, &spec),
                    rel_error,
                    extra,
                })
            })
            .collect()
    }

    fn propagation_level(&self) -> Option<i32> {
        let (s, b) = self.params.propagation?;
        Combo::new(s, b).ok().map(Combo::id)
    }

    fn load_weight(&self, store: &VariantStore, unit: &UnitEntry, level: i32) -> Result<Weight> {
        load_variant(store, unit, level)
    }
}
