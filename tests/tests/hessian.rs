//! The one Hessian module (`evopress_core::hessian`) on real layers of the demo model: SparseGPT
//! and GPTQ reach the per-layer errors of the original algorithms, transcribed literally in
//! `tests/support/original_obs.rs`, on real calibration Hessians, and the error meter's f32
//! GEMM agrees with plain f64 sums.

mod common;
#[path = "../support/original_obs.rs"]
mod original_obs;

use evopress_core::calibrate::BlockCalibrator;
use evopress_core::data::{calibration_windows, Sampling, TokenizedFile};
use evopress_core::hessian::RelError;
use evopress_core::load_model;
use evopress_core::units::linear_units;
use evopress_kernels::cpu::Cpu;
use evopress_quant::{gptq, GptqConfig, QuantSpec};
use evopress_sparse::{SparseGpt, SparseGptConfig};

#[test]
fn real_layers_reach_the_original_algorithms_errors() {
    let loaded = load_model(&common::demo_model()).unwrap();
    let m = &loaded.model;
    let files: Vec<TokenizedFile> = ["1790_george_washington_n", "1791_george_washington_n"]
        .iter()
        .map(|f| {
            let path = common::asset(&format!("sotu/{f}.txt"));
            TokenizedFile::read(&path, loaded.tokenizer().unwrap()).unwrap()
        })
        .collect();
    let windows = calibration_windows(&files, 256, 8, Sampling::Sequential, 0).unwrap();
    let mut cal = BlockCalibrator::new(m, &Cpu, windows).unwrap();
    cal.skip_to(2, |_| None).unwrap();
    let hs = cal.hessians().unwrap();
    for unit in linear_units(m).into_iter().filter(|u| u.block == 2) {
        if !unit.name.ends_with("k_proj") && !unit.name.ends_with("o_proj") {
            continue;
        }
        let (rows, cols) = (unit.rows, unit.cols);
        let h = &hs.get(unit.input()).data;
        let w = unit.dense_weight(m);
        let meter = RelError::new(&w, rows, cols, h).unwrap();

        // SparseGPT at 50 %: every column block holds a whole number of pruned weights, so
        // the original's per-block count equals ours and only the arithmetic differs.
        let ours = SparseGpt::new(&w, rows, cols, h, SparseGptConfig::default())
            .unwrap()
            .prune(0.5)
            .unwrap();
        let theirs = original_obs::sparsegpt(&w, h, rows, cols, 0.5);
        let (eo, et) = (meter.of(&ours).unwrap(), meter.of(&theirs).unwrap());
        eprintln!(
            "{}: SparseGPT 50% ours {eo:.6}, original {et:.6}",
            unit.name
        );
        assert!((eo - et).abs() <= 1e-4 * et, "{}: {eo} vs {et}", unit.name);

        // The f32 meter against plain f64 sums.
        let exact = original_obs::rel_error_f64(&w, &ours, h, rows, cols);
        assert!(
            (eo - exact).abs() <= 1e-5 * exact,
            "meter {eo} vs f64 {exact}"
        );

        // GPTQ at 3 bits, groups of 64: ours stores f16 scales and computes its codes with
        // them, the original keeps f32 scales in the loop, so the errors agree to ~1 %.
        let spec = QuantSpec::new(3, 64);
        let ours = gptq(&w, rows, cols, h, &spec, &GptqConfig::default()).unwrap();
        let theirs = original_obs::gptq(&w, h, rows, cols, 3, 64);
        let (eo, et) = (meter.of(&ours.w_hat).unwrap(), meter.of(&theirs).unwrap());
        eprintln!("{}: GPTQ 3-bit ours {eo:.6}, original {et:.6}", unit.name);
        assert!((eo - et).abs() <= 0.02 * et, "{}: {eo} vs {et}", unit.name);
    }
}
