//! `manifest.json`: what a variant store holds and what it was built from.
//!
//! The header (backend, model, params, calibration) decides whether an existing store may be
//! resumed; the rest records progress (`blocks_done`, `files` with checksums, `units`).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

pub const FORMAT: &str = "evopress-variant-store";
pub const VERSION: u32 = 1;
pub const MANIFEST: &str = "manifest.json";

/// The model a store was built from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Where it was loaded from (informative: a moved model file still matches).
    pub path: String,
    /// [`crate::Model::fingerprint`]: the structure.
    pub fingerprint: String,
    /// [`crate::Model::weights_fingerprint`]: the contents. Absent in stores written before
    /// it was recorded, which are still read (checked by structure only) but not resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
    pub arch: String,
    pub blocks: usize,
}

impl ModelInfo {
    pub fn of(model: &crate::Model, path: &Path) -> Self {
        ModelInfo {
            path: path.display().to_string(),
            fingerprint: model.fingerprint(),
            weights: Some(model.weights_fingerprint()),
            arch: model.config.arch.model_type().into(),
            blocks: model.layers.len(),
        }
    }

    /// Refuses a store whose weights fingerprint is not `current`'s (`None` in `self`: a store
    /// from before weight fingerprints, acceptable only where `allow_unrecorded`). `dir` is
    /// the store, for the message.
    pub fn check_weights(
        &self,
        current: &ModelInfo,
        dir: &Path,
        allow_unrecorded: bool,
    ) -> Result<()> {
        let new = current.weights.as_deref().unwrap_or("none");
        let msg = match self.weights.as_deref() {
            Some(old) if old == new => return Ok(()),
            None if allow_unrecorded => return Ok(()),
            Some(old) => format!(
                "the database was built for other weights (model {}, weights fingerprint \
                 {old}) than this model's (weights fingerprint {new}): it belongs to another \
                 checkpoint of the same shape; use that model, or another directory",
                self.path
            ),
            None => format!(
                "the database was written before stores recorded the weights' fingerprint, so \
                 it cannot be checked against this model (weights fingerprint {new}); rebuild \
                 it (delete the directory)"
            ),
        };
        Err(Error::Config {
            path: dir.join(MANIFEST),
            key: "model.weights".into(),
            msg,
        })
    }
}

/// The calibration data a database was built with (the usual content of
/// [`StoreHeader::calibration`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationInfo {
    pub files: Vec<String>,
    pub seq_len: usize,
    pub windows: usize,
    pub sampling: crate::data::Sampling,
    pub seed: u64,
    pub tokens: usize,
    /// Windows the dense model wrote (docs/calibration.md) and their temperature; left out
    /// when there are none, so headers of stores built before them still match.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generated: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl CalibrationInfo {
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("calibration info serializes")
    }
}

/// Everything a store's contents depend on. Two builds with equal headers produce the same
/// variants, so one may resume the other.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoreHeader {
    pub backend: String,
    /// How variants are stored (`masked`: bitmask + kept values; `packed`: bit-packed codes),
    /// which decides what can read them; empty in stores written before it was recorded.
    #[serde(default)]
    pub variant_format: String,
    pub model: ModelInfo,
    /// Backend hyper-parameters, opaque here.
    pub params: Value,
    pub calibration: Value,
}

impl StoreHeader {
    /// The first key (dotted path) at which `self` (the stored header) and `new` differ, with
    /// both values; `model.path` is ignored.
    pub fn first_difference(&self, new: &StoreHeader) -> Option<(String, String, String)> {
        let strip = |h: &StoreHeader| {
            let mut v = serde_json::to_value(h).expect("header serializes");
            v["model"].as_object_mut().map(|m| m.remove("path"));
            v
        };
        diff("", &strip(self), &strip(new))
    }
}

fn diff(key: &str, a: &Value, b: &Value) -> Option<(String, String, String)> {
    let join = |k: &str| match key {
        "" => k.to_string(),
        _ => format!("{key}.{k}"),
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let null = Value::Null;
                diff(
                    &join(k),
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                )
            })
        }
        _ if a == b => None,
        _ => Some((key.to_string(), a.to_string(), b.to_string())),
    }
}

/// One stored variant of a unit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LevelEntry {
    /// The level index the search uses (SparseGPT: −8..8; GPTQ: bits).
    pub id: i32,
    /// Bytes of this variant's tensors in the block file.
    pub bytes: u64,
    /// ‖(W − Ŵ)X‖² / ‖WX‖² on the calibration data, or whatever relative error the backend
    /// reports.
    pub rel_error: f64,
    /// Backend extras (`sparsity`, `bits`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnitEntry {
    pub name: String,
    pub block: usize,
    pub rows: usize,
    pub cols: usize,
    pub levels: Vec<LevelEntry>,
}

impl UnitEntry {
    pub fn level(&self, id: i32) -> Option<&LevelEntry> {
        self.levels.iter().find(|l| l.id == id)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub bytes: u64,
    /// xxh3-64 of the whole file, 16 hex digits.
    pub xxh3: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    #[serde(flatten)]
    pub header: StoreHeader,
    pub units: Vec<UnitEntry>,
    pub files: BTreeMap<String, FileEntry>,
    pub blocks_done: Vec<usize>,
    /// Build time per block, seconds (keys are block indices).
    pub build_seconds: BTreeMap<usize, f64>,
    pub complete: bool,
}

impl Manifest {
    pub fn new(header: StoreHeader) -> Self {
        Manifest {
            format: FORMAT.into(),
            version: VERSION,
            header,
            units: Vec::new(),
            files: BTreeMap::new(),
            blocks_done: Vec::new(),
            build_seconds: BTreeMap::new(),
            complete: false,
        }
    }

    /// Reads and checks `<dir>/manifest.json`; errors name the file.
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let m: Manifest = serde_json::from_str(&text)
            .map_err(|e| Error::format(&path, format!("not a variant-store manifest: {e}")))?;
        if m.format != FORMAT || m.version != VERSION {
            return Err(Error::format(
                &path,
                format!(
                    "format {:?} version {}, expected {FORMAT:?} version {VERSION}",
                    m.format, m.version
                ),
            ));
        }
        Ok(m)
    }

    pub fn unit(&self, name: &str) -> Option<&UnitEntry> {
        self.units.iter().find(|u| u.name == name)
    }
}

/// The data file of block `b`.
pub fn block_file(b: usize) -> String {
    format!("block-{b:03}.safetensors")
}
