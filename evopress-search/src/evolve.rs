//! The (1+λ) evolutionary algorithm with multi-step selection (docs/search.md): seeded
//! initialisation, generations of level-switch offspring scored on growing token batches, and
//! a final tournament on the whole calibration set.

use super::batch::{all_tokens, sample_batch, TokenBatch};
use super::checkpoint::{exact_f64, fingerprint};
use super::config::{InitialSource, SearchConfig};
use super::mutation::{self, MoveCredit};
use super::space::{Genome, SearchSpace};
use super::{feasibility, init};
use crate::error::{Error, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::ops::ControlFlow;
use std::time::Instant;

/// The fitness of a genome on one slice of a batch: the sum over its scored positions and how
/// many positions that is. A genome's fitness on a batch is `Σ sum / Σ positions`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Score {
    pub sum: f64,
    pub positions: usize,
}

/// Scores genomes: the only thing the search needs from a compression backend.
pub trait Evaluator {
    /// Called before a stage's candidates are scored, with the batch they all share and the
    /// best current parent. A real evaluator caches the parent's activations on these tokens
    /// and runs each candidate from the first unit it changes.
    fn begin_stage(&mut self, batch: &TokenBatch, parent: &Genome) -> Result<()> {
        let _ = (batch, parent);
        Ok(())
    }

    /// The summed fitness of `genome` on `batch.slices[slice]`; lower is better, finite.
    fn score_slice(&mut self, genome: &Genome, batch: &TokenBatch, slice: usize) -> Result<Score>;

    /// True when every slice's sum is ≥ 0 (KL divergences, negative log-likelihoods): then a
    /// candidate whose partial sum already exceeds the survivors' totals can be dropped without
    /// changing which candidates survive (racing).
    fn sums_are_nonnegative(&self) -> bool {
        false
    }
}

/// A boxed evaluator (what a backend returns) is one too.
impl<E: Evaluator + ?Sized> Evaluator for Box<E> {
    fn begin_stage(&mut self, batch: &TokenBatch, parent: &Genome) -> Result<()> {
        (**self).begin_stage(batch, parent)
    }

    fn score_slice(&mut self, genome: &Genome, batch: &TokenBatch, slice: usize) -> Result<Score> {
        (**self).score_slice(genome, batch, slice)
    }

    fn sums_are_nonnegative(&self) -> bool {
        (**self).sums_are_nonnegative()
    }
}

/// The fitness of `genome` on the whole `batch` (mean over its positions), after
/// [`Evaluator::begin_stage`] has been called for the batch.
pub fn fitness(evaluator: &mut impl Evaluator, genome: &Genome, batch: &TokenBatch) -> Result<f64> {
    let mut total = Score::default();
    for slice in 0..batch.slices.len() {
        let s = checked(evaluator.score_slice(genome, batch, slice)?, slice)?;
        total.sum += s.sum;
        total.positions += s.positions;
    }
    Ok(total.sum / total.positions.max(1) as f64)
}

fn checked(score: Score, slice: usize) -> Result<Score> {
    if score.sum.is_finite() {
        Ok(score)
    } else {
        Err(Error::Invalid(format!(
            "slice {slice} scored {}: the fitness is not finite (NaN or inf logits: check the \
             model's weights and the variant database for non-finite values)",
            score.sum
        )))
    }
}

/// A named genome from outside the search (a baseline's choice) that competes for the first
/// parent and in the final tournament.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seed {
    pub name: String,
    pub genome: Genome,
}

/// Where a selection stage sits in the run. Generation 0 is the selection of the first
/// parents; the final tournament is generation `generations + 1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageInfo {
    pub generation: usize,
    pub stage: usize,
    pub candidates: usize,
    pub survivors: usize,
    pub tokens: usize,
}

/// Follows a run, e.g. to draw progress bars, write `history.jsonl` and checkpoints. Every
/// method has a do-nothing default; `()` observes nothing.
pub trait Observer {
    fn stage_started(&mut self, stage: &StageInfo) {
        let _ = stage;
    }

    fn candidate_scored(&mut self, stage: &StageInfo, fitness: Option<f64>) {
        let _ = (stage, fitness);
    }

    /// Called once a generation is done (also after generation 0, the initial selection);
    /// `Break` stops the run, which can then be resumed from the state. An error (a checkpoint
    /// that cannot be written) ends the run.
    fn generation_finished(&mut self, event: &GenerationEvent) -> Result<ControlFlow<()>> {
        let _ = event;
        Ok(ControlFlow::Continue(()))
    }
}

