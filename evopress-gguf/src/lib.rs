//! llama.cpp's quant types as an EvoPress search (docs/gguf-search.md).
//!
//! - [`builder`]: `[database] kind = "gguf"`: every linear layer, the token embedding and the
//!   LM head at every requested ggml type ([`ladder`]), encoded bit-exactly as llama.cpp does
//!   with the calibration Hessian's diagonal as importance, stored as the blocks themselves;
//! - [`backend`]: the search at a target size (exact bytes of the searched tensors, bits per
//!   weight, or the size of a llama.cpp preset), with uniform, DP and [`preset`] baselines;
//! - `--gguf-config FILE --database DIR` on `eval`/`convert` applies a result, and
//!   `convert --to gguf` writes those blocks byte for byte.

pub mod backend;
pub mod builder;
pub mod ladder;
pub mod preset;

pub use backend::{GgufBackend, GgufSearchParams, CONFIG_FILE};
pub use builder::{GgufBuilder, GgufParams};
pub use ladder::{fallback, Ladder};
pub use preset::{preset_type, Preset};

use evopress_core::build::VariantBuilder;
use evopress_core::method::parse_section;
use evopress_core::{
    BuildContext, Candidate, CompressionBackend, ConfigFlag, Error, Method, Model, Report, Result,
};
use std::path::Path;

/// The registry entry.
pub static GGUF: Gguf = Gguf;

pub struct Gguf;

impl Method for Gguf {
    fn name(&self) -> &'static str {
        "gguf"
    }

    fn about(&self) -> &'static str {
        "llama.cpp quant types: a ggml type per tensor at a target GGUF size"
    }

    fn open(&self, section: &toml::Table, model: &Model) -> Result<Box<dyn CompressionBackend>> {
        let p: GgufSearchParams = parse_section(section, "[backend] (kind = \"gguf\")")?;
        Ok(Box::new(GgufBackend::open(model, p)?))
    }

    fn database_kinds(&self) -> &'static [&'static str] {
        &["gguf"]
    }

    fn database_builder(
        &self,
        _kind: &str,
        params: &toml::Table,
        _ctx: &BuildContext,
    ) -> Result<Box<dyn VariantBuilder>> {
        let p: GgufParams = parse_section(params, "[database] (kind = \"gguf\")")?;
        Ok(Box::new(GgufBuilder::new(p)?))
    }

    fn config_flag(&self) -> Option<ConfigFlag> {
        Some(ConfigFlag {
            long: "gguf-config",
            help: "one ggml type per tensor (gguf_config.toml) over --database (a GGUF database)",
            needs_database: true,
        })
    }

    fn apply_config(
        &self,
        candidate: &mut Candidate,
        file: &Path,
        database: Option<&Path>,
    ) -> Result<Report> {
        let db = database.ok_or_else(|| {
            Error::Invalid("--gguf-config needs --database DIR (its GGUF database)".into())
        })?;
        let b = GgufBackend::open_database(&candidate.model, db)?;
        let idx = b.read_types(file)?;
        candidate.model = b.assemble(&candidate.model, &idx)?;
        Ok(b.size_report(&idx))
    }
}
