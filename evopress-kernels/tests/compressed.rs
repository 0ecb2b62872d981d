//! Packed (quantized), masked (sparse), masked-packed (both) and ggml (llama.cpp block)
//! weights: the fast matmul against the reference and against a dense f32 matmul of the decoded
//! matrix, decoding against an independent bit-by-bit reader of the layouts, row slices, and
//! mapped vs owned storage.
//! (The ggml block codec itself is checked against llama.cpp in `tests/ggml.rs`.)

use evopress_kernels::cpu::{reference, Cpu};
use evopress_kernels::weight::ggml::{decode_rows, encode_rows};
use evopress_kernels::{
    Buf, Device, GgmlType, MaskedPackedParts, MaskedValues, PackedParts, Weight, WeightError,
    WeightKind,
};
use half::{bf16, f16};
use memmap2::Mmap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

const MS: [usize; 5] = [1, 3, 5, 64, 300];

fn gaussianish(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

/// A packed matrix's raw parts plus its dense decoding, written by an independent packer.
struct RawPacked {
    rows: usize,
    cols: usize,
    bits: u8,
    gs: usize,
    codes: Vec<u32>,
    scales: Vec<f16>,
    zeros: Vec<f16>,
    perm: Option<Vec<u32>>,
    dense: Vec<f32>,
}

impl RawPacked {
    fn parts(&self) -> PackedParts {
        PackedParts {
            rows: self.rows,
            cols: self.cols,
            bits: self.bits,
            group_size: self.gs,
            codes: Buf::owned(self.codes.clone()),
            scales: Buf::owned(self.scales.clone()),
            zeros: Buf::owned(self.zeros.clone()),
            perm: self.perm.clone().map(Buf::owned),
        }
    }
}

/// Packs random codes bit by bit as the layout doc describes and decodes them the slow way.
fn random_packed(
    rows: usize,
    cols: usize,
    bits: u8,
    gs: usize,
    perm: bool,
    seed: u64,
) -> RawPacked {
    let mut rng = StdRng::seed_from_u64(seed);
    let b = bits as usize;
    let wpr = cols.div_ceil(32) * b;
    let ng = cols.div_ceil(gs);
    let mut codes = vec![0u32; rows * wpr];
    let q: Vec<u32> = (0..rows * cols)
        .map(|_| rng.gen_range(0..1u32 << bits))
        .collect();
    for r in 0..rows {
        for k in 0..cols {
            let (chunk, i) = (k / 32, k % 32);
            let mut o = 0;
            for p in [1, 2, 4, 8] {
                if b & p == 0 {
                    continue;
                }
                for bit in 0..p {
                    let v = (q[r * cols + k] >> (o + bit)) & 1;
                    codes[r * wpr + chunk * b + o + i * p / 32] |= v << (i * p % 32 + bit);
                }
                o += p;
            }
        }
    }
    let scales: Vec<f16> = (0..rows * ng)
        .map(|_| f16::from_f32(rng.gen_range(0.01f32..0.1)))
        .collect();
    let zeros: Vec<f16> = (0..rows * ng)
        .map(|_| f16::from_f32(rng.gen_range(0..1u32 << bits) as f32))
        .collect();
    let perm: Option<Vec<u32>> = perm.then(|| {
        let mut p: Vec<u32> = (0..cols as u32).collect();
        for i in (1..cols).rev() {
            p.swap(i, rng.gen_range(0..=i));
        }
        p
    });
    let mut dense = vec![0f32; rows * cols];
    for r in 0..rows {
        for k in 0..cols {
            let g = r * ng + k / gs;
            let v = (q[r * cols + k] as f32 - zeros[g].to_f32()) * scales[g].to_f32();
            let c = perm.as_ref().map_or(k, |p| p[k] as usize);
            dense[r * cols + c] = v;
        }
    }
    RawPacked {
        rows,
        cols,
        bits,
        gs,
        codes,
        scales,
        zeros,
        perm,
        dense,
    }
}

/// Mask words and kept f16 values of a random matrix at `sparsity`, and its dense decoding.
fn random_masked(
    rows: usize,
    cols: usize,
    sparsity: f64,
    seed: u64,
) -> (Vec<u64>, Vec<f16>, Vec<f32>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let words = cols.div_ceil(64);
    let mut mask = vec![0u64; rows * words];
    let mut values = Vec::new();
    let mut dense = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            if !rng.gen_bool(sparsity) {
                let v = f16::from_f32(rng.gen_range(-1.0f32..1.0));
                mask[r * words + c / 64] |= 1 << (c % 64);
                values.push(v);
                dense[r * cols + c] = v.to_f32();
            }
        }
    }
    (mask, values, dense)
}

