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
use std::sync::Arc;
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

/// One slice's residual stream entering every block, then the stream leaving the last one.
type Boundaries = Vec<Vec<f32>>;

/// The parent's block inputs on a stage's slices: `inputs[slice][block]` is the residual
/// stream entering `block` (the last entry is the stream leaving the last block). Empty when
/// caching is disabled (then candidates run in full).
pub struct StageCache {
    pub slices: Vec<Slice>,
    inputs: Vec<Arc<Boundaries>>,
    /// Blocks run (summed over slices) to build this cache; reused boundaries cost none.
    pub blocks_run: usize,
}

impl StageCache {
    /// Bytes a cache for `tokens` positions would take on `model`.
    pub fn bytes(model: &Model, tokens: usize) -> usize {
        (model.layers.len() + 1) * tokens * model.hidden_size() * 4
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
        Self::build_reusing(model, dev, cal, slices, parent, cap_bytes, |_| None)
    }

    /// [`build`](Self::build), taking what it can from boundaries computed before: for a
    /// slice, `earlier` may return the boundaries of an earlier parent with the first block
    /// in which that parent runs differently from this one. The boundaries up to and
    /// including that block's input are the same computation on the same tokens, so they are
    /// copied (shared, when the parents run alike throughout) and only the blocks from there
    /// on run.
    pub fn build_reusing<D: Device + ?Sized>(
        model: &Model,
        dev: &D,
        cal: &Calibration,
        slices: Vec<Slice>,
        parent: &[BlockPlan],
        cap_bytes: usize,
        mut earlier: impl FnMut(&Slice) -> Option<(Arc<Boundaries>, usize)>,
    ) -> Result<Self> {
        let started = Instant::now();
        let tokens: usize = slices.iter().map(|s| s.tokens.len()).sum();
        let mut inputs = Vec::new();
        let mut blocks_run = 0;
        if Self::bytes(model, tokens) <= cap_bytes {
            let n = parent.len();
            for s in &slices {
                let reused = earlier(s).filter(|(b, _)| b.len() == n + 1);
                if let Some((b, _)) = reused.as_ref().filter(|(_, d)| *d >= n) {
                    inputs.push(Arc::clone(b));
                    continue;
                }
                let toks = &cal.samples[s.sample][s.tokens.clone()];
                let layout = Layout {
                    batch: 1,
                    seq: toks.len(),
                    pos0: 0,
                };
                // Boundaries `0..from` are kept; `h` enters block `from`.
                let (mut per_block, mut h, from) = match reused {
                    Some((b, first_diff)) => {
                        let mut prefix = Vec::with_capacity(n + 1);
                        prefix.extend_from_slice(&b[..first_diff]);
                        (prefix, b[first_diff].clone(), first_diff)
                    }
                    None => (Vec::with_capacity(n + 1), model.embed(toks)?, 0),
                };
                for (b, &p) in parent.iter().enumerate().skip(from) {
                    per_block.push(h.clone());
                    model.block_forward(dev, b, &mut h, layout, p, None);
                }
                per_block.push(h);
                blocks_run += n - from;
                inputs.push(Arc::new(per_block));
            }
        }
        profile::STAGE_CACHE.add(started.elapsed());
        Ok(StageCache {
            slices,
            inputs,
            blocks_run,
        })
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
        let (h, from) = match self.inputs.get(i) {
            Some(per_block) => (per_block[first_diff].clone(), first_diff),
            _ => (model.embed(toks)?, 0),
        };
        Ok(self.states_from(model, dev, plan, h, from, i))
    }

    /// [`score_slice`](Self::score_slice) of a candidate whose token embedding differs from the
    /// parent's: every block runs, from the candidate's own embedding.
    pub fn score_slice_from_embedding<D: Device + ?Sized>(
        &self,
        model: &Model,
        dev: &D,
        cal: &Calibration,
        plan: &[BlockPlan],
        i: usize,
    ) -> Result<Score> {
        let s = &self.slices[i];
        let h = model.embed(&cal.samples[s.sample][s.tokens.clone()])?;
        let normed = self.states_from(model, dev, plan, h, 0, i);
        Self::score_states(model, dev, cal, s, &normed)
    }

