//! One-shot depth-pruning baselines (docs/baselines.md). Each scores every block (or every
//! attention and MLP sub-block) once and drops the k lowest:
//!
//! - `cosine` (ShortGPT): the most similar input and output (cosine of the residual stream);
//! - `norm_ratio` (weight subcloning): the smallest relative update `|out - in| / |out|`;
//! - `window_cosine` (Gromov et al.): the contiguous window of k blocks whose ends are most
//!   similar (whole blocks only);
//! - `perplexity` (Shortened LLaMA) and `kl`: the least harm when dropped alone, in calibration
//!   perplexity or KL to the dense model;
//! - `brute_force`: every set of k whole blocks by calibration fitness (expensive).
//!
//! The `_sub` variants score attention and MLP sub-blocks separately and drop k of each, the
//! shape the search itself explores. Hidden-state scores compare a block's input with its
//! output before the final norm.

use crate::drop_config::whole_blocks;
use crate::space::DropMask;
use evopress_core::evaluate::{Calibration, StageCache};
use evopress_core::fitness::FitnessKind;
use evopress_core::model::Layout;
use evopress_core::{BlockPlan, Error, Model, Result};
use evopress_kernels::Device;
use evopress_search::TokenBatch;

/// How a baseline scores sub-blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Score {
    Cosine,
    NormRatio,
    WindowCosine,
    Perplexity,
    Kl,
}

/// A scoring baseline: its score and whether it drops whole blocks or k of each sub-block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scoring {
    pub score: Score,
    pub sub_blocks: bool,
}

impl Scoring {
    /// Every scoring baseline, the whole-block ones first.
    pub const ALL: [Scoring; 9] = [
        Scoring::whole(Score::Cosine),
        Scoring::whole(Score::NormRatio),
        Scoring::whole(Score::WindowCosine),
        Scoring::whole(Score::Perplexity),
        Scoring::whole(Score::Kl),
        Scoring::sub(Score::Cosine),
        Scoring::sub(Score::NormRatio),
        Scoring::sub(Score::Perplexity),
        Scoring::sub(Score::Kl),
    ];

    const fn whole(score: Score) -> Self {
        Scoring {
            score,
            sub_blocks: false,
        }
    }

    const fn sub(score: Score) -> Self {
        Scoring {
            score,
            sub_blocks: true,
        }
    }

    pub fn name(self) -> String {
        let base = match self.score {
            Score::Cosine => "cosine",
            Score::NormRatio => "norm_ratio",
            Score::WindowCosine => "window_cosine",
            Score::Perplexity => "perplexity",
            Score::Kl => "kl",
        };
        if self.sub_blocks {
            format!("{base}_sub")
        } else {
            base.to_string()
        }
    }

