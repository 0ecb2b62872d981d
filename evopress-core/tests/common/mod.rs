//! Locating the real-model assets (fetched by `scripts/fetch-assets`, also in CI) and the
//! committed reference fixtures.

#![allow(dead_code)] // each test crate uses its own subset

use std::path::PathBuf;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A file under `assets/`; fails with instructions when it has not been fetched.
pub fn asset(rel: &str) -> PathBuf {
    let p = workspace().join("assets").join(rel);
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-assets first",
        p.display()
    );
    p
}

pub fn smollm2_gguf() -> PathBuf {
    asset("smollm2-135m-instruct.gguf")
}

/// Reference token ids and logits from HF transformers (the fixture names the model and version).
pub fn reference() -> serde_json::Value {
    let p = workspace().join("tests/fixtures/smollm2-logits.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).expect("fixture is JSON")
}
