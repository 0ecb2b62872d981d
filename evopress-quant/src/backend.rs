//! Bit-width allocation (docs/level-schemes.md) as a [`Method`] over a GPTQ
//! database: levels are the stored bit widths, candidates are the dense model with every
//! linear swapped for a packed variant (a view into the store's maps), and the fitness is
//! computed incrementally from the first block whose widths changed ([`SwapEvaluator`]).

use crate::builder::{load_packed, GptqBuilder, GptqParams, PACKED_FORMAT};
use crate::space::{quantization_space, GroupRule, QuantUnit};
use evopress_core::build::VariantBuilder;
use evopress_core::evaluate::Calibration;
use evopress_core::level_config;
use evopress_core::method::parse_section;
use evopress_core::variants::VariantTable;
use evopress_core::{
    Baseline, BaselineContext, BaselineInfo, BuildContext, Candidate, CompressionBackend,
    ConfigFlag, Error, Method, Model, Report, Result,
};
use evopress_kernels::Device;
use evopress_search::dp::dp_allocate;
use evopress_search::{Budget, Evaluator, Genome, Group, GroupStart, Level, SearchSpace, Unit};
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
    /// Random starts the `random` baseline (best of N) scores.
    #[serde(default = "default_random_candidates")]
    pub random_candidates: usize,
}

fn default_random_candidates() -> usize {
    32
}

fn default_step() -> i32 {
    1
}

pub struct QuantBackend {
    table: VariantTable,
    params: QuantSearchParams,
    /// The search space; `None` for a database opened only to read configurations.
    space: Option<SearchSpace>,
}

/// The registry entry.
pub struct Quant;

impl Method for Quant {
    fn name(&self) -> &'static str {
        "quant"
    }

    fn about(&self) -> &'static str {
        "quantization: a bit width per linear layer from a GPTQ database"
    }

    fn open(&self, section: &toml::Table, model: &Model) -> Result<Box<dyn CompressionBackend>> {
        let p: QuantSearchParams = parse_section(section, "[backend] (kind = \"quant\")")?;
        Ok(Box::new(QuantBackend::open(model, p)?))
    }

    fn database_kinds(&self) -> &'static [&'static str] {
        &["gptq"]
    }

    fn database_builder(
        &self,
        kind: &str,
        params: &toml::Table,
        _ctx: &BuildContext,
    ) -> Result<Box<dyn VariantBuilder>> {
        let p: GptqParams = parse_section(params, &format!("[database] (kind = \"{kind}\")"))?;
        Ok(Box::new(GptqBuilder::new(p)?))
    }

    fn config_flag(&self) -> Option<ConfigFlag> {
        Some(ConfigFlag {
            long: "quant-config",
            help: "per-layer bit widths (quant_config.txt or our TOML) over --database",
            needs_database: true,
        })
    }

    fn apply_config(
        &self,
        candidate: &mut Candidate,
        file: &Path,
        database: Option<&Path>,
    ) -> Result<Report> {
        let db = database.ok_or_else(|| {
            Error::Invalid("--quant-config needs --database DIR (its GPTQ database)".into())
        })?;
        let b = QuantBackend::open_database(&candidate.model, db)?;
        let ids = b.read_widths(file)?;
        candidate.model = b.assemble_ids(&candidate.model, &ids)?;
        Ok(b.stored_report(&ids))
    }
}

impl QuantBackend {
    /// Opens the database for `model` (every variant mapped once) and builds the space.
    pub fn open(model: &Model, params: QuantSearchParams) -> Result<Self> {
        if params.random_candidates == 0 {
            return Err(Error::Invalid(
                "[backend] random_candidates must be at least 1".into(),
            ));
        }
        if params.count_overhead && params.group_rule != GroupRule::None {
            return Err(Error::Invalid(format!(
                "[backend] count_overhead = true needs group_rule = \"none\" (the budget is a \
                 ceiling on stored bits, not a per-group sum of widths), got {:?}",
                params.group_rule
            )));
        }
        let table = VariantTable::open(model, &params.database, PACKED_FORMAT, &load_packed)?;
        let mut backend = QuantBackend {
            table,
            params,
            space: None,
        };
        backend.space = Some(backend.build_space()?);
        Ok(backend)
    }

