//! The opt-in larger model, Qwen2.5-Coder-1.5B-Instruct as a Q4_K/Q6_K GGUF (qwen2, 28 blocks),
//! against HF transformers loading the same file in float32
//! (`tests/fixtures/qwen2.5-coder-1.5b-perplexity.json`). Ignored by default: it needs
//! `scripts/fetch-assets --model qwen2.5-coder-1.5b` (1.1 GB), then
//! `cargo test --release -p evopress-tests --test qwen -- --ignored`.

mod common;

use evopress_core::data::{self, TokenizedFile};
use evopress_core::gguf::GgufWeights;
use evopress_core::{load_model_with, BlockPlan, LoadOptions};
use evopress_kernels::cpu::Cpu;
use evopress_kernels::{GgmlType, WeightKind};

#[test]
#[ignore = "needs scripts/fetch-assets --model qwen2.5-coder-1.5b (1.1 GB)"]
fn qwen_perplexity_matches_transformers() {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture("qwen2.5-coder-1.5b-perplexity.json")).unwrap(),
    )
    .unwrap();
    let options = LoadOptions {
        gguf_weights: GgufWeights::Packed,
    };
    let m = load_model_with(&common::asset("qwen.gguf"), options).unwrap();
    // Multiplied from the file's blocks.
    let down = &m.model.layers[0].mlp.down_proj.weight;
    assert_eq!(down.kind(), WeightKind::Ggml(GgmlType::Q6_K));
    let text = common::asset("sotu/2021_joseph_r_biden_d.txt");
    let files = [TokenizedFile::read(&text, m.tokenizer().unwrap()).unwrap()];
    let windows = data::windows(&files, 512, Some(4)).unwrap();
    let plan = vec![BlockPlan::FULL; m.model.layers.len()];
    let sum = data::perplexity(&m.model, &Cpu, &windows, &plan, |_| {}).unwrap();
    assert_eq!(
        sum.tokens as u64,
        reference["tokens_scored"].as_u64().unwrap()
    );
    let (got, want) = (sum.perplexity(), reference["perplexity"].as_f64().unwrap());
    let rel = (got - want).abs() / want;
    eprintln!("perplexity {got} vs transformers {want} (relative {rel:.1e})");
    assert!(rel < 1e-3, "perplexity {got} vs transformers {want}");
}
