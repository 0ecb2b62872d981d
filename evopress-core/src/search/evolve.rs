//! The (1+λ) evolutionary algorithm with multi-step selection (docs/search.md).

use super::batch::{sample_batch, TokenBatch};
use super::checkpoint::{exact_f64, fingerprint};
use super::config::SearchConfig;
use super::space::{Genome, SearchSpace};
use super::{feasibility, init, mutation};
use crate::error::{Error, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

/// Scores genomes: the only thing the search needs from a compression backend.
pub trait Evaluator {
    /// Called before a stage's candidates are scored, with the batch they all share and the
    /// best current parent (the base genome during initialisation). A real evaluator can cache
    /// the parent's activations on these tokens and run each candidate from the first unit it
    /// changes.
    fn begin_stage(&mut self, batch: &TokenBatch, parent: &Genome) -> Result<()> {
        let _ = (batch, parent);
        Ok(())
    }

    /// The fitness of `genome` on `batch`; lower is better. It must be finite.
    fn evaluate(&mut self, genome: &Genome, batch: &TokenBatch) -> Result<f64>;
}

/// A boxed evaluator (what [`crate::CompressionBackend::evaluator`] returns) is one too.
impl<E: Evaluator + ?Sized> Evaluator for Box<E> {
    fn begin_stage(&mut self, batch: &TokenBatch, parent: &Genome) -> Result<()> {
        (**self).begin_stage(batch, parent)
    }

    fn evaluate(&mut self, genome: &Genome, batch: &TokenBatch) -> Result<f64> {
        (**self).evaluate(genome, batch)
    }
}

/// Where a selection stage sits in the run. Generation 0 is the selection among random starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageInfo {
    pub generation: usize,
    pub stage: usize,
    pub candidates: usize,
    pub survivors: usize,
    pub tokens: usize,
}

/// Follows a run, e.g. to draw progress bars and write `history.jsonl`. Every method has a
/// do-nothing default; `()` observes nothing.
pub trait Observer {
    fn stage_started(&mut self, stage: &StageInfo) {
        let _ = stage;
    }

    fn candidate_scored(&mut self, stage: &StageInfo, fitness: f64) {
        let _ = (stage, fitness);
    }

    /// Called once a generation and its checkpoint are done; `Break` stops the run, which can
    /// then be resumed from the checkpoint.
    fn generation_finished(&mut self, event: &GenerationEvent) -> ControlFlow<()> {
        let _ = event;
        ControlFlow::Continue(())
    }
}

impl Observer for () {}

/// What one generation did. Deterministic given the seed, so it lives in the checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationRecord {
    pub generation: usize,
    /// The evaluator's fitness of the best genome on the last stage's batch (not inverted).
    #[serde(with = "exact_f64")]
    pub best_fitness: f64,
    /// Candidate evaluations over all stages.
    pub evaluations: usize,
    /// Tokens scored over all stages and candidates.
    pub tokens: u64,
}

pub struct GenerationEvent<'a> {
    pub record: &'a GenerationRecord,
    pub best: &'a Genome,
    /// Wall-clock time of the generation, checkpoint included.
    pub seconds: f64,
}

/// Everything a run needs to continue: what a checkpoint holds.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchState {
    /// Generations completed.
    pub generation: usize,
    /// The parents, best first.
    pub population: Vec<Genome>,
    /// One record per scored generation; generation 0 where the start was selected.
    pub history: Vec<GenerationRecord>,
    pub(super) rng: ChaCha8Rng,
}

impl SearchState {
    pub fn best(&self) -> &Genome {
        &self.population[0]
    }
}

/// A search, checked to be feasible: a space, a config and the calibration sample lengths.
pub struct Search<'a> {
    pub(super) space: &'a SearchSpace,
    pub(super) config: &'a SearchConfig,
    sample_lens: &'a [usize],
    pub(super) fingerprint: u64,
}

struct Scored {
    genome: Genome,
    fitness: f64,
}

impl<'a> Search<'a> {
    /// Rejects every setup that could not run to the end: bad stage lists, more tokens than
    /// the calibration data holds, or fewer legal genomes than the offspring asked for.
    pub fn new(
        space: &'a SearchSpace,
        config: &'a SearchConfig,
        sample_lens: &'a [usize],
    ) -> Result<Self> {
        feasibility::check(space, config, sample_lens)?;
        Ok(Search {
            space,
            config,
            sample_lens,
            fingerprint: fingerprint(space, config, sample_lens, ""),
        })
    }

    /// Ties checkpoints to something beyond the space, config and data (a model fingerprint,
    /// the fitness function), so resuming against anything else is refused.
    pub fn with_identity(mut self, identity: &str) -> Self {
        self.fingerprint = fingerprint(self.space, self.config, self.sample_lens, identity);
        self
    }