    /// Opens a database for reading configurations only (no search target).
    pub fn open_database(model: &Model, dir: &Path) -> Result<Self> {
        Ok(QuantBackend {
            table: VariantTable::open(model, dir, PACKED_FORMAT, &load_packed)?,
            params: QuantSearchParams {
                database: dir.into(),
                target_bits: f64::NAN,
                group_rule: GroupRule::Size,
                step: 1,
                count_overhead: false,
                random_candidates: default_random_candidates(),
            },
            space: None,
        })
    }

    pub fn table(&self) -> &VariantTable {
        &self.table
    }
    pub fn params(&self) -> &QuantSearchParams {
        &self.params
    }

    fn search_space(&self) -> &SearchSpace {
        self.space.as_ref().expect("a search backend has its space")
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
    fn build_space(&self) -> Result<SearchSpace> {
        let p = &self.params;
        if !p.count_overhead {
            return quantization_space(self.quant_units(), p.target_bits, p.group_rule, p.step);
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
        Ok(SearchSpace::new(
            units,
            groups,
            Budget::CostCeiling {
                max_cost,
                step: p.step,
            },
        )?)
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

    /// Average bits, stored bytes and their bits per weight of a width assignment.
    pub fn stored_report(&self, ids: &[i32]) -> Report {
        let bytes = self.stored_bytes(ids);
        let numel = self.numel();
        let average = self.average_bits(ids);
        let bpw = 8.0 * bytes as f64 / numel.max(1) as f64;
        let mut t = toml::Table::new();
        t.insert("average_bits".into(), average.into());
        t.insert("weights".into(), (numel as i64).into());
        t.insert("stored_bytes".into(), (bytes as i64).into());
        t.insert("stored_bits_per_weight".into(), bpw.into());
        t.insert(
            "database_bytes".into(),
            (self.database_bytes() as i64).into(),
        );
        t.insert(
            "original_layout_bytes".into(),
            (self.original_layout_bytes() as i64).into(),
        );
        Report {
            fields: t,
            summary: vec![format!(
                "quantized: {average:.4} average bits per weight, {bytes} bytes stored \
                 ({bpw:.4} bits per weight with scales and zeros)"
            )],
        }
    }

    /// `model` with unit `u` at width `ids[u]`.
    pub fn assemble_ids(&self, model: &Model, ids: &[i32]) -> Result<Model> {
        self.table.assemble(model, &self.table.indices(ids)?)
    }

    /// Reads a width file (original format, or TOML by extension) in unit order.
    pub fn read_widths(&self, path: &Path) -> Result<Vec<i32>> {
        let names: Vec<&str> = self.table.units().iter().map(|u| u.name.as_str()).collect();
        level_config::read(path, &names)
    }

    /// Whether every layer holds width `bits`.
    fn has_uniform(&self, bits: f64) -> bool {
        bits.fract() == 0.0
            && (0..self.table.units().len())
                .all(|u| self.table.level_ids(u).contains(&(bits as i32)))
    }
}

impl CompressionBackend for QuantBackend {
    fn name(&self) -> &'static str {
        "quant"
    }

    fn space(&self) -> &SearchSpace {
        self.search_space()
    }

    fn evaluator<'a>(
        &'a self,
        model: &'a Model,
        dev: &'a dyn Device,
        cal: &'a Calibration,
        cache_cap_bytes: usize,
    ) -> Result<Box<dyn Evaluator + 'a>> {
        let space = self.search_space();
        let indices = move |g: &Genome| self.table.indices(&space.level_ids(g));
        Ok(Box::new(self.table.evaluator(
            model,
            dev,
            cal,
            cache_cap_bytes,
            indices,
        )))
    }

    fn candidate(&self, model: &Model, genome: &Genome) -> Result<Candidate> {
        let ids = self.search_space().level_ids(genome);
        Ok(Candidate::dense(&self.assemble_ids(model, &ids)?))
    }

