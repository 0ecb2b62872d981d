//! The demo model, compressed candidates of it (real layers quantized with RTN or pruned by
//! magnitude, so the codes and masks are real), and the optional Python cross-checks.

#![allow(dead_code)] // each test binary uses its own subset

use evopress_core::units::linear_units;
use evopress_core::{load_model, BlockPlan, Candidate, LinearKind, LoadedModel, Model};
use evopress_kernels::cpu::Cpu;
use evopress_quant::{rtn, QuantSpec};
use evopress_sparse::{encode, magnitude_prune, ValueType};
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn demo_path() -> PathBuf {
    let p = root().join("assets/smollm2-135m-instruct.gguf");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-assets first",
        p.display()
    );
    p
}

pub fn demo() -> LoadedModel {
    load_model(&demo_path()).expect("the demo model loads")
}

/// Text the perplexity checks score.
pub fn text_path() -> PathBuf {
    root().join("assets/sotu/2021_joseph_r_biden_d.txt")
}

/// The first `n` tokens of [`text_path`], as evopress eval tokenizes it.
pub fn tokens(loaded: &LoadedModel, n: usize) -> Vec<u32> {
    let text = std::fs::read_to_string(text_path()).expect("assets/sotu is fetched");
    let ids = loaded.tokenizer().unwrap().encode(&text).unwrap();
    ids[..n].to_vec()
}

/// Every linear unit of `model` quantized by RTN at `bits(block, kind)` bits, groups of 64.
pub fn quantized(model: &Model, bits: impl Fn(usize, LinearKind) -> u8) -> Model {
    let mut m = model.clone();
    for u in linear_units(model) {
        let kind = u.parts[0].kind;
        let spec = QuantSpec::new(bits(u.block, kind), 64);
        let q = rtn(&u.dense_weight(model), u.rows, u.cols, &spec).unwrap();
        m.linear_mut(u.block, kind).weight = q.packed.to_weight().unwrap();
    }
    m
}

/// Widths averaging exactly 3 bits per weight on a Llama block (q 3, k 4, v 2, o 3, gate 3,
/// up 2, down 4: k/v and gate/up/down have equal sizes).
pub fn mixed_3bit(_block: usize, kind: LinearKind) -> u8 {
    match kind {
        LinearKind::Q | LinearKind::O | LinearKind::Gate => 3,
        LinearKind::K | LinearKind::Down => 4,
        LinearKind::V | LinearKind::Up => 2,
    }
}

/// Every linear unit pruned to `sparsity` by magnitude, stored as mask + f16 values.
pub fn sparse(model: &Model, sparsity: f64) -> Model {
    let mut m = model.clone();
    for u in linear_units(model) {
        let w = magnitude_prune(&u.dense_weight(model), sparsity).unwrap();
        let enc = encode(&w, u.rows, u.cols, ValueType::F16).unwrap();
        m.linear_mut(u.block, u.parts[0].kind).weight = enc.into_weight();
    }
    m
}

/// A plan dropping whole blocks `whole`, the attention of `attn` and the MLP of `mlp`.
pub fn plan(n: usize, whole: &[usize], attn: &[usize], mlp: &[usize]) -> Vec<BlockPlan> {
    (0..n)
        .map(|b| BlockPlan {
            attn: !whole.contains(&b) && !attn.contains(&b),
            mlp: !whole.contains(&b) && !mlp.contains(&b),
        })
        .collect()
}

/// Perplexity of `tokens` as one window (every token but the first scored).
pub fn perplexity(c: &Candidate, tokens: &[u32]) -> f64 {
    let h = c.model.hidden_states(&Cpu, tokens, 1, &c.plan).unwrap();
    let logits = c.model.lm_head(&Cpu, &h);
    let v = c.model.vocab_size();
    let mut nll = 0f64;
    for (i, &t) in tokens.iter().enumerate().skip(1) {
        let row = &logits[(i - 1) * v..i * v];
        let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let lse = max
            + row
                .iter()
                .map(|&x| (x as f64 - max).exp())
                .sum::<f64>()
                .ln();
        nll += lse - row[t as usize] as f64;
    }
    (nll / (tokens.len() - 1) as f64).exp()
}

/// The interpreter for the Python cross-checks: `EVOPRESS_CHECK_PYTHON` (with torch,
/// transformers, gptqmodel, xllamacpp, ... installed). `None`, after saying why the check is
/// skipped, when it is not set.
pub fn python(check: &str) -> Option<PathBuf> {
    match std::env::var_os("EVOPRESS_CHECK_PYTHON") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            eprintln!(
                "skipping the {check} cross-check: set EVOPRESS_CHECK_PYTHON to a Python with \
                 the packages scripts/check-export.py names"
            );
            None
        }
    }
}

/// Asserts that llama.cpp (`scripts/check-export.py gguf`) tokenizes `prompt` into
/// `prompt_ids` and continues it greedily with `new`, as evopress did on the same file.
pub fn check_llama_cpp_greedy(
    python: &Path,
    gguf: &Path,
    prompt: &str,
    prompt_ids: &[u32],
    new: &[u32],
) {
    let join = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
    let gguf = gguf.to_str().expect("a UTF-8 temporary path");
    let (prompt_ids, new) = (join(prompt_ids), join(new));
    run_check(
        python,
        &[
            "gguf",
            gguf,
            "--prompt",
            prompt,
            "--expect-tokens",
            &prompt_ids,
            "--expect-top1",
            &new,
        ],
    );
}

/// Runs `scripts/check-export.py args...` and asserts it passed, printing its report.
pub fn run_check(python: &Path, args: &[&str]) {
    let out = Command::new(python)
        .arg(root().join("scripts/check-export.py"))
        .args(args)
        .output()
        .expect("run scripts/check-export.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "check-export.py {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
