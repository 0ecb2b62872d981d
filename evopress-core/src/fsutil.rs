//! Writing files so that readers never see half of one: every file the tool writes (results,
//! checkpoints, database blocks, exported models) goes through [`write_atomically_with`]; and
//! [`DirLock`], which keeps two processes from writing the same directory.
//!
//! The contents go to `<path>.tmp` beside the target, are synced to disk, and the temporary
//! file is renamed over `path`; then the directory is synced so the rename itself survives a
//! crash. A killed run leaves the previous file (or none) and at worst a `.tmp` file; a failed
//! write removes its `.tmp`.

use crate::error::{Error, Result};
use std::fs::{File, TryLockError};
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

/// An exclusive lock on a directory (`<dir>/.lock`), held until dropped; the operating system
/// releases it when the process dies, so a killed run never leaves a stale lock.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Creates `dir` if needed and locks it; another process holding it is an error naming
    /// the directory and `what` the holder is doing.
    pub fn acquire(dir: &Path, what: &str) -> Result<DirLock> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(".lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: file, path }),
            Err(TryLockError::WouldBlock) => Err(Error::Invalid(format!(
                "{}: another evopress process is {what} here (it holds {}); wait for it to \
                 finish or use another directory",
                dir.display(),
                path.display()
            ))),
            Err(TryLockError::Error(e)) => Err(Error::io(&path, e)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
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

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused() {
        let dir = scratch("lock");
        let first = DirLock::acquire(&dir, "searching").unwrap();
        let err = DirLock::acquire(&dir, "searching").unwrap_err().to_string();
        assert!(
            err.contains("another evopress process is searching"),
            "{err}"
        );
        drop(first);
        DirLock::acquire(&dir, "searching").unwrap();
    }
}
