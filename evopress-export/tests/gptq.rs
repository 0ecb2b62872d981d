//! GPTQ export of the demo model quantized layer by layer at mixed widths: the file holds our
//! codes, zero points and scales exactly (read back with an independent unpacker), GPTQModel
//! packs the same codes into the same words (fixture), the per-layer widths are `dynamic`
//! overrides, and GPTQModel loads it to the same perplexity (Python cross-check).

mod common;

use common::*;
use evopress_core::{Candidate, ModelSource};
use evopress_export::gptq::{write_gptq, GptqFormat, GptqOptions};
use evopress_export::gptq_pack::{pack_sequence, unpack_sequence};
use evopress_export::hf::{write_hf, HfOptions, SparseFormat};
use evopress_kernels::DType;
use half::f16;
use safetensors::SafeTensors;
use serde_json::Value;
use std::path::Path;

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn ints(st: &SafeTensors, name: &str) -> (Vec<u32>, Vec<usize>) {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let v = t
        .data()
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (v, t.shape().to_vec())
}

/// Dequantizes module `m` from its four GPTQ tensors (v2 zero points): `[out, in]`.
fn dequantize(st: &SafeTensors, m: &str, bits: u8) -> Vec<f32> {
    let (qweight, qw_shape) = ints(st, &format!("{m}.qweight"));
    let (qzeros, _) = ints(st, &format!("{m}.qzeros"));
    let (g_idx, _) = ints(st, &format!("{m}.g_idx"));
    let scales: Vec<f32> = st
        .tensor(&format!("{m}.scales"))
        .unwrap()
        .data()
        .chunks_exact(2)
        .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect();
    let (words_in, out) = (qw_shape[0], qw_shape[1]);
    let inp = words_in * 32 / bits as usize;
    let groups = scales.len() / out;
    let zeros: Vec<Vec<u32>> = qzeros
        .chunks_exact(qzeros.len() / groups)
        .map(|row| unpack_sequence(row, bits, out))
        .collect();
    let mut w = vec![0f32; out * inp];
    for o in 0..out {
        let column: Vec<u32> = (0..words_in).map(|i| qweight[i * out + o]).collect();
        let codes = unpack_sequence(&column, bits, inp);
        for c in 0..inp {
            let g = g_idx[c] as usize;
            w[o * inp + c] = (codes[c] as f32 - zeros[g][o] as f32) * scales[g * out + o];
        }
    }
    w
}

