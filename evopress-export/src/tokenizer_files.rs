//! The tokenizer files of an exported HF directory: `tokenizer.json`, `tokenizer_config.json`
//! (special tokens, chat template), `special_tokens_map.json` and `generation_config.json`.
//!
//! From a GGUF source they are rebuilt from the `tokenizer.*` metadata. Every special token is
//! named explicitly and the tokenizer class is `PreTrainedTokenizerFast`, which has no default
//! special tokens: a class such as `LlamaTokenizerFast` would invent `<s>`/`</s>` when they are
//! not named and append them past the embedding. From an HF source the files are carried over,
//! with only the merges of `tokenizer.json` rewritten for older `tokenizers` readers.

use evopress_core::fsutil::write_atomically;
use evopress_core::gguf::{GgufFile, MetaValue};
use evopress_core::tokenizer::{merges_as_strings, Tokenizer};
use evopress_core::{Error, ModelConfig, ModelSource, Result, TensorSource};
use serde_json::{json, Map, Value};
use std::path::Path;

/// Token ids the model config and generation need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
}

/// Writes the tokenizer files of `source` into `out`; returns the special ids for
/// `config.json`. A source without a tokenizer writes none; the ids then come from the config.
pub fn write(out: &Path, source: &ModelSource, config: &ModelConfig) -> Result<SpecialIds> {
    match source {
        ModelSource::Gguf(g) => from_gguf(out, g, config),
        ModelSource::Hf(h) => from_hf(out, h.path(), source.tokenizer()?.as_ref(), config),
    }
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).expect("a JSON value serializes") + "\n";
    write_atomically(path, text.as_bytes())
}

fn from_gguf(out: &Path, g: &GgufFile, config: &ModelConfig) -> Result<SpecialIds> {
    if g.get("tokenizer.ggml.tokens").is_none() {
        return Ok(SpecialIds {
            bos: config.bos_token_id,
            eos: config.eos_token_id,
            pad: config.eos_token_id,
        });
    }
    let tok = Tokenizer::from_gguf(g)?;
    let id = |k: &str| -> Result<Option<u32>> {
        match g.get(&format!("tokenizer.ggml.{k}")) {
            None => Ok(None),
            Some(_) => g.get_u32(&format!("tokenizer.ggml.{k}")).map(Some),
        }
    };
    let flag = |k: &str| {
        g.get(&format!("tokenizer.ggml.{k}"))
            .and_then(MetaValue::as_bool)
    };
    let (bos, eos, unk, eot) = (
        id("bos_token_id")?,
        id("eos_token_id")?,
        id("unknown_token_id")?,
        id("eot_token_id")?,
    );
    // Without a pad token, batched generation pads with EOS (what transformers does anyway,
    // after a warning).
    let pad = id("padding_token_id")?.or(eos);
    let add_bos = flag("add_bos_token").unwrap_or(false);
    let add_eos = flag("add_eos_token").unwrap_or(false);
    let text = |id: Option<u32>| -> Result<Option<String>> {
        id.map(|i| {
            tok.id_to_token(i).ok_or_else(|| {
                Error::format(
                    g.path(),
                    format!("special token id {i} is outside the vocabulary"),
                )
            })
        })
        .transpose()
    };

    let mut tokenizer_json: Value =
        serde_json::from_str(&tok.to_json()?).expect("to_json writes JSON");
    if add_bos || add_eos {
        tokenizer_json["post_processor"] = template_processing(
            add_bos.then(|| (text(bos).ok().flatten(), bos)),
            add_eos.then(|| (text(eos).ok().flatten(), eos)),
        );
    }
    write_json(&out.join("tokenizer.json"), &tokenizer_json)?;

    let added = tok.added_tokens();
    let mut decoder = Map::new();
    for (i, content, special) in &added {
        decoder.insert(
            i.to_string(),
            json!({
                "content": content,
                "lstrip": false,
                "normalized": false,
                "rstrip": false,
                "single_word": false,
                "special": special,
            }),
        );
    }
    let named: Vec<(&str, Option<String>)> = vec![
        ("bos_token", text(bos)?),
        ("eos_token", text(eos)?),
        ("unk_token", text(unk)?),
        ("pad_token", text(pad)?),
    ];
    let additional: Vec<&String> = added
        .iter()
        .filter(|(_, c, special)| *special && !named.iter().any(|(_, t)| t.as_ref() == Some(c)))
        .map(|(_, c, _)| c)
        .collect();
    let mut cfg = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": additional,
        "clean_up_tokenization_spaces": false,
        "model_max_length": config.max_position_embeddings,
        // PreTrainedTokenizerFast would also return token_type_ids, which a decoder-only
        // model's generate() rejects.
        "model_input_names": ["input_ids", "attention_mask"],
    });
    let mut map = json!({ "additional_special_tokens": additional });
    for (key, value) in &named {
        cfg[*key] = value.clone().into();
        if let Some(v) = value {
            map[*key] = v.clone().into();
        }
    }
    if let Some(t) = g.get("tokenizer.chat_template").and_then(MetaValue::as_str) {
        cfg["chat_template"] = t.into();
    }
    write_json(&out.join("tokenizer_config.json"), &cfg)?;
    write_json(&out.join("special_tokens_map.json"), &map)?;

    let stop: Vec<u32> = eos
        .into_iter()
        .chain(eot.filter(|&t| Some(t) != eos))
        .collect();
    let mut gen = json!({ "_from_model_config": false, "pad_token_id": pad });
    if let Some(b) = bos {
        gen["bos_token_id"] = b.into();
    }
    gen["eos_token_id"] = match stop.as_slice() {
        [one] => (*one).into(),
        many => many.to_vec().into(),
    };
    write_json(&out.join("generation_config.json"), &gen)?;
    Ok(SpecialIds { bos, eos, pad })
}

