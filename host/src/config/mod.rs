//! `hearth.toml`: what hearthd serves and under which limits.
//!
//! ```toml
//! [limits]                      # defaults for every function (all optional)
//! request_timeout_ms = 30000
//! max_memory_mib = 128
//! max_request_body_bytes = 10485760
//! max_concurrent_instances = 64
//! instance_concurrency = 16     # requests one WASI 0.3 instance serves at once
//! max_connections = 1024        # HTTP connections open at once per function
//! header_read_timeout_ms = 30000  # slow headers and idle keep-alive are closed after it
//!
//! [cache]                       # optional
//! dir = "/var/lib/hearth"       # default: see hearth_host::distribution
//! max_bytes = 2147483648        # bound of the artifact cache
//! max_blob_spool_bytes = 2147483648  # one function's unfinished blob writes
//!
//! [registry]                    # optional
//! insecure = ["registry.lan:5000"]  # plain HTTP; loopback registries always are
//! max_layer_bytes = 268435456
//! max_manifest_bytes = 4194304     # a manifest or image config
//! max_image_bytes = 1073741824     # config + layers, as the manifest states them
//! max_unpacked_bytes = 1073741824  # decompressed while finding the component
//!
//! [prewarm]                     # optional
//! images = ["127.0.0.1:5000/fn/hello:1"]  # pulled and compiled at start
//! min_idle = 2                  # idle instances for functions from these images
//!
//! [admin]                       # optional
//! listen = "127.0.0.1:9464"     # /metrics, /healthz, /readyz (off if unset)
//!
//! [pool]                        # optional
//! instance_slots = 512          # pooling-allocator instance slots on this node
//! max_invocations = 1           # default calls per instance before it retires
//! compiled_memory_bytes = 1073741824  # compiled code kept in memory (LRU)
//! compiled_disk_bytes = 4294967296    # compiled code kept on disk (LRU)
//! keep_resident_bytes = 33554432      # memory a slot keeps mapped for the next instance (0: off)
//!
//! [state]                       # optional; default: one embedded store `default`
//! default_store = "default"     # the store functions use for their own app
//! [state.stores.default]
//! type = "embedded"             # embedded | redis | postgres
//! path = "state/default.redb"   # embedded; default <cache dir>/state/LABEL.redb
//! [state.stores.cache]
//! type = "redis"
//! url = "redis://127.0.0.1:6379/"
//! timeout_ms = 2000             # per call (remote backends)
//! max_value_bytes = 1048576
//! # cache_bytes = 67108864     # embedded: read cache in memory (0 = off)
//!
//! [messaging]                   # optional; default: one embedded broker `default`
//! default_broker = "default"    # the broker functions use unless they name one
//! [messaging.brokers.default]
//! type = "embedded"             # embedded | nats
//! path = "messaging/default.redb"  # embedded; default <cache dir>/messaging/LABEL.redb
//! retention_hours = 168         # a message older than this expires (both types)
//! max_topic_messages = 1000000  # embedded, per topic; past it publishes are refused
//! max_topic_bytes = 1073741824  # embedded, per topic; past it publishes are refused
//! [messaging.brokers.events]
//! type = "nats"
//! url = "nats://127.0.0.1:4222"
//! timeout_ms = 5000             # per call
//! retention_hours = 168         # how long a stream keeps messages
//! max_message_bytes = 1048576   # payload + key + headers
//!
//! [blob]                        # optional; default: one fs store `default`
//! default_store = "default"     # the store functions use unless they name one
//! [blob.stores.default]
//! type = "fs"                   # fs | s3 | remote
//! path = "blob/default"         # fs; default <cache dir>/blob/LABEL
//! max_object_bytes = 1073741824
//! [blob.stores.archive]
//! type = "s3"
//! endpoint = "http://127.0.0.1:9000"
//! bucket = "hearth"
//! region = "us-east-1"          # default us-east-1
//! access_key_id = "..."         # default: $AWS_ACCESS_KEY_ID
//! secret_access_key = "..."     # default: $AWS_SECRET_ACCESS_KEY
//! timeout_ms = 10000            # per request (s3, remote)
//! [blob.stores.node]
//! type = "remote"               # a hearth-store storage node
//! address = "10.0.0.9:7400"     # host:port, resolved at start
//! transport = "tcp"             # tcp | rdma (hearthd built with --features rdma;
//! # rdma_device = "mlx5_0"      #   then address is the node's --rdma-listen)
//! token_file = "store-token"    # this host's token for the node's --hosts file
//!
//! [tenancy]                     # optional; see hearth_host::tenancy
//! default_namespace = "default" # the namespace of [[function]]s and `hearth run`
//! [tenancy.namespaces.team-a]   # what functions of namespace team-a may reach beyond it
//! shared_stores = ["cache"]     # [state.stores] labels
//! brokers = ["events"]          # [messaging.brokers] labels besides their own
//! topics = ["team-b:orders", "team-b:audit.>"]  # other namespaces' topics
//! invoke = ["payments.team-b", "*.team-c"]      # other namespaces' functions
//! outbound_hosts = ["api.example.com"]          # outbound wasi:http ("*": any)
//!
//! [invoke]                      # optional
//! targets = { billing = "http://10.0.0.7:8080", "ledger.team-b" = "http://10.0.0.8:8080" }
//! cluster_domain = "cluster.local"  # else try http://NAME.NAMESPACE.svc.DOMAIN
//! max_depth = 8
//! default_timeout_ms = 10000
//! retries = 2                   # idempotent calls only
//! breaker_failures = 5
//! breaker_open_ms = 5000
//!
//! [[function]]
//! name = "hello"
//! path = "hello.wasm"           # relative to this file
//! # image = "127.0.0.1:5000/fn/hello:1"   (instead of path)
//! listen = "127.0.0.1:8080"     # optional for a message handler; a service needs it
//! env = { GREETING = "hi" }     # optional
//! allowed_outbound_hosts = []   # optional; "*" allows any host
//! min_idle = 1                  # optional; idle instances kept ready
//! max_invocations = 1           # optional; overrides [pool] max_invocations
//! namespace = "team-a"          # optional; default [tenancy] default_namespace
//! app = "shop"                  # optional; its app within it (default: its name)
//! state_store = "default"       # optional; default [state] default_store
//! shared_stores = ["cache"]     # optional; labels it may open by name
//! config_dir = "/etc/hearth/cm" # optional; a mounted ConfigMap for wasi:config
//! broker = "events"             # optional; default [messaging] default_broker
//! publish_topics = ["orders", "audit.>"]  # optional allow-list (exact, `.>` or `*` suffix)
//! blob_store = "archive"        # optional; default [blob] default_store
//! [[function.subscribe]]        # optional; needs the wasi:messaging handler export
//! topic = "orders"
//! group = "workers"             # default: the function's name
//! concurrency = 4               # handler invocations in flight
//! visibility_ms = 30000         # how long a message is hidden from other consumers
//! max_deliveries = 5            # then the dead-letter topic
//! backoff_ms = 200              # first redelivery delay, doubled per attempt
//! max_backoff_ms = 60000
//! dead_letter_topic = "orders.dlq"  # default <topic>.dlq
//! [function.config]             # optional; wasi:config values
//! currency = "EUR"
//! [function.limits]             # optional per-function overrides
//! max_memory_mib = 64
//! ```
//!
//! # Contract
//!
//! Loading fails, with the file's path and the offending key in the message,
//! on: a syntax error, an unknown key anywhere, a missing required key, a
//! limit out of range, a function path that does not exist, a function with
//! both or neither of `path` and `image`, a malformed image reference, two
//! functions with one name, two functions on one listen address, a store
//! without the keys its `type` needs, or a store label that is not
//! configured. An empty file is
//! valid: hearthd then serves only what shims hand it.
//!
//! What one backend's table holds is declared by its crate (see
//! [`backends`]); this module reads the file, checks what spans sections
//! (labels a function names), and builds the host's capabilities.

