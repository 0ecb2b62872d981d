//! GGUF loading: synthetic files made with `GgufWriter` (layouts, dequantization, bad input)
//! and the real SmolLM2 model.

mod common;

use evopress_core::gguf::{GgmlType, GgufFile, GgufWeights, GgufWriter, MetaValue};
use evopress_core::{Arch, Error, TensorSource};
use evopress_kernels::weight::ggml::{decode_rows, encode_rows};
use evopress_kernels::{DType, WeightKind};
use half::{bf16, f16};
use std::path::{Path, PathBuf};

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f16_le(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

fn s(x: &str) -> MetaValue {
    MetaValue::String(x.into())
}

/// Metadata of a tiny llama: hidden 8, 2 query heads and 1 KV head of dim 4, vocab 4, with
/// the keys in `overrides` set to other values (`None`: left out).
fn tiny_llama_meta(w: &mut GgufWriter, overrides: &[(&str, Option<MetaValue>)]) {
    let meta = [
        ("general.architecture", s("llama")),
        ("llama.block_count", MetaValue::U32(1)),
        ("llama.context_length", MetaValue::U32(64)),
        ("llama.embedding_length", MetaValue::U32(8)),
        ("llama.feed_forward_length", MetaValue::U32(32)),
        ("llama.attention.head_count", MetaValue::U32(2)),
        ("llama.attention.head_count_kv", MetaValue::I32(1)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            MetaValue::F32(1e-5),
        ),
        ("llama.rope.freq_base", MetaValue::F32(500.0)),
        ("llama.rope.dimension_count", MetaValue::U32(4)),
        ("tokenizer.ggml.bos_token_id", MetaValue::U32(1)),
        (
            "tokenizer.ggml.tokens",
            MetaValue::Array(["a", "b", "c", "d"].map(s).to_vec()),
        ),
    ];
    for (key, value) in meta {
        let value = match overrides.iter().find(|(k, _)| *k == key) {
            Some((_, v)) => v.clone(),
            None => Some(value),
        };
        if let Some(v) = value {
            w.add_meta(key, v);
        }
    }
}

/// One Q4_1 block: d = 0.5, m = -2, byte j holds nibbles (j, 15 - j).
fn q4_1_block() -> Vec<u8> {
    let mut b = f16_le(0.5).to_vec();
    b.extend(f16_le(-2.0));
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    b
}

fn q4_1_expected() -> Vec<f32> {
    let lo = (0..16).map(|j| 0.5 * j as f32 - 2.0);
    let hi = (0..16).map(|j| 0.5 * (15 - j) as f32 - 2.0);
    lo.chain(hi).collect()
}

/// One Q4_0 block: d = 0.25, same nibbles as [`q4_1_block`].
fn q4_0_block() -> Vec<u8> {
    let mut b = f16_le(0.25).to_vec();
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    b
}

/// One Q8_0 block: d = 0.125, q = i - 16.
fn q8_0_block() -> Vec<u8> {
    let mut b = f16_le(0.125).to_vec();
    b.extend((0..32).map(|i| (i - 16) as i8 as u8));
    b
}

/// q_proj rows in HF order are 0..8; the file holds them permuted llama.cpp-style
/// (per head of 4 rows: 0, 2, 1, 3).
fn q_file_rows() -> Vec<f32> {
    let order = [0, 2, 1, 3, 4, 6, 5, 7];
    order
        .iter()
        .flat_map(|&r| (0..8).map(move |c| (r * 8 + c) as f32))
        .collect()
}

fn tiny_llama() -> GgufWriter {
    tiny_llama_with(&[])
}

/// [`tiny_llama`] with some metadata keys set to other values (`None`: left out).
fn tiny_llama_with(overrides: &[(&str, Option<MetaValue>)]) -> GgufWriter {
    let mut w = GgufWriter::new();
    tiny_llama_meta(&mut w, overrides);
    let embd: Vec<u8> = (0..4).flat_map(|_| q8_0_block()).collect();
    w.add_tensor("token_embd.weight", &[32, 4], GgmlType::Q8_0, embd)
        .unwrap()
        .add_tensor(
            "blk.0.attn_norm.weight",
            &[8],
            GgmlType::F32,
            f32_bytes(&[1., 2., 3., 4., 5., 6., 7., 8.]),
        )
        .unwrap()
        .add_tensor(
            "blk.0.attn_q.weight",
            &[8, 8],
            GgmlType::F32,
            f32_bytes(&q_file_rows()),
        )
        .unwrap()
        // One KV head of 4 rows, stored f16, permuted: HF row r holds the value r.
        .add_tensor(
            "blk.0.attn_k.weight",
            &[1, 4],
            GgmlType::F16,
            [0., 2., 1., 3.].iter().flat_map(|&x| f16_le(x)).collect(),
        )
        .unwrap()
        .add_tensor(
            "blk.0.attn_v.weight",
            &[32, 1],
            GgmlType::Q4_1,
            q4_1_block(),
        )
        .unwrap()
        .add_tensor(
            "blk.0.ffn_down.weight",
            &[32, 1],
            GgmlType::Q4_0,
            q4_0_block(),
        )
        .unwrap()
        .add_tensor(
            "blk.0.ffn_norm.weight",
            &[2],
            GgmlType::BF16,
            [1.5f32, -3.0]
                .iter()
                .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
                .collect(),
        )
        .unwrap()
        .add_tensor(
            "blk.0.ffn_up.weight",
            &[256, 2],
            GgmlType::Q4_K,
            encode_rows(GgmlType::Q4_K, &k_quant_rows(), 256, None).unwrap(),
        )
        .unwrap()
        // A type nothing here decodes (IQ4_XS: 136 bytes per 256).
        .add_tensor(
            "blk.0.ffn_gate.weight",
            &[256, 1],
            GgmlType::IQ4_XS,
            vec![0; 136],
        )
        .unwrap();
    w
}

/// Two rows of 256 smooth values, the source of the tiny model's `Q4_K` tensor.
fn k_quant_rows() -> Vec<f32> {
    (0..512).map(|i| (i as f32 * 0.05).sin()).collect()
}

fn write(w: GgufWriter, dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    w.write(&path).unwrap();
    path
}

fn write_bytes(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn open_err(path: &Path) -> String {
    match GgufFile::open(path) {
        Ok(_) => panic!("{} opened but should not", path.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "error {msg:?} does not mention {p:?}");
    }
}

#[test]
fn tiny_llama_metadata_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let g = GgufFile::open(write(tiny_llama(), dir.path(), "tiny.gguf")).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.alignment(), 32);
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(g.get_u32("llama.attention.head_count_kv").unwrap(), 1);
    assert_eq!(g.get_f32("llama.rope.freq_base").unwrap(), 500.0);
    assert_eq!(
        g.get_str_array("tokenizer.ggml.tokens").unwrap(),
        ["a", "b", "c", "d"]
    );
    let cfg = g.model_config().unwrap();
    assert_eq!(cfg.arch, Arch::Llama);
    assert_eq!(
        (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_hidden_layers
        ),
        (8, 32, 1)
    );
    assert_eq!(
        (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim
        ),
        (2, 1, 4)
    );
    assert_eq!(cfg.vocab_size, 4);
    assert_eq!((cfg.rope_theta, cfg.rms_norm_eps), (500.0, 1e-5));
    assert_eq!(cfg.max_position_embeddings, 64);
    assert!(cfg.tie_word_embeddings);
    assert!(!cfg.attention_bias);
    assert_eq!((cfg.bos_token_id, cfg.eos_token_id), (Some(1), None));
}

