//! Capabilities as host functions: state (`wasi:keyvalue` and
//! `hearth:function/state`), service invocation (`hearth:function/invoke`),
//! configuration (`wasi:config`), messaging (`wasi:messaging` and
//! `hearth:function/messaging`) and blob storage (`wasi:blobstore`).
//!
//! Each capability is WIT (in `wit/`, one source for host and guests) +
//! a host implementation here + a backend trait + backends chosen in
//! `hearth.toml` by label and `type` (state: [`hearth_state`]).
//!
//! # Contract
//!
//! * The host holds one [`HostCapabilities`]: the configured state stores
//!   message brokers and blob stores by label, the invoke settings and the
//!   directory of loaded functions.
//! * A function's [`CapabilityGrants`] (from its config) are resolved
//!   against it once, at load, into [`FunctionCapabilities`]: its app's
//!   namespace in its own store, the shared store labels it may open, and
//!   its `wasi:config` values. A grant naming an unknown store fails the
//!   load with the label named.
//! * **Isolation.** A function's own store is always scoped to its app's
//!   namespace (`app`, default: the function's name); there is no call that
//!   names another namespace. A shared label is one namespace (`shared.LABEL`)
//!   that every function granted the label sees; a label not granted is
//!   `no-such-store` (`access-denied` in `wasi:keyvalue`).
//! * Guest-visible failures are typed errors, never traps; a trap from a
//!   capability call means a host bug or a bad resource handle.
//! * Per-request context ([`RequestContext`]: invoke depth, request id,
//!   trace context) is set on the store by the HTTP trigger before each
//!   request and read by `invoke`.

pub mod blobstore;
pub mod config;
pub mod invoke;
pub mod keyvalue;
pub mod keyvalue_draft;
pub mod messaging;

use crate::function::Function;
use hearth_state::{Namespace, StateStore};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use wasmtime::component::{HasData, Linker, ResourceTable};

