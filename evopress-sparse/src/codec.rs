//! Compact storage of one sparse variant: a bitmask saying which weights are kept, plus the kept
//! values in row-major order.
//!
//! ```text
//!   mask:   1 bit per weight, row-major; each row starts on a fresh u64 word (bit c%64 of word
//!           c/64 is column c), padding bits are 0
//!   values: the non-zero weights in row-major order, as f16, bf16 or f32
//! ```
//!
//! Cost relative to a dense f16 tensor at sparsity p (f16 values): `1/16 + (1 - p)`. Below
//! p = 1/16 the mask costs more than it saves, so such variants are stored dense (no mask).
//!
//! Rows decode independently (an index of where each row's values start is rebuilt from the mask,
//! not stored), so a consumer can stream a matrix in row blocks with [`Encoded::decode_rows`].
//!
//! The format (validation, row decoding) is owned by [`evopress_kernels::weight::masked`], whose
//! matmul multiplies it directly: an [`Encoded`] wraps a [`MaskedMatrix`] and
//! [`Encoded::weight`] hands it to the kernels as a [`Weight`].

use std::ops::Range;

use evopress_kernels::{Buf, MaskedMatrix, MaskedValues, Weight, WeightError};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use crate::{check_shape, SparseError};

/// The type the kept values are stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    F16,
    Bf16,
    F32,
}

impl ValueType {
    /// Bytes per stored value.
    pub fn size(self) -> usize {
        match self {
            ValueType::F16 | ValueType::Bf16 => 2,
            ValueType::F32 => 4,
        }
    }
}

/// The kept values, in their storage type.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
    F32(Vec<f32>),
}

impl Values {
    fn from_f32(kept: &[f32], ty: ValueType) -> Self {
        match ty {
            ValueType::F16 => {
                let mut v = vec![f16::ZERO; kept.len()];
                v.convert_from_f32_slice(kept);
                Values::F16(v)
            }
            ValueType::Bf16 => {
                let mut v = vec![bf16::ZERO; kept.len()];
                v.convert_from_f32_slice(kept);
                Values::Bf16(v)
            }
            ValueType::F32 => Values::F32(kept.to_vec()),
        }
    }

    /// Number of stored values.
    pub fn len(&self) -> usize {
        match self {
            Values::F16(v) => v.len(),
            Values::Bf16(v) => v.len(),
            Values::F32(v) => v.len(),
        }
    }

    /// True when no value is stored (an all-zero variant).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The storage type.
    pub fn value_type(&self) -> ValueType {
        match self {
            Values::F16(_) => ValueType::F16,
            Values::Bf16(_) => ValueType::Bf16,
            Values::F32(_) => ValueType::F32,
        }
    }

    /// The kernels' form of the values (owned buffers).
    fn into_masked(self) -> MaskedValues {
        match self {
            Values::F16(v) => MaskedValues::F16(Buf::owned(v)),
            Values::Bf16(v) => MaskedValues::BF16(Buf::owned(v)),
            Values::F32(v) => MaskedValues::F32(Buf::owned(v)),
        }
    }
}

/// One encoded `[rows, cols]` matrix (the kernels' [`MaskedMatrix`], built and checked here).
#[derive(Clone, Debug)]
pub struct Encoded {
    inner: MaskedMatrix,
}

impl PartialEq for Encoded {
    fn eq(&self, other: &Self) -> bool {
        let values_eq = match (self.inner.values(), other.inner.values()) {
            (MaskedValues::F16(a), MaskedValues::F16(b)) => a.as_slice() == b.as_slice(),
            (MaskedValues::BF16(a), MaskedValues::BF16(b)) => a.as_slice() == b.as_slice(),
            (MaskedValues::F32(a), MaskedValues::F32(b)) => a.as_slice() == b.as_slice(),
            _ => false,
        };
        self.shape() == other.shape() && self.mask() == other.mask() && values_eq
    }
}