#[test]
fn metadata_type_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let g = GgufFile::open(write(tiny_llama(), dir.path(), "tiny.gguf")).unwrap();
    let e = g.get_u32("general.architecture").unwrap_err().to_string();
    assert_mentions(
        &e,
        &[
            "tiny.gguf",
            "general.architecture",
            "expected an integer",
            "string",
        ],
    );
    let e = g.get_str("llama.nope").unwrap_err().to_string();
    assert_mentions(&e, &["tiny.gguf", "llama.nope", "missing"]);
}

#[test]
fn config_errors_name_the_metadata_key_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    let config_key = |overrides: &[(&str, Option<MetaValue>)]| {
        let path = write(tiny_llama_with(overrides), dir.path(), "bad.gguf");
        match GgufFile::open(&path).unwrap().model_config() {
            Err(Error::Config { key, msg, .. }) => (key, msg),
            other => panic!("{overrides:?}: {:?}", other.err()),
        }
    };
    let cases: &[(&str, MetaValue, &str)] = &[
        (
            "llama.attention.head_count_kv",
            MetaValue::U32(0),
            "positive",
        ),
        (
            "llama.attention.head_count_kv",
            MetaValue::U32(3),
            "does not divide",
        ),
        ("llama.attention.head_count", MetaValue::U32(0), "positive"),
        ("llama.rope.freq_base", MetaValue::F32(0.0), "positive"),
        ("llama.rope.freq_base", MetaValue::F32(-500.0), "positive"),
        (
            "llama.attention.layer_norm_rms_epsilon",
            MetaValue::F32(0.0),
            "positive",
        ),
        ("llama.feed_forward_length", MetaValue::U32(0), "positive"),
    ];
    for (key, value, says) in cases {
        let (k, msg) = config_key(&[(key, Some(value.clone()))]);
        assert_eq!(&k, key, "{msg}");
        assert!(msg.contains(says), "{key}: {msg}");
    }
    // Without a KV head count the KV heads are the query heads: blame the key they came from.
    let (k, _) = config_key(&[
        ("llama.attention.head_count_kv", None),
        ("llama.attention.head_count", MetaValue::U32(0).into()),
    ]);
    assert_eq!(k, "llama.attention.head_count");
}

