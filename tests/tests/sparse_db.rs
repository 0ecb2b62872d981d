//! The SparseGPT variant database on the real demo model: the budget holds exactly when counted
//! in the assembled model, a killed build resumes without recomputing and equals an
//! uninterrupted one, damage is detected on open, and SparseGPT beats magnitude pruning.

mod common;

use evopress_core::build::{build_database, BuildEvent, BuildRequest};
use evopress_core::calibrate::BlockCalibrator;
use evopress_core::data::{calibration_windows, Sampling, TokenizedFile};
use evopress_core::hessian::rel_error;
use evopress_core::store::{Manifest, VariantStore};
use evopress_core::units::linear_units;
use evopress_core::{load_model, CompressionBackend, LoadedModel};
use evopress_kernels::cpu::Cpu;
use evopress_search::Genome;
use evopress_sparse::backend::{ORIGINAL_CONFIG, TOML_CONFIG};
use evopress_sparse::{
    count_zeros, magnitude_prune, SparseBackend, SparseGpt, SparseGptBuilder, SparseGptConfig,
    SparseGptParams,
};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn model() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| load_model(&common::demo_model()).unwrap())
}

fn windows(count: usize, seq_len: usize) -> Vec<Vec<u32>> {
    let m = model();
    let path = common::asset("sotu/1790_george_washington_n.txt");
    let file = TokenizedFile::read(&path, m.tokenizer().unwrap()).unwrap();
    calibration_windows(&[file], seq_len, count, Sampling::Sequential, 0).unwrap()
}

fn builder() -> SparseGptBuilder {
    let params = SparseGptParams {
        sparsity: 0.5,
        weights_diff: None,
        num_levels: 1,
        rel_damp: 0.01,
        block_size: 128,
    };
    SparseGptBuilder::new(params, &model().model).unwrap()
}

/// Builds into `dir`, returning the units whose solve started.
fn build(dir: &Path, stop_after: Option<usize>) -> Vec<String> {
    let m = model();
    let req = BuildRequest {
        model: &m.model,
        model_path: &common::demo_model(),
        windows: windows(4, 128),
        calibration: serde_json::json!({"test": "4 x 128 sequential, Washington 1790"}),
        dir,
        stop_after,
    };
    let mut solved = Vec::new();
    build_database(req, &Cpu, &builder(), |e| {
        if let BuildEvent::Unit { unit, .. } = e {
            solved.push(unit.to_string());
        }
    })
    .unwrap();
    solved
}

/// One uninterrupted build shared by the tests (kept for the process's lifetime).
fn full_db() -> &'static Path {
    static D: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &D.get_or_init(|| {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("db");
        build(&dir, None);
        (t, dir)
    })
    .1
}

