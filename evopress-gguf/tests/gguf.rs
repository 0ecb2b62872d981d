//! The GGUF database, search and export end to end on the real demo model (SmolLM2-135M, whose
//! source GGUF is Q4_1: everything starts from its dequantized weights), through the library
//! calls the binary makes: a database built by `run_build`, a search at the size of
//! llama.cpp's Q4_K_M preset by `run_search`, the result applied with `--gguf-config` and
//! written as a GGUF whose tensors are the stored blocks byte for byte and whose logits are
//! the candidate's.

use evopress_core::data::{calibration_windows, Sampling, TokenizedFile};
use evopress_core::evaluate::Calibration;
use evopress_core::fitness::FitnessKind;
use evopress_core::gguf::{GgmlType, GgufFile};
use evopress_core::CompressionBackend;
use evopress_core::{load_model, Method, ModelSource};
use evopress_export::gguf::{write_gguf, DenseType, GgufOptions, GgufQuant};
use evopress_gguf::{GgufBackend, Preset, CONFIG_FILE, GGUF};
use evopress_kernels::cpu::Cpu;
use evopress_kernels::DType;
use evopress_pipeline::{run_build, run_search, Configs, SearchOptions};
use evopress_search::{fitness, Genome, TokenBatch, TokenSlice};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

static METHODS: &[&dyn Method] = &[&GGUF];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn model_path() -> PathBuf {
    let p = root().join("assets/smollm2-135m-instruct.gguf");
    assert!(p.exists(), "run scripts/fetch-assets first");
    p
}

/// A complete database of the types Q4_K_M uses on this model (with their fallbacks) and
/// Q3_K, calibrated on 4 windows of 128 tokens.
fn build(dir: &Path) -> PathBuf {
    let db = dir.join("db");
    let cfg = dir.join("db.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[model]
path = "{model}"
[calibration]
files = ["{sotu}/1790_*.txt"]
seq_len = 128
windows = 4
sampling = "sequential"
[database]
kind = "gguf"
dir = "{db}"
types = ["Q8_0", "Q3_K", "Q4_K", "Q6_K"]
"#,
            model = model_path().display(),
            sotu = root().join("assets/sotu").display(),
            db = db.display()
        ),
    )
    .unwrap();
    let built = run_build(METHODS, &cfg, &Cpu, None, true).unwrap();
    assert!(built.complete);
    db
}

