//! The model hyper-parameters the forward pass needs, read from an HF `config.json` or built
//! from GGUF metadata.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Decoder architectures we run. All are pre-norm RMSNorm + rotate-half RoPE + SwiGLU; they
/// differ in tensor layout (fused projections), biases and defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    Phi3,
}

impl Arch {
    pub fn from_model_type(s: &str) -> Option<Arch> {
        match s {
            "llama" => Some(Arch::Llama),
            "mistral" => Some(Arch::Mistral),
            "qwen2" => Some(Arch::Qwen2),
            "phi3" => Some(Arch::Phi3),
            _ => None,
        }
    }
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
            Arch::Phi3 => "phi3",
        }
    }
    /// The HF class name written to `config.json` by `convert`.
    pub fn hf_class(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Mistral => "MistralForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Phi3 => "Phi3ForCausalLM",
        }
    }
}

/// Llama-3 style frequency-dependent RoPE scaling (`rope_type: "llama3"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Llama3RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry biases (Qwen2).
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

/// The subset of HF `config.json` we read. Unknown keys are ignored: HF configs carry many
/// keys irrelevant to inference (`torch_dtype`, `transformers_version`, ...).
#[derive(Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    rms_norm_eps: Option<f32>,
    rope_theta: Option<f32>,
    rope_scaling: Option<serde_json::Value>,
    /// transformers >= 5 moves `rope_theta` and the scaling fields here.
    rope_parameters: Option<serde_json::Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    hidden_act: Option<String>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
}

fn first_id(v: &Option<serde_json::Value>) -> Option<u32> {
    match v.as_ref()? {
        serde_json::Value::Number(n) => n.as_u64().map(|x| x as u32),
        serde_json::Value::Array(a) => a.first()?.as_u64().map(|x| x as u32),
        _ => None,
    }
}

