//! The tensors each architecture needs, under their HF names and shapes, so that a checkpoint
//! that disagrees with its `config.json` fails at load with the tensor named, not later with
//! an index panic inside the forward pass.

use crate::config::{Arch, ModelConfig};
use crate::error::{Error, Result};
use crate::source::TensorSource;

/// Every tensor the forward pass of `cfg` reads, with its HF shape (`[out, in]` for linears,
/// `[n]` for norms and biases), in checkpoint order: embeddings, then block by block, then
/// the final norm and the head.
pub fn expected_tensors(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (hidden, vocab) = (cfg.hidden_size, cfg.vocab_size);
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![vocab, hidden])];
    for layer in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{layer}.");
        out.push((format!("{p}input_layernorm.weight"), vec![hidden]));
        out.extend(attention_tensors(cfg, &p));
        out.push((format!("{p}post_attention_layernorm.weight"), vec![hidden]));
        out.extend(mlp_tensors(cfg, &p));
    }
    out.push(("model.norm.weight".to_string(), vec![hidden]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![vocab, hidden]));
    }
    out
}

/// Checks that `src` holds every tensor in [`expected_tensors`] with the expected shape.
/// Extra tensors are allowed (checkpoints carry buffers such as `rotary_emb.inv_freq`).
pub fn check_shapes(cfg: &ModelConfig, src: &dyn TensorSource) -> Result<()> {
    for (name, expected) in expected_tensors(cfg) {
        let got = src.shape(&name).ok_or_else(|| Error::MissingTensor {
            path: src.path().into(),
            name: name.clone(),
        })?;
        if got != expected {
            return Err(Error::Shape {
                path: src.path().into(),
                name,
                expected,
                got,
            });
        }
    }
    Ok(())
}

/// Phi-3 fuses q/k/v into `qkv_proj` (rows q, then k, then v); the others keep them apart.
/// `attention_bias` gives q/k/v biases (Qwen2), and in Llama also an `o_proj` bias, because
/// transformers' `LlamaAttention` applies the flag to all four projections.
fn attention_tensors(cfg: &ModelConfig, p: &str) -> Vec<(String, Vec<usize>)> {
    let hidden = cfg.hidden_size;
    let q = cfg.num_attention_heads * cfg.head_dim;
    let kv = cfg.num_key_value_heads * cfg.head_dim;
    let attn = format!("{p}self_attn.");
    let mut out = Vec::new();
    if cfg.arch == Arch::Phi3 {
        out.push((format!("{attn}qkv_proj.weight"), vec![q + 2 * kv, hidden]));
    } else {
        for (proj, rows) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
            out.push((format!("{attn}{proj}.weight"), vec![rows, hidden]));
            if cfg.attention_bias {
                out.push((format!("{attn}{proj}.bias"), vec![rows]));
            }
        }
    }
    out.push((format!("{attn}o_proj.weight"), vec![hidden, q]));
    if cfg.attention_bias && cfg.arch == Arch::Llama {
        out.push((format!("{attn}o_proj.bias"), vec![hidden]));
    }
    out
}

/// Phi-3 fuses gate and up into `gate_up_proj` (rows gate, then up).
fn mlp_tensors(cfg: &ModelConfig, p: &str) -> Vec<(String, Vec<usize>)> {
    let (hidden, inter) = (cfg.hidden_size, cfg.intermediate_size);
    let mlp = format!("{p}mlp.");
    let mut out = if cfg.arch == Arch::Phi3 {
        vec![(format!("{mlp}gate_up_proj.weight"), vec![2 * inter, hidden])]
    } else {
        vec![
            (format!("{mlp}gate_proj.weight"), vec![inter, hidden]),
            (format!("{mlp}up_proj.weight"), vec![inter, hidden]),
        ]
    };
    out.push((format!("{mlp}down_proj.weight"), vec![hidden, inter]));
    out
}