/// Writes code `q` (`bits` wide) as entry `i` of a chunked code stream, bit by bit as the
/// packed layout's docs describe (power-of-two slices, low bits first).
fn put_code(words: &mut [u32], i: usize, q: u32, bits: usize) {
    let (chunk, i) = (i / 32, i % 32);
    let mut o = 0;
    for p in [1, 2, 4, 8] {
        if bits & p == 0 {
            continue;
        }
        for bit in 0..p {
            let v = (q >> (o + bit)) & 1;
            words[chunk * bits + o + i * p / 32] |= v << (i * p % 32 + bit);
        }
        o += p;
    }
}

/// A masked-packed matrix's raw parts plus its dense decoding, written by an independent
/// packer: random mask at `sparsity`, random codes of the kept weights in one stream.
struct RawMaskedPacked {
    parts: MaskedPackedParts,
    mask: Vec<u64>,
    codes: Vec<u32>,
    scales: Vec<f16>,
    zeros: Vec<f16>,
    dense: Vec<f32>,
}

fn random_masked_packed(
    rows: usize,
    cols: usize,
    bits: u8,
    gs: usize,
    sparsity: f64,
    seed: u64,
) -> RawMaskedPacked {
    let mut rng = StdRng::seed_from_u64(seed);
    let (b, words, ng) = (bits as usize, cols.div_ceil(64), cols.div_ceil(gs));
    let scales: Vec<f16> = (0..rows * ng)
        .map(|_| f16::from_f32(rng.gen_range(0.01f32..0.1)))
        .collect();
    let zeros: Vec<f16> = (0..rows * ng)
        .map(|_| f16::from_f32(rng.gen_range(0..1u32 << bits) as f32))
        .collect();
    let mut mask = vec![0u64; rows * words];
    let mut kept = Vec::new();
    let mut dense = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            if !rng.gen_bool(sparsity) {
                let q = rng.gen_range(0..1u32 << bits);
                mask[r * words + c / 64] |= 1 << (c % 64);
                kept.push(q);
                let g = r * ng + c / gs;
                dense[r * cols + c] = (q as f32 - zeros[g].to_f32()) * scales[g].to_f32();
            }
        }
    }
    let mut codes = vec![0u32; kept.len().div_ceil(32) * b];
    for (i, &q) in kept.iter().enumerate() {
        put_code(&mut codes, i, q, b);
    }
    RawMaskedPacked {
        parts: MaskedPackedParts {
            rows,
            cols,
            bits,
            group_size: gs,
            mask: Buf::owned(mask.clone()),
            codes: Buf::owned(codes.clone()),
            scales: Buf::owned(scales.clone()),
            zeros: Buf::owned(zeros.clone()),
        },
        mask,
        codes,
        scales,
        zeros,
        dense,
    }
}

/// `out` vs `x · denseᵀ` in f64, relative to `Σ|x||w|` per output.
fn check_close(what: &str, x: &[f32], dense: &[f32], rows: usize, cols: usize, out: &[f32]) {
    let m = x.len() / cols;
    for i in 0..m {
        for r in 0..rows {
            let (mut want, mut mag) = (0f64, 0f64);
            for k in 0..cols {
                let p = x[i * cols + k] as f64 * dense[r * cols + k] as f64;
                want += p;
                mag += p.abs();
            }
            let got = out[i * rows + r] as f64;
            assert!(
                (got - want).abs() <= 1e-4 * mag + 1e-30,
                "{what}: [{i}, {r}] {got} vs {want}"
            );
        }
    }
}