    pub fn about(self) -> &'static str {
        match (self.score, self.sub_blocks) {
            (Score::Cosine, false) => {
                "ShortGPT: blocks whose output is most similar to their input"
            }
            (Score::Cosine, true) => "ShortGPT's cosine per attention and MLP sub-block",
            (Score::NormRatio, false) => {
                "weight subcloning: blocks with the smallest relative update"
            }
            (Score::NormRatio, true) => "relative update per attention and MLP sub-block",
            (Score::WindowCosine, _) => {
                "Gromov et al.: the window of k blocks with the most similar ends"
            }
            (Score::Perplexity, false) => {
                "Shortened LLaMA: blocks whose removal alone hurts perplexity least"
            }
            (Score::Perplexity, true) => "single sub-block removal, by calibration perplexity",
            (Score::Kl, false) => "blocks whose removal alone costs the least KL",
            (Score::Kl, true) => "single sub-block removal, by KL to the dense model",
        }
    }

    pub fn parse(name: &str) -> Option<Scoring> {
        Scoring::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// A baseline's choice and the scores it was made from (lower = dropped first; for sub-block
/// baselines attention scores then MLP scores).
pub struct Choice {
    pub mask: DropMask,
    pub scores: Vec<f64>,
}

/// Runs a scoring baseline dropping `k` blocks (or k attention and k MLP sub-blocks) where
/// `legal` allows, scoring on the tokens of `batch`. The single-drop baselines read their
/// scores from `single` (see [`single_drop`]), computed once for all of them.
#[allow(clippy::too_many_arguments)]
pub fn score<D: Device + ?Sized>(
    model: &Model,
    dev: &D,
    cal: &Calibration,
    batch: &TokenBatch,
    scoring: Scoring,
    k: usize,
    legal: &DropMask,
    single: impl FnOnce(bool) -> Result<std::sync::Arc<SingleDrop>>,
) -> Result<Choice> {
    let n = model.layers.len();
    let scores = match scoring.score {
        Score::Cosine | Score::NormRatio | Score::WindowCosine => {
            let s = boundary_stats(model, dev, cal, batch, k.max(1))?;
            match (scoring.score, scoring.sub_blocks) {
                (Score::Cosine, false) => s.cos_block.iter().map(|c| -c).collect(),
                (Score::Cosine, true) => s.cos_sub.iter().map(|c| -c).collect(),
                (Score::NormRatio, false) => s.ratio_block,
                (Score::NormRatio, true) => s.ratio_sub,
                _ => {
                    // A window's score goes to its first block; the choice is the whole window.
                    let neg: Vec<f64> = s.cos_window.iter().map(|c| -c).collect();
                    let windows =
                        (0..neg.len()).filter(|&s| (s..s + k).all(|b| legal_block(legal, b)));
                    let start = windows
                        .min_by(|&a, &b| neg[a].total_cmp(&neg[b]))
                        .ok_or_else(|| {
                            Error::Invalid(format!("no window of {k} blocks may be dropped"))
                        })?;
                    let blocks: Vec<usize> = (start..start + k).collect();
                    return Ok(Choice {
                        mask: whole_blocks(n, &blocks),
                        scores: neg,
                    });
                }
            }
        }
        Score::Perplexity => single(scoring.sub_blocks)?.nll.clone(),
        Score::Kl => single(scoring.sub_blocks)?.kl.clone(),
    };
    let mask = if scoring.sub_blocks {
        let attn = lowest_legal(&scores[..n], k, |b| legal.attn[b])?;
        let mlp = lowest_legal(&scores[n..], k, |b| legal.mlp[b])?;
        let mut mask = DropMask::none(n);
        attn.into_iter().for_each(|b| mask.attn[b] = true);
        mlp.into_iter().for_each(|b| mask.mlp[b] = true);
        mask
    } else {
        whole_blocks(n, &lowest_legal(&scores, k, |b| legal_block(legal, b))?)
    };
    Ok(Choice { mask, scores })
}

fn legal_block(legal: &DropMask, b: usize) -> bool {
    legal.attn[b] && legal.mlp[b]
}

/// Indices of the `k` lowest scores among those `allowed` (ties to the lower index).
fn lowest_legal(scores: &[f64], k: usize, allowed: impl Fn(usize) -> bool) -> Result<Vec<usize>> {
    let mut idx: Vec<usize> = (0..scores.len()).filter(|&i| allowed(i)).collect();
    if idx.len() < k {
        return Err(Error::Invalid(format!(
            "cannot drop {k}: only {} may be dropped",
            idx.len()
        )));
    }
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    idx.truncate(k);
    idx.sort_unstable();
    Ok(idx)
}

/// Token-averaged similarity statistics between sub-block boundaries.
struct BoundaryStats {
    /// Mean cosine between block i's input and output.
    cos_block: Vec<f64>,
    /// Mean cosine across attention sub-block i (first n), then MLP sub-block i.
    cos_sub: Vec<f64>,
    /// Mean cosine between the streams entering blocks s and s + k.
    cos_window: Vec<f64>,
    /// Mean `|out - in| / |out|` of block i, and of each sub-block.
    ratio_block: Vec<f64>,
    ratio_sub: Vec<f64>,
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += x as f64 * y as f64;
        aa += x as f64 * x as f64;
        bb += y as f64 * y as f64;
    }
    ab / (aa.sqrt() * bb.sqrt()).max(1e-30)
}

