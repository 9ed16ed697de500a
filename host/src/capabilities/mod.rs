//! Capabilities as host functions: state (`wasi:keyvalue` and
//! `hearth:function/state`), service invocation (`hearth:function/invoke`),
//! configuration (`wasi:config`), messaging (`wasi:messaging` and
//! `hearth:function/messaging`), blob storage (`wasi:blobstore`) and log
//! lines (`wasi:logging`, whose backend is hearthd's log and the Pod's).
//!
//! Each capability is WIT (in `wit/`, one source for host and guests) +
//! a host implementation here + a backend trait + backends chosen in
//! `hearth.toml` by label and `type` (state: [`hearth_state`]).
//!
//! # Contract
//!
//! * The host holds one [`HostCapabilities`]: the configured state stores,
//!   message brokers and blob stores by label, the invoke settings and an
//!   injected [`Invoker`] that finds the functions loaded on this node.
//! * A function's [`CapabilityGrants`] (from its config) are resolved
//!   against it once, at load, into [`FunctionCapabilities`]: its app's
//!   namespace in its own store, the shared store labels it may open, and
//!   its `wasi:config` values. A grant naming an unknown store fails the
//!   load with the label named.
//! * **Isolation.** A function's own store is always scoped to its
//!   identity (`NAMESPACE.APP`, see [`crate::tenancy`]); there is no call
//!   that names another. A shared label is one namespace (`_shared.LABEL`)
//!   that every function granted the label sees (granted by its own config
//!   or its namespace's policy); a label not granted is `no-such-store`
//!   (`access-denied` in `wasi:keyvalue`). Blob containers, topics, groups
//!   and invoke names are scoped the same way (each module says how).
//! * Guest-visible failures are typed errors, never traps; a trap from a
//!   capability call means a host bug or a bad resource handle.
//! * Per-request context ([`RequestContext`]: invoke depth, request id,
//!   trace context) is set on the store by the trigger before each call
//!   and read by `invoke`. Its span is the parent of one span per state,
//!   invoke, publish and blob call (see [`crate::telemetry`]).
//! * **One context per capability.** Each capability module has its own
//!   `XCtx` (per instance), `XView { ctx, table }`, `HasData` marker and
//!   `add_to_linker`, as wasmtime's `wasi-http` and `wasi-keyvalue` do;
//!   the store data ([`crate::store_data`]) composes them. Each is unit
//!   tested by calling its host trait methods on a view, without wasm.

pub mod blobstore;
pub mod config;
pub mod invoke;
pub mod keyvalue;
pub mod keyvalue_draft;
pub mod logging;
pub mod messaging;

use crate::tenancy::{Identity, NamespacePolicy};
use hearth_state::{Namespace, StateStore};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use crate::propagation::RequestContext;
pub use blobstore::BlobstoreCtx;
pub use config::ConfigCtx;
pub use invoke::InvokeCtx;
pub use invoke::{InvokeSettings, Invoker, LocalCallee};
pub use keyvalue::KeyvalueCtx;
pub use logging::LoggingCtx;
pub use messaging::MessagingCtx;

/// Bindings for the `hearth:function/capabilities` world.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "hearth:function/capabilities",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": crate::capabilities::keyvalue::StoreHandle,
            "wasi:keyvalue/atomics.cas": crate::capabilities::keyvalue::CasHandle,
            "hearth:function/state.store": crate::capabilities::keyvalue::StoreHandle,
            "wasi:messaging/types.client": crate::capabilities::messaging::ClientHandle,
            "wasi:messaging/types.message": crate::capabilities::messaging::MessageHandle,
            "wasi:blobstore/container.container": crate::capabilities::blobstore::ContainerHandle,
            "wasi:blobstore/container.stream-object-names": crate::capabilities::blobstore::ObjectNamesHandle,
            "wasi:blobstore/types.outgoing-value": crate::capabilities::blobstore::OutgoingValueHandle,
            "wasi:blobstore/types.incoming-value": crate::capabilities::blobstore::IncomingValueHandle,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
        },
    });
}

/// Bindings for calling a component's `wasi:messaging/incoming-handler`.
#[allow(missing_docs, clippy::all)]
pub mod handler_bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "hearth:function/handler-export",
        exports: { default: async },
        with: {
            "wasi:messaging/types": crate::capabilities::bindings::wasi::messaging::types,
        },
    });
}