/// Fast matmul == reference == dense f32 matmul of the decoded matrix, for every m.
fn check_matmuls(what: &str, w: &Weight, dense: &[f32], seed: u64) {
    let (rows, cols) = (w.rows, w.cols);
    assert_eq!(w.to_f32_vec(), dense, "{what}: decode");
    let wd = Weight::from_f32(rows, cols, dense.to_vec());
    let mut rng = StdRng::seed_from_u64(seed);
    for m in MS {
        let x = gaussianish(&mut rng, m * cols);
        let (mut fast, mut refr, mut dn) = (
            vec![f32::NAN; m * rows],
            vec![f32::NAN; m * rows],
            vec![f32::NAN; m * rows],
        );
        Cpu.matmul_wt(&x, w, &mut fast);
        reference::matmul_wt(&x, w, &mut refr);
        Cpu.matmul_wt(&x, &wd, &mut dn);
        let what = format!("{what} m={m}");
        check_close(&format!("{what} fast"), &x, dense, rows, cols, &fast);
        check_close(&format!("{what} reference"), &x, dense, rows, cols, &refr);
        check_close(&format!("{what} dense"), &x, dense, rows, cols, &dn);
    }
}

/// Row slices are views that decode and multiply like the slice of the decoded matrix.
fn check_row_slices(what: &str, w: &Weight, dense: &[f32]) {
    let (rows, cols) = (w.rows, w.cols);
    for (first, count) in [
        (0, rows / 3),
        (rows / 3, rows / 2),
        (rows - 1, 1),
        (rows / 2, rows - rows / 2),
    ] {
        let s = w.row_slice(first, count);
        let want = &dense[first * cols..(first + count) * cols];
        assert_eq!(s.to_f32_vec(), want, "{what} rows {first}+{count}");
        assert!(s.bytes() <= w.bytes());
        let x: Vec<f32> = (0..5 * cols).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut out = vec![0f32; 5 * count];
        Cpu.matmul_wt(&x, &s, &mut out);
        check_close(&format!("{what} slice"), &x, want, count, cols, &out);
        let mut out1 = vec![0f32; count];
        Cpu.matmul_wt(&x[..cols], &s, &mut out1);
        check_close(
            &format!("{what} slice gemv"),
            &x[..cols],
            want,
            count,
            cols,
            &out1,
        );
    }
}

#[test]
fn packed_matmul_every_width_group_and_permutation() {
    let shapes = [(37, 200), (70, 576), (16, 33), (130, 1000)];
    let groups = [32, 64, 128, 48];
    let mut seed = 0;
    for bits in 2..=8u8 {
        for (si, &(rows, cols)) in shapes.iter().enumerate() {
            let gs = groups[(si + bits as usize) % groups.len()];
            for perm in [false, true] {
                seed += 1;
                let raw = random_packed(rows, cols, bits, gs, perm, seed);
                let w = Weight::packed(raw.parts()).unwrap();
                assert_eq!(
                    w.kind(),
                    WeightKind::Packed {
                        bits,
                        group_size: gs
                    }
                );
                let what = format!("packed {bits}b g{gs} [{rows}, {cols}] perm {perm}");
                check_matmuls(&what, &w, &raw.dense, seed);
                if si < 2 {
                    check_row_slices(&what, &w, &raw.dense);
                }
            }
        }
    }
}

