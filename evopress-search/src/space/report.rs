//! A genome's budget, checked and spelled out for result files.

use super::{Budget, Genome, SearchSpace};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Whether a genome meets the budget, with the numbers behind the verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetReport {
    /// The budget rule holds: every group sum is on target, or the total cost is under the ceiling.
    pub holds: bool,
    pub total_cost: u64,
    /// The ceiling under [`Budget::CostCeiling`].
    pub max_cost: Option<u64>,
    pub groups: Vec<GroupReport>,
    /// Units placed at a level the legality mask forbids.
    pub illegal_units: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupReport {
    pub name: String,
    pub units: usize,
    pub level_sum: i64,
    /// The sum [`Budget::ExactGroupSums`] requires.
    pub target_level_sum: Option<i64>,
    pub cost: u64,
}

impl SearchSpace {
    pub fn budget_report(&self, genome: &Genome) -> BudgetReport {
        let exact = matches!(self.budget, Budget::ExactGroupSums { .. });
        let groups: Vec<GroupReport> = (0..self.groups.len())
            .map(|g| {
                let members = self.members(g);
                let levels = members.iter().map(|&u| self.level(genome, u));
                GroupReport {
                    name: self.groups[g].name.clone(),
                    units: members.len(),
                    level_sum: levels.map(|l| l.id as i64).sum(),
                    target_level_sum: exact.then(|| self.target_level_sum(g)),
                    cost: members.iter().map(|&u| self.unit_cost(genome, u)).sum(),
                }
            })
            .collect();
        let total_cost = self.total_cost(genome);
        let (holds, max_cost) = match self.budget {
            Budget::ExactGroupSums { .. } => (
                groups
                    .iter()
                    .all(|g| Some(g.level_sum) == g.target_level_sum),
                None,
            ),
            Budget::CostCeiling { max_cost, .. } => (total_cost <= max_cost, Some(max_cost)),
        };
        let illegal_units = (0..self.units.len())
            .filter(|&u| !self.level(genome, u).legal)
            .map(|u| self.units[u].name.clone())
            .collect();
        BudgetReport {
            holds,
            total_cost,
            max_cost,
            groups,
            illegal_units,
        }
    }
}

impl fmt::Display for BudgetReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "total cost {}", self.total_cost)?;
        if let Some(max) = self.max_cost {
            write!(f, " (ceiling {max})")?;
        }
        for g in &self.groups {
            write!(f, "; `{}`: level sum {}", g.name, g.level_sum)?;
            if let Some(target) = g.target_level_sum {
                write!(f, " (target {target})")?;
            }
        }
        Ok(())
    }
}
