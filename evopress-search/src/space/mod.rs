//! What the search chooses from: units, each with its ordered levels, the budget groups they
//! belong to, and the rule that keeps the budget exact.
//!
//! Every method's problem maps onto one of two budget rules:
//! - keep every group's *sum of level ids* fixed ([`Budget::ExactGroupSums`]): k dropped
//!   sub-blocks, `Σ level = 0` over sparsity levels, or a group's total bits;
//! - keep the total cost under a ceiling ([`Budget::CostCeiling`]), where units of different
//!   sizes trade with each other (bits or bytes over all layers).
//!
//! The method crates build their spaces with [`SearchSpace::new`]. Under a cost ceiling a space
//! may also have [`Gate`]s ([`SearchSpace::with_gates`]): units that switch others off, so one
//! genome can drop a sub-block and choose levels for its layers (docs/search.md).

mod count;
mod report;
mod shapes;

pub use report::{BudgetReport, GroupReport};
pub use shapes::{ChooseK, OFF, ON};

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// One choice for a unit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Level {
    /// The original's level number: a sparsity level offset, a bit width, or 1 = dropped / 0 = kept.
    pub id: i32,
    /// What this level costs in the budget's currency (dropped sub-blocks, zeros, bits).
    pub cost: u64,
    /// Whether the search may put the unit at this level (the legality mask).
    pub legal: bool,
}

impl Level {
    pub fn new(id: i32, cost: u64) -> Self {
        Level {
            id,
            cost,
            legal: true,
        }
    }
}

/// Something that takes one level: a sub-block, a linear layer, a whole block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unit {
    pub name: String,
    /// Index into [`SearchSpace::groups`].
    pub group: usize,
    /// Sorted by strictly increasing `id`.
    pub levels: Vec<Level>,
}

impl Unit {
    /// The index of the level with this id.
    pub fn level_index(&self, id: i32) -> Option<usize> {
        self.levels.binary_search_by_key(&id, |l| l.id).ok()
    }

    /// The index of the legal level whose id is `delta` away from level `from`'s, if there is one.
    pub(crate) fn legal_neighbour(&self, from: u16, delta: i32) -> Option<u16> {
        let id = self.levels[from as usize].id.checked_add(delta)?;
        let index = self.level_index(id)?;
        self.levels[index].legal.then_some(index as u16)
    }
}

/// How every random initial genome looks inside one group: all units at `base`, then exactly
/// `moved` units, chosen at random among those where `moved_to` is legal, at `moved_to`.
/// This one shape covers the depth start (k random drops), the uniform start (`moved = 0`) and
/// the per-group exact quantization start of branch `fused_proj_search` (docs/search.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStart {
    pub base: i32,
    pub moved: usize,
    pub moved_to: i32,
}

impl GroupStart {
    pub fn uniform(base: i32) -> Self {
        GroupStart {
            base,
            moved: 0,
            moved_to: base,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    pub start: GroupStart,
}

/// The rule that keeps a genome within budget, and so also which mutation applies (docs/search.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    /// Each group's sum of level ids stays what its [`GroupStart`] makes it. A switch lowers one
    /// unit by `step` and raises another of the same group by `step`.
    ExactGroupSums { step: i32 },
    /// The total cost stays at or under `max_cost`. A mutation raises random units by `step`,
    /// then lowers random units until the total fits again. Every unit starts at its group's
    /// `start.base` and is lowered at random until it fits.
    CostCeiling { max_cost: u64, step: i32 },
}

/// The level chosen for every unit, as an index into that unit's `levels`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Genome(pub Vec<u16>);

impl Genome {
    pub fn level_indices(&self) -> &[u16] {
        &self.0
    }
}

/// A unit that switches others off: while the `switch` unit is at level id [`ON`] (a dropped
/// sub-block), its `members` (the sub-block's layers) cost nothing, no mutation moves them, and
/// they keep their levels for when the switch is turned back to [`OFF`]. The switch has exactly
/// the levels `OFF` and `ON`, both of cost 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gate {
    pub switch: usize,
    pub members: Vec<usize>,
}