/// A post-processor that adds BOS and/or EOS around every sequence, as llama.cpp's
/// `add_bos_token` / `add_eos_token` do.
fn template_processing(
    bos: Option<(Option<String>, Option<u32>)>,
    eos: Option<(Option<String>, Option<u32>)>,
) -> Value {
    let mut special = Map::new();
    let mut piece = |t: &Option<(Option<String>, Option<u32>)>| -> Option<Value> {
        let (Some(text), Some(id)) = t.clone()? else {
            return None;
        };
        special.insert(
            text.clone(),
            json!({ "id": text, "ids": [id], "tokens": [text] }),
        );
        Some(json!({ "SpecialToken": { "id": text, "type_id": 0 } }))
    };
    let (b, e) = (piece(&bos), piece(&eos));
    let seq = |id: &str| json!({ "Sequence": { "id": id, "type_id": 0 } });
    let mut single: Vec<Value> = b.iter().cloned().collect();
    single.push(seq("A"));
    single.extend(e.clone());
    let mut pair = single.clone();
    pair.extend(b);
    pair.push(seq("B"));
    pair.extend(e);
    json!({
        "type": "TemplateProcessing",
        "single": single,
        "pair": pair,
        "special_tokens": special,
    })
}

/// HF source: the tokenizer files are copied, `tokenizer.json` with its merges rewritten.
fn from_hf(
    out: &Path,
    dir: &Path,
    tok: Option<&Tokenizer>,
    config: &ModelConfig,
) -> Result<SpecialIds> {
    let read_json = |name: &str| -> Result<Option<Value>> {
        let p = dir.join(name);
        if !p.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::format(&p, format!("not valid JSON: {e}")))
    };
    if let Some(mut t) = read_json("tokenizer.json")? {
        merges_as_strings(&mut t);
        write_json(&out.join("tokenizer.json"), &t)?;
    }
    if let Some(v) = read_json("special_tokens_map.json")? {
        write_json(&out.join("special_tokens_map.json"), &v)?;
    }
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        let text = std::fs::read(&jinja).map_err(|e| Error::io(&jinja, e))?;
        write_atomically(&out.join("chat_template.jinja"), &text)?;
    }
    let tcfg = read_json("tokenizer_config.json")?;
    if let Some(v) = &tcfg {
        write_json(&out.join("tokenizer_config.json"), v)?;
    }
    let token_id = |key: &str| -> Option<u32> {
        let v = tcfg.as_ref()?.get(key)?;
        let text = v.as_str().or_else(|| v.get("content")?.as_str())?;
        tok?.token_to_id(text)
    };
    let ids = SpecialIds {
        bos: config.bos_token_id,
        eos: config.eos_token_id,
        pad: token_id("pad_token").or(config.eos_token_id),
    };
    let gen = match read_json("generation_config.json")? {
        Some(v) => v,
        None => json!({
            "_from_model_config": false,
            "bos_token_id": ids.bos,
            "eos_token_id": ids.eos,
            "pad_token_id": ids.pad,
        }),
    };
    write_json(&out.join("generation_config.json"), &gen)?;
    Ok(ids)
}