impl ModelConfig {
    /// Reads and validates an HF `config.json`.
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let hf: HfConfig = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, format!("not a valid HF config.json: {e}")))?;
        let mt = hf.model_type.as_deref().unwrap_or("<missing>");
        let arch = Arch::from_model_type(mt).ok_or_else(|| Error::Unsupported {
            path: path.into(),
            what: format!("model_type `{mt}`"),
            hint: "supported: llama, mistral, qwen2, phi3".into(),
        })?;
        if let Some(act) = &hf.hidden_act {
            if act != "silu" {
                return Err(Error::Unsupported {
                    path: path.into(),
                    what: format!("hidden_act `{act}`"),
                    hint: "only silu (SwiGLU) MLPs are implemented".into(),
                });
            }
        }
        let params = hf.rope_parameters.as_ref().filter(|v| v.is_object());
        let scaling = match &hf.rope_scaling {
            None | Some(serde_json::Value::Null) => params,
            Some(v) => Some(v),
        };
        let rope_scaling = match scaling {
            Some(v) if rope_type(v) != "default" => Some(parse_rope_scaling(path, v)?),
            _ => None,
        };
        let nested_theta = params
            .and_then(|p| p.get("rope_theta")?.as_f64())
            .map(|t| t as f32);
        let rope_theta = hf.rope_theta.or(nested_theta);
        // Where a field that fails validation came from.
        let theta_nested = hf.rope_theta.is_none() && nested_theta.is_some();
        let head_dim_derived = hf.head_dim.is_none();
        let key = move |field: &str| match field {
            "rope_theta" if theta_nested => "rope_parameters.rope_theta".to_string(),
            "head_dim" if head_dim_derived => {
                "head_dim (hidden_size / num_attention_heads)".to_string()
            }
            _ => field.to_string(),
        };
        let cfg = ModelConfig {
            arch,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: hf.num_attention_heads,
            num_key_value_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim: hf
                .head_dim
                .unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1)),
            vocab_size: hf.vocab_size,
            rms_norm_eps: hf.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: rope_theta.unwrap_or(10000.0),
            rope_scaling,
            max_position_embeddings: hf.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
            // Qwen2 always has q/k/v biases, whatever the key says.
            attention_bias: arch == Arch::Qwen2 || hf.attention_bias.unwrap_or(false),
            bos_token_id: first_id(&hf.bos_token_id),
            eos_token_id: first_id(&hf.eos_token_id),
        };
        cfg.validate(path, &key)?;
        Ok(cfg)
    }

    /// Checks the internal consistency the forward pass relies on. `key` names where a field
    /// came from (its HF `config.json` key, or the GGUF metadata key it was read or derived
    /// from), so an error points at the value to fix.
    pub fn validate(&self, path: &Path, key: &dyn Fn(&str) -> String) -> Result<()> {
        let bad = |field: &str, msg: String| Error::Config {
            path: path.into(),
            key: key(field),
            msg,
        };
        for (field, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
        ] {
            if v == 0 {
                return Err(bad(field, "must be positive".into()));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(bad(
                "num_key_value_heads",
                format!(
                    "{} does not divide the {} attention heads",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(bad(
                "head_dim",
                format!("{} must be even for RoPE", self.head_dim),
            ));
        }
        // Both enter the forward pass as divisors or exponents: a zero, negative or NaN value
        // turns every logit into NaN or inf.
        for (field, v) in [
            ("rope_theta", self.rope_theta),
            ("rms_norm_eps", self.rms_norm_eps),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(bad(field, format!("{v} must be a positive, finite number")));
            }
        }
        Ok(())
    }

    /// Writes an HF-style `config.json` that transformers loads (used by `convert`).
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "architectures": [self.arch.hf_class()],
            "model_type": self.arch.model_type(),
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "torch_dtype": "float32",
            // Explicit, because Phi3Config defaults it to 32000, which transformers rejects
            // as an embedding padding index whenever the vocabulary is smaller.
            "pad_token_id": null,
        });
        let m = v.as_object_mut().expect("object");
        if self.arch == Arch::Llama {
            m.insert("attention_bias".into(), self.attention_bias.into());
            m.insert("mlp_bias".into(), false.into());
        }
        if let Some(id) = self.bos_token_id {
            m.insert("bos_token_id".into(), id.into());
        }
        if let Some(id) = self.eos_token_id {
            m.insert("eos_token_id".into(), id.into());
        }
        if let Some(s) = &self.rope_scaling {
            m.insert(
                "rope_scaling".into(),
                serde_json::json!({
                    "rope_type": "llama3",
                    "factor": s.factor,
                    "low_freq_factor": s.low_freq_factor,
                    "high_freq_factor": s.high_freq_factor,
                    "original_max_position_embeddings": s.original_max_position_embeddings,
                }),
            );
        }
        v
    }

    /// Inverse RoPE frequencies per rotary pair, with Llama-3 scaling applied when configured.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let half = self.head_dim / 2;
        let mut inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / self.rope_theta.powf((2 * i) as f32 / self.head_dim as f32))
            .collect();
        if let Some(s) = &self.rope_scaling {
            let old = s.original_max_position_embeddings as f32;
            let low_wavelen = old / s.low_freq_factor;
            let high_wavelen = old / s.high_freq_factor;
            for f in inv.iter_mut() {
                let wavelen = 2.0 * std::f32::consts::PI / *f;
                if wavelen > low_wavelen {
                    *f /= s.factor;
                } else if wavelen >= high_wavelen {
                    let smooth = (old / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    *f = (1.0 - smooth) * *f / s.factor + smooth * *f;
                }
            }
        }
        inv
    }

    /// Parameters of one decoder block's linear layers.
    pub fn linear_params_per_block(&self) -> usize {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        h * q + 2 * h * kv + q * h + 3 * h * i
    }
}

/// The scaling rule's name (`rope_type`, or the older `type`); "default" means none.
fn rope_type(v: &serde_json::Value) -> &str {
    v.get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default")
}

fn parse_rope_scaling(path: &Path, v: &serde_json::Value) -> Result<Llama3RopeScaling> {
    let bad = |msg: String| Error::Config {
        path: path.into(),
        key: "rope_scaling".into(),
        msg,
    };
    let kind = rope_type(v);
    if kind != "llama3" {
        return Err(Error::Unsupported {
            path: path.into(),
            what: format!("rope_scaling type `{kind}`"),
            hint: "only `llama3` scaling (or none) is implemented".into(),
        });
    }
    let num = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_f64())
            .ok_or_else(|| bad(format!("`{k}` missing or not a number")))
    };
    Ok(Llama3RopeScaling {
        factor: num("factor")? as f32,
        low_freq_factor: num("low_freq_factor")? as f32,
        high_freq_factor: num("high_freq_factor")? as f32,
        original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
    })
}
