//! Held-out KL to the dense model on the real SmolLM2: zero for the dense model itself, and for
//! a depth-pruned candidate the same number as a plain f64 computation from both models'
//! full logits.

mod common;

use evopress_core::data::{self, TokenizedFile};
use evopress_core::held_out::DenseReference;
use evopress_core::{load_model, BlockPlan, Model};
use evopress_kernels::cpu::Cpu;

/// Two windows of 200 tokens (more than one 128-row chunk of the LM head each).
fn windows(tokens: &[u32]) -> Vec<Vec<u32>> {
    tokens
        .chunks_exact(200)
        .take(2)
        .map(<[u32]>::to_vec)
        .collect()
}

/// Σ over rows of KL(softmax(p) || softmax(q)) and Σ −log softmax(q)[next], in f64.
fn plain_kl_and_nll(p: &[f32], q: &[f32], vocab: usize, next: &[u32]) -> (f64, f64) {
    let log_softmax = |row: &[f32]| {
        let m = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
        let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
        row.iter().map(|&x| x as f64 - lse).collect::<Vec<f64>>()
    };
    let (mut kl, mut nll) = (0.0, 0.0);
    for (r, &t) in next.iter().enumerate() {
        let lp = log_softmax(&p[r * vocab..(r + 1) * vocab]);
        let lq = log_softmax(&q[r * vocab..(r + 1) * vocab]);
        kl += lp
            .iter()
            .zip(&lq)
            .map(|(a, b)| a.exp() * (a - b))
            .sum::<f64>();
        nll -= lq[t as usize];
    }
    (kl, nll)
}

fn candidate_logits(model: &Model, window: &[u32], plan: &[BlockPlan]) -> Vec<f32> {
    let hidden = model.hidden_states(&Cpu, window, 1, plan).unwrap();
    model.lm_head(&Cpu, &hidden)
}

#[test]
fn kl_is_zero_for_the_dense_model_and_exact_for_a_pruned_one() {
    let loaded = load_model(&common::smollm2_gguf()).unwrap();
    let model = &loaded.model;
    let text = common::asset("shakespeare/roman/julius-caesar.md");
    let file = TokenizedFile::read(&text, loaded.tokenizer().unwrap()).unwrap();
    let windows = windows(&file.tokens);
    let reference = DenseReference::new(model, &Cpu, windows.clone(), |_| {}).unwrap();

    let full = vec![BlockPlan::FULL; model.layers.len()];
    let refs: Vec<&[u32]> = windows.iter().map(Vec::as_slice).collect();
    let dense_ppl = data::perplexity(model, &Cpu, &refs, &full, |_| {}).unwrap();
    assert_eq!(reference.dense_nll(), dense_ppl);

    let itself = reference.score(&Cpu, model, &full, |_| {}).unwrap();
    assert_eq!(itself.nll, dense_ppl);
    assert_eq!(itself.kl(), 0.0);

    // Block 5 without its MLP: a compressed candidate.
    let mut pruned = full.clone();
    pruned[5].mlp = false;
    let score = reference.score(&Cpu, model, &pruned, |_| {}).unwrap();
    let vocab = model.vocab_size();
    let (mut kl, mut nll, mut tokens) = (0.0, 0.0, 0);
    for w in &windows {
        let dense = model.logits(&Cpu, w, 1).unwrap();
        let cand = candidate_logits(model, w, &pruned);
        let rows = w.len() - 1;
        let (k, n) = plain_kl_and_nll(
            &dense[..rows * vocab],
            &cand[..rows * vocab],
            vocab,
            &w[1..],
        );
        kl += k;
        nll += n;
        tokens += rows;
    }
    let (kl, nll) = (kl / tokens as f64, nll / tokens as f64);
    assert_eq!(score.nll.tokens, tokens);
    assert!(
        score.kl() > 1e-3,
        "a pruned block changes the outputs: {}",
        score.kl()
    );
    assert!(
        (score.kl() - kl).abs() <= 1e-5 * kl,
        "KL {} vs plain {kl}",
        score.kl()
    );
    let mean_nll = score.nll.nll / tokens as f64;
    assert!(
        (mean_nll - nll).abs() <= 1e-6 * nll,
        "NLL {mean_nll} vs plain {nll}"
    );
}

#[test]
fn a_candidate_of_another_vocabulary_is_refused() {
    let loaded = load_model(&common::smollm2_gguf()).unwrap();
    let model = &loaded.model;
    let reference = DenseReference::new(model, &Cpu, vec![vec![1, 2, 3]], |_| {}).unwrap();
    let mut other = model.clone();
    other.config.vocab_size -= 1;
    let full = vec![BlockPlan::FULL; model.layers.len()];
    let err = reference.score(&Cpu, &other, &full, |_| {}).unwrap_err();
    assert!(err.to_string().contains("vocabulary"), "{err}");
}
