//! GPTQ's int32 packing of one quantized linear layer (`qweight`, `qzeros`, `scales`,
//! `g_idx`), laid out as AutoGPTQ and GPTQModel store them (see docs/export-formats.md):
//!
//! ```text
//!   qweight  int32 [in·b/32, out]  column o = the codes of inputs 0..in of output o
//!   qzeros   int32 [groups, out·b/32]  row g = the zero points of group g for outputs 0..out
//!   scales   f16   [groups, out]
//!   g_idx    int32 [in]            group of each input (i // group_size, or any map under
//!                                  act-order)
//! ```
//!
//! A sequence of codes is packed 32 at a time into `b` words. Widths 2, 3, 4 and 8 use one
//! little-endian bit stream (code k at bits `k·b ..` of the block, so 3-bit codes straddle
//! words: GPTQ's "10-1-10-1-10" pattern); widths 5, 6 and 7, which AutoGPTQ never had, use
//! GPTQModel's split-plane layout: the low 4 bits of the 32 codes in 4 words, then a 2-bit
//! plane, then a 1-bit plane, each plane packed like a 2/4-bit stream.

use half::f16;

/// A quantized layer in logical form: one code per weight in the layer's own column order.
pub struct Logical {
    pub rows: usize,
    pub cols: usize,
    pub bits: u8,
    pub group_size: usize,
    /// `[rows, cols]` codes (`< 2^bits`).
    pub codes: Vec<u8>,
    /// `[rows, groups]` zero points and scales; weight = scale · (code − zero).
    pub zeros: Vec<i32>,
    pub scales: Vec<f16>,
    /// Group of each column.
    pub g_idx: Vec<i32>,
    pub groups: usize,
}

/// The four GPTQ tensors of one layer.
pub struct GptqTensors {
    /// `[cols·bits/32, rows]`, row-major.
    pub qweight: Vec<i32>,
    /// `[groups, rows·bits/32]`.
    pub qzeros: Vec<i32>,
    /// `[groups, rows]`.
    pub scales: Vec<f16>,
    pub g_idx: Vec<i32>,
}

/// Bit planes of a split-plane width: `(plane width, code bit offset)`, low to high.
fn planes(bits: u8) -> &'static [(u32, u32)] {
    match bits {
        5 => &[(4, 0), (1, 4)],
        6 => &[(4, 0), (2, 4)],
        7 => &[(4, 0), (2, 4), (1, 6)],
        _ => unreachable!("split-plane widths are 5, 6, 7"),
    }
}

/// Packs `codes` (a multiple of 32 of them, each `< 2^bits`) into `codes.len()·bits/32` words.
pub fn pack_sequence(codes: &[u32], bits: u8) -> Vec<u32> {
    let b = bits as usize;
    let mut out = vec![0u32; codes.len() / 32 * b];
    for (block, words) in codes.chunks_exact(32).zip(out.chunks_exact_mut(b)) {
        match bits {
            2 | 3 | 4 | 8 => {
                for (k, &c) in block.iter().enumerate() {
                    let bit = k * b;
                    let (w, s) = (bit / 32, bit % 32);
                    words[w] |= c << s;
                    if s + b > 32 {
                        words[w + 1] |= c >> (32 - s);
                    }
                }
            }
            _ => {
                let mut first_word = 0usize;
                for &(width, offset) in planes(bits) {
                    let per_word = 32 / width as usize;
                    let mask = (1u32 << width) - 1;
                    for (k, &c) in block.iter().enumerate() {
                        let field = (c >> offset) & mask;
                        words[first_word + k / per_word] |=
                            field << ((k % per_word) as u32 * width);
                    }
                    first_word += width as usize;
                }
            }
        }
    }
    out
}

/// The inverse of [`pack_sequence`] (for tests and checks).
pub fn unpack_sequence(words: &[u32], bits: u8, n: usize) -> Vec<u32> {
    let b = bits as usize;
    let mut out = Vec::with_capacity(n);
    for words in words.chunks_exact(b) {
        for k in 0..32 {
            let c = match bits {
                2 | 3 | 4 | 8 => {
                    let bit = k * b;
                    let (w, s) = (bit / 32, bit % 32);
                    let mut v = words[w] >> s;
                    if s + b > 32 {
                        v |= words[w + 1] << (32 - s);
                    }
                    v & ((1u32 << b) - 1)
                }
                _ => {
                    let mut v = 0;
                    let mut first_word = 0usize;
                    for &(width, offset) in planes(bits) {
                        let per_word = 32 / width as usize;
                        let field = (words[first_word + k / per_word]
                            >> ((k % per_word) as u32 * width))
                            & ((1u32 << width) - 1);
                        v |= field << offset;
                        first_word += width as usize;
                    }
                    v
                }
            };
            out.push(c);
        }
    }
    out.truncate(n);
    out
}

