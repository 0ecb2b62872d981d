//! Unstructured sparsity as a [`Method`] (docs/level-schemes.md): one unit per linear layer,
//! its levels the database's, `Σ level = 0` held by the level-switch mutation, and candidates
//! assembled by swapping views into the memory-mapped store. Any store of `masked` variants
//! can be searched, whichever builder wrote it (SparseGPT, OWL, Wanda).

use crate::builder::{
    load_masked, outlier_ratios, OwlBuilder, OwlParams, SparseGptBuilder, SparseGptParams,
    MASKED_FORMAT, OWL_BACKEND,
};
use evopress_core::build::VariantBuilder;
use evopress_core::data;
use evopress_core::evaluate::Calibration;
use evopress_core::level_config;
use evopress_core::method::parse_section;
use evopress_core::store::UnitEntry;
use evopress_core::variants::VariantTable;
use evopress_core::{
    Baseline, BaselineContext, BaselineInfo, BuildContext, Candidate, CompressionBackend,
    ConfigFlag, Error, Method, Model, Report, Result,
};
use evopress_kernels::Device;
use evopress_search::dp::dp_allocate;
use evopress_search::{Evaluator, Genome, Level, SearchSpace};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The original format (`name: level`, names sorted as `sorted(os.listdir())` sorts them).
pub const ORIGINAL_CONFIG: &str = "sparse_config.txt";
pub const TOML_CONFIG: &str = "sparse_config.toml";

/// The registry entry.
pub struct Sparse;

/// `[backend] kind = "sparse"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparseParams {
    /// A database of sparse variants built by `evopress build-db` (SparseGPT, Wanda, ...).
    pub database: PathBuf,
    /// An OWL database for the `owl` baseline (and seed).
    pub owl_database: Option<PathBuf>,
}

impl Method for Sparse {
    fn name(&self) -> &'static str {
        "sparse"
    }

    fn about(&self) -> &'static str {
        "unstructured sparsity: a sparsity level per linear layer from a variant database"
    }

    fn open(&self, section: &toml::Table, model: &Model) -> Result<Box<dyn CompressionBackend>> {
        let p: SparseParams = parse_section(section, "[backend] (kind = \"sparse\")")?;
        let mut backend = SparseBackend::open(model, &p.database)?;
        if let Some(owl) = &p.owl_database {
            let table = SparseBackend::open(model, owl)?.table;
            let built_by = &table.store().manifest().header.backend;
            if built_by != OWL_BACKEND {
                return Err(Error::Invalid(format!(
                    "[backend] owl_database = \"{}\" is a `{built_by}` database, not an OWL one \
                     (build one with [database] kind = \"owl\")",
                    owl.display()
                )));
            }
            backend.owl = Some(table);
        }
        Ok(Box::new(backend))
    }

    fn database_kinds(&self) -> &'static [&'static str] {
        &["sparsegpt", "owl"]
    }

    fn database_builder(
        &self,
        kind: &str,
        params: &toml::Table,
        ctx: &BuildContext,
    ) -> Result<Box<dyn VariantBuilder>> {
        let what = format!("[database] (kind = \"{kind}\")");
        match kind {
            "sparsegpt" => {
                let p: SparseGptParams = parse_section(params, &what)?;
                Ok(Box::new(SparseGptBuilder::new(p, ctx.model)?))
            }
            _ => {
                let p: OwlParams = parse_section(params, &what)?;
                let lod =
                    outlier_ratios(ctx.model, ctx.dev, ctx.windows.to_vec(), &p.ms, |i, n| {
                        (ctx.progress)("OWL pass 1", i, n)
                    })?;
                Ok(Box::new(OwlBuilder::new(p, lod)?))
            }
        }
    }

    fn config_flag(&self) -> Option<ConfigFlag> {
        Some(ConfigFlag {
            long: "sparse-config",
            help: "prune the linears to the levels a sparsity config names (sparse_config.txt \
                   or our TOML), taken from --database",
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
            Error::Invalid("--sparse-config needs --database DIR (its variant database)".into())
        })?;
        let backend = SparseBackend::open(&candidate.model, db)?;
        let genome = backend.read_levels(file)?;
        candidate.model = backend.table.assemble(&candidate.model, &genome.0)?;
        let mut report = counted_zeros(&candidate.model);
        report
            .fields
            .insert("level_sum".into(), backend.level_sum(&genome).into());
        Ok(report)
    }
}

