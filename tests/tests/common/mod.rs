#![allow(dead_code)] // each test binary uses a different subset of these helpers
//! Paths to the real assets (fetched by `scripts/fetch-assets`) and fixtures.

use std::path::PathBuf;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A file under `assets/`, with a clear failure when the assets were never fetched.
pub fn asset(rel: &str) -> PathBuf {
    let p = root().join("assets").join(rel);
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-assets first",
        p.display()
    );
    p
}

pub fn fixture(rel: &str) -> PathBuf {
    root().join("tests/fixtures").join(rel)
}

pub fn demo_model() -> PathBuf {
    asset("smollm2-135m-instruct.gguf")
}