    /// The original's file (units grouped as the space groups them, genome order within a
    /// group) and our TOML.
    fn config_files(&self, genome: &Genome) -> Result<Vec<(String, String)>> {
        let space = self.search_space();
        let ids = space.level_ids(genome);
        let units = space.units();
        let mut order: Vec<usize> = (0..units.len()).collect();
        order.sort_by_key(|&u| units[u].group);
        let grouped = order.iter().map(|&u| (units[u].name.as_str(), ids[u]));
        let natural = units
            .iter()
            .map(|u| u.name.as_str())
            .zip(ids.iter().copied());
        Ok(vec![
            (ORIGINAL_CONFIG.into(), level_config::to_original(grouped)),
            (TOML_CONFIG.into(), level_config::to_toml(natural)),
        ])
    }

    fn read_config(&self, dir: &Path) -> Result<Genome> {
        let ids = self.read_widths(&dir.join(ORIGINAL_CONFIG))?;
        self.search_space()
            .genome_from_ids(&ids)
            .map_err(Into::into)
    }

    fn report(&self, genome: &Genome, _candidate: &Candidate) -> Result<Report> {
        Ok(self.stored_report(&self.search_space().level_ids(genome)))
    }

    fn baselines(&self) -> Vec<BaselineInfo> {
        let mut out = Vec::new();
        if !self.params.count_overhead && self.has_uniform(self.params.target_bits) {
            out.push(BaselineInfo {
                name: "uniform".into(),
                about: "every layer at the target width",
                cheap: true,
            });
        }
        out.push(BaselineInfo {
            name: "dp".into(),
            about: "widths minimising the sum of per-layer rel_error under the budget (DP)",
            cheap: true,
        });
        out.push(BaselineInfo {
            name: "random".into(),
            about: "the best of `random_candidates` random widths meeting the budget",
            cheap: false,
        });
        out
    }

    fn baseline(&self, name: &str, ctx: &BaselineContext) -> Result<Baseline> {
        let space = self.search_space();
        let mut detail = toml::Table::new();
        let genome = match name {
            "uniform" if self.has_uniform(self.params.target_bits) => {
                let width = self.params.target_bits as i32;
                space.genome_from_ids(&vec![width; space.units().len()])?
            }
            "dp" => {
                let errors = self.table.rel_errors(space);
                let genome = dp_allocate(space, &errors)?;
                let total: f64 = (genome.0.iter().enumerate())
                    .map(|(u, &l)| errors[u][l as usize])
                    .sum();
                detail.insert("sum_rel_error".into(), total.into());
                genome
            }
            "random" => {
                let n = self.params.random_candidates;
                let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
                let starts =
                    evopress_search::init::distinct_random_starts(space, n, 100 * n, &mut rng)?;
                let mut evaluator = self.evaluator(ctx.model, ctx.dev, ctx.cal, usize::MAX)?;
                evaluator.begin_stage(ctx.batch, &space.base_genome())?;
                let mut best: Option<(f64, Genome)> = None;
                for (i, g) in starts.into_iter().enumerate() {
                    let f = evopress_search::fitness(&mut evaluator, &g, ctx.batch)?;
                    if best.as_ref().is_none_or(|(b, _)| f < *b) {
                        best = Some((f, g));
                    }
                    (ctx.progress)(i + 1, n);
                }
                let (f, g) = best.expect("at least one start");
                detail.insert("calibration_fitness".into(), f.into());
                detail.insert("candidates".into(), (n as i64).into());
                g
            }
            _ => {
                let known: Vec<String> = self.baselines().into_iter().map(|b| b.name).collect();
                return Err(Error::Invalid(format!(
                    "quant has no baseline `{name}` for this target; it has {}",
                    known.join(", ")
                )));
            }
        };
        let ids = space.level_ids(&genome);
        detail.insert("average_bits".into(), self.average_bits(&ids).into());
        Ok(Baseline {
            name: name.into(),
            candidate: self.candidate(ctx.model, &genome)?,
            genome: Some(genome),
            detail,
        })
    }
}
