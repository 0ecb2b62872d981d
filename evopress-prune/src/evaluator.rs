//! The search's fitness for depth genomes: the candidate's plan (which sub-blocks run) scored
//! on the stage's tokens against the dense targets, starting from the first block where it
//! differs from the stage's parent (see [`evopress_core::evaluate`]).

use crate::drop_config;
use crate::space::DepthLayout;
use evopress_core::evaluate::{Calibration, ParentMemo, StageCache};
use evopress_core::{BlockPlan, Error, Model};
use evopress_kernels::Device;
use evopress_search::{Evaluator, Genome, Result, Score, TokenBatch};

pub struct DepthEvaluator<'a> {
    model: &'a Model,
    dev: &'a dyn Device,
    cal: &'a Calibration,
    layout: DepthLayout,
    /// Largest parent-activation cache per stage; 0 disables incremental evaluation.
    cache_cap_bytes: usize,
    /// The stage's parent, its plan and cache.
    stage: Option<(Genome, Vec<BlockPlan>, StageCache)>,
    memo: ParentMemo,
    /// Blocks run over all evaluations, for the benchmark's saving figure.
    pub blocks_run: u64,
    /// Blocks run to build stage caches.
    pub cache_blocks_run: u64,
}

impl<'a> DepthEvaluator<'a> {
    pub fn new(
        model: &'a Model,
        dev: &'a dyn Device,
        cal: &'a Calibration,
        layout: DepthLayout,
        cache_cap_bytes: usize,
    ) -> Self {
        DepthEvaluator {
            model,
            dev,
            cal,
            layout,
            cache_cap_bytes,
            stage: None,
            memo: ParentMemo::default(),
            blocks_run: 0,
            cache_blocks_run: 0,
        }
    }

    pub fn plan(&self, genome: &Genome) -> Vec<BlockPlan> {
        drop_config::plan(&self.layout.drops(genome))
    }
}

impl Evaluator for DepthEvaluator<'_> {
    fn begin_stage(&mut self, batch: &TokenBatch, parent: &Genome) -> Result<()> {
        let plan = self.plan(parent);
        let layout = self.layout;
        let first_diff =
            |old: &Genome| Some(first_diff(&drop_config::plan(&layout.drops(old)), &plan));
        let cache = self.memo.stage_cache(
            self.model,
            self.dev,
            self.cal,
            batch.slices.clone(),
            parent,
            &plan,
            self.cache_cap_bytes,
            first_diff,
        )?;
        self.cache_blocks_run += cache.blocks_run as u64;
        self.stage = Some((parent.clone(), plan, cache));
        Ok(())
    }

    fn score_slice(&mut self, genome: &Genome, batch: &TokenBatch, slice: usize) -> Result<Score> {
        let (parent, parent_plan, cache) = self
            .stage
            .as_ref()
            .filter(|(_, _, c)| c.is_for(batch))
            .ok_or_else(|| Error::Invalid("evaluate called outside its stage".into()))?;
        let plan = self.plan(genome);
        let from = if cache.is_cached() {
            first_diff(&plan, parent_plan)
        } else {
            0
        };
        let is_parent = genome == parent && cache.is_cached();
        let (model, dev, cal) = (self.model, self.dev, self.cal);
        let blocks_run = &mut self.blocks_run;
        Ok(self.memo.score(is_parent, &batch.slices[slice], || {
            *blocks_run += (plan.len() - from) as u64;
            cache.score_slice(model, dev, cal, &plan, from, slice)
        })?)
    }

    fn sums_are_nonnegative(&self) -> bool {
        true
    }
}

/// The first block in which plans `a` and `b` differ (their length if none).
fn first_diff(a: &[BlockPlan], b: &[BlockPlan]) -> usize {
    (0..a.len()).find(|&i| a[i] != b[i]).unwrap_or(a.len())
}