#[test]
fn masked_matmul_every_sparsity_and_dense_values() {
    for (si, &(rows, cols)) in [(37, 200), (70, 576), (9, 64), (130, 1000)]
        .iter()
        .enumerate()
    {
        for sparsity in [0.0, 0.5, 0.9, 1.0] {
            let (mask, values, dense) = random_masked(rows, cols, sparsity, si as u64);
            let w = Weight::masked(
                rows,
                cols,
                Some(Buf::owned(mask)),
                MaskedValues::F16(Buf::owned(values)),
            )
            .unwrap();
            let what = format!("masked p={sparsity} [{rows}, {cols}]");
            check_matmuls(&what, &w, &dense, 7 + si as u64);
            check_row_slices(&what, &w, &dense);
        }
        // No mask: dense values, in each value type.
        let mut rng = StdRng::seed_from_u64(si as u64);
        let v = gaussianish(&mut rng, rows * cols);
        let h: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
        let b: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
        let cases = [
            (
                MaskedValues::F16(Buf::owned(h.clone())),
                h.iter().map(|x| x.to_f32()).collect::<Vec<_>>(),
            ),
            (
                MaskedValues::BF16(Buf::owned(b.clone())),
                b.iter().map(|x| x.to_f32()).collect(),
            ),
            (MaskedValues::F32(Buf::owned(v.clone())), v.clone()),
        ];
        for (values, dense) in cases {
            let w = Weight::masked(rows, cols, None, values).unwrap();
            check_matmuls(&format!("masked no mask [{rows}, {cols}]"), &w, &dense, 3);
            check_row_slices("masked no mask", &w, &dense);
        }
    }
}

/// Rows of every block type, encoded from random values, as owned and as mapped blocks.
#[test]
fn ggml_matmul_every_block_type_owned_and_mapped() {
    let mut seed = 100;
    for ty in GgmlType::DECODABLE.into_iter().filter(|t| t.is_block()) {
        for (rows, cols) in [(37, 512), (70, 768)] {
            seed += 1;
            let mut rng = StdRng::seed_from_u64(seed);
            let x = gaussianish(&mut rng, rows * cols);
            let bytes = encode_rows(ty, &x, cols, None).unwrap();
            let dense = decode_rows(ty, &bytes, cols).unwrap();
            let (map, off) = map_file("ggml", &[&bytes]);
            let mapped = Buf::mapped(map, off[0], bytes.len()).unwrap();
            for (storage, blocks) in [("owned", Buf::owned(bytes.clone())), ("mapped", mapped)] {
                let w = Weight::ggml(ty, rows, cols, blocks).unwrap();
                assert_eq!(w.kind(), WeightKind::Ggml(ty));
                assert_eq!(w.bytes(), bytes.len());
                let what = format!("ggml {ty} {storage} [{rows}, {cols}]");
                check_matmuls(&what, &w, &dense, seed);
                check_row_slices(&what, &w, &dense);
            }
        }
    }
}

#[test]
fn inconsistent_ggml_blocks_are_layout_errors() {
    let bytes = encode_rows(GgmlType::Q4_K, &[0.25; 512], 256, None).unwrap();
    let layout = |r: Result<Weight, WeightError>| matches!(r, Err(WeightError::Layout(_)));
    assert!(layout(Weight::ggml(
        GgmlType::Q4_K,
        2,
        256,
        Buf::owned(bytes[1..].to_vec())
    )));
    assert!(layout(Weight::ggml(
        GgmlType::Q4_K,
        3,
        256,
        Buf::owned(bytes.clone())
    )));
    assert!(layout(Weight::ggml(
        GgmlType::Q4_K,
        4,
        128,
        Buf::owned(bytes.clone())
    )));
    assert!(layout(Weight::ggml(
        GgmlType::F16,
        1,
        144,
        Buf::owned(bytes.clone())
    )));
    assert!(layout(Weight::ggml(
        GgmlType::IQ4_XS,
        2,
        256,
        Buf::owned(bytes[..272].to_vec())
    )));
    assert!(Weight::ggml(GgmlType::Q4_K, 2, 256, Buf::owned(bytes)).is_ok());
}

#[test]
fn masked_packed_matmul_every_width_group_and_sparsity() {
    let shapes = [(37, 200), (70, 576), (16, 33), (130, 1000)];
    let groups = [64, 128, 96, 256];
    let mut seed = 100;
    for bits in 2..=8u8 {
        for (si, &(rows, cols)) in shapes.iter().enumerate() {
            let gs = groups[(si + bits as usize) % groups.len()];
            for sparsity in [0.0, 0.5, 0.8, 1.0] {
                seed += 1;
                let raw = random_masked_packed(rows, cols, bits, gs, sparsity, seed);
                let w = Weight::masked_packed(raw.parts.clone()).unwrap();
                assert_eq!(
                    w.kind(),
                    WeightKind::MaskedPacked {
                        bits,
                        group_size: gs
                    }
                );
                let stored = 8 * raw.mask.len() + 4 * raw.codes.len() + 2 * 2 * raw.scales.len();
                assert_eq!(w.bytes(), stored);
                let what = format!("masked-packed {bits}b g{gs} p={sparsity} [{rows}, {cols}]");
                check_matmuls(&what, &w, &raw.dense, seed);
                if si < 2 && bits % 3 == 1 {
                    check_row_slices(&what, &w, &raw.dense);
                }
            }
        }
    }
}

