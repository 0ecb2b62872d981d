//! llama.cpp's block quantizers with and without an importance vector (the imatrix), on real
//! layers of the demo model: with the diagonal of the layer's calibration Hessian as
//! importance, the layer error `tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)` must drop for every type, under the
//! calibration text's Hessian and under a held-out text's.

mod common;

use evopress_core::calibrate::BlockCalibrator;
use evopress_core::data::{calibration_windows, Sampling, TokenizedFile};
use evopress_core::hessian::rel_error;
use evopress_core::units::linear_units;
use evopress_core::{load_model, BlockPlan, LoadedModel};
use evopress_kernels::cpu::Cpu;
use evopress_kernels::weight::ggml::{decode_rows, encode_rows};
use evopress_kernels::{Device, GgmlType, WeightKind};

const TYPES: [GgmlType; 9] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// `(block, layer)`: two layers whose rows fit the K-quants' 256 (down_proj, 1536 inputs) and
/// two 576-wide ones only the 32-element formats take.
const LAYERS: [(usize, &str); 4] = [
    (2, "mlp.down_proj"),
    (20, "mlp.down_proj"),
    (2, "self_attn.v_proj"),
    (20, "self_attn.o_proj"),
];

/// Rows of the (tied) LM head used: its weights are stored as Q8_0, finer than every type
/// tested, where the block linears are stored as Q4_1 and so are lossless in Q4_1.
const HEAD_ROWS: usize = 2048;

const CAL_TEXT: &str = "sotu/1961_john_f_kennedy_d.txt";
const HELD_TEXT: &str = "sotu/2001_george_w_bush_r.txt";

fn windows(m: &LoadedModel, text: &str) -> Vec<Vec<u32>> {
    let file = TokenizedFile::read(&common::asset(text), m.tokenizer().unwrap()).unwrap();
    calibration_windows(&[file], 256, 8, Sampling::Sequential, 0).unwrap()
}

/// A real layer: its weights, the type they are stored in, and its input Hessians on the
/// calibration and the held-out text.
struct Layer {
    name: String,
    w: Vec<f32>,
    rows: usize,
    cols: usize,
    stored: WeightKind,
    h_cal: Vec<f64>,
    h_held: Vec<f64>,
}

fn block_layers(m: &LoadedModel) -> Vec<Layer> {
    let hessians = |text: &str, b: usize| {
        let mut cal = BlockCalibrator::new(&m.model, &Cpu, windows(m, text)).unwrap();
        cal.skip_to(b, |_| None).unwrap();
        cal.hessians().unwrap()
    };
    let mut out = Vec::new();
    for b in [2, 20] {
        let (hc, hh) = (hessians(CAL_TEXT, b), hessians(HELD_TEXT, b));
        for &(_, layer) in LAYERS.iter().filter(|l| l.0 == b) {
            let unit = linear_units(&m.model)
                .into_iter()
                .find(|u| u.block == b && u.name.ends_with(layer))
                .unwrap();
            out.push(Layer {
                w: unit.dense_weight(&m.model),
                rows: unit.rows,
                cols: unit.cols,
                stored: m.model.linear(b, unit.parts[0].kind).weight.kind(),
                h_cal: hc.get(unit.input()).data.clone(),
                h_held: hh.get(unit.input()).data.clone(),
                name: unit.name,
            });
        }
    }
    out
}

/// `(2/n)·Σ XᵀX` of the LM head's input (the final-normed hidden states) over `windows`.
fn head_hessian(m: &LoadedModel, windows: &[Vec<u32>]) -> Vec<f64> {
    let d = m.model.hidden_size();
    let plan = vec![BlockPlan::FULL; m.model.layers.len()];
    let mut sum = vec![0f64; d * d];
    let mut g = vec![0f32; d * d];
    for w in windows {
        let x = m.model.hidden_states(&Cpu, w, 1, &plan).unwrap();
        Cpu.gram(&x, d, &mut g);
        for (s, &v) in sum.iter_mut().zip(&g) {
            *s += v as f64;
        }
    }
    sum.iter()
        .map(|&v| 2.0 * v / windows.len() as f64)
        .collect()
}

fn head_layer(m: &LoadedModel) -> Layer {
    let head = &m.model.lm_head;
    let cols = head.cols;
    let mut w = vec![0f32; HEAD_ROWS * cols];
    head.decode_rows_into(0, &mut w);
    Layer {
        name: format!("lm_head rows 0..{HEAD_ROWS}"),
        w,
        rows: HEAD_ROWS,
        cols,
        stored: head.kind(),
        h_cal: head_hessian(m, &windows(m, CAL_TEXT)),
        h_held: head_hessian(m, &windows(m, HELD_TEXT)),
    }
}

#[test]
fn importance_lowers_the_layer_error_of_every_type() {
    let m = load_model(&common::demo_model()).unwrap();
    let mut layers = block_layers(&m);
    layers.push(head_layer(&m));
    let mut checked = std::collections::BTreeMap::<String, usize>::new();
    for l in &layers {
        let (rows, cols) = (l.rows, l.cols);
        let f32s = |h: &[f64]| h.iter().map(|&v| v as f32).collect::<Vec<f32>>();
        let (h_cal, h_held) = (f32s(&l.h_cal), f32s(&l.h_held));
        // llama.cpp's imatrix: the diagonal of the calibration XᵀX.
        let importance: Vec<f32> = (0..cols).map(|i| h_cal[i * cols + i]).collect();
        for ty in TYPES {
            if ty.row_bytes(cols).is_none() {
                continue;
            }
            if l.stored == WeightKind::Ggml(ty) {
                eprintln!("{} {ty}: skipped, the weights are stored in {ty}", l.name);
                continue;
            }
            let w = &l.w;
            let plain = decode_rows(ty, &encode_rows(ty, w, cols, None).unwrap(), cols).unwrap();
            let weighted = encode_rows(ty, w, cols, Some(&importance)).unwrap();
            let weighted = decode_rows(ty, &weighted, cols).unwrap();
            let err = |h: &[f32], w_hat: &[f32]| rel_error(w, w_hat, h, rows, cols).unwrap();
            let (pc, wc) = (err(&h_cal, &plain), err(&h_cal, &weighted));
            let (ph, wh) = (err(&h_held, &plain), err(&h_held, &weighted));
            eprintln!(
                "{} {ty}: calibration {pc:.6} -> {wc:.6} ({:.3}x), held-out {ph:.6} -> {wh:.6} \
                 ({:.3}x)",
                l.name,
                wc / pc,
                wh / ph
            );
            assert!(wc < pc, "{} {ty}: calibration {wc} vs {pc}", l.name);
            assert!(wh < ph, "{} {ty}: held-out {wh} vs {ph}", l.name);
            *checked.entry(ty.to_string()).or_default() += 1;
        }
    }
    // Every type was compared on at least one layer.
    assert_eq!(checked.len(), TYPES.len(), "{checked:?}");
}
