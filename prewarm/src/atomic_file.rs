//! Crash-safe file writes for the on-disk caches.
//!
//! # Contract
//!
//! * A [`StagedFile`] is written under the cache's own `tmp/` directory (same
//!   filesystem as its destination), flushed with `fsync`, and only then
//!   renamed into place by [`StagedFile::commit`]. A crash at any point leaves
//!   either no destination file or the complete one; never a partial one.
//! * A staged file that is dropped without being committed is deleted.
//!   Leftovers from a crash (the process died before drop) are named
//!   `*.partial` and removed by [`clean_stale_staging`].
//! * The directory holding the destination is `fsync`ed after the rename, so
//!   the rename itself survives a power loss.

use sha2::{Digest as _, Sha256};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A file being written in a staging directory, hashed as it is written.
pub struct StagedFile {
    path: PathBuf,
    file: Option<File>,
    hasher: Sha256,
    written: u64,
}

static STAGING_SEQUENCE: AtomicU64 = AtomicU64::new(0);

impl StagedFile {
    /// Creates a new, empty staged file in `staging_dir` (created if needed).
    pub fn create(staging_dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(staging_dir)?;
        let sequence = STAGING_SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let path = staging_dir.join(format!("{}-{sequence}.partial", std::process::id()));
        let file = File::options().write(true).create_new(true).open(&path)?;
        Ok(StagedFile {
            path,
            file: Some(file),
            hasher: Sha256::new(),
            written: 0,
        })
    }

    /// Appends `bytes`.
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file
            .as_mut()
            .expect("a staged file is open until commit")
            .write_all(bytes)?;
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// How many bytes have been written.
    pub fn len(&self) -> u64 {
        self.written
    }

    /// Whether nothing has been written yet.
    pub fn is_empty(&self) -> bool {
        self.written == 0
    }

    /// `sha256:<hex>` of everything written so far.
    pub fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.clone().finalize()))
    }

    /// Flushes, syncs and renames the file to `destination`, replacing any
    /// file already there.
    pub fn commit(mut self, destination: &Path) -> io::Result<()> {
        let file = self.file.take().expect("a staged file is committed once");
        file.sync_all()?;
        drop(file);
        if let Some(parent) = destination.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::rename(&self.path, destination)?;
        if let Some(parent) = destination.parent() {
            // Persist the rename. Opening a directory read-only and syncing
            // it is how POSIX makes a directory entry durable.
            File::open(parent)?.sync_all()?;
        }
        Ok(())
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Writes `bytes` to `destination` through a staged file in `staging_dir`.
pub fn write_atomically(staging_dir: &Path, destination: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut staged = StagedFile::create(staging_dir)?;
    staged.write_all(bytes)?;
    staged.commit(destination)
}

/// Removes `*.partial` files in `staging_dir` left by processes that died
/// mid-write. Files of live processes are left alone (their names start with
/// the writer's PID). Returns how many were removed.
pub fn clean_stale_staging(staging_dir: &Path) -> io::Result<usize> {
    let entries = match fs::read_dir(staging_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(error),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".partial") else {
            continue;
        };
        let writer_alive = stem
            .split('-')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !writer_alive && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_moves_complete_content_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let destination = dir.path().join("out/file");
        let mut staged = StagedFile::create(&dir.path().join("tmp")).unwrap();
        staged.write_all(b"hello").unwrap();
        assert_eq!(
            staged.digest(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        staged.commit(&destination).unwrap();
        assert_eq!(fs::read(&destination).unwrap(), b"hello");
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn dropped_staged_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut staged = StagedFile::create(dir.path()).unwrap();
        staged.write_all(b"partial").unwrap();
        drop(staged);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn stale_partials_of_dead_writers_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        // PID 0 never names a live process under /proc.
        fs::write(dir.path().join("0-7.partial"), b"junk").unwrap();
        let live = StagedFile::create(dir.path()).unwrap();
        assert_eq!(clean_stale_staging(dir.path()).unwrap(), 1);
        assert!(live.path.exists(), "a live writer's file is kept");
    }
}
