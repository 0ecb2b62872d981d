//! Depth pruning as a [`Method`]: k attention and k MLP sub-blocks dropped (or k whole
//! blocks), optionally only where a legality mask allows. No database.

use crate::baselines::{self, Scoring, SingleDrop};
use crate::drop_config;
use crate::evaluator::DepthEvaluator;
use crate::space::{DepthLayout, DropMask};
use evopress_core::evaluate::Calibration;
use evopress_core::method::parse_section;
use evopress_core::{
    Baseline, BaselineContext, BaselineInfo, Candidate, CompressionBackend, ConfigFlag, Error,
    Method, Model, Report, Result,
};
use evopress_kernels::Device;
use evopress_search::{Evaluator, Genome, SearchSpace, TokenBatch};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The original format's file name, rewritten every generation as the original does.
pub const ORIGINAL_CONFIG: &str = "layer_drop_config.txt";
pub const TOML_CONFIG: &str = "drop_config.toml";

/// The registry entry.
pub struct Depth;

/// `[backend] kind = "depth"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DepthParams {
    /// Fraction of blocks: k = int(sparsity · n) attention and k MLP sub-blocks are dropped.
    pub sparsity: f64,
    #[serde(default)]
    pub drop_entire_block: bool,
    /// Optional whitelist of droppable sub-blocks (original format or our TOML).
    pub legal: Option<PathBuf>,
}

impl DepthParams {
    pub fn k(&self, n_blocks: usize) -> Result<usize> {
        if !(0.0..=1.0).contains(&self.sparsity) {
            return Err(Error::Invalid(format!(
                "[backend] sparsity = {} must be between 0 and 1",
                self.sparsity
            )));
        }
        Ok((self.sparsity * n_blocks as f64 + 1e-9) as usize)
    }
}

impl Method for Depth {
    fn name(&self) -> &'static str {
        "depth"
    }

    fn about(&self) -> &'static str {
        "depth pruning: drop k attention and k MLP sub-blocks (or k whole blocks)"
    }

    fn open(&self, section: &toml::Table, model: &Model) -> Result<Box<dyn CompressionBackend>> {
        let p: DepthParams = parse_section(section, "[backend] (kind = \"depth\")")?;
        let n = model.layers.len();
        let legal = p
            .legal
            .as_ref()
            .map(|f| drop_config::read(f, n))
            .transpose()?;
        Ok(Box::new(DepthBackend::new(
            n,
            p.k(n)?,
            p.drop_entire_block,
            legal,
        )?))
    }

    fn config_flag(&self) -> Option<ConfigFlag> {
        Some(ConfigFlag {
            long: "drop-config",
            help: "drop the sub-blocks a depth config names (layer_drop_config.txt or our TOML)",
            needs_database: false,
        })
    }

    fn apply_config(
        &self,
        candidate: &mut Candidate,
        file: &Path,
        _database: Option<&Path>,
    ) -> Result<Report> {
        let mask = drop_config::read(file, candidate.model.layers.len())?;
        for (p, q) in candidate.plan.iter_mut().zip(drop_config::plan(&mask)) {
            p.attn &= q.attn;
            p.mlp &= q.mlp;
        }
        Ok(report(&mask))
    }
}

fn report(mask: &DropMask) -> Report {
    let (attn, mlp) = drop_config::counts(mask);
    let whole = (mask.attn.iter().zip(&mask.mlp))
        .filter(|(a, m)| **a && **m)
        .count();
    let mut fields = toml::Table::new();
    fields.insert("dropped_attention".into(), (attn as i64).into());
    fields.insert("dropped_mlp".into(), (mlp as i64).into());
    fields.insert("dropped_whole_blocks".into(), (whole as i64).into());
    Report {
        fields,
        summary: vec![format!(
            "dropped {attn} attention and {mlp} MLP sub-blocks ({whole} whole blocks)"
        )],
    }
}

pub struct DepthBackend {
    layout: DepthLayout,
    k: usize,
    /// Which sub-blocks may be dropped.
    legal: DropMask,
    space: SearchSpace,
    /// Single-drop scores by (sub-blocks?, batch): shared by the perplexity and KL baselines.
    single: Mutex<Vec<(bool, TokenBatch, Arc<SingleDrop>)>>,
}

impl DepthBackend {
    pub fn new(
        n_blocks: usize,
        k: usize,
        drop_entire_block: bool,
        legal: Option<DropMask>,
    ) -> Result<Self> {
        let layout = DepthLayout {
            n_blocks,
            entire_block: drop_entire_block,
        };
        let space = layout.space(k, legal.as_ref())?;
        let legal = legal.unwrap_or(DropMask {
            attn: vec![true; n_blocks],
            mlp: vec![true; n_blocks],
        });
        Ok(DepthBackend {
            layout,
            k,
            legal,
            space,
            single: Mutex::new(Vec::new()),
        })
    }

