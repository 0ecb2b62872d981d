//! `ggml_type`: the element types a GGUF tensor can have, with their block geometry.

use std::fmt;

/// Element type of a ggml tensor (`ggml_type`). Every type llama.cpp can store is listed so
/// that any GGUF opens and its tensor extents are checked; [`GgmlType::DECODABLE`] and
/// [`GgmlType::ENCODABLE`] say which ones this crate converts.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

impl fmt::Display for GgmlType {
    /// The name llama.cpp prints (`Q4_1`, `F16`, ...).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// `(type, ggml id, elements per block, bytes per block)`, from llama.cpp's `type_traits`.
const TYPE_TABLE: [(GgmlType, u32, usize, usize); 32] = [
    (GgmlType::F32, 0, 1, 4),
    (GgmlType::F16, 1, 1, 2),
    (GgmlType::Q4_0, 2, 32, 18),
    (GgmlType::Q4_1, 3, 32, 20),
    (GgmlType::Q5_0, 6, 32, 22),
    (GgmlType::Q5_1, 7, 32, 24),
    (GgmlType::Q8_0, 8, 32, 34),
    (GgmlType::Q8_1, 9, 32, 36),
    (GgmlType::Q2_K, 10, 256, 84),
    (GgmlType::Q3_K, 11, 256, 110),
    (GgmlType::Q4_K, 12, 256, 144),
    (GgmlType::Q5_K, 13, 256, 176),
    (GgmlType::Q6_K, 14, 256, 210),
    (GgmlType::Q8_K, 15, 256, 292),
    (GgmlType::IQ2_XXS, 16, 256, 66),
    (GgmlType::IQ2_XS, 17, 256, 74),
    (GgmlType::IQ3_XXS, 18, 256, 98),
    (GgmlType::IQ1_S, 19, 256, 50),
    (GgmlType::IQ4_NL, 20, 32, 18),
    (GgmlType::IQ3_S, 21, 256, 110),
    (GgmlType::IQ2_S, 22, 256, 82),
    (GgmlType::IQ4_XS, 23, 256, 136),
    (GgmlType::I8, 24, 1, 1),
    (GgmlType::I16, 25, 1, 2),
    (GgmlType::I32, 26, 1, 4),
    (GgmlType::I64, 27, 1, 8),
    (GgmlType::F64, 28, 1, 8),
    (GgmlType::IQ1_M, 29, 256, 56),
    (GgmlType::BF16, 30, 1, 2),
    (GgmlType::TQ1_0, 34, 256, 54),
    (GgmlType::TQ2_0, 35, 256, 66),
    (GgmlType::MXFP4, 39, 32, 17),
];

impl GgmlType {
    /// The type with GGUF/ggml id `id`.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TYPE_TABLE.iter().find(|e| e.1 == id).map(|e| e.0)
    }

    /// The type llama.cpp names `name` (`"Q4_K"`, case-insensitive).
    pub fn from_name(name: &str) -> Option<GgmlType> {
        TYPE_TABLE
            .iter()
            .find(|e| e.0.to_string().eq_ignore_ascii_case(name))
            .map(|e| e.0)
    }

    fn entry(self) -> &'static (GgmlType, u32, usize, usize) {
        TYPE_TABLE
            .iter()
            .find(|e| e.0 == self)
            .expect("every GgmlType is in TYPE_TABLE")
    }

    /// The GGUF/ggml type id.
    pub fn id(self) -> u32 {
        self.entry().1
    }

    /// Elements per quantization block (1 for plain types).
    pub fn block_len(self) -> usize {
        self.entry().2
    }

    /// Bytes per quantization block.
    pub fn block_bytes(self) -> usize {
        self.entry().3
    }

    /// Stored bits per weight, scales and minima included (4.5 for `Q4_K`).
    pub fn bits_per_weight(self) -> f64 {
        8.0 * self.block_bytes() as f64 / self.block_len() as f64
    }

    /// True for the formats stored in blocks of several elements (everything but the plain
    /// integer and float types).
    pub fn is_block(self) -> bool {
        self.block_len() > 1
    }

    /// Bytes of a row of `cols` elements; `None` unless `cols` is a whole number of blocks.
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        cols.is_multiple_of(self.block_len())
            .then(|| cols / self.block_len() * self.block_bytes())
    }

    /// Types [`decode_rows`](super::decode_rows) turns into f32.
    pub const DECODABLE: [GgmlType; 14] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
    ];

    /// Types [`encode_rows`](super::encode_rows) produces: the same set.
    pub const ENCODABLE: [GgmlType; 14] = Self::DECODABLE;

    pub fn is_decodable(self) -> bool {
        Self::DECODABLE.contains(&self)
    }

    pub fn is_encodable(self) -> bool {
        Self::ENCODABLE.contains(&self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names_round_trip() {
        for (ty, id, _, _) in TYPE_TABLE {
            assert_eq!(GgmlType::from_id(id), Some(ty));
            assert_eq!(
                GgmlType::from_name(&ty.to_string().to_lowercase()),
                Some(ty)
            );
        }
        assert_eq!(GgmlType::from_id(4), None);
        assert_eq!(GgmlType::from_name("Q4_2"), None);
    }

    #[test]
    fn k_quant_sizes() {
        assert_eq!(GgmlType::Q4_K.bits_per_weight(), 4.5);
        assert_eq!(GgmlType::Q6_K.bits_per_weight(), 6.5625);
        assert_eq!(GgmlType::Q4_K.row_bytes(1536), Some(6 * 144));
        assert_eq!(GgmlType::Q4_K.row_bytes(576), None);
        assert_eq!(GgmlType::F16.row_bytes(3), Some(6));
    }
}
