//! The database's types as a ladder of levels (docs/gguf-search.md): the requested ggml types
//! sorted by bits per weight, level id = rung index, so that the search's one-step mutations
//! move a tensor to the next larger or smaller type.
//!
//! A type whose blocks do not divide a tensor's rows (K-quants need rows of a multiple of 256
//! elements) is replaced for that tensor by llama.cpp's fallback, as `llama-quantize` does; a
//! rung then holds the fallback's blocks for that tensor.

use evopress_core::{Error, Result};
use evopress_kernels::GgmlType;

/// The types a database stores, cheapest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ladder {
    rungs: Vec<GgmlType>,
}

impl Ladder {
    /// Parses type names (`"Q4_K"`), sorted by bits per weight (ties by ggml id); errors name
    /// a type that is unknown, not encodable, listed twice, or not a block format.
    pub fn parse(names: &[String]) -> Result<Ladder> {
        let bad = |msg: String| Err(Error::Invalid(format!("gguf database `types`: {msg}")));
        if names.is_empty() {
            return bad("the list is empty".into());
        }
        let mut rungs = Vec::with_capacity(names.len());
        for name in names {
            let Some(ty) = GgmlType::from_name(name) else {
                return bad(format!("unknown ggml type `{name}`"));
            };
            if !ty.is_block() || !ty.is_encodable() || ty == GgmlType::Q8_K {
                return bad(format!(
                    "`{name}` is not a block type this tool writes (Q4_0, Q4_1, Q5_0, Q5_1, \
                     Q8_0, Q2_K .. Q6_K)"
                ));
            }
            if rungs.contains(&ty) {
                return bad(format!("`{name}` is listed twice"));
            }
            rungs.push(ty);
        }
        rungs.sort_by(|a, b| {
            (a.bits_per_weight().total_cmp(&b.bits_per_weight())).then(a.id().cmp(&b.id()))
        });
        Ok(Ladder { rungs })
    }

    /// The requested types, cheapest first (rung `i` is level id `i`).
    pub fn rungs(&self) -> &[GgmlType] {
        &self.rungs
    }

    /// The names, cheapest first (what the manifest records).
    pub fn names(&self) -> Vec<String> {
        self.rungs.iter().map(|t| t.to_string()).collect()
    }

    /// The rung requesting `ty`, if the ladder has it.
    pub fn rung_of(&self, ty: GgmlType) -> Option<usize> {
        self.rungs.iter().position(|&t| t == ty)
    }
}

/// The type llama.cpp writes for a tensor of `cols`-element rows when `ty` was chosen:
/// `ty` itself when its blocks divide the rows, else its fallback (Q2_K, Q3_K → Q4_0;
/// Q4_K → Q5_0; Q5_K → Q5_1; Q6_K → Q8_0), else F16 (llama.cpp's `tensor_type_fallback`).
pub fn fallback(ty: GgmlType, cols: usize) -> GgmlType {
    if cols.is_multiple_of(ty.block_len()) {
        return ty;
    }
    let to = match ty {
        GgmlType::Q2_K | GgmlType::Q3_K => GgmlType::Q4_0,
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        _ => GgmlType::F16,
    };
    if cols.is_multiple_of(to.block_len()) {
        to
    } else {
        GgmlType::F16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ladder_sorts_by_bits_per_weight() {
        let l = Ladder::parse(&names(&["Q8_0", "Q2_K", "Q4_K", "Q4_0", "Q6_K"])).unwrap();
        let got: Vec<String> = l.names();
        // Q4_0 and Q4_K are both 4.5 bits per weight: ggml id order.
        assert_eq!(got, ["Q2_K", "Q4_0", "Q4_K", "Q6_K", "Q8_0"]);
        assert_eq!(l.rung_of(GgmlType::Q6_K), Some(3));
    }

    #[test]
    fn bad_lists_are_refused_by_name() {
        let err = |v: &[&str]| Ladder::parse(&names(v)).unwrap_err().to_string();
        assert!(err(&["Q4_K", "Q9_X"]).contains("`Q9_X`"));
        assert!(err(&["Q4_K", "Q4_K"]).contains("twice"));
        assert!(err(&["F16"]).contains("`F16`"));
        assert!(err(&[]).contains("empty"));
    }

    #[test]
    fn k_quants_fall_back_on_rows_not_a_multiple_of_256() {
        assert_eq!(fallback(GgmlType::Q3_K, 1536), GgmlType::Q3_K);
        assert_eq!(fallback(GgmlType::Q2_K, 576), GgmlType::Q4_0);
        assert_eq!(fallback(GgmlType::Q3_K, 576), GgmlType::Q4_0);
        assert_eq!(fallback(GgmlType::Q4_K, 576), GgmlType::Q5_0);
        assert_eq!(fallback(GgmlType::Q5_K, 576), GgmlType::Q5_1);
        assert_eq!(fallback(GgmlType::Q6_K, 576), GgmlType::Q8_0);
        assert_eq!(fallback(GgmlType::Q8_0, 576), GgmlType::Q8_0);
        assert_eq!(fallback(GgmlType::Q6_K, 100), GgmlType::F16);
    }
}
