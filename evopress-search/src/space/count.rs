//! Counting the legal genomes of a space, so that a search asking for more distinct offspring
//! than exist fails up front instead of spinning.

use super::SearchSpace;

/// The number of legal genomes meeting every group's level sum, saturating at `u128::MAX`.
/// It counts every legal level, so it bounds from above what `step`-sized switches can reach.
pub(super) fn legal_genomes(space: &SearchSpace) -> u128 {
    let per_group = (0..space.groups.len()).map(|g| group_count(space, g));
    per_group.fold(1u128, u128::saturating_mul)
}

/// Ways to give group `g`'s units legal levels whose ids sum to the group's target, by
/// multiplying out one polynomial per unit (exponent = level id above the unit's lowest).
fn group_count(space: &SearchSpace, g: usize) -> u128 {
    let mut ways = vec![1u128];
    let mut offset = 0i64;
    for &u in space.members(g) {
        let ids: Vec<i64> = space.units[u]
            .levels
            .iter()
            .filter(|l| l.legal)
            .map(|l| l.id as i64)
            .collect();
        let (Some(&low), Some(&high)) = (ids.first(), ids.last()) else {
            return 0;
        };
        offset += low;
        let mut next = vec![0u128; ways.len() + (high - low) as usize];
        for (sum, &count) in ways.iter().enumerate().filter(|(_, &c)| c > 0) {
            for id in &ids {
                let slot = &mut next[sum + (id - low) as usize];
                *slot = slot.saturating_add(count);
            }
        }
        ways = next;
    }
    let target = space.target_level_sum(g) - offset;
    usize::try_from(target)
        .ok()
        .and_then(|t| ways.get(t).copied())
        .unwrap_or(0)
}