#[test]
fn assembled_candidates_hold_the_budget_exactly() {
    let m = &model().model;
    let db = SparseBackend::open(m, full_db()).unwrap();
    let space = db.space();
    let total: u64 = linear_units(m).iter().map(|u| u.numel() as u64).sum();
    assert_eq!(total % 2, 0);

    // Uniform: every layer at 50% exactly (all layer sizes are even here).
    let uniform = db.uniform(0).unwrap();
    let (zeros, weights) = count_zeros(&db.candidate(m, &uniform).unwrap().model);
    assert_eq!(weights, total);
    assert_eq!(
        zeros,
        total / 2,
        "uniform candidate: {zeros} zeros of {total}"
    );
    assert_eq!(space.total_cost(&uniform), total / 2);

    // A level switch (one layer up, another down) moves wd zeros between them: same total.
    let mut ids = vec![0; space.units().len()];
    // (k and v, 110592 weights, have only level 0 with this step of 82944 weights.)
    ids[0] = 1; // q_proj of block 0 sparser
    ids[7 * 5 + 3] = -1; // o_proj of block 5 denser
    ids[7 * 14 + 4] = 1; // gate_proj of block 14
    ids[7 * 29 + 6] = -1; // down_proj of block 29
    let genome = Genome(db.table.indices(&ids).unwrap());
    let report = space.budget_report(&genome);
    assert!(report.holds, "{report:?}");
    let candidate = db.candidate(m, &genome).unwrap();
    let (zeros, _) = count_zeros(&candidate.model);
    assert_eq!(
        zeros,
        total / 2,
        "switched candidate: {zeros} zeros of {total}"
    );
    let q = candidate.model.linear(0, evopress_core::LinearKind::Q);
    let q_zeros = q.weight.to_f32_vec().iter().filter(|&&x| x == 0.0).count() as u64;
    let wd = builder().scheme.weights_diff;
    assert_eq!(q_zeros, (q.weight.numel() / 2) as u64 + wd);

    // Both config formats round-trip; the original one is sorted and has no trailing newline.
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in db.config_files(&genome).unwrap() {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let text = std::fs::read_to_string(dir.path().join(ORIGINAL_CONFIG)).unwrap();
    assert!(!text.ends_with('\n'));
    let names: Vec<&str> = text.lines().map(|l| l.split(':').next().unwrap()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert!(text.contains("model.layers.0.self_attn.q_proj: 1"));
    assert_eq!(
        db.read_levels(&dir.path().join(ORIGINAL_CONFIG)).unwrap(),
        genome
    );
    assert_eq!(
        db.read_levels(&dir.path().join(TOML_CONFIG)).unwrap(),
        genome
    );
}

#[test]
fn killed_build_resumes_without_recomputing_and_equals_an_uninterrupted_one() {
    let full = full_db();
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("db");
    let first = build(&dir, Some(3));
    assert_eq!(first.len(), 3 * 7);
    let partial = Manifest::read(&dir).unwrap();
    assert_eq!(partial.blocks_done, vec![0, 1, 2]);
    assert!(!partial.complete);
    // An incomplete store is refused for search.
    let err = SparseBackend::open(&model().model, &dir).err().unwrap();
    assert!(err.to_string().contains("incomplete"), "{err}");

    let second = build(&dir, None);
    assert_eq!(second.len(), 27 * 7);
    assert!(
        second.iter().all(|u| !first.contains(u)),
        "a unit finished before the kill was solved again"
    );
    let (a, b) = (Manifest::read(full).unwrap(), Manifest::read(&dir).unwrap());
    assert!(b.complete);
    assert_eq!(a.files, b.files, "block files differ (xxh3 per file)");
    let errors = |m: &Manifest| -> Vec<(String, i32, f64, u64)> {
        let mut v: Vec<_> = (m.units.iter())
            .flat_map(|u| (u.levels.iter()).map(|l| (u.name.clone(), l.id, l.rel_error, l.bytes)))
            .collect();
        v.sort_by(|x, y| (&x.0, x.1).cmp(&(&y.0, y.1)));
        v
    };
    assert_eq!(errors(&a), errors(&b));
}

#[test]
fn a_damaged_variant_file_is_named_on_open() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("db");
    std::fs::create_dir(&dir).unwrap();
    for e in std::fs::read_dir(full_db()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    assert!(VariantStore::open(&dir).is_ok());
    let file = dir.join("block-005.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() - 1000;
    bytes[at] ^= 0x10;
    std::fs::write(&file, bytes).unwrap();
    let err = VariantStore::open(&dir).err().unwrap().to_string();
    assert!(err.contains("block-005.safetensors"), "{err}");
    assert!(err.contains("damaged"), "{err}");
    let err = SparseBackend::open(&model().model, &dir).err().unwrap();
    assert!(err.to_string().contains("block-005.safetensors"), "{err}");
}

#[test]
fn sparsegpt_error_is_well_below_magnitude_pruning_on_a_real_layer() {
    let m = &model().model;
    let mut cal = BlockCalibrator::new(m, &Cpu, windows(4, 128)).unwrap();
    cal.hessians_and_advance().unwrap();
    let hessians = cal.hessians().unwrap(); // block 1
    for unit in linear_units(m)
        .into_iter()
        .filter(|u| u.block == 1 && (u.name.ends_with("q_proj") || u.name.ends_with("down_proj")))
    {
        let h = hessians.get(unit.input());
        let w = unit.dense_weight(m);
        let solver = SparseGpt::new(
            &w,
            unit.rows,
            unit.cols,
            &h.data,
            SparseGptConfig::default(),
        )
        .unwrap();
        for p in [0.5, 0.7] {
            let sgpt = solver.prune(p).unwrap();
            let mag = magnitude_prune(&w, p).unwrap();
            let e_sgpt = rel_error(&w, &sgpt, &h.data, unit.rows, unit.cols).unwrap();
            let e_mag = rel_error(&w, &mag, &h.data, unit.rows, unit.cols).unwrap();
            eprintln!(
                "{} @ {p}: sparsegpt {e_sgpt:.4}, magnitude {e_mag:.4}",
                unit.name
            );
            assert!(
                e_sgpt < 0.7 * e_mag,
                "{} at {p}: SparseGPT {e_sgpt} vs magnitude {e_mag}",
                unit.name
            );
        }
    }
    // The stored errors are those of the stored variants on a fresh calibration.
    let db = Manifest::read(full_db()).unwrap();
    let unit = linear_units(m).into_iter().find(|u| u.block == 0).unwrap();
    let entry = db.unit(&unit.name).unwrap();
    let store = VariantStore::open(full_db()).unwrap();
    let w_hat = evopress_sparse::load_masked(&store, entry, 1)
        .unwrap()
        .to_f32_vec();
    let mut cal = BlockCalibrator::new(m, &Cpu, windows(4, 128)).unwrap();
    let h = cal.hessians().unwrap();
    let want = rel_error(
        &unit.dense_weight(m),
        &w_hat,
        &h.get(unit.input()).data,
        unit.rows,
        unit.cols,
    )
    .unwrap();
    let got = entry.level(1).unwrap().rel_error;
    assert!((got - want).abs() <= 1e-4 * want, "{got} vs {want}");
}