impl Observer for () {}

/// A seed's fitness in the initial selection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeedScore {
    pub name: String,
    #[serde(with = "exact_f64")]
    pub fitness: f64,
}

/// What one generation did. Deterministic given the seed (but for `seconds`), so it lives in
/// the checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationRecord {
    pub generation: usize,
    /// The evaluator's fitness of the best genome on the last stage's batch (not inverted).
    #[serde(with = "exact_f64")]
    pub best_fitness: f64,
    /// Candidates scored over all stages (in full or until racing dropped them).
    pub evaluations: usize,
    /// Token positions actually scored over all stages and candidates.
    pub tokens: u64,
    /// Wall-clock seconds of the generation.
    #[serde(default)]
    pub seconds: f64,
    /// Generation 0: every seed's fitness on the initial tokens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<SeedScore>,
}

pub struct GenerationEvent<'a> {
    pub record: &'a GenerationRecord,
    pub state: &'a SearchState,
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
    /// The seeds the run started from, for the final tournament.
    pub seeds: Vec<Seed>,
    /// The last distinct best parents, oldest first (at most `final_parents`).
    pub recent_parents: Vec<Genome>,
    /// Generations in a row the best parent has survived.
    pub unchanged: usize,
    /// How flips and level moves have fared, for a gated space's mutation.
    pub moves: MoveCredit,
    pub(super) rng: ChaCha8Rng,
}

impl SearchState {
    pub fn best(&self) -> &Genome {
        &self.population[0]
    }

    /// Seconds over all recorded generations (across resumed invocations).
    pub fn seconds(&self) -> f64 {
        self.history.iter().map(|r| r.seconds).sum()
    }
}

/// Why [`Search::run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// `generations` are done.
    Finished,
    /// The best parent survived `patience` generations.
    Converged,
    /// The next generation would not fit in the time left.
    TimeBudget,
    /// The observer asked to stop (`--stop-after`); resumable.
    Interrupted,
}

/// One entry of the final tournament.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Entrant {
    /// `search`, `parent@N` (the best parent after generation N) or a seed's name; genomes that
    /// appear under several names are scored once, under the first.
    pub name: String,
    pub genome: Genome,
    /// The fitness on the tournament tokens, or `None` when racing stopped it early.
    pub fitness: Option<f64>,
    /// What racing had summed when it stopped (a lower bound of the fitness).
    pub at_least: f64,
}

/// The final tournament: entrants in scoring order, the winner's index, the tokens used.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Tournament {
    pub entrants: Vec<Entrant>,
    pub winner: usize,
    pub tokens: usize,
    pub evaluations: usize,
    pub positions: u64,
}

impl Tournament {
    pub fn best(&self) -> &Entrant {
        &self.entrants[self.winner]
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
    /// The full fitness, or `None` where racing stopped scoring.
    fitness: Option<f64>,
    sum: f64,
}

/// The outcome of one selection.
struct Selection {
    /// Survivors, best first.
    survivors: Vec<Scored>,
    /// Every candidate in its original order (for seed scores and tournaments).
    all: Vec<Scored>,
    positions: u64,
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

    /// Tokens of the initial selection: `initial_tokens`, or the last stage's when unset.
    pub fn initial_tokens(&self) -> usize {
        match self.config.initial_tokens {
            0 => self.config.stages.last().map_or(0, |s| s.tokens),
            t => t,
        }
    }