/// Zeros counted in the assembled model's linear layers.
pub fn counted_zeros(model: &Model) -> Report {
    let (zeros, weights) = crate::count_zeros(model);
    let sparsity = zeros as f64 / weights.max(1) as f64;
    let mut fields = toml::Table::new();
    fields.insert("counted_zeros".into(), (zeros as i64).into());
    fields.insert("weights".into(), (weights as i64).into());
    fields.insert("counted_sparsity".into(), sparsity.into());
    Report {
        fields,
        summary: vec![format!(
            "counted zeros in the linear layers: {zeros} / {weights} = {sparsity:.6}"
        )],
    }
}

/// Zeros of a stored level (from the manifest; counted at build time on the stored weights).
pub fn level_zeros(entry: &UnitEntry, id: i32) -> Result<u64> {
    entry
        .level(id)
        .and_then(|l| l.extra.get("zeros"))
        .and_then(|z| z.as_u64())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "the database records no zero count for `{}` level {id}",
                entry.name
            ))
        })
}

/// The sparsity a stored level holds (manifest extra `sparsity`).
fn level_sparsity(entry: &UnitEntry, id: i32) -> Option<f64> {
    entry.level(id)?.extra.get("sparsity")?.as_f64()
}

pub struct SparseBackend {
    pub table: VariantTable,
    space: SearchSpace,
    /// An OWL database's grid, for the `owl` baseline.
    owl: Option<VariantTable>,
}

impl SparseBackend {
    /// Opens a database of masked variants (checksums verified) for `model`.
    pub fn open(model: &Model, dir: &Path) -> Result<Self> {
        let table = VariantTable::open(model, dir, MASKED_FORMAT, &load_masked)?;
        let units = (0..table.units().len())
            .map(|u| {
                let entry = table.entry(u);
                let levels = (table.level_ids(u).iter())
                    .map(|&id| Ok(Level::new(id, level_zeros(entry, id)?)))
                    .collect::<Result<Vec<_>>>()?;
                Ok((entry.name.clone(), levels))
            })
            .collect::<Result<Vec<_>>>()?;
        let space = SearchSpace::zero_sum(units)?;
        Ok(SparseBackend {
            table,
            space,
            owl: None,
        })
    }

    pub fn unit_names(&self) -> Vec<&str> {
        self.table.units().iter().map(|u| u.name.as_str()).collect()
    }

    /// Σ level id of a genome (0 for every genome of the space).
    pub fn level_sum(&self, genome: &Genome) -> i64 {
        self.space.level_ids(genome).iter().map(|&i| i as i64).sum()
    }

    /// Every unit at level id `id` (uniform sparsity, or one OWL grid point).
    pub fn uniform(&self, id: i32) -> Result<Genome> {
        Ok(Genome(
            self.table.indices(&vec![id; self.table.units().len()])?,
        ))
    }

    /// Reads a level file (original format or `.toml`) as a genome of this database.
    pub fn read_levels(&self, path: &Path) -> Result<Genome> {
        let ids = level_config::read(path, &self.unit_names())?;
        Ok(Genome(self.table.indices(&ids)?))
    }

