//! The evolutionary search on synthetic fitness functions with known optima.

use evopress_search::dp::dp_allocate;
use evopress_search::init::random_start;
use evopress_search::mutation::{check_random_walk, switch_count};
use evopress_search::space::ChooseK;
use evopress_search::{
    Budget, Evaluator, Gate, GenerationEvent, Genome, Group, GroupStart, InitialSource, Level,
    Observer, Result, Score, Search, SearchConfig, SearchSpace, SearchState, Seed, Stage, Stop,
    TokenBatch, Unit,
};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::HashSet;
use std::ops::ControlFlow;

/// Scores a genome by a function of its level ids, plus `noise` times a value that depends on
/// the slice's sample (so selection sees the fresh-token noise of a real fitness). Every slice
/// scores `fitness + noise` per position, so a batch's fitness is their token-weighted mean.
struct Synthetic<'s, F> {
    space: &'s SearchSpace,
    fitness: F,
    noise: f64,
    nonnegative: bool,
    stage_batches: Vec<TokenBatch>,
    /// Slices scored, over all calls.
    slices_scored: usize,
}

impl<'s, F: Fn(&[i32]) -> f64> Synthetic<'s, F> {
    fn new(space: &'s SearchSpace, fitness: F) -> Self {
        Synthetic {
            space,
            fitness,
            noise: 0.0,
            nonnegative: false,
            stage_batches: Vec::new(),
            slices_scored: 0,
        }
    }
}

impl<F: Fn(&[i32]) -> f64> Evaluator for Synthetic<'_, F> {
    fn begin_stage(&mut self, batch: &TokenBatch, _parent: &Genome) -> Result<()> {
        self.stage_batches.push(batch.clone());
        Ok(())
    }

    fn score_slice(&mut self, genome: &Genome, batch: &TokenBatch, slice: usize) -> Result<Score> {
        self.slices_scored += 1;
        let ids = self.space.level_ids(genome);
        let s = &batch.slices[slice];
        let genome_value: f64 = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| (i * id as usize) as f64)
            .sum();
        let wobble = (s.sample as f64 * 0.37 + genome_value * 0.11).sin();
        let per_position = (self.fitness)(&ids) + self.noise * wobble;
        Ok(Score {
            sum: per_position * s.tokens.len() as f64,
            positions: s.tokens.len(),
        })
    }

    fn sums_are_nonnegative(&self) -> bool {
        self.nonnegative
    }
}

fn calibration(samples: usize, len: usize) -> Vec<usize> {
    vec![len; samples]
}

fn run_to_end(
    space: &SearchSpace,
    config: &SearchConfig,
    sample_lens: &[usize],
    evaluator: &mut impl Evaluator,
) -> SearchState {
    let search = Search::new(space, config, sample_lens).unwrap();
    let mut state = search.initialize(Vec::new(), evaluator, &mut ()).unwrap();
    search.run(&mut state, evaluator, &mut (), 0.0).unwrap();
    state
}

/// `k` of `n` units dropped in one group, only where `may_drop`: the shape of whole-block
/// depth pruning.
fn choose_k_space(n: usize, k: usize, may_drop: impl Fn(usize) -> bool) -> SearchSpace {
    SearchSpace::choose_k(vec![ChooseK {
        name: "blocks".into(),
        units: (0..n)
            .map(|i| (format!("block.{i}"), may_drop(i)))
            .collect(),
        k,
    }])
    .unwrap()
}

/// Units of the given sizes at widths 2..=6 bits under a ceiling of `target` bits per weight,
/// starting at the lowest width at or above it: the shape of a bit-width search over layers
/// of different sizes.
fn bit_ceiling_space(numels: &[u64], widths: &[i32], target: f64) -> SearchSpace {
    let units = (numels.iter().enumerate())
        .map(|(i, &n)| Unit {
            name: format!("layers.{i}.proj"),
            group: 0,
            levels: widths
                .iter()
                .map(|&b| Level::new(b, n * b as u64))
                .collect(),
        })
        .collect();
    let base = *widths.iter().find(|&&b| b as f64 >= target).unwrap();
    let max_cost = numels.iter().map(|&n| (n as f64 * target) as u64).sum();
    let groups = vec![Group {
        name: "all".into(),
        start: GroupStart::uniform(base),
    }];
    SearchSpace::new(units, groups, Budget::CostCeiling { max_cost, step: 1 }).unwrap()
}

/// `blocks` sub-blocks, each a switch (kept/dropped) and `layers` layers at widths 2..=6 bits of
/// `numel` weights each, under a ceiling of `target` bits per weight over all layers: the shape
/// of a joint depth and bit-width search. Layers start at 6 bits; switches kept.
fn gated_space(blocks: usize, layers: usize, numel: u64, target: f64) -> SearchSpace {
    let (mut units, mut gates) = (Vec::new(), Vec::new());
    for b in 0..blocks {
        let switch = units.len();
        units.push(Unit {
            name: format!("block.{b}"),
            group: 0,
            levels: vec![Level::new(0, 0), Level::new(1, 0)],
        });
        let members: Vec<usize> = (0..layers).map(|l| switch + 1 + l).collect();
        units.extend((0..layers).map(|l| Unit {
            name: format!("block.{b}.layer.{l}"),
            group: 1,
            levels: (2..=6).map(|w| Level::new(w, numel * w as u64)).collect(),
        }));
        gates.push(Gate { switch, members });
    }
    let groups = vec![
        Group {
            name: "switches".into(),
            start: GroupStart::uniform(0),
        },
        Group {
            name: "layers".into(),
            start: GroupStart::uniform(6),
        },
    ];
    let max_cost = (target * (blocks * layers) as f64 * numel as f64) as u64;
    let budget = Budget::CostCeiling { max_cost, step: 1 };
    (SearchSpace::new(units, groups, budget).unwrap())
        .with_gates(gates)
        .unwrap()
}

