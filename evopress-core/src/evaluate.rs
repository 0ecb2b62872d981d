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
use evopress_kernels::Device;
use evopress_search::{
    Evaluator, Genome, Result as SearchResult, Score, TokenBatch, TokenSlice as Slice,
};
use std::time::{Duration, Instant};

/// Calibration samples plus the dense model's targets on them.
pub struct Calibration {
    pub samples: Vec<Vec<u32>>,
    pub kind: FitnessKind,
    pub targets: DenseTargets,
}

impl Calibration {
    /// Runs the dense model once over every sample to store its targets. `progress` is called
    /// after each sample.
    pub fn new<D: Device + ?Sized>(
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
    fn score_slice<D: Device + ?Sized>(
        &self,
        model: &Model,
        dev: &D,
        slice: &Slice,
        normed: &[f32],
    ) -> (f64, usize) {
        let vocab = model.vocab_size();
        let tokens = &self.samples[slice.sample][slice.tokens.clone()];
        let scored = tokens.len().saturating_sub(1);
        let started = Instant::now();
        let mut reducing = Duration::ZERO;
        let sum = model.sum_over_logits(dev, normed, scored, |start, logits| {
            let t = Instant::now();
            let next = &tokens[start + 1..start + 1 + logits.len() / vocab];
            let pos0 = slice.tokens.start + start;
            let s = self
                .targets
                .score_rows(slice.sample, pos0, logits, vocab, next);
            reducing += t.elapsed();
            s
        });
        profile::FITNESS.add(reducing);
        profile::LM_HEAD.add(started.elapsed() - reducing);
        (sum, scored)
    }
}

impl Calibration {
    /// Like [`score_slice`](Self::score_slice), also returning the slice's summed negative
    /// log-likelihood from the same logits (one LM head for both).
    fn score_slice_and_nll<D: Device + ?Sized>(
        &self,
        model: &Model,
        dev: &D,
        slice: &Slice,
        normed: &[f32],
    ) -> (f64, f64, usize) {
        let vocab = model.vocab_size();
        let tokens = &self.samples[slice.sample][slice.tokens.clone()];
        let scored = tokens.len().saturating_sub(1);
        let mut nll = 0.0;
        let sum = model.sum_over_logits(dev, normed, scored, |start, logits| {
            let next = &tokens[start + 1..start + 1 + logits.len() / vocab];
            nll += evopress_kernels::cpu::reduce::log_softmax_nll(logits, vocab, next);
            let pos0 = slice.tokens.start + start;
            self.targets
                .score_rows(slice.sample, pos0, logits, vocab, next)
        });
        (sum, nll, scored)
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
    pub fn build<D: Device + ?Sized>(
        model: &Model,
        dev: &D,
        cal: &Calibration,
        slices: Vec<Slice>,
        parent: &[BlockPlan],
        cap_bytes: usize,
    ) -> Result<Self> {
        let started = Instant::now();
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
        profile::STAGE_CACHE.add(started.elapsed());
        Ok(StageCache { slices, inputs })
    }

    pub fn is_cached(&self) -> bool {
        !self.inputs.is_empty() || self.slices.is_empty()
    }

    /// The final-normed hidden states of slice `i` for a candidate (`model` with `plan`) that
    /// equals the parent before block `first_diff`: the parent's cached stream entering that
    /// block run through the rest (or everything from the embedding without a cache).
    fn final_states<D: Device + ?Sized>(
        &self,
        model: &Model,
        dev: &D,
        cal: &Calibration,
        plan: &[BlockPlan],
        first_diff: usize,
        i: usize,
    ) -> Result<Vec<f32>> {
        let s = &self.slices[i];
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
        let started = Instant::now();
        model.run_blocks(dev, &mut h, layout, plan, from);
        let normed = model.final_norm(dev, &h);
        profile::BLOCKS.add(started.elapsed());
        Ok(normed)
    }

    /// The summed fitness of slice `i` for a candidate (`model` with `plan`) that equals the
    /// parent before block `first_diff` (`plan.len()` if it equals the parent). Without a
    /// cache it runs in full.
    pub fn score_slice<D: Device + ?Sized>(
        &self,
        model: &Model,
        dev: &D,
        cal: &Calibration,
        plan: &[BlockPlan],
        first_diff: usize,
        i: usize,
    ) -> Result<Score> {
        let normed = self.final_states(model, dev, cal, plan, first_diff, i)?;
        let (sum, positions) = cal.score_slice(model, dev, &self.slices[i], &normed);
        if !sum.is_finite() {
            return Err(Error::non_finite("the candidate's fitness", sum));
        }
        Ok(Score { sum, positions })
    }

    /// The token-averaged fitness over every slice (see [`score_slice`](Self::score_slice)).
    pub fn fitness<D: Device + ?Sized>(
        &self,
        model: &Model,
        dev: &D,
        cal: &Calibration,
        plan: &[BlockPlan],
        first_diff: usize,
    ) -> Result<f64> {
        let (mut sum, mut positions) = (0.0, 0);
        for i in 0..self.slices.len() {
            let s = self.score_slice(model, dev, cal, plan, first_diff, i)?;
            sum += s.sum;
            positions += s.positions;
        }
        Ok(sum / positions.max(1) as f64)
    }

    /// Token-averaged fitness and mean negative log-likelihood of a candidate over every
    /// slice, from one forward (see [`score_slice`](Self::score_slice)).
    pub fn fitness_and_nll<D: Device + ?Sized>(
        &self,
        model: &Model,
        dev: &D,
        cal: &Calibration,
        plan: &[BlockPlan],
        first_diff: usize,
    ) -> Result<(f64, f64)> {
        let (mut sum, mut nll, mut positions) = (0.0, 0.0, 0);
        for (i, s) in self.slices.iter().enumerate() {
            let normed = self.final_states(model, dev, cal, plan, first_diff, i)?;
            let (f, n, count) = cal.score_slice_and_nll(model, dev, s, &normed);
            sum += f;
            nll += n;
            positions += count;
        }
        let per = positions.max(1) as f64;
        Ok((sum / per, nll / per))
    }

    /// Whether this cache was built for `batch`.
    pub fn is_for(&self, batch: &TokenBatch) -> bool {
        self.slices == batch.slices
    }
}

/// Where candidate evaluation spends its time, summed over the process: blocks, the LM head,
/// the fitness reduction over the logits, and building stage caches. Read by `evopress bench
/// search` to profile a generation; the counters cost a clock read per slice.
pub mod profile {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    pub struct Counter(AtomicU64);

