//! The two shapes most methods' spaces take, so that a method crate only says which units it
//! has: "choose exactly k per group" (units on or off, e.g. dropped sub-blocks) and "levels
//! whose ids sum to zero" (equal-sized level steps traded freely, e.g. sparsity levels).

use super::{Budget, Group, GroupStart, Level, SearchSpace, Unit};
use crate::error::{Error, Result};

/// Level id of a unit that is off (kept) and on (dropped, chosen) in a k-of-n group.
pub const OFF: i32 = 0;
pub const ON: i32 = 1;

/// One group of a k-of-n space: exactly `k` of its units are on; `units` are (name, may be on).
pub struct ChooseK {
    pub name: String,
    pub units: Vec<(String, bool)>,
    pub k: usize,
}

impl SearchSpace {
    /// Units that are on or off, exactly `k` on per group, only where allowed.
    pub fn choose_k(groups: Vec<ChooseK>) -> Result<SearchSpace> {
        let mut units = Vec::new();
        let mut out_groups = Vec::new();
        for (g, group) in groups.into_iter().enumerate() {
            let allowed = group.units.iter().filter(|(_, may)| *may).count();
            if group.k > allowed {
                return Err(Error::Invalid(format!(
                    "{}: k = {} must be chosen but only {allowed} of {} may be",
                    group.name,
                    group.k,
                    group.units.len()
                )));
            }
            units.extend(group.units.into_iter().map(|(name, may)| Unit {
                name,
                group: g,
                levels: vec![
                    Level::new(OFF, 0),
                    Level {
                        legal: may,
                        ..Level::new(ON, 1)
                    },
                ],
            }));
            out_groups.push(Group {
                name: group.name,
                start: GroupStart {
                    base: OFF,
                    moved: group.k,
                    moved_to: ON,
                },
            });
        }
        SearchSpace::new(units, out_groups, Budget::ExactGroupSums { step: 1 })
    }

    /// One group of `(name, levels)` units starting at level id 0 everywhere and held to
    /// `Σ level id = 0`: any unit trades a step with any other.
    pub fn zero_sum(units: Vec<(String, Vec<Level>)>) -> Result<SearchSpace> {
        let units = units
            .into_iter()
            .map(|(name, levels)| Unit {
                name,
                group: 0,
                levels,
            })
            .collect();
        let group = Group {
            name: "all".into(),
            start: GroupStart::uniform(0),
        };
        SearchSpace::new(units, vec![group], Budget::ExactGroupSums { step: 1 })
    }
}
