//! The joint search as a [`Method`]: one genome over sub-block drops and every linear layer's
//! (sparsity, bit width) under one byte budget (docs/joint-search.md).

use crate::baselines;
use crate::builder::{JointBuilder, JointParams};
use crate::config_file::{self, JointChoice, JOINT_CONFIG};
use crate::evaluator::JointEvaluator;
use crate::format::{load_variant, FORMAT};
use crate::levels::Combo;
use crate::space::{joint_space, pareto, Options, Slot, SubBlock};
use evopress_core::build::VariantBuilder;
use evopress_core::evaluate::Calibration;
use evopress_core::method::parse_section;
use evopress_core::variants::VariantTable;
use evopress_core::{
    Baseline, BaselineContext, BaselineInfo, BuildContext, Candidate, CompressionBackend,
    ConfigFlag, Error, Method, Model, Report, Result,
};
use evopress_kernels::Device;
use evopress_prune::{drop_config, DropMask};
use evopress_search::space::ON;
use evopress_search::{Evaluator, Genome, SearchSpace};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The registry entry.
pub struct Joint;

/// `[backend] kind = "joint"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JointSearchParams {
    /// A `sparse_gptq` database built by `evopress build-db`.
    pub database: PathBuf,
    /// The budget: stored bytes of the deployed model's linear layers (codes, scales, zeros,
    /// masks; a dropped sub-block costs 0). Exactly one of this and `target_fraction`.
    #[serde(default)]
    pub target_bytes: Option<u64>,
    /// The budget as a fraction of the linear layers' bytes in bf16.
    #[serde(default)]
    pub target_fraction: Option<f64>,
    /// Whether sub-blocks may be dropped.
    #[serde(default = "yes")]
    pub drops: bool,
    /// Keep only the combinations of a layer that no cheaper one beats on `rel_error`.
    #[serde(default = "yes")]
    pub pareto: bool,
    /// Use only these stored sparsities / bit widths (all by default).
    #[serde(default)]
    pub sparsities: Option<Vec<f64>>,
    #[serde(default)]
    pub bits: Option<Vec<u8>>,
}

fn yes() -> bool {
    true
}

impl Method for Joint {
    fn name(&self) -> &'static str {
        "joint"
    }

    fn about(&self) -> &'static str {
        "joint: drop sub-blocks and give every linear a (sparsity, bits) pair under one byte budget"
    }

    fn open(&self, section: &toml::Table, model: &Model) -> Result<Box<dyn CompressionBackend>> {
        let p: JointSearchParams = parse_section(section, "[backend] (kind = \"joint\")")?;
        Ok(Box::new(JointBackend::open(model, p)?))
    }

    fn database_kinds(&self) -> &'static [&'static str] {
        &["sparse_gptq"]
    }

    fn database_builder(
        &self,
        kind: &str,
        params: &toml::Table,
        _ctx: &BuildContext,
    ) -> Result<Box<dyn VariantBuilder>> {
        let p: JointParams = parse_section(params, &format!("[database] (kind = \"{kind}\")"))?;
        Ok(Box::new(JointBuilder::new(p)?))
    }

    fn config_flag(&self) -> Option<ConfigFlag> {
        Some(ConfigFlag {
            long: "joint-config",
            help: "dropped sub-blocks and per-layer (sparsity, bits) (joint_config.toml) over \
                   --database",
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
            Error::Invalid("--joint-config needs --database DIR (its sparse_gptq database)".into())
        })?;
        let table = open_table(&candidate.model, db)?;
        let choice = config_file::read(file, candidate.model.layers.len())?;
        let (model, plan) = apply_choice(&table, &candidate.model, &choice)?;
        candidate.model = model;
        for (p, q) in candidate.plan.iter_mut().zip(plan) {
            p.attn &= q.attn;
            p.mlp &= q.mlp;
        }
        let bytes = counted_bytes(&table, candidate);
        let bf16 = bf16_bytes(&table);
        Ok(bytes_report(
            bytes,
            None,
            bf16,
            &choice.drops,
            &choice_counts(&choice),
        ))
    }
}

fn open_table(model: &Model, db: &Path) -> Result<VariantTable> {
    VariantTable::open(model, db, FORMAT, &load_variant)
}

/// The linear layers' bytes in bf16: what `target_fraction` is a fraction of.
pub fn bf16_bytes(table: &VariantTable) -> u64 {
    table.units().iter().map(|u| 2 * u.numel() as u64).sum()
}

