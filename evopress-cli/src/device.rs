//! `--device cpu | cuda | cuda:N` (or the `device` key of a config file): where compute runs.
//! The CPU is always there; CUDA needs a build with `--features cuda` and a driver, and
//! without either the command stops with a message saying which, never a panic.

use anyhow::{bail, Result};
use evopress_kernels::cpu::Cpu;
use evopress_kernels::Device;

/// The device a spec names.
pub fn open(spec: &str) -> Result<Box<dyn Device>> {
    let spec = spec.trim();
    if spec == "cpu" {
        return Ok(Box::new(Cpu));
    }
    let ordinal = match spec.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => match rest.strip_prefix(':').map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => bail!("--device {spec}: expected cpu, cuda or cuda:N (N a GPU index)"),
        },
        None => bail!("--device {spec}: expected cpu, cuda or cuda:N"),
    };
    cuda(ordinal)
}

#[cfg(feature = "cuda")]
fn cuda(ordinal: usize) -> Result<Box<dyn Device>> {
    use evopress_kernels::cuda::{CudaDevice, CudaError};
    match CudaDevice::new(ordinal) {
        Ok(dev) => {
            eprintln!(
                "device: cuda:{ordinal} ({})",
                dev.name().unwrap_or_default()
            );
            Ok(Box::new(dev))
        }
        Err(CudaError::NoDriver) => bail!(
            "--device cuda:{ordinal}: no CUDA driver on this machine (libcuda could not be \
             loaded); use --device cpu"
        ),
        Err(e) => bail!("--device cuda:{ordinal}: {e}"),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda(ordinal: usize) -> Result<Box<dyn Device>> {
    bail!(
        "--device cuda:{ordinal}: this evopress was built without CUDA support; rebuild with \
         `cargo build --release --features cuda` (needs libclang for bindgen; nvcc optional)"
    )
}

/// The device of a command: the flag, else the config file's `device` key, else the CPU.
pub fn choose(flag: Option<&str>, config: Option<&std::path::Path>) -> Result<Box<dyn Device>> {
    let from_config = match config {
        Some(path) => evopress_pipeline::config::device_key(path)?,
        None => None,
    };
    open(flag.or(from_config.as_deref()).unwrap_or("cpu"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_parsed_and_bad_ones_named() {
        assert!(open("cpu").is_ok());
        let err = open("gpu").err().unwrap().to_string();
        assert!(err.contains("--device gpu"), "{err}");
        let err = open("cuda:x").err().unwrap().to_string();
        assert!(err.contains("cuda:N"), "{err}");
    }
}
