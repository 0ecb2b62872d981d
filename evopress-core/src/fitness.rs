//! Fitness of a compressed model against the dense one (lower is better):
//!
//! - `kl`: KL(dense || candidate) per position over the full vocabulary, averaged per token
//!   (the original's `F.kl_div(log q, log p, log_target=True, reduction="batchmean")`);
//! - `topk_kl`: the same over the dense model's top-k tokens only, both distributions
//!   renormalised over that set (docs/perplexity-protocol.md);
//! - `ppl`: the candidate's perplexity (mean NLL; no dense targets needed).
//!
//! Dense targets are computed once per run and stored compactly: full logits in bf16 (half
//! the original's fp32) or the top-k (value, index) pairs. Every sample scores its positions
//! `0..len-1` (the last position has no next token), as the original does.

use crate::error::{Error, Result};
use evopress_kernels::cpu::reduce;
use half::bf16;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum FitnessKind {
    Kl,
    TopkKl { k: usize },
    Ppl,
}

/// The dense model's outputs on the calibration samples, in the form the fitness needs.
pub enum DenseTargets {
    /// Per sample, `[len - 1, vocab]` logits in bf16.
    Full {
        vocab: usize,
        logits: Vec<Vec<bf16>>,
    },
    /// Per sample, `[len - 1, k]` top logits (descending) and their token ids.
    TopK {
        k: usize,
        values: Vec<Vec<f32>>,
        ids: Vec<Vec<u32>>,
    },
    /// Perplexity needs only the tokens.
    None,
}

impl FitnessKind {
    /// Checks the kind against the model's vocabulary: top-k KL needs `1 <= k <= vocab`
    /// (the `k` of a `[fitness]` table). Called where the kind meets a model, before any
    /// target is computed.
    pub fn validate(&self, vocab: usize) -> Result<()> {
        match *self {
            FitnessKind::TopkKl { k } if k == 0 || k > vocab => Err(Error::Invalid(format!(
                "fitness `topk_kl`: key `k` = {k}, expected 1..={vocab}: top-k KL keeps the \
                 dense model's k most likely of its {vocab} tokens"
            ))),
            _ => Ok(()),
        }
    }

    /// Bytes the dense targets will take for `scored_positions` positions: checked against a
    /// cap before anything is computed, so an oversized run is refused up front.
    pub fn target_bytes(&self, scored_positions: usize, vocab: usize) -> usize {
        match self {
            FitnessKind::Kl => scored_positions * vocab * 2,
            FitnessKind::TopkKl { k } => scored_positions * k * 8,
            FitnessKind::Ppl => 0,
        }
    }

    /// Refuses target storage larger than `cap_bytes`, saying what would fit.
    pub fn check_target_memory(
        &self,
        scored_positions: usize,
        vocab: usize,
        cap_bytes: usize,
    ) -> Result<()> {
        let need = self.target_bytes(scored_positions, vocab);
        if need > cap_bytes {
            return Err(Error::Invalid(format!(
                "dense targets for {scored_positions} positions x {vocab} vocabulary need {:.2} GB, \
                 over the cap of {:.2} GB (fitness.max_target_gb): use fewer calibration tokens, \
                 `topk_kl`, or raise the cap",
                need as f64 / 1e9,
                cap_bytes as f64 / 1e9
            )));
        }
        Ok(())
    }
}

impl DenseTargets {
    pub fn empty(kind: FitnessKind, vocab: usize) -> Self {
        match kind {
            FitnessKind::Kl => DenseTargets::Full {
                vocab,
                logits: Vec::new(),
            },
            FitnessKind::TopkKl { k } => DenseTargets::TopK {
                k,
                values: Vec::new(),
                ids: Vec::new(),
            },
            FitnessKind::Ppl => DenseTargets::None,
        }
    }

    /// Appends one sample's dense logits `[positions, vocab]` (positions = len - 1).
    pub fn push(&mut self, logits: &[f32], vocab: usize) {
        match self {
            DenseTargets::Full { logits: all, .. } => {
                let mut v = vec![bf16::ZERO; logits.len()];
                use half::slice::HalfFloatSliceExt;
                v.convert_from_f32_slice(logits);
                all.push(v);
            }
            DenseTargets::TopK { k, values, ids } => {
                let k = *k;
                let rows: Vec<(Vec<f32>, Vec<u32>)> = logits
                    .par_chunks_exact(vocab)
                    .map(|row| top_k(row, k))
                    .collect();
                values.push(rows.iter().flat_map(|r| r.0.iter().copied()).collect());
                ids.push(rows.iter().flat_map(|r| r.1.iter().copied()).collect());
            }
            DenseTargets::None => {}
        }
    }