    /// OWL's choice: the grid point with the best calibration perplexity on the baseline
    /// tokens, its per-layer sparsities projected onto this database's levels (nearest level,
    /// then the fewest, smallest moves that restore `Σ level = 0`) as a seed.
    fn owl(&self, owl: &VariantTable, ctx: &BaselineContext) -> Result<Baseline> {
        let windows: Vec<&[u32]> = (ctx.batch.slices.iter())
            .map(|s| &ctx.cal.samples[s.sample][s.tokens.clone()])
            .collect();
        let plan = vec![evopress_core::BlockPlan::FULL; ctx.model.layers.len()];
        let mut grid = Vec::new();
        let mut best: Option<(f64, i32)> = None;
        let ids = owl.level_ids(0).to_vec();
        for (i, &id) in ids.iter().enumerate() {
            let model = owl.assemble(ctx.model, &owl.indices(&vec![id; owl.units().len()])?)?;
            let ppl = data::perplexity(&model, ctx.dev, &windows, &plan, |_| {})?.perplexity();
            let level = owl.entry(0).level(id).expect("listed");
            let mut point = toml::Table::new();
            point.insert("level".into(), (id as i64).into());
            for key in ["lambda", "m"] {
                if let Some(v) = level.extra.get(key).and_then(|v| v.as_f64()) {
                    point.insert(key.into(), v.into());
                }
            }
            point.insert("calibration_perplexity".into(), ppl.into());
            grid.push(toml::Value::Table(point));
            if best.is_none_or(|(b, _)| ppl < b) {
                best = Some((ppl, id));
            }
            (ctx.progress)(i + 1, ids.len());
        }
        let (ppl, id) = best.ok_or_else(|| Error::Invalid("the OWL database is empty".into()))?;
        let model = owl.assemble(ctx.model, &owl.indices(&vec![id; owl.units().len()])?)?;
        let targets: Vec<Option<f64>> = (0..owl.units().len())
            .map(|u| level_sparsity(owl.entry(u), id))
            .collect();
        let genome = self.project(&targets);
        let mut detail = counted_zeros(&model).fields;
        detail.insert("level".into(), (id as i64).into());
        detail.insert("calibration_perplexity".into(), ppl.into());
        detail.insert("grid".into(), toml::Value::Array(grid));
        Ok(Baseline {
            name: "owl".into(),
            candidate: Candidate {
                model,
                plan: vec![evopress_core::BlockPlan::FULL; ctx.model.layers.len()],
            },
            genome,
            detail,
        })
    }

    /// The genome of this space closest to per-unit target sparsities.
    fn project(&self, targets: &[Option<f64>]) -> Option<Genome> {
        let units = self.space.units();
        if targets.len() != units.len() {
            return None;
        }
        // Per unit: (level index, sparsity) of every level, and the nearest to the target.
        let mut genome = Vec::with_capacity(units.len());
        let mut options = Vec::with_capacity(units.len());
        for (u, target) in targets.iter().enumerate() {
            let target = (*target)?;
            let entry = self.table.entry(u);
            let levels: Vec<f64> = (units[u].levels.iter())
                .map(|l| level_sparsity(entry, l.id))
                .collect::<Option<_>>()?;
            let nearest = (0..levels.len()).min_by(|&a, &b| {
                (levels[a] - target)
                    .abs()
                    .total_cmp(&(levels[b] - target).abs())
            })?;
            genome.push(nearest as u16);
            options.push((levels, target));
        }
        // Restore Σ id = 0 one step at a time, each time by the move that costs the least
        // extra distance to the targets.
        let mut genome = Genome(genome);
        loop {
            let sum = self.level_sum(&genome);
            if sum == 0 {
                return self.space.check_genome(&genome).is_ok().then_some(genome);
            }
            let delta: i32 = if sum > 0 { -1 } else { 1 };
            let best = (0..units.len())
                .filter_map(|u| {
                    let at = genome.0[u] as i32 + delta;
                    let (levels, target) = &options[u];
                    let next = *levels.get(usize::try_from(at).ok()?)?;
                    let now = levels[genome.0[u] as usize];
                    Some(((next - target).abs() - (now - target).abs(), u))
                })
                .min_by(|a, b| a.0.total_cmp(&b.0))?;
            genome.0[best.1] = (genome.0[best.1] as i32 + delta) as u16;
        }
    }
}

