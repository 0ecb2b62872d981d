//! evopress-export: a compressed model ([`Candidate`](evopress_core::Candidate)) written as
//! files other tools deploy, keeping its compressed form where the format can hold it:
//!
//! - [`hf::write_hf`]: an HF directory transformers loads; sparse layers in compressed-tensors'
//!   `sparse-bitmask` form or dense;
//! - [`gptq::write_gptq`]: a GPTQ checkpoint (AutoGPTQ / GPTQModel tensors, per-layer widths as
//!   GPTQModel `dynamic` overrides) holding our codes, zero points and scales exactly;
//! - [`gguf::write_gguf`]: a GGUF file llama.cpp loads, the source's metadata and tokenizer
//!   kept, quantized layers in the ggml type that holds their codes.
//!
//! Depth results lose their dropped blocks in every format ([`layout`]). Every file is written
//! atomically ([`evopress_core::fsutil`]). What each result became is listed in the
//! [`ExportReport`]; docs/export-formats.md describes the formats.

mod bitmask;
pub mod ggml_blocks;
pub mod gguf;
pub mod gptq;
pub mod gptq_pack;
pub mod hf;
pub mod layout;
pub mod pieces;
mod report;
mod st;
pub mod tokenizer_files;

pub use report::ExportReport;