/// Units, groups and budget, checked to be consistent; see [`SearchSpace::new`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SearchSpace {
    units: Vec<Unit>,
    groups: Vec<Group>,
    budget: Budget,
    /// Empty unless [`SearchSpace::with_gates`] added some (then part of the fingerprint).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    gates: Vec<Gate>,
    /// Unit indices per group, derived from `units`.
    #[serde(skip)]
    members: Vec<Vec<usize>>,
    /// The switch unit gating each unit, derived from `gates`.
    #[serde(skip)]
    gated_by: Vec<Option<usize>>,
    #[serde(skip)]
    is_switch: Vec<bool>,
}

impl SearchSpace {
    /// Checks that every group's start genome exists, is legal and can meet the budget.
    pub fn new(units: Vec<Unit>, groups: Vec<Group>, budget: Budget) -> Result<Self> {
        let invalid = |msg: String| Err(Error::Invalid(format!("search space: {msg}")));
        if units.is_empty() {
            return invalid("no units".into());
        }
        let mut members = vec![Vec::new(); groups.len()];
        for (index, unit) in units.iter().enumerate() {
            if unit.levels.is_empty() || unit.levels.len() > u16::MAX as usize {
                return invalid(format!(
                    "unit `{}` has {} levels, expected 1 to {}",
                    unit.name,
                    unit.levels.len(),
                    u16::MAX
                ));
            }
            if unit.levels.windows(2).any(|w| w[0].id >= w[1].id) {
                return invalid(format!(
                    "unit `{}`: level ids must be strictly increasing",
                    unit.name
                ));
            }
            match members.get_mut(unit.group) {
                Some(m) => m.push(index),
                None => {
                    return invalid(format!(
                        "unit `{}` is in group {}, but there are {} groups",
                        unit.name,
                        unit.group,
                        groups.len()
                    ))
                }
            }
        }
        let step = match budget {
            Budget::ExactGroupSums { step } | Budget::CostCeiling { step, .. } => step,
        };
        if step < 1 {
            return invalid(format!("the level step must be at least 1, got {step}"));
        }
        let n = units.len();
        let space = SearchSpace {
            units,
            groups,
            budget,
            gates: Vec::new(),
            members,
            gated_by: vec![None; n],
            is_switch: vec![false; n],
        };
        space.check_starts()?;
        Ok(space)
    }

    /// Adds gates (see [`Gate`]): only under [`Budget::CostCeiling`]; a switch has exactly the
    /// levels [`OFF`] and [`ON`] at cost 0, is no gate's member, and a unit has one gate at most.
    pub fn with_gates(mut self, gates: Vec<Gate>) -> Result<Self> {
        let invalid = |msg: String| Err(Error::Invalid(format!("search space gates: {msg}")));
        if !gates.is_empty() && !matches!(self.budget, Budget::CostCeiling { .. }) {
            return invalid("gates need a cost ceiling budget".into());
        }
        let n = self.units.len();
        let (mut gated_by, mut is_switch) = (vec![None; n], vec![false; n]);
        for gate in &gates {
            let Some(switch) = self.units.get(gate.switch) else {
                return invalid(format!("switch {} of {n} units", gate.switch));
            };
            let ids: Vec<(i32, u64)> = switch.levels.iter().map(|l| (l.id, l.cost)).collect();
            if ids != [(OFF, 0), (ON, 0)] {
                return invalid(format!(
                    "switch `{}` must have levels {OFF} and {ON} at cost 0, has {ids:?}",
                    switch.name
                ));
            }
            is_switch[gate.switch] = true;
            for &m in &gate.members {
                if m >= n || gated_by[m].is_some() || m == gate.switch {
                    return invalid(format!(
                        "member {m} of switch `{}` is out of range, the switch itself or in two \
                         gates",
                        switch.name
                    ));
                }
                gated_by[m] = Some(gate.switch);
            }
        }
        if let Some(m) = (0..n).find(|&u| is_switch[u] && gated_by[u].is_some()) {
            return invalid(format!(
                "switch `{}` is another gate's member",
                self.units[m].name
            ));
        }
        self.gates = gates;
        self.gated_by = gated_by;
        self.is_switch = is_switch;
        Ok(self)
    }