/// Every genome meeting the budget, by brute force over small spaces.
fn all_genomes(space: &SearchSpace) -> Vec<Genome> {
    let mut genomes = vec![Vec::new()];
    for unit in space.units() {
        genomes = genomes
            .into_iter()
            .flat_map(|g| {
                (0..unit.levels.len() as u16).map(move |l| {
                    let mut g = g.clone();
                    g.push(l);
                    g
                })
            })
            .collect();
    }
    genomes
        .into_iter()
        .map(Genome)
        .filter(|g| space.check_genome(g).is_ok())
        .collect()
}

fn brute_force_best(space: &SearchSpace, fitness: impl Fn(&[i32]) -> f64) -> (Genome, f64) {
    let scored = all_genomes(space).into_iter().map(|g| {
        let f = fitness(&space.level_ids(&g));
        (g, f)
    });
    scored.min_by(|a, b| a.1.total_cmp(&b.1)).unwrap()
}

/// Six layers with sparsity level offsets -2..=2 and `Σ level = 0`.
fn small_sparsity_space() -> SearchSpace {
    let units = (0..6)
        .map(|u| {
            let levels = (-2..=2)
                .map(|l| Level::new(l, (100 + 10 * l) as u64))
                .collect();
            (format!("layer.{u}"), levels)
        })
        .collect();
    SearchSpace::zero_sum(units).unwrap()
}

/// A config with the given stages as `(survivors, tokens)` and otherwise default settings.
fn config(generations: usize, offspring: usize, stages: &[(usize, usize)]) -> SearchConfig {
    let survivors: Vec<usize> = stages.iter().map(|s| s.0).collect();
    let tokens: Vec<usize> = stages.iter().map(|s| s.1).collect();
    SearchConfig {
        generations,
        offspring,
        stages: Stage::zip(&survivors, &tokens).unwrap(),
        initial: vec![InitialSource::Random],
        ..SearchConfig::sparsity_defaults()
    }
}

fn small_search_config(generations: usize) -> SearchConfig {
    SearchConfig {
        seed: 7,
        ..config(generations, 16, &[(4, 256), (1, 1024)])
    }
}

// --- mutation -----------------------------------------------------------------------------

