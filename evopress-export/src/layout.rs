//! Which blocks of a candidate reach the exported file, under which index, and which of their
//! sub-blocks run. A block whose attention and MLP are both dropped is removed (the file has
//! fewer layers, renumbered in order); a block with one sub-block dropped stays, and each
//! writer expresses the dropped half in the smallest form its format can hold.

use evopress_core::{BlockPlan, Error, LinearKind, Result};

/// One block of the exported model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeptBlock {
    /// Its index in the source model.
    pub source: usize,
    /// Which of its sub-blocks run (at least one does).
    pub plan: BlockPlan,
}

impl KeptBlock {
    /// Whether layer `kind` of this block contributes to the output.
    pub fn runs(&self, kind: LinearKind) -> bool {
        match kind {
            LinearKind::Q | LinearKind::K | LinearKind::V | LinearKind::O => self.plan.attn,
            LinearKind::Gate | LinearKind::Up | LinearKind::Down => self.plan.mlp,
        }
    }
}

/// The exported blocks, in order (output block `i` is `blocks[i]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub blocks: Vec<KeptBlock>,
    /// Blocks of the source model.
    pub source_blocks: usize,
}

impl Layout {
    /// The layout of a candidate's plan. Dropping every block leaves no model to write.
    pub fn of(plan: &[BlockPlan]) -> Result<Layout> {
        let blocks: Vec<KeptBlock> = plan
            .iter()
            .enumerate()
            .filter(|(_, p)| p.attn || p.mlp)
            .map(|(source, &plan)| KeptBlock { source, plan })
            .collect();
        if blocks.is_empty() && !plan.is_empty() {
            return Err(Error::Invalid(format!(
                "the plan drops all {} blocks: there is no model to export",
                plan.len()
            )));
        }
        Ok(Layout {
            blocks,
            source_blocks: plan.len(),
        })
    }

    /// Whole blocks removed.
    pub fn removed(&self) -> usize {
        self.source_blocks - self.blocks.len()
    }

    /// Output indices of blocks whose attention is dropped (their MLP runs).
    pub fn attention_dropped(&self) -> Vec<usize> {
        (0..self.blocks.len())
            .filter(|&i| !self.blocks[i].plan.attn)
            .collect()
    }

    /// Output indices of blocks whose MLP is dropped (their attention runs).
    pub fn mlp_dropped(&self) -> Vec<usize> {
        (0..self.blocks.len())
            .filter(|&i| !self.blocks[i].plan.mlp)
            .collect()
    }

    /// One line describing what the depth plan became, e.g. "30 -> 24 layers (6 whole blocks
    /// removed); attention dropped in output layers [3]; MLP dropped in output layers []".
    pub fn describe(&self) -> String {
        let mut s = format!("{} -> {} layers", self.source_blocks, self.blocks.len());
        if self.removed() > 0 {
            s += &format!(" ({} whole blocks removed, renumbered)", self.removed());
        }
        let (a, m) = (self.attention_dropped(), self.mlp_dropped());
        if !a.is_empty() {
            s += &format!("; attention dropped in output layers {a:?}");
        }
        if !m.is_empty() {
            s += &format!("; MLP dropped in output layers {m:?}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: BlockPlan = BlockPlan {
        attn: false,
        mlp: false,
    };
    const ATTN_ONLY: BlockPlan = BlockPlan {
        attn: true,
        mlp: false,
    };

    #[test]
    fn whole_drops_are_removed_and_the_rest_renumbered() {
        let plan = [BlockPlan::FULL, NONE, ATTN_ONLY, NONE, BlockPlan::FULL];
        let l = Layout::of(&plan).unwrap();
        let sources: Vec<usize> = l.blocks.iter().map(|b| b.source).collect();
        assert_eq!(sources, [0, 2, 4]);
        assert_eq!(l.removed(), 2);
        assert_eq!(l.mlp_dropped(), [1]);
        assert!(l.attention_dropped().is_empty());
        assert!(!l.blocks[1].runs(LinearKind::Down));
        assert!(l.blocks[1].runs(LinearKind::Q));
        assert_eq!(
            l.describe(),
            "5 -> 3 layers (2 whole blocks removed, renumbered); MLP dropped in output layers [1]"
        );
    }

    #[test]
    fn dropping_everything_is_refused() {
        let err = Layout::of(&[NONE, NONE]).unwrap_err().to_string();
        assert!(err.contains("drops all 2 blocks"), "{err}");
    }
}