/// Bindings for `hearth:function/keyvalue-draft` (`wasi:keyvalue@0.2.0-draft`).
#[allow(missing_docs, clippy::all)]
pub mod draft_bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "hearth:function/keyvalue-draft",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": crate::capabilities::keyvalue::StoreHandle,
        },
    });
}

/// Everything capability calls can reach on this host.
#[derive(Default)]
pub struct HostCapabilities {
    /// State stores by label.
    pub stores: BTreeMap<String, StateStore>,
    /// The label a function's own store comes from unless it names one.
    pub default_store: Option<String>,
    /// Message brokers by label.
    pub brokers: BTreeMap<String, hearth_messaging::Broker>,
    /// The broker functions publish to and subscribe on unless they name one.
    pub default_broker: Option<String>,
    /// Blob stores by label.
    pub blob_stores: BTreeMap<String, hearth_blob::BlobStore>,
    /// The blob store functions use unless they name one.
    pub default_blob_store: Option<String>,
    /// Where outgoing blob values spool, and each function's bound.
    pub blob_spool: blobstore::SpoolSettings,
    /// How `invoke` reaches functions that are not loaded here.
    pub invoke: InvokeSettings,
    /// Finds functions loaded on this node for `invoke` (none: every
    /// callee is remote).
    pub invoker: Option<Arc<dyn Invoker>>,
    breakers: Arc<invoke::Breakers>,
}

impl HostCapabilities {
    /// Capabilities with `stores` (the first label, or `default_store`, is
    /// the default) and `invoke` settings.
    pub fn new(
        stores: BTreeMap<String, StateStore>,
        default_store: Option<String>,
        invoke: InvokeSettings,
    ) -> Self {
        HostCapabilities {
            default_store: default_store.or_else(|| stores.keys().next().cloned()),
            stores,
            invoke,
            ..Default::default()
        }
    }

    /// A host with one embedded store, `default`, in the file `path`, one
    /// embedded broker, `default`, beside it (`<path>.messages.redb`), and
    /// one `fs` blob store, `default`, in the directory `<path>.blobs`.
    pub fn embedded_default(path: &Path) -> Result<Self, LocalBackendError> {
        let failed = |what, path: &Path, message: String| LocalBackendError {
            what,
            path: path.to_owned(),
            message,
        };
        let backend = hearth_state::embedded::EmbeddedBackend::open(path)
            .map_err(|e| failed("state store", path, e))?;
        let store = StateStore::new(
            "default",
            Arc::new(backend),
            hearth_state::StateLimits::default(),
        );
        let broker_path = path.with_extension("messages.redb");
        let broker = hearth_messaging::embedded::EmbeddedBroker::open(&broker_path)
            .map_err(|e| failed("message broker", &broker_path, e))?;
        let broker = hearth_messaging::Broker::new(
            "default",
            Arc::new(broker),
            hearth_messaging::MessagingLimits::default(),
        );
        let blob_path = path.with_extension("blobs");
        let spool_dir = path.with_extension("blob-spool");
        let blobs = hearth_blob::fs::FsBackend::open(&blob_path)
            .map_err(|e| failed("blob store", &blob_path, e.to_string()))?;
        let blobs = hearth_blob::BlobStore::new(
            "default",
            Arc::new(blobs),
            hearth_blob::BlobLimits::default(),
        );
        Ok(Self::new(
            BTreeMap::from([("default".to_string(), store)]),
            None,
            InvokeSettings::default(),
        )
        .with_brokers(BTreeMap::from([("default".to_string(), broker)]), None)
        .with_blob_stores(BTreeMap::from([("default".to_string(), blobs)]), None)
        .with_blob_spool(blobstore::SpoolSettings {
            dir: spool_dir,
            ..Default::default()
        }))
    }

