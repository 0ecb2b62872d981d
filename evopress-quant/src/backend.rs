//! Bit-width allocation (docs/level-schemes.md, docs/search.md) as a [`CompressionBackend`] over a
//! GPTQ database: levels are the stored bit widths, candidates are the dense model with every
//! linear swapped for a packed variant (a view into the store's maps), and the fitness is computed
//! incrementally from the first block whose widths changed ([`SwapEvaluator`]).

use crate::builder::{load_packed, BACKEND};
use evopress_core::evaluate::{Calibration, SwapEvaluator};
use evopress_core::level_config;
use evopress_core::search::{
    Budget, Evaluator, Genome, Group, GroupRule, GroupStart, Level, QuantUnit, SearchSpace, Unit,
};
use evopress_core::variants::VariantTable;
use evopress_core::{Candidate, CompressionBackend, Error, Model, Result};
use evopress_kernels::Device;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The original format's file name (`name: bits` lines, no trailing newline).
pub const ORIGINAL_CONFIG: &str = "quant_config.txt";
pub const TOML_CONFIG: &str = "quant_config.toml";

/// The `[backend] kind = "quant"` settings of a search config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantSearchParams {
    /// A GPTQ database built by `evopress build-db`.
    pub database: std::path::PathBuf,
    /// Average bits per weight.
    pub target_bits: f64,
    #[serde(default)]
    pub group_rule: GroupRule,
    #[serde(default = "default_step")]
    pub step: i32,
    /// Count each variant's real storage (codes + scales + zeros + permutation, from the
    /// manifest's `bytes`) against `target_bits · numel` instead of the code bits only. Implies
    /// one group under a cost ceiling (`group_rule = "none"`).
    #[serde(default)]
    pub count_overhead: bool,
}

fn default_step() -> i32 {
    1
}

pub struct QuantBackend {
    table: VariantTable,
    params: QuantSearchParams,
}

impl QuantBackend {
    /// Opens the database for `model` (every variant mapped once).
    pub fn open(model: &Model, params: QuantSearchParams) -> Result<Self> {
        if params.count_overhead && params.group_rule != GroupRule::None {
            return Err(Error::Invalid(format!(
                "backend: count_overhead = true needs group_rule = \"none\" (the budget is a \
                 ceiling on stored bits, not a per-group sum of widths), got {:?}",
                params.group_rule
            )));
        }
        let table = VariantTable::open(model, &params.database, BACKEND, &load_packed)?;
        Ok(QuantBackend { table, params })
    }

    /// Opens a database for reading configurations only (no search target).
    pub fn open_database(model: &Model, dir: &Path) -> Result<Self> {
        Self::open(
            model,
            QuantSearchParams {
                database: dir.into(),
                target_bits: f64::NAN,
                group_rule: GroupRule::Size,
                step: 1,
                count_overhead: false,
            },
        )
    }

    pub fn table(&self) -> &VariantTable {
        &self.table
    }
    pub fn params(&self) -> &QuantSearchParams {
        &self.params
    }

    /// The units with their stored bit widths, in genome order.
    pub fn quant_units(&self) -> Vec<QuantUnit> {
        (self.table.units().iter().enumerate())
            .map(|(u, unit)| QuantUnit {
                name: unit.name.clone(),
                numel: unit.numel() as u64,
                bits: self.table.level_ids(u).to_vec(),
            })
            .collect()
    }

    /// The search space: widths averaging `target_bits` (docs/level-schemes.md), or with
    /// `count_overhead` the stored bits of each variant under the ceiling `target · numel`.
    pub fn space(&self) -> Result<SearchSpace> {
        let p = &self.params;
        if !p.count_overhead {
            return SearchSpace::quantization(
                self.quant_units(),
                p.target_bits,
                p.group_rule,
                p.step,
            );
        }
        let numel: u64 = self.quant_units().iter().map(|u| u.numel).sum();
        let max_cost = (numel as f64 * p.target_bits).floor() as u64;
        let mut common: Option<Vec<i32>> = None;
        let mut units = Vec::new();
        for (u, unit) in self.table.units().iter().enumerate() {
            let entry = self.table.entry(u);
            let ids = self.table.level_ids(u);
            let levels = ids
                .iter()
                .map(|&id| {
                    let bytes = entry.level(id).expect("the table's ids").bytes;
                    Level::new(id, 8 * bytes)
                })
                .collect();
            common = Some(match common {
                None => ids.to_vec(),
                Some(c) => c.into_iter().filter(|b| ids.contains(b)).collect(),
            });
            units.push(Unit {
                name: unit.name.clone(),
                group: 0,
                levels,
            });
        }
        let widths = common.unwrap_or_default();
        let base = widths
            .iter()
            .copied()
            .find(|&b| b as f64 >= p.target_bits)
            .or(widths.last().copied())
            .ok_or_else(|| Error::Invalid("no bit width common to all layers".into()))?;
        let groups = vec![Group {
            name: "all (stored bits)".into(),
            start: GroupStart::uniform(base),
        }];
        SearchSpace::new(
            units,
            groups,
            Budget::CostCeiling {
                max_cost,
                step: p.step,
            },
        )
    }

