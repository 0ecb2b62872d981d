//! GGUF exports of the demo model: quantized layers in Q8_0 are our weights bit for bit (read
//! back by evopress's GGUF loader, which also undoes llama.cpp's q/k row order), Q4_1 is
//! close, removed blocks shorten the file, a dropped attention makes it a `deci` model, and
//! tensors can be handed over already encoded; sparse layers written dense in Q8_0 are within
//! its rounding and half the size of F16. With EVOPRESS_CHECK_PYTHON, llama.cpp
//! (xllamacpp) generates the same tokens as evopress.

mod common;

use common::*;
use evopress_core::gguf::{GgmlType, GgufFile, MetaValue};
use evopress_core::{load_model, BlockPlan, Candidate, LinearKind, ModelSource};
use evopress_export::gguf::{write_gguf, DenseType, Encoded, GgufOptions, GgufQuant};
use evopress_kernels::cpu::Cpu;
use evopress_kernels::DType;
use std::collections::HashMap;

const EXACT: GgufOptions = GgufOptions {
    dense: DenseType::Float(DType::F16),
    quant: GgufQuant::Exact,
};

#[test]
fn q8_0_export_is_the_quantized_model_bit_for_bit() {
    let loaded = demo();
    let model = quantized(&loaded.model, mixed_3bit);
    let candidate = Candidate::dense(&model);
    let src = ModelSource::open(&demo_path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.gguf");
    let report = write_gguf(&candidate, &src, &path, &EXACT, HashMap::new()).unwrap();
    for line in report.lines() {
        println!("{line}");
    }
    let g = GgufFile::open(&path).unwrap();
    let q = g
        .tensors()
        .iter()
        .find(|t| t.name == "blk.0.attn_q.weight")
        .unwrap();
    assert_eq!(q.ggml_type, GgmlType::Q8_0);
    assert_eq!(
        g.get_str("tokenizer.chat_template").unwrap(),
        GgufFile::open(demo_path())
            .unwrap()
            .get_str("tokenizer.chat_template")
            .unwrap()
    );
    let exported = load_model(&path).unwrap();
    let ids = tokens(&loaded, 64);
    assert_eq!(
        exported.model.logits(&Cpu, &ids, 1).unwrap(),
        model.logits(&Cpu, &ids, 1).unwrap()
    );
}

#[test]
fn q4_1_export_moves_weights_by_at_most_the_reported_minimum_rounding() {
    let loaded = demo();
    let model = quantized(&loaded.model, |_, _| 4);
    let candidate = Candidate::dense(&model);
    let src = ModelSource::open(&demo_path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q41.gguf");
    let opts = GgufOptions {
        dense: DenseType::Float(DType::F16),
        quant: GgufQuant::Compact,
    };
    let report = write_gguf(&candidate, &src, &path, &opts, HashMap::new()).unwrap();
    let note = report
        .notes
        .iter()
        .find(|n| n.contains("Q4_1 stores"))
        .unwrap();
    println!("{note}");
    let exported = load_model(&path).unwrap();
    // Q4_1 holds 4-bit groups of 64 as pairs of blocks: same codes and scale, the minimum
    // rounded to f16, i.e. each weight off by at most 2^-11 of the block's zero·scale.
    let (a, b) = (
        &exported.model.layers[5].mlp.up_proj.weight,
        &model.layers[5].mlp.up_proj.weight,
    );
    let (a, b) = (a.to_f32_vec(), b.to_f32_vec());
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(worst <= scale * 1e-3, "{worst} vs weights up to {scale}");
    let ids = tokens(&loaded, 128);
    let (got, want) = (
        perplexity(&Candidate::dense(&exported.model), &ids),
        perplexity(&candidate, &ids),
    );
    assert!((got - want).abs() <= 1e-3 * want, "{got} vs {want}");
}

#[test]
fn sparse_export_with_q8_0_dense_is_q8_0_within_its_rounding_and_smaller_than_f16() {
    let loaded = demo();
    let model = sparse(&loaded.model, 0.5);
    let candidate = Candidate::dense(&model);
    let src = ModelSource::open(&demo_path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, dense: DenseType| {
        let path = dir.path().join(name);
        let opts = GgufOptions {
            dense,
            quant: GgufQuant::Exact,
        };
        let report = write_gguf(&candidate, &src, &path, &opts, HashMap::new()).unwrap();
        (path, report)
    };
    let (q8, report) = write("sparse-q8_0.gguf", DenseType::Q8_0);
    let (f16, f16_report) = write("sparse-f16.gguf", DenseType::Float(DType::F16));
    for line in report.lines() {
        println!("{line}");
    }
    assert!(
        (report.notes.iter()).any(|n| n.contains("210 sparse written dense Q8_0")),
        "{:?}",
        report.notes
    );
    let g = GgufFile::open(&q8).unwrap();
    let linear = |n: &str| n.starts_with("blk.") && (n.contains(".attn_") || n.contains(".ffn_"));
    let linears: Vec<_> = (g.tensors().iter())
        .filter(|t| linear(&t.name) && t.name.ends_with(".weight") && !t.name.contains("norm"))
        .collect();
    assert_eq!(linears.len(), 210);
    assert!(
        linears.iter().all(|t| t.ggml_type == GgmlType::Q8_0),
        "{:?}",
        (linears.iter())
            .map(|t| (&t.name, t.ggml_type))
            .collect::<Vec<_>>()
    );
    let (q8_size, f16_size) = (
        std::fs::metadata(&q8).unwrap().len(),
        std::fs::metadata(&f16).unwrap().len(),
    );
    println!(
        "file bytes: Q8_0 {q8_size}, F16 {f16_size}; linear bytes {} vs {}",
        report.linear_bytes, f16_report.linear_bytes
    );
    // 34 bytes per 32 weights against 64.
    assert_eq!(report.linear_bytes * 64, f16_report.linear_bytes * 34);
    assert!(q8_size < f16_size);

    // Read back (the loader undoes llama.cpp's q/k row order): each weight is within Q8_0's
    // rounding of its block (half a step d = amax/127, plus d's rounding to f16), and pruned
    // weights stay exactly zero.
    let exported = load_model(&q8).unwrap();
    for b in 0..model.layers.len() {
        for kind in LinearKind::ALL {
            let got = exported.model.linear(b, kind).weight.to_f32_vec();
            let want = model.linear(b, kind).weight.to_f32_vec();
            assert_eq!(got.len(), want.len());
            for (bi, (g, w)) in got.chunks(32).zip(want.chunks(32)).enumerate() {
                let d = w.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
                for (j, (&x, &y)) in g.iter().zip(w).enumerate() {
                    assert!(
                        (x - y).abs() <= 0.57 * d && (y != 0.0 || x == 0.0),
                        "block {b} {kind:?} element {}: {x} vs {y} (step {d})",
                        bi * 32 + j
                    );
                }
            }
        }
    }
    let ids = tokens(&loaded, 128);
    let (got, want) = (
        perplexity(&Candidate::dense(&exported.model), &ids),
        perplexity(&candidate, &ids),
    );
    println!("perplexity: Q8_0 export {got:.4}, sparse candidate {want:.4}");
    assert!((got - want).abs() <= 1e-2 * want, "{got} vs {want}");

    let Some(py) = python("llama.cpp") else {
        return;
    };
    // llama.cpp loads the Q8_0 file and greedily continues a prompt as evopress does on the
    // same file.
    let prompt = "The history of the United States";
    let prompt_ids = exported.tokenizer().unwrap().encode(prompt).unwrap();
    let full = vec![BlockPlan::FULL; exported.model.layers.len()];
    let eos = exported.model.config.eos_token_id;
    let new = (exported.model)
        .generate(&Cpu, &prompt_ids, 8, eos, &full)
        .unwrap();
    check_llama_cpp_greedy(&py, &q8, prompt, &prompt_ids, &new);
}

#[test]
fn depth_export_is_shorter_and_a_dropped_attention_makes_a_deci_model() {
    let loaded = demo();
    let n = loaded.model.layers.len();
    let src = ModelSource::open(&demo_path()).unwrap();
    let dir = tempfile::tempdir().unwrap();

    // Whole blocks only: a shorter Llama file, tensors copied, evopress computes the same.
    let whole = Candidate {
        plan: plan(n, &[3, 8, 12, 17, 22, 26], &[], &[]),
        model: loaded.model.clone(),
    };
    let path = dir.path().join("drop6.gguf");
    let report = write_gguf(&whole, &src, &path, &EXACT, HashMap::new()).unwrap();
    assert_eq!(report.layers, 24);
    // The loader keeps the source's blocks packed: they are copied, not decoded.
    assert!(
        (report.notes.iter()).any(|n| n.starts_with("linear layers: 168 copied from the source")),
        "{:?}",
        report.notes
    );
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.get_u32("llama.block_count").unwrap(), 24);
    assert!(g.tensors().iter().all(|t| !t.name.starts_with("blk.24.")));
    let ids = tokens(&loaded, 96);
    let exported = load_model(&path).unwrap();
    assert_eq!(
        perplexity(&Candidate::dense(&exported.model), &ids),
        perplexity(&whole, &ids)
    );

    // Plus a dropped attention (source block 20) and a dropped MLP (source block 25).
    let partial = Candidate {
        plan: plan(n, &[3, 8, 12, 17, 22, 26], &[20], &[25]),
        model: loaded.model.clone(),
    };
    let path = dir.path().join("partial.gguf");
    write_gguf(&partial, &src, &path, &EXACT, HashMap::new()).unwrap();
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.get_str("general.architecture").unwrap(), "deci");
    let heads = g.get_int_array("deci.attention.head_count").unwrap();
    assert_eq!(heads.len(), 24);
    assert_eq!((heads[16], heads[15]), (0, 9));
    assert!(g.get("llama.block_count").is_none());
    assert!(g
        .tensors()
        .iter()
        .all(|t| !t.name.starts_with("blk.16.attn_")));
    let down = g
        .tensors()
        .iter()
        .find(|t| t.name == "blk.20.ffn_down.weight")
        .unwrap();
    assert_eq!(
        down.ggml_type,
        GgmlType::Q4_0,
        "a dropped MLP is exact-zero Q4_0"
    );

    let Some(py) = python("llama.cpp") else {
        return;
    };
    // llama.cpp rounds activations to 8 bits for quantized weights, which can flip close
    // calls on a damaged model: compare on an F32 copy of the source (scripts/gguf-to-f32.py).
    let f32_src = dir.path().join("f32.gguf");
    let status = std::process::Command::new(&py)
        .arg(root().join("scripts/gguf-to-f32.py"))
        .args([demo_path().as_os_str(), f32_src.as_os_str()])
        .status()
        .unwrap();
    assert!(status.success());
    let f32_model = load_model(&f32_src).unwrap();
    let partial = Candidate {
        model: f32_model.model.clone(),
        ..partial
    };
    let path = dir.path().join("partial-f32.gguf");
    write_gguf(
        &partial,
        &ModelSource::open(&f32_src).unwrap(),
        &path,
        &EXACT,
        HashMap::new(),
    )
    .unwrap();
    let prompt = "The history of the United States";
    let prompt_ids = f32_model.tokenizer().unwrap().encode(prompt).unwrap();
    let eos = partial.model.config.eos_token_id;
    let new = partial
        .model
        .generate(&Cpu, &prompt_ids, 4, eos, &partial.plan)
        .unwrap();
    check_llama_cpp_greedy(&py, &path, prompt, &prompt_ids, &new);
}

#[test]
fn tensors_given_encoded_are_written_as_given() {
    let loaded = demo();
    let src = ModelSource::open(&demo_path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("given.gguf");
    // blk.0.ffn_down as Q8_0 bytes of an encoder of the caller's (here: d = 1/64, q = 1).
    let (rows, cols) = (576usize, 1536usize);
    let block: Vec<u8> = half::f16::from_f32(1.0 / 64.0)
        .to_le_bytes()
        .into_iter()
        .chain([1u8; 32])
        .collect();
    let given = Encoded {
        ty: GgmlType::Q8_0,
        dims: vec![cols as u64, rows as u64],
        bytes: block.repeat(rows * cols / 32),
    };
    let encoded = HashMap::from([("blk.0.ffn_down.weight".to_string(), given)]);
    let report = write_gguf(
        &Candidate::dense(&loaded.model),
        &src,
        &path,
        &EXACT,
        encoded,
    )
    .unwrap();
    assert!(
        report.notes.iter().any(|n| n.contains("1 given encoded")),
        "{:?}",
        report.notes
    );
    let back = load_model(&path).unwrap();
    let w = back.model.layers[0].mlp.down_proj.weight.to_f32_vec();
    assert!(w.iter().all(|&x| x == 1.0 / 64.0));

    let stray = HashMap::from([(
        "blk.99.ffn_down.weight".to_string(),
        Encoded {
            ty: GgmlType::F32,
            dims: vec![1],
            bytes: vec![0; 4],
        },
    )]);
    let err = write_gguf(&Candidate::dense(&loaded.model), &src, &path, &EXACT, stray).unwrap_err();
    assert!(err.to_string().contains("blk.99.ffn_down.weight"), "{err}");
    let meta = GgufFile::open(&path).unwrap();
    assert!(matches!(meta.get("general.architecture"), Some(MetaValue::String(a)) if a == "llama"));
}
