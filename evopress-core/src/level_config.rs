//! The files that say which level each linear layer takes (a sparsity level offset or a bit
//! width): the original EvoPress text format and ours in TOML.
//!
//! ```text
//!   original:  model.layers.0.self_attn.q_proj: 4      one line per unit, joined by '\n',
//!              model.layers.0.self_attn.k_proj: -1     no trailing newline (the original's
//!              ...                                     reader splits on ':' and crashes on an
//!                                                      empty line)
//!   ours:      [levels]
//!              "model.layers.0.self_attn.q_proj" = 4
//! ```
//!
//! Both read back into `(name, level)` pairs in the order of the units they are checked against,
//! with errors that name the file, the line and the unit.

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// The original format, lines in the given order, no trailing newline.
pub fn to_original<'a>(levels: impl IntoIterator<Item = (&'a str, i32)>) -> String {
    levels
        .into_iter()
        .map(|(name, level)| format!("{name}: {level}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Our TOML: a `[levels]` table, unit name to level, in the given order.
pub fn to_toml<'a>(levels: impl IntoIterator<Item = (&'a str, i32)>) -> String {
    let mut table = toml::Table::new();
    let inner: toml::Table = levels
        .into_iter()
        .map(|(name, level)| (name.to_string(), toml::Value::from(level)))
        .collect();
    table.insert("levels".into(), toml::Value::Table(inner));
    toml::to_string(&table).expect("a table of integers serializes")
}

/// Parses the original format: `name: level` lines (blank lines tolerated).
pub fn parse_original(path: &Path, text: &str) -> Result<Vec<(String, i32)>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |what: String| Error::format(path, format!("line {}: {what}", i + 1));
        let (name, level) = line
            .rsplit_once(':')
            .ok_or_else(|| bad(format!("expected `name: level`, found `{line}`")))?;
        let level = level.trim().parse::<i32>().map_err(|_| {
            bad(format!(
                "level `{}` of `{}` is not an integer",
                level.trim(),
                name.trim()
            ))
        })?;
        out.push((name.trim().to_string(), level));
    }
    Ok(out)
}

/// Parses our TOML format.
pub fn parse_toml(path: &Path, text: &str) -> Result<Vec<(String, i32)>> {
    let table: toml::Table = text
        .parse()
        .map_err(|e| Error::format(path, format!("not valid TOML: {e}")))?;
    let levels = match table.get("levels") {
        Some(toml::Value::Table(t)) => t,
        _ => return Err(Error::format(path, "expected a `[levels]` table")),
    };
    if let Some(key) = table.keys().find(|k| *k != "levels") {
        return Err(Error::format(
            path,
            format!("unknown key `{key}`; the file holds only `[levels]`"),
        ));
    }
    levels
        .iter()
        .map(|(name, v)| {
            let level = v
                .as_integer()
                .and_then(|l| i32::try_from(l).ok())
                .ok_or_else(|| {
                    Error::format(path, format!("level of `{name}` is not an integer: {v}"))
                })?;
            Ok((name.clone(), level))
        })
        .collect()
}

/// Reads either format (TOML when the file name ends in `.toml`) and returns the level of every
/// unit in `units` order. Every unit must appear exactly once and no other name may.
pub fn read(path: &Path, units: &[&str]) -> Result<Vec<i32>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let pairs = if path.extension().is_some_and(|e| e == "toml") {
        parse_toml(path, &text)?
    } else {
        parse_original(path, &text)?
    };
    let mut by_name = BTreeMap::new();
    for (name, level) in pairs {
        if !units.contains(&name.as_str()) {
            return Err(Error::format(
                path,
                format!("unknown layer `{name}`: the model/database has no such unit"),
            ));
        }
        if by_name.insert(name.clone(), level).is_some() {
            return Err(Error::format(path, format!("layer `{name}` appears twice")));
        }
    }
    units
        .iter()
        .map(|u| {
            by_name
                .get(*u)
                .copied()
                .ok_or_else(|| Error::format(path, format!("layer `{u}` has no level")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats_round_trip_in_unit_order() {
        let dir = tempfile::tempdir().unwrap();
        let units = ["b.q", "a.k", "c.v"];
        let levels = [("a.k", -2), ("b.q", 3), ("c.v", 0)];
        let txt = dir.path().join("cfg.txt");
        std::fs::write(&txt, to_original(levels)).unwrap();
        assert!(!std::fs::read_to_string(&txt).unwrap().ends_with('\n'));
        assert_eq!(read(&txt, &units).unwrap(), vec![3, -2, 0]);
        let toml = dir.path().join("cfg.toml");
        std::fs::write(&toml, to_toml(levels)).unwrap();
        assert_eq!(read(&toml, &units).unwrap(), vec![3, -2, 0]);
    }

    #[test]
    fn bad_files_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cfg.txt");
        let units = ["a", "b"];
        let err = |text: &str| {
            std::fs::write(&p, text).unwrap();
            read(&p, &units).unwrap_err().to_string()
        };
        assert!(err("a: 1\nb: x").contains("line 2"));
        assert!(err("a: 1\nb: 2\nc: 0").contains("unknown layer `c`"));
        assert!(err("a: 1").contains("`b` has no level"));
        assert!(err("a: 1\na: 2\nb: 0").contains("twice"));
    }
}
