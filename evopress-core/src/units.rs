//! The compressible units of a model in the original's naming (HF module names), and the model
//! fingerprints a variant store is tied to.
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
    /// A hex xxh3-64 of the config and every tensor's name and shape: the model's structure.
    /// How the weights are held (a GGUF's Q4_1 packed or expanded to f32) is not part of it,
    /// so a database built under one `--gguf-weights` choice serves the others; two
    /// checkpoints of one architecture share it, and [`Model::weights_fingerprint`] tells them
    /// apart.
    pub fn fingerprint(&self) -> String {
        use std::fmt::Write;
        let mut s = serde_json::to_string(&self.config).expect("config serializes");
        let mut add = |name: &str, w: &evopress_kernels::Weight| {
            let _ = write!(s, "\n{name} {}x{}", w.rows, w.cols);
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

    /// A hex xxh3-64 of the weights' contents: every tensor's bytes as the model holds them
    /// (the file's bytes for mapped F32/F16/BF16 tensors, the dequantized f32 of GGUF
    /// quantized types), norms and biases included, in forward order. A variant store records
    /// it, so a store built for one checkpoint is never used with another of the same shape.
    /// The bytes are hashed in 8 MiB pieces on the rayon pool (the demo model's 540 MB in
    /// well under a second); the piece hashes, in order, are hashed again.
    pub fn weights_fingerprint(&self) -> String {
        use rayon::prelude::*;
        use std::borrow::Cow;
        const PIECE: usize = 8 << 20;
        fn weight(w: &evopress_kernels::Weight) -> Cow<'_, [u8]> {
            use evopress_kernels::WeightView;
            match w.dense_view() {
                Some(WeightView::F32(v)) => Cow::Borrowed(bytemuck::cast_slice(v)),
                Some(WeightView::F16(v)) => Cow::Borrowed(bytemuck::cast_slice(v)),
                Some(WeightView::BF16(v)) => Cow::Borrowed(bytemuck::cast_slice(v)),
                None => Cow::Owned(bytemuck::cast_slice(&w.to_f32_vec()).to_vec()),
            }
        }
        fn floats(v: &[f32]) -> Cow<'_, [u8]> {
            Cow::Borrowed(bytemuck::cast_slice(v))
        }
        let mut tensors = vec![weight(&self.embed_tokens)];
        for block in &self.layers {
            tensors.push(floats(&block.input_layernorm));
            let a = &block.self_attn;
            let m = &block.mlp;
            for linear in [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj] {
                tensors.push(weight(&linear.weight));
                tensors.extend(linear.bias.as_deref().map(floats));
            }
            tensors.push(floats(&block.post_attention_layernorm));
            for linear in [&m.gate_proj, &m.up_proj, &m.down_proj] {
                tensors.push(weight(&linear.weight));
            }
        }
        tensors.push(floats(&self.norm));
        tensors.push(weight(&self.lm_head));
        let pieces: Vec<&[u8]> = tensors.iter().flat_map(|t| t.chunks(PIECE)).collect();
        let hashes: Vec<u64> = pieces
            .par_iter()
            .map(|p| xxhash_rust::xxh3::xxh3_64(p))
            .collect();
        let bytes: Vec<u8> = hashes.iter().flat_map(|h| h.to_le_bytes()).collect();
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes))
    }
}