/// The bytes the linear layers of `candidate`'s running sub-blocks occupy, counted from the
/// weights themselves (what a deployed model stores).
pub fn counted_bytes(table: &VariantTable, candidate: &Candidate) -> u64 {
    (table.units().iter())
        .filter(|u| {
            let p = candidate.plan[u.block];
            match SubBlock::of(u) {
                SubBlock::Attention => p.attn,
                SubBlock::Mlp => p.mlp,
            }
        })
        .flat_map(|u| u.parts.iter().map(move |p| (u.block, p.kind)))
        .map(|(b, kind)| candidate.model.linear(b, kind).weight.bytes() as u64)
        .sum()
}

/// `model` with every layer of a kept sub-block at the file's combination, and the drop plan.
fn apply_choice(
    table: &VariantTable,
    model: &Model,
    choice: &JointChoice,
) -> Result<(Model, Vec<evopress_core::BlockPlan>)> {
    let mut out = model.clone();
    let dropped = |u: &evopress_core::units::LinearUnit| match SubBlock::of(u) {
        SubBlock::Attention => choice.drops.attn[u.block],
        SubBlock::Mlp => choice.drops.mlp[u.block],
    };
    let mut ids = Vec::with_capacity(table.units().len());
    for (u, unit) in table.units().iter().enumerate() {
        let listed = choice.linears.get(&unit.name);
        let id = match (dropped(unit), listed) {
            (true, Some(_)) => {
                return Err(Error::Invalid(format!(
                    "`{}` is listed but its sub-block is dropped",
                    unit.name
                )))
            }
            (true, None) => table.level_ids(u)[0],
            (false, Some(c)) => c.id(),
            (false, None) => {
                return Err(Error::Invalid(format!(
                    "`{}` is in a kept sub-block but has no combination",
                    unit.name
                )))
            }
        };
        ids.push(id);
    }
    if let Some(name) =
        (choice.linears.keys()).find(|n| !table.units().iter().any(|u| &&u.name == n))
    {
        return Err(Error::Invalid(format!(
            "`{name}` is not a linear layer of this model"
        )));
    }
    let indices = table.indices(&ids)?;
    out = table.assemble(&out, &indices)?;
    Ok((out, drop_config::plan(&choice.drops)))
}

/// Kept layers per combination.
fn choice_counts(choice: &JointChoice) -> BTreeMap<Combo, usize> {
    let mut counts = BTreeMap::new();
    for c in choice.linears.values() {
        *counts.entry(*c).or_insert(0) += 1;
    }
    counts
}

fn bytes_report(
    bytes: u64,
    target: Option<u64>,
    bf16: u64,
    drops: &DropMask,
    counts: &BTreeMap<Combo, usize>,
) -> Report {
    let (attn, mlp) = drop_config::counts(drops);
    let mut t = toml::Table::new();
    t.insert("stored_bytes".into(), (bytes as i64).into());
    if let Some(target) = target {
        t.insert("target_bytes".into(), (target as i64).into());
        t.insert(
            "target_used".into(),
            (bytes as f64 / target.max(1) as f64).into(),
        );
    }
    t.insert("bf16_bytes".into(), (bf16 as i64).into());
    let fraction = bytes as f64 / bf16.max(1) as f64;
    t.insert("fraction_of_bf16".into(), fraction.into());
    t.insert("dropped_attention".into(), (attn as i64).into());
    t.insert("dropped_mlp".into(), (mlp as i64).into());
    let layers: toml::Table = (counts.iter())
        .map(|(c, n)| (c.to_string(), toml::Value::from(*n as i64)))
        .collect();
    t.insert("layers_per_combination".into(), toml::Value::Table(layers));
    let mix: Vec<String> = counts.iter().map(|(c, n)| format!("{n} x {c}")).collect();
    Report {
        fields: t,
        summary: vec![
            format!(
                "joint: {bytes} bytes in the linear layers ({:.2} % of bf16), dropped {attn} \
                 attention and {mlp} MLP sub-blocks",
                100.0 * fraction
            ),
            format!("joint: kept layers {}", mix.join(", ")),
        ],
    }
}