    impl Counter {
        const fn new() -> Self {
            Counter(AtomicU64::new(0))
        }
        pub fn add(&self, d: Duration) {
            self.0.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
        }
        pub fn seconds(&self) -> f64 {
            self.0.load(Ordering::Relaxed) as f64 / 1e9
        }
        pub fn reset(&self) {
            self.0.store(0, Ordering::Relaxed);
        }
    }

    pub static BLOCKS: Counter = Counter::new();
    pub static LM_HEAD: Counter = Counter::new();
    pub static FITNESS: Counter = Counter::new();
    pub static STAGE_CACHE: Counter = Counter::new();

    pub fn reset() {
        for c in [&BLOCKS, &LM_HEAD, &FITNESS, &STAGE_CACHE] {
            c.reset();
        }
    }
}

/// Builds a genome's model: the dense model with each unit's linear weights swapped for the
/// chosen variant (views into a variant store, so nothing is copied).
pub type Assemble<'a> = Box<dyn Fn(&Genome) -> Result<Model> + 'a>;

/// The fitness of genomes that pick one weight variant per linear unit (sparsity levels, bit
/// widths). A candidate differs from the stage's parent only in the blocks of the units whose
/// level changed, so it runs from the first such block on the parent's cached activations.
pub struct SwapEvaluator<'a> {
    dev: &'a dyn Device,
    cal: &'a Calibration,
    assemble: Assemble<'a>,
    /// The block of every unit, in genome order.
    unit_block: Vec<usize>,
    n_blocks: usize,
    cache_cap_bytes: usize,
    stage: Option<(Genome, StageCache)>,
    /// The last genome assembled, reused across its slices.
    assembled: Option<(Genome, Model)>,
    /// Blocks run over all evaluations (what incremental evaluation saves shows here).
    pub blocks_run: u64,
}

impl<'a> SwapEvaluator<'a> {
    pub fn new(
        model: &Model,
        dev: &'a dyn Device,
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
            assembled: None,
            blocks_run: 0,
        }
    }
}

impl Evaluator for SwapEvaluator<'_> {
    fn begin_stage(&mut self, batch: &TokenBatch, parent: &Genome) -> SearchResult<()> {
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

    fn score_slice(
        &mut self,
        genome: &Genome,
        batch: &TokenBatch,
        slice: usize,
    ) -> SearchResult<Score> {
        let (parent, cache) = self
            .stage
            .as_ref()
            .filter(|(_, c)| c.is_for(batch))
            .ok_or_else(|| Error::Invalid("evaluate called outside its stage".into()))?;
        let first_diff = (genome.0.iter().zip(&parent.0))
            .zip(&self.unit_block)
            .filter(|((a, b), _)| a != b)
            .map(|(_, &block)| block)
            .min()
            .unwrap_or(self.n_blocks);
        let from = if cache.is_cached() { first_diff } else { 0 };
        self.blocks_run += (self.n_blocks - from) as u64;
        if self.assembled.as_ref().is_none_or(|(g, _)| g != genome) {
            self.assembled = Some((genome.clone(), (self.assemble)(genome)?));
        }
        let model = &self.assembled.as_ref().expect("just assembled").1;
        let plan = vec![BlockPlan::FULL; self.n_blocks];
        Ok(cache.score_slice(model, self.dev, self.cal, &plan, from, slice)?)
    }

    fn sums_are_nonnegative(&self) -> bool {
        true
    }
}