/// Encodes `w` (`[rows, cols]`, row-major): zeros go to the mask, everything else to the values.
/// A variant too dense for the mask to pay off (sparsity below 1/16) is stored dense.
pub fn encode(w: &[f32], rows: usize, cols: usize, ty: ValueType) -> Result<Encoded, SparseError> {
    check_shape("encoded weight", w, rows, cols)?;
    let nnz = w.iter().filter(|&&x| x != 0.0).count();
    let words = cols.div_ceil(64);
    let sparse_bytes = rows * words * 8 + nnz * ty.size();
    if sparse_bytes >= w.len() * ty.size() {
        return Encoded::from_parts(rows, cols, None, Values::from_f32(w, ty));
    }
    let mut mask = vec![0u64; rows * words];
    let mut kept = Vec::with_capacity(nnz);
    for (row, mask_row) in w.chunks_exact(cols).zip(mask.chunks_exact_mut(words)) {
        for (c, &x) in row.iter().enumerate() {
            if x != 0.0 {
                mask_row[c / 64] |= 1 << (c % 64);
                kept.push(x);
            }
        }
    }
    Encoded::from_parts(rows, cols, Some(mask), Values::from_f32(&kept, ty))
}

/// Decodes the whole matrix into `out` (`[rows, cols]`), rows in parallel.
pub fn decode_into(enc: &Encoded, out: &mut [f32]) -> Result<(), SparseError> {
    let (rows, cols) = enc.shape();
    check_shape("decode output", out, rows, cols)?;
    let rows_per_task = (4096 / cols.max(1)).max(1);
    out.par_chunks_mut(rows_per_task * cols.max(1))
        .enumerate()
        .for_each(|(t, chunk)| enc.inner.decode_rows_into(t * rows_per_task, chunk));
    Ok(())
}

impl Encoded {
    /// Reassembles an encoded matrix from its stored parts (as a store reads them back), checking
    /// that they agree: mask length, zero padding bits, and one value per set bit.
    pub fn from_parts(
        rows: usize,
        cols: usize,
        mask: Option<Vec<u64>>,
        values: Values,
    ) -> Result<Self, SparseError> {
        let inner = MaskedMatrix::new(rows, cols, mask.map(Buf::owned), values.into_masked())
            .map_err(|e| match e {
                WeightError::Layout(msg) => SparseError::Codec(msg),
                e => SparseError::Codec(e.to_string()),
            })?;
        Ok(Self { inner })
    }

    /// `(rows, cols)` of the matrix.
    pub fn shape(&self) -> (usize, usize) {
        (self.inner.rows(), self.inner.cols())
    }

    /// The mask words (`None` for a dense variant), for a store to persist.
    pub fn mask(&self) -> Option<&[u64]> {
        self.inner.mask()
    }

    /// The kept values, for a store to persist.
    pub fn values(&self) -> &MaskedValues {
        self.inner.values()
    }

    /// Number of stored values (all weights when dense).
    pub fn nnz(&self) -> usize {
        self.inner.nnz()
    }

    /// Bytes a store needs for this variant: mask plus values (the row index is rebuilt on load).
    pub fn stored_bytes(&self) -> usize {
        self.inner.bytes_of_rows(0, self.inner.rows())
    }

    /// The matrix as a kernels [`Weight`] (shares the buffers), which `Device::matmul_wt`
    /// multiplies straight from the mask and values.
    pub fn weight(&self) -> Weight {
        Weight::from_masked(self.inner.clone())
    }

    /// As [`Encoded::weight`], by value.
    pub fn into_weight(self) -> Weight {
        Weight::from_masked(self.inner)
    }

    /// The kernels' matrix.
    pub fn masked(&self) -> &MaskedMatrix {
        &self.inner
    }

