//! The DP baseline (SPDY-style, docs/baselines.md): take each unit's error at each level as given
//! and additive, and pick one level per unit minimising their sum under the budget. It is exactly
//! the "error monotonicity" assumption EvoPress refutes, kept as the baseline to beat.

use super::space::{Budget, Genome, SearchSpace};
use crate::error::{Error, Result};

/// DP tables larger than this many cells are refused rather than allocated.
const MAX_TABLE_CELLS: u128 = 1 << 30;

/// One level of one unit in the knapsack: its level index, budget weight and error.
#[derive(Clone, Copy)]
struct Choice {
    level: u16,
    weight: u64,
    error: f64,
}

/// The genome minimising `Σ errors[unit][level]` among legal genomes meeting the budget:
/// every group's exact level sum, or the cost ceiling. `errors[u][l]` is unit `u`'s error at
/// level index `l` (e.g. its NMSE); errors of illegal levels are ignored. Ties go to the lower
/// level index of the earlier unit.
pub fn dp_allocate(space: &SearchSpace, errors: &[Vec<f64>]) -> Result<Genome> {
    let units = space.units();
    if errors.len() != units.len() {
        return Err(Error::Invalid(format!(
            "DP: errors for {} units, the search space has {}",
            errors.len(),
            units.len()
        )));
    }
    for (unit, unit_errors) in units.iter().zip(errors) {
        if unit_errors.len() != unit.levels.len() || unit_errors.iter().any(|e| e.is_nan()) {
            return Err(Error::Invalid(format!(
                "DP: unit `{}` needs {} errors (one per level, no NaN), got {:?}",
                unit.name,
                unit.levels.len(),
                unit_errors
            )));
        }
    }
    let mut genome = space.base_genome();
    match *space.budget() {
        Budget::ExactGroupSums { .. } => {
            for (g, group) in space.groups().iter().enumerate() {
                let members = space.members(g);
                let lowest = |u: usize| {
                    let legal = units[u].levels.iter().filter(|l| l.legal);
                    legal
                        .map(|l| l.id as i64)
                        .min()
                        .expect("a legal base level")
                };
                let options: Vec<Vec<Choice>> = (members.iter())
                    .map(|&u| choices(space, errors, u, |id, _| (id as i64 - lowest(u)) as u64))
                    .collect();
                let floor: i64 = members.iter().map(|&u| lowest(u)).sum();
                let budget = u64::try_from(space.target_level_sum(g) - floor).ok();
                let picks = match budget {
                    Some(budget) => knapsack(&options, budget, false)?,
                    None => None,
                };
                let picks = picks.ok_or_else(|| {
                    Error::Invalid(format!(
                        "DP: no legal levels of group `{}` sum to its target",
                        group.name
                    ))
                })?;
                for (&u, level) in members.iter().zip(picks) {
                    genome.0[u] = level;
                }
            }
        }
        Budget::CostCeiling { .. } if !space.gates().is_empty() => {
            return Err(Error::Invalid(
                "DP: a space with gates is not a sum of independent unit costs".into(),
            ))
        }
        Budget::CostCeiling { max_cost, .. } => {
            let unit_cost = units
                .iter()
                .flat_map(|u| u.levels.iter().filter(|l| l.legal).map(|l| l.cost))
                .fold(0, gcd)
                .max(1);
            let options: Vec<Vec<Choice>> = (0..units.len())
                .map(|u| choices(space, errors, u, |_, cost| cost / unit_cost))
                .collect();
            let picks = knapsack(&options, max_cost / unit_cost, true)?.ok_or_else(|| {
                Error::Invalid("DP: no legal genome fits under the cost ceiling".into())
            })?;
            genome.0 = picks;
        }
    }
    Ok(genome)
}

/// Unit `u`'s legal levels as knapsack options, weighed by `weight(id, cost)`.
fn choices(
    space: &SearchSpace,
    errors: &[Vec<f64>],
    u: usize,
    weight: impl Fn(i32, u64) -> u64,
) -> Vec<Choice> {
    let levels = space.units()[u].levels.iter().enumerate();
    levels
        .filter(|(_, l)| l.legal)
        .map(|(index, l)| Choice {
            level: index as u16,
            weight: weight(l.id, l.cost),
            error: errors[u][index],
        })
        .collect()
}

/// One option per unit with weights summing to exactly `budget` (at most, if `at_most`) and
/// the least error; the chosen level per unit, or `None` if no choice meets the budget.
fn knapsack(options: &[Vec<Choice>], budget: u64, at_most: bool) -> Result<Option<Vec<u16>>> {
    let width = budget as usize + 1;
    if options.len() as u128 * width as u128 > MAX_TABLE_CELLS {
        return Err(Error::Invalid(format!(
            "DP: a table of {} units by {width} budget values is too large",
            options.len()
        )));
    }
    // best[c]: least error of the units so far with weights summing to c.
    let mut best = vec![f64::INFINITY; width];
    best[0] = 0.0;
    let mut choice = vec![vec![u16::MAX; width]; options.len()];
    for (unit, unit_options) in options.iter().enumerate() {
        let mut next = vec![f64::INFINITY; width];
        for (c, &so_far) in best.iter().enumerate().filter(|(_, e)| e.is_finite()) {
            for (k, option) in unit_options.iter().enumerate() {
                let Some(to) = c.checked_add(option.weight as usize).filter(|&t| t < width) else {
                    continue;
                };
                let error = so_far + option.error;
                if error < next[to] {
                    next[to] = error;
                    choice[unit][to] = k as u16;
                }
            }
        }
        best = next;
    }
    let candidates = if at_most {
        0..width
    } else {
        budget as usize..width
    };
    let Some(mut c) = candidates
        .filter(|&c| best[c].is_finite())
        .min_by(|&a, &b| best[a].total_cmp(&best[b]))
    else {
        return Ok(None);
    };
    let mut picks = vec![0; options.len()];
    for unit in (0..options.len()).rev() {
        let option = options[unit][choice[unit][c] as usize];
        picks[unit] = option.level;
        c -= option.weight as usize;
    }
    Ok(Some(picks))
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}
