//! A variant database opened for the search and for evaluation: every stored variant of every
//! unit loaded once as a [`Weight`] (a view into the store's memory maps), so assembling a
//! candidate is swapping views into a clone of the dense model, never copying weights.

use crate::build::swap_unit;
use crate::error::{Error, Result};
use crate::evaluate::{Calibration, SwapEvaluator};
use crate::model::Model;
use crate::store::{ModelInfo, UnitEntry, VariantStore};
use crate::units::{linear_units, LinearUnit};
use evopress_kernels::Device;
use evopress_kernels::Weight;
use evopress_search::{Genome, SearchSpace};
use std::path::Path;

/// Reads one stored variant back as a weight (the backend's decoding of its parts).
pub type LoadWeight<'a> = &'a dyn Fn(&VariantStore, &UnitEntry, i32) -> Result<Weight>;

pub struct VariantTable {
    store: VariantStore,
    /// The model's units, in genome order.
    units: Vec<LinearUnit>,
    /// `weights[u][l]`: unit `u` at its `l`-th stored level (manifest order, ascending id).
    weights: Vec<Vec<Weight>>,
    /// `ids[u][l]`: the level id of `weights[u][l]`.
    ids: Vec<Vec<i32>>,
}

impl VariantTable {
    /// Opens the store in `dir` (checksums verified), checks that it was built for `model`
    /// and stores its variants in `format` (which `load` decodes), and loads every variant.
    pub fn open(
        model: &Model,
        dir: &std::path::Path,
        format: &str,
        load: LoadWeight<'_>,
    ) -> Result<VariantTable> {
        let store = VariantStore::open(dir)?;
        let m = store.manifest();
        let bad = |msg: String| Err(Error::Invalid(format!("{}: {msg}", dir.display())));
        if m.header.variant_format != format {
            return bad(format!(
                "a `{}` database of `{}` variants; this run reads `{format}` variants",
                m.header.backend, m.header.variant_format
            ));
        }
        if m.header.model.fingerprint != model.fingerprint() {
            return bad(format!(
                "the database was built for another model ({}, fingerprint {}), not this one \
                 (fingerprint {})",
                m.header.model.path,
                m.header.model.fingerprint,
                model.fingerprint()
            ));
        }
        let current = ModelInfo::of(model, Path::new(""));
        m.header.model.check_weights(&current, dir, true)?;
        if !m.complete {
            return bad(format!(
                "the database is incomplete ({} of {} blocks); finish it with `evopress \
                 build-db` first",
                m.blocks_done.len(),
                m.header.model.blocks
            ));
        }
        let units = linear_units(model);
        let mut weights = Vec::with_capacity(units.len());
        let mut ids = Vec::with_capacity(units.len());
        for unit in &units {
            let entry = store.unit(&unit.name).ok_or_else(|| {
                Error::Invalid(format!(
                    "{}: the database has no variants of `{}`",
                    dir.display(),
                    unit.name
                ))
            })?;
            if (entry.rows, entry.cols) != (unit.rows, unit.cols) {
                return bad(format!(
                    "`{}` is [{}, {}] in the database but [{}, {}] in the model",
                    unit.name, entry.rows, entry.cols, unit.rows, unit.cols
                ));
            }
            let mut levels: Vec<i32> = entry.levels.iter().map(|l| l.id).collect();
            levels.sort_unstable();
            let w = (levels.iter())
                .map(|&id| load(&store, entry, id))
                .collect::<Result<Vec<_>>>()?;
            weights.push(w);
            ids.push(levels);
        }
        Ok(VariantTable {
            store,
            units,
            weights,
            ids,
        })
    }

    pub fn store(&self) -> &VariantStore {
        &self.store
    }
    pub fn units(&self) -> &[LinearUnit] {
        &self.units
    }
    /// Level ids of unit `u`, ascending.
    pub fn level_ids(&self, u: usize) -> &[i32] {
        &self.ids[u]
    }
    /// The manifest entry of unit `u` (per-level bytes, errors and extras).
    pub fn entry(&self, u: usize) -> &UnitEntry {
        self.store
            .unit(&self.units[u].name)
            .expect("checked at open")
    }

    /// `model` with unit `u` at its `levels[u]`-th stored level (indices, as in a genome).
    pub fn assemble(&self, model: &Model, levels: &[u16]) -> Result<Model> {
        if levels.len() != self.units.len() {
            return Err(Error::Invalid(format!(
                "{} levels for {} units",
                levels.len(),
                self.units.len()
            )));
        }
        let mut out = model.clone();
        for ((unit, weights), &l) in self.units.iter().zip(&self.weights).zip(levels) {
            let w = weights.get(l as usize).ok_or_else(|| {
                Error::Invalid(format!("level index {l} out of range for `{}`", unit.name))
            })?;
            swap_unit(&mut out.layers[unit.block], unit, w);
        }
        Ok(out)
    }

    /// Level ids (one per unit, in unit order) to level indices, naming the first unit whose
    /// id the database lacks.
    pub fn indices(&self, ids: &[i32]) -> Result<Vec<u16>> {
        (self.units.iter().zip(&self.ids).zip(ids))
            .map(|((unit, have), id)| {
                have.iter()
                    .position(|h| h == id)
                    .map(|i| i as u16)
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "`{}` has no level {id} in the database (it has {have:?})",
                            unit.name
                        ))
                    })
            })
            .collect()
    }

    /// `errors[u][l]`: the manifest's relative error of unit `u` at `space`'s level `l` (the
    /// DP baseline's input); infinite where the store lacks the level.
    pub fn rel_errors(&self, space: &SearchSpace) -> Vec<Vec<f64>> {
        (space.units().iter().enumerate())
            .map(|(u, unit)| {
                let entry = self.entry(u);
                (unit.levels.iter())
                    .map(|l| entry.level(l.id).map_or(f64::INFINITY, |e| e.rel_error))
                    .collect()
            })
            .collect()
    }

    /// The search's fitness of genomes over this table: `indices` turns a genome into one
    /// table level index per unit, and each candidate runs from the first block whose units
    /// changed (see [`SwapEvaluator`]).
    pub fn evaluator<'a>(
        &'a self,
        model: &'a Model,
        dev: &'a dyn Device,
        cal: &'a Calibration,
        cache_cap_bytes: usize,
        indices: impl Fn(&Genome) -> Result<Vec<u16>> + 'a,
    ) -> SwapEvaluator<'a> {
        let unit_block = self.units.iter().map(|u| u.block).collect();
        let assemble = Box::new(move |g: &Genome| self.assemble(model, &indices(g)?));
        SwapEvaluator::new(model, dev, cal, unit_block, assemble, cache_cap_bytes)
    }
}
