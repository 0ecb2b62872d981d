//! Calibration text the dense model writes itself (docs/calibration.md, "Generated windows").
//!
//! A fitness measured on one domain's text ranks compressions by what matters on that
//! domain: a search calibrated on political prose alone chose a depth configuration that
//! lost to a one-pass heuristic on verse. Windows sampled from the dense model, starting
//! from its BOS token, follow the model's own distribution over everything it was trained
//! on, so mixing some in keeps the fitness from forgetting the domains the files lack.
//!
//! Sequences are decoded in lockstep (every weight read once per step for all of them), and
//! each window draws from its own random stream, so a window's tokens do not depend on how
//! many are decoded together.

use crate::error::{Error, Result};
use crate::model::{BlockPlan, KvCache, Model};
use evopress_kernels::Device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The file a run keeps its generated windows in, in its output directory (or a database
/// build in its store), so a resumed run scores the same tokens.
pub const KEPT_FILE: &str = "generated-calibration.json";

/// How many windows to write and how.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Generation {
    pub windows: usize,
    /// Tokens per window, the BOS token included.
    pub seq_len: usize,
    /// Softmax temperature; 1 samples the model's distribution as it is, 0 decodes greedily.
    pub temperature: f64,
    pub seed: u64,
}

/// Sequences decoded together: enough to read each weight once for many tokens, few enough
/// that the logits (`LOCKSTEP x vocab`) stay a few megabytes.
const LOCKSTEP: usize = 32;

/// `g.windows` windows of `g.seq_len` tokens, each `bos` followed by tokens sampled from the
/// dense model. `progress` gets the number of tokens written so far.
pub fn generate_windows<D: Device + ?Sized>(
    model: &Model,
    dev: &D,
    bos: u32,
    g: Generation,
    mut progress: impl FnMut(usize),
) -> Result<Vec<Vec<u32>>> {
    if g.seq_len < 2 {
        return Err(Error::Invalid(format!(
            "generated windows of {} tokens: at least 2 are needed (BOS and one sampled)",
            g.seq_len
        )));
    }
    if !(g.temperature >= 0.0 && g.temperature.is_finite()) {
        return Err(Error::Invalid(format!(
            "generation temperature {} must be a finite number >= 0",
            g.temperature
        )));
    }
    let plan = vec![BlockPlan::FULL; model.layers.len()];
    let vocab = model.vocab_size();
    let mut out = Vec::with_capacity(g.windows);
    for first in (0..g.windows).step_by(LOCKSTEP) {
        let ids: Vec<usize> = (first..g.windows.min(first + LOCKSTEP)).collect();
        let mut rngs: Vec<ChaCha8Rng> = ids
            .iter()
            .map(|&w| {
                let mut rng = ChaCha8Rng::seed_from_u64(g.seed);
                rng.set_stream(w as u64);
                rng
            })
            .collect();
        let mut seqs: Vec<Vec<u32>> = ids.iter().map(|_| vec![bos]).collect();
        let mut caches: Vec<KvCache> = ids
            .iter()
            .map(|_| KvCache::new(model.layers.len()))
            .collect();
        let mut next: Vec<u32> = vec![bos; ids.len()];
        while seqs[0].len() < g.seq_len {
            let logits = model.step_batch(dev, &next, &mut caches, &plan)?;
            for (b, seq) in seqs.iter_mut().enumerate() {
                let row = &logits[b * vocab..(b + 1) * vocab];
                next[b] = sample(row, g.temperature, &mut rngs[b])
                    .ok_or_else(|| Error::non_finite("a generated token's logits", f64::NAN))?
                    as u32;
                seq.push(next[b]);
            }
            progress(out.len() * g.seq_len + seqs.len() * seqs[0].len());
        }
        out.extend(seqs);
    }
    Ok(out)
}

/// An index drawn from `softmax(logits / temperature)` (the largest logit at temperature
/// 0); `None` when a logit is not finite.
pub fn sample(logits: &[f32], temperature: f64, rng: &mut impl Rng) -> Option<usize> {
    if logits.iter().any(|l| !l.is_finite()) {
        return None;
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    if temperature == 0.0 {
        return logits.iter().position(|&l| l as f64 == max);
    }
    let weight = |l: f32| ((l as f64 - max) / temperature).exp();
    let total: f64 = logits.iter().map(|&l| weight(l)).sum();
    let mut left = rng.gen::<f64>() * total;
    for (i, &l) in logits.iter().enumerate() {
        left -= weight(l);
        if left < 0.0 {
            return Some(i);
        }
    }
    // Rounding left a sliver past the last weight: the last token with any weight.
    logits.iter().rposition(|&l| weight(l) > 0.0)
}

/// `files` with `generated` spread evenly among them, in order within each: the first
/// tokens of the calibration set (what baselines and the final tournament score on) hold
/// both kinds in proportion.
pub fn interleave(files: Vec<Vec<u32>>, generated: Vec<Vec<u32>>) -> Vec<Vec<u32>> {
    let (f, g) = (files.len(), generated.len());
    let n = f + g;
    let (mut files, mut generated) = (files.into_iter(), generated.into_iter());
    let mut out = Vec::with_capacity(n);
    let mut taken = 0;
    for i in 0..n {
        // After i + 1 windows, round((i + 1) * g / n) of them are generated ones.
        let due = ((i + 1) * g + n / 2) / n;
        let window = if taken < due {
            taken += 1;
            generated.next()
        } else {
            files.next()
        };
        out.push(window.expect("the counts add up to n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_windows_are_spread_evenly_in_order() {
        let files: Vec<Vec<u32>> = (0..6).map(|i| vec![i]).collect();
        let generated: Vec<Vec<u32>> = (100..103).map(|i| vec![i]).collect();
        let got: Vec<u32> = interleave(files, generated).iter().map(|w| w[0]).collect();
        assert_eq!(got, [0, 100, 1, 2, 101, 3, 4, 102, 5]);
        let only: Vec<u32> = interleave(Vec::new(), vec![vec![7], vec![8]])
            .iter()
            .map(|w| w[0])
            .collect();
        assert_eq!(only, [7, 8]);
    }

    #[test]
    fn sampling_follows_the_tempered_softmax() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let logits = [0.0, 3f32.ln(), -1e30];
        let draws = 20_000;
        let ones = (0..draws)
            .filter(|_| sample(&logits, 1.0, &mut rng) == Some(1))
            .count();
        let share = ones as f64 / draws as f64;
        assert!(
            (share - 0.75).abs() < 0.015,
            "share of the 3x token: {share}"
        );
        // Temperature 2 flattens 1:3 to 1:sqrt(3).
        let ones = (0..draws)
            .filter(|_| sample(&logits, 2.0, &mut rng) == Some(1))
            .count();
        let want = 3f64.sqrt() / (1.0 + 3f64.sqrt());
        let share = ones as f64 / draws as f64;
        assert!(
            (share - want).abs() < 0.015,
            "share at temperature 2: {share}"
        );
        assert_eq!(sample(&logits, 0.0, &mut rng), Some(1));
        assert_eq!(sample(&[1.0, f32::NAN], 1.0, &mut rng), None);
    }
}