    /// The first population: the best `population_size` of the seeds (when `initial` lists
    /// baselines) and `initially_generated` random starts (when it lists random), scored on
    /// the initial tokens. Every seed's fitness is recorded in generation 0's record.
    pub fn initialize(
        &self,
        seeds: Vec<Seed>,
        evaluator: &mut impl Evaluator,
        observer: &mut impl Observer,
    ) -> Result<SearchState> {
        let started = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed);
        let use_seeds = self.config.initial.contains(&InitialSource::Baselines);
        let seeds: Vec<Seed> = if use_seeds {
            dedup_seeds(seeds)
        } else {
            Vec::new()
        };
        for seed in &seeds {
            self.space.check_genome(&seed.genome).map_err(|e| {
                Error::Invalid(format!(
                    "seed `{}` is not a genome of the space: {e}",
                    seed.name
                ))
            })?;
        }
        let mut candidates: Vec<Genome> = seeds.iter().map(|s| s.genome.clone()).collect();
        if self.config.initial.contains(&InitialSource::Random) {
            let starts = if init::start_count(self.space) == Some(1) {
                vec![init::random_start(self.space, &mut rng)?]
            } else {
                init::distinct_random_starts(
                    self.space,
                    self.config.initially_generated,
                    self.config.max_offspring_attempts,
                    &mut rng,
                )?
            };
            for start in starts {
                if !candidates.contains(&start) {
                    candidates.push(start);
                }
            }
        }
        if candidates.is_empty() {
            return Err(Error::Invalid(
                "search: no initial genome: the method offered no baseline to seed from; add \
                 \"random\" to [search] initial"
                    .into(),
            ));
        }
        let mut state = SearchState {
            generation: 0,
            population: Vec::new(),
            history: Vec::new(),
            seeds,
            recent_parents: Vec::new(),
            unchanged: 0,
            moves: MoveCredit::default(),
            rng,
        };
        if candidates.len() <= self.config.population_size {
            // Nothing to choose between (a single possible start): offspring fill the rest.
            state.population = candidates;
        } else {
            let info = StageInfo {
                generation: 0,
                stage: 0,
                candidates: candidates.len(),
                survivors: self.config.population_size,
                tokens: self.initial_tokens(),
            };
            let batch = sample_batch(self.sample_lens, info.tokens, &mut state.rng);
            let base = self.space.base_genome();
            // Every seed is scored in full: its fitness goes into the record.
            let sel = self.select(candidates, &info, &batch, &base, false, evaluator, observer)?;
            let seed_scores = (state.seeds.iter())
                .map(|seed| {
                    let scored = sel.all.iter().find(|c| c.genome == seed.genome);
                    SeedScore {
                        name: seed.name.clone(),
                        fitness: scored.and_then(|c| c.fitness).expect("scored in full"),
                    }
                })
                .collect();
            state.history.push(GenerationRecord {
                generation: 0,
                best_fitness: sel.survivors[0]
                    .fitness
                    .expect("survivors are scored in full"),
                evaluations: info.candidates,
                tokens: sel.positions,
                seconds: started.elapsed().as_secs_f64(),
                seeds: seed_scores,
            });
            state.population = sel.survivors.into_iter().map(|s| s.genome).collect();
        }
        state.recent_parents.push(state.population[0].clone());
        if let Some(record) = state.history.last() {
            let event = GenerationEvent {
                record,
                state: &state,
            };
            // The state is complete either way; a stop request takes effect in `run`.
            let _stop = observer.generation_finished(&event)?;
        }
        Ok(state)
    }

