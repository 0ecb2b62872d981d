//! The sparsity level scheme of the original EvoPress (docs/level-schemes.md).
//!
//! The search needs levels that can be traded between *any* two layers without changing the
//! global sparsity. The original gets this by measuring a level step in weights, not in percent:
//! one step up or down changes a layer's number of zeros by exactly `weights_diff` weights, so
//!
//! ```text
//!   sparsity(layer, l) = s + l * weights_diff / numel(layer)
//!   zeros(layer, l)    = s * numel(layer) + l * weights_diff
//! ```
//!
//! and any assignment with `sum(l) == 0` has exactly `s * sum(numel)` zeros in total: a
//! level-switch mutation (one layer +1, another -1) keeps the budget exact. Level 0 is the uniform
//! sparsity `s`. Each layer offers at most `num_levels` steps on either side, fewer where the
//! sparsity would leave [0, 1]:
//!
//! ```text
//!   step      = weights_diff / numel
//!   min_level = min(s // step, num_levels)          (levels -min_level ..= +max_level)
//!   max_level = min((1 - s) // step, num_levels)
//! ```
//!
//! `//` is Python's float floor division, which is not always `floor(a / b)` (`1.0 // 0.1` is 9,
//! while `1.0 / 0.1` rounds to exactly 10); [`py_floordiv`] reproduces it so the ranges match the
//! original bit for bit.

use std::ops::RangeInclusive;

use crate::SparseError;

/// The global sparsity target and the size of one level step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LevelScheme {
    /// Target average sparsity `s` (fraction of zeros), also the sparsity of level 0.
    pub sparsity: f64,
    /// Weights zeroed (or restored) per level step, in every layer (`--weights_diff`).
    pub weights_diff: u64,
    /// Maximum number of steps on either side of level 0 (`--num_levels`, default 8).
    pub num_levels: u32,
}

impl LevelScheme {
    /// A scheme with an explicit step (the original's scripts use `weights_diff = 1_000_000`,
    /// `num_levels = 8`).
    pub fn new(sparsity: f64, weights_diff: u64, num_levels: u32) -> Result<Self, SparseError> {
        if !(0.0..=1.0).contains(&sparsity) {
            return Err(SparseError::Sparsity(sparsity));
        }
        if weights_diff == 0 {
            return Err(SparseError::Levels(
                "weights_diff = 0: it must be at least 1 (the number of weights one level step \
                 zeroes or restores in every layer)"
                    .into(),
            ));
        }
        Ok(Self {
            sparsity,
            weights_diff,
            num_levels,
        })
    }

    /// The original's default step when `--weights_diff` is not given:
    /// `int(0.5 * min(s, 1 - s) / num_levels * hidden_size^2)`, i.e. `num_levels` steps cover half
    /// the room to 0 or 1 of a `hidden x hidden` layer.
    pub fn with_default_weights_diff(
        sparsity: f64,
        num_levels: u32,
        hidden_size: usize,
    ) -> Result<Self, SparseError> {
        if num_levels == 0 {
            return Err(SparseError::Levels("num_levels must be positive".into()));
        }
        let hidden = hidden_size as f64;
        let wd = 0.5 * sparsity.min(1.0 - sparsity) / num_levels as f64 * hidden * hidden;
        Self::new(sparsity, wd as u64, num_levels)
    }

    /// The scheme a database config asks for: an explicit `weights_diff`, or the original's
    /// default for a model of `hidden_size`.
    pub fn configured(
        sparsity: f64,
        weights_diff: Option<u64>,
        num_levels: u32,
        hidden_size: usize,
    ) -> Result<Self, SparseError> {
        match weights_diff {
            Some(wd) => Self::new(sparsity, wd, num_levels),
            None => Self::with_default_weights_diff(sparsity, num_levels, hidden_size),
        }
    }

    /// Sparsity change per level step for a layer with `numel` weights.
    pub fn step(&self, numel: usize) -> f64 {
        self.weights_diff as f64 / numel as f64
    }

    /// The levels a layer with `numel` weights offers: `-min_level ..= max_level`.
    pub fn range(&self, numel: usize) -> RangeInclusive<i32> {
        let step = self.step(numel);
        let cap = self.num_levels as f64;
        let min_level = py_floordiv(self.sparsity, step).min(cap);
        let max_level = py_floordiv(1.0 - self.sparsity, step).min(cap);
        -(min_level as i32)..=max_level as i32
    }

    /// Sparsity of `level` for a layer with `numel` weights, computed as the original does
    /// (`s + l * wd / numel`, the product taken in integers).
    pub fn sparsity_at(&self, numel: usize, level: i32) -> f64 {
        self.sparsity + (level as i64 * self.weights_diff as i64) as f64 / numel as f64
    }

