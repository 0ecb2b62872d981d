//! OWL (Outlier-Weighed Layerwise sparsity, docs/baselines.md): blocks with more outlier weights
//! keep more of them. The outlier measure is Wanda's `A_ij = |W_ij| · sqrt(h_j)` (`h` the diagonal
//! of the input Hessian), pooled over all linears of a block:
//!
//! ```text
//!   LOD_b(M) = mean( A > M · mean(A) )                 fraction of outliers in block b
//!   D_b      = 2λ · (LOD_b − min LOD) / (max LOD − min LOD)
//!   s_b      = s − D_b + mean_b(D_b)                   mean over blocks is exactly s
//! ```
//!
//! Every unit of block b is then pruned by SparseGPT at `s_b`. The original sweeps a
//! `λ × M` grid and keeps the variant with the best calibration perplexity.

use crate::{check_shape, SparseError};

/// One linear layer of a block as OWL sees it: its weight and its inputs' squared norms.
pub struct OwlLayer<'a> {
    /// `[rows, cols]` row-major.
    pub weight: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    /// `h_j`, the Hessian's diagonal (`cols` entries).
    pub hessian_diag: &'a [f64],
}

/// The fraction of a block's weights whose Wanda score exceeds `m` times the block's mean score.
pub fn outlier_ratio(layers: &[OwlLayer<'_>], m: f64) -> Result<f64, SparseError> {
    let mut scores = Vec::new();
    for l in layers {
        check_shape("OWL weight", l.weight, l.rows, l.cols)?;
        check_shape("OWL Hessian diagonal", l.hessian_diag, 1, l.cols)?;
        let norms: Vec<f64> = l.hessian_diag.iter().map(|h| h.max(0.0).sqrt()).collect();
        for row in l.weight.chunks_exact(l.cols.max(1)) {
            scores.extend(row.iter().zip(&norms).map(|(&w, n)| w.abs() as f64 * n));
        }
    }
    if scores.is_empty() {
        return Ok(0.0);
    }
    let mean = scores.iter().sum::<f64>() / scores.len() as f64;
    let outliers = scores.iter().filter(|&&a| a > m * mean).count();
    Ok(outliers as f64 / scores.len() as f64)
}

/// Per-block sparsities from the blocks' outlier ratios: `s` on average, spread over `2λ`, the
/// most outlier-rich block pruned least. Equal ratios (or one block) give `s` everywhere.
pub fn block_sparsities(lod: &[f64], s: f64, lambda: f64) -> Result<Vec<f64>, SparseError> {
    if !(0.0..=1.0).contains(&s) {
        return Err(SparseError::Sparsity(s));
    }
    let (lo, hi) = lod
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        });
    if lod.is_empty() || hi <= lo {
        return Ok(vec![s; lod.len()]);
    }
    let d: Vec<f64> = lod
        .iter()
        .map(|&x| 2.0 * lambda * (x - lo) / (hi - lo))
        .collect();
    let mean = d.iter().sum::<f64>() / d.len() as f64;
    let out: Vec<f64> = d.iter().map(|di| s - di + mean).collect();
    if let Some(&bad) = out.iter().find(|x| !(0.0..=1.0).contains(*x)) {
        return Err(SparseError::Sparsity(bad));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparsities_average_to_target_and_spare_outlier_blocks() {
        let lod = [0.01, 0.05, 0.03, 0.02];
        let s = block_sparsities(&lod, 0.7, 0.08).unwrap();
        let mean = s.iter().sum::<f64>() / 4.0;
        assert!((mean - 0.7).abs() < 1e-12);
        // The block with the most outliers is pruned least, by a spread of exactly 2λ.
        let (min, max) = (s[1], s[0]);
        assert!(s.iter().all(|&x| x >= min && x <= max));
        assert!((max - min - 0.16).abs() < 1e-12);
        assert_eq!(
            block_sparsities(&[0.2, 0.2], 0.5, 0.1).unwrap(),
            vec![0.5, 0.5]
        );
    }

    #[test]
    fn outlier_ratio_counts_scores_above_m_means() {
        // Scores |w|·sqrt(h): [1, 1, 1, 9] (h = 1, then 81 for the second column).
        let w = [1.0f32, 1.0 / 9.0, 1.0, 1.0];
        let h = [1.0, 81.0];
        let layer = OwlLayer {
            weight: &w,
            rows: 2,
            cols: 2,
            hessian_diag: &h,
        };
        // mean 3: only 9 is above 2 × 3; nothing is above 5 × 3.
        assert_eq!(outlier_ratio(&[layer], 2.0).unwrap(), 0.25);
        let layer = OwlLayer {
            weight: &w,
            rows: 2,
            cols: 2,
            hessian_diag: &h,
        };
        assert_eq!(outlier_ratio(&[layer], 5.0).unwrap(), 0.0);
    }
}
