//! Build script. Without feature `cuda` it does nothing, so a normal build needs neither nvcc nor
//! libclang. With `cuda` it prepares the GPU side in `OUT_DIR`:
//!
//! - `kernel_params.rs`: bindgen's `#[repr(C)]` mirror of `kernels/evopress_kernels.h` (the
//!   launch-parameter structs and tile constants), so Rust and CUDA cannot disagree on a layout.
//!   bindgen loads libclang at build time: `apt-get install -y libclang-dev` (or set
//!   `LIBCLANG_PATH`).
//! - `kernels.rs`: for every `kernels/*.cu`, its source with the header inlined (NVRTC compiles
//!   that at start-up) and, when nvcc is found, its PTX for sm_80 and sm_90 built here, which
//!   saves the start-up compile and needs no NVRTC library on the GPU machine.
//!
//! nvcc is looked for in `$NVCC`, then on `PATH`, then where `scripts/install-nvcc` puts it
//! (`.tools/cuda/nvidia/cu13/bin/nvcc` in the repository).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "cuda")]
    cuda::build();
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::fmt::Write as _;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::{env, fs};

    /// Architectures we ship PTX for: Ampere (A100) and Hopper (H100/H200). The driver JITs the
    /// newest one not above the device's to its machine code at module load.
    const ARCHS: [u32; 2] = [80, 90];
    const HEADER: &str = "evopress_kernels.h";

    pub fn build() {
        let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
        let repo = manifest.parent().unwrap();
        let kernels = repo.join("kernels");
        let out = PathBuf::from(env::var_os("OUT_DIR").unwrap());
        println!("cargo:rerun-if-changed={}", kernels.display());
        println!("cargo:rerun-if-env-changed=NVCC");

        let header = kernels.join(HEADER);
        bindgen::Builder::default()
            .header(header.to_str().unwrap())
            .allowlist_type(".*Params")
            .allowlist_var("EVO_.*")
            .generate()
            .unwrap_or_else(|e| {
                panic!(
                    "bindgen on {}: {e} (is libclang-dev installed?)",
                    header.display()
                )
            })
            .write_to_file(out.join("kernel_params.rs"))
            .expect("write kernel_params.rs");

        let header_text = fs::read_to_string(&header).expect("read the kernel header");
        let mut families: Vec<String> = fs::read_dir(&kernels)
            .expect("read kernels/")
            .filter_map(|e| {
                let path = e.ok()?.path();
                let name = path.file_name()?.to_str()?.strip_suffix(".cu")?;
                Some(name.to_owned())
            })
            .collect();
        families.sort();

        // NVRTC has no include path to our header: inline it.
        for name in &families {
            let src = fs::read_to_string(kernels.join(format!("{name}.cu"))).unwrap();
            let include = format!("#include \"{HEADER}\"");
            assert!(src.contains(&include), "kernels/{name}.cu must {include}");
            fs::write(
                out.join(format!("{name}.cu")),
                src.replace(&include, &header_text),
            )
            .unwrap();
        }

        let nvcc = find_nvcc(repo);
        match &nvcc {
            Some(nvcc) => compile_ptx(nvcc, &kernels, &families, &out),
            None => println!(
                "cargo:warning=nvcc not found ($NVCC, PATH, .tools/): the CUDA kernels will be \
                 compiled by NVRTC at start-up (scripts/install-nvcc installs nvcc)"
            ),
        }

        let mut code = String::from("pub(crate) const FAMILIES: &[Family] = &[\n");
        for name in &families {
            let src = out.join(format!("{name}.cu"));
            let ptx: Vec<String> = match nvcc {
                Some(_) => ARCHS
                    .iter()
                    .map(|a| format!("({a}, include_str!({:?}))", ptx_path(&out, name, *a)))
                    .collect(),
                None => Vec::new(),
            };
            writeln!(
                code,
                "    Family {{ name: {name:?}, source: include_str!({src:?}), ptx: &[{}] }},",
                ptx.join(", ")
            )
            .unwrap();
        }
        code.push_str("];\n");
        fs::write(out.join("kernels.rs"), code).unwrap();
    }

    fn find_nvcc(repo: &Path) -> Option<PathBuf> {
        if let Some(p) = env::var_os("NVCC") {
            return Some(PathBuf::from(p));
        }
        let on_path = env::var_os("PATH").and_then(|paths| {
            env::split_paths(&paths)
                .map(|d| d.join("nvcc"))
                .find(|p| p.is_file())
        });
        let installed = repo.join(".tools/cuda/nvidia/cu13/bin/nvcc");
        on_path.or_else(|| installed.is_file().then_some(installed))
    }

    fn ptx_path(out: &Path, name: &str, arch: u32) -> PathBuf {
        out.join(format!("{name}.sm_{arch}.ptx"))
    }

    /// Runs nvcc for every (family, arch) at once (each takes about a second) and fails the
    /// build with nvcc's messages if any kernel does not compile.
    fn compile_ptx(nvcc: &Path, kernels: &Path, families: &[String], out: &Path) {
        let jobs: Vec<(String, Child)> = families
            .iter()
            .flat_map(|name| ARCHS.iter().map(move |a| (name, *a)))
            .map(|(name, arch)| {
                let child = Command::new(nvcc)
                    .arg(format!("-arch=compute_{arch}"))
                    .arg("-ptx")
                    .arg(kernels.join(format!("{name}.cu")))
                    .arg("-o")
                    .arg(ptx_path(out, name, arch))
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
                (format!("{name}.cu for sm_{arch}"), child)
            })
            .collect();
        for (what, child) in jobs {
            let done = child.wait_with_output().unwrap();
            assert!(
                done.status.success(),
                "nvcc failed on kernels/{what}:\n{}",
                String::from_utf8_lossy(&done.stderr)
            );
        }
    }
}