    /// Runs slice `i`'s stream `h` (the input of block `from`) to the final-normed states.
    fn states_from<D: Device + ?Sized>(
        &self,
        model: &Model,
        dev: &D,
        plan: &[BlockPlan],
        mut h: Vec<f32>,
        from: usize,
        i: usize,
    ) -> Vec<f32> {
        let layout = Layout {
            batch: 1,
            seq: self.slices[i].tokens.len(),
            pos0: 0,
        };
        let started = Instant::now();
        model.run_blocks(dev, &mut h, layout, plan, from);
        let normed = model.final_norm(dev, &h);
        profile::BLOCKS.add(started.elapsed());
        normed
    }

    /// The fitness of one slice's final-normed states; a non-finite sum is an error.
    fn score_states<D: Device + ?Sized>(
        model: &Model,
        dev: &D,
        cal: &Calibration,
        slice: &Slice,
        normed: &[f32],
    ) -> Result<Score> {
        let (sum, positions) = cal.score_slice(model, dev, slice, normed);
        if !sum.is_finite() {
            return Err(Error::non_finite("the candidate's fitness", sum));
        }
        Ok(Score { sum, positions })
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
        Self::score_states(model, dev, cal, &self.slices[i], &normed)
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

/// The stage parents' boundaries and the current parent's slice scores, kept from one stage
/// to the next.
///
/// A (1+λ) search's parent changes rarely once it has converged, and its stages draw their
/// slices from a small calibration pool, so most of a stage's cache, and the parent's own
/// score, were computed in an earlier stage. When the parent does change, the new one
/// usually runs like an earlier one up to some block, and those boundaries still hold.
/// Everything reused is the same computation on the same tokens: results are bit-identical
/// to building every stage afresh (docs/search.md, "Scoring and racing").
#[derive(Default)]
pub struct ParentMemo {
    /// Boundaries per parent and slice, oldest first.
    kept: Vec<(Genome, Slice, Arc<Boundaries>)>,
    /// The current parent and its scores per slice.
    scores: Option<(Genome, Vec<(Slice, Score)>)>,
}

impl ParentMemo {
    /// The stage cache of `parent` (its blocks run as `plan`) on `slices`. `first_diff(old)`
    /// is the first block in which `parent` runs differently from an earlier parent `old`
    /// (`None` when even their embeddings differ). Each slice starts from the kept boundaries
    /// that hold furthest. What is kept after the stage (this stage's boundaries, then the
    /// newest older ones) stays within `cap_bytes`.
    #[allow(clippy::too_many_arguments)]
    pub fn stage_cache<D: Device + ?Sized>(
        &mut self,
        model: &Model,
        dev: &D,
        cal: &Calibration,
        slices: Vec<Slice>,
        parent: &Genome,
        plan: &[BlockPlan],
        cap_bytes: usize,
        first_diff: impl Fn(&Genome) -> Option<usize>,
    ) -> Result<StageCache> {
        if self.scores.as_ref().is_none_or(|(p, _)| p != parent) {
            self.scores = Some((parent.clone(), Vec::new()));
        }
        let kept = &self.kept;
        // How far each kept entry holds for this parent.
        let holds: Vec<Option<usize>> = kept
            .iter()
            .map(|(g, _, _)| {
                if g == parent {
                    Some(plan.len())
                } else {
                    first_diff(g)
                }
            })
            .collect();
        let cache = StageCache::build_reusing(model, dev, cal, slices, plan, cap_bytes, |s| {
            (kept.iter().zip(&holds))
                .filter(|((_, k, _), _)| k == s)
                .filter_map(|((_, _, b), d)| Some((Arc::clone(b), (*d)?)))
                .max_by_key(|(_, d)| *d)
        })?;
        self.kept
            .retain(|(g, s, _)| g != parent || !cache.slices.contains(s));
        let bytes = |b: &Boundaries| b.iter().map(|x| x.len() * 4).sum::<usize>();
        let mut total: usize = cache.inputs.iter().map(|b| bytes(b)).sum();
        // The newest older entries, while they fit.
        let mut older = std::mem::take(&mut self.kept);
        older.reverse();
        older.retain(|(_, _, b)| {
            total += bytes(b);
            total <= cap_bytes
        });
        older.reverse();
        self.kept = older;
        let current = cache
            .slices
            .iter()
            .cloned()
            .zip(cache.inputs.iter().cloned());
        self.kept
            .extend(current.map(|(s, b)| (parent.clone(), s, b)));
        Ok(cache)
    }

    /// A genome's score on `slice` from `score`, except that the current parent's
    /// (`is_parent`) is computed once per slice and then remembered.
    pub fn score(
        &mut self,
        is_parent: bool,
        slice: &Slice,
        score: impl FnOnce() -> Result<Score>,
    ) -> Result<Score> {
        let Some((_, scores)) = self.scores.as_mut().filter(|_| is_parent) else {
            return score();
        };
        if let Some((_, s)) = scores.iter().find(|(k, _)| k == slice) {
            return Ok(*s);
        }
        let s = score()?;
        scores.push((slice.clone(), s));
        Ok(s)
    }
}

/// The first block holding a unit in which genomes `a` and `b` differ (`n_blocks` if none
/// does); `unit_block` gives every unit's block.
pub fn first_changed_block(a: &Genome, b: &Genome, unit_block: &[usize], n_blocks: usize) -> usize {
    (a.0.iter().zip(&b.0))
        .zip(unit_block)
        .filter(|((x, y), _)| x != y)
        .map(|(_, &block)| block)
        .min()
        .unwrap_or(n_blocks)
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
    /// The block of every unit, in genome order (the block count for the LM head: only the
    /// head reruns).
    unit_block: Vec<usize>,
    /// A unit that is the token embedding: when it changes, nothing cached applies.
    embedding_unit: Option<usize>,
    n_blocks: usize,
    cache_cap_bytes: usize,
    stage: Option<(Genome, StageCache)>,
    memo: ParentMemo,
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
            embedding_unit: None,
            n_blocks: model.layers.len(),
            cache_cap_bytes,
            stage: None,
            memo: ParentMemo::default(),
            assembled: None,
            blocks_run: 0,
        }
    }

