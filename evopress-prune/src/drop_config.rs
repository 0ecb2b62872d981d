//! Which attention and MLP sub-blocks are dropped, and the two files that say so:
//! the original EvoPress `layer_drop_config.txt` (one line per block: `none`, `attn`, `mlp`
//! or `attn+mlp`) and our TOML (`attn = [..]`, `mlp = [..]` lists of dropped block indices).

use evopress_core::{BlockPlan, Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DropConfig {
    /// `attn[i]`: block i's attention sub-block is dropped.
    pub attn: Vec<bool>,
    /// `mlp[i]`: block i's MLP sub-block is dropped.
    pub mlp: Vec<bool>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DropToml {
    blocks: usize,
    attn: Vec<usize>,
    mlp: Vec<usize>,
}

impl DropConfig {
    pub fn dense(blocks: usize) -> Self {
        DropConfig {
            attn: vec![false; blocks],
            mlp: vec![false; blocks],
        }
    }

    pub fn blocks(&self) -> usize {
        self.attn.len()
    }

    /// The forward pass's view: which sub-blocks run.
    pub fn plan(&self) -> Vec<BlockPlan> {
        self.attn
            .iter()
            .zip(&self.mlp)
            .map(|(&a, &m)| BlockPlan { attn: !a, mlp: !m })
            .collect()
    }

    pub fn dropped_attn(&self) -> usize {
        self.attn.iter().filter(|&&d| d).count()
    }
    pub fn dropped_mlp(&self) -> usize {
        self.mlp.iter().filter(|&&d| d).count()
    }

    /// The original format: exactly one line per block, each ending in `\n`.
    pub fn to_original(&self) -> String {
        self.attn
            .iter()
            .zip(&self.mlp)
            .map(|(&a, &m)| match (a, m) {
                (false, false) => "none\n",
                (true, false) => "attn\n",
                (false, true) => "mlp\n",
                (true, true) => "attn+mlp\n",
            })
            .collect()
    }

    pub fn parse_original(path: &Path, text: &str) -> Result<Self> {
        let mut c = DropConfig::dense(0);
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
            c.attn.push(a);
            c.mlp.push(m);
        }
        Ok(c)
    }

    pub fn to_toml(&self) -> String {
        let idx = |v: &[bool]| {
            v.iter()
                .enumerate()
                .filter(|(_, &d)| d)
                .map(|(i, _)| i)
                .collect()
        };
        toml::to_string(&DropToml {
            blocks: self.blocks(),
            attn: idx(&self.attn),
            mlp: idx(&self.mlp),
        })
        .expect("a drop config serialises")
    }

    pub fn parse_toml(path: &Path, text: &str) -> Result<Self> {
        let t: DropToml = toml::from_str(text).map_err(|e| Error::format(path, e.to_string()))?;
        let mut c = DropConfig::dense(t.blocks);
        for (name, list, flags) in [("attn", &t.attn, &mut c.attn), ("mlp", &t.mlp, &mut c.mlp)] {
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
        Ok(c)
    }

    /// Reads either format: TOML for `.toml` files, the original line format otherwise.
    /// The block count must match the model's.
    pub fn read(path: &Path, blocks: usize) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let c = if path.extension().is_some_and(|e| e == "toml") {
            Self::parse_toml(path, &text)?
        } else {
            Self::parse_original(path, &text)?
        };
        if c.blocks() != blocks {
            return Err(Error::format(
                path,
                format!("describes {} blocks, the model has {blocks}", c.blocks()),
            ));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_format_round_trips() {
        let text = "none\nattn\nmlp\nattn+mlp\n";
        let c = DropConfig::parse_original(Path::new("x.txt"), text).unwrap();
        assert_eq!(c.attn, vec![false, true, false, true]);
        assert_eq!(c.mlp, vec![false, false, true, true]);
        assert_eq!(c.to_original(), text);
        assert_eq!(
            c.plan()[1],
            BlockPlan {
                attn: false,
                mlp: true
            }
        );
    }

    #[test]
    fn toml_round_trips_and_rejects_bad_indices() {
        let mut c = DropConfig::dense(5);
        c.attn[2] = true;
        c.mlp[4] = true;
        let back = DropConfig::parse_toml(Path::new("x.toml"), &c.to_toml()).unwrap();
        assert_eq!(back, c);
        let err = DropConfig::parse_toml(Path::new("x.toml"), "blocks = 2\nattn = [3]\nmlp = []\n")
            .unwrap_err();
        assert!(err.to_string().contains("attn"), "{err}");
    }

    #[test]
    fn bad_line_is_named() {
        let err = DropConfig::parse_original(Path::new("cfg.txt"), "none\nfoo\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("cfg.txt") && msg.contains("line 2"), "{msg}");
    }
}
