//! GPTQ database, quantized inference and bit-width allocation on the real demo model
//! (docs/sparsegpt-gptq.md, docs/level-schemes.md): a small database (4 windows x 128 tokens,
//! widths 2 and 4, groups of 64, quantized propagation) is built once and shared by the tests.

mod common;

use evopress_core::build::{build_database, swap_unit, BuildRequest};
use evopress_core::calibrate::BlockCalibrator;
use evopress_core::data::{calibration_windows, Sampling, TokenizedFile};
use evopress_core::hessian::rel_error;
use evopress_core::units::linear_units;
use evopress_core::{load_model, BlockPlan, CompressionBackend, LoadedModel, Model};
use evopress_kernels::cpu::Cpu;
use evopress_kernels::{Weight, WeightKind};
use evopress_quant::{
    gptq, rtn, GptqBuilder, GptqConfig, GptqParams, GroupRule, Propagation, QuantBackend,
    QuantSearchParams, QuantSpec,
};
use evopress_search::{dp, init, mutation};
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn model() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| load_model(&common::demo_model()).unwrap())
}

fn windows(n: usize, len: usize) -> Vec<Vec<u32>> {
    let m = model();
    let path = common::asset("sotu/1790_george_washington_n.txt");
    let file = TokenizedFile::read(&path, m.tokenizer().unwrap()).unwrap();
    calibration_windows(&[file], len, n, Sampling::Sequential, 0).unwrap()
}

/// The shared database: widths 2 and 4, groups of 64, later blocks see earlier ones at 4 bits.
fn database() -> &'static Path {
    static DB: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DB.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let builder = GptqBuilder::new(GptqParams {
            bits: vec![2, 4],
            group_size: 64,
            propagation: Propagation::Quantized,
            calibration_bits: 4,
            ..GptqParams::default()
        })
        .unwrap();
        let req = BuildRequest {
            model: &model().model,
            model_path: &common::demo_model(),
            windows: windows(4, 128),
            calibration: serde_json::json!({"test": "4 x 128 sequential, washington 1790"}),
            dir: &path,
            stop_after: None,
        };
        let summary = build_database(req, &Cpu, &builder, |_| {}).unwrap();
        assert!(summary.complete);
        (dir, path)
    })
    .1
}

fn backend(target_bits: f64, group_rule: GroupRule, count_overhead: bool) -> QuantBackend {
    let params = QuantSearchParams {
        database: database().into(),
        target_bits,
        group_rule,
        step: 2, // the widths are 2 and 4
        count_overhead,
        random_candidates: 4,
    };
    QuantBackend::open(&model().model, params).unwrap()
}

fn logits(m: &Model, tokens: &[u32]) -> Vec<f32> {
    let plan = vec![BlockPlan::FULL; m.layers.len()];
    let h = m.hidden_states(&Cpu, tokens, 1, &plan).unwrap();
    m.lm_head(&Cpu, &h)
}

#[test]
fn packed_forward_equals_dequantized_dense_forward() {
    let m = &model().model;
    let b = backend(3.0, GroupRule::Size, false);
    // A mixed assignment: alternate 2 and 4 bits over the units.
    let ids: Vec<i32> = (0..b.table().units().len())
        .map(|u| if u % 3 == 0 { 2 } else { 4 })
        .collect();
    let packed = b.assemble_ids(m, &ids).unwrap();
    // The same model with every swapped weight decoded to an owned dense f32 matrix.
    let mut dense = m.clone();
    for unit in b.table().units() {
        let w = packed.linear(unit.block, unit.parts[0].kind).weight.clone();
        assert!(
            matches!(w.kind(), WeightKind::Packed { .. }),
            "{} is not packed",
            unit.name
        );
        let mut rows = Vec::with_capacity(unit.numel());
        for p in &unit.parts {
            rows.extend(packed.linear(unit.block, p.kind).weight.to_f32_vec());
        }
        let w = Weight::from_f32(unit.rows, unit.cols, rows);
        swap_unit(&mut dense.layers[unit.block], unit, &w);
    }
    let tokens = &windows(1, 96)[0];
    let (a, d) = (logits(&packed, tokens), logits(&dense, tokens));
    let max_diff = a
        .iter()
        .zip(&d)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let scale = d.iter().map(|v| v.abs()).fold(0f32, f32::max);
    assert!(
        max_diff <= 1e-3 * scale.max(1.0),
        "packed vs dequantized logits differ by {max_diff} (max |logit| {scale})"
    );
    // And the quantized model is a different model from the original one.
    let o = logits(m, tokens);
    let moved = o
        .iter()
        .zip(&a)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(moved > 1e-2, "quantization changed nothing ({moved})");
}

