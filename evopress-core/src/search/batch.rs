//! The calibration tokens of one selection stage (docs/search.md).

use rand::Rng;
use std::ops::Range;

/// Tokens `tokens` of calibration sample `sample`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSlice {
    pub sample: usize,
    pub tokens: Range<usize>,
}

/// The tokens every candidate of a stage is scored on: whole samples, the last one possibly
/// cut short, each sample at most once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenBatch {
    pub slices: Vec<TokenSlice>,
}

impl TokenBatch {
    pub fn token_count(&self) -> usize {
        self.slices.iter().map(|s| s.tokens.len()).sum()
    }
}

/// Exactly `tokens` tokens from samples drawn uniformly without replacement, the last one
/// truncated. The caller guarantees `tokens <= sample_lens.iter().sum()`.
pub fn sample_batch(sample_lens: &[usize], tokens: usize, rng: &mut impl Rng) -> TokenBatch {
    let mut order: Vec<usize> = (0..sample_lens.len()).collect();
    let mut batch = TokenBatch::default();
    let mut missing = tokens;
    // A partial Fisher-Yates shuffle: draw i-th sample uniformly among those not drawn yet.
    for drawn in 0..order.len() {
        if missing == 0 {
            break;
        }
        let pick = rng.gen_range(drawn..order.len());
        order.swap(drawn, pick);
        let sample = order[drawn];
        let taken = sample_lens[sample].min(missing);
        if taken > 0 {
            batch.slices.push(TokenSlice {
                sample,
                tokens: 0..taken,
            });
            missing -= taken;
        }
    }
    assert_eq!(missing, 0, "fewer calibration tokens than a stage asks for");
    batch
}
