//! The levels of a joint database (docs/joint-search.md): each linear layer is stored at every
//! (sparsity, bit width) pair the database asks for. A pair's level id in the store is
//! `1000·sparsity·10 + bits` (sparsity in thousandths): `4` is dense 4-bit, `5004` is 50 %
//! sparse at 4 bits.

use evopress_core::{Error, Result};
use std::fmt;

/// One stored combination: a fraction of a layer's weights pruned, the rest quantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Combo {
    /// Pruned weights in thousandths (0..1000).
    pub per_mille: u16,
    pub bits: u8,
}

impl Combo {
    /// The combination of `sparsity` (a multiple of 0.001 in `[0, 1)`) and `bits` (2..=8).
    pub fn new(sparsity: f64, bits: u8) -> Result<Self> {
        let per_mille = (sparsity * 1000.0).round();
        if !(0.0..1000.0).contains(&per_mille) || (per_mille / 1000.0 - sparsity).abs() > 1e-9 {
            return Err(Error::Invalid(format!(
                "sparsity {sparsity} must be a multiple of 0.001 in [0, 1)"
            )));
        }
        if !(2..=8).contains(&bits) {
            return Err(Error::Invalid(format!("bit width {bits} is not in 2..=8")));
        }
        Ok(Combo {
            per_mille: per_mille as u16,
            bits,
        })
    }

    pub fn sparsity(self) -> f64 {
        self.per_mille as f64 / 1000.0
    }

    /// The level id the store and the search's result files use.
    pub fn id(self) -> i32 {
        self.per_mille as i32 * 10 + self.bits as i32
    }

    /// The combination a level id stands for.
    pub fn from_id(id: i32) -> Result<Self> {
        let bad = || Error::Invalid(format!("level id {id} is not 10·(sparsity in ‰) + bits"));
        if id < 0 {
            return Err(bad());
        }
        let bits = (id % 10) as u8;
        Combo::new((id / 10) as f64 / 1000.0, bits).map_err(|_| bad())
    }

    /// Original columns per quantization group: `kept_per_group` at sparsity 0; otherwise
    /// `kept_per_group / (1 − sparsity)` rounded to a multiple of 32, so that a group holds
    /// about `kept_per_group` kept weights and the grids cost the same per stored weight at
    /// every sparsity.
    pub fn group_columns(self, kept_per_group: usize) -> usize {
        if self.per_mille == 0 {
            return kept_per_group;
        }
        let cols = kept_per_group as f64 / (1.0 - self.sparsity());
        (((cols / 32.0).round() as usize) * 32).max(32)
    }
}

impl fmt::Display for Combo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.per_mille == 0 {
            write!(f, "{}-bit", self.bits)
        } else {
            write!(
                f,
                "{}% sparse {}-bit",
                self.per_mille as f64 / 10.0,
                self.bits
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_groups_scale_with_density() {
        let c = Combo::new(0.5, 4).unwrap();
        assert_eq!(c.id(), 5004);
        assert_eq!(Combo::from_id(5004).unwrap(), c);
        assert_eq!(Combo::from_id(3).unwrap(), Combo::new(0.0, 3).unwrap());
        assert_eq!(c.group_columns(64), 128);
        assert_eq!(Combo::new(0.0, 2).unwrap().group_columns(64), 64);
        assert_eq!(Combo::new(0.75, 2).unwrap().group_columns(64), 256);
        assert_eq!(Combo::new(0.625, 3).unwrap().group_columns(64), 160);
        assert!(Combo::new(0.3333, 4).is_err());
        assert!(Combo::new(1.0, 4).is_err());
        assert!(Combo::new(0.5, 9).is_err());
        assert!(Combo::from_id(5009).is_err() && Combo::from_id(-4).is_err());
    }
}
