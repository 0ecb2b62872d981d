//! Compiles every `kernels/*.cu` to PTX for sm_80 and sm_90 with nvcc, without a GPU, and checks
//! that each kernel the Rust side loads is an entry point of the PTX, that the PTX's ISA
//! version is one that the target driver (580, CUDA 13.0: PTX ISA 9.0) accepts, and that ptxas
//! assembles it for that architecture (which checks the inline PTX and the resource limits the
//! driver's JIT would otherwise report only on a GPU).
//!
//! nvcc is looked for in `$NVCC`, on `PATH`, then where `scripts/install-nvcc` puts it. Without
//! one the test fails and says how to get it, unless `EVOPRESS_SKIP_NVCC=1`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The entry points of each kernel family, as `src/cuda` loads them.
const ENTRIES: &[(&str, &[&str])] = &[
    ("attention", &["attention_causal_gqa_f32"]),
    (
        "dequant_matmul",
        &[
            "matmul_wt_f32",
            "matmul_wt_f16",
            "matmul_wt_bf16",
            "gemv_wt_f32",
            "gemv_wt_f16",
            "gemv_wt_bf16",
        ],
    ),
    ("kl", &["nll_rows_f32", "kl_rows_f32"]),
    (
        "norm_rope",
        &[
            "rms_norm_f32",
            "rope_rotate_half_f32",
            "silu_mul_f32",
            "add_assign_f32",
            "add_bias_f32",
        ],
    ),
];
const ARCHS: [u32; 2] = [80, 90];
/// The newest PTX ISA that driver 580 (CUDA 13.0) loads.
const MAX_PTX_ISA: (u32, u32) = (9, 0);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NVCC") {
        return Some(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nvcc"))
            .find(|p| p.is_file())
    });
    let installed = repo().join(".tools/cuda/nvidia/cu13/bin/nvcc");
    on_path.or_else(|| installed.is_file().then_some(installed))
}

fn ptx_isa(ptx: &str) -> (u32, u32) {
    let line = ptx
        .lines()
        .find_map(|l| l.strip_prefix(".version "))
        .expect("PTX has a .version line");
    let (major, minor) = line.trim().split_once('.').expect("version is MAJOR.MINOR");
    (major.parse().unwrap(), minor.parse().unwrap())
}

#[test]
fn every_kernel_compiles_to_ptx_for_sm80_and_sm90() {
    let Some(nvcc) = find_nvcc() else {
        if std::env::var("EVOPRESS_SKIP_NVCC").as_deref() == Ok("1") {
            eprintln!("skipped: no nvcc found and EVOPRESS_SKIP_NVCC=1");
            return;
        }
        panic!(
            "no nvcc found ($NVCC, PATH, .tools/cuda): run scripts/install-nvcc (pip wheels, \
             no GPU needed), or set EVOPRESS_SKIP_NVCC=1 to skip this test"
        );
    };
    let kernels = repo().join("kernels");
    let mut on_disk: Vec<String> = std::fs::read_dir(&kernels)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            Some(name.strip_suffix(".cu")?.to_owned())
        })
        .collect();
    on_disk.sort();
    let listed: Vec<&str> = ENTRIES.iter().map(|(f, _)| *f).collect();
    assert_eq!(
        on_disk, listed,
        "kernels/*.cu and this test's ENTRIES disagree"
    );

    let out = std::env::temp_dir().join(format!("evopress-ptx-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    for (family, entries) in ENTRIES {
        for arch in ARCHS {
            let ptx_path = out.join(format!("{family}.sm_{arch}.ptx"));
            let run = Command::new(&nvcc)
                .arg(format!("-arch=compute_{arch}"))
                .arg("-ptx")
                .arg(kernels.join(format!("{family}.cu")))
                .arg("-o")
                .arg(&ptx_path)
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
            assert!(
                run.status.success(),
                "nvcc failed on kernels/{family}.cu for sm_{arch}:\n{}",
                String::from_utf8_lossy(&run.stderr)
            );
            let ptx = std::fs::read_to_string(&ptx_path).unwrap();
            assert!(ptx.contains(&format!(".target sm_{arch}")));
            let isa = ptx_isa(&ptx);
            assert!(
                isa <= MAX_PTX_ISA,
                "{family}.cu: PTX ISA {isa:?} is newer than driver 580 loads ({MAX_PTX_ISA:?}); \
                 use the nvcc 13.0 wheels of scripts/install-nvcc"
            );
            let cubin = Command::new(&nvcc)
                .arg(format!("-arch=sm_{arch}"))
                .arg("-cubin")
                .arg(&ptx_path)
                .arg("-o")
                .arg(out.join(format!("{family}.sm_{arch}.cubin")))
                .output()
                .unwrap();
            assert!(
                cubin.status.success(),
                "ptxas failed on {family}.cu's PTX for sm_{arch}:\n{}",
                String::from_utf8_lossy(&cubin.stderr)
            );
            for entry in *entries {
                assert!(
                    ptx.contains(&format!(".visible .entry {entry}(")),
                    "{family}.cu for sm_{arch} has no entry point {entry}"
                );
            }
        }
    }
    std::fs::remove_dir_all(&out).unwrap();
    eprintln!(
        "compiled {} kernel families for sm_80 and sm_90 with {}",
        ENTRIES.len(),
        nvcc.display()
    );
}
