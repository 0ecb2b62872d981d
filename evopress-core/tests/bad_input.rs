//! Bad input that used to panic, print NaN or pass silently, on copies of the tiny-llama
//! fixture with one tensor patched: weights of another checkpoint of the same shape, NaN
//! weights, zero windows, a top-k larger than the vocabulary.

use evopress_core::data::{self, TokenizedFile};
use evopress_core::evaluate::{Calibration, StageCache};
use evopress_core::fitness::FitnessKind;
use evopress_core::store::{ModelInfo, StoreHeader, StoreWriter};
use evopress_core::variants::VariantTable;
use evopress_core::{load_model, BlockPlan, Model};
use evopress_kernels::cpu::Cpu;
use evopress_search::TokenSlice;
use safetensors::SafeTensors;
use std::fs;
use std::path::Path;

/// A writable copy of tiny-llama with element 0 of `model.norm.weight` (f32) set to `value`.
fn tiny_llama_with_norm(value: f32) -> tempfile::TempDir {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-llama");
    let tmp = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        fs::copy(&path, tmp.path().join(path.file_name().unwrap())).unwrap();
    }
    let path = tmp.path().join("model.safetensors");
    let mut bytes = fs::read(&path).unwrap();
    let (header_len, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let info = &meta.tensors()["model.norm.weight"];
    let at = 8 + header_len + info.data_offsets.0;
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    fs::write(&path, bytes).unwrap();
    tmp
}

fn model(dir: &Path) -> Model {
    load_model(dir).unwrap().model
}

fn tokens() -> Vec<u32> {
    (0..24).map(|i| (i * 37 % 256) as u32).collect()
}

fn header(model: &Model, path: &Path) -> StoreHeader {
    StoreHeader {
        backend: "test".into(),
        variant_format: "masked".into(),
        model: ModelInfo::of(model, path),
        params: serde_json::json!({}),
        calibration: serde_json::json!({}),
    }
}

/// A complete store of `model` holding no variants.
fn empty_store(model: &Model, dir: &Path) {
    let mut w = StoreWriter::create_or_resume(dir, header(model, Path::new("a"))).unwrap();
    for b in 0..model.layers.len() {
        w.write_block(b, &[], Vec::new(), 0.0).unwrap();
    }
    w.finish().unwrap();
}

fn open_table(model: &Model, dir: &Path) -> String {
    let load: evopress_core::variants::LoadWeight<'_> = &|_, _, _| unreachable!("no variants");
    match VariantTable::open(model, dir, "test", load) {
        Ok(_) => panic!("an empty store opened as a variant table"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_store_is_tied_to_the_weights_not_only_their_shapes() {
    let (a_dir, b_dir) = (tiny_llama_with_norm(1.0), tiny_llama_with_norm(1.5));
    let (a, b) = (model(a_dir.path()), model(b_dir.path()));
    assert_eq!(a.fingerprint(), b.fingerprint(), "same structure");
    let (wa, wb) = (a.weights_fingerprint(), b.weights_fingerprint());
    assert_ne!(wa, wb);
    assert_eq!(
        wa,
        model(a_dir.path()).weights_fingerprint(),
        "deterministic"
    );

    let store = tempfile::tempdir().unwrap();
    empty_store(&a, store.path());
    // Resuming the build with the other checkpoint names both fingerprints.
    let msg = StoreWriter::create_or_resume(store.path(), header(&b, Path::new("b")))
        .err()
        .unwrap()
        .to_string();
    for part in ["model.weights", &wa, &wb] {
        assert!(msg.contains(part), "{msg} lacks {part}");
    }
    // So does opening it for the search or `eval`.
    let msg = open_table(&b, store.path());
    assert!(msg.contains(&wa) && msg.contains(&wb), "{msg}");
    // Its own model gets past the check (and on to the missing variants).
    let msg = open_table(&a, store.path());
    assert!(
        !msg.contains("weights") && msg.contains("no variants"),
        "{msg}"
    );

    // A store written before weight fingerprints is read (by structure) but not resumed.
    let manifest = store.path().join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&fs::read(&manifest).unwrap()).unwrap();
    m["model"].as_object_mut().unwrap().remove("weights");
    fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    let msg = open_table(&b, store.path());
    assert!(msg.contains("no variants"), "{msg}");
    let msg = StoreWriter::create_or_resume(store.path(), header(&a, Path::new("a")))
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("rebuild") && msg.contains(&wa), "{msg}");
}

#[test]
fn non_finite_scores_are_errors_naming_the_cause() {
    let (ok_dir, nan_dir) = (tiny_llama_with_norm(1.0), tiny_llama_with_norm(f32::NAN));
    let (ok, nan) = (model(ok_dir.path()), model(nan_dir.path()));
    let plan = vec![BlockPlan::FULL; ok.layers.len()];
    let toks = tokens();

    let ppl = data::perplexity(&ok, &Cpu, &[&toks], &plan, |_| {}).unwrap();
    assert!(ppl.perplexity().is_finite());
    let msg = data::perplexity(&nan, &Cpu, &[&toks], &plan, |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("NaN") && msg.contains("Likely causes"),
        "{msg}"
    );
    let msg = data::perplexity(&ok, &Cpu, &[], &plan, |_| {})
        .unwrap_err()
        .to_string();
    assert!(msg.contains("no evaluation windows"), "{msg}");

    // Dense targets from a broken model, and a broken candidate against good targets.
    let msg = Calibration::new(&nan, &Cpu, vec![toks.clone()], FitnessKind::Kl, |_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("dense logit") && msg.contains("NaN"), "{msg}");
    let cal = Calibration::new(&ok, &Cpu, vec![toks.clone()], FitnessKind::Kl, |_| {}).unwrap();
    let slices = vec![TokenSlice {
        sample: 0,
        tokens: 0..toks.len(),
    }];
    let cache = StageCache::build(&ok, &Cpu, &cal, slices, &plan, 0).unwrap();
    // Only the bf16 rounding of the stored targets separates the dense model from itself.
    let own = cache.fitness(&ok, &Cpu, &cal, &plan, 0).unwrap();
    assert!(own.abs() < 1e-3, "{own}");
    let msg = cache
        .fitness(&nan, &Cpu, &cal, &plan, 0)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("fitness") && msg.contains("NaN"), "{msg}");
}

#[test]
fn zero_windows_and_topk_outside_the_vocabulary_are_refused() {
    let file = TokenizedFile {
        path: "text.txt".into(),
        tokens: tokens(),
    };
    let msg = data::windows(std::slice::from_ref(&file), 8, Some(0))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("0 evaluation windows"), "{msg}");
    assert_eq!(data::windows(&[file], 8, Some(3)).unwrap().len(), 3);

    let dir = tiny_llama_with_norm(1.0);
    let m = model(dir.path());
    for k in [0, m.vocab_size() + 1] {
        let kind = FitnessKind::TopkKl { k };
        let msg = Calibration::new(&m, &Cpu, vec![tokens()], kind, |_| {})
            .err()
            .unwrap()
            .to_string();
        assert!(
            msg.contains(&format!("`k` = {k}")) && msg.contains("1..=256"),
            "{msg}"
        );
    }
}
