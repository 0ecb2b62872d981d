//! Level-switch mutation (docs/search.md) and the loop that collects distinct offspring.

use super::space::{Budget, Genome, SearchSpace, ON};
use crate::error::{Error, Result};
use rand::seq::{IteratorRandom, SliceRandom};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// Under [`Budget::CostCeiling`], a mutation changing more units than this is rejected.
const MAX_CEILING_CHANGES: usize = 10;
/// Under [`Budget::CostCeiling`], a mutation that removes more than 1/0.8 times the cost it
/// added is rejected, so offspring do not drift far under the budget.
const MIN_ADDED_PER_REMOVED: f64 = 0.8;
/// In a space with gates, a mutation changing more units than this is rejected; refilling the
/// bytes a dropped sub-block frees stops here.
const MAX_GATED_CHANGES: usize = 16;

/// The number of switches in one mutation: `min(U{1..M}, U{1..M})`, which favours small steps
/// (for M = 3: P(1) = 5/9, P(2) = 3/9, P(3) = 1/9).
pub fn switch_count(rng: &mut impl Rng, max_mutations: usize) -> usize {
    let draw = rng.gen_range(1..=max_mutations);
    draw.min(rng.gen_range(1..=max_mutations))
}

/// How often offspring of each move type became parents, for choosing between the moves of
/// a gated space (docs/search.md, "Adaptive move choice"): a switch flip (drop or restore a
/// sub-block) or a level move. Flips that never survive (at a budget where dropping costs more
/// than it frees) then stop wasting evaluations; flips that do survive are made more often.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveCredit {
    /// Offspring with at least one flip: how many were scored, how many became parents.
    pub flip: Outcomes,
    /// Offspring with level moves only.
    pub level: Outcomes,
}

/// Offspring of one move type: scored and kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcomes {
    pub tried: u64,
    pub kept: u64,
}

impl Outcomes {
    /// Laplace's rule of succession: the estimated chance that the next one is kept, 1/2
    /// before any evidence.
    fn rate(self) -> f64 {
        (self.kept as f64 + 1.0) / (self.tried as f64 + 2.0)
    }
}

impl MoveCredit {
    /// The chance that a move is a flip when `flips` flips and `levels` level moves are
    /// possible: each possible move weighted by its type's estimated survival rate, so with
    /// no evidence every possible move is equally likely (the uniform choice).
    pub fn flip_chance(&self, flips: usize, levels: usize) -> f64 {
        let f = flips as f64 * self.flip.rate();
        let l = levels as f64 * self.level.rate();
        f / (f + l)
    }

    /// Records one generation: `children` with whether each made a flip, and the new parents.
    pub fn record(&mut self, children: &[Child], parents: &[Genome]) {
        for child in children {
            let outcomes = if child.flipped {
                &mut self.flip
            } else {
                &mut self.level
            };
            outcomes.tried += 1;
            outcomes.kept += parents.contains(&child.genome) as u64;
        }
    }
}

/// An offspring and whether its mutation flipped a switch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Child {
    pub genome: Genome,
    pub flipped: bool,
}

/// A mutated copy of `parent`, or `None` where a [`Budget::CostCeiling`] mutation is rejected.
/// Switches only move units to legal levels, so every returned genome is legal and in budget.
/// `credit` weighs flips against level moves in a gated space.
pub fn mutate(
    space: &SearchSpace,
    parent: &Genome,
    max_mutations: usize,
    credit: &MoveCredit,
    rng: &mut impl Rng,
) -> Option<Genome> {
    let mut child = parent.clone();
    let switches = switch_count(rng, max_mutations);
    match *space.budget() {
        Budget::ExactGroupSums { step } => {
            for _ in 0..switches {
                level_switch(space, &mut child, step, rng);
            }
            Some(child)
        }
        Budget::CostCeiling { max_cost, step } if !space.gates().is_empty() => {
            gated_move_then_fit(space, &mut child, switches, max_cost, step, credit, rng)
                .then_some(child)
        }
        Budget::CostCeiling { max_cost, step } => {
            raise_then_fit(space, &mut child, switches, max_cost, step, rng).then_some(child)
        }
    }
}

