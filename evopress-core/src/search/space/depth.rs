//! Depth pruning (docs/level-schemes.md): drop exactly k attention and k MLP sub-blocks, or k whole
//! blocks.

use super::{Budget, Genome, Group, GroupStart, Level, SearchSpace, Unit};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

const KEPT: i32 = 0;
const DROPPED: i32 = 1;

/// Which sub-blocks are dropped (`true`) per decoder block; also the shape of a legality mask,
/// where `true` means "may be dropped".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropMask {
    pub attn: Vec<bool>,
    pub mlp: Vec<bool>,
}

impl DropMask {
    pub fn none(n_blocks: usize) -> Self {
        DropMask {
            attn: vec![false; n_blocks],
            mlp: vec![false; n_blocks],
        }
    }
}

/// How a depth genome maps onto decoder blocks.
///
/// Sub-block mode has 2n boolean units (`attn.i` then `mlp.i`) in two groups of k drops each;
/// the original picks the group with probability 1/2, which is what a group chosen in
/// proportion to its size gives. With `entire_block` there are n units (`block.i`) in one
/// group: the original's `mlp := attn` mirroring without its wasted MLP switches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepthLayout {
    pub n_blocks: usize,
    pub entire_block: bool,
}

impl DepthLayout {
    /// The space of genomes dropping `k` of each sub-block kind (or `k` whole blocks), only
    /// where `legal` allows; no mask means every sub-block may be dropped.
    pub fn space(&self, k: usize, legal: Option<&DropMask>) -> Result<SearchSpace> {
        let n = self.n_blocks;
        let all = DropMask {
            attn: vec![true; n],
            mlp: vec![true; n],
        };
        let legal = legal.unwrap_or(&all);
        if legal.attn.len() != n || legal.mlp.len() != n {
            return Err(Error::Invalid(format!(
                "depth legality mask covers {} attention and {} MLP sub-blocks, the model has {n} blocks",
                legal.attn.len(),
                legal.mlp.len()
            )));
        }
        let unit = |name: String, group: usize, may_drop: bool| Unit {
            name,
            group,
            levels: vec![
                Level::new(KEPT, 0),
                Level {
                    legal: may_drop,
                    ..Level::new(DROPPED, 1)
                },
            ],
        };
        let drop_k = |name: &str| Group {
            name: name.into(),
            start: GroupStart {
                base: KEPT,
                moved: k,
                moved_to: DROPPED,
            },
        };
        let (units, groups): (Vec<Unit>, Vec<Group>) = if self.entire_block {
            let units = (0..n)
                .map(|i| unit(format!("block.{i}"), 0, legal.attn[i] && legal.mlp[i]))
                .collect();
            (units, vec![drop_k("blocks")])
        } else {
            let attn = (0..n).map(|i| unit(format!("attn.{i}"), 0, legal.attn[i]));
            let mlp = (0..n).map(|i| unit(format!("mlp.{i}"), 1, legal.mlp[i]));
            (
                attn.chain(mlp).collect(),
                vec![drop_k("attn"), drop_k("mlp")],
            )
        };
        for (g, group) in groups.iter().enumerate() {
            let droppable = units.iter().filter(|u| u.group == g && u.levels[1].legal);
            let droppable = droppable.count();
            if k > droppable {
                return Err(Error::Invalid(format!(
                    "depth pruning: k={k} {} must be dropped but only {droppable} of {n} may be",
                    group.name
                )));
            }
        }
        SearchSpace::new(units, groups, Budget::ExactGroupSums { step: 1 })
    }

    /// The sub-blocks a genome of [`DepthLayout::space`] drops.
    pub fn drops(&self, genome: &Genome) -> DropMask {
        let dropped = |i: usize| genome.0[i] == 1;
        let n = self.n_blocks;
        if self.entire_block {
            let blocks: Vec<bool> = (0..n).map(dropped).collect();
            DropMask {
                attn: blocks.clone(),
                mlp: blocks,
            }
        } else {
            DropMask {
                attn: (0..n).map(dropped).collect(),
                mlp: (n..2 * n).map(dropped).collect(),
            }
        }
    }

    /// The genome that drops exactly `drops` (e.g. read back from `layer_drop_config.txt`).
    pub fn genome(&self, drops: &DropMask) -> Result<Genome> {
        let n = self.n_blocks;
        if drops.attn.len() != n || drops.mlp.len() != n {
            return Err(Error::Invalid(format!(
                "a drop configuration of {} blocks for a model of {n}",
                drops.attn.len().max(drops.mlp.len())
            )));
        }
        let genes: Vec<bool> = if self.entire_block {
            if drops.attn != drops.mlp {
                return Err(Error::Invalid(
                    "whole-block depth pruning needs attention and MLP dropped together".into(),
                ));
            }
            drops.attn.clone()
        } else {
            drops.attn.iter().chain(&drops.mlp).copied().collect()
        };
        Ok(Genome(genes.into_iter().map(u16::from).collect()))
    }
}