    /// `errors[u][l]`: the manifest's relative error of unit `u` at the space's level `l`
    /// (the DP baseline's input, docs/baselines.md).
    pub fn rel_errors(&self, space: &SearchSpace) -> Vec<Vec<f64>> {
        (space.units().iter().enumerate())
            .map(|(u, unit)| {
                let entry = self.table.entry(u);
                (unit.levels.iter())
                    .map(|l| entry.level(l.id).map_or(f64::INFINITY, |e| e.rel_error))
                    .collect()
            })
            .collect()
    }

    /// Bytes the chosen variants occupy in the store (codes, scales, zeros, permutations).
    pub fn stored_bytes(&self, ids: &[i32]) -> u64 {
        (0..self.table.units().len())
            .zip(ids)
            .map(|(u, &id)| self.table.entry(u).level(id).map_or(0, |l| l.bytes))
            .sum()
    }

    /// Bytes of the whole database in its files (every unit at every width).
    pub fn database_bytes(&self) -> u64 {
        self.table
            .store()
            .manifest()
            .files
            .values()
            .map(|f| f.bytes)
            .sum()
    }

    /// What the original layout would spend on the same database: one dense fp16 tensor per
    /// unit and width.
    pub fn original_layout_bytes(&self) -> u64 {
        (0..self.table.units().len())
            .map(|u| crate::builder::original_layout_bytes(self.table.entry(u)))
            .sum()
    }

    /// Weights in all units.
    pub fn numel(&self) -> u64 {
        self.table.units().iter().map(|u| u.numel() as u64).sum()
    }

    /// Parameter-weighted average code bits of a per-unit width assignment.
    pub fn average_bits(&self, ids: &[i32]) -> f64 {
        let (mut bits, mut numel) = (0f64, 0f64);
        for (unit, &b) in self.table.units().iter().zip(ids) {
            bits += unit.numel() as f64 * b as f64;
            numel += unit.numel() as f64;
        }
        bits / numel.max(1.0)
    }

    /// `model` with unit `u` at width `ids[u]`.
    pub fn assemble_ids(&self, model: &Model, ids: &[i32]) -> Result<Model> {
        self.table.assemble(model, &self.table.indices(ids)?)
    }

    /// Reads a width file (original format, or TOML by extension) in unit order.
    pub fn read_config(&self, path: &Path) -> Result<Vec<i32>> {
        let names: Vec<&str> = self.table.units().iter().map(|u| u.name.as_str()).collect();
        level_config::read(path, &names)
    }

    /// The two config files of a width assignment: the original's (units grouped as the
    /// space groups them, genome order within a group) and our TOML.
    pub fn config_texts(&self, space: &SearchSpace, ids: &[i32]) -> Vec<(String, String)> {
        let units = space.units();
        let mut order: Vec<usize> = (0..units.len()).collect();
        order.sort_by_key(|&u| units[u].group);
        let grouped = order.iter().map(|&u| (units[u].name.as_str(), ids[u]));
        let natural = units
            .iter()
            .map(|u| u.name.as_str())
            .zip(ids.iter().copied());
        vec![
            (ORIGINAL_CONFIG.into(), level_config::to_original(grouped)),
            (TOML_CONFIG.into(), level_config::to_toml(natural)),
        ]
    }
}

impl<D: Device> CompressionBackend<D> for QuantBackend {
    fn name(&self) -> &'static str {
        "quant"
    }

    fn search_space(&self, _model: &Model) -> Result<SearchSpace> {
        self.space()
    }

    fn evaluator<'a>(
        &'a self,
        model: &'a Model,
        dev: &'a D,
        cal: &'a Calibration,
        cache_cap_bytes: usize,
    ) -> Box<dyn Evaluator + 'a> {
        let space = self
            .space()
            .expect("the space was built before the evaluator");
        let unit_block = self.table.units().iter().map(|u| u.block).collect();
        let assemble = Box::new(move |g: &Genome| {
            let ids = space.level_ids(g);
            self.assemble_ids(model, &ids)
        });
        Box::new(SwapEvaluator::new(
            model,
            dev,
            cal,
            unit_block,
            assemble,
            cache_cap_bytes,
        ))
    }

    fn config_files(&self, _model: &Model, genome: &Genome) -> Vec<(String, String)> {
        match self.space() {
            Ok(space) => {
                let ids = space.level_ids(genome);
                self.config_texts(&space, &ids)
            }
            Err(_) => Vec::new(),
        }
    }

    fn load_candidate(&self, model: &Model, dir: &Path) -> Result<Candidate> {
        let ids = self.read_config(&dir.join(ORIGINAL_CONFIG))?;
        Ok(Candidate::dense(&self.assemble_ids(model, &ids)?))
    }
}