pub mod backends;
pub mod function;

pub use backends::{BackendKind, BlobStores, Brokers, Labelled, StateStores};
pub use function::{FunctionConfig, SubscribeConfig};

use crate::capabilities::blobstore::SpoolSettings;
use crate::capabilities::messaging::validate_guest_topic;
use crate::capabilities::{HostCapabilities, InvokeSettings};
use crate::distribution::{CacheSettings, DEFAULT_ARTIFACT_CACHE_BYTES, default_cache_dir};
use crate::engine::EngineSettings;
use crate::function_env::NodeDefaults;
use crate::limits::Limits;
use crate::tenancy::TenancyPolicy;
use hearth_messaging::MessagingError;
use hearth_prewarm::registry::{RegistrySettings, parse_reference};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A configuration error, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", file.display())]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// What is wrong with it.
    pub problem: ConfigProblem,
}

/// What is wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigProblem {
    /// It cannot be read.
    #[error("cannot read: {0}")]
    Read(std::io::Error),
    /// It is not TOML of the right shape (toml's message names the key
    /// and shows the line).
    #[error("{}", .0.to_string().trim_end())]
    Syntax(toml::de::Error),
    /// A value is wrong.
    #[error("{0}")]
    Invalid(KeyError),
}

/// A value that is wrong: its key (`state.stores.cache.url`,
/// `function[0].path (function `a`)`...) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct KeyError {
    /// Where it is.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl KeyError {
    /// An error at `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        KeyError {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HearthConfig {
    /// Default limits.
    #[serde(default)]
    pub limits: Limits,
    /// Where the caches live.
    #[serde(default)]
    pub cache: CacheConfig,
    /// How registries are reached.
    #[serde(default)]
    pub registry: RegistryConfig,
    /// What to have ready before serving.
    #[serde(default)]
    pub prewarm: PrewarmConfig,
    /// The instance pool.
    #[serde(default)]
    pub pool: PoolConfig,
    /// The admin endpoint.
    #[serde(default)]
    pub admin: AdminConfig,
    /// State stores.
    #[serde(default)]
    pub state: Labelled<StateStores>,
    /// Service invocation.
    #[serde(default)]
    pub invoke: InvokeConfig,
    /// Blob stores.
    #[serde(default)]
    pub blob: Labelled<BlobStores>,
    /// Message brokers.
    #[serde(default)]
    pub messaging: Labelled<Brokers>,
    /// Namespaces and what they may reach.
    #[serde(default)]
    pub tenancy: TenancyPolicy,
    /// Spans exported over OTLP (see [`crate::telemetry`]).
    #[serde(default)]
    pub telemetry: crate::telemetry::TelemetrySettings,
    /// Functions to serve.
    #[serde(default)]
    pub function: Vec<FunctionConfig>,
}

