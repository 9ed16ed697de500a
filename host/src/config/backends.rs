//! Labelled backends: `[state]`, `[messaging]` and `[blob]` read and built
//! by one generic loader.
//!
//! Each section has a default label and a table of backends by label,
//! Spin-style. What one backend's table holds is the backend crate's
//! business: [`hearth_state::config::StoreConfig`],
//! [`hearth_messaging::config::BrokerConfig`] and
//! [`hearth_blob::config::BlobStoreConfig`] are serde enums tagged by
//! `type`. Here a [`BackendKind`] names a section and its crate's config,
//! and [`Labelled`] reads, checks and builds any of them the same way.
//!
//! # Contract
//!
//! * Every error names the key: `state.stores.LABEL: unknown field ...`
//!   while parsing, `state.stores.LABEL.url: ...` after.
//! * A section with no backends has one, `default`, of the crate's local
//!   type (embedded, or fs for blobs), in `<cache dir>/<section>`.
//! * The default label must be one of the section's labels; without one,
//!   the first label (in order) is the default.

use super::KeyError;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::Path;

/// One kind of labelled backend: its section in `hearth.toml` and the
/// backend crate's config for it.
pub trait BackendKind: 'static {
    /// The section: `state`, `messaging`, `blob`.
    const SECTION: &'static str;
    /// The table of backends by label: `stores`, `brokers`.
    const TABLE: &'static str;
    /// The key naming the default label: `default_store`, `default_broker`.
    const DEFAULT_KEY: &'static str;
    /// What a backend is called in messages: `store`, `broker`, `blob store`.
    const NOUN: &'static str;
    /// One backend's table (the crate's serde enum tagged by `type`).
    type Config: DeserializeOwned + Clone + std::fmt::Debug + Send + Sync;
    /// What it builds.
    type Built: Send;
    /// The backend a section without backends gets.
    fn local_default() -> Self::Config;
    /// Makes relative paths relative to `base`.
    fn resolve_paths(config: &mut Self::Config, base: &Path);
    /// Checks what serde cannot; the error's key is within the table.
    fn validate(config: &Self::Config) -> Result<(), KeyError>;
    /// Builds it; local backends without a path live in `data_dir`.
    fn build(
        config: &Self::Config,
        label: &str,
        data_dir: &Path,
    ) -> impl Future<Output = Result<Self::Built, KeyError>> + Send;
}

/// A section: backends by label and the default label.
pub struct Labelled<K: BackendKind> {
    /// The default label, as configured.
    pub default: Option<String>,
    /// The backends by label.
    pub backends: BTreeMap<String, K::Config>,
    kind: PhantomData<K>,
}

impl<K: BackendKind> Default for Labelled<K> {
    fn default() -> Self {
        Labelled {
            default: None,
            backends: BTreeMap::new(),
            kind: PhantomData,
        }
    }
}

impl<K: BackendKind> Clone for Labelled<K> {
    fn clone(&self) -> Self {
        Labelled {
            default: self.default.clone(),
            backends: self.backends.clone(),
            kind: PhantomData,
        }
    }
}

impl<K: BackendKind> std::fmt::Debug for Labelled<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(K::SECTION)
            .field("default", &self.default)
            .field("backends", &self.backends)
            .finish()
    }
}

impl<'de, K: BackendKind> Deserialize<'de> for Labelled<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut table = toml::Table::deserialize(deserializer)?;
        let (section, list) = (K::SECTION, K::TABLE);
        let default = match table.remove(K::DEFAULT_KEY) {
            None => None,
            Some(toml::Value::String(label)) => Some(label),
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "{section}.{}: expected a label, found a {}",
                    K::DEFAULT_KEY,
                    other.type_str()
                )));
            }
        };
        let entries = match table.remove(list) {
            None => toml::Table::new(),
            Some(toml::Value::Table(entries)) => entries,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "{section}.{list}: expected [{section}.{list}.LABEL] tables, found a {}",
                    other.type_str()
                )));
            }
        };
        if let Some(unknown) = table.keys().next() {
            return Err(D::Error::custom(format!(
                "{section}.{unknown}: unknown key; [{section}] has `{}` and [{section}.{list}.LABEL] tables",
                K::DEFAULT_KEY
            )));
        }
        let mut backends = BTreeMap::new();
        for (label, value) in entries {
            let config = K::Config::deserialize(value)
                .map_err(|error| D::Error::custom(format!("{section}.{list}.{label}: {error}")))?;
            backends.insert(label, config);
        }
        Ok(Labelled {
            default,
            backends,
            kind: PhantomData,
        })
    }
}

impl<K: BackendKind> Labelled<K> {
    fn key(label: &str, field: &str) -> String {
        format!("{}.{}.{label}.{field}", K::SECTION, K::TABLE)
    }

