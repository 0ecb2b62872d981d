//! The block-wise calibration engine on the real model (2 windows × 64 tokens, first two
//! blocks), against independent computations; unit enumeration on the real and tiny Phi-3.

mod common;

use evopress_core::calibrate::BlockCalibrator;
use evopress_core::data::{calibration_windows, Sampling, TokenizedFile};
use evopress_core::gguf::GgufWeights;
use evopress_core::load::{load_model_with, LoadOptions};
use evopress_core::model::{BlockPlan, Layout, LinearInput, LinearKind};
use evopress_core::units::linear_units;
use evopress_core::{load_model, LoadedModel};
use evopress_kernels::cpu::{reference, Cpu};
use std::sync::OnceLock;

fn loaded() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| load_model(&common::smollm2_gguf()).unwrap())
}

fn windows() -> Vec<Vec<u32>> {
    let lm = loaded();
    let file = common::asset("sotu/1790_george_washington_n.txt");
    let files = [TokenizedFile::read(&file, lm.tokenizer.as_ref().unwrap()).unwrap()];
    calibration_windows(&files, 64, 2, Sampling::Sequential, 0).unwrap()
}

/// The stream after `b` dense blocks, from the ordinary forward.
fn dense_stream(w: &[u32], b: usize) -> Vec<f32> {
    let model = &loaded().model;
    let mut h = model.embed(w).unwrap();
    let layout = Layout {
        batch: 1,
        seq: w.len(),
        pos0: 0,
    };
    model.run_blocks(&Cpu, &mut h, layout, &vec![BlockPlan::FULL; b], 0);
    h
}

#[test]
fn block0_attn_hessian_matches_an_independent_computation() {
    let model = &loaded().model;
    let ws = windows();
    let mut cal = BlockCalibrator::new(model, &Cpu, ws.clone()).unwrap();
    let hs = cal.hessians().unwrap();
    let got = hs.get(LinearInput::AttnIn);
    let d = model.hidden_size();
    assert_eq!((got.dim, got.n_seq, hs.n_seq()), (d, 2, 2));

    let mut want = vec![0f64; d * d];
    for w in &ws {
        let x = model.embed(w).unwrap();
        let mut normed = vec![0f32; x.len()];
        let gamma = &model.layers[0].input_layernorm;
        reference::rms_norm(&x, gamma, model.config.rms_norm_eps, &mut normed);
        for row in normed.chunks_exact(d) {
            for i in 0..d {
                for j in 0..d {
                    want[i * d + j] += row[i] as f64 * row[j] as f64;
                }
            }
        }
    }
    let scale = 2.0 / ws.len() as f64;
    let max = want.iter().fold(0f64, |m, v| m.max(v.abs())) * scale;
    for (k, (&g, &w)) in got.data.iter().zip(&want).enumerate() {
        let w = w * scale;
        assert!((g - w).abs() <= 1e-5 * max, "H[{k}]: got {g}, want {w}");
    }
    // Same layer kinds share the Hessian.
    assert!(std::ptr::eq(hs.for_kind(LinearKind::K), got));
    assert_eq!(
        hs.for_kind(LinearKind::Down).dim,
        model.config.intermediate_size
    );
    assert_eq!(
        hs.for_kind(LinearKind::O).dim,
        model.layers[0].self_attn.o_proj.weight.cols
    );
}

#[test]
fn hessians_are_symmetric_with_nonnegative_diagonal() {
    let model = &loaded().model;
    let mut cal = BlockCalibrator::new(model, &Cpu, windows()).unwrap();
    cal.advance(None).unwrap();
    let hs = cal.hessians().unwrap();
    assert_eq!(hs.block, 1);
    for input in LinearInput::ALL {
        let h = hs.get(input);
        for i in 0..h.dim {
            assert!(h.get(i, i) >= 0.0, "{input:?} diag {i}");
            for j in 0..i {
                assert_eq!(h.get(i, j), h.get(j, i), "{input:?} ({i},{j})");
            }
        }
    }
}

#[test]
fn advance_equals_the_ordinary_forward_bit_for_bit() {
    let model = &loaded().model;
    let ws = windows();
    let mut cal = BlockCalibrator::new(model, &Cpu, ws.clone()).unwrap();
    let before = cal.stream(0).to_vec();
    cal.hessians().unwrap();
    assert_eq!(cal.stream(0), before, "hessians() must not move the stream");
    cal.advance(None).unwrap();
    let h1 = cal.hessians_and_advance().unwrap();
    assert_eq!((h1.block, cal.block()), (1, 2));
    for (i, w) in ws.iter().enumerate() {
        assert!(cal.stream(i) == dense_stream(w, 2), "window {i} differs");
    }

    // One-pass and two-pass Hessians agree.
    let mut two = BlockCalibrator::new(model, &Cpu, ws.clone()).unwrap();
    two.advance(None).unwrap();
    assert_eq!(
        two.hessians().unwrap().get(LinearInput::DownIn),
        h1.get(LinearInput::DownIn)
    );
}