/// One switch: in a group chosen in proportion to its size, lower a random unit by `step` and
/// raise a random unit by `step`, both drawn among the units that can legally move that way
/// in `genome` as it was. Drawing the same unit twice (or a group with no possible move) makes
/// the switch a no-op, as in the original.
fn level_switch(space: &SearchSpace, genome: &mut Genome, step: i32, rng: &mut impl Rng) {
    let units = space.units();
    let group = units[rng.gen_range(0..units.len())].group;
    let members = space.members(group);
    let can_move = |u: usize, delta: i32| units[u].legal_neighbour(genome.0[u], delta);
    let lowered = members.iter().filter(|&&u| can_move(u, -step).is_some());
    let Some(&lowered) = lowered.choose(rng) else {
        return;
    };
    let raised = members.iter().filter(|&&u| can_move(u, step).is_some());
    let Some(&raised) = raised.choose(rng) else {
        return;
    };
    if lowered != raised {
        let down = can_move(lowered, -step).expect("drawn among lowerable units");
        let up = can_move(raised, step).expect("drawn among raisable units");
        genome.0[lowered] = down;
        genome.0[raised] = up;
    }
}

/// The `group_rule = none` mutation: raise `raises` random units by `step`, then lower random
/// units until the total cost fits under `max_cost` again. False when the result is rejected.
fn raise_then_fit(
    space: &SearchSpace,
    genome: &mut Genome,
    raises: usize,
    max_cost: u64,
    step: i32,
    rng: &mut impl Rng,
) -> bool {
    let units = space.units();
    let mut total = space.total_cost(genome);
    let (mut added, mut removed, mut changes) = (0u64, 0u64, 0usize);
    let mut move_unit = |genome: &mut Genome, delta: i32, rng: &mut _| {
        let movable =
            (0..units.len()).filter(|&u| units[u].legal_neighbour(genome.0[u], delta).is_some());
        let unit = movable.choose(rng)?;
        let before = space.level(genome, unit).cost;
        genome.0[unit] = units[unit].legal_neighbour(genome.0[unit], delta)?;
        let after = space.level(genome, unit).cost;
        changes += 1;
        Some((before, after))
    };
    for _ in 0..raises {
        let Some((before, after)) = move_unit(genome, step, rng) else {
            return false;
        };
        total = total - before + after;
        added += after.abs_diff(before);
    }
    while total > max_cost {
        let Some((before, after)) = move_unit(genome, -step, rng) else {
            return false;
        };
        total = total - before + after;
        removed += after.abs_diff(before);
    }
    changes <= MAX_CEILING_CHANGES && added as f64 >= MIN_ADDED_PER_REMOVED * removed.max(1) as f64
}

/// The mutation of a space with gates (docs/search.md): `moves` times, either a flip (a switch
/// drops or restores its members), with the chance `credit` gives, or a level move (a unit that
/// is not gated off rises by `step`), on a random unit that can make it; then random active
/// units are lowered by `step` until the total cost fits under `max_cost`; after a drop, random
/// active units are raised while the next raise still fits, spending the freed cost. False when
/// the result is rejected: too many changes, or (without a drop) more cost removed than 1/0.8
/// times what was added, as in [`raise_then_fit`].
fn gated_move_then_fit(
    space: &SearchSpace,
    genome: &mut Genome,
    moves: usize,
    max_cost: u64,
    step: i32,
    credit: &MoveCredit,
    rng: &mut impl Rng,
) -> bool {
    let units = space.units();
    let active = |g: &Genome, u: usize| !space.is_gated_off(g, u);
    let level_move = |g: &Genome, u: usize, delta: i32| {
        (!space.is_switch(u) && active(g, u))
            .then(|| units[u].legal_neighbour(g.0[u], delta))
            .flatten()
    };
    // A switch flips at most once per mutation: dropping, moving a member and restoring would
    // change the genome but not the model.
    let mut flipped = Vec::new();
    let flip = |g: &Genome, u: usize, flipped: &[usize]| {
        let other = 1 - g.0[u];
        let ok =
            space.is_switch(u) && !flipped.contains(&u) && units[u].levels[other as usize].legal;
        ok.then_some(other)
    };
    let mut t = Tally {
        total: space.total_cost(genome),
        ..Tally::default()
    };
    let mut dropped = false;
    for _ in 0..moves {
        let flips: Vec<(usize, u16)> = (0..units.len())
            .filter_map(|u| Some((u, flip(genome, u, &flipped)?)))
            .collect();
        let raises: Vec<(usize, u16)> = (0..units.len())
            .filter_map(|u| Some((u, level_move(genome, u, step)?)))
            .collect();
        let pick_flip = match (flips.is_empty(), raises.is_empty()) {
            (true, true) => return false,
            (false, true) => true,
            (true, false) => false,
            (false, false) => rng.gen_bool(credit.flip_chance(flips.len(), raises.len())),
        };
        let pool = if pick_flip { &flips } else { &raises };
        let &(u, level) = pool.choose(rng).expect("the chosen pool is not empty");
        if space.is_switch(u) {
            flipped.push(u);
            dropped |= units[u].levels[level as usize].id == ON;
        }
        t.apply(space, genome, u, level);
    }
    while t.total > max_cost {
        let lowerable = (0..units.len()).filter_map(|u| Some((u, level_move(genome, u, -step)?)));
        let Some((u, level)) = lowerable.choose(rng) else {
            return false;
        };
        t.apply(space, genome, u, level);
    }
    if dropped {
        while t.changes < MAX_GATED_CHANGES {
            let raisable = (0..units.len()).filter_map(|u| Some((u, level_move(genome, u, step)?)));
            let Some((u, level)) = raisable.choose(rng) else {
                break;
            };
            // `u` is active, so the total holds its current level's cost.
            let old = space.level(genome, u).cost;
            if t.total - old + units[u].levels[level as usize].cost > max_cost {
                break;
            }
            t.apply(space, genome, u, level);
        }
    }
    t.changes <= MAX_GATED_CHANGES
        && (dropped || t.added as f64 >= MIN_ADDED_PER_REMOVED * t.removed.max(1) as f64)
}