    pub fn gates(&self) -> &[Gate] {
        &self.gates
    }

    /// Whether unit `u` is a gate's switch.
    pub fn is_switch(&self, u: usize) -> bool {
        self.is_switch[u]
    }

    /// Whether unit `u` belongs to a gate whose switch is [`ON`] in `genome`: it costs nothing
    /// and does not move.
    pub fn is_gated_off(&self, genome: &Genome, u: usize) -> bool {
        self.gated_by[u].is_some_and(|s| self.level(genome, s).id == ON)
    }

    /// What unit `u` costs in `genome`: its level's cost, 0 while gated off.
    pub fn unit_cost(&self, genome: &Genome, u: usize) -> u64 {
        if self.is_gated_off(genome, u) {
            0
        } else {
            self.level(genome, u).cost
        }
    }

    /// Marks levels illegal where `allowed(unit, level)` is false, then re-checks the space.
    pub fn restrict(mut self, allowed: impl Fn(&Unit, &Level) -> bool) -> Result<Self> {
        for unit in &mut self.units {
            let verdicts: Vec<bool> = unit.levels.iter().map(|l| allowed(unit, l)).collect();
            for (level, ok) in unit.levels.iter_mut().zip(verdicts) {
                level.legal &= ok;
            }
        }
        SearchSpace::new(self.units, self.groups, self.budget)?.with_gates(self.gates)
    }

    fn check_starts(&self) -> Result<()> {
        for (g, group) in self.groups.iter().enumerate() {
            let members = &self.members[g];
            let start = &group.start;
            let invalid = |msg: String| {
                Err(Error::Invalid(format!(
                    "search space, group `{}` ({} units): {msg}",
                    group.name,
                    members.len()
                )))
            };
            if members.is_empty() {
                return invalid("the group has no units".into());
            }
            if let Some(&u) = members.iter().find(|&&u| !self.is_legal_id(u, start.base)) {
                return invalid(format!(
                    "the start level {} is missing or illegal for unit `{}`",
                    start.base, self.units[u].name
                ));
            }
            let movable = self.movable_at_start(g);
            if start.moved > 0 && start.moved_to == start.base {
                return invalid("a start cannot move units to their base level".into());
            }
            if start.moved > movable {
                return invalid(format!(
                    "the start puts {} units at level {}, but only {movable} may take it",
                    start.moved, start.moved_to
                ));
            }
        }
        if let Budget::CostCeiling { max_cost, step } = self.budget {
            let base = self.base_genome();
            let cheapest: u64 = (0..self.units.len())
                .map(|u| self.cheapest_below(u, base.0[u], step))
                .fold(0, u64::saturating_add);
            if cheapest > max_cost {
                return Err(Error::Invalid(format!(
                    "search space: lowering units {step} level(s) at a time from the start \
                     reaches at best a cost of {cheapest}, over the ceiling {max_cost}"
                )));
            }
        }
        Ok(())
    }

    /// The least cost unit `u` reaches from level `from` by legal steps of `-step`.
    fn cheapest_below(&self, u: usize, from: u16, step: i32) -> u64 {
        let unit = &self.units[u];
        let chain = std::iter::successors(Some(from), |&l| unit.legal_neighbour(l, -step));
        chain
            .map(|l| unit.levels[l as usize].cost)
            .min()
            .expect("starts at `from`")
    }

    fn is_legal_id(&self, unit: usize, id: i32) -> bool {
        let unit = &self.units[unit];
        unit.level_index(id).is_some_and(|i| unit.levels[i].legal)
    }

    /// Units of group `g` that may take the group's `start.moved_to` level.
    pub(crate) fn movable_at_start(&self, g: usize) -> usize {
        let to = self.groups[g].start.moved_to;
        self.members[g]
            .iter()
            .filter(|&&u| self.is_legal_id(u, to))
            .count()
    }

    pub fn units(&self) -> &[Unit] {
        &self.units
    }

    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// The indices of the units in group `g`.
    pub fn members(&self, g: usize) -> &[usize] {
        &self.members[g]
    }

