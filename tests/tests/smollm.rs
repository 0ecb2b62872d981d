//! The real demo model (SmolLM2-135M-Instruct, Llama architecture) against the reference
//! numbers of HF transformers in float32 (`tests/fixtures/smollm2-logits.json`).

mod common;

use evopress_core::data::{self, TokenizedFile};
use evopress_core::{load_model, BlockPlan, LoadedModel};
use evopress_kernels::cpu::Cpu;
use std::sync::OnceLock;

fn gguf() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| load_model(&common::demo_model()).expect("load the demo GGUF"))
}

fn ppl(m: &LoadedModel, seq_len: usize, windows: usize) -> f64 {
    let file = TokenizedFile::read(
        &common::asset("sotu/2021_joseph_r_biden_d.txt"),
        m.tokenizer().unwrap(),
    )
    .unwrap();
    assert_eq!(file.tokens.len(), 10_843, "reference token count");
    let files = [file];
    let w = data::windows(&files, seq_len, Some(windows)).unwrap();
    let plan = vec![BlockPlan::FULL; m.model.layers.len()];
    let sum = data::perplexity(&m.model, &Cpu, &w, &plan, |_| {}).unwrap();
    assert_eq!(sum.tokens, windows * (seq_len - 1));
    sum.perplexity()
}

fn assert_rel(got: f64, want: f64, tol: f64) {
    let rel = (got - want).abs() / want;
    assert!(
        rel <= tol,
        "got {got}, want {want} (relative error {rel:.2e} > {tol:.0e})"
    );
}

#[test]
fn perplexity_matches_reference_512x8() {
    assert_rel(ppl(gguf(), 512, 8), 21.6742, 1e-3);
}

#[test]
fn perplexity_matches_reference_128x4() {
    assert_rel(ppl(gguf(), 128, 4), 31.4789, 1e-3);
}

#[derive(serde::Deserialize)]
struct Reference {
    cases: Vec<Case>,
    greedy: Greedy,
}
#[derive(serde::Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    positions: Vec<Position>,
}
#[derive(serde::Deserialize)]
struct Position {
    top5_ids: Vec<u32>,
    top5_logits: Vec<f32>,
    logsumexp: f32,
}
#[derive(serde::Deserialize)]
struct Greedy {
    prompt: String,
    prompt_ids: Vec<u32>,
    new_ids: Vec<u32>,
    new_text: String,
}