#[test]
fn skip_to_equals_advancing_and_uses_replacements() {
    let model = &loaded().model;
    let ws = windows();
    let mut a = BlockCalibrator::new(model, &Cpu, ws.clone()).unwrap();
    a.advance(None).unwrap();
    a.advance(None).unwrap();
    let mut b = BlockCalibrator::new(model, &Cpu, ws.clone()).unwrap();
    b.skip_to(2, |_| None).unwrap();
    assert_eq!(b.block(), 2);
    assert_eq!(a.stream(1), b.stream(1));

    // The model's own block as a replacement is the dense block; a changed one is not.
    b.skip_to(1, |_| Some(model.layers[0].clone())).unwrap();
    assert_eq!(b.stream(1), dense_stream(&ws[1], 1));
    let mut zeroed = model.layers[0].clone();
    let down = &zeroed.mlp.down_proj.weight;
    zeroed.mlp.down_proj.weight =
        evopress_kernels::Weight::from_f32(down.rows, down.cols, vec![0.0; down.numel()]);
    b.skip_to(0, |_| None).unwrap();
    assert_eq!(b.stream(1), model.embed(&ws[1]).unwrap().as_slice());
    b.skip_to(1, |i| (i == 0).then(|| zeroed.clone())).unwrap();
    assert!(
        b.stream(1) != dense_stream(&ws[1], 1),
        "a replacement block must be used"
    );
    assert!(b.skip_to(model.layers.len() + 1, |_| None).is_err());
}

#[test]
fn units_follow_hf_naming() {
    let model = &loaded().model;
    let units = linear_units(model);
    assert_eq!(units.len(), 7 * model.layers.len());
    assert_eq!(units[0].name, "model.layers.0.self_attn.q_proj");
    assert_eq!(units[6].name, "model.layers.0.mlp.down_proj");
    let down = &units[6];
    assert_eq!(
        (down.rows, down.cols),
        (model.hidden_size(), model.config.intermediate_size)
    );
    assert_eq!(down.input(), LinearInput::DownIn);
    assert_eq!(
        down.dense_weight(model),
        model.linear(0, LinearKind::Down).weight.to_f32_vec()
    );
    assert_eq!(model.fingerprint(), model.fingerprint());
    assert_eq!(model.fingerprint().len(), 16);
}

#[test]
fn how_gguf_weights_are_held_does_not_change_the_fingerprints() {
    let expanded = load_model_with(
        &common::smollm2_gguf(),
        LoadOptions {
            gguf_weights: GgufWeights::F32,
        },
    )
    .unwrap()
    .model;
    let packed = &loaded().model;
    assert_ne!(
        packed.linear(0, LinearKind::Q).weight.dtype().name(),
        expanded.linear(0, LinearKind::Q).weight.dtype().name(),
        "the demo GGUF's Q4_1 linears load packed by default"
    );
    assert_eq!(packed.fingerprint(), expanded.fingerprint());
    assert_eq!(packed.weights_fingerprint(), expanded.weights_fingerprint());
}

#[test]
fn phi3_units_are_fused() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-phi3");
    let model = load_model(&dir).unwrap().model;
    let units = linear_units(&model);
    let names: Vec<&str> = units[..4].iter().map(|u| u.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "model.layers.0.self_attn.qkv_proj",
            "model.layers.0.self_attn.o_proj",
            "model.layers.0.mlp.gate_up_proj",
            "model.layers.0.mlp.down_proj"
        ]
    );
    let qkv = &units[0];
    let c = &model.config;
    assert_eq!(
        qkv.rows,
        (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim
    );
    assert_eq!(qkv.parts[2].kind, LinearKind::V);
    assert_eq!(
        qkv.parts[2].row_offset,
        (c.num_attention_heads + c.num_key_value_heads) * c.head_dim
    );
    let gate_up = &units[2];
    assert_eq!(gate_up.rows, 2 * c.intermediate_size);
    assert_eq!(gate_up.parts[1].row_offset, c.intermediate_size);
    let w = gate_up.dense_weight(&model);
    assert_eq!(w.len(), gate_up.numel());
    assert_eq!(
        &w[gate_up.parts[1].row_offset * gate_up.cols..],
        model.linear(0, LinearKind::Up).weight.to_f32_vec()
    );
}