    /// The level sum that [`Budget::ExactGroupSums`] holds group `g` to.
    pub fn target_level_sum(&self, g: usize) -> i64 {
        let start = &self.groups[g].start;
        let units = self.members[g].len() as i64;
        let moved = start.moved as i64;
        (units - moved) * start.base as i64 + moved * start.moved_to as i64
    }

    /// Every unit at its group's base level: the uniform start, before any random moves.
    pub fn base_genome(&self) -> Genome {
        Genome(
            self.units
                .iter()
                .map(|u| {
                    let base = self.groups[u.group].start.base;
                    u.level_index(base).expect("checked by SearchSpace::new") as u16
                })
                .collect(),
        )
    }

    pub fn level(&self, genome: &Genome, unit: usize) -> &Level {
        &self.units[unit].levels[genome.0[unit] as usize]
    }

    /// The level id of every unit: what result files write.
    pub fn level_ids(&self, genome: &Genome) -> Vec<i32> {
        (0..self.units.len())
            .map(|u| self.level(genome, u).id)
            .collect()
    }

    /// The genome that puts unit `u` at level id `ids[u]` (e.g. read back from a config file).
    /// It is not checked against legality or the budget: see [`SearchSpace::check_genome`].
    pub fn genome_from_ids(&self, ids: &[i32]) -> Result<Genome> {
        if ids.len() != self.units.len() {
            return Err(Error::Invalid(format!(
                "{} level ids given for {} units",
                ids.len(),
                self.units.len()
            )));
        }
        let indices = self.units.iter().zip(ids).map(|(unit, &id)| {
            unit.level_index(id)
                .map(|i| i as u16)
                .ok_or_else(|| Error::Invalid(format!("unit `{}` has no level {id}", unit.name)))
        });
        Ok(Genome(indices.collect::<Result<_>>()?))
    }

    /// The budget's sum: every unit's [`unit_cost`](Self::unit_cost).
    pub fn total_cost(&self, genome: &Genome) -> u64 {
        (0..self.units.len())
            .map(|u| self.unit_cost(genome, u))
            .sum()
    }

    pub fn is_legal(&self, genome: &Genome) -> bool {
        (0..self.units.len()).all(|u| self.level(genome, u).legal)
    }

    /// Errors unless `genome` fits this space, takes legal levels only and meets the budget.
    pub fn check_genome(&self, genome: &Genome) -> Result<()> {
        let fits = genome.0.len() == self.units.len()
            && genome
                .0
                .iter()
                .zip(&self.units)
                .all(|(&l, u)| (l as usize) < u.levels.len());
        if !fits {
            return Err(Error::Invalid(format!(
                "a genome of {} genes does not fit this search space of {} units",
                genome.0.len(),
                self.units.len()
            )));
        }
        let report = self.budget_report(genome);
        if let Some(name) = report.illegal_units.first() {
            return Err(Error::Invalid(format!(
                "the genome puts unit `{name}` at an illegal level"
            )));
        }
        if !report.holds {
            return Err(Error::Invalid(format!(
                "the genome breaks the budget: {report}"
            )));
        }
        Ok(())
    }

    /// How many distinct legal genomes meet the budget (saturating), where that is cheap to
    /// count; `None` under [`Budget::CostCeiling`].
    pub fn legal_genome_count(&self) -> Option<u128> {
        matches!(self.budget, Budget::ExactGroupSums { .. }).then(|| count::legal_genomes(self))
    }

    /// A one-line summary for error messages, e.g. "60 units in 2 groups, 4 legal genomes".
    pub fn describe(&self) -> String {
        let mut shape = format!("{} units in {} groups", self.units.len(), self.groups.len());
        if !self.gates.is_empty() {
            shape += &format!(", {} gates", self.gates.len());
        }
        match self.budget {
            Budget::ExactGroupSums { .. } => {
                format!("{shape}, {} legal genomes", count::legal_genomes(self))
            }
            Budget::CostCeiling { max_cost, .. } => {
                format!("{shape}, total cost at most {max_cost}")
            }
        }
    }
}
