use super::*;
use serde_json::json;

fn header() -> StoreHeader {
    StoreHeader {
        variant_format: "masked".into(),
        backend: "sparsegpt".into(),
        model: ModelInfo {
            path: "/m.gguf".into(),
            fingerprint: "00112233".into(),
            weights: Some("44556677".into()),
            arch: "llama".into(),
            blocks: 2,
        },
        params: json!({"sparsity": 0.5, "weights_diff": 1000, "num_levels": 8}),
        calibration: json!({"seq_len": 64, "windows": 2, "seed": 0}),
    }
}

fn unit(b: usize) -> UnitEntry {
    let mut extra = serde_json::Map::new();
    extra.insert("sparsity".into(), json!(0.25));
    UnitEntry {
        name: format!("model.layers.{b}.mlp.up_proj"),
        block: b,
        rows: 4,
        cols: 3,
        levels: vec![LevelEntry {
            id: -2,
            bytes: 42,
            rel_error: 0.125,
            extra,
        }],
    }
}

fn tensors(b: usize) -> Vec<(String, TensorData)> {
    let p = format!("model.layers.{b}.mlp.up_proj/-2");
    vec![
        (
            format!("{p}/values"),
            TensorData::f16(&[3], &[f16::from_f32(1.5); 3]),
        ),
        (
            format!("{p}/mask"),
            TensorData::u64(&[2], &[u64::MAX - b as u64, 7]),
        ),
        (
            format!("{p}/codes"),
            TensorData::u32(&[1, 3], &[1, 2, 3 + b as u32]),
        ),
    ]
}

fn build(dir: &Path, blocks: &[usize]) -> StoreWriter {
    let mut w = StoreWriter::create_or_resume(dir, header()).unwrap();
    for &b in blocks {
        w.write_block(b, &tensors(b), vec![unit(b)], 1.5).unwrap();
    }
    w
}

#[test]
fn round_trip_with_aligned_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = build(dir.path(), &[0, 1]);
    w.finish().unwrap();
    let s = VariantStore::open(dir.path()).unwrap();
    assert!(s.manifest().complete);
    assert_eq!(s.manifest().blocks_done, vec![0, 1]);
    assert_eq!(s.unit("model.layers.1.mlp.up_proj"), Some(&unit(1)));
    let l = s
        .unit("model.layers.0.mlp.up_proj")
        .unwrap()
        .level(-2)
        .unwrap();
    assert_eq!(l.extra["sparsity"], json!(0.25));
    for b in 0..2 {
        let p = format!("model.layers.{b}.mlp.up_proj/-2");
        let mask = s.tensor(&format!("{p}/mask")).unwrap();
        assert_eq!(mask.as_u64(), &[u64::MAX - b as u64, 7]);
        assert_eq!(mask.offset % 8, 0);
        let codes = s.tensor(&format!("{p}/codes")).unwrap();
        assert_eq!(codes.shape, vec![1, 3]);
        assert_eq!(codes.as_u32(), &[1, 2, 3 + b as u32]);
        assert_eq!(codes.offset % 4, 0);
        let values = s.tensor(&format!("{p}/values")).unwrap();
        assert_eq!(values.as_f16(), &[f16::from_f32(1.5); 3]);
        assert_eq!(values.offset % 2, 0);
    }
    // The manifest is the documented JSON.
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(m["format"], "evopress-variant-store");
    assert_eq!(m["backend"], "sparsegpt");
    assert_eq!(m["model"]["blocks"], 2);
    assert_eq!(m["units"][0]["levels"][0]["sparsity"], 0.25);
    assert!(m["files"]["block-001.safetensors"]["xxh3"].is_string());
}

#[test]
fn killed_build_resumes_at_the_missing_block() {
    let dir = tempfile::tempdir().unwrap();
    drop(build(dir.path(), &[0]));
    // A kill while block 1 was being written leaves its temp file behind.
    std::fs::write(dir.path().join("block-001.safetensors.tmp"), b"partial").unwrap();
    let mut w = StoreWriter::create_or_resume(dir.path(), header()).unwrap();
    assert!(w.is_block_done(0));
    assert!(!w.is_block_done(1));
    assert!(!dir.path().join("block-001.safetensors.tmp").exists());
    assert!(w.finish().unwrap_err().to_string().contains("[1]"));
    w.write_block(1, &tensors(1), vec![unit(1)], 2.0).unwrap();
    w.finish().unwrap();
    let s = VariantStore::open(dir.path()).unwrap();
    assert_eq!(s.manifest().blocks_done, vec![0, 1]);
    assert_eq!(s.manifest().build_seconds[&1], 2.0);
}

