//! The GGML codec against llama.cpp and gguf-py, bit for bit, on real rows of the demo model
//! (fixtures made by `scripts/make-ggml-fixtures.py`; see its docstring for what each file is).

use evopress_kernels::weight::ggml::{decode_rows, encode_rows, GgmlError};
use evopress_kernels::GgmlType;
use std::path::PathBuf;

const ROWS: usize = 2;
const COLS: usize = 1536;
/// Leading values of each row that `TYPE.decoded.f32` holds.
const DECODED_COLS: usize = 512;

const TYPES: [GgmlType; 11] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_K,
];

fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ggml")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn f32s(name: &str) -> Vec<f32> {
    fixture(name)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Index and values of the first byte where two encodings differ, for the failure message.
fn first_difference(got: &[u8], want: &[u8]) -> Option<(usize, u8, u8)> {
    got.iter()
        .zip(want)
        .enumerate()
        .find(|(_, (a, b))| a != b)
        .map(|(i, (&a, &b))| (i, a, b))
}

#[test]
fn decoding_matches_gguf_py_bit_for_bit() {
    for ty in TYPES {
        let bytes = fixture(&format!("{ty}.ref"));
        let got = decode_rows(ty, &bytes, COLS).unwrap();
        let want = f32s(&format!("{ty}.decoded.f32"));
        assert_eq!(want.len(), ROWS * DECODED_COLS, "{ty}: fixture size");
        for r in 0..ROWS {
            for c in 0..DECODED_COLS {
                let (g, w) = (got[r * COLS + c], want[r * DECODED_COLS + c]);
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "{ty}: row {r} col {c}: {g} vs {w}"
                );
            }
        }
    }
}

#[test]
fn reference_encoding_matches_llama_cpp_bit_for_bit() {
    let x = f32s("x.f32");
    assert_eq!(x.len(), ROWS * COLS);
    for ty in TYPES {
        let got = encode_rows(ty, &x, COLS, None).unwrap();
        let want = fixture(&format!("{ty}.ref"));
        assert_eq!(got.len(), want.len(), "{ty}: length");
        assert_eq!(
            first_difference(&got, &want),
            None,
            "{ty}: (byte, ours, llama.cpp)"
        );
    }
}

#[test]
fn importance_encoding_matches_llama_cpp_bit_for_bit() {
    let (x, imp) = (f32s("x.f32"), f32s("importance.f32"));
    for ty in TYPES {
        let got = encode_rows(ty, &x, COLS, Some(&imp)).unwrap();
        // llama.cpp ignores the importance for the 8-bit types.
        let want = match ty {
            GgmlType::Q8_0 | GgmlType::Q8_K => fixture(&format!("{ty}.ref")),
            _ => fixture(&format!("{ty}.imatrix")),
        };
        assert_eq!(
            first_difference(&got, &want),
            None,
            "{ty}: (byte, ours, llama.cpp)"
        );
    }
}

#[test]
fn plain_types_round_trip() {
    let x = f32s("x.f32");
    let got = decode_rows(
        GgmlType::F32,
        &encode_rows(GgmlType::F32, &x, COLS, None).unwrap(),
        COLS,
    );
    assert_eq!(got.unwrap(), x);
    for ty in [GgmlType::F16, GgmlType::BF16] {
        let bytes = encode_rows(ty, &x, COLS, None).unwrap();
        assert_eq!(bytes.len(), x.len() * 2);
        let back = decode_rows(ty, &bytes, COLS).unwrap();
        for (a, b) in back.iter().zip(&x) {
            let rounded = match ty {
                GgmlType::F16 => half::f16::from_f32(*b).to_f32(),
                _ => half::bf16::from_f32(*b).to_f32(),
            };
            assert_eq!(a.to_bits(), rounded.to_bits(), "{ty}");
        }
    }
}

#[test]
fn bad_shapes_and_types_are_named_errors() {
    let x = vec![0.5f32; 576];
    assert_eq!(
        encode_rows(GgmlType::Q4_K, &x, 576, None),
        Err(GgmlError::PartialBlock {
            ty: GgmlType::Q4_K,
            cols: 576,
            block: 256
        })
    );
    let e = encode_rows(GgmlType::IQ2_XS, &x, 576, None).unwrap_err();
    assert!(e.to_string().contains("IQ2_XS"), "{e}");
    assert!(e.to_string().contains("Q6_K"), "{e}");
    assert_eq!(
        encode_rows(GgmlType::Q8_0, &x, 64, Some(&[1.0; 32])),
        Err(GgmlError::Importance { got: 32, cols: 64 })
    );
    let e = decode_rows(GgmlType::Q8_0, &[0u8; 35], 32).unwrap_err();
    assert!(
        matches!(
            e,
            GgmlError::Length {
                len: 35,
                row: 34,
                ..
            }
        ),
        "{e}"
    );
    let e = decode_rows(GgmlType::TQ2_0, &[0u8; 66], 256).unwrap_err();
    assert!(matches!(e, GgmlError::Unsupported { .. }), "{e}");
}
