//! Where functions come from: a file, or an OCI reference through the
//! artifact cache and the on-disk compiled cache.
//!
//! # Contract
//!
//! * [`FunctionSource::parse`] treats an argument that names an existing
//!   file, or ends in `.wasm`, as a file; anything else as an image
//!   reference (which must then parse as one).
//! * [`CacheSettings`] decides the cache root: `$HEARTH_CACHE_DIR`, else
//!   `/var/lib/hearth` for root, else `$XDG_CACHE_HOME/hearth`, else
//!   `~/.cache/hearth`. Artifacts live under `<root>/artifacts`, compiled
//!   code under `<root>/compiled`; both survive restarts.
//! * A [`Host`](crate::Host) built with [`Host::with_caches`](crate::Host::with_caches)
//!   loads references with [`PullPolicy`]: `Missing` answers from the cache
//!   when it can, `Always` re-resolves the reference at its registry first.

use hearth_prewarm::registry::RegistrySettings;
use std::path::{Path, PathBuf};

/// Default bound of the artifact cache: 2 GiB.
pub const DEFAULT_ARTIFACT_CACHE_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// Where the caches live and how registries are reached.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// The cache root.
    pub dir: PathBuf,
    /// Bound of the artifact cache, in bytes.
    pub max_artifact_bytes: u64,
    /// Registry access.
    pub registry: RegistrySettings,
    /// Bound of compiled code kept in memory; `None`: unbounded.
    pub max_compiled_memory_bytes: Option<u64>,
    /// Bound of compiled code kept on disk; `None`: unbounded.
    pub max_compiled_disk_bytes: Option<u64>,
}

impl CacheSettings {
    /// Settings with the default root and bounds.
    pub fn at_default_dir() -> Self {
        CacheSettings {
            dir: default_cache_dir(),
            max_artifact_bytes: DEFAULT_ARTIFACT_CACHE_BYTES,
            registry: RegistrySettings::default(),
            max_compiled_memory_bytes: None,
            max_compiled_disk_bytes: None,
        }
    }
}

/// The default cache root (see the module docs).
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HEARTH_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if is_root() {
        return PathBuf::from("/var/lib/hearth");
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("hearth");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".cache/hearth"),
        None => PathBuf::from(".hearth-cache"),
    }
}

fn is_root() -> bool {
    // /proc/self is owned by the process's effective user.
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// When to contact the registry for a reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PullPolicy {
    /// Use the cached copy when there is one (Kubernetes' `IfNotPresent`).
    #[default]
    Missing,
    /// Resolve the reference at the registry every time.
    Always,
}

/// A file or an image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FunctionSource {
    /// A `.wasm` file.
    File(PathBuf),
    /// An OCI reference.
    Image(String),
}

impl FunctionSource {
    /// Classifies a command-line argument (see the module docs).
    pub fn parse(argument: &str) -> Self {
        let path = Path::new(argument);
        if path.is_file() || argument.ends_with(".wasm") {
            FunctionSource::File(path.to_path_buf())
        } else {
            FunctionSource::Image(argument.to_string())
        }
    }

    /// A short name for the function: the file stem, or the repository's
    /// last segment.
    pub fn default_name(&self) -> String {
        match self {
            FunctionSource::File(path) => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "function".into()),
            FunctionSource::Image(reference) => {
                let without_digest = reference.split('@').next().unwrap_or(reference);
                let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
                last.split(':').next().unwrap_or(last).to_string()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_files_or_references() {
        assert_eq!(
            FunctionSource::parse("missing/hello.wasm"),
            FunctionSource::File("missing/hello.wasm".into())
        );
        assert_eq!(
            FunctionSource::parse("127.0.0.1:5000/fn/hello:1"),
            FunctionSource::Image("127.0.0.1:5000/fn/hello:1".into())
        );
        assert_eq!(
            FunctionSource::parse("127.0.0.1:5000/fn/hello:1").default_name(),
            "hello"
        );
        assert_eq!(
            FunctionSource::parse("reg/fn/echo@sha256:00").default_name(),
            "echo"
        );
        assert_eq!(
            FunctionSource::parse("x/job-exit.wasm").default_name(),
            "job-exit"
        );
    }
}
