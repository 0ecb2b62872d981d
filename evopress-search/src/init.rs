//! Random starting genomes (docs/search.md). The search scores `initially_generated` distinct ones
//! on `initial_tokens` tokens and keeps the best; a space with a single possible start (uniform
//! sparsity or an integer quantization target) starts there without any scoring.

use super::space::{Budget, Genome, SearchSpace};
use crate::error::{Error, Result};
use rand::seq::{index, IteratorRandom};
use rand::Rng;
use std::collections::HashSet;

/// How many distinct genomes [`random_start`] can return (saturating), or `None` where that is
/// not cheap to count (random lowering under a cost ceiling).
pub fn start_count(space: &SearchSpace) -> Option<u128> {
    match space.budget() {
        Budget::ExactGroupSums { .. } => {
            let per_group = (0..space.groups().len())
                .map(|g| binomial(space.movable_at_start(g), space.groups()[g].start.moved));
            Some(per_group.fold(1, u128::saturating_mul))
        }
        Budget::CostCeiling { max_cost, .. } => {
            (space.total_cost(&space.base_genome()) <= *max_cost).then_some(1)
        }
    }
}

/// One random start: every unit at its group's base level, then either exactly `moved` random
/// legal units per group at `moved_to`, or (under a cost ceiling) random units lowered a step
/// at a time until the total fits, as `main`'s non-integer quantization start does.
pub fn random_start(space: &SearchSpace, rng: &mut impl Rng) -> Result<Genome> {
    let mut genome = space.base_genome();
    let units = space.units();
    match *space.budget() {
        Budget::ExactGroupSums { .. } => {
            for (g, group) in space.groups().iter().enumerate() {
                let to = group.start.moved_to;
                let movable: Vec<(usize, u16)> = (space.members(g).iter())
                    .filter_map(|&u| {
                        let level = units[u].level_index(to)?;
                        units[u].levels[level].legal.then_some((u, level as u16))
                    })
                    .collect();
                for pick in index::sample(rng, movable.len(), group.start.moved) {
                    let (unit, level) = movable[pick];
                    genome.0[unit] = level;
                }
            }
        }
        Budget::CostCeiling { max_cost, step } => {
            while space.total_cost(&genome) > max_cost {
                let active = |u: &usize| !space.is_switch(*u) && !space.is_gated_off(&genome, *u);
                let lowerable = (0..units.len())
                    .filter(active)
                    .filter_map(|u| Some((u, units[u].legal_neighbour(genome.0[u], -step)?)));
                let Some((unit, level)) = lowerable.choose(rng) else {
                    return Err(Error::Invalid(format!(
                        "no genome reachable by lowering units {step} level(s) at a time from \
                         the start fits under the cost ceiling {max_cost}"
                    )));
                };
                genome.0[unit] = level;
            }
        }
    }
    Ok(genome)
}

/// `count` distinct random starts; errors after `max_attempts` draws.
pub fn distinct_random_starts(
    space: &SearchSpace,
    count: usize,
    max_attempts: usize,
    rng: &mut impl Rng,
) -> Result<Vec<Genome>> {
    let mut seen = HashSet::new();
    let mut starts = Vec::with_capacity(count);
    for _ in 0..max_attempts {
        let start = random_start(space, rng)?;
        if seen.insert(start.clone()) {
            starts.push(start);
            if starts.len() == count {
                return Ok(starts);
            }
        }
    }
    Err(Error::Invalid(format!(
        "only {} distinct initial genomes found after {max_attempts} draws: the search space \
         ({}) is too small for initially_generated={count}",
        starts.len(),
        space.describe()
    )))
}

/// n choose k, saturating at `u128::MAX`.
fn binomial(n: usize, k: usize) -> u128 {
    if k > n {
        return 0;
    }
    let k = k.min(n - k) as u128;
    let n = n as u128;
    (0..k)
        .try_fold(1u128, |c, i| Some(c.checked_mul(n - i)? / (i + 1)))
        .unwrap_or(u128::MAX)
}

#[cfg(test)]
mod tests {
    use super::binomial;

    #[test]
    fn binomial_counts_and_saturates() {
        assert_eq!(binomial(10, 3), 120);
        assert_eq!(binomial(3, 5), 0);
        assert_eq!(binomial(128, 96), binomial(128, 32));
        assert_eq!(binomial(100_000, 50_000), u128::MAX);
    }
}