    /// Resolves the grants of `function`, of `identity`, whose namespace
    /// may reach `reach` beyond itself; the error names the key and label.
    pub fn resolve(
        &self,
        function: &str,
        identity: &Identity,
        grants: &CapabilityGrants,
        reach: &NamespacePolicy,
        env: &[(String, String)],
    ) -> Result<FunctionCapabilities, GrantError> {
        let app = Namespace::new(&identity.scope()).map_err(GrantError::App)?;
        let unknown = |key, what, section, label: &str| GrantError::UnknownLabel {
            key,
            what,
            section,
            label: label.to_string(),
        };
        let own_store = match grants.state_store.as_ref().or(self.default_store.as_ref()) {
            None => None,
            Some(label) => Some(
                self.stores
                    .get(label)
                    .cloned()
                    .ok_or_else(|| unknown("state_store", "store", "state.stores", label))?,
            ),
        };
        let mut shared = BTreeMap::new();
        for label in &grants.shared_stores {
            let store = self
                .stores
                .get(label)
                .cloned()
                .ok_or_else(|| unknown("shared_stores", "store", "state.stores", label))?;
            let namespace = Namespace::new(&shared_namespace(label)).map_err(GrantError::App)?;
            shared.insert(label.clone(), (store, namespace));
        }
        let config = config::collect(env, &grants.config_dirs, &grants.config)?;
        let broker = match grants.broker.as_ref().or(self.default_broker.as_ref()) {
            None => None,
            Some(label) => Some(
                self.brokers
                    .get(label)
                    .cloned()
                    .ok_or_else(|| unknown("broker", "broker", "messaging.brokers", label))?,
            ),
        };
        let mut brokers = BTreeMap::new();
        for label in grants.broker.iter().chain(&reach.brokers) {
            let broker = self
                .brokers
                .get(label)
                .cloned()
                .ok_or_else(|| unknown("brokers", "broker", "messaging.brokers", label))?;
            brokers.insert(label.clone(), broker);
        }
        let blob = match grants
            .blob_store
            .as_ref()
            .or(self.default_blob_store.as_ref())
        {
            None => None,
            Some(label) => Some(Arc::new(blobstore::BlobScope::new(
                self.blob_stores
                    .get(label)
                    .cloned()
                    .ok_or_else(|| unknown("blob_store", "blob store", "blob.stores", label))?,
                identity,
                self.blob_spool.clone(),
            ))),
        };
        let function: Arc<str> = function.into();
        Ok(FunctionCapabilities {
            keyvalue: Arc::new(keyvalue::KeyvalueScope {
                function: function.clone(),
                app: app.clone(),
                own_store,
                shared,
            }),
            config: config.into(),
            invoke: Arc::new(invoke::InvokeScope {
                caller: function.clone(),
                namespace: identity.namespace().into(),
                other_namespaces: reach.invoke.clone(),
                settings: self.invoke.clone(),
                invoker: self.invoker.clone(),
                breakers: self.breakers.clone(),
            }),
            messaging: Arc::new(messaging::MessagingScope {
                function: function.clone(),
                identity: identity.clone(),
                broker,
                brokers,
                publish_topics: grants.publish_topics.clone(),
                other_topics: reach.topics.clone(),
            }),
            blob,
            logging: Arc::new(logging::LoggingScope::new(
                function.clone(),
                identity.clone(),
            )),
            function,
            identity: identity.clone(),
            app,
        })
    }

    /// Lets `invoke` call functions loaded on this node through `invoker`.
    pub fn with_invoker(mut self, invoker: Arc<dyn Invoker>) -> Self {
        self.invoker = Some(invoker);
        self
    }

    /// Checks every store and broker can be reached; the errors name the
    /// store or broker and its backend.
    pub async fn check_stores(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for store in self.stores.values() {
            if let Err(error) = store.ping().await {
                problems.push(error.to_string());
            }
        }
        for broker in self.brokers.values() {
            if let Err(error) = broker.ping().await {
                problems.push(error.to_string());
            }
        }
        for (label, store) in &self.blob_stores {
            if let Err(error) = store.ping().await {
                problems.push(format!("blob store `{label}` ({}): {error}", store.kind()));
            }
        }
        problems
    }

    /// Adds message brokers (the first label, or `default_broker`, is the
    /// default).
    pub fn with_brokers(
        mut self,
        brokers: BTreeMap<String, hearth_messaging::Broker>,
        default_broker: Option<String>,
    ) -> Self {
        self.default_broker = default_broker.or_else(|| brokers.keys().next().cloned());
        self.brokers = brokers;
        self
    }

