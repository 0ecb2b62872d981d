//! Our quantized rows written as ggml blocks of 32 weights, where a ggml type holds the codes
//! and grid of a packed matrix (see docs/export-formats.md):
//!
//! - `Q8_0` (`x = d·q`, `q` a signed byte): `d = scale`, `q = code − zero`. Exact: `d·q` is
//!   the same single f32 rounding as our `(code − zero)·scale`, for every width up to 7 bits
//!   whose zero points keep `code − zero` within a signed byte.
//! - `Q4_1` (`x = d·q + m`, `q` a nibble): `d = scale`, `q = code`, `m = −zero·scale` rounded
//!   to f16. Exact only where `zero·scale` is an f16 value; otherwise each weight of the block
//!   moves by the rounding of `m` (reported as a fraction of the scale).
//!
//! Both need groups that are whole blocks (group size a multiple of 32) in column order (no
//! act-order permutation).

use evopress_kernels::weight::packed::unpack_row;
use evopress_kernels::weight::PackedMatrix;
use half::f16;

/// Weights per ggml block.
pub const QK: usize = 32;

/// Why a packed matrix has no block form.
pub fn blockable(m: &PackedMatrix) -> Result<(), String> {
    if m.perm().is_some() {
        return Err("act-order permutation (ggml blocks are consecutive columns)".into());
    }
    if !m.group_size().is_multiple_of(QK) || !m.cols().is_multiple_of(QK) {
        return Err(format!(
            "group size {} / {} columns are not whole blocks of {QK}",
            m.group_size(),
            m.cols()
        ));
    }
    Ok(())
}

/// Codes, scale and zero of row `r`: `(codes, scales, zeros)` per group.
fn row(m: &PackedMatrix, r: usize, codes: &mut [f32]) -> (Vec<f32>, Vec<f32>) {
    let p = m.parts();
    let wpr = m.words_per_row();
    unpack_row(&p.codes.as_slice()[r * wpr..(r + 1) * wpr], m.bits(), codes);
    let g = r * m.n_groups()..(r + 1) * m.n_groups();
    let scales = p.scales.as_slice()[g.clone()]
        .iter()
        .map(|s| s.to_f32())
        .collect();
    let zeros = p.zeros.as_slice()[g].iter().map(|z| z.to_f32()).collect();
    (scales, zeros)
}

/// Why the matrix has no exact `Q8_0` form (besides [`blockable`]).
pub fn q8_0_fits(m: &PackedMatrix) -> Result<(), String> {
    blockable(m)?;
    let mut codes = vec![0f32; m.cols()];
    for r in 0..m.rows() {
        let (_, zeros) = row(m, r, &mut codes);
        for (j, &q) in codes.iter().enumerate() {
            let v = q - zeros[j / m.group_size()];
            if !(-128.0..=127.0).contains(&v) {
                return Err(format!(
                    "code - zero = {v} at row {r}, column {j} does not fit a signed byte"
                ));
            }
        }
    }
    Ok(())
}

/// Rows in `Q8_0` blocks, in the order `rows` lists them (the caller checked [`q8_0_fits`]).
pub fn q8_0(m: &PackedMatrix, rows: &[usize]) -> Vec<u8> {
    let blocks = m.cols() / QK;
    let mut out = Vec::with_capacity(rows.len() * blocks * 34);
    let mut codes = vec![0f32; m.cols()];
    for &r in rows {
        let (scales, zeros) = row(m, r, &mut codes);
        for (b, block) in codes.chunks_exact(QK).enumerate() {
            let g = b * QK / m.group_size();
            out.extend_from_slice(&f16::from_f32(scales[g]).to_le_bytes());
            out.extend(block.iter().map(|&q| ((q - zeros[g]) as i8) as u8));
        }
    }
    out
}

/// Rows in `Q4_1` blocks, in the order `rows` lists them (codes must fit a nibble: bits ≤ 4).
/// Returns the bytes and the largest `|m − (−zero·scale)| / scale` over the blocks (0 when
/// every block is exact).
pub fn q4_1(m: &PackedMatrix, rows: &[usize]) -> (Vec<u8>, f32) {
    assert!(m.bits() <= 4, "Q4_1 holds codes of at most 4 bits");
    let blocks = m.cols() / QK;
    let mut out = Vec::with_capacity(rows.len() * blocks * 20);
    let mut codes = vec![0f32; m.cols()];
    let mut worst = 0f32;
    for &r in rows {
        let (scales, zeros) = row(m, r, &mut codes);
        for (b, block) in codes.chunks_exact(QK).enumerate() {
            let g = b * QK / m.group_size();
            // zero·scale is exact in f32 (an integer of at most 11 bits times an f16).
            let exact_m = -zeros[g] * scales[g];
            let m16 = f16::from_f32(exact_m);
            worst = worst.max((m16.to_f32() - exact_m).abs() / scales[g]);
            out.extend_from_slice(&f16::from_f32(scales[g]).to_le_bytes());
            out.extend_from_slice(&m16.to_le_bytes());
            for j in 0..QK / 2 {
                out.push(block[j] as u8 | ((block[j + QK / 2] as u8) << 4));
            }
        }
    }
    (out, worst)
}

