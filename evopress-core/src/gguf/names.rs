//! GGUF tensor names to HF names. The model is assembled from HF names only, so this table
//! is the whole difference between the two conventions.

/// Per-block tensors: GGUF stem after `blk.N.` and HF stem after `model.layers.N.`.
const BLOCK_NAMES: [(&str, &str); 10] = [
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("attn_qkv", "self_attn.qkv_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
];

/// Model-level tensors.
const GLOBAL_NAMES: [(&str, &str); 3] = [
    ("token_embd", "model.embed_tokens"),
    ("output_norm", "model.norm"),
    ("output", "lm_head"),
];

/// The HF name of GGUF tensor `name`, or `None` for tensors with no HF counterpart (they
/// keep their GGUF name). `fused_gate_up` is set for Phi-3, whose `ffn_up` holds HF's
/// `gate_up_proj` (gate rows first, as in HF).
pub fn hf_name(name: &str, fused_gate_up: bool) -> Option<String> {
    let (stem, kind) = name.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    if let Some(rest) = stem.strip_prefix("blk.") {
        let (layer, gguf) = rest.split_once('.')?;
        layer.parse::<usize>().ok()?;
        let hf = match gguf {
            "ffn_up" if fused_gate_up => "mlp.gate_up_proj",
            _ => BLOCK_NAMES.iter().find(|(g, _)| *g == gguf)?.1,
        };
        return Some(format!("model.layers.{layer}.{hf}.{kind}"));
    }
    let hf = GLOBAL_NAMES.iter().find(|(g, _)| *g == stem)?.1;
    Some(format!("{hf}.{kind}"))
}

/// The GGUF name of HF tensor `name` (the inverse of [`hf_name`]), or `None` for names with no
/// GGUF counterpart. `fused_gate_up` as for [`hf_name`].
pub fn gguf_name(name: &str, fused_gate_up: bool) -> Option<String> {
    let (stem, kind) = name.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    if let Some(rest) = stem.strip_prefix("model.layers.") {
        let (layer, hf) = rest.split_once('.')?;
        layer.parse::<usize>().ok()?;
        let gguf = match hf {
            "mlp.gate_up_proj" if fused_gate_up => "ffn_up",
            _ => BLOCK_NAMES.iter().find(|(_, h)| *h == hf)?.0,
        };
        return Some(format!("blk.{layer}.{gguf}.{kind}"));
    }
    let gguf = GLOBAL_NAMES.iter().find(|(_, h)| *h == stem)?.0;
    Some(format!("{gguf}.{kind}"))
}

#[cfg(test)]
mod tests {
    use super::{gguf_name, hf_name};

    #[test]
    fn maps_block_and_global_names() {
        let cases = [
            (
                "blk.0.attn_q.weight",
                "model.layers.0.self_attn.q_proj.weight",
            ),
            (
                "blk.12.attn_k.bias",
                "model.layers.12.self_attn.k_proj.bias",
            ),
            (
                "blk.3.attn_output.weight",
                "model.layers.3.self_attn.o_proj.weight",
            ),
            (
                "blk.29.ffn_down.weight",
                "model.layers.29.mlp.down_proj.weight",
            ),
            (
                "blk.1.attn_norm.weight",
                "model.layers.1.input_layernorm.weight",
            ),
            (
                "blk.1.ffn_norm.weight",
                "model.layers.1.post_attention_layernorm.weight",
            ),
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("output_norm.weight", "model.norm.weight"),
            ("output.weight", "lm_head.weight"),
        ];
        for (gguf, hf) in cases {
            assert_eq!(hf_name(gguf, false).as_deref(), Some(hf), "{gguf}");
            assert_eq!(gguf_name(hf, false).as_deref(), Some(gguf), "{hf}");
        }
        assert_eq!(
            gguf_name("model.layers.2.mlp.gate_up_proj.weight", true).as_deref(),
            Some("blk.2.ffn_up.weight")
        );
        assert_eq!(gguf_name("model.layers.x.mlp.up_proj.weight", false), None);
    }

    #[test]
    fn phi3_fused_up_is_gate_up() {
        assert_eq!(
            hf_name("blk.2.ffn_up.weight", true).as_deref(),
            Some("model.layers.2.mlp.gate_up_proj.weight")
        );
    }

    #[test]
    fn unknown_names_have_no_hf_name() {
        for name in [
            "rope_freqs.weight",
            "blk.x.attn_q.weight",
            "blk.0.attn_q.scale",
        ] {
            assert_eq!(hf_name(name, false), None, "{name}");
        }
    }
}
