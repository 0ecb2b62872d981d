//! The exported model as a list of named tensors in HF naming and order, each pointing at the
//! candidate's data in its stored form: what every writer walks. Block indices are the
//! output's ([`Layout`]); linear layers keep their compressed form (packed codes, sparse
//! mask) so writers can store it as it is.

use crate::layout::{KeptBlock, Layout};
use evopress_core::hf::expected_tensors;
use evopress_core::units::{linear_units, LinearUnit};
use evopress_core::{Candidate, Error, LinearKind, Model, ModelConfig, Result};
use evopress_kernels::weight::{MaskedMatrix, PackedMatrix};
use evopress_kernels::{Weight, WeightKind};
use std::collections::HashMap;

/// A linear layer's weight as the candidate holds it.
pub enum LinearData<'a> {
    /// One quantized matrix holding exactly this layer (all its parts, for a fused unit).
    Packed(&'a PackedMatrix),
    /// One sparse matrix holding exactly this layer.
    Masked(&'a MaskedMatrix),
    /// Anything else: the parts' weights, stacked by rows, decoded when written. They are the
    /// model's weights as loaded when every part is dense or a GGUF source's blocks (see
    /// [`LinearData::is_as_loaded`]); otherwise a compressed form no writer stores as it is
    /// (masked-packed: sparse and quantized).
    Dense(Vec<&'a Weight>),
    /// The layer belongs to a dropped sub-block: it must contribute nothing.
    Dropped,
}

/// What one output tensor holds.
pub enum Piece<'a> {
    /// A norm weight or a bias.
    Vector(&'a [f32]),
    /// The embedding or the LM head.
    Matrix(&'a Weight),
    /// A linear layer's weight (`[rows, cols]` = `[out, in]`).
    Linear {
        data: LinearData<'a>,
        rows: usize,
        cols: usize,
        /// The unit's kind(s), for writers that treat q/k specially.
        kinds: Vec<LinearKind>,
    },
}

/// One tensor of the exported model.
pub struct OutTensor<'a> {
    /// HF name with the output block index.
    pub name: String,
    /// HF shape (`[out, in]` for linears, `[n]` for vectors).
    pub shape: Vec<usize>,
    pub piece: Piece<'a>,
    /// The output block it belongs to (`None` for embedding, final norm and head).
    pub block: Option<usize>,
}

/// The exported model: its config (with the output layer count) and its tensors.
pub struct OutModel<'a> {
    pub config: ModelConfig,
    pub layout: Layout,
    pub tensors: Vec<OutTensor<'a>>,
}

impl<'a> OutModel<'a> {
    /// Every tensor the exported architecture needs, in checkpoint order.
    pub fn of(candidate: &'a Candidate) -> Result<OutModel<'a>> {
        let model = &candidate.model;
        if candidate.plan.len() != model.layers.len() {
            return Err(Error::Invalid(format!(
                "the candidate's plan covers {} blocks, the model has {}",
                candidate.plan.len(),
                model.layers.len()
            )));
        }
        let layout = Layout::of(&candidate.plan)?;
        let mut config = model.config.clone();
        config.num_hidden_layers = layout.blocks.len();
        let units: HashMap<String, LinearUnit> = linear_units(model)
            .into_iter()
            .map(|u| (u.name.clone(), u))
            .collect();
        let mut tensors = Vec::new();
        for (name, shape) in expected_tensors(&config) {
            let (piece, block) = match name.strip_prefix("model.layers.") {
                Some(rest) => {
                    let (index, local) = rest.split_once('.').expect("block tensor names");
                    let out: usize = index.parse().expect("block index");
                    let kept = layout.blocks[out];
                    (block_piece(model, &units, kept, local)?, Some(out))
                }
                None => (global_piece(model, &name)?, None),
            };
            tensors.push(OutTensor {
                name,
                shape,
                piece,
                block,
            });
        }
        Ok(OutModel {
            config,
            layout,
            tensors,
        })
    }
}

fn missing(name: &str) -> Error {
    Error::Invalid(format!("the candidate model has no tensor for `{name}`"))
}

fn global_piece<'a>(model: &'a Model, name: &str) -> Result<Piece<'a>> {
    Ok(match name {
        "model.embed_tokens.weight" => Piece::Matrix(&model.embed_tokens),
        "model.norm.weight" => Piece::Vector(&model.norm),
        "lm_head.weight" => Piece::Matrix(&model.lm_head),
        other => return Err(missing(other)),
    })
}