#[test]
fn q_and_k_rows_that_do_not_split_into_heads_name_the_head_count_key() {
    let dir = tempfile::tempdir().unwrap();
    for (key, tensor) in [
        ("llama.attention.head_count", "q_proj"),
        ("llama.attention.head_count_kv", "k_proj"),
    ] {
        let w = tiny_llama_with(&[(key, Some(MetaValue::U32(3)))]);
        let g = GgufFile::open(write(w, dir.path(), "heads.gguf")).unwrap();
        let name = format!("model.layers.0.self_attn.{tensor}.weight");
        match g.weight(&name) {
            Err(Error::Config { key: k, msg, .. }) => {
                assert_eq!(k, key);
                assert_mentions(&msg, &["3 heads", "rotary pairs"]);
            }
            other => panic!("{name}: {:?}", other.err()),
        }
    }
}

#[test]
fn names_and_shapes_are_hf() {
    let dir = tempfile::tempdir().unwrap();
    let g = GgufFile::open(write(tiny_llama(), dir.path(), "tiny.gguf")).unwrap();
    assert_eq!(g.names()[0], "model.embed_tokens.weight");
    assert_eq!(g.shape("model.embed_tokens.weight"), Some(vec![4, 32]));
    assert_eq!(
        g.shape("model.layers.0.self_attn.k_proj.weight"),
        Some(vec![4, 1])
    );
    assert_eq!(
        g.shape("model.layers.0.input_layernorm.weight"),
        Some(vec![8])
    );
    assert_eq!(g.shape("blk.0.attn_q.weight"), None);
    let norm = g.weight("model.layers.0.input_layernorm.weight").unwrap();
    assert_eq!((norm.rows, norm.cols, norm.dtype()), (1, 8, DType::F32));
    assert_eq!(norm.to_f32_vec(), [1., 2., 3., 4., 5., 6., 7., 8.]);
    let bf = g
        .weight("model.layers.0.post_attention_layernorm.weight")
        .unwrap();
    assert_eq!(
        (bf.dtype(), bf.to_f32_vec()),
        (DType::BF16, vec![1.5, -3.0])
    );
}

