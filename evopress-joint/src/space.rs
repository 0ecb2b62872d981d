//! The joint search space (docs/joint-search.md): per block, a switch for the attention
//! sub-block followed by its linear layers, then a switch for the MLP followed by its layers.
//! A layer's levels are the combinations the database stores for it, cheapest first; a switch
//! gates its layers, so a dropped sub-block costs 0 bytes. One cost ceiling in bytes.

use crate::levels::Combo;
use evopress_core::units::LinearUnit;
use evopress_core::{Error, LinearInput, Result};
use evopress_search::space::{OFF, ON};
use evopress_search::{Budget, Gate, Group, GroupStart, Level, SearchSpace, Unit};

/// Which sub-block a linear layer belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubBlock {
    Attention,
    Mlp,
}

impl SubBlock {
    pub fn of(unit: &LinearUnit) -> Self {
        match unit.input() {
            LinearInput::AttnIn | LinearInput::OIn => SubBlock::Attention,
            LinearInput::MlpIn | LinearInput::DownIn => SubBlock::Mlp,
        }
    }

    /// The HF module name of the sub-block in block `b`: the switch unit's name.
    pub fn module(self, b: usize) -> String {
        match self {
            SubBlock::Attention => format!("model.layers.{b}.self_attn"),
            SubBlock::Mlp => format!("model.layers.{b}.mlp"),
        }
    }
}

/// What one unit of the space is.
#[derive(Clone, Debug, PartialEq)]
pub enum Slot {
    /// Keeps or drops a sub-block.
    Switch { block: usize, sub: SubBlock },
    /// A linear layer: its index among the database's units, and the combination of each of
    /// its levels (cheapest first).
    Linear { unit: usize, combos: Vec<Combo> },
}

/// One linear layer's candidate levels: `(combination, stored bytes, rel_error)`.
pub type Options = Vec<(Combo, u64, f64)>;

/// The options that are not dominated: sorted by bytes, each strictly more accurate than every
/// cheaper one kept (on equal bytes the more accurate one).
pub fn pareto(mut options: Options) -> Options {
    options.sort_by(|a, b| a.1.cmp(&b.1).then(a.2.total_cmp(&b.2)));
    let mut out: Options = Vec::with_capacity(options.len());
    for o in options {
        if out.last().is_none_or(|last| o.2 < last.2 && o.1 > last.1) {
            out.push(o);
        }
    }
    out
}

/// Builds the space over `units` (the database's linear units, in order) with `options[u]`
/// sorted by bytes, under a ceiling of `max_bytes`; with `drops`, a switch per sub-block.
/// Returns the space and what each of its units is.
pub fn joint_space(
    units: &[LinearUnit],
    options: &[Options],
    max_bytes: u64,
    drops: bool,
) -> Result<(SearchSpace, Vec<Slot>)> {
    let (mut space_units, mut slots, mut gates) = (Vec::new(), Vec::new(), Vec::new());
    let mut open: Option<(usize, SubBlock)> = None;
    for (u, unit) in units.iter().enumerate() {
        let sub = SubBlock::of(unit);
        if drops && open != Some((unit.block, sub)) {
            open = Some((unit.block, sub));
            gates.push(Gate {
                switch: space_units.len(),
                members: Vec::new(),
            });
            space_units.push(Unit {
                name: sub.module(unit.block),
                group: 0,
                levels: vec![Level::new(OFF, 0), Level::new(ON, 0)],
            });
            slots.push(Slot::Switch {
                block: unit.block,
                sub,
            });
        }
        let opts = &options[u];
        if opts.is_empty() {
            return Err(Error::Invalid(format!(
                "joint space: `{}` has no stored combination left",
                unit.name
            )));
        }
        // Levels cheapest first; the most expensive has id 0, so every layer starts there.
        let top = opts.len() as i32 - 1;
        let levels = (opts.iter().enumerate())
            .map(|(i, o)| Level::new(i as i32 - top, o.1))
            .collect();
        if let Some(gate) = gates.last_mut() {
            gate.members.push(space_units.len());
        }
        space_units.push(Unit {
            name: unit.name.clone(),
            group: 1,
            levels,
        });
        slots.push(Slot::Linear {
            unit: u,
            combos: opts.iter().map(|o| o.0).collect(),
        });
    }
    let groups = vec![
        Group {
            name: "sub-blocks (0 kept, 1 dropped)".into(),
            start: GroupStart::uniform(OFF),
        },
        Group {
            name: "linear layers (0 = most bytes)".into(),
            start: GroupStart::uniform(0),
        },
    ];
    let budget = Budget::CostCeiling {
        max_cost: max_bytes,
        step: 1,
    };
    let groups = if drops { groups } else { groups[1..].to_vec() };
    if !drops {
        for unit in &mut space_units {
            unit.group = 0;
        }
    }
    let space = SearchSpace::new(space_units, groups, budget)?.with_gates(gates)?;
    Ok((space, slots))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pareto_keeps_only_undominated_options() {
        let c = |s: f64, b: u8| Combo::new(s, b).unwrap();
        let opts = vec![
            (c(0.0, 4), 450, 0.01),
            (c(0.5, 4), 350, 0.03),
            (c(0.0, 3), 350, 0.04),  // same bytes, less accurate
            (c(0.25, 4), 440, 0.05), // cheaper than 4-bit but worse than 50 %/4
            (c(0.0, 2), 250, 0.20),
        ];
        let kept: Vec<Combo> = pareto(opts).into_iter().map(|o| o.0).collect();
        assert_eq!(kept, [c(0.0, 2), c(0.5, 4), c(0.0, 4)]);
    }
}