#[test]
fn switch_count_follows_min_of_two_uniforms() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let draws = 90_000;
    let mut counts = [0usize; 4];
    for _ in 0..draws {
        counts[switch_count(&mut rng, 3)] += 1;
    }
    for (r, expected) in [(1, 5.0 / 9.0), (2, 3.0 / 9.0), (3, 1.0 / 9.0)] {
        let share = counts[r] as f64 / draws as f64;
        assert!(
            (share - expected).abs() < 0.01,
            "P(r={r}) = {share}, expected {expected}"
        );
    }
    assert_eq!(counts[0], 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn choose_k_mutations_keep_k(n in 2usize..14, k_share in 0.0f64..1.0, mask: u32, seed: u64) {
        let may = |i: usize| mask >> i & 1 == 1 || i.is_multiple_of(3);
        let allowed = (0..n).filter(|&i| may(i)).count();
        let k = ((allowed as f64) * k_share) as usize;
        let space = choose_k_space(n, k, may);
        check_random_walk(&space, seed, 300).unwrap();
        let start = random_start(&space, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
        prop_assert_eq!(space.level_ids(&start).iter().filter(|&&d| d == 1).count(), k);
    }

    #[test]
    fn zero_sum_mutations_keep_level_sum_zero(
        ranges in prop::collection::vec((0i32..5, 0i32..5, any::<bool>()), 2..12), seed: u64,
    ) {
        let units = ranges.iter().enumerate().map(|(u, &(below, above, capped))| {
            let levels = (-below..=above).map(|l| Level {
                legal: !(capped && l == above && l > 0),
                ..Level::new(l, (l + 10) as u64)
            });
            (format!("layer.{u}"), levels.collect())
        });
        let space = SearchSpace::zero_sum(units.collect()).unwrap();
        check_random_walk(&space, seed, 300).unwrap();
    }

    #[test]
    fn cost_ceiling_mutations_stay_under_it(
        sizes in prop::collection::vec(0usize..3, 2..16), target in 2.0f64..6.0, seed: u64,
    ) {
        let numels: Vec<u64> = sizes.iter().map(|&s| 64 << s).collect();
        let space = bit_ceiling_space(&numels, &[2, 3, 4, 5, 6], target);
        check_random_walk(&space, seed, 300).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Gated mutations keep the ceiling and never move a layer of a dropped sub-block.
    #[test]
    fn gated_mutations_stay_under_the_ceiling_and_freeze_dropped_members(
        blocks in 1usize..6, layers in 1usize..4, target in 2.0f64..6.0, seed: u64,
    ) {
        let space = gated_space(blocks, layers, 100, target);
        check_random_walk(&space, seed, 200).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut genome = random_start(&space, &mut rng).unwrap();
        for _ in 0..200 {
            let Some(child) = evopress_search::mutation::mutate(&space, &genome, 3, &Default::default(), &mut rng)
            else {
                continue;
            };
            for u in 0..space.units().len() {
                if space.is_gated_off(&genome, u) && space.is_gated_off(&child, u) {
                    prop_assert_eq!(genome.0[u], child.0[u], "a dropped layer moved");
                }
            }
            genome = child;
        }
    }
}

#[test]
fn gates_zero_the_cost_of_dropped_members_and_are_checked() {
    let space = gated_space(2, 2, 100, 4.0);
    // block.0 dropped, its layers at 6 bits; block.1's layers at 2 and 3 bits.
    let genome = space.genome_from_ids(&[1, 6, 6, 0, 2, 3]).unwrap();
    assert_eq!(space.total_cost(&genome), 500);
    assert!(space.is_gated_off(&genome, 1) && !space.is_gated_off(&genome, 4));
    assert!(space.budget_report(&genome).holds);
    let kept = space.genome_from_ids(&[0, 6, 6, 0, 2, 3]).unwrap();
    assert_eq!(space.total_cost(&kept), 1700);
    assert!(dp_allocate(&space, &vec![vec![0.0; 5]; 6]).is_err());

    let plain = || gated_space(2, 2, 100, 4.0);
    let err = |gates: Vec<Gate>| plain().with_gates(gates).unwrap_err().to_string();
    let e = err(vec![Gate {
        switch: 1,
        members: vec![2],
    }]);
    assert!(e.contains("levels 0 and 1"), "{e}");
    let e = err(vec![
        Gate {
            switch: 0,
            members: vec![1, 2],
        },
        Gate {
            switch: 3,
            members: vec![2],
        },
    ]);
    assert!(e.contains("two gates"), "{e}");
    let exact = choose_k_space(4, 1, |_| true);
    let e = exact
        .with_gates(vec![Gate {
            switch: 0,
            members: vec![1],
        }])
        .unwrap_err()
        .to_string();
    assert!(e.contains("cost ceiling"), "{e}");
}

/// Dropping a block whose layers barely matter frees bits the others need: the search must
/// find the brute-force optimum, which drops exactly that block.
/// On `gated_space(3, 2, ..)`: each block's layers lose `w / 2^bits`, a dropped block costs
/// `1.5 w`; block 2 matters little, so dropping it to widen the others pays.
fn gated_fitness(ids: &[i32]) -> f64 {
    let weight = [1.0, 1.0, 0.05];
    (0..3)
        .map(|b| {
            let w = weight[b];
            if ids[3 * b] == 1 {
                return 1.5 * w;
            }
            (1..3)
                .map(|l| w / (1 << ids[3 * b + l]) as f64)
                .sum::<f64>()
        })
        .sum()
}

#[test]
fn gated_search_finds_the_drop_that_pays_for_wider_layers() {
    let space = gated_space(3, 2, 100, 3.0);
    let fitness = gated_fitness;
    let (best, best_f) = brute_force_best(&space, fitness);
    assert_eq!(space.level_ids(&best)[6], 1, "the optimum drops block 2");
    let config = SearchConfig {
        initially_generated: 4,
        initial_tokens: 256,
        max_mutations: 3,
        ..config(60, 16, &[(4, 256), (1, 512)])
    };
    let mut evaluator = Synthetic::new(&space, fitness);
    let state = run_to_end(&space, &config, &calibration(8, 1024), &mut evaluator);
    let found = fitness(&space.level_ids(state.best()));
    assert!(space.budget_report(state.best()).holds);
    assert!(
        (found - best_f).abs() < 1e-12,
        "{found} vs optimum {best_f}"
    );
}

#[test]
fn move_credit_starts_uniform_and_follows_which_moves_become_parents() {
    use evopress_search::mutation::{offspring, Outcomes};
    use evopress_search::MoveCredit;
    let space = gated_space(4, 3, 100, 4.0);
    let fresh = MoveCredit::default();
    assert_eq!(
        fresh.flip_chance(4, 12),
        0.25,
        "no evidence: every move equally likely"
    );
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let parent = random_start(&space, &mut rng).unwrap();
    let flipped_share = |credit: &MoveCredit, rng: &mut ChaCha8Rng| {
        let kids = offspring(
            &space,
            std::slice::from_ref(&parent),
            64,
            3,
            10_000,
            credit,
            rng,
        );
        let kids = kids.unwrap();
        for k in &kids {
            let switched = (0..space.units().len())
                .any(|u| space.is_switch(u) && k.genome.0[u] != parent.0[u]);
            assert_eq!(
                k.flipped, switched,
                "a child's flip flag says whether a switch moved"
            );
        }
        let flipped = kids.iter().filter(|k| k.flipped).count();
        (flipped as f64 / kids.len() as f64, kids)
    };
    let (uniform_share, kids) = flipped_share(&fresh, &mut rng);
    assert!(
        uniform_share > 0.0 && uniform_share < 1.0,
        "{uniform_share}"
    );
    // A generation of 8 where a level-only child became the parent and every flip lost.
    let mut credit = fresh;
    let generation = &kids[..8];
    let winner = generation
        .iter()
        .find(|k| !k.flipped)
        .unwrap()
        .genome
        .clone();
    credit.record(generation, &[winner]);
    let flips = generation.iter().filter(|k| k.flipped).count() as u64;
    assert_eq!(
        credit.flip,
        Outcomes {
            tried: flips,
            kept: 0
        }
    );
    assert_eq!(
        credit.level,
        Outcomes {
            tried: 8 - flips,
            kept: 1
        }
    );
    let losing_flips = MoveCredit {
        flip: Outcomes { tried: 8, kept: 0 },
        level: Outcomes { tried: 8, kept: 2 },
    };
    assert!(losing_flips.flip_chance(4, 12) < 0.25);
    // Long odds against flips make flipping offspring rarer, but never impossible.
    let against = MoveCredit {
        flip: Outcomes {
            tried: 200,
            kept: 0,
        },
        level: Outcomes {
            tried: 200,
            kept: 40,
        },
    };
    let (rare_share, _) = flipped_share(&against, &mut rng);
    assert!(
        rare_share < uniform_share / 2.0,
        "{rare_share} vs {uniform_share}"
    );
    assert!(against.flip_chance(4, 12) > 0.0);
}

#[test]
fn legal_genome_count_matches_brute_force() {
    let space = small_sparsity_space();
    let count = all_genomes(&space).len() as u128;
    assert_eq!(space.legal_genome_count(), Some(count));
    let restricted = space.restrict(|unit, level| unit.name != "layer.0" || level.id <= 0);
    let restricted = restricted.unwrap();
    let count = all_genomes(&restricted).len() as u128;
    assert_eq!(restricted.legal_genome_count(), Some(count));
}

// --- search -------------------------------------------------------------------------------

/// Convex per-layer errors with a unique optimum under `Σ level = 0`.
fn additive_fitness(ids: &[i32]) -> f64 {
    let slopes = [-1.3, -0.7, -0.2, 0.3, 0.8, 1.1];
    ids.iter()
        .zip(slopes)
        .map(|(&l, a)| a * l as f64 + 0.35 * (l * l) as f64)
        .sum()
}

/// `additive_fitness` plus pairwise interactions that per-layer errors cannot see: each
/// interaction vanishes when either layer is at level 0, where per-layer errors are measured.
fn interacting_fitness(ids: &[i32]) -> f64 {
    let pair = |a: usize, b: usize| (ids[a] * ids[b]) as f64;
    additive_fitness(ids) + 0.9 * pair(0, 1) - 0.8 * pair(2, 5) + 0.5 * pair(3, 4)
}

/// Each layer's error at each level with all other layers at level 0.
fn per_layer_errors(space: &SearchSpace, fitness: impl Fn(&[i32]) -> f64) -> Vec<Vec<f64>> {
    let units = space.units();
    (0..units.len())
        .map(|u| {
            let levels = units[u].levels.iter().map(|level| {
                let mut ids = vec![0; units.len()];
                ids[u] = level.id;
                fitness(&ids)
            });
            levels.collect()
        })
        .collect()
}

#[test]
fn finds_the_optimum_of_an_additive_fitness_as_dp_does() {
    let space = small_sparsity_space();
    let (optimum, _) = brute_force_best(&space, additive_fitness);
    let mut evaluator = Synthetic::new(&space, additive_fitness);
    let state = run_to_end(
        &space,
        &small_search_config(40),
        &calibration(8, 1024),
        &mut evaluator,
    );
    assert_eq!(state.best(), &optimum);
    let errors = per_layer_errors(&space, additive_fitness);
    assert_eq!(dp_allocate(&space, &errors).unwrap(), optimum);
}

#[test]
fn finds_the_optimum_of_an_interacting_fitness_that_dp_misses() {
    let space = small_sparsity_space();
    let (optimum, best) = brute_force_best(&space, interacting_fitness);
    let dp = dp_allocate(&space, &per_layer_errors(&space, interacting_fitness)).unwrap();
    let dp_fitness = interacting_fitness(&space.level_ids(&dp));
    assert!(
        dp_fitness > best + 0.5,
        "DP should be misled: {dp_fitness} vs {best}"
    );
    let mut evaluator = Synthetic::new(&space, interacting_fitness);
    let state = run_to_end(
        &space,
        &small_search_config(60),
        &calibration(8, 1024),
        &mut evaluator,
    );
    assert_eq!(state.best(), &optimum);
}

#[test]
fn dp_meets_a_cost_ceiling_optimally() {
    let numels: Vec<u64> = (0..6).map(|i| [1024, 4096][i % 2]).collect();
    let space = bit_ceiling_space(&numels, &[2, 3, 4], 3.0);
    let fitness = |ids: &[i32]| -> f64 {
        let weight = |i: usize| [3.0, 1.0, 5.0, 2.0, 0.5, 4.0][i] * [1.0, 4.0][i % 2];
        (0..ids.len())
            .map(|i| weight(i) / (1 << ids[i]) as f64)
            .sum()
    };
    let errors: Vec<Vec<f64>> = (0..6)
        .map(|u| {
            let ids = [2, 3, 4].map(|b| {
                let mut ids = vec![0; 6];
                ids[u] = b;
                fitness(&ids) - fitness(&[0; 6])
            });
            ids.to_vec()
        })
        .collect();
    let dp = dp_allocate(&space, &errors).unwrap();
    let (_, best) = brute_force_best(&space, fitness);
    assert!(space.budget_report(&dp).holds);
    assert!((fitness(&space.level_ids(&dp)) - best).abs() < 1e-12);
}

/// Dropping a block costs its weight; dropping neighbours together costs extra.
fn block_drop_fitness(dropped: &[i32]) -> f64 {
    let weight = |i: usize| 1.0 + ((i * 7) % 5) as f64 * 0.3 + (i as f64 - 14.0).abs() * 0.05;
    let single: f64 = (0..dropped.len())
        .map(|i| dropped[i] as f64 * weight(i))
        .sum();
    let neighbours: f64 = dropped.windows(2).map(|w| (w[0] * w[1]) as f64 * 0.6).sum();
    single + neighbours
}

#[test]
fn restricted_whole_block_search_finds_the_brute_force_optimum() {
    let space = choose_k_space(30, 3, |i| (10..20).contains(&i));
    assert_eq!(space.legal_genome_count(), Some(120));
    let mut optimum = (f64::INFINITY, Vec::new());
    for a in 10..20 {
        for b in a + 1..20 {
            for c in b + 1..20 {
                let dropped: Vec<i32> =
                    (0..30).map(|i| i32::from([a, b, c].contains(&i))).collect();
                let fitness = block_drop_fitness(&dropped);
                if fitness < optimum.0 {
                    optimum = (fitness, dropped);
                }
            }
        }
    }
    let config = SearchConfig {
        seed: 11,
        initial: vec![InitialSource::Random],
        ..SearchConfig::depth_defaults(30, 3)
    };
    let mut evaluator = Synthetic::new(&space, block_drop_fitness);
    let state = run_to_end(&space, &config, &calibration(16, 8192), &mut evaluator);
    assert_eq!(space.level_ids(state.best()), optimum.1);
}

#[test]
fn inverted_fitness_finds_the_worst_genome() {
    let space = small_sparsity_space();
    let (worst, _) = brute_force_best(&space, additive_fitness);
    let config = SearchConfig {
        invert_fitness: true,
        ..small_search_config(40)
    };
    let mut evaluator = Synthetic::new(&space, |ids: &[i32]| -additive_fitness(ids));
    let state = run_to_end(&space, &config, &calibration(8, 1024), &mut evaluator);
    assert_eq!(state.best(), &worst);
    let history = &state.history;
    assert!(history
        .windows(2)
        .all(|w| w[0].best_fitness <= w[1].best_fitness + 1e-12));
}

#[test]
fn population_search_keeps_distinct_parents_within_budget() {
    let space = small_sparsity_space();
    let config = SearchConfig {
        population_size: 3,
        ..config(10, 12, &[(6, 256), (3, 512)])
    };
    let mut evaluator = Synthetic::new(&space, interacting_fitness);
    let state = run_to_end(&space, &config, &calibration(8, 1024), &mut evaluator);
    assert_eq!(state.population.len(), 3);
    let distinct: HashSet<&Genome> = state.population.iter().collect();
    assert_eq!(distinct.len(), 3);
    for genome in &state.population {
        space.check_genome(genome).unwrap();
    }
}

#[test]
fn cost_ceiling_search_stays_under_the_bit_budget() {
    let numels: Vec<u64> = (0..12).map(|i| [1000, 3000, 5000][i % 3]).collect();
    let space = bit_ceiling_space(&numels, &[2, 3, 4, 5, 6], 3.5);
    let fitness = |ids: &[i32]| {
        ids.iter()
            .enumerate()
            .map(|(i, &b)| (1.0 + i as f64) / (1 << b) as f64)
            .sum()
    };
    let config = SearchConfig {
        initially_generated: 8,
        initial_tokens: 256,
        ..config(15, 16, &[(4, 256), (1, 512)])
    };
    let mut evaluator = Synthetic::new(&space, fitness);
    let state = run_to_end(&space, &config, &calibration(8, 1024), &mut evaluator);
    let report = space.budget_report(state.best());
    assert!(report.holds, "{report}");
    let first = state.history.first().unwrap().best_fitness;
    assert!(state.history.last().unwrap().best_fitness <= first);
}

#[test]
fn stage_batches_hold_exact_token_counts_of_distinct_samples() {
    let space = choose_k_space(8, 2, |_| true);
    let sample_lens: Vec<usize> = (0..40).map(|i| 100 + (i * 37) % 300).collect();
    let config = SearchConfig {
        initially_generated: 10,
        initial_tokens: 700,
        ..config(5, 8, &[(3, 250), (2, 1000), (1, 3333)])
    };
    let mut evaluator = Synthetic::new(&space, block_drop_fitness);
    run_to_end(&space, &config, &sample_lens, &mut evaluator);
    let expected_tokens = std::iter::once(700).chain([250, 1000, 3333].repeat(5));
    assert_eq!(evaluator.stage_batches.len(), 1 + 3 * 5);
    for (batch, tokens) in evaluator.stage_batches.iter().zip(expected_tokens) {
        assert_eq!(batch.token_count(), tokens);
        let samples: HashSet<usize> = batch.slices.iter().map(|s| s.sample).collect();
        assert_eq!(
            samples.len(),
            batch.slices.len(),
            "samples drawn without replacement"
        );
        let (last, whole) = batch.slices.split_last().unwrap();
        assert!(whole.iter().all(|s| s.tokens == (0..sample_lens[s.sample])));
        assert!(last.tokens.start == 0 && last.tokens.end <= sample_lens[last.sample]);
    }
}

// --- determinism and checkpoints ------------------------------------------------------------

fn noisy_depth_run(seed: u64) -> SearchState {
    let space = choose_k_space(12, 3, |_| true);
    let config = SearchConfig {
        seed,
        generations: 8,
        initial: vec![InitialSource::Random],
        ..SearchConfig::depth_defaults(12, 3)
    };
    let mut evaluator = Synthetic::new(&space, block_drop_fitness);
    evaluator.noise = 0.05;
    run_to_end(&space, &config, &calibration(16, 4096), &mut evaluator)
}

fn history_bits(state: &SearchState) -> Vec<(usize, u64, usize, u64)> {
    let records = state.history.iter();
    records
        .map(|r| {
            (
                r.generation,
                r.best_fitness.to_bits(),
                r.evaluations,
                r.tokens,
            )
        })
        .collect()
}

#[test]
fn same_seed_gives_a_bit_identical_run() {
    let (first, second) = (noisy_depth_run(5), noisy_depth_run(5));
    assert_eq!(history_bits(&first), history_bits(&second));
    assert_eq!(without_seconds(&first), without_seconds(&second));
    assert_ne!(history_bits(&first), history_bits(&noisy_depth_run(6)));
}

/// Stops the run after `stop_after` generations, as a kill would.
struct StopAfter(usize);

impl Observer for StopAfter {
    fn generation_finished(&mut self, event: &GenerationEvent) -> Result<ControlFlow<()>> {
        Ok(if event.record.generation >= self.0 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    }
}

#[test]
fn resumed_run_ends_exactly_like_an_uninterrupted_one() {
    let space = choose_k_space(10, 3, |_| true);
    let config = SearchConfig {
        seed: 9,
        generations: 12,
        initial: vec![InitialSource::Random],
        ..SearchConfig::depth_defaults(10, 3)
    };
    check_resume_equality(&space, &config, block_drop_fitness);
}

/// A gated space's state also holds the move credit (flips against level moves).
#[test]
fn resumed_gated_run_ends_exactly_like_an_uninterrupted_one() {
    let space = gated_space(3, 2, 100, 3.0);
    let config = SearchConfig {
        seed: 3,
        initially_generated: 4,
        initial_tokens: 256,
        initial: vec![InitialSource::Random],
        ..config(12, 8, &[(2, 256), (1, 512)])
    };
    check_resume_equality(&space, &config, gated_fitness);
}

/// Runs `config` with a noisy `fitness` once uninterrupted and once stopped after 5
/// generations, checkpointed and resumed: both end in the same state.
fn check_resume_equality(space: &SearchSpace, config: &SearchConfig, fitness: fn(&[i32]) -> f64) {
    let sample_lens = calibration(12, 4096);
    let evaluator = || {
        let mut e = Synthetic::new(space, fitness);
        e.noise = 0.05;
        e
    };
    let uninterrupted = run_to_end(space, config, &sample_lens, &mut evaluator());

    let path = std::path::Path::new("search.json");
    let search = Search::new(space, config, &sample_lens).unwrap();
    let mut stopped = search
        .initialize(Vec::new(), &mut evaluator(), &mut ())
        .unwrap();
    let stop = search
        .run(&mut stopped, &mut evaluator(), &mut StopAfter(5), 0.0)
        .unwrap();
    assert_eq!((stop, stopped.generation), (Stop::Interrupted, 5));
    let json = String::from_utf8(search.checkpoint_json(&stopped)).unwrap();

    let search = Search::new(space, config, &sample_lens).unwrap();
    let mut resumed = search.resume_json(path, &json).unwrap();
    assert_eq!(without_seconds(&resumed), without_seconds(&stopped));
    search
        .run(&mut resumed, &mut evaluator(), &mut (), 0.0)
        .unwrap();
    assert_eq!(history_bits(&resumed), history_bits(&uninterrupted));
    assert_eq!(without_seconds(&resumed), without_seconds(&uninterrupted));
}

/// The state with its wall-clock seconds zeroed: everything else is deterministic.
fn without_seconds(state: &SearchState) -> SearchState {
    let mut s = state.clone();
    s.history.iter_mut().for_each(|r| r.seconds = 0.0);
    s
}

#[test]
fn resume_refuses_a_checkpoint_of_another_config() {
    let space = small_sparsity_space();
    let config = small_search_config(3);
    let sample_lens = calibration(8, 1024);
    let path = std::path::Path::new("search.json");
    let search = Search::new(&space, &config, &sample_lens).unwrap();
    let mut evaluator = Synthetic::new(&space, additive_fitness);
    let mut state = search
        .initialize(Vec::new(), &mut evaluator, &mut ())
        .unwrap();
    search
        .run(&mut state, &mut evaluator, &mut (), 0.0)
        .unwrap();
    let json = String::from_utf8(search.checkpoint_json(&state)).unwrap();

    let longer = SearchConfig {
        generations: 5,
        ..config.clone()
    };
    let extended = Search::new(&space, &longer, &sample_lens).unwrap();
    assert_eq!(
        extended.resume_json(path, &json).unwrap().generation,
        3,
        "more generations may resume"
    );

    let reseeded = SearchConfig {
        seed: 8,
        ..config.clone()
    };
    let other = Search::new(&space, &reseeded, &sample_lens).unwrap();
    let err = other.resume_json(path, &json).unwrap_err().to_string();
    assert!(err.contains("different search space, config"), "{err}");
    let other_model = Search::new(&space, &config, &sample_lens)
        .unwrap()
        .with_identity("model=other");
    assert!(other_model.resume_json(path, &json).is_err());
}

#[test]
fn config_reads_from_toml_and_rejects_unknown_keys() {
    let text = r#"
        generations = 74
        offspring = 32
        initially_generated = 64
        initial_tokens = 2048
        stages = [{ survivors = 2, tokens = 2048 }, { survivors = 1, tokens = 32768 }]
    "#;
    let config: SearchConfig = toml::from_str(text).unwrap();
    assert_eq!(config, SearchConfig::depth_defaults(32, 4));
    let budget: SearchConfig =
        toml::from_str(&format!("{text}\ntime_budget = \"20m\"\npatience = 5\n")).unwrap();
    assert_eq!(
        (budget.time_budget, budget.patience),
        (Some(1200.0), Some(5))
    );
    let bad = toml::from_str::<SearchConfig>(&format!("{text}\ntime_budget = \"20 parsecs\"\n"));
    assert!(bad.unwrap_err().to_string().contains("unknown unit"));
    let typo = format!("{text}\nofspring = 3\n");
    let err = toml::from_str::<SearchConfig>(&typo)
        .unwrap_err()
        .to_string();
    assert!(err.contains("ofspring"), "{err}");
}

// --- infeasible setups ----------------------------------------------------------------------

fn search_error(space: &SearchSpace, config: &SearchConfig, sample_lens: &[usize]) -> String {
    match Search::new(space, config, sample_lens) {
        Ok(_) => panic!("expected the setup to be refused"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn infeasible_setups_are_refused_up_front() {
    let err = SearchSpace::choose_k(vec![ChooseK {
        name: "blocks".into(),
        units: (0..30).map(|i| (format!("block.{i}"), i < 2)).collect(),
        k: 3,
    }])
    .unwrap_err()
    .to_string();
    assert!(err.contains("k = 3") && err.contains("only 2"), "{err}");

    let space = small_sparsity_space();
    let lens = calibration(8, 1024);
    let no_offspring = SearchConfig {
        offspring: 0,
        ..small_search_config(3)
    };
    assert!(search_error(&space, &no_offspring, &lens).contains("`offspring`"));

    let bad_last = config(3, 8, &[(4, 256), (2, 512)]);
    assert!(search_error(&space, &bad_last, &lens).contains("population_size"));

    let err = Stage::zip(&[2, 1], &[2048]).unwrap_err().to_string();
    assert!(
        err.contains("2 survivor counts but 1 token counts"),
        "{err}"
    );

    let too_many_tokens = config(3, 8, &[(2, 256), (1, 9000)]);
    assert!(search_error(&space, &too_many_tokens, &lens).contains("9000 tokens"));

    let tiny = choose_k_space(30, 1, |i| i < 2);
    let err = search_error(&tiny, &SearchConfig::depth_defaults(30, 1), &lens);
    assert!(
        err.contains("2 legal genomes") && err.contains("offspring=32"),
        "{err}"
    );
}

#[test]
fn too_few_reachable_offspring_is_an_error_not_a_hang() {
    // Two layers at 0..=4 bits summing to 4: five genomes, but from (2, 2) a single switch
    // only reaches (1, 3) and (3, 1).
    let units = (0..2)
        .map(|i| Unit {
            name: format!("layers.{i}.proj"),
            group: 0,
            levels: (0..=4).map(|b| Level::new(b, 64 * b as u64)).collect(),
        })
        .collect();
    let groups = vec![Group {
        name: "all".into(),
        start: GroupStart::uniform(2),
    }];
    let space = SearchSpace::new(units, groups, Budget::ExactGroupSums { step: 1 }).unwrap();
    let config = SearchConfig {
        max_mutations: 1,
        max_offspring_attempts: 500,
        ..config(3, 4, &[(1, 64)])
    };
    let lens = calibration(2, 64);
    let search = Search::new(&space, &config, &lens).unwrap();
    let mut evaluator = Synthetic::new(&space, additive_fitness);
    let mut state = search
        .initialize(Vec::new(), &mut evaluator, &mut ())
        .unwrap();
    let err = search
        .run(&mut state, &mut evaluator, &mut (), 0.0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("only 2 distinct offspring found after 500 attempts"),
        "{err}"
    );
}

// --- seeds, racing, the final tournament, stopping rules ------------------------------------

/// A non-negative, noisy whole-block fitness over 12 blocks, k = 3.
fn racing_setup(space: &SearchSpace) -> Synthetic<'_, fn(&[i32]) -> f64> {
    let mut e: Synthetic<'_, fn(&[i32]) -> f64> = Synthetic::new(space, block_drop_fitness);
    e.noise = 0.3;
    e.nonnegative = true;
    e
}

#[test]
fn racing_keeps_the_same_survivors_for_less_work() {
    let space = choose_k_space(12, 3, |_| true);
    let lens: Vec<usize> = (0..24).map(|i| 200 + (i * 53) % 300).collect();
    let base = SearchConfig {
        seed: 4,
        generations: 10,
        initial: vec![InitialSource::Random],
        ..config(10, 16, &[(3, 1500), (1, 3000)])
    };
    let run = |racing: bool| {
        let config = SearchConfig {
            racing,
            initially_generated: 8,
            initial_tokens: 1000,
            ..base.clone()
        };
        let mut e = racing_setup(&space);
        let state = run_to_end(&space, &config, &lens, &mut e);
        (state, e.slices_scored)
    };
    let (raced, raced_slices) = run(true);
    let (full, full_slices) = run(false);
    let trajectory = |s: &SearchState| {
        let fits: Vec<u64> = s.history.iter().map(|r| r.best_fitness.to_bits()).collect();
        (s.population.clone(), fits)
    };
    assert_eq!(trajectory(&raced), trajectory(&full));
    assert!(
        raced_slices < full_slices,
        "racing scored {raced_slices} slices, full scoring {full_slices}"
    );
    let tokens = |s: &SearchState| s.history.iter().skip(1).map(|r| r.tokens).sum::<u64>();
    assert!(tokens(&raced) < tokens(&full));
}

#[test]
fn seeds_enter_the_first_selection_with_their_fitness_recorded() {
    let space = choose_k_space(12, 3, |_| true);
    let ids =
        |dropped: [usize; 3]| Genome((0..12).map(|i| u16::from(dropped.contains(&i))).collect());
    let seeds = vec![
        Seed {
            name: "ends".into(),
            genome: ids([0, 1, 11]),
        },
        Seed {
            name: "middle".into(),
            genome: ids([4, 5, 6]),
        },
        Seed {
            name: "again".into(),
            genome: ids([0, 1, 11]),
        },
    ];
    let config = SearchConfig {
        generations: 1,
        initially_generated: 4,
        initial_tokens: 512,
        initial: vec![InitialSource::Baselines, InitialSource::Random],
        ..config(1, 4, &[(1, 512)])
    };
    let lens = calibration(4, 512);
    let search = Search::new(&space, &config, &lens).unwrap();
    let mut e = Synthetic::new(&space, block_drop_fitness);
    let state = search.initialize(seeds, &mut e, &mut ()).unwrap();
    let record = &state.history[0];
    assert_eq!(
        record.evaluations,
        2 + 4,
        "two distinct seeds and four random starts"
    );
    let names: Vec<&str> = record.seeds.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["ends=again", "middle"]);
    let best_seed = record
        .seeds
        .iter()
        .map(|s| s.fitness)
        .fold(f64::INFINITY, f64::min);
    assert!(record.best_fitness <= best_seed);
    assert_eq!(state.seeds.len(), 2);

    let only_random = SearchConfig {
        initial: vec![InitialSource::Random],
        ..config.clone()
    };
    let search = Search::new(&space, &only_random, &lens).unwrap();
    let state = search
        .initialize(state.seeds.clone(), &mut e, &mut ())
        .unwrap();
    assert!(state.seeds.is_empty() && state.history[0].seeds.is_empty());

    let bad = vec![Seed {
        name: "four drops".into(),
        genome: ids([0, 1, 11]),
    }]
    .into_iter()
    .map(|mut s| {
        s.genome.0[5] = 1;
        s
    })
    .collect();
    let search = Search::new(&space, &config, &lens).unwrap();
    let err = search
        .initialize(bad, &mut e, &mut ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("seed `four drops`"), "{err}");
}

/// The guarantee of the final tournament: whatever noise did to the generations, the returned
/// genome's fitness on the tournament tokens is at most every seed's on the same tokens.
#[test]
fn the_tournament_winner_is_no_worse_than_any_seed_on_its_tokens() {
    let space = choose_k_space(12, 3, |_| true);
    let lens: Vec<usize> = (0..16).map(|i| 128 + (i * 41) % 200).collect();
    let (best, _) = brute_force_best(&space, block_drop_fitness);
    // The brute-force optimum as a seed, and a noisy, short search that starts elsewhere too.
    let seeds = vec![Seed {
        name: "oracle".into(),
        genome: best.clone(),
    }];
    for seed in 0..6 {
        let config = SearchConfig {
            seed,
            generations: 4,
            initially_generated: 6,
            initial_tokens: 256,
            final_tokens: 1500,
            initial: vec![InitialSource::Baselines, InitialSource::Random],
            ..config(4, 6, &[(1, 256)])
        };
        let search = Search::new(&space, &config, &lens).unwrap();
        let mut e = racing_setup(&space);
        e.noise = 2.0;
        let mut state = search.initialize(seeds.clone(), &mut e, &mut ()).unwrap();
        search.run(&mut state, &mut e, &mut (), 0.0).unwrap();
        let t = search.final_tournament(&state, &mut e, &mut ()).unwrap();
        assert_eq!(t.tokens, 1500);
        let winner = t.best().fitness.unwrap();
        let batch = evopress_search::batch::all_tokens(&lens, 1500);
        e.begin_stage(&batch, &best).unwrap();
        for s in &state.seeds {
            let f = evopress_search::fitness(&mut e, &s.genome, &batch).unwrap();
            assert!(winner <= f, "seed {}: winner {winner} > seed {f}", s.name);
        }
        assert!(t.entrants.iter().any(|x| x.name == "search"));
    }
}

#[test]
fn patience_and_time_budget_stop_a_run_early() {
    let space = small_sparsity_space();
    let lens = calibration(8, 1024);
    let patient = SearchConfig {
        patience: Some(3),
        ..small_search_config(200)
    };
    let search = Search::new(&space, &patient, &lens).unwrap();
    let mut e = Synthetic::new(&space, additive_fitness);
    let mut state = search.initialize(Vec::new(), &mut e, &mut ()).unwrap();
    assert_eq!(
        search.run(&mut state, &mut e, &mut (), 0.0).unwrap(),
        Stop::Converged
    );
    assert!(state.generation < 200 && state.unchanged == 3);

    let timed = SearchConfig {
        time_budget: Some(1e-9),
        ..small_search_config(200)
    };
    let search = Search::new(&space, &timed, &lens).unwrap();
    let mut state = search.initialize(Vec::new(), &mut e, &mut ()).unwrap();
    search.step(&mut state, &mut e, &mut ()).unwrap();
    state.history.last_mut().unwrap().seconds = 1.0;
    assert_eq!(
        search.run(&mut state, &mut e, &mut (), 0.0).unwrap(),
        Stop::TimeBudget
    );
    assert_eq!(state.generation, 1);
}