fn reference() -> Reference {
    let p = common::fixture("smollm2-logits.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Same ids, same top-5 ids, logits within 2e-3, for every position of every reference text.
fn check_logits(m: &LoadedModel) {
    let tok = m.tokenizer().unwrap();
    let vocab = m.model.vocab_size();
    for case in reference().cases {
        let ids = tok.encode(&case.text).unwrap();
        assert_eq!(ids, case.ids, "token ids of {:?}", case.text);
        let logits = m.model.logits(&Cpu, &ids, 1).unwrap();
        for (t, want) in case.positions.iter().enumerate() {
            let row = &logits[t * vocab..(t + 1) * vocab];
            let mut order: Vec<usize> = (0..vocab).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            let top5: Vec<u32> = order[..5].iter().map(|&i| i as u32).collect();
            assert_eq!(
                top5, want.top5_ids,
                "top-5 ids at position {t} of {:?}",
                case.text
            );
            for (&id, &l) in want.top5_ids.iter().zip(&want.top5_logits) {
                let got = row[id as usize];
                assert!(
                    (got - l).abs() <= 2e-3,
                    "logit of {id} at {t}: {got} vs {l}"
                );
            }
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f32>().ln();
            assert!(
                (lse - want.logsumexp).abs() <= 2e-3,
                "logsumexp at {t}: {lse} vs {}",
                want.logsumexp
            );
        }
    }
}

#[test]
fn logits_match_reference() {
    check_logits(gguf());
}

#[test]
fn greedy_continuation_matches_reference() {
    let m = gguf();
    let g = reference().greedy;
    let tok = m.tokenizer().unwrap();
    assert_eq!(tok.encode(&g.prompt).unwrap(), g.prompt_ids);
    let plan = vec![BlockPlan::FULL; m.model.layers.len()];
    let ids = m
        .model
        .generate(&Cpu, &g.prompt_ids, g.new_ids.len(), None, &plan)
        .unwrap();
    assert_eq!(ids, g.new_ids);
    assert_eq!(tok.decode(&ids).unwrap(), g.new_text);
}

/// `convert` output loads back with the same numbers (HF directory path of the loader).
#[test]
fn converted_hf_directory_gives_identical_results() {
    let dir = tempfile::tempdir().unwrap();
    let src = evopress_core::ModelSource::open(&common::demo_model()).unwrap();
    let tensors = evopress_core::source::read_all(src.tensors()).unwrap();
    evopress_core::hf::write_hf_dir(
        dir.path(),
        &src.config().unwrap(),
        tensors,
        evopress_kernels::DType::F32,
    )
    .unwrap();
    src.tokenizer()
        .unwrap()
        .unwrap()
        .save(dir.path().join("tokenizer.json"))
        .unwrap();
    let hf = load_model(dir.path()).unwrap();
    check_logits(&hf);
    assert_rel(ppl(&hf, 128, 4), 31.4789, 1e-3);
}

/// Sequences decoded together see only their own past: each one's logits equal decoding it
/// alone, with every sub-block run and with an attention dropped (whose cache slots are
/// filled but never read).
#[test]
fn lockstep_decoding_matches_one_sequence_at_a_time() {
    use evopress_core::model::KvCache;
    let m = gguf();
    let tok = m.tokenizer().unwrap();
    let prompts = [
        tok.encode("Four score and seven years ago").unwrap()[..5].to_vec(),
        tok.encode("To be, or not to be, that is").unwrap()[..5].to_vec(),
    ];
    let n = m.model.layers.len();
    let mut dropped = vec![BlockPlan::FULL; n];
    dropped[3].attn = false;
    for plan in [vec![BlockPlan::FULL; n], dropped] {
        let alone: Vec<Vec<f32>> = prompts
            .iter()
            .map(|p| {
                let mut cache = KvCache::new(n);
                m.model.step(&Cpu, &p[..4], &mut cache, &plan).unwrap();
                m.model.step(&Cpu, &p[4..], &mut cache, &plan).unwrap()
            })
            .collect();
        let mut caches = vec![KvCache::new(n), KvCache::new(n)];
        let first: Vec<u32> = prompts.iter().flat_map(|p| p[..4].to_vec()).collect();
        m.model
            .step_batch(&Cpu, &first, &mut caches, &plan)
            .unwrap();
        let together = m
            .model
            .step_batch(&Cpu, &[prompts[0][4], prompts[1][4]], &mut caches, &plan)
            .unwrap();
        let vocab = m.model.vocab_size();
        for (b, want) in alone.iter().enumerate() {
            let got = &together[b * vocab..(b + 1) * vocab];
            let worst = (got.iter().zip(want))
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst <= 1e-4, "sequence {b}: logits differ by {worst}");
        }
    }
}

/// Generated calibration windows start at BOS, are the same on every run, do not depend on
/// how many are written, and at temperature 0 are the greedy continuation of BOS.
#[test]
fn generated_windows_are_reproducible() {
    use evopress_core::self_text::{generate_windows, Generation};
    let m = gguf();
    let bos = m.model.config.bos_token_id.unwrap();
    let g = |windows, temperature| Generation {
        windows,
        seq_len: 12,
        temperature,
        seed: 5,
    };
    let three = generate_windows(&m.model, &Cpu, bos, g(3, 1.0), |_| {}).unwrap();
    assert_eq!(three.len(), 3);
    assert!(three.iter().all(|w| w.len() == 12 && w[0] == bos));
    assert_ne!(three[0], three[1], "each window draws from its own stream");
    let two = generate_windows(&m.model, &Cpu, bos, g(2, 1.0), |_| {}).unwrap();
    assert_eq!(two[..], three[..2]);
    let greedy = generate_windows(&m.model, &Cpu, bos, g(1, 0.0), |_| {}).unwrap();
    let plan = vec![BlockPlan::FULL; m.model.layers.len()];
    let want = m.model.generate(&Cpu, &[bos], 11, None, &plan).unwrap();
    assert_eq!(greedy[0][1..], want[..]);
}