#[test]
fn quantized_tensors_load_packed_or_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(tiny_llama(), dir.path(), "tiny.gguf");
    let mut g = GgufFile::open(&path).unwrap();
    let up = "model.layers.0.mlp.up_proj.weight";
    let k_bytes = encode_rows(GgmlType::Q4_K, &k_quant_rows(), 256, None).unwrap();
    let k_values = decode_rows(GgmlType::Q4_K, &k_bytes, 256).unwrap();
    for (mode, want) in [
        (GgufWeights::Packed, WeightKind::Ggml(GgmlType::Q4_1)),
        (GgufWeights::F32, WeightKind::Dense(DType::F32)),
        (GgufWeights::F16, WeightKind::Dense(DType::F16)),
    ] {
        g.set_weights(mode);
        let v = g.weight("model.layers.0.self_attn.v_proj.weight").unwrap();
        assert_eq!((v.rows, v.cols, v.kind()), (1, 32, want), "{mode:?}");
        // Every value of the block is a multiple of 0.5, exact in f16 too.
        assert_eq!(v.to_f32_vec(), q4_1_expected(), "{mode:?}");
        let w = g.weight(up).unwrap();
        assert_eq!((w.rows, w.cols), (2, 256));
        if mode == GgufWeights::F16 {
            let rounded: Vec<f32> = k_values
                .iter()
                .map(|&x| f16::from_f32(x).to_f32())
                .collect();
            assert_eq!(w.to_f32_vec(), rounded);
        } else {
            assert_eq!(w.to_f32_vec(), k_values, "{mode:?}");
        }
    }
    g.set_weights(GgufWeights::Packed);
    let down = g.weight("model.layers.0.mlp.down_proj.weight").unwrap();
    let want: Vec<f32> = (0..16)
        .map(|j| 0.25 * (j as f32 - 8.0))
        .chain((0..16).map(|j| 0.25 * (7 - j) as f32))
        .collect();
    assert_eq!(down.to_f32_vec(), want);
    let embd = g.weight("model.embed_tokens.weight").unwrap();
    assert_eq!((embd.rows, embd.cols), (4, 32));
    let row: Vec<f32> = (0..32).map(|i| 0.125 * (i as f32 - 16.0)).collect();
    assert_eq!(embd.to_f32_vec(), row.repeat(4));
}

#[test]
fn llama_q_and_k_rows_are_unpermuted() {
    let dir = tempfile::tempdir().unwrap();
    let g = GgufFile::open(write(tiny_llama(), dir.path(), "tiny.gguf")).unwrap();
    let q = g.weight("model.layers.0.self_attn.q_proj.weight").unwrap();
    let want: Vec<f32> = (0..64).map(|x| x as f32).collect();
    assert_eq!(q.to_f32_vec(), want);
    let k = g.weight("model.layers.0.self_attn.k_proj.weight").unwrap();
    assert_eq!(k.dtype(), DType::F16);
    assert_eq!(k.to_f32_vec(), [0., 1., 2., 3.]);
}

#[test]
fn unloadable_type_and_missing_tensor_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let g = GgufFile::open(write(tiny_llama(), dir.path(), "tiny.gguf")).unwrap();
    let e = g.weight("model.layers.0.mlp.gate_proj.weight").unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    assert_mentions(
        &e.to_string(),
        &[
            "tiny.gguf",
            "blk.0.ffn_gate.weight",
            "IQ4_XS",
            "Q4_1",
            "Q6_K",
        ],
    );
    let e = g.weight("lm_head.weight").unwrap_err();
    assert!(matches!(e, Error::MissingTensor { .. }), "{e}");
    assert_mentions(&e.to_string(), &["tiny.gguf", "lm_head.weight"]);
}

#[test]
fn version_2_and_custom_alignment_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = tiny_llama();
    w.add_meta("general.alignment", MetaValue::U32(64));
    let mut bytes = w.to_bytes().unwrap();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let g = GgufFile::open(write_bytes(dir.path(), "v2.gguf", &bytes)).unwrap();
    assert_eq!((g.version(), g.alignment()), (2, 64));
    assert!(g
        .tensors()
        .iter()
        .all(|t| g.data_offset(t).is_multiple_of(64)));
    let v = g.weight("model.layers.0.self_attn.v_proj.weight").unwrap();
    assert_eq!(v.to_f32_vec(), q4_1_expected());
}