    /// Makes relative paths relative to `base` (the config file's directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        for config in self.backends.values_mut() {
            K::resolve_paths(config, base);
        }
    }

    /// Whether a function may name `label`: a configured label, or
    /// `default` when the section has none (the local default).
    pub fn knows(&self, label: &str) -> bool {
        if self.backends.is_empty() {
            label == "default"
        } else {
            self.backends.contains_key(label)
        }
    }

    /// The error for a function key naming a label this section lacks.
    pub fn unknown_label(&self, key: String, label: &str) -> KeyError {
        KeyError {
            key,
            message: format!(
                "no {} labelled `{label}` in [{}.{}]",
                K::NOUN,
                K::SECTION,
                K::TABLE
            ),
        }
    }

    /// Checks the default label and every backend.
    pub fn validate(&self) -> Result<(), KeyError> {
        if let Some(label) = &self.default
            && !self.backends.contains_key(label)
        {
            return Err(self.unknown_label(format!("{}.{}", K::SECTION, K::DEFAULT_KEY), label));
        }
        for (label, config) in &self.backends {
            K::validate(config).map_err(|error| KeyError {
                key: Self::key(label, &error.key),
                message: error.message,
            })?;
        }
        Ok(())
    }

    /// Builds every backend (the local default if there are none) and
    /// returns them with the default label.
    pub async fn build(
        &self,
        cache_dir: &Path,
    ) -> Result<(BTreeMap<String, K::Built>, Option<String>), KeyError> {
        let data_dir = cache_dir.join(K::SECTION);
        let local;
        let configured = if self.backends.is_empty() {
            local = BTreeMap::from([("default".to_string(), K::local_default())]);
            &local
        } else {
            &self.backends
        };
        let mut built = BTreeMap::new();
        for (label, config) in configured {
            let backend = K::build(config, label, &data_dir)
                .await
                .map_err(|error| KeyError {
                    key: Self::key(label, &error.key),
                    message: error.message,
                })?;
            built.insert(label.clone(), backend);
        }
        Ok((built, self.default.clone()))
    }
}

/// Declares a [`BackendKind`] whose crate's config has `resolve_paths`,
/// `validate` and `build` (async or not) with errors that carry a `key`
/// and a `message`.
macro_rules! backend_kind {
    (
        $(#[$doc:meta])*
        $name:ident {
            section: $section:literal,
            table: $table:literal,
            default_key: $default_key:literal,
            noun: $noun:literal,
            config: $config:ty,
            built: $built:ty,
            local_default: $local:ident,
            build: |$c:ident, $label:ident, $dir:ident| $build:expr $(,)?
        }
    ) => {
        $(#[$doc])*
        pub struct $name;

        impl BackendKind for $name {
            const SECTION: &'static str = $section;
            const TABLE: &'static str = $table;
            const DEFAULT_KEY: &'static str = $default_key;
            const NOUN: &'static str = $noun;
            type Config = $config;
            type Built = $built;

            fn local_default() -> Self::Config {
                <$config>::$local()
            }

            fn resolve_paths(config: &mut Self::Config, base: &Path) {
                config.resolve_paths(base);
            }

            fn validate(config: &Self::Config) -> Result<(), KeyError> {
                config
                    .validate()
                    .map_err(|e| KeyError::new(e.key, e.message))
            }

            async fn build(
                $c: &Self::Config,
                $label: &str,
                $dir: &Path,
            ) -> Result<Self::Built, KeyError> {
                $build.map_err(|e| KeyError::new(e.key, e.message))
            }
        }
    };
}

backend_kind! {
    /// `[state]`: state stores.
    StateStores {
        section: "state",
        table: "stores",
        default_key: "default_store",
        noun: "store",
        config: hearth_state::config::StoreConfig,
        built: hearth_state::StateStore,
        local_default: default_embedded,
        build: |config, label, dir| config.build(label, dir),
    }
}

backend_kind! {
    /// `[messaging]`: message brokers.
    Brokers {
        section: "messaging",
        table: "brokers",
        default_key: "default_broker",
        noun: "broker",
        config: hearth_messaging::config::BrokerConfig,
        built: hearth_messaging::Broker,
        local_default: default_embedded,
        build: |config, label, dir| config.build(label, dir).await,
    }
}

backend_kind! {
    /// `[blob]`: blob stores.
    BlobStores {
        section: "blob",
        table: "stores",
        default_key: "default_store",
        noun: "blob store",
        config: hearth_blob::config::BlobStoreConfig,
        built: hearth_blob::BlobStore,
        local_default: default_fs,
        build: |config, label, dir| config.build(label, dir),
    }
}
