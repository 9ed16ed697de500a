//! The on-disk compiled cache: precompiled components that survive restarts.
//!
//! # Layout
//!
//! ```text
//! <root>/compiled/<engine fingerprint>/<wasm sha256 hex>      pointer: the sha256 of the object
//! <root>/compiled/<engine fingerprint>/objects/<sha256>.cwasm the serialized component
//! <root>/compiled/tmp/                                        staging for atomic writes
//! ```
//!
//! # Contract
//!
//! * Entries are keyed by the wasm's digest plus an [engine
//!   fingerprint](engine_fingerprint): wasmtime's precompile compatibility
//!   hash (wasmtime version, target, every compiler flag and tunable that
//!   changes code) and this crate's format version. An engine configured
//!   differently never sees another engine's entries.
//! * Objects are content-addressed by their own sha256, and the pointer is
//!   written only after the object is in place; both writes are atomic. A
//!   crash therefore leaves a complete entry, an unreferenced object, or
//!   nothing.
//! * Loading re-hashes the object before handing it to wasmtime, because
//!   wasmtime trusts precompiled code: an object whose hash does not match
//!   its name (bit rot, truncation, tampering), or that wasmtime rejects, is
//!   deleted and reported as [`CompiledLookup::Rejected`], so the caller
//!   recompiles and replaces it. A bad entry is never executed and never a
//!   crash.
//! * Objects are loaded with [`Component::deserialize_file`], which maps the
//!   file rather than copying it, so processes on a node share its pages.
//! * With a size bound ([`CompiledStore::with_max_bytes`]), every store is
//!   followed by a trim: entries are removed least recently used first (a
//!   load touches its pointer's mtime) until the objects fit, never the entry
//!   just stored. A removed entry is simply a miss next time.

use crate::Digest;
use crate::atomic_file::{StagedFile, clean_stale_staging, write_atomically};
use sha2::{Digest as _, Sha256};
use std::fs;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Bumped whenever this module's on-disk format changes.
const FORMAT_VERSION: &str = "hearth-compiled-v1";

