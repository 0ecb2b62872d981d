//! The fitness of joint genomes: the candidate (layers swapped for stored variants, dropped
//! sub-blocks skipped) scored on the stage's tokens against the dense targets, from the first
//! block where it differs from the stage's parent, on the parent's cached block inputs. The
//! result is bit-identical to a full forward (see [`evopress_core::evaluate`]).

use evopress_core::evaluate::{first_changed_block, Calibration, ParentMemo, StageCache};
use evopress_core::{BlockPlan, Candidate, Error, Model};
use evopress_kernels::Device;
use evopress_search::{Evaluator, Genome, Result, Score, TokenBatch};

/// Builds the runnable model a genome stands for.
pub type Build<'a> = Box<dyn Fn(&Genome) -> evopress_core::Result<Candidate> + 'a>;

pub struct JointEvaluator<'a> {
    dev: &'a dyn Device,
    cal: &'a Calibration,
    build: Build<'a>,
    /// The block of every space unit (a switch's block, a layer's block).
    unit_block: Vec<usize>,
    n_blocks: usize,
    cache_cap_bytes: usize,
    stage: Option<(Genome, StageCache)>,
    memo: ParentMemo,
    /// The last genome built, reused across its slices.
    built: Option<(Genome, Model, Vec<BlockPlan>)>,
    /// Blocks run over all evaluations.
    pub blocks_run: u64,
}

impl<'a> JointEvaluator<'a> {
    pub fn new(
        model: &Model,
        dev: &'a dyn Device,
        cal: &'a Calibration,
        unit_block: Vec<usize>,
        build: Build<'a>,
        cache_cap_bytes: usize,
    ) -> Self {
        JointEvaluator {
            dev,
            cal,
            build,
            unit_block,
            n_blocks: model.layers.len(),
            cache_cap_bytes,
            stage: None,
            memo: ParentMemo::default(),
            built: None,
            blocks_run: 0,
        }
    }
}

impl Evaluator for JointEvaluator<'_> {
    fn begin_stage(&mut self, batch: &TokenBatch, parent: &Genome) -> Result<()> {
        let c = (self.build)(parent)?;
        let (unit_block, n_blocks) = (&self.unit_block, self.n_blocks);
        let first_diff =
            |old: &Genome| Some(first_changed_block(old, parent, unit_block, n_blocks));
        let cache = self.memo.stage_cache(
            &c.model,
            self.dev,
            self.cal,
            batch.slices.clone(),
            parent,
            &c.plan,
            self.cache_cap_bytes,
            first_diff,
        )?;
        self.stage = Some((parent.clone(), cache));
        Ok(())
    }

    fn score_slice(&mut self, genome: &Genome, batch: &TokenBatch, slice: usize) -> Result<Score> {
        let (parent, cache) = self
            .stage
            .as_ref()
            .filter(|(_, c)| c.is_for(batch))
            .ok_or_else(|| Error::Invalid("evaluate called outside its stage".into()))?;
        let is_parent = genome == parent && cache.is_cached();
        let from = if cache.is_cached() {
            first_changed_block(genome, parent, &self.unit_block, self.n_blocks)
        } else {
            0
        };
        let (dev, cal, n_blocks) = (self.dev, self.cal, self.n_blocks);
        let (build, built) = (&self.build, &mut self.built);
        let blocks_run = &mut self.blocks_run;
        Ok(self.memo.score(is_parent, &batch.slices[slice], || {
            *blocks_run += (n_blocks - from) as u64;
            if built.as_ref().is_none_or(|(g, _, _)| g != genome) {
                let c = build(genome)?;
                *built = Some((genome.clone(), c.model, c.plan));
            }
            let (_, model, plan) = built.as_ref().expect("just built");
            cache.score_slice(model, dev, cal, plan, from, slice)
        })?)
    }

    fn sums_are_nonnegative(&self) -> bool {
        true
    }
}
