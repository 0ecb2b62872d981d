//! Writing a store block by block so that a kill at any point leaves it consistent: a block
//! file is written atomically ([`crate::fsutil`]) before the manifest (itself replaced
//! atomically) lists it, so a block is either fully present and listed, or absent.

use super::manifest::{block_file, FileEntry, Manifest, StoreHeader, UnitEntry, MANIFEST};
use super::{check_finite, hash_file, TensorData};
use crate::error::{Error, Result};
use crate::fsutil::{write_atomically, write_atomically_with};
use std::path::{Path, PathBuf};

/// A store being built; see the module docs.
pub struct StoreWriter {
    dir: PathBuf,
    manifest: Manifest,
}

impl StoreWriter {
    /// Starts a store in `dir` (created if needed; it must hold no other files), or resumes
    /// the one there if its header equals `header`. A store built with anything else is an
    /// error naming the first differing key (for other weights of the same model structure,
    /// both weight fingerprints): the caller must pick another directory or delete it. On resume, listed blocks whose file is missing or fails its checksum are
    /// dropped from `blocks_done` (they will be rebuilt), and stale `.tmp` files removed.
    pub fn create_or_resume(dir: &Path, header: StoreHeader) -> Result<StoreWriter> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let manifest_path = dir.join(MANIFEST);
        let writer = if manifest_path.exists() {
            let mut manifest = Manifest::read(dir)?;
            let same_structure = manifest.header.model.fingerprint == header.model.fingerprint;
            if same_structure {
                manifest
                    .header
                    .model
                    .check_weights(&header.model, dir, false)?;
            }
            if let Some((key, old, new)) = manifest.header.first_difference(&header) {
                return Err(Error::Config {
                    path: manifest_path,
                    key,
                    msg: format!(
                        "this store was built with {old}, this run asks for {new}; \
                         use another directory or delete this one"
                    ),
                });
            }
            manifest.header.model.path = header.model.path;
            let bad: Vec<usize> = manifest
                .blocks_done
                .iter()
                .copied()
                .filter(|&b| check_file(dir, &manifest, &block_file(b)).is_err())
                .collect();
            for b in bad {
                manifest.blocks_done.retain(|&d| d != b);
                manifest.files.remove(&block_file(b));
                manifest.units.retain(|u| u.block != b);
                manifest.build_seconds.remove(&b);
                manifest.complete = false;
            }
            StoreWriter {
                dir: dir.into(),
                manifest,
            }
        } else {
            let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
            // The build's own lock file (fsutil::DirLock) and generated calibration windows
            // may already be there.
            let own = [".lock", crate::self_text::KEPT_FILE];
            let foreign = |e: &std::fs::DirEntry| {
                !is_tmp(&e.path()) && !own.iter().any(|n| e.file_name() == *n)
            };
            if let Some(other) = entries.flatten().find(foreign) {
                return Err(Error::Invalid(format!(
                    "{}: the directory is not a variant store (it holds {} but no {MANIFEST}); \
                     use an empty or new directory",
                    dir.display(),
                    other.file_name().to_string_lossy()
                )));
            }
            StoreWriter {
                dir: dir.into(),
                manifest: Manifest::new(header),
            }
        };
        writer.remove_tmp_files()?;
        writer.write_manifest()?;
        Ok(writer)
    }

    fn remove_tmp_files(&self) -> Result<()> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        for e in entries.flatten() {
            if is_tmp(&e.path()) {
                std::fs::remove_file(e.path()).map_err(|err| Error::io(e.path(), err))?;
            }
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn is_block_done(&self, b: usize) -> bool {
        self.manifest.blocks_done.contains(&b)
    }
    /// Blocks already in the store (after a resume: the ones a build may skip).
    pub fn blocks_done(&self) -> &[usize] {
        &self.manifest.blocks_done
    }

    /// Stores block `b`: its tensors (named `<unit>/<level>/<part>`) in one safetensors
    /// file, its units in the manifest, and its build time. Replaces an earlier version of
    /// the block.
    pub fn write_block(
        &mut self,
        b: usize,
        tensors: &[(String, TensorData)],
        units: Vec<UnitEntry>,
        seconds: f64,
    ) -> Result<()> {
        if let Some(u) = units.iter().find(|u| u.block != b) {
            return Err(Error::Invalid(format!(
                "unit {} belongs to block {}, not to block {b} being written",
                u.name, u.block
            )));
        }
        let name = block_file(b);
        let path = self.dir.join(&name);
        for (tname, t) in tensors {
            check_finite(tname, t.dtype, &t.bytes).map_err(|msg| {
                Error::Invalid(format!(
                    "{}: not written: {msg} (check the calibration data and rel_damp)",
                    path.display()
                ))
            })?;
        }
        let entry = write_atomically_with(&path, |tmp| {
            let data = tensors.iter().map(|(n, t)| (n.as_str(), t));
            safetensors::serialize_to_file(data, &None, tmp)
                .map_err(|e| Error::format(tmp, format!("writing safetensors: {e}")))?;
            hash_file(tmp)
        })?;

        let m = &mut self.manifest;
        m.files.insert(name, entry);
        m.units.retain(|u| u.block != b);
        m.units.extend(units);
        m.units.sort_by_key(|u| u.block);
        if !m.blocks_done.contains(&b) {
            m.blocks_done.push(b);
            m.blocks_done.sort_unstable();
        }
        m.build_seconds.insert(b, seconds);
        self.write_manifest()
    }

    /// Marks the store complete (every block written); readers may then trust it whole.
    pub fn finish(&mut self) -> Result<()> {
        let blocks = self.manifest.header.model.blocks;
        let missing: Vec<usize> = (0..blocks).filter(|b| !self.is_block_done(*b)).collect();
        if !missing.is_empty() {
            return Err(Error::Invalid(format!(
                "{}: cannot finish the store, blocks {missing:?} are not built",
                self.dir.display()
            )));
        }
        self.manifest.complete = true;
        self.write_manifest()
    }

    /// Replaces `manifest.json` atomically.
    fn write_manifest(&self) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.manifest).expect("manifest serializes");
        write_atomically(&self.dir.join(MANIFEST), text.as_bytes())
    }
}

fn is_tmp(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "tmp")
}

/// Checks one listed file's size and checksum.
pub(super) fn check_file(dir: &Path, m: &Manifest, name: &str) -> Result<()> {
    let path = dir.join(name);
    let want = m
        .files
        .get(name)
        .ok_or_else(|| Error::format(dir.join(MANIFEST), format!("{name} is not listed")))?;
    let got: FileEntry = hash_file(&path)?;
    if got != *want {
        return Err(Error::format(
            &path,
            format!(
                "expected {} bytes with xxh3 {}, found {} bytes with xxh3 {}: the file is \
                 damaged; rebuild the database (delete the directory, or resume the build \
                 to rewrite this block)",
                want.bytes, want.xxh3, got.bytes, got.xxh3
            ),
        ));
    }
    Ok(())
}
