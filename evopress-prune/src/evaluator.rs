//! The search's fitness for depth genomes: the candidate's plan (which sub-blocks run) scored
//! on the stage's tokens against the dense targets, starting from the first block where it
//! differs from the stage's parent (see [`evopress_core::evaluate`]).

use crate::drop_config;
use crate::space::DepthLayout;
use evopress_core::evaluate::{Calibration, StageCache};
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
    stage: Option<(Vec<BlockPlan>, StageCache)>,
    /// Blocks run over all evaluations, for the benchmark's saving figure.
    pub blocks_run: u64,
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
            blocks_run: 0,
        }
    }

    pub fn plan(&self, genome: &Genome) -> Vec<BlockPlan> {
        drop_config::plan(&self.layout.drops(genome))
    }
}

impl Evaluator for DepthEvaluator<'_> {
    fn begin_stage(&mut self, batch: &TokenBatch, parent: &Genome) -> Result<()> {
        let plan = self.plan(parent);
        let cache = StageCache::build(
            self.model,
            self.dev,
            self.cal,
            batch.slices.clone(),
            &plan,
            self.cache_cap_bytes,
        )?;
        self.stage = Some((plan, cache));
        Ok(())
    }

    fn score_slice(&mut self, genome: &Genome, batch: &TokenBatch, slice: usize) -> Result<Score> {
        let (parent, cache) = self
            .stage
            .as_ref()
            .filter(|(_, c)| c.is_for(batch))
            .ok_or_else(|| Error::Invalid("evaluate called outside its stage".into()))?;
        let plan = self.plan(genome);
        let first_diff = (0..plan.len())
            .find(|&i| plan[i] != parent[i])
            .unwrap_or(plan.len());
        let from = if cache.is_cached() { first_diff } else { 0 };
        self.blocks_run += (plan.len() - from) as u64;
        Ok(cache.score_slice(self.model, self.dev, self.cal, &plan, from, slice)?)
    }

    fn sums_are_nonnegative(&self) -> bool {
        true
    }
}
