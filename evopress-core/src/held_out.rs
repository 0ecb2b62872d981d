//! Held-out scoring against the dense model: a candidate's perplexity and its mean per-token
//! KL(dense || candidate) on the same windows (docs/gguf-search.md, "KL to the dense model").
//!
//! Full-vocabulary dense logits of every held-out window would not fit (16 windows x 512
//! positions x 49 152 tokens in f32 is 1.6 GB for the demo model, and grows with the
//! vocabulary). What is kept instead is the dense model's final-normed hidden states,
//! `[positions, hidden]` per window (19 MB for the demo model's 16 x 512 x 576): each
//! candidate then pays, per window, its own forward plus the dense LM head on those states,
//! chunk by chunk, never a second pass through the dense blocks. The KL is exact (full
//! vocabulary, f32 logits), unlike the bf16 or top-k targets a search's fitness stores.

use crate::data::NllSum;
use crate::error::{Error, Result};
use crate::model::{BlockPlan, Model};
use evopress_kernels::cpu::reduce;
use evopress_kernels::Device;

/// A candidate's score on held-out windows.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HeldOutScore {
    /// The candidate's summed NLL of every window's tokens but the first.
    pub nll: NllSum,
    /// Σ over the same positions of KL(dense || candidate) of the next-token distributions.
    pub kl_sum: f64,
}

impl HeldOutScore {
    pub fn perplexity(&self) -> f64 {
        self.nll.perplexity()
    }

    /// Mean per-token KL(dense || candidate), in nats.
    pub fn kl(&self) -> f64 {
        self.kl_sum / self.nll.tokens as f64
    }
}

/// The dense model on a set of held-out windows: its final-normed hidden states per window
/// (the dense logits are recomputed from them, per chunk, for each candidate) and its own NLL.
pub struct DenseReference<'m> {
    model: &'m Model,
    windows: Vec<Vec<u32>>,
    states: Vec<Vec<f32>>,
    dense: NllSum,
}

impl<'m> DenseReference<'m> {
    /// Runs the dense `model` once over `windows`, calling `progress` after each.
    pub fn new<D: Device + ?Sized>(
        model: &'m Model,
        dev: &D,
        windows: Vec<Vec<u32>>,
        mut progress: impl FnMut(usize),
    ) -> Result<Self> {
        if windows.is_empty() {
            return Err(Error::Invalid(
                "no held-out windows: a perplexity needs at least one".into(),
            ));
        }
        let plan = vec![BlockPlan::FULL; model.layers.len()];
        let vocab = model.vocab_size();
        let mut states = Vec::with_capacity(windows.len());
        let mut dense = NllSum::default();
        for (i, w) in windows.iter().enumerate() {
            if w.len() < 2 {
                return Err(Error::Invalid(format!(
                    "held-out window {i} has {} tokens: at least 2 are needed to score one",
                    w.len()
                )));
            }
            let hidden = model.hidden_states(dev, w, 1, &plan)?;
            let scored = w.len() - 1;
            let nll = model.sum_over_logits(dev, &hidden, scored, |start, logits| {
                let next = &w[start + 1..start + 1 + logits.len() / vocab];
                reduce::log_softmax_nll(logits, vocab, next)
            });
            if !nll.is_finite() {
                return Err(Error::non_finite(
                    format!("the dense model's NLL on held-out window {i}"),
                    nll,
                ));
            }
            dense.add(NllSum {
                nll,
                tokens: scored,
            });
            states.push(hidden);
            progress(i + 1);
        }
        Ok(DenseReference {
            model,
            windows,
            states,
            dense,
        })
    }

    pub fn windows(&self) -> &[Vec<u32>] {
        &self.windows
    }

    /// The dense model's own NLL on the windows (its KL is 0 by definition).
    pub fn dense_nll(&self) -> NllSum {
        self.dense
    }

    /// Bytes the kept dense states take.
    pub fn state_bytes(&self) -> usize {
        self.states.iter().map(|s| s.len() * 4).sum()
    }

    /// Perplexity and KL to the dense model of `candidate` (with sub-blocks run according to
    /// `plan`), calling `progress` after each window. A non-finite NLL or KL is an error.
    pub fn score<D: Device + ?Sized>(
        &self,
        dev: &D,
        candidate: &Model,
        plan: &[BlockPlan],
        mut progress: impl FnMut(usize),
    ) -> Result<HeldOutScore> {
        let (vocab, h) = (self.model.vocab_size(), self.model.hidden_size());
        if candidate.vocab_size() != vocab || candidate.hidden_size() != h {
            return Err(Error::Invalid(format!(
                "the candidate has vocabulary {} and hidden size {}, the dense model {vocab} \
                 and {h}: a KL needs the same vocabulary and final states",
                candidate.vocab_size(),
                candidate.hidden_size()
            )));
        }
        let mut total = HeldOutScore::default();
        for (i, (w, dense_states)) in self.windows.iter().zip(&self.states).enumerate() {
            let hidden = candidate
                .hidden_states(dev, w, 1, plan)
                .map_err(|e| Error::Invalid(format!("held-out window {i}: {e}")))?;
            let scored = w.len() - 1;
            let mut kl = 0.0;
            let nll = candidate.sum_over_logits(dev, &hidden, scored, |start, logits| {
                let rows = logits.len() / vocab;
                let dense = self
                    .model
                    .lm_head(dev, &dense_states[start * h..(start + rows) * h]);
                kl += reduce::kl_rows(&dense, logits, vocab);
                reduce::log_softmax_nll(logits, vocab, &w[start + 1..start + 1 + rows])
            });
            for (what, value) in [("summed NLL", nll), ("summed KL to the dense model", kl)] {
                if !value.is_finite() {
                    return Err(Error::non_finite(
                        format!("the {what} of held-out window {i}"),
                        value,
                    ));
                }
            }
            total.nll.add(NllSum {
                nll,
                tokens: scored,
            });
            total.kl_sum += kl;
            progress(i + 1);
        }
        Ok(total)
    }
}
