//! llama.cpp's preset mixes (`llama-quantize … Q4_K_M`) as per-tensor types, following its
//! published rules (`llama_tensor_get_type` in llama.cpp's `src/llama-quant.cpp`, MIT
//! licence) for dense models; docs/gguf-search.md lists them. Mixture-of-experts, Falcon and
//! 70B-specific rules, imatrix-only types and user overrides are not reproduced.

use crate::ladder::fallback;
use evopress_core::{Error, Result};
use evopress_kernels::GgmlType;
use std::fmt;

/// A llama.cpp K-quant preset (`LLAMA_FTYPE_MOSTLY_*`).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    Q2_K,
    Q3_K_S,
    Q3_K_M,
    Q3_K_L,
    Q4_K_S,
    Q4_K_M,
    Q5_K_S,
    Q5_K_M,
    Q6_K,
}

impl Preset {
    pub const ALL: [Preset; 9] = [
        Preset::Q2_K,
        Preset::Q3_K_S,
        Preset::Q3_K_M,
        Preset::Q3_K_L,
        Preset::Q4_K_S,
        Preset::Q4_K_M,
        Preset::Q5_K_S,
        Preset::Q5_K_M,
        Preset::Q6_K,
    ];

    pub fn from_name(name: &str) -> Option<Preset> {
        Self::ALL
            .into_iter()
            .find(|p| p.to_string().eq_ignore_ascii_case(name))
    }