/// The piece for `local` (the name after `model.layers.N.`) of a kept block.
fn block_piece<'a>(
    model: &'a Model,
    units: &HashMap<String, LinearUnit>,
    kept: KeptBlock,
    local: &str,
) -> Result<Piece<'a>> {
    let b = kept.source;
    let layer = &model.layers[b];
    if local == "input_layernorm.weight" {
        return Ok(Piece::Vector(&layer.input_layernorm));
    }
    if local == "post_attention_layernorm.weight" {
        return Ok(Piece::Vector(&layer.post_attention_layernorm));
    }
    let (module, kind) = local.rsplit_once('.').ok_or_else(|| missing(local))?;
    let unit = units
        .get(&format!("model.layers.{b}.{module}"))
        .ok_or_else(|| missing(local))?;
    let kinds: Vec<LinearKind> = unit.parts.iter().map(|p| p.kind).collect();
    match kind {
        "bias" => {
            let bias = model
                .linear(b, kinds[0])
                .bias
                .as_deref()
                .ok_or_else(|| missing(local))?;
            Ok(Piece::Vector(bias))
        }
        "weight" => {
            let data = if kinds.iter().all(|&k| kept.runs(k)) {
                linear_data(model, unit)
            } else {
                LinearData::Dropped
            };
            Ok(Piece::Linear {
                data,
                rows: unit.rows,
                cols: unit.cols,
                kinds,
            })
        }
        _ => Err(missing(local)),
    }
}

/// The unit's weight in its stored form: one packed or masked matrix when its parts are
/// exactly the rows of one (a fused unit's parts are row views of the same matrix).
fn linear_data<'a>(model: &'a Model, unit: &LinearUnit) -> LinearData<'a> {
    let weights: Vec<&'a Weight> = unit
        .parts
        .iter()
        .map(|p| &model.linear(unit.block, p.kind).weight)
        .collect();
    let parts = unit.parts.iter().zip(&weights);
    if let Some((m, _)) = weights[0].as_packed() {
        let covers = m.rows() == unit.rows
            && parts.clone().all(|(p, w)| {
                matches!(w.as_packed(), Some((x, r)) if std::ptr::eq(x, m) && r == p.row_offset)
            });
        if covers {
            return LinearData::Packed(m);
        }
    }
    if let Some((m, _)) = weights[0].as_masked() {
        let covers = m.rows() == unit.rows
            && parts.clone().all(|(p, w)| {
                matches!(w.as_masked(), Some((x, r)) if std::ptr::eq(x, m) && r == p.row_offset)
            });
        if covers {
            return LinearData::Masked(m);
        }
    }
    LinearData::Dense(weights)
}

impl LinearData<'_> {
    /// The layer's weight decoded to f32, `[rows, cols]` row-major (zeros when dropped).
    pub fn to_f32(&self, rows: usize, cols: usize) -> Vec<f32> {
        match self {
            LinearData::Packed(m) => Weight::from_packed((*m).clone()).to_f32_vec(),
            LinearData::Masked(m) => {
                let mut out = vec![0f32; rows * cols];
                m.decode_rows_into(0, &mut out);
                out
            }
            LinearData::Dense(parts) => {
                let mut out = Vec::with_capacity(rows * cols);
                for w in parts {
                    out.extend(w.to_f32_vec());
                }
                out
            }
            LinearData::Dropped => vec![0f32; rows * cols],
        }
    }

    /// Whether the layer is the model's weights as loaded: every part dense, or llama.cpp
    /// blocks (only a GGUF source's own tensors are held as those). A GGUF writer copies such
    /// a layer from its source.
    pub fn is_as_loaded(&self) -> bool {
        let loaded = |w: &&Weight| matches!(w.kind(), WeightKind::Dense(_) | WeightKind::Ggml(_));
        matches!(self, LinearData::Dense(parts) if parts.iter().all(loaded))
    }

    /// A short name of the stored form, for reports.
    pub fn kind_name(&self) -> String {
        match self {
            LinearData::Packed(m) => format!("{}-bit g{}", m.bits(), m.group_size()),
            LinearData::Masked(_) => "sparse".into(),
            LinearData::Dense(_) if self.is_as_loaded() => "dense".into(),
            LinearData::Dense(parts) => format!("{} (written dense)", parts[0].kind()),
            LinearData::Dropped => "dropped".into(),
        }
    }
}