/// One search run over a joint database.
pub struct JointBackend {
    pub(crate) table: VariantTable,
    pub(crate) params: JointSearchParams,
    pub(crate) target: u64,
    pub(crate) space: SearchSpace,
    pub(crate) slots: Vec<Slot>,
    pub(crate) n_blocks: usize,
    /// The block of every space unit.
    unit_block: Vec<usize>,
    /// Single-drop KL per sub-block on the baselines' batch, computed once.
    pub(crate) single_drop: std::sync::Mutex<Option<(evopress_search::TokenBatch, Vec<f64>)>>,
}

impl JointBackend {
    pub fn open(model: &Model, params: JointSearchParams) -> Result<Self> {
        let table = open_table(model, &params.database)?;
        let bf16 = bf16_bytes(&table);
        let target = match (params.target_bytes, params.target_fraction) {
            (Some(b), None) => b,
            (None, Some(f)) if f > 0.0 && f.is_finite() => (f * bf16 as f64).floor() as u64,
            (None, Some(f)) => {
                return Err(Error::Invalid(format!(
                    "[backend] target_fraction = {f} must be a positive number"
                )))
            }
            _ => {
                return Err(Error::Invalid(
                    "[backend] needs exactly one of target_bytes and target_fraction".into(),
                ))
            }
        };
        let wanted = |c: Combo| wants(&params, c);
        let mut options: Vec<Options> = Vec::with_capacity(table.units().len());
        for u in 0..table.units().len() {
            let entry = table.entry(u);
            let mut opts = Options::new();
            for &id in table.level_ids(u) {
                let c = Combo::from_id(id)
                    .map_err(|e| Error::Invalid(format!("{}: {e}", params.database.display())))?;
                let level = entry.level(id).expect("the table's ids");
                if wanted(c) {
                    opts.push((c, level.bytes, level.rel_error));
                }
            }
            opts.sort_by(|a, b| a.1.cmp(&b.1).then(a.2.total_cmp(&b.2)));
            options.push(if params.pareto { pareto(opts) } else { opts });
        }
        let (space, slots) = joint_space(table.units(), &options, target, params.drops)?;
        let unit_block = (slots.iter())
            .map(|s| match s {
                Slot::Switch { block, .. } => *block,
                Slot::Linear { unit, .. } => table.units()[*unit].block,
            })
            .collect();
        Ok(JointBackend {
            table,
            params,
            target,
            space,
            slots,
            n_blocks: model.layers.len(),
            unit_block,
            single_drop: std::sync::Mutex::new(None),
        })
    }

    /// Whether the run's `sparsities` and `bits` admit `c`.
    pub fn wants(&self, c: Combo) -> bool {
        wants(&self.params, c)
    }

    pub fn target_bytes(&self) -> u64 {
        self.target
    }

    pub fn table(&self) -> &VariantTable {
        &self.table
    }

    /// The drops and every layer's combination (layers of dropped sub-blocks included) of a
    /// genome, layers in the table's order.
    pub fn decode(&self, genome: &Genome) -> (DropMask, Vec<Combo>) {
        let mut drops = DropMask::none(self.n_blocks);
        let mut combos = Vec::with_capacity(self.table.units().len());
        for (i, slot) in self.slots.iter().enumerate() {
            let level = genome.0[i] as usize;
            match slot {
                Slot::Switch { block, sub } => {
                    let dropped = self.space.units()[i].levels[level].id == ON;
                    match sub {
                        SubBlock::Attention => drops.attn[*block] = dropped,
                        SubBlock::Mlp => drops.mlp[*block] = dropped,
                    }
                }
                Slot::Linear { combos: c, .. } => combos.push(c[level]),
            }
        }
        (drops, combos)
    }