#[test]
fn a_gguf_database_is_searched_at_a_preset_size_and_exported_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let db = build(dir.path());
    let loaded = load_model(&model_path()).unwrap();
    let model = &loaded.model;

    // The manifest: rungs cheapest first, K-quants replaced by llama.cpp's fallback where the
    // rows (576 = hidden size) are no whole number of 256-blocks; exact bytes.
    let store = evopress_core::store::VariantStore::open(&db).unwrap();
    let m = store.manifest();
    assert_eq!(
        m.header.params["types"],
        serde_json::json!(["Q3_K", "Q4_K", "Q6_K", "Q8_0"])
    );
    let types = |name: &str| -> Vec<String> {
        let u = store.unit(name).unwrap();
        let t: Vec<String> = (u.levels.iter())
            .map(|l| l.extra["type"].as_str().unwrap().to_string())
            .collect();
        for (l, ty) in u.levels.iter().zip(&t) {
            let ty = GgmlType::from_name(ty).unwrap();
            assert_eq!(
                l.bytes as usize,
                u.rows * ty.row_bytes(u.cols).unwrap(),
                "{name}"
            );
        }
        t
    };
    assert_eq!(
        types("model.layers.3.self_attn.q_proj"),
        ["Q4_0", "Q5_0", "Q8_0", "Q8_0"]
    );
    assert_eq!(
        types("model.layers.3.mlp.down_proj"),
        ["Q3_K", "Q4_K", "Q6_K", "Q8_0"]
    );
    assert_eq!(
        types("model.embed_tokens"),
        ["Q4_0", "Q5_0", "Q8_0", "Q8_0"]
    );
    assert!(
        store.unit("lm_head").is_none(),
        "SmolLM2 ties its head to the embedding"
    );
    // The cheapest rung loses more than the largest, on every tensor.
    for u in &m.units {
        let (lo, hi) = (&u.levels[0], u.levels.last().unwrap());
        assert!(
            lo.rel_error > hi.rel_error && hi.rel_error >= 0.0,
            "{}",
            u.name
        );
    }

    // llama.cpp's Q4_K_M on this model: 30 layers, use_more_bits = i < 3, i >= 26 or
    // (i - 3) % 3 == 2; attn_v and ffn_down get Q6_K there, Q4_K elsewhere (576-column
    // tensors: Q8_0 and Q5_0 instead); the tied embedding is the output: Q8_0 (576 % 256 != 0).
    let b = GgufBackend::open_database(model, &db).unwrap();
    let q4km = b.preset_indices(Preset::Q4_K_M).unwrap();
    let chosen: HashMap<&str, GgmlType> = b.types_of(&q4km).into_iter().collect();
    for (name, ty) in [
        ("model.layers.0.self_attn.v_proj", GgmlType::Q8_0),
        ("model.layers.4.self_attn.v_proj", GgmlType::Q5_0),
        ("model.layers.5.self_attn.v_proj", GgmlType::Q8_0),
        ("model.layers.5.mlp.down_proj", GgmlType::Q6_K),
        ("model.layers.6.mlp.down_proj", GgmlType::Q4_K),
        ("model.layers.26.mlp.down_proj", GgmlType::Q6_K),
        ("model.layers.7.self_attn.q_proj", GgmlType::Q5_0),
        ("model.layers.7.mlp.up_proj", GgmlType::Q5_0),
        ("model.embed_tokens", GgmlType::Q8_0),
    ] {
        assert_eq!(chosen[name], ty, "{name}");
    }
    // Incremental evaluation (from the first changed block, or from the embedding when it
    // changed) equals a full forward bit for bit.
    let file = TokenizedFile::read(
        &root().join("assets/sotu/1790_george_washington_n.txt"),
        loaded.tokenizer().unwrap(),
    )
    .unwrap();
    let samples = calibration_windows(&[file], 48, 2, Sampling::Sequential, 0).unwrap();
    let cal = Calibration::new(model, &Cpu, samples, FitnessKind::Kl, |_| {}).unwrap();
    let batch = TokenBatch {
        slices: (cal.sample_lens().iter().enumerate())
            .map(|(sample, &n)| TokenSlice {
                sample,
                tokens: 0..n,
            })
            .collect(),
    };
    let mut incremental = b.evaluator(model, &Cpu, &cal, usize::MAX).unwrap();
    let mut full = b.evaluator(model, &Cpu, &cal, 0).unwrap();
    let parent = Genome(q4km.clone());
    incremental.begin_stage(&batch, &parent).unwrap();
    full.begin_stage(&batch, &parent).unwrap();
    let (embedding, down20) = (30 * 7, 20 * 7 + 6);
    for changed in [vec![down20], vec![embedding], vec![down20, embedding]] {
        let mut child = parent.clone();
        for u in changed {
            child.0[u] = 0;
        }
        let a = fitness(&mut incremental, &child, &batch).unwrap();
        let f = fitness(&mut full, &child, &batch).unwrap();
        assert_eq!(a.to_bits(), f.to_bits(), "incremental {a} vs full {f}");
        assert!(a > 0.0);
    }

    // Q3_K_M needs Q5_K (attn_v of layers 0-1, ffn_down of layer 0): not in this database.
    let err = b.preset_indices(Preset::Q3_K_M).unwrap_err().to_string();
    assert!(
        err.contains("model.layers.0.self_attn.v_proj") && err.contains("Q5_1"),
        "{err}"
    );

    // The search at Q4_K_M's size: within its bytes, scored against the preset and DP.
    let run_cfg = dir.path().join("run.toml");
    let out = dir.path().join("out");
    std::fs::write(
        &run_cfg,
        format!(
            r#"
[model]
path = "{model}"
[calibration]
files = ["{sotu}/17*.txt"]
seq_len = 64
windows = 4
[eval]
files = ["{sotu}/2021_*.txt"]
seq_len = 128
windows = 1
[backend]
kind = "gguf"
database = "{db}"
target_preset = "Q4_K_M"
[search]
generations = 2
offspring = 4
stages = [{{ survivors = 1, tokens = 128 }}]
initially_generated = 4
initial_tokens = 128
seed = 1
[baselines]
tokens = 128
[output]
dir = "{out}"
"#,
            model = model_path().display(),
            sotu = root().join("assets/sotu").display(),
            db = db.display(),
            out = out.display()
        ),
    )
    .unwrap();
    let opts = SearchOptions {
        quiet: true,
        ..Default::default()
    };
    let r = run_search(METHODS, &run_cfg, &Cpu, &opts)
        .unwrap()
        .result
        .unwrap();
    assert!(r.budget.holds, "{}", r.budget);
    let preset_bytes = b.bytes(&q4km) as i64;
    let bytes = r.report["tensor_bytes"].as_integer().unwrap();
    assert!(bytes <= preset_bytes, "{bytes} > {preset_bytes}");
    let names: Vec<&str> = r.baselines.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["uniform", "dp", "preset-Q4_K_M"]);
    let preset_row = &r.baselines[2];
    assert_eq!(
        preset_row.detail["tensor_bytes"].as_integer(),
        Some(preset_bytes)
    );
    assert!(r.held_out.compressed_perplexity.is_finite());
    // The database holds neither Q4_1 nor Q5_1 (the types that hold the Q4_1 source exactly):
    // every model differs from the dense one, so each held-out KL is positive.
    assert!(r.held_out.compressed_kl > 0.0 && r.held_out.compressed_kl.is_finite());
    for row in &r.baselines {
        let kl = row.held_out_kl.unwrap();
        assert!(kl > 0.0 && kl.is_finite(), "{}: KL {kl}", row.name);
        assert_eq!(row.search_beats_kl, Some(r.held_out.compressed_kl < kl));
    }

    // The result file applied as `--gguf-config FILE --database DIR` does, then written as a
    // GGUF: the chosen blocks byte for byte, and llama.cpp's layout read back by our loader
    // gives the candidate's logits exactly.
    let config = out.join(CONFIG_FILE);
    let configs = Configs {
        files: vec![(&GGUF as &dyn Method, config.clone())],
        database: Some(db.clone()),
    };
    let (candidate, report) = configs.apply(model).unwrap();
    assert_eq!(report.fields["tensor_bytes"].as_integer(), Some(bytes));
    let src = ModelSource::open(&model_path()).unwrap();
    let path = dir.path().join("searched.gguf");
    let opts = GgufOptions {
        dense: DenseType::Float(DType::F16),
        quant: GgufQuant::Compact,
    };
    write_gguf(&candidate, &src, &path, &opts, HashMap::new()).unwrap();
    let g = GgufFile::open(&path).unwrap();
    let idx = b.read_types(&config).unwrap();
    let want: HashMap<&str, GgmlType> = b.types_of(&idx).into_iter().collect();
    let file_of = |name: &str| {
        let t = g.tensors().iter().find(|t| t.name == name).unwrap();
        (t.ggml_type, g.tensor_bytes(t).to_vec())
    };
    let mut data_bytes = 0;
    for t in g.tensors() {
        if t.dims.len() == 2 {
            data_bytes += g.tensor_bytes(t).len() as i64;
        }
    }
    assert_eq!(
        data_bytes, bytes,
        "the file's matrices are the searched bytes"
    );
    for (gguf, hf, level) in [
        (
            "blk.4.attn_v.weight",
            "model.layers.4.self_attn.v_proj",
            4 * 7 + 2,
        ),
        (
            "blk.9.ffn_down.weight",
            "model.layers.9.mlp.down_proj",
            9 * 7 + 6,
        ),
        ("token_embd.weight", "model.embed_tokens", 30 * 7),
    ] {
        let (ty, data) = file_of(gguf);
        assert_eq!(ty, want[hf], "{gguf}");
        let stored = store
            .tensor(&format!("{hf}/{}/blocks", idx[level]))
            .unwrap();
        let n = stored.numel();
        assert_eq!(data, stored.map[stored.offset..stored.offset + n], "{gguf}");
    }
    let exported = load_model(&path).unwrap();
    let text = std::fs::read_to_string(root().join("assets/sotu/2021_joseph_r_biden_d.txt"));
    let ids = loaded.tokenizer().unwrap().encode(&text.unwrap()).unwrap();
    assert_eq!(
        exported.model.logits(&Cpu, &ids[..48], 1).unwrap(),
        candidate.model.logits(&Cpu, &ids[..48], 1).unwrap()
    );
}