fn relative_update(before: &[f32], after: &[f32]) -> f64 {
    let diff: f64 = (before.iter().zip(after))
        .map(|(&x, &y)| ((y - x) as f64).powi(2))
        .sum();
    let norm: f64 = after.iter().map(|&y| (y as f64).powi(2)).sum();
    diff.sqrt() / norm.sqrt().max(1e-30)
}

const ATTN_ONLY: BlockPlan = BlockPlan {
    attn: true,
    mlp: false,
};
const MLP_ONLY: BlockPlan = BlockPlan {
    attn: false,
    mlp: true,
};

fn boundary_stats<D: Device + ?Sized>(
    model: &Model,
    dev: &D,
    cal: &Calibration,
    batch: &TokenBatch,
    k: usize,
) -> Result<BoundaryStats> {
    let n = model.layers.len();
    let hsz = model.hidden_size();
    let mut s = BoundaryStats {
        cos_block: vec![0.0; n],
        cos_sub: vec![0.0; 2 * n],
        cos_window: vec![0.0; (n + 1).saturating_sub(k)],
        ratio_block: vec![0.0; n],
        ratio_sub: vec![0.0; 2 * n],
    };
    let mut tokens = 0usize;
    for slice in &batch.slices {
        let toks = &cal.samples[slice.sample][slice.tokens.clone()];
        let layout = Layout {
            batch: 1,
            seq: toks.len(),
            pos0: 0,
        };
        // states[2b] enters block b, states[2b + 1] is between its attention and MLP.
        let mut states = vec![model.embed(toks)?];
        for b in 0..n {
            for plan in [ATTN_ONLY, MLP_ONLY] {
                let mut h = states.last().expect("non-empty").clone();
                model.block_forward(dev, b, &mut h, layout, plan, None);
                states.push(h);
            }
        }
        for t in 0..toks.len() {
            let at = |i: usize| &states[i][t * hsz..(t + 1) * hsz];
            for b in 0..n {
                s.cos_block[b] += cosine(at(2 * b), at(2 * b + 2));
                s.ratio_block[b] += relative_update(at(2 * b), at(2 * b + 2));
                for (j, sub) in [b, n + b].into_iter().enumerate() {
                    s.cos_sub[sub] += cosine(at(2 * b + j), at(2 * b + j + 1));
                    s.ratio_sub[sub] += relative_update(at(2 * b + j), at(2 * b + j + 1));
                }
            }
            for (start, c) in s.cos_window.iter_mut().enumerate() {
                *c += cosine(at(2 * start), at(2 * (start + k)));
            }
        }
        tokens += toks.len();
    }
    let all = [
        &mut s.cos_block,
        &mut s.cos_sub,
        &mut s.cos_window,
        &mut s.ratio_block,
        &mut s.ratio_sub,
    ];
    for v in all {
        v.iter_mut().for_each(|x| *x /= tokens.max(1) as f64);
    }
    Ok(s)
}

/// KL to the dense model and mean negative log-likelihood with each block, or each sub-block
/// (attention ones first), dropped alone: the scores of the single-drop baselines, both from
/// one forward per drop, each running from the block it drops.
pub struct SingleDrop {
    pub kl: Vec<f64>,
    pub nll: Vec<f64>,
}

