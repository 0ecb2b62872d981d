//! The tokenizer rebuilt from the GGUF vocabulary must reproduce HF's ids exactly.

mod common;

use evopress_core::gguf::{GgufFile, GgufWriter, MetaValue};
use evopress_core::tokenizer::Tokenizer;
use evopress_core::Error;

fn smollm2() -> Tokenizer {
    let g = GgufFile::open(common::smollm2_gguf()).unwrap();
    let t = std::time::Instant::now();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    eprintln!("built the tokenizer in {:?}", t.elapsed());
    tok
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn reference_cases_match_hf_ids() {
    let tok = smollm2();
    assert_eq!(tok.vocab_size(), 49152);
    let reference = common::reference();
    for case in reference["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(tok.encode(text).unwrap(), ids(&case["ids"]), "{text:?}");
        assert_eq!(tok.decode(&ids(&case["ids"])).unwrap(), text);
    }
    let greedy = &reference["greedy"];
    let prompt = greedy["prompt"].as_str().unwrap();
    assert_eq!(tok.encode(prompt).unwrap(), ids(&greedy["prompt_ids"]));
    assert_eq!(
        tok.decode(&ids(&greedy["new_ids"])).unwrap(),
        greedy["new_text"].as_str().unwrap()
    );
}

#[test]
fn state_of_the_union_2021_has_reference_token_count() {
    let text = std::fs::read_to_string(common::asset("sotu/2021_joseph_r_biden_d.txt")).unwrap();
    let tok = smollm2();
    let t = std::time::Instant::now();
    let ids = tok.encode(&text).unwrap();
    eprintln!(
        "encoded {} bytes to {} tokens in {:?}",
        text.len(),
        ids.len(),
        t.elapsed()
    );
    assert_eq!(ids.len(), 10_843);
    assert_eq!(tok.decode(&ids).unwrap(), text);
}

#[test]
fn control_tokens_are_special_and_whole() {
    let tok = smollm2();
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
    let ids = tok.encode("<|im_start|>user\nHi<|im_end|>").unwrap();
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids.last(), Some(&2));
    // Digits are split one by one (the `smollm` pre-tokenizer).
    assert_eq!(tok.encode("2021").unwrap().len(), 4);
}

#[test]
fn saved_tokenizer_json_round_trips() {
    let tok = smollm2();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    tok.save(&path).unwrap();
    let loaded = Tokenizer::from_file(&path).unwrap();
    assert_eq!(loaded.vocab_size(), tok.vocab_size());
    let text = std::fs::read_to_string(common::asset("sotu/2021_joseph_r_biden_d.txt")).unwrap();
    assert_eq!(loaded.encode(&text).unwrap(), tok.encode(&text).unwrap());
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(json["model"]["type"], "BPE");
    assert_eq!(json["added_tokens"].as_array().unwrap().len(), 17);
}

#[test]
fn decode_rejects_ids_outside_the_vocabulary() {
    let e = smollm2().decode(&[5, 49152]).unwrap_err();
    assert!(e.to_string().contains("49152"), "{e}");
}

#[test]
fn missing_tokenizer_json_names_the_file() {
    let e = Tokenizer::from_file("/nonexistent/tokenizer.json").unwrap_err();
    assert!(matches!(e, Error::Io { .. }));
    assert!(e.to_string().contains("/nonexistent/tokenizer.json"), "{e}");
}

fn gguf_with_tokenizer(model: &str, pre: &str) -> (tempfile::TempDir, GgufFile) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tok.gguf");
    let strings =
        |v: &[&str]| MetaValue::Array(v.iter().map(|s| MetaValue::String(s.to_string())).collect());
    let mut w = GgufWriter::new();
    w.add_meta("tokenizer.ggml.model", MetaValue::String(model.into()))
        .add_meta("tokenizer.ggml.pre", MetaValue::String(pre.into()))
        .add_meta(
            "tokenizer.ggml.tokens",
            strings(&["<s>", "a", "b", "ab", "Ġ", "Ġab"]),
        )
        .add_meta("tokenizer.ggml.merges", strings(&["a b", "Ġ ab"]))
        .add_meta(
            "tokenizer.ggml.token_type",
            MetaValue::Array([3, 1, 1, 1, 1, 1].map(MetaValue::I32).to_vec()),
        );
    w.write(&path).unwrap();
    (dir, GgufFile::open(&path).unwrap())
}

#[test]
fn tiny_gguf_vocabulary_builds_a_bpe() {
    let (_dir, g) = gguf_with_tokenizer("gpt2", "gpt-2");
    let tok = Tokenizer::from_gguf(&g).unwrap();
    assert_eq!(tok.encode("ab ab<s>").unwrap(), [3, 5, 0]);
    assert_eq!(tok.decode(&[3, 5, 0]).unwrap(), "ab ab<s>");
}

#[test]
fn unsupported_tokenizers_are_named() {
    for (model, pre, what) in [
        ("llama", "default", "tokenizer.ggml.model `llama`"),
        ("gpt2", "jais", "tokenizer.ggml.pre `jais`"),
    ] {
        let (_dir, g) = gguf_with_tokenizer(model, pre);
        let e = Tokenizer::from_gguf(&g).expect_err("unsupported");
        assert!(matches!(e, Error::Unsupported { .. }), "{e}");
        assert!(e.to_string().contains(what), "{e}");
        assert!(e.to_string().contains("tok.gguf"), "{e}");
    }
}
