//! Loading the kernel families of `kernels/*.cu` onto a device, from what build.rs embedded.

use super::CudaError;
use cudarc::driver::sys::CUresult;
use cudarc::driver::{CudaContext, CudaModule};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};
use std::sync::Arc;

/// One `kernels/<name>.cu` as embedded by build.rs.
pub(crate) struct Family {
    pub name: &'static str,
    /// The source with `evopress_kernels.h` inlined, for NVRTC.
    pub source: &'static str,
    /// `(sm, ptx)` built by nvcc at build time; empty when the build had no nvcc.
    pub ptx: &'static [(u32, &'static str)],
}

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// Loads family `name`: the build's PTX for the newest architecture not above the device's
/// (the driver JITs it to machine code), else the source compiled by NVRTC for this device.
/// NVRTC is also the way out when the driver is older than the nvcc that wrote the PTX and
/// rejects its ISA version. `EVOPRESS_CUDA_NVRTC=1` skips the PTX, so the NVRTC path can be
/// tested (and used) on a build that has PTX.
pub(crate) fn load(ctx: &Arc<CudaContext>, name: &str) -> Result<Arc<CudaModule>, CudaError> {
    let family = FAMILIES
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("kernels/{name}.cu is not embedded by build.rs"));
    let (major, minor) = ctx.compute_capability()?;
    let sm = (10 * major + minor) as u32;
    let use_ptx = std::env::var("EVOPRESS_CUDA_NVRTC").as_deref() != Ok("1");
    let ptx = family
        .ptx
        .iter()
        .filter(|(a, _)| use_ptx && *a <= sm)
        .max_by_key(|(a, _)| *a);
    if let Some((_, ptx)) = ptx {
        match ctx.load_module(Ptx::from_src(*ptx)) {
            Err(e) if e.0 == CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION => {}
            loaded => return Ok(loaded?),
        }
    }
    // SAFETY: only probes whether the shared library can be opened.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaError::NoNvrtc {
            family: family.name,
        });
    }
    let opts = CompileOptions {
        options: vec![format!("--gpu-architecture=compute_{sm}")],
        name: Some(format!("{name}.cu")),
        ..Default::default()
    };
    let ptx = compile_ptx_with_opts(family.source, opts).map_err(|error| CudaError::Compile {
        family: family.name,
        error,
    })?;
    Ok(ctx.load_module(ptx)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NVRTC needs no GPU: compile every embedded source the way the fallback does. Skips
    /// where `libnvrtc.so.13` is not on the loader path (the `nvidia-cuda-nvrtc==13.0.88` wheel
    /// has it under `nvidia/cu13/lib`).
    #[test]
    fn nvrtc_compiles_every_family() {
        // SAFETY: only probes whether the shared library can be opened.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            eprintln!("skipped: libnvrtc not found on the loader path");
            return;
        }
        for family in FAMILIES {
            let opts = CompileOptions {
                options: vec!["--gpu-architecture=compute_90".into()],
                name: Some(format!("{}.cu", family.name)),
                ..Default::default()
            };
            let ptx = compile_ptx_with_opts(family.source, opts)
                .unwrap_or_else(|e| panic!("NVRTC on kernels/{}.cu: {e}", family.name));
            assert!(
                ptx.to_src().contains(".visible .entry"),
                "{}: no kernels",
                family.name
            );
        }
    }
}
