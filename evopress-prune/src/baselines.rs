//! One-shot block-dropping baselines (docs/baselines.md). All drop whole blocks.
//!
//! Hidden-state scores compare each block's input with its output *before* the final norm
//! (the original compares the last block's pre-norm input with a post-norm output).

use crate::drop_config::whole_blocks;
use evopress_core::evaluate::{Calibration, StageCache};
use evopress_core::search::DropMask;
use evopress_core::search::TokenSlice as Slice;
use evopress_core::{BlockPlan, Error, Model, Result};
use evopress_kernels::Device;

/// The scoring baselines, by their names in the original (`drop_scoring.py`) and the paper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// ShortGPT: drop the k blocks whose output is most similar (cosine) to their input.
    Cosine,
    /// Weight subcloning: drop the k blocks with the smallest relative update.
    NormRatio,
    /// Gromov et al.: drop the contiguous window of k blocks whose ends are most similar.
    WindowCosine,
    /// Shortened LLaMA: drop the k blocks whose single removal hurts perplexity least.
    Perplexity,
    /// Like `Perplexity` with the KL fitness.
    Kl,
}

impl Method {
    pub const ALL: [Method; 5] = [
        Method::Cosine,
        Method::NormRatio,
        Method::WindowCosine,
        Method::Perplexity,
        Method::Kl,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::Cosine => "cosine",
            Method::NormRatio => "norm_ratio",
            Method::WindowCosine => "window_cosine",
            Method::Perplexity => "perplexity",
            Method::Kl => "kl",
        }
    }

    pub fn parse(s: &str) -> Result<Method> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown baseline method `{s}`; expected one of cosine, norm_ratio, window_cosine, perplexity, kl"
                ))
            })
    }
}

/// Token-averaged similarity statistics between block boundaries.
struct BoundaryStats {
    /// `cos_next[i]`: mean cosine between block i's input and output.
    cos_next: Vec<f64>,
    /// `cos_window[s]`: mean cosine between the streams entering blocks s and s + k.
    cos_window: Vec<f64>,
    /// `norm_ratio[i]`: mean `|out - in| / |out|` of block i.
    norm_ratio: Vec<f64>,
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
    let diff: f64 = before
        .iter()
        .zip(after)
        .map(|(&x, &y)| ((y - x) as f64).powi(2))
        .sum();
    let norm: f64 = after.iter().map(|&y| (y as f64).powi(2)).sum();
    diff.sqrt() / norm.sqrt().max(1e-30)
}

fn boundary_stats<D: Device>(
    model: &Model,
    dev: &D,
    samples: &[Vec<u32>],
    k: usize,
) -> Result<BoundaryStats> {
    let n = model.layers.len();
    let hsz = model.hidden_size();
    let mut s = BoundaryStats {
        cos_next: vec![0.0; n],
        cos_window: vec![0.0; n + 1 - k],
        norm_ratio: vec![0.0; n],
    };
    let mut tokens = 0usize;
    for toks in samples {
        let layout = evopress_core::model::Layout {
            batch: 1,
            seq: toks.len(),
            pos0: 0,
        };
        let mut states = vec![model.embed(toks)?];
        for b in 0..n {
            let mut h = states[b].clone();
            model.block_forward(dev, b, &mut h, layout, BlockPlan::FULL, None);
            states.push(h);
        }
        for t in 0..toks.len() {
            let at = |i: usize| &states[i][t * hsz..(t + 1) * hsz];
            for i in 0..n {
                s.cos_next[i] += cosine(at(i), at(i + 1));
                s.norm_ratio[i] += relative_update(at(i), at(i + 1));
            }
            for (start, c) in s.cos_window.iter_mut().enumerate() {
                *c += cosine(at(start), at(start + k));
            }
        }
        tokens += toks.len();
    }
    for v in [&mut s.cos_next, &mut s.cos_window, &mut s.norm_ratio] {
        v.iter_mut().for_each(|x| *x /= tokens as f64);
    }
    Ok(s)
}

