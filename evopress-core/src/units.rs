//! The compressible units of a model in the original's naming (SPEC §2.1), and the model
//! fingerprint a variant store is tied to.
//!
//! A unit is what a database holds variants of and what the search assigns a level to: one
//! linear layer, except on Phi-3, whose file fuses q/k/v (`self_attn.qkv_proj`) and gate/up
//! (`mlp.gate_up_proj`). Our [`Model`] keeps row views of those fused tensors, so a fused
//! unit lists its parts with their row offsets: a builder compresses the stacked `[rows,
//! cols]` matrix and splits each variant by rows to swap it into the parts.

use crate::config::Arch;
use crate::model::{LinearInput, LinearKind, Model};

/// One [`LinearKind`] inside a unit, occupying rows `row_offset..row_offset + rows`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitPart {
    pub kind: LinearKind,
    pub row_offset: usize,
    pub rows: usize,
}

/// A compressible unit: `parts` stacked by rows form its `[rows, cols]` weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinearUnit {
    /// HF qualified name, e.g. `model.layers.3.mlp.up_proj`: the key everywhere.
    pub name: String,
    pub block: usize,
    pub parts: Vec<UnitPart>,
    pub rows: usize,
    pub cols: usize,
}

impl LinearUnit {
    /// The activation all parts multiply, hence the Hessian the unit is compressed with.
    pub fn input(&self) -> LinearInput {
        self.parts[0].kind.input()
    }
    pub fn numel(&self) -> usize {
        self.rows * self.cols
    }
    /// The unit's weight as f32 `[rows, cols]` (the parts' rows stacked).
    pub fn dense_weight(&self, model: &Model) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.numel());
        for p in &self.parts {
            out.extend(model.linear(self.block, p.kind).weight.to_f32_vec());
        }
        out
    }
}

/// Every compressible unit, block by block, in forward order within a block
/// (q, k, v, o, gate, up, down; Phi-3: qkv, o, gate_up, down).
pub fn linear_units(model: &Model) -> Vec<LinearUnit> {
    use LinearKind::*;
    let groups: &[(&str, &[LinearKind])] = if model.config.arch == Arch::Phi3 {
        &[
            ("self_attn.qkv_proj", &[Q, K, V]),
            ("self_attn.o_proj", &[O]),
            ("mlp.gate_up_proj", &[Gate, Up]),
            ("mlp.down_proj", &[Down]),
        ]
    } else {
        &[
            ("self_attn.q_proj", &[Q]),
            ("self_attn.k_proj", &[K]),
            ("self_attn.v_proj", &[V]),
            ("self_attn.o_proj", &[O]),
            ("mlp.gate_proj", &[Gate]),
            ("mlp.up_proj", &[Up]),
            ("mlp.down_proj", &[Down]),
        ]
    };
    let mut units = Vec::new();
    for block in 0..model.layers.len() {
        for &(module, kinds) in groups {
            let mut parts = Vec::with_capacity(kinds.len());
            let mut rows = 0;
            for &kind in kinds {
                let w = &model.linear(block, kind).weight;
                parts.push(UnitPart {
                    kind,
                    row_offset: rows,
                    rows: w.rows,
                });
                rows += w.rows;
            }
            units.push(LinearUnit {
                name: format!("model.layers.{block}.{module}"),
                block,
                cols: model.linear(block, kinds[0]).weight.cols,
                parts,
                rows,
            });
        }
    }
    units
}

impl Model {
    /// A hex xxh3-64 of the config and every tensor's name, shape and dtype: what a
    /// variant store checks before reusing its contents for this model. It does not read
    /// the weights (hashing gigabytes at every start would cost more than it protects;
    /// two checkpoints of one architecture and dtype differ only there, so the store also
    /// records the model path).
    pub fn fingerprint(&self) -> String {
        use std::fmt::Write;
        let mut s = serde_json::to_string(&self.config).expect("config serializes");
        let mut add = |name: &str, w: &evopress_kernels::Weight| {
            let _ = write!(s, "\n{name} {}x{} {}", w.rows, w.cols, w.dtype().name());
        };
        add("model.embed_tokens", &self.embed_tokens);
        for u in linear_units(self) {
            for p in &u.parts {
                add(
                    &format!("{} {:?}", u.name, p.kind),
                    &self.linear(u.block, p.kind).weight,
                );
            }
        }
        add("lm_head", &self.lm_head);
        let _ = write!(s, "\nnorms {}", self.hidden_size());
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(s.as_bytes()))
    }
}
