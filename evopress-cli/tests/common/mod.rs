//! What every CLI test needs: the repository root, the demo model, and running `evopress`.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn model() -> PathBuf {
    let p = root().join("assets/smollm2-135m-instruct.gguf");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-assets first",
        p.display()
    );
    p
}

/// `evopress args...`, run from the repository root.
pub fn evopress(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_evopress"));
    c.current_dir(root()).args(args);
    c
}

pub fn run(args: &[&str]) -> Output {
    evopress(args).output().expect("run evopress")
}

/// Runs a command expected to succeed; returns its output.
pub fn ok(args: &[&str]) -> Output {
    let out = run(args);
    assert!(
        out.status.success(),
        "evopress {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