/// `[cache]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// The cache root; relative paths are relative to the config file.
    pub dir: Option<PathBuf>,
    /// Bound of the artifact cache, in bytes.
    pub max_bytes: Option<u64>,
    /// Bytes one function's unfinished blob writes may spool (under
    /// `<dir>/blob-spool`).
    pub max_blob_spool_bytes: Option<u64>,
}

/// `[registry]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Registries reached over plain HTTP.
    #[serde(default)]
    pub insecure: Vec<String>,
    /// Largest layer accepted, in bytes.
    pub max_layer_bytes: Option<u64>,
    /// Largest manifest or image config accepted, in bytes.
    pub max_manifest_bytes: Option<u64>,
    /// Largest image (config plus layers) accepted, in bytes.
    pub max_image_bytes: Option<u64>,
    /// Most bytes decompressed looking for the component, in bytes.
    pub max_unpacked_bytes: Option<u64>,
}

/// `[prewarm]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrewarmConfig {
    /// References pulled and compiled at start.
    #[serde(default)]
    pub images: Vec<String>,
    /// Idle instances kept for functions started from these images (unless
    /// the function asks for its own, e.g. by the `hearth.dev/min-idle` Pod
    /// annotation).
    #[serde(default)]
    pub min_idle: u32,
}

/// Default instance slots of the pooling allocator on a node.
pub const DEFAULT_INSTANCE_SLOTS: u32 = 512;
/// Default bound of compiled code kept in memory.
pub const DEFAULT_COMPILED_MEMORY_BYTES: u64 = 1 << 30;
/// Default bound of compiled code kept on disk.
pub const DEFAULT_COMPILED_DISK_BYTES: u64 = 4 << 30;

impl PoolConfig {
    /// Calls per instance before it retires, by default.
    pub fn max_invocations(&self) -> u32 {
        self.max_invocations.unwrap_or(1)
    }
}

/// `[invoke]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvokeConfig {
    /// Base URLs of functions not loaded on this node.
    #[serde(default)]
    pub targets: BTreeMap<String, String>,
    /// The cluster's DNS domain: `NAME.NAMESPACE.svc.DOMAIN` is tried for
    /// functions not loaded here.
    pub cluster_domain: Option<String>,
    /// Longest chain of calls.
    pub max_depth: Option<u32>,
    /// Timeout of a call that gives none.
    pub default_timeout_ms: Option<u64>,
    /// Extra attempts for idempotent calls.
    pub retries: Option<u32>,
    /// Consecutive failures that open a target's circuit.
    pub breaker_failures: Option<u32>,
    /// How long an open circuit stays open.
    pub breaker_open_ms: Option<u64>,
}