    /// Summed fitness over positions `[start, start + rows)` of sample `sample`, whose
    /// candidate logits are `cand[rows, vocab]`; `next` holds the tokens at positions + 1
    /// (used by perplexity). Returns the sum; callers average by token count.
    pub fn score_rows(
        &self,
        sample: usize,
        start: usize,
        cand: &[f32],
        vocab: usize,
        next: &[u32],
    ) -> f64 {
        let rows = cand.len() / vocab;
        match self {
            DenseTargets::Full { logits, .. } => {
                let mut p = vec![0f32; rows * vocab];
                use half::slice::HalfFloatSliceExt;
                logits[sample][start * vocab..(start + rows) * vocab].convert_to_f32_slice(&mut p);
                reduce::kl_rows(&p, cand, vocab)
            }
            DenseTargets::TopK { k, values, ids } => {
                let (vals, ids) = (&values[sample], &ids[sample]);
                (0..rows)
                    .into_par_iter()
                    .map(|r| {
                        let at = (start + r) * k;
                        let q: Vec<f32> = ids[at..at + k]
                            .iter()
                            .map(|&i| cand[r * vocab + i as usize])
                            .collect();
                        kl_row(&vals[at..at + k], &q)
                    })
                    .sum()
            }
            DenseTargets::None => reduce::log_softmax_nll(cand, vocab, next),
        }
    }
}

/// The `k` largest values of `row` (descending) and their indices.
fn top_k(row: &[f32], k: usize) -> (Vec<f32>, Vec<u32>) {
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    let k = k.min(row.len());
    idx.select_nth_unstable_by(k - 1, |&a, &b| row[b as usize].total_cmp(&row[a as usize]));
    idx.truncate(k);
    idx.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
    (idx.iter().map(|&i| row[i as usize]).collect(), idx)
}

/// KL(softmax(p) || softmax(q)) of two logit vectors over the same support, in f64.
fn kl_row(p: &[f32], q: &[f32]) -> f64 {
    let lse = |v: &[f32]| {
        let m = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        m + v.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()
    };
    let (lp, lq) = (lse(p), lse(q));
    p.iter()
        .zip(q)
        .map(|(&a, &b)| {
            let la = a as f64 - lp;
            la.exp() * (la - (b as f64 - lq))
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topk_kl_is_zero_for_identical_logits_and_positive_otherwise() {
        let vocab = 50;
        let a: Vec<f32> = (0..2 * vocab)
            .map(|i| ((i * 37) % 11) as f32 * 0.3)
            .collect();
        let mut t = DenseTargets::empty(FitnessKind::TopkKl { k: 8 }, vocab);
        t.push(&a, vocab);
        assert!(t.score_rows(0, 0, &a, vocab, &[0, 0]).abs() < 1e-9);
        let b: Vec<f32> = a
            .iter()
            .enumerate()
            .map(|(i, x)| x + (i % 3) as f32 * 0.1)
            .collect();
        assert!(t.score_rows(0, 0, &b, vocab, &[0, 0]) > 1e-6);
    }

    #[test]
    fn top_k_orders_descending() {
        let (v, i) = top_k(&[0.1, 3.0, -1.0, 2.0], 2);
        assert_eq!(i, vec![1, 3]);
        assert_eq!(v, vec![3.0, 2.0]);
    }

    #[test]
    fn topk_outside_the_vocabulary_is_rejected() {
        for k in [0, 51] {
            let msg = FitnessKind::TopkKl { k }
                .validate(50)
                .unwrap_err()
                .to_string();
            assert!(msg.contains("`k`") && msg.contains("1..=50"), "{msg}");
        }
        FitnessKind::TopkKl { k: 50 }.validate(50).unwrap();
        FitnessKind::Kl.validate(50).unwrap();
    }

    #[test]
    fn memory_cap_is_enforced() {
        let err = FitnessKind::Kl
            .check_target_memory(1000, 50_000, 1_000_000)
            .unwrap_err();
        assert!(err.to_string().contains("topk_kl"), "{err}");
        FitnessKind::TopkKl { k: 10 }
            .check_target_memory(1000, 50_000, 1_000_000)
            .unwrap();
    }
}