#[test]
fn budgets_hold_exactly() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    for rule in [GroupRule::Size, GroupRule::Name] {
        let b = backend(3.0, rule, false);
        let space = b.space();
        let numel = b.numel() as f64;
        let check = |g: &evopress_search::Genome| {
            let ids = space.level_ids(g);
            let bits: u64 = (b.table().units().iter().zip(&ids))
                .map(|(u, &w)| u.numel() as u64 * w as u64)
                .sum();
            assert_eq!(bits as f64, 3.0 * numel, "{rule:?}: not exactly 3 bits");
            assert!(space.budget_report(g).holds);
        };
        let starts = init::distinct_random_starts(space, 8, 1000, &mut rng).unwrap();
        starts.iter().for_each(check);
        let kids = mutation::offspring(
            space,
            &starts[..1],
            16,
            3,
            1000,
            &Default::default(),
            &mut rng,
        )
        .unwrap();
        kids.iter().map(|k| &k.genome).for_each(check);
        check(&dp::dp_allocate(space, &b.table().rel_errors(space)).unwrap());
    }
    // Stored bits under a ceiling: every variant's real bytes (codes, scales, zeros) count.
    let target = 3.0;
    let b = backend(target, GroupRule::None, true);
    let space = b.space();
    let ceiling = (b.numel() as f64 * target).floor() as u64;
    for g in init::distinct_random_starts(space, 4, 1000, &mut rng).unwrap() {
        let ids = space.level_ids(&g);
        let stored = 8 * b.stored_bytes(&ids);
        assert_eq!(space.total_cost(&g), stored);
        assert!(stored <= ceiling, "{stored} stored bits over {ceiling}");
        // Codes alone average below target: the overhead was paid for.
        assert!(b.average_bits(&ids) < target);
    }
    // The stored bytes are the real tensor bytes.
    let store = b.table().store();
    let entry = b.table().entry(0);
    let real: usize = ["codes", "scales", "zeros"]
        .iter()
        .map(|p| {
            store
                .tensor(&format!("{}/4/{p}", entry.name))
                .unwrap()
                .bytes()
                .len()
        })
        .sum();
    assert_eq!(entry.level(4).unwrap().bytes, real as u64);
    assert!(QuantBackend::open(
        &model().model,
        QuantSearchParams {
            database: database().into(),
            target_bits: 3.0,
            group_rule: GroupRule::Size,
            step: 1,
            count_overhead: true,
            random_candidates: 4,
        }
    )
    .is_err());
}

#[test]
fn database_is_at_most_035x_the_original_layout() {
    let b = backend(3.0, GroupRule::Size, false);
    let (db, orig) = (b.database_bytes(), b.original_layout_bytes());
    assert!(
        (db as f64) <= 0.35 * orig as f64,
        "{db} bytes vs {orig} in the original layout"
    );
    // Every unit has both widths with a finite error that falls with the width.
    for u in 0..b.table().units().len() {
        let e = b.table().entry(u);
        let (e2, e4) = (e.level(2).unwrap(), e.level(4).unwrap());
        assert_eq!(e2.extra["bits"], 2);
        assert_eq!(e2.extra["group_size"], 64);
        assert!(
            e4.rel_error.is_finite() && e4.rel_error < e2.rel_error,
            "{}",
            e.name
        );
    }
}

#[test]
fn gptq_error_is_well_below_rtn_on_real_layers() {
    let m = &model().model;
    let mut cal = BlockCalibrator::new(m, &Cpu, windows(4, 128)).unwrap();
    cal.skip_to(2, |_| None).unwrap();
    let hs = cal.hessians().unwrap();
    for unit in linear_units(m).into_iter().filter(|u| u.block == 2) {
        if !unit.name.ends_with("v_proj") && !unit.name.ends_with("down_proj") {
            continue;
        }
        let h = &hs.get(unit.input()).data;
        let w = unit.dense_weight(m);
        for bits in [2, 3] {
            let spec = QuantSpec::new(bits, 64);
            let g = gptq(&w, unit.rows, unit.cols, h, &spec, &GptqConfig::default()).unwrap();
            let r = rtn(&w, unit.rows, unit.cols, &spec).unwrap();
            let (eg, er) = (
                rel_error(&w, &g.w_hat, h, unit.rows, unit.cols).unwrap(),
                rel_error(&w, &r.w_hat, h, unit.rows, unit.cols).unwrap(),
            );
            eprintln!("{} at {bits} bits: GPTQ {eg:.5}, RTN {er:.5}", unit.name);
            assert!(
                eg < 0.8 * er,
                "{} at {bits} bits: GPTQ {eg:.5} vs RTN {er:.5}",
                unit.name
            );
        }
    }
}
