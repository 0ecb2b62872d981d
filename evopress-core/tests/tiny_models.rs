//! The forward pass against HF transformers, for every supported architecture, on the tiny
//! random models in tests/fixtures/tiny-*/ (made by scripts/make-fixtures.py, which also
//! records the transformers version behind each reference.json).
//!
//! The fixtures cover: Llama-3 RoPE scaling (tiny-llama), tied embeddings stored as bf16
//! (tiny-llama-tied), a sharded checkpoint (tiny-mistral), q/k/v biases and rope_theta 1e6
//! (tiny-qwen2), and fused qkv_proj / gate_up_proj (tiny-phi3).

use evopress_core::hf::{check_shapes, HfDir};
use evopress_core::load_model;
use evopress_kernels::cpu::Cpu;
use std::path::{Path, PathBuf};

const FIXTURES: [&str; 5] = ["llama", "llama-tied", "mistral", "qwen2", "phi3"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(format!("tiny-{name}"))
}

/// reference.json: token ids `[batch][seq]` and HF's float32 logits `[batch][seq][vocab]`.
#[derive(serde::Deserialize)]
struct Reference {
    atol: f32,
    input_ids: Vec<Vec<u32>>,
    logits: Vec<Vec<Vec<f32>>>,
}

fn reference(dir: &Path) -> Reference {
    let text = std::fs::read_to_string(dir.join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn logits_match_transformers() {
    for name in FIXTURES {
        let dir = fixture(name);
        let hf = HfDir::open(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
        check_shapes(hf.config(), &hf).unwrap_or_else(|e| panic!("{name}: {e}"));

        let reference = reference(&dir);
        let model = load_model(&dir)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .model;
        // All sequences in one batched forward: the batched path is what the search uses.
        let flat: Vec<u32> = reference.input_ids.concat();
        let batch = reference.input_ids.len();
        let all = model.logits(&Cpu, &flat, batch).unwrap();
        let per_seq = all.len() / batch;
        let logits: Vec<&[f32]> = all.chunks_exact(per_seq).collect();
        assert_eq!(logits.len(), reference.logits.len(), "{name}: batch size");

        let mut worst = (0.0f32, 0, 0, 0);
        for (b, (got, want)) in logits.iter().zip(&reference.logits).enumerate() {
            let vocab = want[0].len();
            assert_eq!(
                got.len(),
                want.len() * vocab,
                "{name}: sequence {b} logits length"
            );
            for (pos, want_row) in want.iter().enumerate() {
                let got_row = &got[pos * vocab..(pos + 1) * vocab];
                for (v, (g, w)) in got_row.iter().zip(want_row).enumerate() {
                    let err = (g - w).abs();
                    if err > worst.0 || err.is_nan() {
                        worst = (err, b, pos, v);
                    }
                }
            }
        }
        let (err, b, pos, v) = worst;
        assert!(
            err <= reference.atol,
            "{name}: max |logit - reference| = {err:e} at sequence {b}, position {pos}, \
             token {v} (tolerance {:e})",
            reference.atol
        );
    }
}
