//! Scoring candidate models on calibration tokens, incrementally.
//!
//! A search stage scores many candidates on the same token slices. Candidates differ from
//! the stage's parent only from some block on, so the parent's block inputs (the residual
//! stream at each block boundary) are computed once per stage and every candidate starts
//! from the first block where it differs. The result is bit-identical to a full forward:
//! the skipped prefix is the same computation on the same inputs.

use crate::error::{Error, Result};
use crate::fitness::{DenseTargets, FitnessKind};
use crate::model::{BlockPlan, Layout, Model};
use crate::search::{Evaluator, Genome, TokenBatch, TokenSlice as Slice};
use evopress_kernels::Device;

/// Calibration samples plus the dense model's targets on them.
pub struct Calibration {
    pub samples: Vec<Vec<u32>>,
    pub kind: FitnessKind,
    pub targets: DenseTargets,
}

impl Calibration {
    /// Runs the dense model once over every sample to store its targets. `progress` is called
    /// after each sample.
    pub fn new<D: Device>(
        model: &Model,
        dev: &D,
        samples: Vec<Vec<u32>>,
        kind: FitnessKind,
        mut progress: impl FnMut(usize),
    ) -> Result<Self> {
        let vocab = model.vocab_size();
        kind.validate(vocab)?;
        let mut targets = DenseTargets::empty(kind, vocab);
        if kind != FitnessKind::Ppl {
            let plan = vec![BlockPlan::FULL; model.layers.len()];
            for (i, s) in samples.iter().enumerate() {
                let h = model.hidden_states(dev, s, 1, &plan)?;
                let scored = s.len() - 1;
                let logits = model.lm_head(dev, &h[..scored * model.hidden_size()]);
                if let Some(x) = logits.iter().find(|x| !x.is_finite()) {
                    return Err(Error::non_finite(
                        format_args!("a dense logit of calibration sample {i}"),
                        *x as f64,
                    ));
                }
                targets.push(&logits, vocab);
                progress(i + 1);
            }
        }
        Ok(Calibration {
            samples,
            kind,
            targets,
        })
    }

    pub fn sample_lens(&self) -> Vec<usize> {
        self.samples.iter().map(Vec::len).collect()
    }

    /// Summed fitness of the final hidden states `normed[len, hidden]` of a slice, with the
    /// number of positions scored (`len - 1`: the last position has no next token).
    fn score_slice<D: Device>(
        &self,
        model: &Model,
        dev: &D,
        slice: &Slice,
        normed: &[f32],
    ) -> (f64, usize) {
        let vocab = model.vocab_size();
        let tokens = &self.samples[slice.sample][slice.tokens.clone()];
        let scored = tokens.len().saturating_sub(1);
        let sum = model.sum_over_logits(dev, normed, scored, |start, logits| {
            let next = &tokens[start + 1..start + 1 + logits.len() / vocab];
            let pos0 = slice.tokens.start + start;
            self.targets
                .score_rows(slice.sample, pos0, logits, vocab, next)
        });
        (sum, scored)
    }
}

/// The parent's block inputs on a stage's slices: `inputs[slice][block]` is the residual
/// stream entering `block` (the last entry is the stream leaving the last block). Empty when caching is disabled (then candidates run in full).
pub struct StageCache {
    pub slices: Vec<Slice>,
    inputs: Vec<Vec<Vec<f32>>>,
}

impl StageCache {
    /// Bytes a cache for `tokens` positions would take on `model`.
    pub fn bytes(model: &Model, tokens: usize) -> usize {
        model.layers.len() * tokens * model.hidden_size() * 4
    }

    /// Caches the parent's block inputs if they fit in `cap_bytes`.
    pub fn build<D: Device>(
        model: &Model,
        dev: &D,
        cal: &Calibration,
        slices: Vec<Slice>,
        parent: &[BlockPlan],
        cap_bytes: usize,
    ) -> Result<Self> {
        let tokens: usize = slices.iter().map(|s| s.tokens.len()).sum();
        let mut inputs = Vec::new();
        if Self::bytes(model, tokens) <= cap_bytes {
            for s in &slices {
                let toks = &cal.samples[s.sample][s.tokens.clone()];
                let layout = Layout {
                    batch: 1,
                    seq: toks.len(),
                    pos0: 0,
                };
                let mut h = model.embed(toks)?;
                let mut per_block = Vec::with_capacity(model.layers.len());
                for (b, &p) in parent.iter().enumerate() {
                    per_block.push(h.clone());
                    model.block_forward(dev, b, &mut h, layout, p, None);
                }
                per_block.push(h);
                inputs.push(per_block);
            }
        }
        Ok(StageCache { slices, inputs })
    }