#[test]
fn qwen2_biases_are_kept_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = GgufWriter::new();
    w.add_meta("general.architecture", s("qwen2"));
    for (k, v) in [
        ("block_count", 1),
        ("context_length", 32),
        ("embedding_length", 8),
        ("feed_forward_length", 16),
        ("attention.head_count", 2),
        ("attention.head_count_kv", 2),
    ] {
        w.add_meta(format!("qwen2.{k}"), MetaValue::U32(v));
    }
    w.add_meta(
        "qwen2.attention.layer_norm_rms_epsilon",
        MetaValue::F32(1e-6),
    );
    let bias = [0., 1., 2., 3., 4., 5., 6., 7.];
    w.add_tensor(
        "token_embd.weight",
        &[8, 3],
        GgmlType::F32,
        f32_bytes(&[0.; 24]),
    )
    .unwrap()
    .add_tensor(
        "output.weight",
        &[8, 3],
        GgmlType::F32,
        f32_bytes(&[0.; 24]),
    )
    .unwrap()
    .add_tensor("blk.0.attn_q.bias", &[8], GgmlType::F32, f32_bytes(&bias))
    .unwrap();
    let g = GgufFile::open(write(w, dir.path(), "qwen.gguf")).unwrap();
    let cfg = g.model_config().unwrap();
    assert_eq!(cfg.arch, Arch::Qwen2);
    assert!(cfg.attention_bias);
    assert!(!cfg.tie_word_embeddings);
    assert_eq!(cfg.vocab_size, 3);
    assert_eq!(cfg.rope_theta, 10000.0);
    let b = g.weight("model.layers.0.self_attn.q_proj.bias").unwrap();
    assert_eq!(b.to_f32_vec(), bias);
}

#[test]
fn unsupported_architecture_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = GgufWriter::new();
    w.add_meta("general.architecture", s("mamba"));
    let g = GgufFile::open(write(w, dir.path(), "mamba.gguf")).unwrap();
    let e = g.model_config().unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    assert_mentions(
        &e.to_string(),
        &["mamba.gguf", "general.architecture", "mamba"],
    );
}

#[test]
fn garbage_magic_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_bytes(
        dir.path(),
        "garbage.gguf",
        b"PK\x03\x04 this is a zip file, not a model",
    );
    assert_mentions(&open_err(&p), &["garbage.gguf", "not a GGUF file", "magic"]);
    let p = write_bytes(dir.path(), "empty.gguf", b"");
    assert_mentions(&open_err(&p), &["empty.gguf", "truncated", "magic"]);
}

#[test]
fn unknown_version_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = tiny_llama().to_bytes().unwrap();
    bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
    let p = write_bytes(dir.path(), "be.gguf", &bytes);
    assert_mentions(&open_err(&p), &["be.gguf", "version", "big-endian"]);
}

#[test]
fn truncated_tensor_data_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = tiny_llama().to_bytes().unwrap();
    // The last tensor (IQ4_XS) ends the file; cut into it.
    let p = write_bytes(dir.path(), "cut.gguf", &bytes[..bytes.len() - 10]);
    assert_mentions(
        &open_err(&p),
        &[
            "cut.gguf",
            "blk.0.ffn_gate.weight",
            "truncated",
            &format!("only {}", bytes.len() - 10),
        ],
    );
}

#[test]
fn truncated_header_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = tiny_llama().to_bytes().unwrap();
    let p = write_bytes(dir.path(), "head.gguf", &bytes[..100]);
    assert_mentions(&open_err(&p), &["head.gguf", "truncated"]);
}

/// Byte offset just after the GGUF string `s` (its u64 length and bytes) in `bytes`.
fn after_string(bytes: &[u8], s: &str) -> usize {
    let mut pat = (s.len() as u64).to_le_bytes().to_vec();
    pat.extend_from_slice(s.as_bytes());
    let at = bytes
        .windows(pat.len())
        .position(|w| w == pat)
        .expect("string present");
    at + pat.len()
}

#[test]
fn unknown_tensor_type_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = tiny_llama().to_bytes().unwrap();
    // Tensor info: name, n_dims (u32), 2 dims (u64), type (u32).
    let at = after_string(&bytes, "blk.0.attn_q.weight") + 4 + 16;
    bytes[at..at + 4].copy_from_slice(&99u32.to_le_bytes());
    let p = write_bytes(dir.path(), "type.gguf", &bytes);
    assert_mentions(
        &open_err(&p),
        &[
            "type.gguf",
            "blk.0.attn_q.weight",
            "unknown tensor type id 99",
        ],
    );
}