impl CompressionBackend for SparseBackend {
    fn name(&self) -> &'static str {
        "sparse"
    }

    fn space(&self) -> &SearchSpace {
        &self.space
    }

    fn evaluator<'a>(
        &'a self,
        model: &'a Model,
        dev: &'a dyn Device,
        cal: &'a Calibration,
        cache_cap_bytes: usize,
    ) -> Result<Box<dyn Evaluator + 'a>> {
        let indices = |g: &Genome| Ok(g.0.clone());
        Ok(Box::new(self.table.evaluator(
            model,
            dev,
            cal,
            cache_cap_bytes,
            indices,
        )))
    }

    fn candidate(&self, model: &Model, genome: &Genome) -> Result<Candidate> {
        Ok(Candidate {
            model: self.table.assemble(model, &genome.0)?,
            plan: vec![evopress_core::BlockPlan::FULL; model.layers.len()],
        })
    }

    fn config_files(&self, genome: &Genome) -> Result<Vec<(String, String)>> {
        let mut pairs: Vec<(&str, i32)> = (self.unit_names().into_iter())
            .zip(self.space.level_ids(genome))
            .collect();
        // The original writes names in lexicographic order.
        pairs.sort_by(|a, b| a.0.cmp(b.0));
        Ok(vec![
            (
                ORIGINAL_CONFIG.into(),
                level_config::to_original(pairs.iter().copied()),
            ),
            (
                TOML_CONFIG.into(),
                level_config::to_toml(pairs.iter().copied()),
            ),
        ])
    }

    fn read_config(&self, dir: &Path) -> Result<Genome> {
        self.read_levels(&dir.join(ORIGINAL_CONFIG))
    }

    fn report(&self, genome: &Genome, candidate: &Candidate) -> Result<Report> {
        let mut report = counted_zeros(&candidate.model);
        report
            .fields
            .insert("level_sum".into(), self.level_sum(genome).into());
        Ok(report)
    }

    fn baselines(&self) -> Vec<BaselineInfo> {
        let mut out = vec![
            BaselineInfo {
                name: "uniform".into(),
                about: "every layer at the database's base sparsity (uniform SparseGPT)",
                cheap: true,
            },
            BaselineInfo {
                name: "dp".into(),
                about: "levels minimising the sum of per-layer rel_error (SPDY-style DP)",
                cheap: true,
            },
        ];
        if self.owl.is_some() {
            out.push(BaselineInfo {
                name: "owl".into(),
                about: "OWL: per-block sparsities from outlier ratios, best grid point",
                cheap: true,
            });
        }
        out
    }

    fn baseline(&self, name: &str, ctx: &BaselineContext) -> Result<Baseline> {
        let (genome, mut detail) = match (name, &self.owl) {
            ("uniform", _) => (self.uniform(0)?, toml::Table::new()),
            ("dp", _) => {
                let errors = self.table.rel_errors(&self.space);
                let genome = dp_allocate(&self.space, &errors)?;
                let total: f64 = (genome.0.iter().enumerate())
                    .map(|(u, &l)| errors[u][l as usize])
                    .sum();
                let mut detail = toml::Table::new();
                detail.insert("sum_rel_error".into(), total.into());
                (genome, detail)
            }
            ("owl", Some(owl)) => return self.owl(owl, ctx),
            _ => {
                let known: Vec<String> = self.baselines().into_iter().map(|b| b.name).collect();
                return Err(Error::Invalid(format!(
                    "sparse has no baseline `{name}` here; it has {} (owl needs \
                     [backend] owl_database)",
                    known.join(", ")
                )));
            }
        };
        detail.insert("level_sum".into(), self.level_sum(&genome).into());
        Ok(Baseline {
            name: name.into(),
            candidate: self.candidate(ctx.model, &genome)?,
            genome: Some(genome),
            detail,
        })
    }
}
