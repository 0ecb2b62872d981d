//! HF exports of the demo model: depth results lose their dropped blocks, sparse results are
//! compressed-tensors sparse-bitmask files holding the masks exactly, and the tokenizer files
//! are complete and readable by older `tokenizers`. Each is read back by evopress (and, with
//! EVOPRESS_CHECK_PYTHON, by transformers / compressed-tensors).

mod common;

use common::*;
use evopress_core::{load_model, Candidate, ModelSource};
use evopress_export::hf::{write_hf, HfOptions, SparseFormat};
use evopress_kernels::DType;
use half::f16;
use safetensors::SafeTensors;
use serde_json::Value;
use std::path::Path;

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

const F32_DENSE: HfOptions = HfOptions {
    dtype: DType::F32,
    sparse: SparseFormat::Dense,
};

#[test]
fn depth_export_has_fewer_layers_and_the_same_perplexity() {
    let loaded = demo();
    let n = loaded.model.layers.len();
    let candidate = Candidate {
        plan: plan(n, &[3, 8, 12, 17, 22, 26], &[20], &[25]),
        model: loaded.model.clone(),
    };
    let src = ModelSource::open(&demo_path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let report = write_hf(&candidate, &src, dir.path(), &F32_DENSE).unwrap();
    for line in report.lines() {
        println!("{line}");
    }
    assert_eq!(report.layers, 24);
    assert_eq!(
        read_json(&dir.path().join("config.json"))["num_hidden_layers"],
        24
    );
    let exported = load_model(dir.path()).unwrap();
    assert_eq!(exported.model.layers.len(), 24);
    let ids = tokens(&loaded, 128);
    let want = perplexity(&candidate, &ids);
    let got = perplexity(&Candidate::dense(&exported.model), &ids);
    assert_eq!(
        got, want,
        "the exported model computes what the plan computes"
    );
    // Source block 20 (attention dropped) is output block 16: zero attention, kept MLP.
    let l = &exported.model.layers[16];
    assert!(l
        .self_attn
        .o_proj
        .weight
        .to_f32_vec()
        .iter()
        .all(|&x| x == 0.0));
    assert_eq!(
        l.mlp.down_proj.weight.to_f32_vec(),
        loaded.model.layers[20].mlp.down_proj.weight.to_f32_vec()
    );

    let Some(py) = python("transformers") else {
        return;
    };
    run_check(
        &py,
        &[
            "hf",
            dir.path().to_str().unwrap(),
            "--data",
            text_path().to_str().unwrap(),
            "--windows",
            "1",
            "--seq-len",
            "128",
            "--expect",
            &want.to_string(),
        ],
    );
}

#[test]
fn sparse_export_is_a_compressed_tensors_bitmask_of_the_masks() {
    let loaded = demo();
    let model = sparse(&loaded.model, 0.5);
    let n = model.layers.len();
    let candidate = Candidate {
        plan: plan(n, &[], &[], &[7]),
        model,
    };
    let src = ModelSource::open(&demo_path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = HfOptions {
        dtype: DType::F16,
        sparse: SparseFormat::Bitmask,
    };
    let report = write_hf(&candidate, &src, dir.path(), &opts).unwrap();
    for line in report.lines() {
        println!("{line}");
    }
    // Half the weights in f16 plus one bit each: about 0.56x of bf16.
    assert!(report.linear_ratio() < 0.6, "{}", report.linear_ratio());
    let qc = &read_json(&dir.path().join("config.json"))["quantization_config"];
    assert_eq!(qc["quant_method"], "compressed-tensors");
    assert_eq!(qc["sparsity_config"]["format"], "sparse-bitmask");
    let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for u in evopress_core::units::linear_units(&candidate.model) {
        let want: Vec<f32> = if u.block == 7 && u.name.contains(".mlp.") {
            vec![0.0; u.numel()]
        } else {
            u.dense_weight(&candidate.model)
        };
        assert_eq!(
            decode_bitmask(&st, &u.name, u.rows, u.cols),
            want,
            "{}",
            u.name
        );
    }
    assert!(st.tensor("model.layers.0.mlp.up_proj.weight").is_err());

    let Some(py) = python("compressed-tensors") else {
        return;
    };
    let ids = tokens(&loaded, 128);
    run_check(
        &py,
        &[
            "sparse",
            dir.path().to_str().unwrap(),
            "--data",
            text_path().to_str().unwrap(),
            "--windows",
            "1",
            "--seq-len",
            "128",
            // f16 embeddings and norms: the tolerance of f16 weights.
            "--rtol",
            "1e-2",
            "--expect",
            &perplexity(&candidate, &ids).to_string(),
        ],
    );
}

/// An independent reading of compressed-tensors' bitmask tensors (f16 values).
fn decode_bitmask(st: &SafeTensors, m: &str, rows: usize, cols: usize) -> Vec<f32> {
    let shape = st.tensor(&format!("{m}.shape")).unwrap();
    let shape: Vec<i64> = shape
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(shape, [rows as i64, cols as i64]);
    let mask = st.tensor(&format!("{m}.bitmask")).unwrap();
    assert_eq!(mask.shape(), [rows, cols.div_ceil(8)]);
    let values: Vec<f32> = st
        .tensor(&format!("{m}.compressed"))
        .unwrap()
        .data()
        .chunks_exact(2)
        .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect();
    let offsets = st.tensor(&format!("{m}.row_offsets")).unwrap();
    let offsets: Vec<i64> = offsets
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let mut out = vec![0f32; rows * cols];
    let mut next = 0usize;
    for r in 0..rows {
        assert_eq!(offsets[r] as usize, next, "{m}: row {r} offset");
        for c in 0..cols {
            if mask.data()[r * cols.div_ceil(8) + c / 8] >> (c % 8) & 1 == 1 {
                out[r * cols + c] = values[next];
                next += 1;
            }
        }
    }
    assert_eq!(next, values.len());
    out
}

#[test]
fn tokenizer_files_are_complete_and_name_every_special_token() {
    let loaded = demo();
    let src = ModelSource::open(&demo_path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_hf(
        &Candidate::dense(&loaded.model),
        &src,
        dir.path(),
        &F32_DENSE,
    )
    .unwrap();
    let d = dir.path();
    let tok = read_json(&d.join("tokenizer.json"));
    let merges = tok["model"]["merges"].as_array().unwrap();
    assert_eq!(merges.len(), 48900);
    assert!(
        merges.iter().all(Value::is_string),
        "merges as \"a b\" strings"
    );
    let tc = read_json(&d.join("tokenizer_config.json"));
    assert_eq!(tc["tokenizer_class"], "PreTrainedTokenizerFast");
    assert_eq!(
        (
            &tc["bos_token"],
            &tc["eos_token"],
            &tc["unk_token"],
            &tc["pad_token"]
        ),
        (
            &"<|im_start|>".into(),
            &"<|im_end|>".into(),
            &"<|endoftext|>".into(),
            &"<|im_end|>".into()
        )
    );
    assert!(tc["chat_template"]
        .as_str()
        .unwrap()
        .contains("<|im_start|>"));
    assert_eq!(tc["added_tokens_decoder"]["0"]["content"], "<|endoftext|>");
    let st = read_json(&d.join("special_tokens_map.json"));
    assert_eq!(st["eos_token"], "<|im_end|>");
    let gen = read_json(&d.join("generation_config.json"));
    assert_eq!(
        (
            &gen["bos_token_id"],
            &gen["eos_token_id"],
            &gen["pad_token_id"]
        ),
        (&1.into(), &2.into(), &2.into())
    );
    assert_eq!(read_json(&d.join("config.json"))["pad_token_id"], 2);
    // evopress reads the exported tokenizer back to the same ids.
    let back = load_model(d).unwrap();
    let text = "The State of the Union, 2021 <|im_start|>user\nhello<|im_end|>";
    assert_eq!(
        back.tokenizer().unwrap().encode(text).unwrap(),
        loaded.tokenizer().unwrap().encode(text).unwrap()
    );

    let Some(py) = python("tokenizer") else {
        return;
    };
    run_check(
        &py,
        &[
            "tokenizer",
            d.to_str().unwrap(),
            "--gguf",
            demo_path().to_str().unwrap(),
            "--generate",
        ],
    );
}