    /// Marks unit `u` as the token embedding (a GGUF database's embedding levels): a
    /// candidate that changes it runs from the embedding, not from cached activations.
    pub fn with_embedding_unit(mut self, u: usize) -> Self {
        self.embedding_unit = Some(u);
        self
    }
}

impl Evaluator for SwapEvaluator<'_> {
    fn begin_stage(&mut self, batch: &TokenBatch, parent: &Genome) -> SearchResult<()> {
        let model = (self.assemble)(parent)?;
        let plan = vec![BlockPlan::FULL; self.n_blocks];
        let (unit_block, embedding_unit) = (&self.unit_block, self.embedding_unit);
        let first_diff = |old: &Genome| {
            let embedding_changed = embedding_unit.is_some_and(|u| old.0.get(u) != parent.0.get(u));
            (!embedding_changed).then(|| first_changed_block(old, parent, unit_block, plan.len()))
        };
        let cache = self.memo.stage_cache(
            &model,
            self.dev,
            self.cal,
            batch.slices.clone(),
            parent,
            &plan,
            self.cache_cap_bytes,
            first_diff,
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
        let first_diff = first_changed_block(genome, parent, &self.unit_block, self.n_blocks);
        let embedding_changed = self
            .embedding_unit
            .is_some_and(|u| genome.0.get(u) != parent.0.get(u));
        let from = if cache.is_cached() && !embedding_changed {
            Some(first_diff)
        } else {
            None
        };
        let is_parent = genome == parent && from.is_some();
        let (dev, cal, n_blocks) = (self.dev, self.cal, self.n_blocks);
        let (assemble, assembled) = (&self.assemble, &mut self.assembled);
        let blocks_run = &mut self.blocks_run;
        Ok(self.memo.score(is_parent, &batch.slices[slice], || {
            *blocks_run += (n_blocks - from.unwrap_or(0)) as u64;
            if assembled.as_ref().is_none_or(|(g, _)| g != genome) {
                *assembled = Some((genome.clone(), assemble(genome)?));
            }
            let model = &assembled.as_ref().expect("just assembled").1;
            let plan = vec![BlockPlan::FULL; n_blocks];
            match from {
                Some(from) => cache.score_slice(model, dev, cal, &plan, from, slice),
                None => cache.score_slice_from_embedding(model, dev, cal, &plan, slice),
            }
        })?)
    }

    fn sums_are_nonnegative(&self) -> bool {
        true
    }
}