/// Indices of the `k` smallest scores (ties to the lower index).
fn k_smallest(scores: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// A baseline's choice and the per-candidate scores it was made from (lower = dropped first).
pub struct BaselineResult {
    pub config: DropMask,
    pub scores: Vec<f64>,
}

/// Runs a baseline dropping `k` whole blocks, scoring on `cal`'s samples.
pub fn run<D: Device>(
    model: &Model,
    dev: &D,
    cal: &Calibration,
    method: Method,
    k: usize,
) -> Result<BaselineResult> {
    let n = model.layers.len();
    if k > n {
        return Err(Error::Invalid(format!("cannot drop {k} of {n} blocks")));
    }
    let (scores, chosen) = match method {
        Method::Cosine | Method::NormRatio | Method::WindowCosine => {
            let s = boundary_stats(model, dev, &cal.samples, k.max(1))?;
            match method {
                Method::Cosine => {
                    let neg: Vec<f64> = s.cos_next.iter().map(|c| -c).collect();
                    let chosen = k_smallest(&neg, k);
                    (neg, chosen)
                }
                Method::NormRatio => {
                    let chosen = k_smallest(&s.norm_ratio, k);
                    (s.norm_ratio, chosen)
                }
                _ => {
                    let neg: Vec<f64> = s.cos_window.iter().map(|c| -c).collect();
                    let start = if k == 0 { 0 } else { k_smallest(&neg, 1)[0] };
                    (neg, (start..start + k).collect())
                }
            }
        }
        Method::Perplexity | Method::Kl => {
            if (method == Method::Perplexity)
                != (cal.kind == evopress_core::fitness::FitnessKind::Ppl)
            {
                return Err(Error::Invalid(format!(
                    "baseline `{}` needs calibration targets of the matching fitness",
                    method.name()
                )));
            }
            let scores = single_block_scores(model, dev, cal)?;
            let chosen = k_smallest(&scores, k);
            (scores, chosen)
        }
    };
    Ok(BaselineResult {
        config: whole_blocks(n, &chosen),
        scores,
    })
}

/// Every calibration sample, whole.
pub fn all_slices(cal: &Calibration) -> Vec<Slice> {
    cal.samples
        .iter()
        .enumerate()
        .map(|(i, s)| Slice {
            sample: i,
            tokens: 0..s.len(),
        })
        .collect()
}

/// Fitness with each block alone dropped, from block i on (the prefix is cached).
fn single_block_scores<D: Device>(model: &Model, dev: &D, cal: &Calibration) -> Result<Vec<f64>> {
    let n = model.layers.len();
    let dense = vec![BlockPlan::FULL; n];
    let cache = StageCache::build(model, dev, cal, all_slices(cal), &dense, usize::MAX)?;
    (0..n)
        .map(|i| {
            let mut plan = dense.clone();
            plan[i] = BlockPlan {
                attn: false,
                mlp: false,
            };
            cache.evaluate(model, dev, cal, &plan, i)
        })
        .collect()
}

/// Brute force over every set of `k` whole blocks among `legal`, by the
/// calibration fitness. Returns the best configuration and its fitness.
pub fn brute_force<D: Device>(
    model: &Model,
    dev: &D,
    cal: &Calibration,
    legal: &[usize],
    k: usize,
    mut progress: impl FnMut(usize, usize),
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
    let cache = StageCache::build(model, dev, cal, all_slices(cal), &dense, usize::MAX)?;
    let mut best: Option<(DropMask, f64)> = None;
    for (i, blocks) in combos.iter().enumerate() {
        let c = whole_blocks(n, blocks);
        let first = blocks.iter().copied().min().unwrap_or(n);
        let f = cache.evaluate(model, dev, cal, &crate::drop_config::plan(&c), first)?;
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
    fn k_smallest_breaks_ties_by_index() {
        assert_eq!(k_smallest(&[0.5, 0.1, 0.1, 0.9], 2), vec![1, 2]);
    }
}
