//! Unstructured sparsity (docs/level-schemes.md): one level step moves the same number of weights
//! in every layer, so any layer may trade a step with any other and `Σ level = 0` keeps the global
//! sparsity exact.

use super::{Budget, Group, GroupStart, Level, SearchSpace, Unit};
use crate::error::Result;

impl SearchSpace {
    /// One group of all `(name, levels)` units, starting uniform at level 0 and held to
    /// `Σ level = 0`. Level ids are the database's level offsets; costs are for reports and DP.
    pub fn sparsity(units: Vec<(String, Vec<Level>)>) -> Result<SearchSpace> {
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
