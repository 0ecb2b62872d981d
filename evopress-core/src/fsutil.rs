//! Writing files so that readers never see half of one: every file the tool writes (results,
//! checkpoints, database blocks, exported models) goes through [`write_atomically_with`].
//!
//! The contents go to `<path>.tmp` beside the target, are synced to disk, and the temporary
//! file is renamed over `path`; then the directory is synced so the rename itself survives a
//! crash. A killed run leaves the previous file (or none) and at worst a `.tmp` file; a failed
//! write removes its `.tmp`.

use crate::error::{Error, Result};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes`, atomically (see the module docs).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically_with(path, |tmp| {
        let mut f = File::create(tmp).map_err(|e| Error::io(tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(tmp, e))
    })
}

/// Runs `write` on the temporary path beside `path` (it must create the file there), syncs the
/// result, renames it over `path` and syncs the directory. On any failure the temporary file is
/// removed and `path` is left as it was. Returns what `write` returned (e.g. a checksum of the
/// bytes it wrote).
pub fn write_atomically_with<T>(path: &Path, write: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let tmp = tmp_path(path)?;
    let result = write(&tmp).and_then(|value| {
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        sync_parent_dir(path)?;
        Ok(value)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `<path>.tmp` (the whole file name kept, so `a.json` and `a.toml` never share one).
fn tmp_path(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{}: not a file path", path.display())))?;
    let mut tmp_name = name.to_owned();
    tmp_name.push(".tmp");
    Ok(path.with_file_name(tmp_name))
}

/// Makes a rename in `path`'s directory durable.
#[cfg(unix)]
fn sync_parent_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

#[cfg(not(unix))]
fn sync_parent_dir(_path: &Path) -> Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("evopress-fsutil-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = scratch("replace");
        let path = dir.join("a.json");
        write_atomically(&path, b"old").unwrap();
        write_atomically(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.json"]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_removes_the_temporary() {
        let dir = scratch("fail");
        let path = dir.join("model.safetensors");
        write_atomically(&path, b"old").unwrap();
        let err = write_atomically_with(&path, |tmp| -> Result<()> {
            std::fs::write(tmp, b"half").map_err(|e| Error::io(tmp, e))?;
            Err(Error::Invalid("encoder failed".into()))
        })
        .unwrap_err();
        assert!(err.to_string().contains("encoder failed"));
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert!(!dir.join("model.safetensors.tmp").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_writer_s_value_comes_back() {
        let dir = scratch("value");
        let path = dir.join("block-000.safetensors");
        let n = write_atomically_with(&path, |tmp| {
            std::fs::write(tmp, b"12345").map_err(|e| Error::io(tmp, e))?;
            Ok(5usize)
        })
        .unwrap();
        assert_eq!(n, 5);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
