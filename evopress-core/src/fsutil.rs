//! Writing files so that a killed process or a full disk never leaves a half-written one, and
//! keeping two processes from writing the same directory.

use crate::error::{Error, Result};
use std::fs::{self, File, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` through `<path>.tmp`, fsync and rename (then fsyncs the directory),
/// so readers see the old file or the new one, never a torn one. On error the temporary file is
/// removed and the old file is left as it was.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{}: not a file path", path.display())))?;
    let mut temp_name = file_name.to_owned();
    temp_name.push(".tmp");
    let temp = path.with_file_name(temp_name);
    let written = File::create(&temp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .map_err(|e| Error::io(&temp, e))
        .and_then(|()| fs::rename(&temp, path).map_err(|e| Error::io(path, e)));
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    sync_dir(path.parent())
}

/// Makes a rename durable.
fn sync_dir(dir: Option<&Path>) -> Result<()> {
    let dir = match dir {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))?;
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
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
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

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert!(!dir.path().join("a.json.tmp").exists());
    }

    #[test]
    fn failed_write_names_the_file_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/such/dir/a.json");
        let err = write_atomically(&missing, b"x").unwrap_err().to_string();
        assert!(err.contains("a.json.tmp"), "{err}");
    }

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path(), "searching").unwrap();
        let err = DirLock::acquire(dir.path(), "searching")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("another evopress process is searching"),
            "{err}"
        );
        drop(first);
        DirLock::acquire(dir.path(), "searching").unwrap();
    }
}