#[test]
fn header_mismatch_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    drop(build(dir.path(), &[0]));
    let mut other = header();
    other.params["weights_diff"] = json!(2000);
    let e = StoreWriter::create_or_resume(dir.path(), other)
        .err()
        .unwrap();
    let msg = e.to_string();
    assert!(msg.contains("params.weights_diff"), "{msg}");
    assert!(msg.contains("1000") && msg.contains("2000"), "{msg}");
    // A moved model file is still the same model.
    let mut moved = header();
    moved.model.path = "/elsewhere.gguf".into();
    assert!(StoreWriter::create_or_resume(dir.path(), moved).is_ok());
}

#[test]
fn damaged_file_fails_open_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    drop(build(dir.path(), &[0, 1]));
    let path = dir.path().join("block-001.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let msg = VariantStore::open(dir.path()).err().unwrap().to_string();
    assert!(
        msg.contains("block-001.safetensors") && msg.contains("rebuild"),
        "{msg}"
    );
    // Resuming drops the damaged block so the build rewrites it.
    let w = StoreWriter::create_or_resume(dir.path(), header()).unwrap();
    assert_eq!(w.blocks_done(), &[0]);
}

#[test]
fn missing_tensor_and_manifest_errors() {
    let dir = tempfile::tempdir().unwrap();
    drop(build(dir.path(), &[0]));
    let s = VariantStore::open(dir.path()).unwrap();
    let msg = s
        .tensor("model.layers.0.mlp.up_proj/3/mask")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("block-000.safetensors") && msg.contains("/3/mask"),
        "{msg}"
    );

    let empty = tempfile::tempdir().unwrap();
    let msg = VariantStore::open(empty.path()).err().unwrap().to_string();
    assert!(msg.contains("manifest.json"), "{msg}");
    std::fs::write(empty.path().join("manifest.json"), "{garbage").unwrap();
    let msg = VariantStore::open(empty.path()).err().unwrap().to_string();
    assert!(
        msg.contains("manifest.json") && msg.contains("not a variant-store"),
        "{msg}"
    );

    let foreign = tempfile::tempdir().unwrap();
    std::fs::write(foreign.path().join("notes.txt"), "x").unwrap();
    let msg = StoreWriter::create_or_resume(foreign.path(), header())
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("notes.txt"), "{msg}");
}

#[test]
fn non_finite_variants_are_refused_when_written_and_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = build(dir.path(), &[0]);
    let nan = |values: &[f32]| {
        let p = "model.layers.1.mlp.up_proj/-2";
        let h: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
        vec![(format!("{p}/values"), TensorData::f16(&[3], &h))]
    };
    let msg = w
        .write_block(1, &nan(&[1.0, f32::NAN, 2.0]), vec![unit(1)], 1.0)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("block-001.safetensors")
            && msg.contains("`model.layers.1.mlp.up_proj/-2/values`")
            && msg.contains("element 1"),
        "{msg}"
    );
    assert!(!w.is_block_done(1));

    // A block whose bytes hold an infinity under a matching checksum (written by something
    // else than this writer) is refused on open, naming the tensor.
    w.write_block(1, &nan(&[1.0, 1.0, 2.0]), vec![unit(1)], 1.0)
        .unwrap();
    let path = dir.path().join("block-001.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let one = f16::from_f32(1.0).to_le_bytes();
    let at = bytes.windows(2).rposition(|b| b == one).unwrap();
    bytes[at..at + 2].copy_from_slice(&f16::INFINITY.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    let manifest = dir.path().join(manifest::MANIFEST);
    let mut m: Manifest =
        serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    m.files
        .insert("block-001.safetensors".into(), hash_file(&path).unwrap());
    std::fs::write(&manifest, serde_json::to_string(&m).unwrap()).unwrap();
    let msg = VariantStore::open(dir.path()).err().unwrap().to_string();
    assert!(
        msg.contains("block-001.safetensors")
            && msg.contains("`model.layers.1.mlp.up_proj/-2/values`")
            && msg.contains("inf"),
        "{msg}"
    );
}