impl InvokeConfig {
    /// The settings, defaults filled in; plain target names are in
    /// `default_namespace`.
    pub fn settings(&self, default_namespace: &str) -> InvokeSettings {
        let defaults = InvokeSettings::default();
        InvokeSettings {
            targets: self.targets.clone(),
            default_namespace: default_namespace.to_string(),
            cluster_domain: self.cluster_domain.clone(),
            max_depth: self.max_depth.unwrap_or(defaults.max_depth),
            default_timeout: self
                .default_timeout_ms
                .map(std::time::Duration::from_millis)
                .unwrap_or(defaults.default_timeout),
            retries: self.retries.unwrap_or(defaults.retries),
            breaker_failures: self.breaker_failures.unwrap_or(defaults.breaker_failures),
            breaker_open: self
                .breaker_open_ms
                .map(std::time::Duration::from_millis)
                .unwrap_or(defaults.breaker_open),
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Where `/metrics`, `/healthz` and `/readyz` are served; none if unset.
    pub listen: Option<SocketAddr>,
}

/// `[pool]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Instance slots reserved in the pooling allocator: the most instances,
    /// idle and busy, alive at once on this node.
    pub instance_slots: Option<u32>,
    /// Default calls per instance before it is retired.
    pub max_invocations: Option<u32>,
    /// Bound of compiled code kept in memory; least recently used functions
    /// that nothing runs are evicted past it (and reloaded from disk).
    pub compiled_memory_bytes: Option<u64>,
    /// Bound of compiled code kept on disk, least recently used evicted
    /// first (evicted functions compile again when next seen).
    pub compiled_disk_bytes: Option<u64>,
    /// Written memory a pooled slot keeps mapped, reset, for its next
    /// instance (see [`EngineSettings::keep_resident_bytes`]); 0 turns it
    /// off.
    pub keep_resident_bytes: Option<usize>,
}

impl HearthConfig {
    /// Reads, parses and validates `file`. Relative paths (functions,
    /// cache, local backends, config dirs) are resolved against the file's
    /// directory.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let error = |problem| ConfigError {
            file: file.to_owned(),
            problem,
        };
        let text = std::fs::read_to_string(file).map_err(|e| error(ConfigProblem::Read(e)))?;
        let mut config = Self::parse(&text).map_err(|e| error(ConfigProblem::Syntax(e)))?;
        let base = file.parent().unwrap_or(Path::new("."));
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        };
        if let Some(dir) = &mut config.cache.dir {
            resolve(dir);
        }
        for function in &mut config.function {
            function.path.as_mut().map(resolve);
            function.config_dir.as_mut().map(resolve);
        }
        config.state.resolve_paths(base);
        config.messaging.resolve_paths(base);
        config.blob.resolve_paths(base);
        config
            .validate()
            .map_err(|e| error(ConfigProblem::Invalid(e)))?;
        Ok(config)
    }

    /// Parses TOML text without touching the filesystem.
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Checks everything `parse` cannot: ranges, uniqueness, existing
    /// paths, and that every label a function names is configured.
    pub fn validate(&self) -> Result<(), KeyError> {
        self.limits
            .validate()
            .map_err(|e| KeyError::new(format!("limits.{}", e.key), e.rule))?;
        if self.pool.instance_slots == Some(0) {
            return Err(KeyError::new("pool.instance_slots", "must be at least 1"));
        }
        if self.pool.max_invocations == Some(0) {
            return Err(KeyError::new("pool.max_invocations", "must be at least 1"));
        }
        for (index, image) in self.prewarm.images.iter().enumerate() {
            parse_reference(image)
                .map_err(|e| KeyError::new(format!("prewarm.images[{index}]"), e.to_string()))?;
        }
        self.state.validate()?;
        self.messaging.validate()?;
        self.blob.validate()?;
        self.tenancy
            .validate()
            .map_err(|e| KeyError::new("tenancy", e))?;
        for (namespace, policy) in &self.tenancy.namespaces {
            let key = |field: &str| format!("tenancy.namespaces.{namespace}.{field}");
            if let Some(label) = policy.shared_stores.iter().find(|l| !self.state.knows(l)) {
                return Err(self.state.unknown_label(key("shared_stores"), label));
            }
            if let Some(label) = policy.brokers.iter().find(|l| !self.messaging.knows(l)) {
                return Err(self.messaging.unknown_label(key("brokers"), label));
            }
        }
        let mut names = BTreeMap::new();
        let mut listens = BTreeMap::new();
        for (index, function) in self.function.iter().enumerate() {
            let key =
                |field: &str| format!("function[{index}].{field} (function `{}`)", function.name);
            if function.name.is_empty() {
                return Err(KeyError::new(
                    format!("function[{index}].name"),
                    "must not be empty",
                ));
            }
            if let Some(first) = names.insert(function.name.as_str(), index) {
                return Err(KeyError::new(
                    key("name"),
                    format!("the name is already used by function[{first}]"),
                ));
            }
            if let Some(listen) = function.listen
                && let Some(first) = listens.insert(listen, index)
            {
                return Err(KeyError::new(
                    key("listen"),
                    format!("{listen} is already used by function[{first}]"),
                ));
            }
            if function.listen.is_none() && function.subscribe.is_empty() {
                return Err(KeyError::new(
                    key("listen"),
                    "missing; give `listen` (serve HTTP) or [[function.subscribe]] entries (handle messages), or both",
                ));
            }
            for (n, subscribe) in function.subscribe.iter().enumerate() {
                let field = |f: &str| key(&format!("subscribe[{n}].{f}"));
                let invalid = |f: &str, e: MessagingError| KeyError::new(field(f), e.to_string());
                validate_guest_topic(&subscribe.topic).map_err(|e| invalid("topic", e))?;
                if let Some(group) = &subscribe.group {
                    hearth_messaging::validate_topic(group).map_err(|e| invalid("group", e))?;
                }
                if let Some(dead_letters) = &subscribe.dead_letter_topic {
                    validate_guest_topic(dead_letters)
                        .map_err(|e| invalid("dead_letter_topic", e))?;
                }
                for (name, value) in [
                    ("concurrency", subscribe.concurrency.map(u64::from)),
                    ("max_deliveries", subscribe.max_deliveries.map(u64::from)),
                    ("visibility_ms", subscribe.visibility_ms),
                ] {
                    if value == Some(0) {
                        return Err(KeyError::new(field(name), "must be at least 1"));
                    }
                }
            }
            match (&function.path, &function.image) {
                (Some(path), None) => {
                    if !path.is_file() {
                        return Err(KeyError::new(
                            key("path"),
                            format!("no such file: {}", path.display()),
                        ));
                    }
                }
                (None, Some(image)) => {
                    parse_reference(image)
                        .map_err(|e| KeyError::new(key("image"), e.to_string()))?;
                }
                (Some(_), Some(_)) => {
                    return Err(KeyError::new(
                        key("path"),
                        "give `path` or `image`, not both",
                    ));
                }
                (None, None) => {
                    return Err(KeyError::new(
                        key("path"),
                        "missing; give `path` (a .wasm file) or `image` (a reference)",
                    ));
                }
            }
            if let Some(label) = &function.broker
                && !self.messaging.knows(label)
            {
                return Err(self.messaging.unknown_label(key("broker"), label));
            }
            if let Some(label) = &function.state_store
                && !self.state.knows(label)
            {
                return Err(self.state.unknown_label(key("state_store"), label));
            }
            if let Some(label) = function.shared_stores.iter().find(|l| !self.state.knows(l)) {
                return Err(self.state.unknown_label(key("shared_stores"), label));
            }
            if let Some(label) = &function.blob_store
                && !self.blob.knows(label)
            {
                return Err(self.blob.unknown_label(key("blob_store"), label));
            }
            if let Some(app) = &function.app {
                hearth_state::Namespace::new(app).map_err(|e| KeyError::new(key("app"), e))?;
            }
            if let Some(namespace) = &function.namespace
                && !crate::tenancy::is_dns_label(namespace)
            {
                return Err(KeyError::new(
                    key("namespace"),
                    crate::tenancy::IdentityError::Namespace(namespace.clone()).to_string(),
                ));
            }
            if function.max_invocations == Some(0) {
                return Err(KeyError::new(key("max_invocations"), "must be at least 1"));
            }
            function
                .limits
                .apply(self.limits)
                .validate()
                .map_err(|e| KeyError::new(format!("{}.{}", key("limits"), e.key), e.rule))?;
        }
        Ok(())
    }

    /// What the node fills in where a function says nothing.
    pub fn node_defaults(&self) -> NodeDefaults {
        NodeDefaults {
            limits: self.limits,
            min_idle: 0,
            max_invocations: self.pool.max_invocations(),
            tenancy: std::sync::Arc::new(self.tenancy.clone()),
        }
    }

    /// The host's capabilities: every state store, broker and blob store
    /// this file asks for (a local `default` of each kind when it names
    /// none, under the cache dir) and the invoke settings. Remote backends
    /// connect lazily (NATS in the background), so hearthd starts while
    /// they are down.
    pub async fn host_capabilities(&self) -> Result<HostCapabilities, KeyError> {
        let cache_dir = self.cache.dir.clone().unwrap_or_else(default_cache_dir);
        let (stores, default_store) = self.state.build(&cache_dir).await?;
        let (brokers, default_broker) = self.messaging.build(&cache_dir).await?;
        let (blob_stores, default_blob_store) = self.blob.build(&cache_dir).await?;
        Ok(HostCapabilities::new(
            stores,
            default_store,
            self.invoke.settings(&self.tenancy.default_namespace),
        )
        .with_brokers(brokers, default_broker)
        .with_blob_stores(blob_stores, default_blob_store)
        .with_blob_spool(SpoolSettings {
            dir: cache_dir.join("blob-spool"),
            max_bytes_per_function: self
                .cache
                .max_blob_spool_bytes
                .unwrap_or(crate::capabilities::blobstore::DEFAULT_MAX_SPOOL_BYTES),
        }))
    }

    /// The cache and registry settings this file asks for.
    pub fn cache_settings(&self) -> CacheSettings {
        let defaults = RegistrySettings::default();
        CacheSettings {
            dir: self.cache.dir.clone().unwrap_or_else(default_cache_dir),
            max_artifact_bytes: self.cache.max_bytes.unwrap_or(DEFAULT_ARTIFACT_CACHE_BYTES),
            registry: RegistrySettings {
                insecure_registries: self.registry.insecure.clone(),
                max_layer_bytes: self
                    .registry
                    .max_layer_bytes
                    .unwrap_or(defaults.max_layer_bytes),
                max_manifest_bytes: self
                    .registry
                    .max_manifest_bytes
                    .unwrap_or(defaults.max_manifest_bytes),
                max_image_bytes: self
                    .registry
                    .max_image_bytes
                    .unwrap_or(defaults.max_image_bytes),
                max_unpacked_bytes: self
                    .registry
                    .max_unpacked_bytes
                    .unwrap_or(defaults.max_unpacked_bytes),
                ..defaults
            },
            max_compiled_memory_bytes: Some(
                self.pool
                    .compiled_memory_bytes
                    .unwrap_or(DEFAULT_COMPILED_MEMORY_BYTES),
            ),
            max_compiled_disk_bytes: Some(
                self.pool
                    .compiled_disk_bytes
                    .unwrap_or(DEFAULT_COMPILED_DISK_BYTES),
            ),
        }
    }

    /// The engine hearthd runs: room for every configured function's
    /// instances, and at least `[pool] instance_slots` instances in all.
    pub fn engine_settings(&self) -> EngineSettings {
        let mut settings = EngineSettings::for_limits(&self.all_limits());
        settings.total_instances = settings
            .total_instances
            .max(self.pool.instance_slots.unwrap_or(DEFAULT_INSTANCE_SLOTS));
        if let Some(bytes) = self.pool.keep_resident_bytes {
            settings.keep_resident_bytes = bytes;
        }
        settings
    }

    /// The limits of every function, after overrides.
    pub fn all_limits(&self) -> Vec<Limits> {
        self.function
            .iter()
            .map(|f| f.limits.apply(self.limits))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error validating `text` gets (it must parse).
    fn validate_error(text: &str) -> String {
        HearthConfig::parse(text)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string()
    }

    /// The error `text` gets, from parsing or else from validating.
    fn first_error(text: &str) -> String {
        match HearthConfig::parse(text) {
            Err(error) => error.to_string(),
            Ok(config) => config.validate().unwrap_err().to_string(),
        }
    }

    #[test]
    fn the_tenancy_policy_is_read_and_its_labels_and_names_checked() {
        let config = HearthConfig::parse(
            r#"
[tenancy]
default_namespace = "shop"
[tenancy.namespaces.team-c]
topics = ["team-a:orders"]
invoke = ["cart.team-a"]
outbound_hosts = ["api.example.com"]
"#,
        )
        .unwrap();
        config.validate().unwrap();
        let defaults = config.node_defaults();
        assert_eq!(defaults.tenancy.default_namespace, "shop");
        assert_eq!(
            defaults.tenancy.for_namespace("team-c").invoke,
            ["cart.team-a"]
        );
        let error = validate_error("[tenancy.namespaces.team-c]\nshared_stores = [\"nope\"]\n");
        assert!(
            error.starts_with("tenancy.namespaces.team-c.shared_stores")
                && error.contains("`nope`"),
            "{error}"
        );
        let error = validate_error("[tenancy.namespaces.team-c]\nbrokers = [\"nope\"]\n");
        assert!(
            error.starts_with("tenancy.namespaces.team-c.brokers"),
            "{error}"
        );
        let error = validate_error("[tenancy.namespaces.Team_C]\n");
        assert!(error.starts_with("tenancy: namespaces"), "{error}");
        let error = first_error("[tenancy.namespaces.team-c]\nreach = []\n");
        assert!(error.contains("unknown field"), "{error}");
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn empty_file_is_daemon_mode() {
        let dir = tempfile::tempdir().unwrap();
        let config = HearthConfig::load(&write(dir.path(), "hearth.toml", "")).unwrap();
        assert!(config.function.is_empty());
        assert_eq!(config.limits, Limits::default());
    }

    #[test]
    fn full_file_loads_with_overrides_and_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "hello.wasm", "");
        let file = write(
            dir.path(),
            "hearth.toml",
            r#"
[limits]
request_timeout_ms = 1000
[[function]]
name = "hello"
path = "hello.wasm"
listen = "127.0.0.1:18080"
env = { GREETING = "hi" }
[function.limits]
max_memory_mib = 16
"#,
        );
        let config = HearthConfig::load(&file).unwrap();
        let function = &config.function[0];
        assert_eq!(function.path, Some(dir.path().join("hello.wasm")));
        let env = function.spec().into_env(&config.node_defaults()).unwrap();
        assert_eq!(env.limits.request_timeout_ms, 1000);
        assert_eq!(env.limits.max_memory_mib, 16);
        assert_eq!(env.env, vec![("GREETING".to_string(), "hi".to_string())]);
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "hearth.toml", "[limits]\nmax_memroy_mib = 3\n");
        let message = HearthConfig::load(&file).unwrap_err().to_string();
        assert!(message.contains("hearth.toml"), "{message}");
        assert!(message.contains("max_memroy_mib"), "{message}");
    }

    #[test]
    fn unknown_top_level_table_is_an_error() {
        let message = HearthConfig::parse("[prewarn]\nimages = []\n")
            .unwrap_err()
            .to_string();
        assert!(message.contains("prewarn"), "{message}");
    }

    #[test]
    fn missing_key_is_named() {
        let message = validate_error("[[function]]\nname = \"a\"\npath = \"Cargo.toml\"\n");
        assert!(message.contains("function[0].listen"), "{message}");
        assert!(message.contains("[[function.subscribe]]"), "{message}");
        let message = validate_error("[[function]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n");
        assert!(message.contains("function[0].path"), "{message}");
        assert!(message.contains("`image`"), "{message}");
    }

    #[test]
    fn image_functions_prewarm_and_cache_sections_load() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "hearth.toml",
            r#"