pub fn single_drop<D: Device + ?Sized>(
    model: &Model,
    dev: &D,
    cal: &Calibration,
    batch: &TokenBatch,
    sub_blocks: bool,
    progress: &dyn Fn(usize, usize),
) -> Result<SingleDrop> {
    let n = model.layers.len();
    // A perplexity-fitness run has no dense targets: make them for the batch's tokens.
    let owned;
    let (cal, batch) = if cal.kind == FitnessKind::Ppl {
        let samples = (batch.slices.iter())
            .map(|s| cal.samples[s.sample][s.tokens.clone()].to_vec())
            .collect();
        owned = Calibration::new(model, dev, samples, FitnessKind::Kl, |_| {})?;
        let lens = owned.sample_lens();
        (
            &owned,
            evopress_search::batch::all_tokens(&lens, lens.iter().sum()),
        )
    } else {
        (cal, batch.clone())
    };
    let dense = vec![BlockPlan::FULL; n];
    let cache = StageCache::build(model, dev, cal, batch.slices.clone(), &dense, usize::MAX)?;
    let drops: Vec<(usize, BlockPlan)> = if sub_blocks {
        let attn = (0..n).map(|b| (b, MLP_ONLY));
        attn.chain((0..n).map(|b| (b, ATTN_ONLY))).collect()
    } else {
        let none = BlockPlan {
            attn: false,
            mlp: false,
        };
        (0..n).map(|b| (b, none)).collect()
    };
    let mut out = SingleDrop {
        kl: Vec::with_capacity(drops.len()),
        nll: Vec::with_capacity(drops.len()),
    };
    for (i, &(b, p)) in drops.iter().enumerate() {
        let mut plan = dense.clone();
        plan[b] = p;
        let (kl, nll) = cache.fitness_and_nll(model, dev, cal, &plan, b)?;
        out.kl.push(kl);
        out.nll.push(nll);
        progress(i + 1, drops.len());
    }
    Ok(out)
}

/// Brute force over every set of `k` whole blocks among `legal` by calibration fitness on
/// `batch`. Returns the best configuration and its fitness.
pub fn brute_force<D: Device + ?Sized>(
    model: &Model,
    dev: &D,
    cal: &Calibration,
    batch: &TokenBatch,
    legal: &[usize],
    k: usize,
    progress: &dyn Fn(usize, usize),
) -> Result<(DropMask, f64)> {
    let n = model.layers.len();
    if k > legal.len() {
        return Err(Error::Invalid(format!(
            "cannot drop {k} blocks: only {} are legal to drop",
            legal.len()
        )));
    }
    let combos = combinations(legal, k);
    let dense = vec![BlockPlan::FULL; n];
    let cache = StageCache::build(model, dev, cal, batch.slices.clone(), &dense, usize::MAX)?;
    let mut best: Option<(DropMask, f64)> = None;
    for (i, blocks) in combos.iter().enumerate() {
        let c = whole_blocks(n, blocks);
        let first = blocks.iter().copied().min().unwrap_or(n);
        let f = cache.fitness(model, dev, cal, &crate::drop_config::plan(&c), first)?;
        if best.as_ref().is_none_or(|(_, b)| f < *b) {
            best = Some((c, f));
        }
        progress(i + 1, combos.len());
    }
    Ok(best.expect("at least one combination"))
}

/// All `k`-subsets of `items`, in lexicographic order.
pub fn combinations(items: &[usize], k: usize) -> Vec<Vec<usize>> {
    fn rec(items: &[usize], k: usize, cur: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if cur.len() == k {
            out.push(cur.clone());
            return;
        }
        for (i, &x) in items.iter().enumerate() {
            if items.len() - i < k - cur.len() {
                break;
            }
            cur.push(x);
            rec(&items[i + 1..], k, cur, out);
            cur.pop();
        }
    }
    let mut out = Vec::new();
    rec(items, k, &mut Vec::new(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combinations_count_and_order() {
        let c = combinations(&[10, 11, 12, 13, 14], 3);
        assert_eq!(c.len(), 10);
        assert_eq!(c[0], vec![10, 11, 12]);
        assert_eq!(c[9], vec![12, 13, 14]);
        assert_eq!(combinations(&[1, 2], 0), vec![Vec::<usize>::new()]);
    }

    #[test]
    fn lowest_legal_breaks_ties_by_index_and_skips_illegal() {
        let scores = [0.5, 0.1, 0.1, 0.9];
        assert_eq!(lowest_legal(&scores, 2, |_| true).unwrap(), vec![1, 2]);
        assert_eq!(lowest_legal(&scores, 2, |i| i != 1).unwrap(), vec![0, 2]);
        assert!(lowest_legal(&scores, 3, |i| i < 2).is_err());
    }

    #[test]
    fn every_scoring_name_parses_back() {
        for s in Scoring::ALL {
            assert_eq!(Scoring::parse(&s.name()), Some(s));
        }
    }
}
