//! What an export wrote and what each part of the candidate became.

use std::path::PathBuf;

/// The outcome of one export.
#[derive(Clone, Debug, Default)]
pub struct ExportReport {
    /// Files written, in order.
    pub files: Vec<PathBuf>,
    /// Decoder layers in the written model.
    pub layers: usize,
    /// Bytes the linear layers take in the written files (codes, scales, zeros, indices,
    /// masks: everything stored for them).
    pub linear_bytes: usize,
    /// What the same linear layers take as dense bf16.
    pub linear_bf16_bytes: usize,
    /// One line per decision: how the depth plan, quantized and sparse layers were written,
    /// and anything approximate or unsupported by some reader.
    pub notes: Vec<String>,
}

impl ExportReport {
    /// `linear_bytes / linear_bf16_bytes`.
    pub fn linear_ratio(&self) -> f64 {
        self.linear_bytes as f64 / self.linear_bf16_bytes.max(1) as f64
    }

    /// Human-readable lines: the notes, then the sizes.
    pub fn lines(&self) -> Vec<String> {
        let mut out = self.notes.clone();
        out.push(format!(
            "{} layers; linear layers stored in {} bytes = {:.4}x their bf16 size ({} bytes)",
            self.layers,
            self.linear_bytes,
            self.linear_ratio(),
            self.linear_bf16_bytes
        ));
        out
    }
}