    /// The starting population (docs/search.md): the single possible start where there is only one,
    /// else the best `population_size` of `initially_generated` random starts on
    /// `initial_tokens` tokens.
    pub fn initialize(
        &self,
        evaluator: &mut impl Evaluator,
        observer: &mut impl Observer,
    ) -> Result<SearchState> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed);
        if init::start_count(self.space) == Some(1) {
            return Ok(SearchState {
                generation: 0,
                population: vec![init::random_start(self.space, &mut rng)?],
                history: Vec::new(),
                rng,
            });
        }
        let starts = init::distinct_random_starts(
            self.space,
            self.config.initially_generated,
            self.config.max_offspring_attempts,
            &mut rng,
        )?;
        let info = StageInfo {
            generation: 0,
            stage: 0,
            candidates: starts.len(),
            survivors: self.config.population_size,
            tokens: self.config.initial_tokens,
        };
        let base = self.space.base_genome();
        let best = self.select(starts, &info, &base, &mut rng, evaluator, observer)?;
        let record = GenerationRecord {
            generation: 0,
            best_fitness: best[0].fitness,
            evaluations: info.candidates,
            tokens: (info.candidates * info.tokens) as u64,
        };
        Ok(SearchState {
            generation: 0,
            population: best.into_iter().map(|s| s.genome).collect(),
            history: vec![record],
            rng,
        })
    }

    /// Runs generations until `generations` are done or the observer stops the run, writing a
    /// checkpoint after every generation when `checkpoint` is given.
    pub fn run(
        &self,
        mut state: SearchState,
        evaluator: &mut impl Evaluator,
        observer: &mut impl Observer,
        checkpoint: Option<&Path>,
    ) -> Result<SearchState> {
        while state.generation < self.config.generations {
            let started = Instant::now();
            self.step(&mut state, evaluator, observer)?;
            if let Some(path) = checkpoint {
                self.save_checkpoint(&state, path)?;
            }
            let event = GenerationEvent {
                record: state.history.last().expect("step records its generation"),
                best: state.best(),
                seconds: started.elapsed().as_secs_f64(),
            };
            if observer.generation_finished(&event).is_break() {
                break;
            }
        }
        Ok(state)
    }

    /// One generation: λ distinct offspring, multi-step selection, the parents re-competing in
    /// every stage that keeps `population_size` survivors (elitism, re-scored, never cached).
    pub fn step(
        &self,
        state: &mut SearchState,
        evaluator: &mut impl Evaluator,
        observer: &mut impl Observer,
    ) -> Result<()> {
        let config = self.config;
        let generation = state.generation + 1;
        let mut candidates = mutation::offspring(
            self.space,
            &state.population,
            config.offspring,
            config.max_mutations,
            config.max_offspring_attempts,
            &mut state.rng,
        )?;
        let (mut evaluations, mut tokens) = (0, 0);
        let mut finalists = Vec::new();
        for (index, stage) in config.stages.iter().enumerate() {
            if stage.survivors == config.population_size {
                for parent in &state.population {
                    if !candidates.contains(parent) {
                        candidates.push(parent.clone());
                    }
                }
            }
            let info = StageInfo {
                generation,
                stage: index,
                candidates: candidates.len(),
                survivors: stage.survivors,
                tokens: stage.tokens,
            };
            let best_parent = &state.population[0];
            finalists = self.select(
                candidates,
                &info,
                best_parent,
                &mut state.rng,
                evaluator,
                observer,
            )?;
            evaluations += info.candidates;
            tokens += (info.candidates * info.tokens) as u64;
            candidates = finalists.iter().map(|s| s.genome.clone()).collect();
        }
        state.history.push(GenerationRecord {
            generation,
            best_fitness: finalists[0].fitness,
            evaluations,
            tokens,
        });
        state.population = candidates;
        state.generation = generation;
        Ok(())
    }

    /// Scores all candidates on one fresh batch and keeps the best `info.survivors`, best
    /// first. Ties keep candidate order, so the outcome depends on nothing but the seed.
    fn select(
        &self,
        candidates: Vec<Genome>,
        info: &StageInfo,
        parent: &Genome,
        rng: &mut ChaCha8Rng,
        evaluator: &mut impl Evaluator,
        observer: &mut impl Observer,
    ) -> Result<Vec<Scored>> {
        let batch = sample_batch(self.sample_lens, info.tokens, rng);
        evaluator.begin_stage(&batch, parent)?;
        observer.stage_started(info);
        let mut scored = Vec::with_capacity(candidates.len());
        for (index, genome) in candidates.into_iter().enumerate() {
            let fitness = evaluator.evaluate(&genome, &batch)?;
            if !fitness.is_finite() {
                return Err(Error::Invalid(format!(
                    "generation {}, stage {}: candidate {index} has fitness {fitness}; the \
                     evaluator must return finite values",
                    info.generation, info.stage
                )));
            }
            observer.candidate_scored(info, fitness);
            scored.push(Scored { genome, fitness });
        }
        let sign = if self.config.invert_fitness {
            -1.0
        } else {
            1.0
        };
        // A stable sort: equal fitness keeps candidate order.
        scored.sort_by(|a, b| (sign * a.fitness).total_cmp(&(sign * b.fitness)));
        scored.truncate(info.survivors);
        Ok(scored)
    }
}