#[test]
fn masked_packed_mapped_equals_owned_and_bad_parts_are_errors() {
    let raw = random_masked_packed(41, 300, 3, 128, 0.5, 9);
    let (map, off) = map_file(
        "masked-packed",
        &[
            bytemuck::cast_slice(&raw.mask),
            bytemuck::cast_slice(&raw.codes),
            bytemuck::cast_slice(&raw.scales),
            bytemuck::cast_slice(&raw.zeros),
        ],
    );
    let mapped = Weight::masked_packed(MaskedPackedParts {
        mask: Buf::mapped(map.clone(), off[0], raw.mask.len()).unwrap(),
        codes: Buf::mapped(map.clone(), off[1], raw.codes.len()).unwrap(),
        scales: Buf::mapped(map.clone(), off[2], raw.scales.len()).unwrap(),
        zeros: Buf::mapped(map.clone(), off[3], raw.zeros.len()).unwrap(),
        ..raw.parts.clone()
    })
    .unwrap();
    assert_eq!(mapped.to_f32_vec(), raw.dense);
    check_matmuls("mapped masked-packed", &mapped, &raw.dense, 4);

    let bad = |f: &dyn Fn(&mut MaskedPackedParts)| {
        let mut p = raw.parts.clone();
        f(&mut p);
        matches!(Weight::masked_packed(p), Err(WeightError::Layout(_)))
    };
    assert!(bad(&|p| p.bits = 1));
    assert!(bad(&|p| p.group_size = 0));
    assert!(bad(&|p| p.codes = Buf::owned(raw.codes[3..].to_vec())));
    assert!(bad(&|p| p.scales = Buf::owned(raw.scales[1..].to_vec())));
    assert!(bad(&|p| p.mask = Buf::owned(raw.mask[1..].to_vec())));
    let mut padded = raw.mask.clone();
    padded[4] |= 1 << 63; // row 0 word 4: columns 256..299 are real, bit 63 is padding
    assert!(bad(&|p| p.mask = Buf::owned(padded.clone())));
}

#[test]
fn inconsistent_parts_are_layout_errors() {
    let raw = random_packed(4, 70, 3, 32, true, 1);
    let mut p = raw.parts();
    p.bits = 9;
    assert!(matches!(Weight::packed(p), Err(WeightError::Layout(_))));
    let mut p = raw.parts();
    p.codes = Buf::owned(raw.codes[1..].to_vec());
    assert!(matches!(Weight::packed(p), Err(WeightError::Layout(_))));
    let mut p = raw.parts();
    p.scales = Buf::owned(raw.scales[1..].to_vec());
    assert!(matches!(Weight::packed(p), Err(WeightError::Layout(_))));
    let mut p = raw.parts();
    p.perm = Some(Buf::owned(vec![0; 70]));
    assert!(matches!(Weight::packed(p), Err(WeightError::Layout(_))));

    let (mask, values, _) = random_masked(4, 70, 0.5, 2);
    let bad_values = MaskedValues::F16(Buf::owned(values[1..].to_vec()));
    assert!(Weight::masked(4, 70, Some(Buf::owned(mask.clone())), bad_values).is_err());
    let mut padded = mask.clone();
    padded[1] |= 1 << 63;
    let v = MaskedValues::F16(Buf::owned(values.clone()));
    assert!(Weight::masked(4, 70, Some(Buf::owned(padded)), v).is_err());
    let v = MaskedValues::F16(Buf::owned(values));
    assert!(Weight::masked(4, 70, Some(Buf::owned(mask[1..].to_vec())), v).is_err());
}