[cache]
dir = "cache"
max_bytes = 1000
[registry]
insecure = ["registry.lan:5000"]
[prewarm]
images = ["127.0.0.1:5000/fn/hello:1"]
[[function]]
name = "hello"
image = "127.0.0.1:5000/fn/hello:1"
listen = "127.0.0.1:18080"
"#,
        );
        let config = HearthConfig::load(&file).unwrap();
        let caches = config.cache_settings();
        assert_eq!(caches.dir, dir.path().join("cache"));
        assert_eq!(caches.max_artifact_bytes, 1000);
        assert_eq!(caches.registry.insecure_registries, ["registry.lan:5000"]);
        assert_eq!(
            config.function[0].image.as_deref(),
            Some("127.0.0.1:5000/fn/hello:1")
        );
    }

    #[test]
    fn malformed_references_are_named_with_their_key() {
        let message = validate_error("[prewarm]\nimages = [\"Bad Ref\"]\n");
        assert!(message.contains("prewarm.images[0]"), "{message}");
        let message = validate_error(
            "[[function]]\nname = \"a\"\nimage = \"x:y:z:w\"\nlisten = \"127.0.0.1:1\"\n",
        );
        assert!(message.contains("function[0].image"), "{message}");
    }

    #[test]
    fn missing_function_file_names_key_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "hearth.toml",
            "[[function]]\nname = \"a\"\npath = \"nope.wasm\"\nlisten = \"127.0.0.1:1\"\n",
        );
        let message = HearthConfig::load(&file).unwrap_err().to_string();
        assert!(message.contains("hearth.toml"), "{message}");
        assert!(message.contains("function[0].path"), "{message}");
        assert!(message.contains("nope.wasm"), "{message}");
    }

    #[test]
    fn duplicate_names_and_listeners_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.wasm", "");
        let twice = |a: &str, b: &str| {
            format!(
                "[[function]]\nname = \"{a}\"\npath = \"a.wasm\"\nlisten = \"127.0.0.1:1\"\n\
                 [[function]]\nname = \"{b}\"\npath = \"a.wasm\"\nlisten = \"127.0.0.1:{}\"\n",
                if a == b { 2 } else { 1 }
            )
        };
        let message = HearthConfig::load(&write(dir.path(), "n.toml", &twice("a", "a")))
            .unwrap_err()
            .to_string();
        assert!(message.contains("function[1].name"), "{message}");
        let message = HearthConfig::load(&write(dir.path(), "l.toml", &twice("a", "b")))
            .unwrap_err()
            .to_string();
        assert!(message.contains("function[1].listen"), "{message}");
    }

    #[test]
    fn out_of_range_limit_is_named() {
        let message = validate_error("[limits]\nmax_memory_mib = 0\n");
        assert!(message.contains("limits.max_memory_mib"), "{message}");
    }

    #[test]
    fn bad_listen_address_is_an_error() {
        let message = HearthConfig::parse(
            "[[function]]\nname = \"a\"\npath = \"a\"\nlisten = \"localhost\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(message.contains("listen"), "{message}");
    }

    #[tokio::test]
    async fn state_invoke_and_function_capabilities_load() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "cart.wasm", "");
        let file = write(
            dir.path(),
            "hearth.toml",
            r#"
[cache]
dir = "cache"
[state]
default_store = "local"
[state.stores.local]
type = "embedded"
path = "data/local.redb"
[state.stores.cache]
type = "redis"
url = "redis://127.0.0.1:1/"
timeout_ms = 100
[invoke]
targets = { billing = "http://10.0.0.7:8080" }
max_depth = 3
[[function]]
name = "cart"
path = "cart.wasm"
listen = "127.0.0.1:18081"
app = "shop"
shared_stores = ["cache"]
config_dir = "cm"
[function.config]
currency = "EUR"
"#,
        );
        let config = HearthConfig::load(&file).unwrap();
        assert_eq!(
            config.state.backends["local"],
            hearth_state::config::StoreConfig::Embedded(hearth_state::config::EmbeddedConfig {
                path: Some(dir.path().join("data/local.redb")),
                ..Default::default()
            })
        );
        let env = config.function[0]
            .spec()
            .into_env(&config.node_defaults())
            .unwrap();
        assert_eq!(env.grants.app.as_deref(), Some("shop"));
        assert_eq!(env.grants.shared_stores, ["cache"]);
        assert_eq!(env.grants.config_dirs, vec![dir.path().join("cm")]);
        assert_eq!(env.grants.config["currency"], "EUR");
        let capabilities = config.host_capabilities().await.unwrap();
        assert_eq!(capabilities.default_store.as_deref(), Some("local"));
        assert_eq!(capabilities.stores["cache"].kind(), "redis");
        assert_eq!(capabilities.invoke.max_depth, 3);
        assert_eq!(
            capabilities.invoke.targets["billing"],
            "http://10.0.0.7:8080"
        );
    }

    #[tokio::test]
    async fn without_state_stores_there_is_one_embedded_default_under_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "hearth.toml", "[cache]\ndir = \"c\"\n");
        let capabilities = HearthConfig::load(&file)
            .unwrap()
            .host_capabilities()
            .await
            .unwrap();
        assert_eq!(capabilities.stores["default"].kind(), "embedded");
        assert!(dir.path().join("c/state/default.redb").is_file());
    }

    #[test]
    fn state_errors_name_the_key() {
        let cases = [
            (
                "[state.stores.s]\ntype = \"redis\"\n",
                "state.stores.s: missing field `url`",
            ),
            (
                "[state.stores.s]\ntype = \"embedded\"\nurl = \"redis://x\"\n",
                "state.stores.s: unknown field `url`",
            ),
            ("[state.stores.s]\ntype = \"mongo\"\n", "mongo"),
            ("[state]\ndefault_store = \"nope\"\n", "state.default_store"),
            (
                "[[function]]\nname = \"f\"\nimage = \"r/f:1\"\nlisten = \"127.0.0.1:1\"\nshared_stores = [\"nope\"]\n",
                "function[0].shared_stores (function `f`): no store labelled `nope`",
            ),
            (
                "[[function]]\nname = \"f\"\nimage = \"r/f:1\"\nlisten = \"127.0.0.1:1\"\napp = \"Bad App\"\n",
                "function[0].app",
            ),
        ];
        for (text, expected) in cases {
            let message = first_error(text);
            assert!(message.contains(expected), "{text}: {message}");
        }
    }

    #[tokio::test]
    async fn blob_stores_default_to_fs_under_the_cache_and_build_as_configured() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "hearth.toml", "[cache]\ndir = \"c\"\n");
        let capabilities = HearthConfig::load(&file)
            .unwrap()
            .host_capabilities()
            .await
            .unwrap();
        let (stores, default) = (
            &capabilities.blob_stores,
            capabilities.default_blob_store.as_deref(),
        );
        assert_eq!(stores["default"].kind(), "fs");
        assert_eq!(default, Some("default"), "the only store is the default");
        assert!(dir.path().join("c/blob/default").is_dir());

        let file = write(
            dir.path(),
            "hearth.toml",
            "[cache]\ndir = \"c2\"\n[blob]\ndefault_store = \"node\"\n\
             [blob.stores.local]\ntype = \"fs\"\npath = \"blobs\"\nmax_object_bytes = 1024\n\
             [blob.stores.archive]\ntype = \"s3\"\nendpoint = \"http://127.0.0.1:1\"\nbucket = \"b\"\n\
             access_key_id = \"k\"\nsecret_access_key = \"s\"\n\
             [blob.stores.node]\ntype = \"remote\"\naddress = \"127.0.0.1:1\"\ntimeout_ms = 100\n",
        );
        let capabilities = HearthConfig::load(&file)
            .unwrap()
            .host_capabilities()
            .await
            .unwrap();
        let (stores, default) = (
            &capabilities.blob_stores,
            capabilities.default_blob_store.as_deref(),
        );
        assert_eq!(default, Some("node"));
        assert_eq!(stores["local"].limits().max_object_bytes, 1024);
        assert!(dir.path().join("blobs").is_dir(), "relative to the file");
        assert_eq!(stores["archive"].kind(), "s3");
        assert_eq!(stores["node"].kind(), "remote");
    }

    #[test]
    fn blob_errors_name_the_key() {
        let function = "[[function]]\nname = \"f\"\nimage = \"r/f:1\"\nlisten = \"127.0.0.1:1\"\n";
        let cases = [
            (
                "[blob.stores.a]\ntype = \"s3\"\nbucket = \"b\"\n",
                "blob.stores.a: missing field `endpoint`",
            ),
            (
                "[blob.stores.a]\ntype = \"remote\"\n",
                "blob.stores.a: missing field `address`",
            ),
            (
                "[blob.stores.a]\ntype = \"fs\"\naddress = \"x:1\"\n",
                "blob.stores.a: unknown field `address`",
            ),
            ("[blob.stores.a]\ntype = \"ftp\"\n", "ftp"),
            ("[blob]\ndefault_store = \"nope\"\n", "blob.default_store"),
            (
                "[blob.stores.a]\ntype = \"remote\"\naddress = \"x:1\"\ntransport = \"rdma\"\n",
                "blob.stores.a.rdma_device: missing",
            ),
            (
                "[blob.stores.a]\ntype = \"remote\"\naddress = \"x:1\"\ntransport = \"udp\"\n",
                "blob.stores.a.transport: `udp` is not tcp or rdma",
            ),
            (
                "[blob.stores.a]\ntype = \"remote\"\naddress = \"x:1\"\nwrites = \"sideways\"\n",
                "blob.stores.a.writes: `sideways` is not messages or one-sided",
            ),
            (
                "[blob.stores.a]\ntype = \"fs\"\nmax_object_bytes = 0\n",
                "must be at least 1",
            ),
        ];
        for (text, expected) in cases {
            let message = first_error(text);
            assert!(message.contains(expected), "{text}: {message}");
        }
        let unknown = validate_error(&format!("{function}blob_store = \"nope\"\n"));
        assert!(
            unknown
                .contains("function[0].blob_store (function `f`): no blob store labelled `nope`"),
            "{unknown}"
        );
        #[cfg(not(feature = "rdma"))]
        {
            let text = "[blob.stores.a]\ntype = \"remote\"\naddress = \"x:1\"\ntransport = \"rdma\"\nrdma_device = \"rxe0\"\n";
            let message = validate_error(text);
            assert!(
                message.contains("built without the `rdma` feature"),
                "{message}"
            );
        }
    }
}