    /// Adds blob stores (the first label, or `default_blob_store`, is the
    /// default).
    pub fn with_blob_stores(
        mut self,
        stores: BTreeMap<String, hearth_blob::BlobStore>,
        default_store: Option<String>,
    ) -> Self {
        self.default_blob_store = default_store.or_else(|| stores.keys().next().cloned());
        self.blob_stores = stores;
        self
    }

    /// Spools outgoing blob values as `spool` says.
    pub fn with_blob_spool(mut self, spool: blobstore::SpoolSettings) -> Self {
        self.blob_spool = spool;
        self
    }
}

/// A function's grants cannot be met.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// Its identity is not valid.
    #[error(transparent)]
    Identity(#[from] crate::tenancy::IdentityError),
    /// It names a label the host has no backend for.
    #[error("{key}: no {what} labelled `{label}` is configured in [{section}]")]
    UnknownLabel {
        /// The grant's key (`state_store`, `broker`...).
        key: &'static str,
        /// What the label names (`store`, `broker`...).
        what: &'static str,
        /// The section that lacks it.
        section: &'static str,
        /// The label.
        label: String,
    },
    /// Its app is not a valid namespace.
    #[error("app: {0}")]
    App(String),
    /// Its `wasi:config` values cannot be read.
    #[error(transparent)]
    Config(#[from] config::ConfigDirError),
}

/// A local default backend could not be opened.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot open the embedded {what} at {}: {message}", path.display())]
pub struct LocalBackendError {
    /// Which backend.
    pub what: &'static str,
    /// Where.
    pub path: PathBuf,
    /// Why.
    pub message: String,
}

/// The state namespace of the shared store `label`: `_shared.LABEL`
/// (lowercased; anything outside `[a-z0-9._-]` becomes `-`). No function's
/// own namespace starts with `_` (see [`crate::tenancy`]).
fn shared_namespace(label: &str) -> String {
    let cleaned: String = label
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(100)
        .collect();
    format!("_shared.{cleaned}")
}

/// What a function's config grants it (unresolved).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapabilityGrants {
    /// Its app, within its namespace (default: its name; see
    /// [`crate::tenancy`]).
    pub app: Option<String>,
    /// The label of its own store (default: the host's default store).
    pub state_store: Option<String>,
    /// Shared store labels it may open by name.
    pub shared_stores: Vec<String>,
    /// `[function.config]`: `wasi:config` values.
    pub config: BTreeMap<String, String>,
    /// Directories of files (mounted ConfigMaps): one value per file; a
    /// later directory wins a key.
    pub config_dirs: Vec<PathBuf>,
    /// The label of the broker it publishes to (default: the host's default).
    pub broker: Option<String>,
    /// Topics it may publish to (exact, or a prefix ending in `.>` or `*`);
    /// `None` allows any.
    pub publish_topics: Option<Vec<String>>,
    /// The label of its blob store (default: the host's default).
    pub blob_store: Option<String>,
}

/// A function's capabilities, resolved at load: one scope per capability,
/// shared (immutable) by all its instances.
#[derive(Debug)]
pub struct FunctionCapabilities {
    /// The function's name (the caller in invoke's logs).
    pub function: Arc<str>,
    /// Who it is.
    pub identity: Identity,
    /// Its app's state namespace (`NAMESPACE.APP`).
    pub app: Namespace,
    /// The stores `wasi:keyvalue` and `hearth:function/state` may open.
    pub keyvalue: Arc<keyvalue::KeyvalueScope>,
    /// `wasi:config` values, sorted by key.
    pub config: Arc<[(String, String)]>,
    /// How `invoke` routes its calls.
    pub invoke: Arc<invoke::InvokeScope>,
    /// Where it may publish.
    pub messaging: Arc<messaging::MessagingScope>,
    /// Its blob store, scoped to its app, if the host has any.
    pub blob: Option<Arc<blobstore::BlobScope>>,
    /// Who its `wasi:logging` lines are from, and their rate.
    pub logging: Arc<logging::LoggingScope>,
}

impl FunctionCapabilities {
    /// Its own broker, if the host has any.
    pub fn broker(&self) -> Option<&hearth_messaging::Broker> {
        self.messaging.broker.as_ref()
    }
}
