//! How a host configures one state store: `[state.stores.LABEL]` in
//! `hearth.toml`, declared here, next to the backends it builds.
//!
//! ```toml
//! [state.stores.local]
//! type = "embedded"            # embedded | redis | postgres
//! path = "state/local.redb"    # default: <data dir>/LABEL.redb
//! cache_bytes = 67108864       # read cache in memory (0 = off)
//! max_value_bytes = 1048576
//! [state.stores.cache]
//! type = "redis"
//! url = "redis://127.0.0.1:6379/"
//! timeout_ms = 2000            # per call
//! ```
//!
//! # Contract
//!
//! * [`StoreConfig`] is a serde enum tagged by `type`; each variant denies
//!   keys it does not have, so `url` on an embedded store or `cache_bytes`
//!   on a Redis one is an error naming the key, at load.
//! * [`StoreConfig::validate`] checks what serde cannot (ranges);
//!   [`StoreConfig::build`] makes the [`StateStore`]. Remote backends
//!   connect lazily, so a store whose server is down still builds.
//! * Errors are [`ConfigError`]s naming the key within the store's table.

use crate::embedded::EmbeddedBackend;
use crate::postgres::PostgresBackend;
use crate::redis::RedisBackend;
use crate::{StateBackend, StateLimits, StateStore};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Default bound of one call to a remote backend.
pub const DEFAULT_TIMEOUT_MS: u64 = 2000;

/// One store's table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum StoreConfig {
    /// redb on this node.
    Embedded(EmbeddedConfig),
    /// A Redis server.
    Redis(ServerConfig),
    /// A PostgreSQL database.
    Postgres(ServerConfig),
}

/// `type = "embedded"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// The file; relative paths are relative to the config file. Default:
    /// `LABEL.redb` in the host's data directory for state.
    pub path: Option<PathBuf>,
    /// Bytes of recently read entries kept in memory (default 64 MiB; 0
    /// turns the cache off).
    pub cache_bytes: Option<u64>,
    /// Largest value.
    pub max_value_bytes: Option<u64>,
}

/// `type = "redis"` or `"postgres"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The server's URL.
    pub url: String,
    /// Bound of one call, in ms.
    pub timeout_ms: Option<u64>,
    /// Largest value.
    pub max_value_bytes: Option<u64>,
}

/// A store's table is wrong: `key` within it, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// The key within the store's table (`url`, `path`...).
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

impl StoreConfig {
    /// The store a host has when it configures none: embedded, in its
    /// data directory.
    pub fn default_embedded() -> Self {
        StoreConfig::Embedded(EmbeddedConfig::default())
    }

    /// The backend's name, as `type` spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreConfig::Embedded(_) => "embedded",
            StoreConfig::Redis(_) => "redis",
            StoreConfig::Postgres(_) => "postgres",
        }
    }

    /// Makes a relative `path` relative to `base` (the config file's
    /// directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        if let StoreConfig::Embedded(EmbeddedConfig {
            path: Some(path), ..
        }) = self
            && path.is_relative()
        {
            *path = base.join(&*path);
        }
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let (timeout_ms, max_value_bytes) = match self {
            StoreConfig::Embedded(config) => (None, config.max_value_bytes),
            StoreConfig::Redis(config) | StoreConfig::Postgres(config) => {
                (config.timeout_ms, config.max_value_bytes)
            }
        };
        for (key, value) in [
            ("timeout_ms", timeout_ms),
            ("max_value_bytes", max_value_bytes),
        ] {
            if value == Some(0) {
                return Err(ConfigError {
                    key,
                    message: "must be at least 1".into(),
                });
            }
        }
        Ok(())
    }

    /// Makes the store labelled `label`; an embedded one without a `path`
    /// lives at `data_dir/LABEL.redb`.
    pub fn build(&self, label: &str, data_dir: &Path) -> Result<StateStore, ConfigError> {
        let mut limits = StateLimits::default();
        let timeout = |ms: Option<u64>| Duration::from_millis(ms.unwrap_or(DEFAULT_TIMEOUT_MS));
        let url_error = |message: String| ConfigError {
            key: "url",
            message,
        };
        let backend: Arc<dyn StateBackend> = match self {
            StoreConfig::Embedded(config) => {
                let path = config
                    .path
                    .clone()
                    .unwrap_or_else(|| data_dir.join(format!("{label}.redb")));
                let mut backend = EmbeddedBackend::open(&path).map_err(|message| ConfigError {
                    key: "path",
                    message,
                })?;
                if let Some(bytes) = config.cache_bytes {
                    backend = backend.with_cache_budget(bytes as usize);
                }
                limits.max_value_bytes = config.max_value_bytes.unwrap_or(limits.max_value_bytes);
                Arc::new(backend)
            }
            StoreConfig::Redis(config) => {
                limits.max_value_bytes = config.max_value_bytes.unwrap_or(limits.max_value_bytes);
                Arc::new(
                    RedisBackend::new(&config.url, timeout(config.timeout_ms))
                        .map_err(url_error)?,
                )
            }
            StoreConfig::Postgres(config) => {
                limits.max_value_bytes = config.max_value_bytes.unwrap_or(limits.max_value_bytes);
                Arc::new(
                    PostgresBackend::new(&config.url, timeout(config.timeout_ms))
                        .map_err(url_error)?,
                )
            }
        };
        Ok(StateStore::new(label, backend, limits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<StoreConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn each_type_takes_only_its_own_keys() {
        assert_eq!(
            parse("type = \"redis\"\nurl = \"redis://x\"\n").unwrap(),
            StoreConfig::Redis(ServerConfig {
                url: "redis://x".into(),
                timeout_ms: None,
                max_value_bytes: None,
            })
        );
        let wrong = parse("type = \"embedded\"\nurl = \"redis://x\"\n").unwrap_err();
        assert!(wrong.contains("unknown field `url`"), "{wrong}");
        let wrong = parse("type = \"postgres\"\ncache_bytes = 1\nurl = \"p\"\n").unwrap_err();
        assert!(wrong.contains("unknown field `cache_bytes`"), "{wrong}");
        let missing = parse("type = \"redis\"\n").unwrap_err();
        assert!(missing.contains("missing field `url`"), "{missing}");
        let unknown = parse("type = \"mongo\"\n").unwrap_err();
        assert!(unknown.contains("mongo"), "{unknown}");
    }

    #[test]
    fn an_embedded_store_builds_in_the_data_dir_unless_it_names_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreConfig::default_embedded()
            .build("local", dir.path())
            .unwrap();
        assert_eq!((store.label(), store.kind()), ("local", "embedded"));
        assert!(dir.path().join("local.redb").is_file());
        let mut named: StoreConfig = parse("type = \"embedded\"\npath = \"x/y.redb\"\n").unwrap();
        named.resolve_paths(dir.path());
        named.build("other", Path::new("/nonexistent")).unwrap();
        assert!(dir.path().join("x/y.redb").is_file());
    }

    #[test]
    fn ranges_and_bad_urls_name_their_key() {
        let zero: StoreConfig =
            parse("type = \"redis\"\nurl = \"redis://x\"\ntimeout_ms = 0\n").unwrap();
        assert_eq!(zero.validate().unwrap_err().key, "timeout_ms");
        let bad: StoreConfig = parse("type = \"redis\"\nurl = \"not a url\"\n").unwrap();
        let error = bad.build("cache", Path::new("/tmp")).unwrap_err();
        assert_eq!(error.key, "url", "{error}");
    }
}
