//! The GGUF database builder (docs/gguf-search.md): every linear, and the token embedding and
//! LM head, at every rung of the [`Ladder`], encoded by llama.cpp's quantizers with the
//! calibration Hessian's diagonal as the importance vector (what llama.cpp's imatrix holds) and
//! stored as the ggml blocks themselves: `<unit>/<rung>/blocks`, u8 `[rows, row_bytes]`. The
//! manifest records per level the `type` written (the requested one or its fallback), the
//! `requested` type, the exact tensor bytes and `rel_error`.

use crate::ladder::{fallback, Ladder};
use evopress_core::build::{OuterInputs, OuterUnit, Variant, VariantBuilder};
use evopress_core::calibrate::Hessian;
use evopress_core::hessian::RelError;
use evopress_core::store::{TensorData, UnitEntry, VariantStore};
use evopress_core::units::LinearUnit;
use evopress_core::{Error, Model, Result};
use evopress_kernels::weight::ggml::{decode_rows, encode_rows};
use evopress_kernels::{Buf, GgmlType, Weight};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The backend name in a GGUF store's manifest.
pub const BACKEND: &str = "gguf";
/// The store format: one tensor of ggml blocks per variant.
pub const GGML_FORMAT: &str = "ggml";
/// The name of the token embedding's unit (and, for a tied model, of the LM head it is).
pub const EMBEDDING: &str = "model.embed_tokens";
/// The name of an untied LM head's unit.
pub const HEAD: &str = "lm_head";

/// `[database] kind = "gguf"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GgufParams {
    /// ggml type names stored per tensor.
    #[serde(default = "default_types")]
    pub types: Vec<String>,
    /// Weigh the quantizers' error by the Hessian diagonal (llama.cpp's imatrix); `false`
    /// encodes as `llama-quantize` without an imatrix.
    #[serde(default = "default_true")]
    pub importance: bool,
    /// Also store the token embedding and LM head at every rung (levels of the search).
    #[serde(default = "default_true")]
    pub outer: bool,
}

fn default_types() -> Vec<String> {
    ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"]
        .map(String::from)
        .to_vec()
}

fn default_true() -> bool {
    true
}

/// Builds every rung of every tensor.
pub struct GgufBuilder {
    params: GgufParams,
    ladder: Ladder,
}

impl GgufBuilder {
    pub fn new(params: GgufParams) -> Result<Self> {
        let ladder = Ladder::parse(&params.types)?;
        Ok(GgufBuilder { params, ladder })
    }

    /// Every rung of one `[rows, cols]` matrix, `error` measuring a decoded variant.
    fn variants(
        &self,
        name: &str,
        weight: &[f32],
        cols: usize,
        importance: Option<&[f32]>,
        error: &(dyn Fn(&[f32]) -> Result<f64> + Sync),
    ) -> Result<Vec<Variant>> {
        let rows = weight.len() / cols.max(1);
        let fail = |e: &dyn std::fmt::Display| Error::Invalid(format!("gguf `{name}`: {e}"));
        (self.ladder.rungs().par_iter().enumerate())
            .map(|(rung, &requested)| {
                let ty = fallback(requested, cols);
                if !ty.is_block() {
                    return Err(fail(&format!(
                        "rows of {cols} elements fit no block type (not a multiple of 32)"
                    )));
                }
                let bytes = encode_rows(ty, weight, cols, importance).map_err(|e| fail(&e))?;
                let decoded = decode_rows(ty, &bytes, cols).map_err(|e| fail(&e))?;
                let rel_error = error(&decoded)?;
                let mut extra = Map::new();
                extra.insert("type".into(), json!(ty.to_string()));
                extra.insert("requested".into(), json!(requested.to_string()));
                let row_bytes = bytes.len() / rows.max(1);
                Ok(Variant {
                    level: rung as i32,
                    tensors: vec![("blocks".into(), TensorData::u8(&[rows, row_bytes], &bytes))],
                    rel_error,
                    extra,
                })
            })
            .collect()
    }

    fn importance(&self, h: &Hessian) -> Option<Vec<f32>> {
        self.params
            .importance
            .then(|| h.diag().iter().map(|&d| d.max(0.0) as f32).collect())
    }
}

/// `tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)` against `h` (docs/sparsegpt-gptq.md).
fn hessian_error<'a>(
    name: &'a str,
    weight: &[f32],
    rows: usize,
    cols: usize,
    h: &Hessian,
) -> Result<impl Fn(&[f32]) -> Result<f64> + Sync + 'a> {
    let bad = move |e: evopress_core::hessian::HessianError| {
        Error::Invalid(format!("gguf `{name}`: {e}"))
    };
    let meter = RelError::new(weight, rows, cols, &h.data).map_err(bad)?;
    Ok(move |w_hat: &[f32]| meter.of(w_hat).map_err(bad))
}

