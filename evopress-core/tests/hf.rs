//! HF directory loading and writing, on the committed tiny fixtures and on deliberately broken
//! files built in temporary directories.

use evopress_core::hf::{check_shapes, expected_tensors, write_hf_dir, HfDir};
use evopress_core::{Arch, Error, TensorSource};
use evopress_kernels::{DType, Weight};
use half::bf16;
use std::fs;
use std::path::{Path, PathBuf};

const FIXTURES: [&str; 5] = ["llama", "llama-tied", "mistral", "qwen2", "phi3"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(format!("tiny-{name}"))
}

/// A writable copy of a fixture's config and weights.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(fixture(name)).unwrap() {
        let path = entry.unwrap().path();
        fs::copy(&path, tmp.path().join(path.file_name().unwrap())).unwrap();
    }
    tmp
}

/// A safetensors file from a JSON header and raw data, with the header padded with spaces to
/// `header_len` bytes (the format allows any length; writers usually pad to 8).
fn safetensors_bytes(header: &str, header_len: usize, data: &[u8]) -> Vec<u8> {
    assert!(header.len() <= header_len);
    let mut out = (header_len as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.resize(8 + header_len, b' ');
    out.extend_from_slice(data);
    out
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    edit(&mut cfg);
    fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();
}

#[test]
fn fixtures_open_and_match_their_configs() {
    for name in FIXTURES {
        let hf = HfDir::open(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        check_shapes(hf.config(), &hf).unwrap_or_else(|e| panic!("{name}: {e}"));
        let expected: Vec<String> = expected_tensors(hf.config())
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let mut names = hf.names();
        names.sort();
        let mut expected_sorted = expected.clone();
        expected_sorted.sort();
        assert_eq!(names, expected_sorted, "{name}: tensor set");
        assert!(hf.tokenizer_path().is_none());
        for tensor in &expected {
            let w = hf.weight(tensor).unwrap();
            let shape = hf.shape(tensor).unwrap();
            assert_eq!(
                w.numel(),
                shape.iter().product::<usize>(),
                "{name} {tensor}"
            );
            assert!(w.to_f32_vec().iter().all(|x| x.is_finite()));
        }
    }
}

#[test]
fn fixture_configs_carry_the_architecture_details() {
    let llama = HfDir::open(fixture("llama")).unwrap();
    assert_eq!(llama.config().arch, Arch::Llama);
    let scaling = llama
        .config()
        .rope_scaling
        .as_ref()
        .expect("llama3 rope scaling");
    assert_eq!(scaling.original_max_position_embeddings, 32);
    assert!(
        HfDir::open(fixture("llama-tied"))
            .unwrap()
            .config()
            .tie_word_embeddings
    );
    let qwen2 = HfDir::open(fixture("qwen2")).unwrap();
    assert!(qwen2.config().attention_bias);
    assert_eq!(qwen2.config().rope_theta, 1e6);
    assert_eq!(
        HfDir::open(fixture("phi3")).unwrap().config().arch,
        Arch::Phi3
    );
}

#[test]
fn bf16_fixture_is_viewed_in_its_file_dtype() {
    let hf = HfDir::open(fixture("llama-tied")).unwrap();
    let w = hf.weight("model.layers.0.mlp.down_proj.weight").unwrap();
    assert_eq!(w.dtype(), DType::BF16);
    assert_eq!((w.rows, w.cols), (64, 128));
}

#[test]
fn sharded_fixture_reads_tensors_from_both_files() {
    let dir = fixture("mistral");
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    let hf = HfDir::open(&dir).unwrap();
    for file in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        let (name, _) = index["weight_map"]
            .as_object()
            .unwrap()
            .iter()
            .find(|(_, f)| *f == file)
            .unwrap_or_else(|| panic!("no tensor in {file}"));
        assert_eq!(hf.weight(name).unwrap().dtype(), DType::F32);
    }
}

#[test]
fn one_dimensional_tensors_are_single_rows() {
    let hf = HfDir::open(fixture("qwen2")).unwrap();
    let bias = hf.weight("model.layers.1.self_attn.k_proj.bias").unwrap();
    assert_eq!((bias.rows, bias.cols), (1, 32));
    assert_eq!(
        hf.shape("model.layers.1.self_attn.k_proj.bias"),
        Some(vec![32])
    );
}

#[test]
fn tokenizer_path_is_found_when_present() {
    let dir = copy_fixture("llama");
    fs::write(dir.path().join("tokenizer.json"), "{}").unwrap();
    let hf = HfDir::open(dir.path()).unwrap();
    assert_eq!(hf.tokenizer_path(), Some(dir.path().join("tokenizer.json")));
}

#[test]
fn misaligned_tensor_data_falls_back_to_an_owned_copy() {
    let dir = copy_fixture("llama");
    let values = [1.5f32, -2.0, 3.25];
    let header = r#"{"model.norm.weight":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}}"#;
    // 8 + 77 puts the data at an odd byte offset.
    let bytes = safetensors_bytes(header, 77, bytemuck::cast_slice(&values));
    fs::write(dir.path().join("model.safetensors"), bytes).unwrap();
    let hf = HfDir::open(dir.path()).unwrap();
    let w = hf.weight("model.norm.weight").unwrap();
    assert_eq!(w.to_f32_vec(), values);
}

#[test]
fn truncated_file_is_a_format_error() {
    let dir = copy_fixture("llama");
    let path = dir.path().join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let err = HfDir::open(dir.path()).err().unwrap();
    assert!(
        matches!(&err, Error::Format { path: p, .. } if *p == path),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("truncated file (100 bytes missing)"), "{msg}");
}

#[test]
fn tensor_whose_offsets_disagree_with_its_shape_is_named() {
    let dir = copy_fixture("llama");
    let path = dir.path().join("model.safetensors");
    let header = r#"{"model.norm.weight":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#;
    fs::write(&path, safetensors_bytes(header, 80, &[0; 16])).unwrap();
    let msg = HfDir::open(dir.path()).err().unwrap().to_string();
    for part in [
        "model.safetensors",
        "`model.norm.weight`",
        "12 bytes",
        "[0, 16]",
        "bad header",
    ] {
        assert!(msg.contains(part), "{msg} lacks {part}");
    }
}

#[test]
fn config_with_fewer_layers_than_the_weights_names_the_unused_tensors() {
    let dir = copy_fixture("llama");
    edit_config(dir.path(), |c| c["num_hidden_layers"] = 1.into());
    let err = HfDir::open(dir.path()).err().unwrap();
    assert!(matches!(err, Error::Format { .. }), "{err}");
    let msg = err.to_string();
    for part in [
        "model.safetensors",
        "not used",
        "1 layers",
        "model.layers.1.",
    ] {
        assert!(msg.contains(part), "{msg} lacks {part}");
    }
}

#[test]
fn non_positive_rope_theta_and_rms_norm_eps_name_their_key() {
    for (key, value) in [
        ("rope_theta", 0.0),
        ("rms_norm_eps", -1e-5),
        ("rope_theta", -1.0),
    ] {
        let dir = copy_fixture("llama");
        edit_config(dir.path(), |c| c[key] = value.into());
        match HfDir::open(dir.path()) {
            Err(Error::Config { key: k, msg, .. }) => {
                assert_eq!(k, key);
                assert!(msg.contains("positive"), "{msg}");
            }
            Err(other) => panic!("{key} = {value}: {other}"),
            Ok(_) => panic!("{key} = {value} accepted"),
        }
    }
    // transformers >= 5 nests rope_theta under rope_parameters.
    let dir = copy_fixture("llama");
    edit_config(dir.path(), |c| {
        c.as_object_mut().unwrap().remove("rope_theta");
        c["rope_parameters"] = serde_json::json!({"rope_type": "default", "rope_theta": 0.0});
        c.as_object_mut().unwrap().remove("rope_scaling");
    });
    match HfDir::open(dir.path()) {
        Err(Error::Config { key, .. }) => assert_eq!(key, "rope_parameters.rope_theta"),
        other => panic!("{:?}", other.err()),
    }
}

#[test]
fn header_longer_than_the_file_is_a_format_error() {
    let dir = copy_fixture("llama");
    let path = dir.path().join("model.safetensors");
    let mut bytes = (1_000_000u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    fs::write(&path, bytes).unwrap();
    let err = HfDir::open(dir.path()).err().unwrap();
    assert!(
        matches!(&err, Error::Format { path: p, .. } if *p == path),
        "{err}"
    );
}

#[test]
fn garbage_header_is_a_format_error() {
    let dir = copy_fixture("llama");
    let path = dir.path().join("model.safetensors");
    fs::write(&path, safetensors_bytes("this is not json", 16, &[])).unwrap();
    let err = HfDir::open(dir.path()).err().unwrap();
    assert!(
        matches!(&err, Error::Format { path: p, .. } if *p == path),
        "{err}"
    );
    assert!(err.to_string().contains("safetensors"), "{err}");
}

#[test]
fn missing_shard_names_the_index_and_the_shard() {
    let dir = copy_fixture("mistral");
    fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let err = HfDir::open(dir.path()).err().unwrap();
    let msg = err.to_string();
    assert!(msg.contains("model.safetensors.index.json"), "{msg}");
    assert!(msg.contains("model-00002-of-00002.safetensors"), "{msg}");
}

#[test]
fn index_entry_absent_from_its_shard_is_a_format_error() {
    let dir = copy_fixture("mistral");
    let path = dir.path().join("model.safetensors.index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    index["weight_map"]["model.ghost.weight"] = "model-00001-of-00002.safetensors".into();
    fs::write(&path, serde_json::to_vec(&index).unwrap()).unwrap();
    let err = HfDir::open(dir.path()).err().unwrap();
    assert!(err.to_string().contains("model.ghost.weight"), "{err}");
}

#[test]
fn directory_without_weights_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    fs::copy(
        fixture("llama").join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let err = HfDir::open(dir.path()).err().unwrap();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}

#[test]
fn shape_disagreeing_with_config_names_the_tensor() {
    let dir = copy_fixture("llama");
    edit_config(dir.path(), |c| c["intermediate_size"] = 96.into());
    let hf = HfDir::open(dir.path()).unwrap();
    match check_shapes(hf.config(), &hf) {
        Err(Error::Shape {
            name,
            expected,
            got,
            ..
        }) => {
            assert_eq!(name, "model.layers.0.mlp.gate_proj.weight");
            assert_eq!((expected, got), (vec![96, 64], vec![128, 64]));
        }
        other => panic!("expected a shape error, got {other:?}"),
    }
}

#[test]
fn untied_config_over_tied_weights_misses_the_head() {
    let dir = copy_fixture("llama-tied");
    edit_config(dir.path(), |c| c["tie_word_embeddings"] = false.into());
    let hf = HfDir::open(dir.path()).unwrap();
    match check_shapes(hf.config(), &hf) {
        Err(Error::MissingTensor { name, .. }) => assert_eq!(name, "lm_head.weight"),
        other => panic!("expected a missing tensor, got {other:?}"),
    }
}

#[test]
fn qwen2_needs_its_biases() {
    let dir = copy_fixture("llama");
    edit_config(dir.path(), |c| {
        c["model_type"] = "qwen2".into();
        // Qwen2 configs have no `attention_bias` key: the biases are implied.
        c.as_object_mut().unwrap().remove("attention_bias");
        c.as_object_mut().unwrap().remove("rope_scaling");
    });
    let hf = HfDir::open(dir.path()).unwrap();
    match check_shapes(hf.config(), &hf) {
        Err(Error::MissingTensor { name, .. }) => {
            assert_eq!(name, "model.layers.0.self_attn.q_proj.bias")
        }
        other => panic!("expected a missing tensor, got {other:?}"),
    }
}

#[test]
fn unsupported_dtypes_name_file_tensor_and_dtype() {
    for dtype in ["I64", "F64"] {
        let dir = copy_fixture("llama");
        let path = dir.path().join("model.safetensors");
        let name = "model.norm.weight";
        let header =
            format!(r#"{{"{name}":{{"dtype":"{dtype}","shape":[2],"data_offsets":[0,16]}}}}"#);
        fs::write(&path, safetensors_bytes(&header, 80, &[0; 16])).unwrap();
        let hf = HfDir::open(dir.path()).unwrap();
        let err = hf.weight(name).err().unwrap();
        assert!(
            matches!(&err, Error::Unsupported { path: p, .. } if *p == path),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("`{name}`")) && msg.contains(dtype),
            "{msg}"
        );
    }
}

#[test]
fn unsupported_architecture_is_rejected_at_open() {
    let dir = copy_fixture("llama");
    edit_config(dir.path(), |c| c["model_type"] = "gpt2".into());
    let err = HfDir::open(dir.path()).err().unwrap();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("gpt2"), "{err}");
}

fn all_tensors(hf: &HfDir) -> Vec<(String, Weight)> {
    hf.names()
        .into_iter()
        .map(|n| {
            let w = hf.weight(&n).unwrap();
            (n, w)
        })
        .collect()
}

/// With `EVOPRESS_ROUNDTRIP_OUT` set, also writes the model to `$EVOPRESS_ROUNDTRIP_OUT/<dir>`
/// for `scripts/check-hf-roundtrip.py`, which loads it in transformers.
fn dump_for_transformers(dir: &str, src: &HfDir, dtype: DType) {
    if let Some(root) = std::env::var_os("EVOPRESS_ROUNDTRIP_OUT") {
        let out = Path::new(&root).join(dir);
        write_hf_dir(out, src.config(), all_tensors(src), dtype).unwrap();
    }
}

#[test]
fn written_directory_reopens_with_identical_tensors() {
    for name in FIXTURES {
        let src = HfDir::open(fixture(name)).unwrap();
        let out = tempfile::tempdir().unwrap();
        write_hf_dir(out.path(), src.config(), all_tensors(&src), DType::F32).unwrap();
        dump_for_transformers(&format!("tiny-{name}"), &src, DType::F32);
        let back = HfDir::open(out.path()).unwrap();
        assert_eq!(back.config(), src.config(), "{name}");
        check_shapes(back.config(), &back).unwrap();
        for tensor in src.names() {
            assert_eq!(back.shape(&tensor), src.shape(&tensor), "{name} {tensor}");
            let (a, b) = (src.weight(&tensor).unwrap(), back.weight(&tensor).unwrap());
            assert_eq!(b.dtype(), DType::F32);
            assert_eq!(a.to_f32_vec(), b.to_f32_vec(), "{name} {tensor}");
        }
        let leftovers: Vec<_> = fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|f| f.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

#[test]
fn written_bf16_is_rounded_and_declared() {
    let src = HfDir::open(fixture("qwen2")).unwrap();
    let out = tempfile::tempdir().unwrap();
    write_hf_dir(out.path(), src.config(), all_tensors(&src), DType::BF16).unwrap();
    dump_for_transformers("tiny-qwen2.bf16", &src, DType::BF16);
    let back = HfDir::open(out.path()).unwrap();
    let tensor = "model.layers.0.self_attn.q_proj.weight";
    let w = back.weight(tensor).unwrap();
    assert_eq!(w.dtype(), DType::BF16);
    let rounded: Vec<f32> = src
        .weight(tensor)
        .unwrap()
        .to_f32_vec()
        .into_iter()
        .map(|x| bf16::from_f32(x).to_f32())
        .collect();
    assert_eq!(w.to_f32_vec(), rounded);
    let cfg: serde_json::Value =
        serde_json::from_slice(&fs::read(out.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["torch_dtype"], "bfloat16");
}

#[test]
fn writer_rejects_missing_extra_and_missized_tensors() {
    let src = HfDir::open(fixture("llama")).unwrap();
    let cfg = src.config();
    let out = tempfile::tempdir().unwrap();

    let mut missing = all_tensors(&src);
    missing.retain(|(n, _)| n != "model.norm.weight");
    let err = write_hf_dir(out.path(), cfg, missing, DType::F32)
        .err()
        .unwrap();
    assert!(matches!(&err, Error::MissingTensor { name, .. } if name == "model.norm.weight"));

    let mut extra = all_tensors(&src);
    extra.push((
        "model.extra.weight".into(),
        Weight::from_f32(1, 1, vec![0.0]),
    ));
    let err = write_hf_dir(out.path(), cfg, extra, DType::F32)
        .err()
        .unwrap();
    assert!(err.to_string().contains("model.extra.weight"), "{err}");

    let mut missized = all_tensors(&src);
    missized[0].1 = Weight::from_f32(2, 2, vec![0.0; 4]);
    let err = write_hf_dir(out.path(), cfg, missized, DType::F32)
        .err()
        .unwrap();
    assert!(matches!(err, Error::Shape { .. }), "{err}");

    assert_eq!(
        fs::read_dir(out.path()).unwrap().count(),
        0,
        "nothing written"
    );
}