    /// The type every quantized tensor gets unless a rule says otherwise.
    pub fn default_type(self) -> GgmlType {
        use Preset::*;
        match self {
            Q2_K => GgmlType::Q2_K,
            Q3_K_S | Q3_K_M | Q3_K_L => GgmlType::Q3_K,
            Q4_K_S | Q4_K_M => GgmlType::Q4_K,
            Q5_K_S | Q5_K_M => GgmlType::Q5_K,
            Q6_K => GgmlType::Q6_K,
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What a tensor is to llama.cpp's rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The token embedding; `tied` when it is the output projection too.
    Embedding {
        tied: bool,
    },
    /// An untied LM head (`output.weight`).
    Output,
    AttnQ,
    AttnK,
    /// `attn_v`, or a fused `attn_qkv` (llama.cpp treats both alike).
    AttnV,
    AttnOutput,
    FfnGate,
    /// `ffn_up`, or a fused gate/up.
    FfnUp,
    FfnDown,
}

impl Role {
    /// The role of a unit named as in HF checkpoints (`model.layers.3.mlp.down_proj`).
    pub fn of_unit(name: &str, tied: bool) -> Option<Role> {
        if name == crate::builder::EMBEDDING {
            return Some(Role::Embedding { tied });
        }
        if name == crate::builder::HEAD {
            return Some(Role::Output);
        }
        let module = name.rsplit('.').next()?;
        Some(match module {
            "q_proj" => Role::AttnQ,
            "k_proj" => Role::AttnK,
            "v_proj" | "qkv_proj" => Role::AttnV,
            "o_proj" => Role::AttnOutput,
            "gate_proj" => Role::FfnGate,
            "up_proj" | "gate_up_proj" => Role::FfnUp,
            "down_proj" => Role::FfnDown,
            _ => return None,
        })
    }
}

/// The model facts the rules read.
#[derive(Clone, Copy, Debug)]
pub struct ModelShape {
    pub n_layers: usize,
    /// Query heads per key/value head.
    pub n_gqa: usize,
}

/// The type `preset` gives a tensor of `role` in `layer` whose rows have `cols` elements,
/// after llama.cpp's fallback for rows its blocks do not divide.
pub fn preset_type(
    preset: Preset,
    role: Role,
    layer: usize,
    cols: usize,
    shape: ModelShape,
) -> GgmlType {
    fallback(chosen_type(preset, role, layer, cols, shape), cols)
}

/// llama.cpp's choice before the fallback. The counters it keeps (`i_attention_wv`,
/// `i_ffn_down`) equal the layer index for a dense model.
fn chosen_type(preset: Preset, role: Role, i: usize, cols: usize, shape: ModelShape) -> GgmlType {
    use GgmlType as T;
    use Preset::*;
    let n = shape.n_layers;
    let more_bits = i < n / 8 || i >= 7 * n / 8 || (i as isize - (n / 8) as isize) % 3 == 2;
    let default = preset.default_type();
    match role {
        Role::Output | Role::Embedding { tied: true } => {
            if !cols.is_multiple_of(default.block_len()) {
                T::Q8_0
            } else {
                T::Q6_K
            }
        }
        Role::Embedding { tied: false } => default,
        Role::AttnV => match preset {
            Q2_K if shape.n_gqa >= 4 => T::Q4_K,
            Q2_K => T::Q3_K,
            Q3_K_M if i < 2 => T::Q5_K,
            Q3_K_M => T::Q4_K,
            Q3_K_L => T::Q5_K,
            Q4_K_M | Q5_K_M if more_bits => T::Q6_K,
            Q4_K_S if i < 4 => T::Q5_K,
            _ => default,
        },
        Role::FfnDown => match preset {
            Q2_K => T::Q3_K,
            Q3_K_M if i < n / 16 => T::Q5_K,
            Q3_K_M => T::Q4_K,
            Q3_K_L => T::Q5_K,
            Q4_K_M | Q5_K_M if more_bits => T::Q6_K,
            Q4_K_S if i < n / 8 => T::Q5_K,
            _ => default,
        },
        Role::AttnOutput => match preset {
            Q2_K => T::Q3_K,
            Q3_K_M => T::Q4_K,
            Q3_K_L => T::Q5_K,
            _ => default,
        },
        Role::AttnQ | Role::AttnK | Role::FfnGate | Role::FfnUp => default,
    }
}

/// The layer index in a unit name (`model.layers.7.…` → 7); 0 for tensors outside the blocks.
pub fn layer_of(name: &str) -> usize {
    name.strip_prefix("model.layers.")
        .and_then(|r| r.split('.').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Parses a preset name, listing the known ones on error.
pub fn parse_preset(name: &str) -> Result<Preset> {
    Preset::from_name(name).ok_or_else(|| {
        let known: Vec<String> = Preset::ALL.iter().map(|p| p.to_string()).collect();
        Error::Invalid(format!(
            "unknown llama.cpp preset `{name}`; known: {}",
            known.join(", ")
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use GgmlType as T;

    const LLAMA_32: ModelShape = ModelShape {
        n_layers: 32,
        n_gqa: 4,
    };

    #[test]
    fn q4_k_m_gives_more_bits_to_a_third_of_v_and_down() {
        // use_more_bits(i, 32): i < 4, i >= 28, or (i - 4) % 3 == 2.
        let v: Vec<usize> = (0..32)
            .filter(|&i| preset_type(Preset::Q4_K_M, Role::AttnV, i, 4096, LLAMA_32) == T::Q6_K)
            .collect();
        assert_eq!(
            v,
            [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
        );
        let q = preset_type(Preset::Q4_K_M, Role::AttnQ, 6, 4096, LLAMA_32);
        assert_eq!(q, T::Q4_K);
        let down = preset_type(Preset::Q4_K_M, Role::FfnDown, 5, 14336, LLAMA_32);
        assert_eq!(down, T::Q4_K);
    }

    #[test]
    fn q3_k_m_and_q2_k_rules() {
        let t = |p, r, i| preset_type(p, r, i, 4096, LLAMA_32);
        assert_eq!(t(Preset::Q3_K_M, Role::AttnV, 1), T::Q5_K);
        assert_eq!(t(Preset::Q3_K_M, Role::AttnV, 2), T::Q4_K);
        assert_eq!(t(Preset::Q3_K_M, Role::FfnDown, 1), T::Q5_K);
        assert_eq!(t(Preset::Q3_K_M, Role::FfnDown, 2), T::Q4_K);
        assert_eq!(t(Preset::Q3_K_M, Role::AttnOutput, 9), T::Q4_K);
        assert_eq!(t(Preset::Q3_K_M, Role::FfnUp, 9), T::Q3_K);
        assert_eq!(t(Preset::Q3_K_S, Role::AttnV, 0), T::Q3_K);
        assert_eq!(t(Preset::Q2_K, Role::AttnV, 0), T::Q4_K);
        let few_kv = ModelShape {
            n_layers: 32,
            n_gqa: 3,
        };
        assert_eq!(
            preset_type(Preset::Q2_K, Role::AttnV, 0, 4096, few_kv),
            T::Q3_K
        );
        assert_eq!(t(Preset::Q2_K, Role::FfnGate, 0), T::Q2_K);
        assert_eq!(t(Preset::Q6_K, Role::FfnDown, 0), T::Q6_K);
    }

    #[test]
    fn outputs_and_rows_that_k_quants_cannot_hold() {
        let t = |p, r, cols| preset_type(p, r, 0, cols, LLAMA_32);
        assert_eq!(t(Preset::Q3_K_M, Role::Output, 4096), T::Q6_K);
        assert_eq!(
            t(Preset::Q3_K_M, Role::Embedding { tied: true }, 4096),
            T::Q6_K
        );
        assert_eq!(
            t(Preset::Q3_K_M, Role::Embedding { tied: false }, 4096),
            T::Q3_K
        );
        // SmolLM2-135M: hidden 576, not a multiple of 256.
        assert_eq!(
            t(Preset::Q4_K_M, Role::Embedding { tied: true }, 576),
            T::Q8_0
        );
        assert_eq!(t(Preset::Q4_K_M, Role::AttnQ, 576), T::Q5_0);
        assert_eq!(t(Preset::Q3_K_M, Role::AttnQ, 576), T::Q4_0);
        assert_eq!(t(Preset::Q5_K_S, Role::FfnUp, 576), T::Q5_1);
        assert_eq!(t(Preset::Q6_K, Role::AttnK, 576), T::Q8_0);
    }

    #[test]
    fn unit_names_map_to_roles_and_layers() {
        assert_eq!(
            Role::of_unit("model.layers.3.self_attn.v_proj", true),
            Some(Role::AttnV)
        );
        assert_eq!(
            Role::of_unit("model.embed_tokens", true),
            Some(Role::Embedding { tied: true })
        );
        assert_eq!(
            Role::of_unit("model.layers.3.mlp.gate_up_proj", false),
            Some(Role::FfnUp)
        );
        assert_eq!(layer_of("model.layers.17.mlp.down_proj"), 17);
        assert_eq!(layer_of("lm_head"), 0);
        assert!(parse_preset("q4_k_m").is_ok());
        assert!(parse_preset("Q4_K_X")
            .unwrap_err()
            .to_string()
            .contains("Q4_K_M"));
    }
}