pub use invoke::InvokeSettings;

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
    /// How `invoke` reaches functions that are not loaded here.
    pub invoke: InvokeSettings,
    /// Live message subscriptions' counters (for `/metrics`).
    pub subscriptions: crate::messages::SubscriptionRegistry,
    directory: Mutex<HashMap<String, Weak<Function>>>,
    breakers: invoke::Breakers,
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
    pub fn embedded_default(path: &Path) -> Result<Self, String> {
        let backend = hearth_state::embedded::EmbeddedBackend::open(path)?;
        let store = StateStore::new(
            "default",
            Arc::new(backend),
            hearth_state::StateLimits::default(),
        );
        let broker_path = path.with_extension("messages.redb");
        let broker = hearth_messaging::Broker::new(
            "default",
            Arc::new(hearth_messaging::embedded::EmbeddedBroker::open(
                &broker_path,
            )?),
            hearth_messaging::MessagingLimits::default(),
        );
        let blobs = hearth_blob::BlobStore::new(
            "default",
            Arc::new(
                hearth_blob::fs::FsBackend::open(&path.with_extension("blobs"))
                    .map_err(|e| e.to_string())?,
            ),
            hearth_blob::BlobLimits::default(),
        );
        Ok(Self::new(
            BTreeMap::from([("default".to_string(), store)]),
            None,
            InvokeSettings::default(),
        )
        .with_brokers(BTreeMap::from([("default".to_string(), broker)]), None)
        .with_blob_stores(BTreeMap::from([("default".to_string(), blobs)]), None))
    }

    /// Resolves a function's grants; the error names the unknown label.
    pub fn resolve(
        &self,
        function: &str,
        grants: &CapabilityGrants,
        env: &[(String, String)],
    ) -> Result<FunctionCapabilities, String> {
        let app = Namespace::new(grants.app.as_deref().unwrap_or(&sanitize(function)))
            .map_err(|e| format!("app: {e}"))?;
        let own_label = grants.state_store.clone().or(self.default_store.clone());
        let own_store = match &own_label {
            None => None,
            Some(label) => Some(self.stores.get(label).cloned().ok_or_else(|| {
                format!("state_store: no store labelled `{label}` is configured in [state.stores]")
            })?),
        };
        let mut shared = BTreeMap::new();
        for label in &grants.shared_stores {
            let store = self.stores.get(label).cloned().ok_or_else(|| {
                format!(
                    "shared_stores: no store labelled `{label}` is configured in [state.stores]"
                )
            })?;
            let namespace = Namespace::new(&format!("shared.{}", sanitize(label)))
                .map_err(|e| format!("shared_stores: {e}"))?;
            shared.insert(label.clone(), (store, namespace));
        }
        let config = config::collect(env, grants.config_dir.as_deref(), &grants.config)?;
        let broker = match grants.broker.clone().or(self.default_broker.clone()) {
            None => None,
            Some(label) => Some(self.brokers.get(&label).cloned().ok_or_else(|| {
                format!("broker: no broker labelled `{label}` is configured in [messaging.brokers]")
            })?),
        };
        let blob = match grants.blob_store.clone().or(self.default_blob_store.clone()) {
            None => None,
            Some(label) => Some(blobstore::BlobScope::new(
                self.blob_stores.get(&label).cloned().ok_or_else(|| {
                    format!("blob_store: no blob store labelled `{label}` is configured in [blob.stores]")
                })?,
                app.as_str(),
            )),
        };
        Ok(FunctionCapabilities {
            function: function.into(),
            blob,
            app,
            own_store,
            shared,
            config,
            broker,
            publish_topics: grants.publish_topics.clone(),
        })
    }

    /// Makes `function` reachable by `invoke` under its name (unless a live
    /// function holds the name already).
    pub fn register(&self, function: &Arc<Function>) {
        let mut directory = self.directory.lock().unwrap_or_else(|e| e.into_inner());
        directory.retain(|_, f| f.strong_count() > 0);
        // Only live functions are left, so a taken name stays taken.
        directory
            .entry(function.name().to_string())
            .or_insert_with(|| Arc::downgrade(function));
    }

    /// The loaded function called `name`, if any.
    pub fn local_function(&self, name: &str) -> Option<Arc<Function>> {
        self.directory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .and_then(Weak::upgrade)
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
}

/// A namespace name from a function or label name (lowercased; anything
/// outside `[a-z0-9._-]` becomes `-`).
fn sanitize(name: &str) -> String {
    let cleaned: String = name
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
    if cleaned.is_empty() {
        "function".into()
    } else {
        cleaned
    }
}

/// What a function's config grants it (unresolved).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapabilityGrants {
    /// Its app: the namespace of its own store (default: its name).
    pub app: Option<String>,
    /// The label of its own store (default: the host's default store).
    pub state_store: Option<String>,
    /// Shared store labels it may open by name.
    pub shared_stores: Vec<String>,
    /// `[function.config]`: `wasi:config` values.
    pub config: BTreeMap<String, String>,
    /// A directory of files (a mounted ConfigMap): one value per file.
    pub config_dir: Option<PathBuf>,
    /// The label of the broker it publishes to (default: the host's default).
    pub broker: Option<String>,
    /// Topics it may publish to (exact, or a prefix ending in `.>` or `*`);
    /// `None` allows any.
    pub publish_topics: Option<Vec<String>>,
    /// The label of its blob store (default: the host's default).
    pub blob_store: Option<String>,
}

/// A function's capabilities, resolved at load.
#[derive(Debug)]
pub struct FunctionCapabilities {
    /// The function's name (the caller in invoke's logs).
    pub function: Arc<str>,
    /// Its app's namespace.
    pub app: Namespace,
    /// Its own store, if the host has any.
    pub own_store: Option<StateStore>,
    /// Granted shared stores, by label, with their namespace.
    pub shared: BTreeMap<String, (StateStore, Namespace)>,
    /// `wasi:config` values, in order.
    pub config: Vec<(String, String)>,
    /// Its broker, if the host has any.
    pub broker: Option<hearth_messaging::Broker>,
    /// Topics it may publish to; `None` allows any.
    pub publish_topics: Option<Vec<String>>,
    /// Its blob store, scoped to its app, if the host has any.
    pub blob: Option<blobstore::BlobScope>,
}

