//! Wanda (Sun et al., 2023) as a variant database for the EvoPress sparsity search
//! (docs/adding-a-backend.md walks through this crate as the example of a new method).
//!
//! Wanda scores weight `W[i, j]` by `|W[i, j]| · ‖X_j‖₂`, the weight's magnitude times the norm
//! of its input feature over the calibration tokens, and zeroes the lowest-scored weights of
//! every output row; unlike SparseGPT it never updates the weights it keeps. `‖X_j‖₂²` is, up
//! to the Hessian's scale, the diagonal of the `H = (2/n) Σ XᵀX` the build driver already
//! accumulates, so the whole method is [`prune`] plus the level bookkeeping below.
//!
//! The database stores every layer at the sparsity levels of the SparseGPT database
//! (`s + ℓ · weights_diff / numel`, docs/level-schemes.md) as masked variants, so the sparse
//! search backend searches it unchanged: `[backend] kind = "sparse"` (or `"wanda"`) with
//! `database = "<dir>"`.

use evopress_core::build::{Variant, VariantBuilder};
use evopress_core::calibrate::Hessian;
use evopress_core::method::parse_section;
use evopress_core::store::{UnitEntry, VariantStore};
use evopress_core::units::LinearUnit;
use evopress_core::{BuildContext, Candidate, CompressionBackend, ConfigFlag, Error, Method};
use evopress_core::{Model, Report, Result};
use evopress_kernels::Weight;
use evopress_sparse::{load_masked, masked_variants, LevelScheme, MASKED_FORMAT};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::path::Path;

/// The registry entry.
pub static WANDA: Wanda = Wanda;

pub struct Wanda;

/// `[database] kind = "wanda"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WandaParams {
    /// Target average sparsity `s` (level 0).
    pub sparsity: f64,
    /// Weights per level step; default as for SparseGPT (`0.5·min(s, 1−s)/L · hidden²`).
    #[serde(default)]
    pub weights_diff: Option<u64>,
    #[serde(default = "default_num_levels")]
    pub num_levels: u32,
}

fn default_num_levels() -> u32 {
    8
}

impl Method for Wanda {
    fn name(&self) -> &'static str {
        "wanda"
    }

    fn about(&self) -> &'static str {
        "Wanda: |W|·‖X‖ per output row, no weight update (a sparse database; searched as sparse)"
    }

    /// A Wanda database is a sparse one: the sparse backend searches it.
    fn open(&self, section: &toml::Table, model: &Model) -> Result<Box<dyn CompressionBackend>> {
        evopress_sparse::SPARSE.open(section, model)
    }

    fn database_kinds(&self) -> &'static [&'static str] {
        &["wanda"]
    }

    fn database_builder(
        &self,
        _kind: &str,
        params: &toml::Table,
        ctx: &BuildContext,
    ) -> Result<Box<dyn VariantBuilder>> {
        let p: WandaParams = parse_section(params, "[database] (kind = \"wanda\")")?;
        Ok(Box::new(WandaBuilder::new(p, ctx.model)?))
    }

    /// Its level files are sparse ones: `--sparse-config` reads them.
    fn config_flag(&self) -> Option<ConfigFlag> {
        None
    }

    fn apply_config(&self, _: &mut Candidate, file: &Path, _: Option<&Path>) -> Result<Report> {
        Err(Error::Invalid(format!(
            "{}: Wanda results are sparse level files; apply them with --sparse-config",
            file.display()
        )))
    }
}

/// Builds every level of every linear by Wanda.
pub struct WandaBuilder {
    params: WandaParams,
    scheme: LevelScheme,
}

impl WandaBuilder {
    pub fn new(params: WandaParams, model: &Model) -> Result<Self> {
        let bad = |e: evopress_sparse::SparseError| Error::Invalid(format!("wanda database: {e}"));
        let scheme = LevelScheme::configured(
            params.sparsity,
            params.weights_diff,
            params.num_levels,
            model.hidden_size(),
        )
        .map_err(bad)?;
        Ok(WandaBuilder { params, scheme })
    }
}

impl VariantBuilder for WandaBuilder {
    fn backend(&self) -> &'static str {
        "wanda"
    }

    fn format(&self) -> &'static str {
        MASKED_FORMAT
    }

    fn params(&self) -> Value {
        json!({
            "sparsity": self.scheme.sparsity,
            "weights_diff": self.scheme.weights_diff,
            "num_levels": self.scheme.num_levels,
            "requested": self.params,
        })
    }

    fn build_unit(&self, unit: &LinearUnit, weight: &[f32], h: &Hessian) -> Result<Vec<Variant>> {
        let norms: Vec<f32> = h.diag().iter().map(|&d| d.max(0.0).sqrt() as f32).collect();
        let pruned = (self.scheme.levels(unit.numel()).into_iter())
            .map(|(id, p)| {
                let zeros = (p * unit.numel() as f64).round() as usize;
                let mut extra = Map::new();
                extra.insert("sparsity".into(), json!(p));
                (
                    id,
                    prune(weight, unit.rows, unit.cols, &norms, zeros),
                    extra,
                )
            })
            .collect();
        masked_variants(unit, weight, h, pruned)
    }

    fn load_weight(&self, store: &VariantStore, unit: &UnitEntry, level: i32) -> Result<Weight> {
        load_masked(store, unit, level)
    }
}

/// Zeroes exactly `zeros` weights of the row-major `[rows, cols]` matrix `w`: in every output
/// row the lowest `|W[i, j]| · norms[j]` (ties to the lower column), `zeros / rows` per row and
/// one more in the first `zeros % rows` rows, so level budgets hold exactly.
pub fn prune(w: &[f32], rows: usize, cols: usize, norms: &[f32], zeros: usize) -> Vec<f32> {
    let (per_row, extra) = (zeros / rows, zeros % rows);
    let mut out = w.to_vec();
    out.par_chunks_mut(cols).enumerate().for_each(|(i, row)| {
        let k = (per_row + usize::from(i < extra)).min(cols);
        if k == 0 {
            return;
        }
        let mut order: Vec<(f32, u32)> = (row.iter().zip(norms).enumerate())
            .map(|(j, (x, n))| (x.abs() * n, j as u32))
            .collect();
        order.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        for &(_, j) in &order[..k] {
            row[j as usize] = 0.0;
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_zeroes_exactly_the_lowest_scores_per_row() {
        // Scores: row 0 is 1, 20, 0.3 (third, then first, go first); row 1 is 4, 5, 0.6.
        let w = [1.0, -2.0, 3.0, 4.0, 0.5, -6.0];
        let norms = [1.0, 10.0, 0.1];
        assert_eq!(prune(&w, 2, 3, &norms, 2), [1.0, -2.0, 0.0, 4.0, 0.5, 0.0]);
        // Three zeros over two rows: the first row takes the extra one.
        let three = prune(&w, 2, 3, &norms, 3);
        assert_eq!(three, [0.0, -2.0, 0.0, 4.0, 0.5, 0.0]);
        assert_eq!(prune(&w, 2, 3, &norms, 6), [0.0; 6]);
    }
}