/// A stable name for everything about `engine` that changes compiled code.
pub fn engine_fingerprint(engine: &Engine) -> String {
    struct Sha256Hasher(Sha256);
    impl Hasher for Sha256Hasher {
        fn finish(&self) -> u64 {
            unreachable!("only the full digest is read")
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut hasher = Sha256Hasher(Sha256::new());
    FORMAT_VERSION.hash(&mut hasher);
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex::encode(&hasher.0.finalize()[..12])
}

/// What a lookup in the compiled store found.
pub enum CompiledLookup {
    /// A verified entry, deserialized.
    Hit(Component),
    /// No entry for this digest and engine.
    Miss,
    /// An entry existed but was corrupt or stale; it has been removed.
    Rejected {
        /// Why it was rejected.
        reason: String,
    },
}

/// Precompiled components on disk for one engine fingerprint.
pub struct CompiledStore {
    dir: PathBuf,
    staging: PathBuf,
    fingerprint: String,
    max_bytes: Option<u64>,
}

impl CompiledStore {
    /// Opens (creating) the store under `cache_root` for `engine`, and
    /// removes staging leftovers of crashed writers.
    pub fn open(cache_root: &Path, engine: &Engine) -> io::Result<Self> {
        let fingerprint = engine_fingerprint(engine);
        let dir = cache_root.join("compiled").join(&fingerprint);
        let staging = cache_root.join("compiled").join("tmp");
        fs::create_dir_all(dir.join("objects"))?;
        fs::create_dir_all(&staging)?;
        clean_stale_staging(&staging)?;
        Ok(CompiledStore {
            dir,
            staging,
            fingerprint,
            max_bytes: None,
        })
    }

    /// Bounds the objects on disk to `max_bytes` (see the contract).
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = Some(max_bytes);
        self
    }

    /// Removes least recently used entries, other than `keep`, until the
    /// objects fit the bound. Returns how many entries went.
    pub fn trim(&self, keep: &Digest) -> io::Result<u64> {
        let Some(max_bytes) = self.max_bytes else {
            return Ok(0);
        };
        let keep = hex::encode(keep.as_bytes());
        let mut pointers = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "objects" || name == keep || !entry.file_type()?.is_file() {
                continue;
            }
            let used = entry.metadata()?.modified()?;
            pointers.push((used, entry.path()));
        }
        pointers.sort();
        let (_, mut bytes) = self.usage()?;
        let mut removed = 0;
        for (_, pointer) in pointers {
            if bytes <= max_bytes {
                break;
            }
            let object_hex = fs::read_to_string(&pointer).unwrap_or_default();
            let object = self.object_path(object_hex.trim());
            let size = fs::metadata(&object).map(|m| m.len()).unwrap_or(0);
            let _ = fs::remove_file(&pointer);
            if fs::remove_file(&object).is_ok() {
                bytes = bytes.saturating_sub(size);
            }
            tracing::info!(pointer = %pointer.display(), "evicted compiled component from disk (size bound)");
            removed += 1;
        }
        Ok(removed)
    }

    /// The engine fingerprint entries are filed under.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The directory holding this engine's entries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn pointer_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(hex::encode(digest.as_bytes()))
    }

    fn object_path(&self, object_hex: &str) -> PathBuf {
        self.dir.join("objects").join(format!("{object_hex}.cwasm"))
    }

    /// Looks up the compiled form of the wasm with `digest`.
    pub fn load(&self, engine: &Engine, digest: &Digest) -> CompiledLookup {
        let pointer = self.pointer_path(digest);
        let object_hex = match fs::read_to_string(&pointer) {
            Ok(text) => text.trim().to_string(),
            Err(error) if error.kind() == io::ErrorKind::NotFound => return CompiledLookup::Miss,
            Err(error) => return self.reject(digest, None, format!("unreadable pointer: {error}")),
        };
        if object_hex.len() != 64 || !object_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return self.reject(digest, None, format!("malformed pointer `{object_hex}`"));
        }
        let object = self.object_path(&object_hex);
        let actual = match fs::read(&object) {
            Ok(bytes) => hex::encode(Sha256::digest(&bytes)),
            Err(error) => {
                return self.reject(digest, Some(&object), format!("unreadable object: {error}"));
            }
        };
        if actual != object_hex {
            return self.reject(
                digest,
                Some(&object),
                format!("object content hashes to {actual}, expected {object_hex}"),
            );
        }
        // SAFETY: `deserialize_file` trusts that the file is a component
        // serialized by a compatible wasmtime. The file was written by
        // `store` below from `Component::serialize` under this engine's
        // fingerprint, and its content was just verified against the hash it
        // was stored under, so it is exactly what wasmtime produced. wasmtime
        // itself still checks the version and engine settings in the header.
        #[allow(unsafe_code)]
        let loaded = unsafe { Component::deserialize_file(engine, &object) };
        match loaded {
            Ok(component) => {
                // Recency for the size bound; failing to record it only
                // makes this entry an earlier eviction candidate.
                let _ = fs::File::options()
                    .write(true)
                    .open(&pointer)
                    .and_then(|file| file.set_modified(std::time::SystemTime::now()));
                CompiledLookup::Hit(component)
            }
            Err(error) => self.reject(
                digest,
                Some(&object),
                format!("wasmtime rejected the object: {error:#}"),
            ),
        }
    }

    fn reject(&self, digest: &Digest, object: Option<&Path>, reason: String) -> CompiledLookup {
        tracing::warn!(%digest, fingerprint = %self.fingerprint, "compiled cache entry rejected, recompiling: {reason}");
        let _ = fs::remove_file(self.pointer_path(digest));
        if let Some(object) = object {
            let _ = fs::remove_file(object);
        }
        CompiledLookup::Rejected { reason }
    }

    /// Stores the compiled form of the wasm with `digest`, replacing any
    /// previous entry.
    pub fn store(&self, digest: &Digest, component: &Component) -> io::Result<()> {
        let bytes = component.serialize().map_err(io::Error::other)?;
        let mut staged = StagedFile::create(&self.staging)?;
        staged.write_all(&bytes)?;
        let object_hex = staged
            .digest()
            .strip_prefix("sha256:")
            .expect("staged digests are sha256")
            .to_string();
        staged.commit(&self.object_path(&object_hex))?;
        write_atomically(
            &self.staging,
            &self.pointer_path(digest),
            object_hex.as_bytes(),
        )
    }

    /// Removes the entries of every other engine fingerprint (left by other
    /// wasmtime versions or settings). Returns how many fingerprints went.
    pub fn remove_other_engines(&self) -> io::Result<usize> {
        let compiled = self.dir.parent().expect("the store dir has a parent");
        let mut removed = 0;
        for entry in fs::read_dir(compiled)? {
            let entry = entry?;
            let name = entry.file_name();
            if name == "tmp" || name.to_string_lossy() == self.fingerprint {
                continue;
            }
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Number of entries and their total object size in bytes.
    pub fn usage(&self) -> io::Result<(usize, u64)> {
        let mut entries = 0;
        let mut bytes = 0;
        for entry in fs::read_dir(self.dir.join("objects"))? {
            bytes += entry?.metadata()?.len();
            entries += 1;
        }
        Ok((entries, bytes))
    }
}