    /// The genome of `drops` and per-layer `combos` (table order); a layer of a dropped
    /// sub-block without a combination takes its most expensive level.
    pub fn encode(&self, drops: &DropMask, combos: &[Option<Combo>]) -> Result<Genome> {
        let mut genome = Vec::with_capacity(self.slots.len());
        for (i, slot) in self.slots.iter().enumerate() {
            let level = match slot {
                Slot::Switch { block, sub } => {
                    let dropped = match sub {
                        SubBlock::Attention => drops.attn[*block],
                        SubBlock::Mlp => drops.mlp[*block],
                    };
                    usize::from(dropped)
                }
                Slot::Linear { unit, combos: c } => match combos[*unit] {
                    Some(want) => c.iter().position(|&x| x == want).ok_or_else(|| {
                        Error::Invalid(format!(
                            "`{}` at {want} is not in the search space (it has {})",
                            self.space.units()[i].name,
                            c.iter()
                                .map(|x| x.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    })?,
                    None => c.len() - 1,
                },
            };
            genome.push(level as u16);
        }
        if !self.params.drops && (drops.attn.iter().chain(&drops.mlp).any(|&d| d)) {
            return Err(Error::Invalid(
                "the configuration drops sub-blocks, but this search has `drops = false`".into(),
            ));
        }
        Ok(Genome(genome))
    }

    /// The file contents a genome stands for.
    pub fn choice(&self, genome: &Genome) -> JointChoice {
        let (drops, combos) = self.decode(genome);
        let linears = (self.table.units().iter().zip(combos))
            .filter(|(u, _)| !is_dropped(&drops, u))
            .map(|(u, c)| (u.name.clone(), c))
            .collect();
        JointChoice { drops, linears }
    }

    pub(crate) fn build(&self, model: &Model, genome: &Genome) -> Result<Candidate> {
        let (drops, combos) = self.decode(genome);
        let ids: Vec<i32> = combos.iter().map(|c| c.id()).collect();
        let model = self.table.assemble(model, &self.table.indices(&ids)?)?;
        Ok(Candidate {
            model,
            plan: drop_config::plan(&drops),
        })
    }

    pub(crate) fn report_of(&self, genome: &Genome, candidate: &Candidate) -> Report {
        let choice = self.choice(genome);
        bytes_report(
            counted_bytes(&self.table, candidate),
            Some(self.target),
            bf16_bytes(&self.table),
            &choice.drops,
            &choice_counts(&choice),
        )
    }
}

/// Whether the run's `sparsities` and `bits` admit `c`.
fn wants(params: &JointSearchParams, c: Combo) -> bool {
    let s_ok = (params.sparsities.as_ref())
        .is_none_or(|s| s.iter().any(|&x| (x - c.sparsity()).abs() < 5e-4));
    let b_ok = params.bits.as_ref().is_none_or(|b| b.contains(&c.bits));
    s_ok && b_ok
}

pub(crate) fn is_dropped(drops: &DropMask, unit: &evopress_core::units::LinearUnit) -> bool {
    match SubBlock::of(unit) {
        SubBlock::Attention => drops.attn[unit.block],
        SubBlock::Mlp => drops.mlp[unit.block],
    }
}

impl CompressionBackend for JointBackend {
    fn name(&self) -> &'static str {
        "joint"
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
        Ok(Box::new(JointEvaluator::new(
            model,
            dev,
            cal,
            self.unit_block.clone(),
            Box::new(move |g: &Genome| self.build(model, g)),
            cache_cap_bytes,
        )))
    }

    fn candidate(&self, model: &Model, genome: &Genome) -> Result<Candidate> {
        self.build(model, genome)
    }

    fn config_files(&self, genome: &Genome) -> Result<Vec<(String, String)>> {
        let choice = self.choice(genome);
        let order = self.table.units().iter().map(|u| u.name.as_str());
        let linears = order.filter_map(|n| Some((n, *choice.linears.get(n)?)));
        Ok(vec![
            (
                JOINT_CONFIG.into(),
                config_file::to_toml(&choice.drops, linears),
            ),
            (
                evopress_prune::backend::ORIGINAL_CONFIG.into(),
                drop_config::to_original(&choice.drops),
            ),
        ])
    }

    fn read_config(&self, dir: &Path) -> Result<Genome> {
        let choice = config_file::read(&dir.join(JOINT_CONFIG), self.n_blocks)?;
        let combos: Vec<Option<Combo>> = (self.table.units().iter())
            .map(|u| choice.linears.get(&u.name).copied())
            .collect();
        for (u, c) in self.table.units().iter().zip(&combos) {
            if c.is_none() && !is_dropped(&choice.drops, u) {
                return Err(Error::Invalid(format!(
                    "{}: `{}` is in a kept sub-block but has no combination",
                    dir.join(JOINT_CONFIG).display(),
                    u.name
                )));
            }
        }
        self.encode(&choice.drops, &combos)
    }

    fn report(&self, genome: &Genome, candidate: &Candidate) -> Result<Report> {
        Ok(self.report_of(genome, candidate))
    }

    fn baselines(&self) -> Vec<BaselineInfo> {
        baselines::list(self)
    }

    fn baseline(&self, name: &str, ctx: &BaselineContext) -> Result<Baseline> {
        baselines::run(self, name, ctx)
    }
}
