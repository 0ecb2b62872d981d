//! The two files that say which sub-blocks are dropped ([`DropMask`]): the original EvoPress
//! `layer_drop_config.txt` (one line per block: `none`, `attn`, `mlp` or `attn+mlp`) and our
//! TOML (`blocks = n`, `attn = [..]`, `mlp = [..]`: lists of dropped block indices).

use crate::space::DropMask;
use evopress_core::{BlockPlan, Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The forward pass's view of a mask: which sub-blocks run.
pub fn plan(mask: &DropMask) -> Vec<BlockPlan> {
    mask.attn
        .iter()
        .zip(&mask.mlp)
        .map(|(&a, &m)| BlockPlan { attn: !a, mlp: !m })
        .collect()
}

/// Sub-blocks dropped: (attention, MLP).
pub fn counts(mask: &DropMask) -> (usize, usize) {
    let n = |v: &[bool]| v.iter().filter(|&&d| d).count();
    (n(&mask.attn), n(&mask.mlp))
}

/// A mask dropping exactly `blocks` as whole blocks.
pub fn whole_blocks(n: usize, blocks: &[usize]) -> DropMask {
    let mut m = DropMask::none(n);
    for &b in blocks {
        m.attn[b] = true;
        m.mlp[b] = true;
    }
    m
}

/// The original format: exactly one line per block, each ending in `\n`.
pub fn to_original(mask: &DropMask) -> String {
    mask.attn
        .iter()
        .zip(&mask.mlp)
        .map(|(&a, &m)| match (a, m) {
            (false, false) => "none\n",
            (true, false) => "attn\n",
            (false, true) => "mlp\n",
            (true, true) => "attn+mlp\n",
        })
        .collect()
}

pub fn parse_original(path: &Path, text: &str) -> Result<DropMask> {
    let mut mask = DropMask::none(0);
    for (i, line) in text.lines().enumerate() {
        let (a, m) = match line.trim() {
            "none" => (false, false),
            "attn" => (true, false),
            "mlp" => (false, true),
            "attn+mlp" => (true, true),
            other => {
                return Err(Error::format(
                    path,
                    format!(
                        "line {}: `{other}` is not one of none, attn, mlp, attn+mlp",
                        i + 1
                    ),
                ))
            }
        };
        mask.attn.push(a);
        mask.mlp.push(m);
    }
    Ok(mask)
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DropToml {
    blocks: usize,
    attn: Vec<usize>,
    mlp: Vec<usize>,
}

pub fn to_toml(mask: &DropMask) -> String {
    let idx = |v: &[bool]| {
        v.iter()
            .enumerate()
            .filter(|(_, &d)| d)
            .map(|(i, _)| i)
            .collect()
    };
    toml::to_string(&DropToml {
        blocks: mask.attn.len(),
        attn: idx(&mask.attn),
        mlp: idx(&mask.mlp),
    })
    .expect("a drop config serialises")
}

pub fn parse_toml(path: &Path, text: &str) -> Result<DropMask> {
    let t: DropToml = toml::from_str(text).map_err(|e| Error::format(path, e.to_string()))?;
    let mut mask = DropMask::none(t.blocks);
    for (name, list, flags) in [
        ("attn", &t.attn, &mut mask.attn),
        ("mlp", &t.mlp, &mut mask.mlp),
    ] {
        for &i in list {
            if i >= t.blocks {
                return Err(Error::Config {
                    path: path.into(),
                    key: name.into(),
                    msg: format!("block {i} is out of range for {} blocks", t.blocks),
                });
            }
            flags[i] = true;
        }
    }
    Ok(mask)
}

/// Reads either format (TOML for `.toml` files, the original line format otherwise) and
/// checks the block count against the model's.
pub fn read(path: &Path, blocks: usize) -> Result<DropMask> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mask = if path.extension().is_some_and(|e| e == "toml") {
        parse_toml(path, &text)?
    } else {
        parse_original(path, &text)?
    };
    if mask.attn.len() != blocks {
        return Err(Error::format(
            path,
            format!(
                "describes {} blocks, the model has {blocks}",
                mask.attn.len()
            ),
        ));
    }
    Ok(mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_format_round_trips() {
        let text = "none\nattn\nmlp\nattn+mlp\n";
        let m = parse_original(Path::new("x.txt"), text).unwrap();
        assert_eq!(m.attn, vec![false, true, false, true]);
        assert_eq!(m.mlp, vec![false, false, true, true]);
        assert_eq!(to_original(&m), text);
        assert_eq!(
            plan(&m)[1],
            BlockPlan {
                attn: false,
                mlp: true
            }
        );
        assert_eq!(counts(&m), (2, 2));
    }

    #[test]
    fn toml_round_trips_and_rejects_bad_indices() {
        let mut m = DropMask::none(5);
        m.attn[2] = true;
        m.mlp[4] = true;
        assert_eq!(parse_toml(Path::new("x.toml"), &to_toml(&m)).unwrap(), m);
        let err =
            parse_toml(Path::new("x.toml"), "blocks = 2\nattn = [3]\nmlp = []\n").unwrap_err();
        assert!(err.to_string().contains("attn"), "{err}");
    }

    #[test]
    fn bad_line_is_named() {
        let err = parse_original(Path::new("cfg.txt"), "none\nfoo\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("cfg.txt") && msg.contains("line 2"), "{msg}");
    }
}
