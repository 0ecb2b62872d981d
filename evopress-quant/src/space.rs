//! The bit-width search space (docs/level-schemes.md): one bit width per linear layer, the
//! budget in parameter-weighted bits.

use evopress_core::{Error, Result};
use evopress_search::{Budget, Group, GroupStart, Level, SearchSpace, Unit};
use serde::{Deserialize, Serialize};

/// How layers are grouped for bit trades (`--group_rule`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupRule {
    /// Layers of equal size trade bits, so every trade keeps the bit total exact.
    #[default]
    Size,
    /// Layers with the same last name component (`q_proj`) trade bits; they must be equal-sized.
    Name,
    /// Any layer trades with any: the bit total is only kept under the target (docs/search.md).
    None,
}

/// A quantizable layer as the database knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantUnit {
    pub name: String,
    pub numel: u64,
    /// The bit widths the database holds for this layer.
    pub bits: Vec<i32>,
}

/// The space of bit widths averaging `target_bits` per weight. Each group starts exactly on
/// target where its bit widths allow (branch `fused_proj_search`'s rule: a target between
/// widths lo < t < hi puts `ceil(|g|·(hi−t)/(hi−lo))` random units at lo, the rest at hi);
/// with [`GroupRule::None`] all start at the lowest width ≥ target and are lowered at random.
pub fn quantization_space(
    mut units: Vec<QuantUnit>,
    target_bits: f64,
    rule: GroupRule,
    step: i32,
) -> Result<SearchSpace> {
    let invalid = |msg: String| Err(Error::Invalid(format!("quantization space: {msg}")));
    if !target_bits.is_finite() || target_bits <= 0.0 {
        return invalid(format!(
            "target {target_bits} bits is not a positive number"
        ));
    }
    for unit in &mut units {
        unit.bits.sort_unstable();
        unit.bits.dedup();
        if unit.bits.first().is_some_and(|&b| b < 0) {
            return invalid(format!("layer `{}` has a negative bit width", unit.name));
        }
    }
    let (names, group_of) = assign_groups(&units, rule)?;
    let group_of = &group_of;
    let members = |g: usize| (0..units.len()).filter(move |&u| group_of[u] == g);
    let groups = names
        .into_iter()
        .enumerate()
        .map(|(g, name)| {
            let widths = common_widths(members(g).map(|u| &units[u].bits));
            let start = match rule {
                GroupRule::None => lowest_at_least(&widths, target_bits),
                GroupRule::Size | GroupRule::Name => {
                    exact_start(&widths, target_bits, members(g).count())
                }
            };
            let start = start.ok_or_else(|| {
                Error::Invalid(format!(
                    "quantization space: target {target_bits} bits is outside the bit \
                         widths {widths:?} that every layer of group `{name}` has"
                ))
            })?;
            Ok(Group { name, start })
        })
        .collect::<Result<Vec<Group>>>()?;
    let budget = match rule {
        GroupRule::None => Budget::CostCeiling {
            max_cost: units
                .iter()
                .map(|u| (u.numel as f64 * target_bits).floor() as u64)
                .sum(),
            step,
        },
        GroupRule::Size | GroupRule::Name => Budget::ExactGroupSums { step },
    };
    let units = units
        .into_iter()
        .zip(group_of.iter().copied())
        .map(|(unit, group)| Unit {
            levels: (unit.bits.iter())
                .map(|&b| Level::new(b, unit.numel * b as u64))
                .collect(),
            name: unit.name,
            group,
        })
        .collect();
    Ok(SearchSpace::new(units, groups, budget)?)
}

/// Group names in order of first appearance, and each unit's group index.
fn assign_groups(units: &[QuantUnit], rule: GroupRule) -> Result<(Vec<String>, Vec<usize>)> {
    let mut names: Vec<String> = Vec::new();
    let mut first_numel: Vec<u64> = Vec::new();
    let mut group_of = Vec::with_capacity(units.len());
    for unit in units {
        let key = match rule {
            GroupRule::Size => format!("numel={}", unit.numel),
            GroupRule::Name => unit.name.rsplit('.').next().unwrap_or("").to_string(),
            GroupRule::None => "all".to_string(),
        };
        let g = names.iter().position(|n| *n == key).unwrap_or_else(|| {
            names.push(key);
            first_numel.push(unit.numel);
            names.len() - 1
        });
        if rule == GroupRule::Name && first_numel[g] != unit.numel {
            return Err(Error::Invalid(format!(
                "quantization space: group `{}` mixes layer sizes ({} and {} weights in `{}`), \
                 so bit trades inside it would not keep the budget; use group_rule = \"size\"",
                names[g], first_numel[g], unit.numel, unit.name
            )));
        }
        group_of.push(g);
    }
    Ok((names, group_of))
}

/// The bit widths every unit of a group has.
fn common_widths<'a>(mut bits: impl Iterator<Item = &'a Vec<i32>>) -> Vec<i32> {
    let mut widths = bits.next().cloned().unwrap_or_default();
    for unit_bits in bits {
        widths.retain(|b| unit_bits.contains(b));
    }
    widths
}

fn lowest_at_least(widths: &[i32], target: f64) -> Option<GroupStart> {
    let base = *widths.iter().find(|&&b| b as f64 >= target)?;
    Some(GroupStart::uniform(base))
}

/// The start whose level sum is the largest not above `size · target`.
fn exact_start(widths: &[i32], target: f64, size: usize) -> Option<GroupStart> {
    if widths.iter().any(|&b| b as f64 == target) {
        return Some(GroupStart::uniform(target as i32));
    }
    let lo = *widths.iter().rev().find(|&&b| (b as f64) < target)?;
    let hi = *widths.iter().find(|&&b| b as f64 > target)?;
    let share_low = size as f64 * (hi as f64 - target) / (hi - lo) as f64;
    // The tolerance keeps a product like 128 · 0.75 that lands a hair above 96 from rounding up.
    let moved = (share_low - 1e-9).ceil() as usize;
    Some(GroupStart {
        base: hi,
        moved,
        moved_to: lo,
    })
}