    pub fn is_cached(&self) -> bool {
        !self.inputs.is_empty() || self.slices.is_empty()
    }

    /// Token-averaged fitness of a candidate (`model` with `plan`) that equals the parent
    /// before block `first_diff` (`plan.len()` if it equals the parent). Without a cache it
    /// runs in full.
    pub fn evaluate<D: Device>(
        &self,
        model: &Model,
        dev: &D,
        cal: &Calibration,
        plan: &[BlockPlan],
        first_diff: usize,
    ) -> Result<f64> {
        let (mut sum, mut count) = (0.0, 0usize);
        for (i, s) in self.slices.iter().enumerate() {
            let toks = &cal.samples[s.sample][s.tokens.clone()];
            let layout = Layout {
                batch: 1,
                seq: toks.len(),
                pos0: 0,
            };
            let (mut h, from) = match self.inputs.get(i) {
                Some(per_block) => (per_block[first_diff].clone(), first_diff),
                _ => (model.embed(toks)?, 0),
            };
            model.run_blocks(dev, &mut h, layout, plan, from);
            let normed = model.final_norm(dev, &h);
            let (s_sum, s_count) = cal.score_slice(model, dev, s, &normed);
            sum += s_sum;
            count += s_count;
        }
        let fitness = sum / count.max(1) as f64;
        if !fitness.is_finite() {
            return Err(Error::non_finite("the candidate's fitness", fitness));
        }
        Ok(fitness)
    }
}

/// Builds a genome's model: the dense model with each unit's linear weights swapped for the
/// chosen variant (views into a variant store, so nothing is copied).
pub type Assemble<'a> = Box<dyn Fn(&Genome) -> Result<Model> + 'a>;

/// The fitness of genomes that pick one weight variant per linear unit (sparsity levels, bit
/// widths). A candidate differs from the stage's parent only in the blocks of the units whose
/// level changed, so it runs from the first such block on the parent's cached activations.
pub struct SwapEvaluator<'a, D: Device> {
    dev: &'a D,
    cal: &'a Calibration,
    assemble: Assemble<'a>,
    /// The block of every unit, in genome order.
    unit_block: Vec<usize>,
    n_blocks: usize,
    cache_cap_bytes: usize,
    stage: Option<(Genome, StageCache)>,
    /// Blocks run over all evaluations (what incremental evaluation saves shows here).
    pub blocks_run: u64,
}

impl<'a, D: Device> SwapEvaluator<'a, D> {
    pub fn new(
        model: &Model,
        dev: &'a D,
        cal: &'a Calibration,
        unit_block: Vec<usize>,
        assemble: Assemble<'a>,
        cache_cap_bytes: usize,
    ) -> Self {
        SwapEvaluator {
            dev,
            cal,
            assemble,
            unit_block,
            n_blocks: model.layers.len(),
            cache_cap_bytes,
            stage: None,
            blocks_run: 0,
        }
    }
}

impl<D: Device> Evaluator for SwapEvaluator<'_, D> {
    fn begin_stage(&mut self, batch: &TokenBatch, parent: &Genome) -> Result<()> {
        let model = (self.assemble)(parent)?;
        let plan = vec![BlockPlan::FULL; self.n_blocks];
        let cache = StageCache::build(
            &model,
            self.dev,
            self.cal,
            batch.slices.clone(),
            &plan,
            self.cache_cap_bytes,
        )?;
        self.stage = Some((parent.clone(), cache));
        Ok(())
    }

    fn evaluate(&mut self, genome: &Genome, batch: &TokenBatch) -> Result<f64> {
        let (parent, cache) = self
            .stage
            .as_ref()
            .filter(|(_, c)| c.slices == batch.slices)
            .ok_or_else(|| Error::Invalid("evaluate called outside its stage".into()))?;
        let first_diff = (genome.0.iter().zip(&parent.0))
            .zip(&self.unit_block)
            .filter(|((a, b), _)| a != b)
            .map(|(_, &block)| block)
            .min()
            .unwrap_or(self.n_blocks);
        let from = if cache.is_cached() { first_diff } else { 0 };
        self.blocks_run += (self.n_blocks - from) as u64;
        let model = (self.assemble)(genome)?;
        let plan = vec![BlockPlan::FULL; self.n_blocks];
        cache.evaluate(&model, self.dev, self.cal, &plan, from)
    }
}