/// `n` weights of exact zeros as `Q4_0` blocks (`d = 0`): 4.5 bits per weight.
pub fn q4_0_zeros(n: usize) -> Vec<u8> {
    let mut block = [0u8; 18];
    block[2..].fill(0x88);
    block.repeat(n / QK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use evopress_kernels::weight::packed::{slices, words_per_row};
    use evopress_kernels::{Buf, PackedParts, Weight};

    /// A packed `[rows, cols]` matrix with the given codes and per-group scale/zero.
    fn packed(
        rows: usize,
        cols: usize,
        bits: u8,
        gs: usize,
        codes: &[u8],
        sz: &[(f32, f32)],
    ) -> PackedMatrix {
        let wpr = words_per_row(cols, bits);
        let mut words = vec![0u32; rows * wpr];
        for r in 0..rows {
            for (i, &q) in codes[r * cols..(r + 1) * cols].iter().enumerate() {
                let chunk = &mut words[r * wpr + i / 32 * bits as usize..];
                for (p, o) in slices(bits as usize) {
                    let field = (u32::from(q) >> o) & ((1 << p) - 1);
                    chunk[o + (i % 32) * p / 32] |= field << ((i % 32) * p % 32);
                }
            }
        }
        PackedMatrix::new(PackedParts {
            rows,
            cols,
            bits,
            group_size: gs,
            codes: Buf::owned(words),
            scales: Buf::owned(sz.iter().map(|p| f16::from_f32(p.0)).collect()),
            zeros: Buf::owned(sz.iter().map(|p| f16::from_f32(p.1)).collect()),
            perm: None,
        })
        .unwrap()
    }

    fn decode_q8_0(b: &[u8]) -> Vec<f32> {
        b.chunks_exact(34)
            .flat_map(|blk| {
                let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                blk[2..].iter().map(move |&q| d * f32::from(q as i8))
            })
            .collect()
    }

    #[test]
    fn q8_0_reproduces_the_packed_values_bit_for_bit() {
        let (rows, cols) = (2, 64);
        let codes: Vec<u8> = (0..rows * cols).map(|i| (i * 5 % 8) as u8).collect();
        let sz = [(0.0123, 3.0), (0.5, 0.0), (1e-3, 7.0), (2.5, 5.0)];
        let m = packed(rows, cols, 3, 32, &codes, &sz);
        q8_0_fits(&m).unwrap();
        let got = decode_q8_0(&q8_0(&m, &[0, 1]));
        assert_eq!(got, Weight::from_packed(m).to_f32_vec());
    }

    #[test]
    fn q4_1_is_exact_when_zero_times_scale_is_an_f16_and_reports_the_rounding_otherwise() {
        let codes: Vec<u8> = (0..64).map(|i| (i % 16) as u8).collect();
        // 0.25 · 8 = 2 is an f16 value; 0.0123 · 7 is not.
        let exact = packed(1, 64, 4, 64, &codes, &[(0.25, 8.0)]);
        let (bytes, worst) = q4_1(&exact, &[0]);
        assert_eq!(worst, 0.0);
        let decoded: Vec<f32> = bytes
            .chunks_exact(20)
            .flat_map(|blk| {
                let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                let m = f16::from_le_bytes([blk[2], blk[3]]).to_f32();
                let lo = blk[4..].iter().map(move |&q| d * f32::from(q & 15) + m);
                let hi = blk[4..].iter().map(move |&q| d * f32::from(q >> 4) + m);
                lo.chain(hi).collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(decoded, Weight::from_packed(exact).to_f32_vec());
        let inexact = packed(1, 64, 4, 64, &codes, &[(0.0123, 7.0)]);
        let (_, worst) = q4_1(&inexact, &[0]);
        assert!(worst > 0.0 && worst < 1e-2, "{worst}");
    }

    #[test]
    fn act_order_and_partial_blocks_have_no_block_form() {
        let m = packed(1, 64, 4, 48, &[0; 64], &[(1.0, 0.0), (1.0, 0.0)]);
        assert!(blockable(&m).unwrap_err().contains("group size 48"));
    }

    #[test]
    fn zero_blocks_decode_to_zero() {
        let b = q4_0_zeros(64);
        assert_eq!(b.len(), 36);
        assert_eq!(&b[..2], &[0, 0]);
    }
}