    pub fn layout(&self) -> DepthLayout {
        self.layout
    }

    /// The single-drop scores on the context's batch, computed once per batch.
    fn single_drop(&self, ctx: &BaselineContext, sub_blocks: bool) -> Result<Arc<SingleDrop>> {
        let mut memo = self.single.lock().expect("not poisoned");
        if let Some((_, _, s)) = memo
            .iter()
            .find(|(sub, b, _)| *sub == sub_blocks && b == ctx.batch)
        {
            return Ok(s.clone());
        }
        let s = Arc::new(baselines::single_drop(
            ctx.model,
            ctx.dev,
            ctx.cal,
            ctx.batch,
            sub_blocks,
            ctx.progress,
        )?);
        memo.push((sub_blocks, ctx.batch.clone(), s.clone()));
        Ok(s)
    }

    fn candidate_of(&self, model: &Model, mask: &DropMask) -> Candidate {
        Candidate {
            model: model.clone(),
            plan: drop_config::plan(mask),
        }
    }
}

impl CompressionBackend for DepthBackend {
    fn name(&self) -> &'static str {
        "depth"
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
        Ok(Box::new(DepthEvaluator::new(
            model,
            dev,
            cal,
            self.layout,
            cache_cap_bytes,
        )))
    }

    fn candidate(&self, model: &Model, genome: &Genome) -> Result<Candidate> {
        Ok(self.candidate_of(model, &self.layout.drops(genome)))
    }

    fn config_files(&self, genome: &Genome) -> Result<Vec<(String, String)>> {
        let mask = self.layout.drops(genome);
        Ok(vec![
            (ORIGINAL_CONFIG.into(), drop_config::to_original(&mask)),
            (TOML_CONFIG.into(), drop_config::to_toml(&mask)),
        ])
    }

    fn read_config(&self, dir: &Path) -> Result<Genome> {
        let mask = drop_config::read(&dir.join(ORIGINAL_CONFIG), self.layout.n_blocks)?;
        self.layout.genome(&mask)
    }

    fn report(&self, genome: &Genome, _candidate: &Candidate) -> Result<Report> {
        Ok(report(&self.layout.drops(genome)))
    }

    fn baselines(&self) -> Vec<BaselineInfo> {
        let scoring = Scoring::ALL
            .into_iter()
            .filter(|s| !(s.sub_blocks && self.layout.entire_block))
            .map(|s| BaselineInfo {
                name: s.name(),
                about: s.about(),
                cheap: true,
            });
        let brute = BaselineInfo {
            name: "brute_force".into(),
            about: "every set of k whole blocks, by calibration fitness",
            cheap: false,
        };
        scoring.chain([brute]).collect()
    }

    fn baseline(&self, name: &str, ctx: &BaselineContext) -> Result<Baseline> {
        let (mask, mut detail) = if name == "brute_force" {
            let n = self.layout.n_blocks;
            let legal: Vec<usize> = (0..n)
                .filter(|&b| self.legal.attn[b] && self.legal.mlp[b])
                .collect();
            let (mask, fitness) = baselines::brute_force(
                ctx.model,
                ctx.dev,
                ctx.cal,
                ctx.batch,
                &legal,
                self.k,
                ctx.progress,
            )?;
            let mut detail = toml::Table::new();
            detail.insert("calibration_fitness".into(), fitness.into());
            (mask, detail)
        } else {
            let scoring = Scoring::parse(name).ok_or_else(|| {
                let known: Vec<String> = self.baselines().into_iter().map(|b| b.name).collect();
                Error::Invalid(format!(
                    "depth has no baseline `{name}`; it has {}",
                    known.join(", ")
                ))
            })?;
            let single = |sub: bool| self.single_drop(ctx, sub);
            let choice = baselines::score(
                ctx.model,
                ctx.dev,
                ctx.cal,
                ctx.batch,
                scoring,
                self.k,
                &self.legal,
                single,
            )?;
            let mut detail = toml::Table::new();
            let scores = choice.scores.iter().map(|&s| toml::Value::from(s));
            detail.insert("scores".into(), toml::Value::Array(scores.collect()));
            (choice.mask, detail)
        };
        let dropped = |v: &[bool]| {
            let blocks = (0..v.len()).filter(|&b| v[b]);
            toml::Value::Array(blocks.map(|b| toml::Value::from(b as i64)).collect())
        };
        detail.insert("attn".into(), dropped(&mask.attn));
        detail.insert("mlp".into(), dropped(&mask.mlp));
        // A sub-block choice is outside a whole-block space; it is still scored held-out.
        let genome = self.layout.genome(&mask).ok();
        Ok(Baseline {
            name: name.to_string(),
            candidate: self.candidate_of(ctx.model, &mask),
            genome,
            detail,
        })
    }
}