    /// Runs generations until `generations` are done, the best parent has survived
    /// `patience` generations, the time budget (minus `reserve_seconds` for the work after the
    /// last generation) would be exceeded by one more, or the observer stops the run.
    pub fn run(
        &self,
        state: &mut SearchState,
        evaluator: &mut impl Evaluator,
        observer: &mut impl Observer,
        reserve_seconds: f64,
    ) -> Result<Stop> {
        loop {
            if state.generation >= self.config.generations {
                return Ok(Stop::Finished);
            }
            if self.config.patience.is_some_and(|p| state.unchanged >= p) {
                return Ok(Stop::Converged);
            }
            if let Some(budget) = self.config.time_budget {
                let recent: Vec<f64> = (state.history.iter().rev())
                    .filter(|r| r.generation > 0)
                    .take(3)
                    .map(|r| r.seconds)
                    .collect();
                let next = recent.iter().cloned().fold(0.0, f64::max);
                if state.seconds() + next + reserve_seconds > budget {
                    return Ok(Stop::TimeBudget);
                }
            }
            let started = Instant::now();
            self.step(state, evaluator, observer)?;
            let record = state
                .history
                .last_mut()
                .expect("step records its generation");
            record.seconds = started.elapsed().as_secs_f64();
            let event = GenerationEvent {
                record: state.history.last().expect("just pushed"),
                state,
            };
            if observer.generation_finished(&event)?.is_break() {
                return Ok(Stop::Interrupted);
            }
        }
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
        let children = mutation::offspring(
            self.space,
            &state.population,
            config.offspring,
            config.max_mutations,
            config.max_offspring_attempts,
            &state.moves,
            &mut state.rng,
        )?;
        let mut candidates: Vec<Genome> = children.iter().map(|c| c.genome.clone()).collect();
        let (mut evaluations, mut positions) = (0, 0);
        let mut best_fitness = f64::NAN;
        for (index, stage) in config.stages.iter().enumerate() {
            if stage.survivors == config.population_size {
                // The parents go first: they are likely good, which tightens racing's bound.
                let mut with_parents: Vec<Genome> = (state.population.iter())
                    .filter(|p| !candidates.contains(p))
                    .cloned()
                    .collect();
                with_parents.append(&mut candidates);
                candidates = with_parents;
            }
            let info = StageInfo {
                generation,
                stage: index,
                candidates: candidates.len(),
                survivors: stage.survivors,
                tokens: stage.tokens,
            };
            let batch = sample_batch(self.sample_lens, info.tokens, &mut state.rng);
            let parent = state.population[0].clone();
            let sel = self.select(
                candidates,
                &info,
                &batch,
                &parent,
                config.racing,
                evaluator,
                observer,
            )?;
            evaluations += info.candidates;
            positions += sel.positions;
            best_fitness = sel.survivors[0]
                .fitness
                .expect("survivors are scored in full");
            candidates = sel.survivors.into_iter().map(|s| s.genome).collect();
        }
        if candidates[0] == state.population[0] {
            state.unchanged += 1;
        } else {
            state.unchanged = 0;
            state.recent_parents.retain(|p| *p != candidates[0]);
            state.recent_parents.push(candidates[0].clone());
            let excess = state
                .recent_parents
                .len()
                .saturating_sub(config.final_parents);
            state.recent_parents.drain(..excess);
        }
        state.moves.record(&children, &candidates);
        state.history.push(GenerationRecord {
            generation,
            best_fitness,
            evaluations,
            tokens: positions,
            seconds: 0.0,
            seeds: Vec::new(),
        });
        state.population = candidates;
        state.generation = generation;
        Ok(())
    }

    /// Tokens of the final tournament.
    pub fn final_tokens(&self) -> usize {
        let available: usize = self.sample_lens.iter().sum();
        match self.config.final_tokens {
            0 => available,
            t => t.min(available),
        }
    }

    /// The genomes the final tournament scores, with their names: the winner, the recent
    /// parents (newest first) and the seeds, each genome once.
    pub fn entrants(&self, state: &SearchState) -> Vec<(String, Genome)> {
        let mut out: Vec<(String, Genome)> = vec![("search".into(), state.best().clone())];
        let parents = state.recent_parents.iter().rev().enumerate();
        let parents = parents.map(|(i, g)| (format!("parent-{}", i + 1), g.clone()));
        let seeds = state
            .seeds
            .iter()
            .map(|s| (s.name.clone(), s.genome.clone()));
        for (name, genome) in parents.chain(seeds) {
            if out.iter().all(|(_, g)| *g != genome) {
                out.push((name, genome));
            }
        }
        out
    }

    /// Scores [`entrants`](Self::entrants) on the first `final_tokens` calibration tokens
    /// (whole samples in order) and returns them with the winner: the returned genome's
    /// fitness on these tokens is at most every seed's (exactly, with racing).
    pub fn final_tournament(
        &self,
        state: &SearchState,
        evaluator: &mut impl Evaluator,
        observer: &mut impl Observer,
    ) -> Result<Tournament> {
        let entrants = self.entrants(state);
        let tokens = self.final_tokens();
        let batch = all_tokens(self.sample_lens, tokens);
        let info = StageInfo {
            generation: state.generation + 1,
            stage: 0,
            candidates: entrants.len(),
            survivors: 1,
            tokens,
        };
        let genomes = entrants.iter().map(|(_, g)| g.clone()).collect();
        let sel = self.select(
            genomes,
            &info,
            &batch,
            state.best(),
            self.config.racing,
            evaluator,
            observer,
        )?;
        let positions = batch.token_count();
        let entrants: Vec<Entrant> = (entrants.into_iter().zip(sel.all))
            .map(|((name, genome), scored)| Entrant {
                name,
                genome,
                fitness: scored.fitness,
                at_least: scored.sum / positions.max(1) as f64,
            })
            .collect();
        let winner = entrants
            .iter()
            .position(|e| e.genome == sel.survivors[0].genome)
            .expect("the survivor is an entrant");
        Ok(Tournament {
            winner,
            tokens,
            evaluations: info.candidates,
            positions: sel.positions,
            entrants,
        })
    }