impl FunctionCapabilities {
    /// Nothing granted: no store, no config (for functions loaded without
    /// a host-wide capability setup).
    pub fn none(function: &str) -> Self {
        FunctionCapabilities {
            function: function.into(),
            app: Namespace::new(&sanitize(function)).expect("sanitized names are valid"),
            own_store: None,
            shared: BTreeMap::new(),
            config: Vec::new(),
            broker: None,
            publish_topics: None,
            blob: None,
        }
    }
}

/// Per-request context, set by the trigger before each call.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    /// How many `invoke` hops led to this request (0 for an outside caller).
    pub depth: u32,
    /// `x-request-id` of the request, propagated by `invoke` (which makes
    /// one on the request's first call if it came without).
    pub request_id: Option<String>,
    /// W3C `traceparent` of the request, propagated by `invoke`.
    pub traceparent: Option<String>,
}

/// What one instance's capability calls work with.
pub struct CapabilityCtx {
    /// The function's resolved capabilities.
    pub function: Arc<FunctionCapabilities>,
    /// The host's capabilities (for `invoke`).
    pub host: Arc<HostCapabilities>,
    /// The request in progress.
    pub request: RequestContext,
    /// The message a handler invocation holds (set by the message trigger).
    pub in_hand: Option<messaging::InHand>,
}

/// The view capability host functions get of the store's data.
pub struct CapabilityView<'a> {
    /// The capability context.
    pub ctx: &'a mut CapabilityCtx,
    /// The instance's resource table.
    pub table: &'a mut ResourceTable,
}

/// Something that can hand out a [`CapabilityView`] (the store's data).
pub trait CapabilityHost: Send + 'static {
    /// The view.
    fn capabilities(&mut self) -> CapabilityView<'_>;
}

struct HasCapabilities;

impl HasData for HasCapabilities {
    type Data<'a> = CapabilityView<'a>;
}

/// Adds every capability interface to `linker`.
pub fn add_to_linker<T: CapabilityHost>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    use bindings::hearth::function as hearth;
    use bindings::wasi::{config as wasi_config, keyvalue0_2_0_draft2 as keyvalue};
    let view: fn(&mut T) -> CapabilityView<'_> = |state| state.capabilities();
    keyvalue::store::add_to_linker::<T, HasCapabilities>(linker, view)?;
    keyvalue::atomics::add_to_linker::<T, HasCapabilities>(linker, view)?;
    keyvalue::batch::add_to_linker::<T, HasCapabilities>(linker, view)?;
    wasi_config::store::add_to_linker::<T, HasCapabilities>(linker, view)?;
    hearth::state::add_to_linker::<T, HasCapabilities>(linker, view)?;
    hearth::invoke::add_to_linker::<T, HasCapabilities>(linker, view)?;
    hearth::messaging::add_to_linker::<T, HasCapabilities>(linker, view)?;
    use bindings::wasi::messaging as wasi_messaging;
    wasi_messaging::types::add_to_linker::<T, HasCapabilities>(linker, view)?;
    wasi_messaging::producer::add_to_linker::<T, HasCapabilities>(linker, view)?;
    use bindings::wasi::blobstore as wasi_blobstore;
    wasi_blobstore::types::add_to_linker::<T, HasCapabilities>(linker, view)?;
    wasi_blobstore::container::add_to_linker::<T, HasCapabilities>(linker, view)?;
    wasi_blobstore::blobstore::add_to_linker::<T, HasCapabilities>(linker, view)?;
    use draft_bindings::wasi::keyvalue0_2_0_draft as draft;
    draft::store::add_to_linker::<T, HasCapabilities>(linker, view)?;
    draft::atomics::add_to_linker::<T, HasCapabilities>(linker, view)?;
    draft::batch::add_to_linker::<T, HasCapabilities>(linker, view)?;
    Ok(())
}