/// Why a layer cannot be stored in GPTQ form.
pub fn unrepresentable(l: &Logical, zero_offset: i32) -> Option<String> {
    if !(2..=8).contains(&l.bits) {
        return Some(format!("{}-bit codes (GPTQ holds 2 to 8 bits)", l.bits));
    }
    if !l.cols.is_multiple_of(32) || !l.rows.is_multiple_of(32) {
        return Some(format!(
            "shape [{}, {}] (GPTQ packs whole blocks of 32 inputs and outputs)",
            l.rows, l.cols
        ));
    }
    let maxq = (1i32 << l.bits) - 1;
    let lo = zero_offset;
    let bad = l.zeros.iter().filter(|&&z| z < lo || z > maxq).count();
    (bad > 0).then(|| {
        let (min, max) = (
            l.zeros.iter().min().copied().unwrap_or(0),
            l.zeros.iter().max().copied().unwrap_or(0),
        );
        format!(
            "{bad} of {} groups have a zero point outside [{lo}, {maxq}] (range {min}..={max}); \
             the format stores zero{} in {} bits",
            l.zeros.len(),
            if zero_offset == 1 { " - 1" } else { "" },
            l.bits
        )
    })
}

/// Packs `l` with zero points stored as `zero − zero_offset` (1 for GPTQ v1, 0 for v2).
/// The caller checked [`unrepresentable`].
pub fn pack(l: &Logical, zero_offset: i32) -> GptqTensors {
    let (rows, cols, b) = (l.rows, l.cols, l.bits as usize);
    let words_in = cols * b / 32;
    let mut qweight = vec![0i32; words_in * rows];
    let mut column = vec![0u32; cols];
    for r in 0..rows {
        for (c, v) in column.iter_mut().enumerate() {
            *v = u32::from(l.codes[r * cols + c]);
        }
        for (i, w) in pack_sequence(&column, l.bits).into_iter().enumerate() {
            qweight[i * rows + r] = w as i32;
        }
    }
    let words_out = rows * b / 32;
    let mut qzeros = vec![0i32; l.groups * words_out];
    let mut scales = vec![f16::ZERO; l.groups * rows];
    let mut zs = vec![0u32; rows];
    for g in 0..l.groups {
        for (r, z) in zs.iter_mut().enumerate() {
            *z = (l.zeros[r * l.groups + g] - zero_offset) as u32;
            scales[g * rows + r] = l.scales[r * l.groups + g];
        }
        for (j, w) in pack_sequence(&zs, l.bits).into_iter().enumerate() {
            qzeros[g * words_out + j] = w as i32;
        }
    }
    GptqTensors {
        qweight,
        qzeros,
        scales,
        g_idx: l.g_idx.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(n: usize, bits: u8) -> Vec<u32> {
        (0..n as u32)
            .map(|i| i.wrapping_mul(2_654_435_761).rotate_left(5) & ((1 << bits) - 1))
            .collect()
    }

    #[test]
    fn every_width_round_trips() {
        for bits in 2..=8u8 {
            let c = codes(96, bits);
            let words = pack_sequence(&c, bits);
            assert_eq!(words.len(), 96 * bits as usize / 32);
            assert_eq!(unpack_sequence(&words, bits, 96), c, "{bits} bits");
        }
    }

    #[test]
    fn three_bit_codes_straddle_words_as_in_gptq() {
        // Code 10 occupies bits 30..33 of the block: its low two bits end word 0, its high
        // bit starts word 1; code 21 puts one bit at the top of word 1 and two in word 2.
        let mut c = vec![0u32; 32];
        c[10] = 0b111;
        c[21] = 0b101;
        let w = pack_sequence(&c, 3);
        assert_eq!(w, [0b11 << 30, 1 | (1 << 31), 0b10]);
    }

    #[test]
    fn four_bit_codes_fill_nibbles_low_first() {
        let c: Vec<u32> = (0..32).map(|i| i % 16).collect();
        let w = pack_sequence(&c, 4);
        assert_eq!(w[0], 0x7654_3210);
        assert_eq!(w[1], 0xfedc_ba98);
    }

    #[test]
    fn split_planes_put_the_low_nibbles_first() {
        // 5 bits: 4 words of low nibbles, then one word of the 32 high bits.
        let mut c = vec![0u32; 32];
        c[0] = 0b1_0011;
        c[31] = 0b1_1111;
        let w = pack_sequence(&c, 5);
        assert_eq!(w, [0b0011, 0, 0, 0xf000_0000, 1 | (1 << 31)]);
    }
}