/// The running cost of a gated mutation: every change re-sums the total (a switch moves the
/// cost of all its members at once).
#[derive(Default)]
struct Tally {
    total: u64,
    added: u64,
    removed: u64,
    changes: usize,
}

impl Tally {
    fn apply(&mut self, space: &SearchSpace, genome: &mut Genome, u: usize, level: u16) {
        genome.0[u] = level;
        let now = space.total_cost(genome);
        self.added += now.saturating_sub(self.total);
        self.removed += self.total.saturating_sub(now);
        self.total = now;
        self.changes += 1;
    }
}

/// `count` distinct legal offspring, none equal to a parent, each mutated from a parent drawn
/// uniformly. Errors after `max_attempts` mutations rather than spin on a space too small.
pub fn offspring(
    space: &SearchSpace,
    parents: &[Genome],
    count: usize,
    max_mutations: usize,
    max_attempts: usize,
    credit: &MoveCredit,
    rng: &mut impl Rng,
) -> Result<Vec<Child>> {
    let mut seen: HashSet<Genome> = parents.iter().cloned().collect();
    let mut children = Vec::with_capacity(count);
    let mut attempts = 0;
    while children.len() < count {
        if attempts == max_attempts {
            return Err(Error::Invalid(format!(
                "only {} distinct offspring found after {attempts} attempts: the search space \
                 ({}) is too small for offspring={count} (raise max_mutations or \
                 max_offspring_attempts, or lower offspring)",
                children.len(),
                space.describe()
            )));
        }
        attempts += 1;
        let parent = parents.choose(rng).expect("at least one parent");
        let Some(child) = mutate(space, parent, max_mutations, credit, rng) else {
            continue;
        };
        debug_assert!(space.is_legal(&child) && space.budget_report(&child).holds);
        if seen.insert(child.clone()) {
            let flipped =
                (0..child.0.len()).any(|u| space.is_switch(u) && child.0[u] != parent.0[u]);
            children.push(Child {
                genome: child,
                flipped,
            });
        }
    }
    Ok(children)
}

/// Walks `steps` random mutations from a random start and checks that every genome on the way
/// is legal and within budget: the property every method's space must have, which a method
/// crate can test its spaces with.
pub fn check_random_walk(space: &SearchSpace, seed: u64, steps: usize) -> Result<()> {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut genome = super::init::random_start(space, &mut rng)?;
    space.check_genome(&genome)?;
    for step in 0..steps {
        if let Some(child) = mutate(space, &genome, 3, &MoveCredit::default(), &mut rng) {
            let report = space.budget_report(&child);
            if !report.holds || !report.illegal_units.is_empty() {
                return Err(Error::Invalid(format!(
                    "mutation {step} left the budget or legality: {report}"
                )));
            }
            genome = child;
        }
    }
    Ok(())
}
