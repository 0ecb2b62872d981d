//! The joint search's result file, `joint_config.toml`: which sub-blocks are dropped and the
//! (sparsity, bit width) of every kept linear layer.
//!
//! ```toml
//! [dropped]
//! attention = [3]          # block indices
//! mlp = [12, 20]
//!
//! [linears]
//! "model.layers.0.self_attn.q_proj" = { sparsity = 0.5, bits = 4 }
//! ```
//!
//! Layers of dropped sub-blocks are not listed (the deployed model has none); every layer of a
//! kept sub-block is.

use crate::levels::Combo;
use evopress_core::{Error, Result};
use evopress_prune::DropMask;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The file name the search writes.
pub const JOINT_CONFIG: &str = "joint_config.toml";

/// What a joint result file says.
#[derive(Clone, Debug, PartialEq)]
pub struct JointChoice {
    pub drops: DropMask,
    /// The kept layers' combinations, by unit name.
    pub linears: BTreeMap<String, Combo>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    dropped: Dropped,
    #[serde(default)]
    linears: BTreeMap<String, Entry>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Dropped {
    #[serde(default)]
    attention: Vec<usize>,
    #[serde(default)]
    mlp: Vec<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    sparsity: f64,
    bits: u8,
}

/// The file for `drops` and the kept layers `linears` (in the order given).
pub fn to_toml<'a>(
    drops: &DropMask,
    linears: impl IntoIterator<Item = (&'a str, Combo)>,
) -> String {
    let blocks = |v: &[bool]| {
        let dropped = (0..v.len()).filter(|&b| v[b]);
        toml::Value::Array(dropped.map(|b| toml::Value::from(b as i64)).collect())
    };
    let mut dropped = toml::Table::new();
    dropped.insert("attention".into(), blocks(&drops.attn));
    dropped.insert("mlp".into(), blocks(&drops.mlp));
    let mut layers = toml::Table::new();
    for (name, c) in linears {
        let mut e = toml::Table::new();
        e.insert("sparsity".into(), c.sparsity().into());
        e.insert("bits".into(), (c.bits as i64).into());
        layers.insert(name.to_string(), toml::Value::Table(e));
    }
    let mut t = toml::Table::new();
    t.insert("dropped".into(), toml::Value::Table(dropped));
    t.insert("linears".into(), toml::Value::Table(layers));
    let body = toml::to_string(&t).expect("a table of numbers serializes");
    format!(
        "# evopress joint search: dropped sub-blocks (block indices) and every kept linear \
         layer's sparsity and bit width\n{body}"
    )
}

/// Reads a joint result file for a model of `n_blocks` blocks.
pub fn read(path: &Path, n_blocks: usize) -> Result<JointChoice> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let file: File = toml::from_str(&text)
        .map_err(|e| Error::format(path, e.to_string().trim_end().to_string()))?;
    let mut drops = DropMask::none(n_blocks);
    for (list, mask, what) in [
        (&file.dropped.attention, &mut drops.attn, "attention"),
        (&file.dropped.mlp, &mut drops.mlp, "mlp"),
    ] {
        for &b in list {
            let slot = mask.get_mut(b).ok_or_else(|| {
                Error::format(
                    path,
                    format!("dropped.{what} names block {b}; the model has {n_blocks} blocks"),
                )
            })?;
            *slot = true;
        }
    }
    let linears = (file.linears.into_iter())
        .map(|(name, e)| {
            let c = Combo::new(e.sparsity, e.bits)
                .map_err(|err| Error::format(path, format!("linears.\"{name}\": {err}")))?;
            Ok((name, c))
        })
        .collect::<Result<_>>()?;
    Ok(JointChoice { drops, linears })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOINT_CONFIG);
        let mut drops = DropMask::none(4);
        drops.attn[3] = true;
        drops.mlp[1] = true;
        let c = Combo::new(0.5, 4).unwrap();
        let d = Combo::new(0.0, 3).unwrap();
        let text = to_toml(&drops, [("model.layers.0.mlp.up_proj", c), ("x", d)]);
        std::fs::write(&path, &text).unwrap();
        let back = read(&path, 4).unwrap();
        assert_eq!(back.drops, drops);
        assert_eq!(back.linears["model.layers.0.mlp.up_proj"], c);
        assert_eq!(back.linears["x"], d);
        for (bad, needle) in [
            ("[dropped]\nmlp = [4]\n", "block 4"),
            (
                "[linears]\n\"a\" = { sparsity = 0.5, bits = 9 }\n",
                "bit width 9",
            ),
            (
                "[linears]\n\"a\" = { sparsity = 0.5, bit = 4 }\n",
                "unknown field",
            ),
        ] {
            std::fs::write(&path, bad).unwrap();
            let e = read(&path, 4).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }
}