    /// Decodes rows `rows` into `out` (`[rows.len(), cols]`), for streaming a matrix in pieces.
    pub fn decode_rows(&self, rows: Range<usize>, out: &mut [f32]) -> Result<(), SparseError> {
        let (n, cols) = self.shape();
        if rows.start > rows.end || rows.end > n {
            return Err(SparseError::Codec(format!(
                "rows {rows:?} out of range for a matrix with {n} rows"
            )));
        }
        check_shape("decode output", out, rows.len(), cols)?;
        self.inner.decode_rows_into(rows.start, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_sparse(rows: usize, cols: usize, sparsity: f64, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..rows * cols)
            .map(|_| {
                if rng.gen_bool(sparsity) {
                    0.0
                } else {
                    rng.gen_range(-0.2f32..0.2)
                }
            })
            .collect()
    }

    fn rounded(w: &[f32], ty: ValueType) -> Vec<f32> {
        w.iter()
            .map(|&x| match ty {
                ValueType::F16 => f16::from_f32(x).to_f32(),
                ValueType::Bf16 => bf16::from_f32(x).to_f32(),
                ValueType::F32 => x,
            })
            .collect()
    }

    #[test]
    fn round_trips_exactly_up_to_value_rounding() {
        for (rows, cols) in [(7, 576), (5, 100), (3, 64), (1, 1)] {
            for p in [0.0, 0.03, 0.5, 0.9, 1.0] {
                for ty in [ValueType::F16, ValueType::Bf16, ValueType::F32] {
                    let w = random_sparse(rows, cols, p, 7);
                    let enc = encode(&w, rows, cols, ty).unwrap();
                    let mut out = vec![f32::NAN; rows * cols];
                    decode_into(&enc, &mut out).unwrap();
                    let want = rounded(&w, ty);
                    let same = out
                        .iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "[{rows}, {cols}] p = {p} {ty:?}");
                }
            }
        }
    }

    #[test]
    fn decode_rows_matches_the_full_decode() {
        let (rows, cols) = (37, 200);
        let w = random_sparse(rows, cols, 0.6, 3);
        let enc = encode(&w, rows, cols, ValueType::F16).unwrap();
        let mut full = vec![0.0; rows * cols];
        decode_into(&enc, &mut full).unwrap();
        for range in [0..37, 5..6, 10..30, 36..37, 4..4] {
            let mut part = vec![f32::NAN; range.len() * cols];
            enc.decode_rows(range.clone(), &mut part).unwrap();
            assert_eq!(part, full[range.start * cols..range.end * cols]);
        }
        assert!(enc.decode_rows(30..38, &mut [0.0; 8 * 200]).is_err());
    }

    #[test]
    fn size_is_mask_plus_kept_values_or_dense() {
        let (rows, cols) = (64, 576);
        let dense_f16 = rows * cols * 2;
        let w = random_sparse(rows, cols, 0.5, 1);
        let enc = encode(&w, rows, cols, ValueType::F16).unwrap();
        assert_eq!(enc.stored_bytes(), rows * cols / 8 + enc.nnz() * 2);
        let ratio = enc.stored_bytes() as f64 / dense_f16 as f64;
        assert!((ratio - 0.5625).abs() < 0.01, "{ratio}");
        let dense = encode(
            &random_sparse(rows, cols, 0.01, 1),
            rows,
            cols,
            ValueType::F16,
        )
        .unwrap();
        assert!(dense.mask().is_none());
        assert_eq!(dense.stored_bytes(), dense_f16);
    }

    #[test]
    fn from_parts_rejects_inconsistent_parts() {
        let w = random_sparse(4, 70, 0.5, 9);
        let enc = encode(&w, 4, 70, ValueType::F32).unwrap();
        let mask = enc.mask().unwrap().to_vec();
        let MaskedValues::F32(values) = enc.values() else {
            unreachable!()
        };
        let values = values.as_slice().to_vec();
        let again = Encoded::from_parts(4, 70, Some(mask.clone()), Values::F32(values.clone()));
        assert_eq!(again.unwrap(), enc);
        let mut short = values.clone();
        short.pop();
        assert!(Encoded::from_parts(4, 70, Some(mask.clone()), Values::F32(short)).is_err());
        let mut padded = mask.clone();
        padded[1] |= 1 << 63;
        assert!(Encoded::from_parts(4, 70, Some(padded), Values::F32(values.clone())).is_err());
        assert!(Encoded::from_parts(4, 70, Some(mask[1..].to_vec()), Values::F32(values)).is_err());
    }
}