    /// Every level of a layer with its sparsity, in increasing order.
    pub fn levels(&self, numel: usize) -> Vec<(i32, f64)> {
        self.range(numel)
            .map(|l| (l, self.sparsity_at(numel, l)))
            .collect()
    }
}

/// Python's `a // b` for floats (CPython `float_floor_div`): the quotient is built from `fmod`, so
/// it is exact where `floor(a / b)` can be off by one after `a / b` rounds up to an integer.
pub fn py_floordiv(a: f64, b: f64) -> f64 {
    let m = a % b; // C fmod: exact, carries the sign of a
    let mut div = (a - m) / b;
    if m != 0.0 && ((b < 0.0) != (m < 0.0)) {
        div -= 1.0;
    }
    if div == 0.0 {
        return 0.0_f64.copysign(a / b);
    }
    let mut floordiv = div.floor();
    if div - floordiv > 0.5 {
        floordiv += 1.0;
    }
    floordiv
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The original's level ranges (wd = 1e6, L = 8): (layer, numel, ranges at s = .5, .6, .7).
    #[test]
    fn matches_spec_level_range_table() {
        type Row = (&'static str, usize, [(i32, i32); 3]);
        let table: [Row; 8] = [
            ("Llama q,k,v,o", 4096 * 4096, [(-8, 8), (-8, 6), (-8, 5)]),
            ("Llama-3 k,v", 1024 * 4096, [(-2, 2), (-2, 1), (-2, 1)]),
            ("Llama-2 MLP", 4096 * 11008, [(-8, 8), (-8, 8), (-8, 8)]),
            ("Llama-3 MLP", 4096 * 14336, [(-8, 8), (-8, 8), (-8, 8)]),
            ("Phi-3 qkv", 7680 * 5120, [(-8, 8), (-8, 8), (-8, 8)]),
            ("Phi-3 o", 5120 * 5120, [(-8, 8), (-8, 8), (-8, 7)]),
            (
                "Phi-3 gate_up",
                2 * 17920 * 5120,
                [(-8, 8), (-8, 8), (-8, 8)],
            ),
            ("Phi-3 down", 17920 * 5120, [(-8, 8), (-8, 8), (-8, 8)]),
        ];
        for (name, numel, ranges) in table {
            for (s, (lo, hi)) in [0.5, 0.6, 0.7].into_iter().zip(ranges) {
                let scheme = LevelScheme::new(s, 1_000_000, 8).unwrap();
                assert_eq!(scheme.range(numel), lo..=hi, "{name} at s = {s}");
            }
        }
    }

    #[test]
    fn spec_example_llama3_k_proj_at_70_percent() {
        let scheme = LevelScheme::new(0.7, 1_000_000, 8).unwrap();
        let got: Vec<f64> = scheme
            .levels(1024 * 4096)
            .into_iter()
            .map(|(_, s)| (s * 1000.0).round() / 1000.0)
            .collect();
        assert_eq!(got, [0.223, 0.462, 0.7, 0.938]);
    }

    #[test]
    fn a_level_step_moves_the_same_number_of_zeros_in_every_layer() {
        let scheme = LevelScheme::new(0.5, 10_368, 8).unwrap();
        for numel in [110_592, 331_776, 884_736] {
            for (l, s) in scheme.levels(numel) {
                let zeros = s * numel as f64;
                let expected = 0.5 * numel as f64 + l as f64 * 10_368.0;
                assert!((zeros - expected).abs() < 1e-6, "numel {numel} level {l}");
            }
        }
    }

    #[test]
    fn default_weights_diff_follows_the_original_formula() {
        // SmolLM2-135M: hidden 576, s = 0.5, L = 8: int(0.5 * 0.5 / 8 * 576^2) = 10368.
        let scheme = LevelScheme::with_default_weights_diff(0.5, 8, 576).unwrap();
        assert_eq!(scheme.weights_diff, 10_368);
        // k_proj [192, 576]: step 0.09375, 0.5 // 0.09375 = 5.
        assert_eq!(scheme.range(192 * 576), -5..=5);
    }

    #[test]
    fn floordiv_is_pythons() {
        assert_eq!(py_floordiv(1.0, 0.1), 9.0);
        assert_eq!(py_floordiv(0.5, 0.25), 2.0);
        assert_eq!(py_floordiv(7.0, 2.0), 3.0);
        assert_eq!(py_floordiv(-7.0, 2.0), -4.0);
        assert_eq!(py_floordiv(0.0, 0.3), 0.0);
    }

    #[test]
    fn rejects_bad_parameters() {
        assert!(LevelScheme::new(1.5, 1, 8).is_err());
        assert!(LevelScheme::new(0.5, 0, 8).is_err());
        assert!(LevelScheme::with_default_weights_diff(0.5, 0, 576).is_err());
    }
}