impl VariantBuilder for GgufBuilder {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn format(&self) -> &'static str {
        GGML_FORMAT
    }

    fn params(&self) -> Value {
        json!({
            "types": self.ladder.names(),
            "importance": self.params.importance,
            "outer": self.params.outer,
        })
    }

    fn build_unit(&self, unit: &LinearUnit, weight: &[f32], h: &Hessian) -> Result<Vec<Variant>> {
        if h.dim != unit.cols {
            return Err(Error::Invalid(format!(
                "`{}`: Hessian is {}x{}, the weight has {} columns",
                unit.name, h.dim, h.dim, unit.cols
            )));
        }
        let error = hessian_error(&unit.name, weight, unit.rows, unit.cols, h)?;
        let imp = self.importance(h);
        self.variants(&unit.name, weight, unit.cols, imp.as_deref(), &error)
    }

    fn load_weight(&self, store: &VariantStore, unit: &UnitEntry, level: i32) -> Result<Weight> {
        load_ggml(store, unit, level)
    }

    fn builds_outer(&self) -> bool {
        self.params.outer
    }

    /// The LM head (tied: the embedding, which is the head too) is weighed by the Hessian of
    /// its input; an untied embedding by how often each token occurs (its rows are looked up,
    /// not multiplied), encoded without importance as llama.cpp's imatrix has none for it.
    fn build_outer(&self, model: &Model, inputs: &OuterInputs<'_>) -> Result<Vec<OuterUnit>> {
        let (rows, cols) = (model.vocab_size(), model.hidden_size());
        let head_imp = self.importance(inputs.head);
        let embed = model.embed_tokens.to_f32_vec();
        let mut out = Vec::new();
        if model.config.tie_word_embeddings {
            let error = hessian_error(EMBEDDING, &embed, rows, cols, inputs.head)?;
            let variants = self.variants(EMBEDDING, &embed, cols, head_imp.as_deref(), &error)?;
            out.push(OuterUnit {
                name: EMBEDDING.into(),
                rows,
                cols,
                variants,
            });
            return Ok(out);
        }
        let counts = inputs.token_counts;
        let error = |w_hat: &[f32]| Ok(count_weighted_error(&embed, w_hat, cols, counts));
        let variants = self.variants(EMBEDDING, &embed, cols, None, &error)?;
        out.push(OuterUnit {
            name: EMBEDDING.into(),
            rows,
            cols,
            variants,
        });
        let head = model.lm_head.to_f32_vec();
        let error = hessian_error(HEAD, &head, rows, cols, inputs.head)?;
        let variants = self.variants(HEAD, &head, cols, head_imp.as_deref(), &error)?;
        out.push(OuterUnit {
            name: HEAD.into(),
            rows,
            cols,
            variants,
        });
        Ok(out)
    }
}

/// `Σ_r c_r ‖ΔW_r‖² / Σ_r c_r ‖W_r‖²`: an embedding's error with rows weighted by token
/// counts `c` (its input Hessian is that diagonal); rows of unseen tokens count once, so an
/// unused vocabulary still counts a little.
fn count_weighted_error(w: &[f32], w_hat: &[f32], cols: usize, counts: &[u64]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for ((row, row_hat), &c) in w.chunks(cols).zip(w_hat.chunks(cols)).zip(counts) {
        let c = c.max(1) as f64;
        for (&a, &b) in row.iter().zip(row_hat) {
            num += c * ((a - b) as f64).powi(2);
            den += c * (a as f64).powi(2);
        }
    }
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

/// The ggml type a stored level holds (the manifest's `type`).
pub fn level_type(store: &VariantStore, unit: &UnitEntry, level: i32) -> Result<GgmlType> {
    let name = &unit.name;
    let entry = unit
        .level(level)
        .ok_or_else(|| Error::Invalid(format!("`{name}` has no level {level} in the database")))?;
    let ty = entry.extra.get("type").and_then(Value::as_str);
    ty.and_then(GgmlType::from_name).ok_or_else(|| {
        Error::format(
            store.dir().join("manifest.json"),
            format!("`{name}` level {level} has no ggml `type` (found {ty:?})"),
        )
    })
}

/// A stored variant as a ggml [`Weight`] whose blocks are a view into the store's map.
pub fn load_ggml(store: &VariantStore, unit: &UnitEntry, level: i32) -> Result<Weight> {
    let ty = level_type(store, unit, level)?;
    let key = format!("{}/{level}/blocks", unit.name);
    let t = store.tensor(&key)?;
    let layout = |e: evopress_kernels::WeightError| {
        Error::format(store.dir(), format!("`{key}` cannot be used as {ty}: {e}"))
    };
    let blocks = Buf::mapped(t.map.clone(), t.offset, t.numel()).map_err(layout)?;
    Weight::ggml(ty, unit.rows, unit.cols, blocks).map_err(layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_weighted_error_weighs_rows_by_counts() {
        let w = [1.0, 0.0, 0.0, 2.0];
        let w_hat = [0.0, 0.0, 0.0, 2.0];
        // Row 0 (count 3) lost all of its 1.0; row 1 (count 1) kept its 4.0.
        let e = count_weighted_error(&w, &w_hat, 2, &[3, 1]);
        assert!((e - 3.0 / 7.0).abs() < 1e-12);
        // An unseen token's row still counts once.
        assert!((count_weighted_error(&w, &w_hat, 2, &[0, 0]) - 0.2).abs() < 1e-12);
    }
}