    /// Scores the candidates on `batch` and keeps the best `info.survivors`, best first; ties
    /// keep candidate order, so the outcome depends on nothing but the seed. With `racing`
    /// (and non-negative sums) a candidate stops being scored once its partial sum exceeds the
    /// `survivors`-th best total: the survivors are exactly those of full scoring.
    #[allow(clippy::too_many_arguments)]
    fn select(
        &self,
        candidates: Vec<Genome>,
        info: &StageInfo,
        batch: &TokenBatch,
        parent: &Genome,
        racing: bool,
        evaluator: &mut impl Evaluator,
        observer: &mut impl Observer,
    ) -> Result<Selection> {
        evaluator.begin_stage(batch, parent)?;
        observer.stage_started(info);
        let racing = racing
            && !self.config.invert_fitness
            && evaluator.sums_are_nonnegative()
            && info.survivors < candidates.len();
        let n_slices = batch.slices.len();
        let mut race: Vec<Racer> = (0..candidates.len()).map(|_| Racer::default()).collect();
        // Racing scores every candidate's first slice, then finishes candidates in order of
        // that partial score, so that good ones set a tight bound early.
        let mut order: Vec<usize> = (0..candidates.len()).collect();
        if racing && n_slices > 1 {
            for &c in &order {
                race[c].add(evaluator.score_slice(&candidates[c], batch, 0)?)?;
            }
            order.sort_by(|&a, &b| race[a].sum.total_cmp(&race[b].sum));
        }
        // Totals of fully scored candidates, ascending; the bound is the survivors-th.
        let mut totals: Vec<f64> = Vec::new();
        for &c in &order {
            while race[c].slices < n_slices {
                let beaten =
                    totals.len() >= info.survivors && race[c].sum > totals[info.survivors - 1];
                if racing && beaten {
                    break;
                }
                let slice = race[c].slices;
                race[c].add(evaluator.score_slice(&candidates[c], batch, slice)?)?;
            }
            let fitness = (race[c].slices == n_slices).then(|| race[c].fitness());
            if fitness.is_some() {
                let at = totals.partition_point(|&t| t <= race[c].sum);
                totals.insert(at, race[c].sum);
            }
            observer.candidate_scored(info, fitness);
        }
        let positions = race.iter().map(|r| r.positions as u64).sum();
        let all: Vec<Scored> = (candidates.into_iter().zip(&race))
            .map(|(genome, r)| Scored {
                genome,
                fitness: (r.slices == n_slices).then(|| r.fitness()),
                sum: r.sum,
            })
            .collect();
        let sign = if self.config.invert_fitness {
            -1.0
        } else {
            1.0
        };
        let mut ranked: Vec<(usize, f64)> = (all.iter().enumerate())
            .filter_map(|(c, s)| Some((c, s.fitness?)))
            .collect();
        // A stable sort over candidate order: equal fitness keeps candidate order.
        ranked.sort_by(|a, b| (sign * a.1).total_cmp(&(sign * b.1)));
        let survivors = (ranked.iter().take(info.survivors))
            .map(|&(c, _)| Scored {
                genome: all[c].genome.clone(),
                fitness: all[c].fitness,
                sum: all[c].sum,
            })
            .collect();
        Ok(Selection {
            survivors,
            all,
            positions,
        })
    }
}

/// A candidate's progress through a batch's slices.
#[derive(Default)]
struct Racer {
    sum: f64,
    positions: usize,
    slices: usize,
}

impl Racer {
    fn add(&mut self, score: Score) -> Result<()> {
        let score = checked(score, self.slices)?;
        self.sum += score.sum;
        self.positions += score.positions;
        self.slices += 1;
        Ok(())
    }

    fn fitness(&self) -> f64 {
        self.sum / self.positions.max(1) as f64
    }
}

/// Seeds with distinct genomes, in order; a genome listed twice keeps its first name with the
/// others appended (`cosine=norm_ratio`).
fn dedup_seeds(seeds: Vec<Seed>) -> Vec<Seed> {
    let mut out: Vec<Seed> = Vec::new();
    let mut seen = HashSet::new();
    for seed in seeds {
        if seen.insert(seed.genome.clone()) {
            out.push(seed);
        } else if let Some(first) = out.iter_mut().find(|s| s.genome == seed.genome) {
            first.name = format!("{}={}", first.name, seed.name);
        }
    }
    out
}