#[test]
fn absurd_counts_are_rejected_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(u64::MAX.to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    let p = write_bytes(dir.path(), "count.gguf", &bytes);
    assert_mentions(&open_err(&p), &["count.gguf", "tensor count", "impossible"]);

    // An array claiming 2^60 strings.
    let mut bytes = tiny_llama().to_bytes().unwrap();
    let at = after_string(&bytes, "tokenizer.ggml.tokens") + 4 + 4;
    bytes[at..at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let p = write_bytes(dir.path(), "array.gguf", &bytes);
    assert_mentions(
        &open_err(&p),
        &["array.gguf", "tokenizer.ggml.tokens", "impossible"],
    );
}

#[test]
fn misaligned_tensor_offset_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = tiny_llama().to_bytes().unwrap();
    let at = after_string(&bytes, "blk.0.attn_norm.weight") + 4 + 8 + 4;
    let off = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    bytes[at..at + 8].copy_from_slice(&(off + 4).to_le_bytes());
    let p = write_bytes(dir.path(), "align.gguf", &bytes);
    assert_mentions(
        &open_err(&p),
        &["align.gguf", "blk.0.attn_norm.weight", "alignment"],
    );
}

#[test]
fn writer_rejects_wrong_data_length() {
    let mut w = GgufWriter::new();
    let e = w
        .add_tensor("x", &[32, 2], GgmlType::Q8_0, vec![0; 34])
        .err()
        .expect("length mismatch");
    assert_mentions(&e.to_string(), &["`x`", "68 bytes", "got 34"]);
}

// ---- the real model ----

#[test]
fn smollm2_metadata_and_config() {
    let g = GgufFile::open(common::smollm2_gguf()).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.tensors().len(), 272);
    assert_eq!(g.get_str("tokenizer.ggml.pre").unwrap(), "smollm");
    let cfg = g.model_config().unwrap();
    assert_eq!(cfg.arch, Arch::Llama);
    assert_eq!(cfg.num_hidden_layers, 30);
    assert_eq!(cfg.hidden_size, 576);
    assert_eq!(cfg.intermediate_size, 1536);
    assert_eq!(
        (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim
        ),
        (9, 3, 64)
    );
    assert_eq!(cfg.vocab_size, 49152);
    assert_eq!(cfg.rope_theta, 100000.0);
    assert!((cfg.rms_norm_eps - 1e-5).abs() < 1e-12);
    assert_eq!(cfg.max_position_embeddings, 8192);
    assert!(cfg.tie_word_embeddings);
    assert!(!cfg.attention_bias);
    assert_eq!((cfg.bos_token_id, cfg.eos_token_id), (Some(1), Some(2)));
}

#[test]
fn smollm2_tensors_load_under_hf_names() {
    let t = std::time::Instant::now();
    let g = GgufFile::open(common::smollm2_gguf()).unwrap();
    eprintln!("opened in {:?}", t.elapsed());
    let names = g.names();
    assert_eq!(names.len(), 272);
    assert!(
        names.iter().all(|n| n.starts_with("model.")),
        "unmapped GGUF name"
    );
    assert_eq!(g.shape("model.embed_tokens.weight"), Some(vec![49152, 576]));
    assert_eq!(
        g.shape("model.layers.0.self_attn.k_proj.weight"),
        Some(vec![192, 576])
    );
    assert_eq!(
        g.shape("model.layers.29.mlp.down_proj.weight"),
        Some(vec![576, 1536])
    );
    let t = std::time::Instant::now();
    let mut params = 0;
    let mut decoded = GgufFile::open(common::smollm2_gguf()).unwrap();
    decoded.set_weights(GgufWeights::F32);
    for (n, info) in names.iter().zip(g.tensors()) {
        // Packed by default: quantized tensors keep their blocks, F32 ones are mapped as is.
        let w = g.weight(n).unwrap();
        let want = match info.ggml_type {
            GgmlType::F32 => WeightKind::Dense(DType::F32),
            ty => WeightKind::Ggml(ty),
        };
        assert_eq!(w.kind(), want, "{n}");
        let shape = g.shape(n).unwrap();
        assert_eq!(w.numel(), shape.iter().product::<usize>(), "{n}");
        params += w.numel();
        let d = decoded.weight(n).unwrap();
        assert_eq!(d.dtype(), DType::F32, "{n}");
        assert_eq!(
            d.to_f32_vec(),
            w.to_f32_vec(),
            "{n}: decoded at load vs packed"
        );
    }
    eprintln!(
        "loaded all 272 tensors packed and decoded in {:?}",
        t.elapsed()
    );
    assert_eq!(params, 134_515_008);
}