/// Writes `parts` one after another into a temp file at 8-aligned offsets; returns the map and
/// each part's byte offset.
fn map_file(name: &str, parts: &[&[u8]]) -> (Arc<Mmap>, Vec<usize>) {
    let mut bytes = vec![0u8; 3]; // start unaligned on purpose
    let mut offsets = Vec::new();
    for p in parts {
        bytes.resize(bytes.len().next_multiple_of(8), 0);
        offsets.push(bytes.len());
        bytes.extend_from_slice(p);
    }
    let path = std::env::temp_dir().join(format!("evopress-{name}-{}.bin", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    // SAFETY: the file is private to this test and not modified while mapped.
    let map = unsafe { Mmap::map(&file) }.unwrap();
    std::fs::remove_file(&path).ok();
    (Arc::new(map), offsets)
}

#[test]
fn mapped_equals_owned_and_bad_regions_are_errors() {
    let raw = random_packed(40, 200, 4, 64, true, 5);
    let perm = raw.perm.clone().unwrap();
    let (map, off) = map_file(
        "packed",
        &[
            bytemuck::cast_slice(&raw.codes),
            bytemuck::cast_slice(&raw.scales),
            bytemuck::cast_slice(&raw.zeros),
            bytemuck::cast_slice(&perm),
        ],
    );
    let w = Weight::packed(PackedParts {
        rows: 40,
        cols: 200,
        bits: 4,
        group_size: 64,
        codes: Buf::mapped(map.clone(), off[0], raw.codes.len()).unwrap(),
        scales: Buf::mapped(map.clone(), off[1], raw.scales.len()).unwrap(),
        zeros: Buf::mapped(map.clone(), off[2], raw.zeros.len()).unwrap(),
        perm: Some(Buf::mapped(map.clone(), off[3], perm.len()).unwrap()),
    })
    .unwrap();
    let owned = Weight::packed(raw.parts()).unwrap();
    assert_eq!(w.to_f32_vec(), owned.to_f32_vec());
    assert_eq!(w.bytes(), owned.bytes());
    check_matmuls("mapped packed", &w, &raw.dense, 1);
    check_row_slices("mapped packed", &w, &raw.dense);

    assert!(matches!(
        Buf::<u32>::mapped(map.clone(), off[0] + 2, 4),
        Err(WeightError::Misaligned { .. })
    ));
    assert!(matches!(
        Buf::<u32>::mapped(map.clone(), off[0], map.len()),
        Err(WeightError::OutOfBounds { .. })
    ));
    assert!(matches!(
        Buf::<u16>::mapped(map.clone(), map.len() - 1, 1),
        Err(WeightError::OutOfBounds { .. })
    ));

    let (mask, values, dense) = random_masked(33, 130, 0.5, 6);
    let (map, off) = map_file(
        "masked",
        &[bytemuck::cast_slice(&mask), bytemuck::cast_slice(&values)],
    );
    let w = Weight::masked(
        33,
        130,
        Some(Buf::mapped(map.clone(), off[0], mask.len()).unwrap()),
        MaskedValues::F16(Buf::mapped(map.clone(), off[1], values.len()).unwrap()),
    )
    .unwrap();
    let owned = Weight::masked(
        33,
        130,
        Some(Buf::owned(mask.clone())),
        MaskedValues::F16(Buf::owned(values)),
    )
    .unwrap();
    assert_eq!(w.to_f32_vec(), owned.to_f32_vec());
    assert_eq!(w.bytes(), owned.bytes());
    check_matmuls("mapped masked", &w, &dense, 2);
    check_row_slices("mapped masked", &w, &dense);
    assert!(matches!(
        Buf::<u64>::mapped(map.clone(), off[0] + 4, mask.len()),
        Err(WeightError::Misaligned { .. })
    ));
}

#[test]
#[should_panic(expected = "no dense elements")]
fn dense_view_of_a_compressed_weight_panics_loudly() {
    let raw = random_packed(2, 64, 4, 64, false, 1);
    let w = Weight::packed(raw.parts()).unwrap();
    assert!(w.dense_view().is_none());
    let _ = w.view();
}