#[test]
fn mixed_widths_are_stored_exactly_with_dynamic_overrides() {
    let loaded = demo();
    let model = quantized(&loaded.model, mixed_3bit);
    let candidate = Candidate::dense(&model);
    let src = ModelSource::open(&demo_path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gptq");
    let opts = GptqOptions {
        format: GptqFormat::Auto,
    };
    let report = write_gptq(&candidate, &src, &out, &opts).unwrap();
    for line in report.lines() {
        println!("{line}");
    }
    // 3 bits on average: codes 3/16 of bf16, plus f16 scales per 64, zeros and g_idx.
    assert!(report.linear_ratio() <= 0.25, "{}", report.linear_ratio());

    let qc = read_json(&out.join("quantize_config.json"));
    assert_eq!(
        qc["checkpoint_format"], "gptq_v2",
        "asymmetric grids are written as v2"
    );
    assert_eq!(qc["bits"], 3);
    assert_eq!(
        read_json(&out.join("config.json"))["quantization_config"],
        qc
    );
    let dynamic = qc["dynamic"].as_object().unwrap();
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for u in evopress_core::units::linear_units(&model) {
        let kind = u.parts[0].kind;
        let want_bits = mixed_3bit(u.block, kind);
        let key = format!("+:{}$", u.name.replace('.', "\\."));
        let bits = match dynamic.get(&key) {
            Some(o) => o["bits"].as_u64().unwrap() as u8,
            None => 3,
        };
        assert_eq!(bits, want_bits, "{}", u.name);
        let got = dequantize(&st, &u.name, bits);
        let want = model.linear(u.block, kind).weight.to_f32_vec();
        assert_eq!(got, want, "{}: dequantized GPTQ weights differ", u.name);
    }

    let Some(py) = python("GPTQModel") else {
        return;
    };
    // The reference: the same candidate as dense f32 weights; evopress's perplexity on the
    // windows check-export.py scores (4 windows of 256 tokens).
    let reference = dir.path().join("dense");
    let hf = HfOptions {
        dtype: DType::F32,
        sparse: SparseFormat::Dense,
    };
    write_hf(&candidate, &src, &reference, &hf).unwrap();
    let ids = tokens(&loaded, 1024);
    let ppl = window_perplexity(&candidate, &ids, 256);
    run_check(
        &py,
        &[
            "gptq",
            out.to_str().unwrap(),
            "--data",
            text_path().to_str().unwrap(),
            "--expect",
            &ppl.to_string(),
            "--reference",
            reference.to_str().unwrap(),
        ],
    );
}

/// evopress eval's perplexity over consecutive windows of `seq` tokens.
fn window_perplexity(c: &Candidate, ids: &[u32], seq: usize) -> f64 {
    let mut nll = 0.0;
    let windows = ids.len() / seq;
    for w in ids.chunks_exact(seq) {
        nll += perplexity(c, w).ln() * (seq - 1) as f64;
    }
    (nll / (windows * (seq - 1)) as f64).exp()
}

#[test]
fn gptqmodel_packs_the_same_words() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gptq-pack.json");
    let fx = read_json(&path);
    let (inp, out) = (
        fx["in_features"].as_u64().unwrap() as usize,
        fx["out_features"].as_u64().unwrap() as usize,
    );
    let rows = |v: &Value| -> Vec<Vec<u32>> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_i64().unwrap() as u32)
                    .collect()
            })
            .collect()
    };
    for layer in fx["layers"].as_array().unwrap() {
        let bits = layer["bits"].as_u64().unwrap() as u8;
        let (codes, zeros) = (rows(&layer["codes"]), rows(&layer["zeros"]));
        let (qweight, qzeros) = (rows(&layer["qweight"]), rows(&layer["qzeros"]));
        for o in 0..out {
            let column: Vec<u32> = (0..inp).map(|c| codes[o][c]).collect();
            let words = pack_sequence(&column, bits);
            let want: Vec<u32> = qweight.iter().map(|row| row[o]).collect();
            assert_eq!(words, want, "{bits} bits, qweight column {o}");
        }
        for (g, row) in qzeros.iter().enumerate() {
            let zs: Vec<u32> = (0..out).map(|o| zeros[o][g]).collect();
            assert_eq!(
                &pack_sequence(&zs, bits),
                row,
                "{bits} bits, qzeros row {g}"
            );
        }
    }
}

#[test]
fn depth_drops_blocks_and_writes_dropped_sub_blocks_as_exact_zero_layers() {
    let loaded = demo();
    let model = quantized(&loaded.model, |_, _| 4);
    let n = model.layers.len();
    let candidate = Candidate {
        plan: plan(n, &[3, 8], &[20], &[]),
        model,
    };
    let src = ModelSource::open(&demo_path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = GptqOptions {
        format: GptqFormat::Auto,
    };
    let report = write_gptq(&candidate, &src, dir.path(), &opts).unwrap();
    assert_eq!(report.layers, n - 2);
    let config = read_json(&dir.path().join("config.json"));
    assert_eq!(config["num_hidden_layers"], n - 2);
    let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    // Source block 20 is output block 18; its attention layers decode to zeros, its MLP and
    // the next block's attention are the source's.
    for m in ["q_proj", "k_proj", "v_proj", "o_proj"] {
        let w = dequantize(&st, &format!("model.layers.18.self_attn.{m}"), 4);
        assert!(w.iter().all(|&x| x == 0.0), "{m}");
    }
    let kept = dequantize(&st, "model.layers.18.mlp.down_proj", 4);
    let src_w = candidate.model.layers[20].mlp.down_proj.weight.to_f32_vec();
    assert_eq!(kept, src_w);
    assert!(st
        .tensor(&format!("model.layers.{}.mlp.up_proj.qweight", n - 2))
        .is_err());
}

#[test]
fn zero_points_v1_cannot_hold_are_refused_naming_the_layer() {
    let loaded = demo();
    let model = quantized(&loaded.model, |_, _| 2);
    let src = ModelSource::open(&demo_path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = GptqOptions {
        format: GptqFormat::V1,
    };
    let err = write_gptq(&Candidate::dense(&model), &src, dir.path(), &opts)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot be stored as GPTQ v1"), "{err}");
    assert!(
        err.contains("model.layers.") && err.contains("zero point outside [1, 3]"),
        "{err}"
    );
    assert!(!dir.path().join("model.safetensors").exists());
}
