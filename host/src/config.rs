//! `hearth.toml`: what hearthd serves and under which limits.
//!
//! ```toml
//! [limits]                      # defaults for every function (all optional)
//! request_timeout_ms = 30000
//! max_memory_mib = 128
//! max_request_body_bytes = 10485760
//! max_concurrent_instances = 64
//!
//! [cache]                       # optional
//! dir = "/var/lib/hearth"       # default: see hearth_host::distribution
//! max_bytes = 2147483648        # bound of the artifact cache
//!
//! [registry]                    # optional
//! insecure = ["registry.lan:5000"]  # plain HTTP; loopback registries always are
//! max_layer_bytes = 268435456
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
//! [messaging.brokers.events]
//! type = "nats"
//! url = "nats://127.0.0.1:4222"
//! timeout_ms = 5000             # per call
//! retention_hours = 168         # how long a stream keeps messages (nats)
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
//!
//! [invoke]                      # optional
//! targets = { billing = "http://10.0.0.7:8080" }   # functions not loaded here
//! service_domain = "default.svc.cluster.local"    # else try http://NAME.DOMAIN
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
//! app = "shop"                  # optional; its state namespace (default: its name)
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

use crate::capabilities::{CapabilityGrants, HostCapabilities, InvokeSettings};
use crate::distribution::{CacheSettings, DEFAULT_ARTIFACT_CACHE_BYTES, default_cache_dir};
use crate::engine::EngineSettings;
use crate::function_env::FunctionEnv;
use crate::limits::Limits;
use hearth_prewarm::pool::PoolSettings;
use hearth_prewarm::registry::{RegistrySettings, parse_reference};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A configuration error, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", file.display())]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// What is wrong, naming the key.
    pub message: String,
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
    pub state: StateConfig,
    /// Service invocation.
    #[serde(default)]
    pub invoke: InvokeConfig,
    /// Blob stores.
    #[serde(default)]
    pub blob: BlobConfig,
    /// Message brokers.
    #[serde(default)]
    pub messaging: MessagingConfig,
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

/// `[state]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// The store a function's own app uses unless it names one.
    pub default_store: Option<String>,
    /// Stores by label.
    #[serde(default)]
    pub stores: BTreeMap<String, StoreConfig>,
}

/// A state backend type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// redb on this node.
    Embedded,
    /// A Redis server.
    Redis,
    /// A PostgreSQL database.
    Postgres,
}

/// `[state.stores.LABEL]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The backend.
    #[serde(rename = "type")]
    pub kind: StoreKind,
    /// The file (embedded); relative to the config file.
    pub path: Option<PathBuf>,
    /// The server (redis, postgres).
    pub url: Option<String>,
    /// Bound of one call to a remote backend.
    pub timeout_ms: Option<u64>,
    /// Largest value.
    pub max_value_bytes: Option<u64>,
    /// Bytes of recently read entries an embedded store keeps in memory
    /// (default 64 MiB; 0 turns the cache off).
    pub cache_bytes: Option<u64>,
}

/// Default bound of one call to a remote state backend.
pub const DEFAULT_STATE_TIMEOUT_MS: u64 = 2000;

/// `[blob]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobConfig {
    /// The store functions use unless they name one.
    pub default_store: Option<String>,
    /// Stores by label.
    #[serde(default)]
    pub stores: BTreeMap<String, BlobStoreConfig>,
}

/// A blob backend type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobKind {
    /// A directory on this node.
    Fs,
    /// A bucket of an S3-compatible server.
    S3,
    /// A `hearth-store` storage node over TCP.
    Remote,
}

/// `[blob.stores.LABEL]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobStoreConfig {
    /// The backend.
    #[serde(rename = "type")]
    pub kind: BlobKind,
    /// The directory (fs); relative to the config file.
    pub path: Option<PathBuf>,
    /// The server (s3).
    pub endpoint: Option<String>,
    /// The bucket (s3).
    pub bucket: Option<String>,
    /// The region requests are signed for (s3).
    pub region: Option<String>,
    /// Access key id (s3); default `$AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// Secret (s3); default `$AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<String>,
    /// The storage node, `host:port` (remote).
    pub address: Option<String>,
    /// `tcp` (default) or `rdma` (remote).
    pub transport: Option<String>,
    /// The RDMA device for `transport = "rdma"`.
    pub rdma_device: Option<String>,
    /// Bound of one request (s3, remote).
    pub timeout_ms: Option<u64>,
    /// The largest object.
    pub max_object_bytes: Option<u64>,
}

/// How a `remote` blob store reaches its node: TCP, or RDMA verbs when
/// hearthd is built with the `rdma` feature.
fn remote_connector(
    store: &BlobStoreConfig,
    address: std::net::SocketAddr,
    timeout: std::time::Duration,
) -> Result<hearth_blob::remote::Connector, String> {
    #[cfg(feature = "rdma")]
    if let Some(device) = &store.rdma_device {
        let device = hearth_blob::rdma::VerbsDevice::open(device)
            .map_err(|e| format!("rdma_device: {e}"))?;
        return Ok(hearth_blob::rdma::rdma_connector(device, address, timeout));
    }
    let _ = store;
    Ok(hearth_blob::remote::tcp_connector(address, timeout))
}

/// Default bound of one request to a remote blob backend.
pub const DEFAULT_BLOB_TIMEOUT_MS: u64 = 10_000;

/// `[messaging]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagingConfig {
    /// The broker functions use unless they name one.
    pub default_broker: Option<String>,
    /// Brokers by label.
    #[serde(default)]
    pub brokers: BTreeMap<String, BrokerConfig>,
}

/// A messaging backend type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// A durable log in redb on this node.
    Embedded,
    /// A NATS server with JetStream.
    Nats,
}

/// `[messaging.brokers.LABEL]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// The backend.
    #[serde(rename = "type")]
    pub kind: BrokerKind,
    /// The file (embedded); relative to the config file.
    pub path: Option<PathBuf>,
    /// The server (nats).
    pub url: Option<String>,
    /// Bound of one call.
    pub timeout_ms: Option<u64>,
    /// How long a NATS stream keeps messages.
    pub retention_hours: Option<u64>,
    /// Largest message (payload + key + headers).
    pub max_message_bytes: Option<u64>,
}

/// One `[[function.subscribe]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeConfig {
    /// The topic.
    pub topic: String,
    /// The consumer group (default: the function's name).
    pub group: Option<String>,
    /// Handler invocations in flight.
    pub concurrency: Option<u32>,
    /// Visibility timeout.
    pub visibility_ms: Option<u64>,
    /// Attempts before dead-lettering.
    pub max_deliveries: Option<u32>,
    /// First redelivery delay.
    pub backoff_ms: Option<u64>,
    /// Longest redelivery delay.
    pub max_backoff_ms: Option<u64>,
    /// The dead-letter topic.
    pub dead_letter_topic: Option<String>,
}

impl SubscribeConfig {
    /// The trigger's settings for `function`.
    pub fn settings(&self, function: &str) -> crate::messages::SubscriptionSettings {
        let group = self
            .group
            .clone()
            .unwrap_or_else(|| crate::messages::SubscriptionSettings::default_group(function));
        let mut settings = crate::messages::SubscriptionSettings::new(&self.topic, &group);
        let ms = std::time::Duration::from_millis;
        if let Some(v) = self.concurrency {
            settings.concurrency = v;
        }
        if let Some(v) = self.visibility_ms {
            settings.visibility = ms(v);
        }
        if let Some(v) = self.max_deliveries {
            settings.max_deliveries = v;
        }
        if let Some(v) = self.backoff_ms {
            settings.backoff = ms(v);
        }
        if let Some(v) = self.max_backoff_ms {
            settings.max_backoff = ms(v);
        }
        settings.dead_letter_topic = self.dead_letter_topic.clone();
        settings
    }
}

/// `[invoke]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvokeConfig {
    /// Base URLs of functions not loaded on this node.
    #[serde(default)]
    pub targets: BTreeMap<String, String>,
    /// Kubernetes Service domain tried for other names.
    pub service_domain: Option<String>,
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
    /// The settings, defaults filled in.
    pub fn settings(&self) -> InvokeSettings {
        let defaults = InvokeSettings::default();
        InvokeSettings {
            targets: self.targets.clone(),
            service_domain: self.service_domain.clone(),
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
}

/// One `[[function]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionConfig {
    /// Unique name; tags logs and errors.
    pub name: String,
    /// The component file; relative paths are relative to the config file.
    pub path: Option<PathBuf>,
    /// Or: the image reference to pull it from.
    pub image: Option<String>,
    /// Address to serve HTTP on (services).
    pub listen: Option<SocketAddr>,
    /// Environment variables for the guest.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Hosts outbound HTTP may reach.
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    /// Overrides of the default limits.
    #[serde(default)]
    pub limits: LimitsOverride,
    /// Idle instances kept ready.
    #[serde(default)]
    pub min_idle: u32,
    /// Calls per instance before it retires; default `[pool] max_invocations`.
    pub max_invocations: Option<u32>,
    /// Its app (state namespace); default its name.
    pub app: Option<String>,
    /// The label of its own store; default `[state] default_store`.
    pub state_store: Option<String>,
    /// Shared store labels it may open by name.
    #[serde(default)]
    pub shared_stores: Vec<String>,
    /// `wasi:config` values.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// A mounted ConfigMap directory read for `wasi:config`.
    pub config_dir: Option<PathBuf>,
    /// The broker it publishes to and subscribes on.
    pub broker: Option<String>,
    /// Topics it may publish to; any if unset.
    pub publish_topics: Option<Vec<String>>,
    /// The label of its blob store; default `[blob] default_store`.
    pub blob_store: Option<String>,
    /// Subscriptions that trigger its message handler.
    #[serde(default)]
    pub subscribe: Vec<SubscribeConfig>,
}

/// Per-function limit overrides; unset fields take the defaults.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsOverride {
    /// See [`Limits::request_timeout_ms`].
    pub request_timeout_ms: Option<u64>,
    /// See [`Limits::max_memory_mib`].
    pub max_memory_mib: Option<u64>,
    /// See [`Limits::max_request_body_bytes`].
    pub max_request_body_bytes: Option<u64>,
    /// See [`Limits::max_concurrent_instances`].
    pub max_concurrent_instances: Option<u32>,
}

impl LimitsOverride {
    /// `defaults` with these overrides applied.
    pub fn apply(&self, defaults: Limits) -> Limits {
        Limits {
            request_timeout_ms: self
                .request_timeout_ms
                .unwrap_or(defaults.request_timeout_ms),
            max_memory_mib: self.max_memory_mib.unwrap_or(defaults.max_memory_mib),
            max_request_body_bytes: self
                .max_request_body_bytes
                .unwrap_or(defaults.max_request_body_bytes),
            max_concurrent_instances: self
                .max_concurrent_instances
                .unwrap_or(defaults.max_concurrent_instances),
        }
    }
}

impl FunctionConfig {
    /// The environment instances of this function start with.
    pub fn function_env(&self, defaults: Limits, pool: &PoolConfig) -> FunctionEnv {
        FunctionEnv {
            name: self.name.as_str().into(),
            env: self
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            args: vec![self.name.clone()],
            allowed_outbound_hosts: Arc::from(self.allowed_outbound_hosts.clone()),
            limits: self.limits.apply(defaults),
            output_files: None,
            memory: Default::default(),
            pool: PoolSettings {
                min_idle: self.min_idle,
                max_invocations: self.max_invocations.unwrap_or(pool.max_invocations()),
                ..PoolSettings::default()
            },
            grants: CapabilityGrants {
                app: self.app.clone(),
                state_store: self.state_store.clone(),
                shared_stores: self.shared_stores.clone(),
                config: self.config.clone(),
                config_dir: self.config_dir.clone(),
                broker: self.broker.clone(),
                publish_topics: self.publish_topics.clone(),
                blob_store: self.blob_store.clone(),
            },
        }
    }
}

impl HearthConfig {
    /// Reads, parses and validates `file`. Relative function paths are
    /// resolved against the file's directory.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let error = |message: String| ConfigError {
            file: file.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(file).map_err(|e| error(format!("cannot read: {e}")))?;
        let mut config = Self::parse(&text).map_err(error)?;
        let base = file.parent().unwrap_or(Path::new("."));
        for function in &mut config.function {
            if let Some(path) = &mut function.path
                && path.is_relative()
            {
                *path = base.join(&*path);
            }
        }
        if let Some(dir) = &mut config.cache.dir
            && dir.is_relative()
        {
            *dir = base.join(&*dir);
        }
        for broker in config.messaging.brokers.values_mut() {
            if let Some(path) = &mut broker.path
                && path.is_relative()
            {
                *path = base.join(&*path);
            }
        }
        for store in config.blob.stores.values_mut() {
            if let Some(path) = &mut store.path
                && path.is_relative()
            {
                *path = base.join(&*path);
            }
        }
        for store in config.state.stores.values_mut() {
            if let Some(path) = &mut store.path
                && path.is_relative()
            {
                *path = base.join(&*path);
            }
        }
        for function in &mut config.function {
            if let Some(dir) = &mut function.config_dir
                && dir.is_relative()
            {
                *dir = base.join(&*dir);
            }
        }
        config.validate().map_err(error)?;
        Ok(config)
    }

    /// Parses TOML text without touching the filesystem.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    /// Checks everything `parse` cannot: ranges, uniqueness, existing paths.
    pub fn validate(&self) -> Result<(), String> {
        self.limits.validate().map_err(|e| format!("limits.{e}"))?;
        if self.pool.instance_slots == Some(0) {
            return Err("pool.instance_slots: must be at least 1".into());
        }
        if self.pool.max_invocations == Some(0) {
            return Err("pool.max_invocations: must be at least 1".into());
        }
        for (index, image) in self.prewarm.images.iter().enumerate() {
            parse_reference(image).map_err(|e| format!("prewarm.images[{index}]: {e}"))?;
        }
        self.validate_state()?;
        self.validate_messaging()?;
        self.validate_blob()?;
        let mut names = BTreeMap::new();
        let mut listens = BTreeMap::new();
        for (index, function) in self.function.iter().enumerate() {
            let key =
                |field: &str| format!("function[{index}].{field} (function `{}`)", function.name);
            if function.name.is_empty() {
                return Err(format!("function[{index}].name: must not be empty"));
            }
            if let Some(first) = names.insert(function.name.as_str(), index) {
                return Err(format!(
                    "{}: the name is already used by function[{first}]",
                    key("name")
                ));
            }
            if let Some(listen) = function.listen
                && let Some(first) = listens.insert(listen, index)
            {
                return Err(format!(
                    "{}: {listen} is already used by function[{first}]",
                    key("listen"),
                ));
            }
            if function.listen.is_none() && function.subscribe.is_empty() {
                return Err(format!(
                    "{}: missing; give `listen` (serve HTTP) or [[function.subscribe]] entries (handle messages), or both",
                    key("listen")
                ));
            }
            let known_broker = |label: &String| {
                self.messaging.brokers.is_empty() && label == "default"
                    || self.messaging.brokers.contains_key(label)
            };
            if let Some(label) = &function.broker
                && !known_broker(label)
            {
                return Err(format!(
                    "{}: no broker labelled `{label}` in [messaging.brokers]",
                    key("broker")
                ));
            }
            for (n, subscribe) in function.subscribe.iter().enumerate() {
                let field = |f: &str| key(&format!("subscribe[{n}].{f}"));
                hearth_messaging::validate_topic(&subscribe.topic)
                    .map_err(|e| format!("{}: {e}", field("topic")))?;
                if let Some(group) = &subscribe.group {
                    hearth_messaging::validate_topic(group)
                        .map_err(|e| format!("{}: {e}", field("group")))?;
                }
                if let Some(topic) = &subscribe.dead_letter_topic {
                    hearth_messaging::validate_topic(topic)
                        .map_err(|e| format!("{}: {e}", field("dead_letter_topic")))?;
                }
                for (name, value) in [
                    ("concurrency", subscribe.concurrency.map(u64::from)),
                    ("max_deliveries", subscribe.max_deliveries.map(u64::from)),
                    ("visibility_ms", subscribe.visibility_ms),
                ] {
                    if value == Some(0) {
                        return Err(format!("{}: must be at least 1", field(name)));
                    }
                }
            }
            match (&function.path, &function.image) {
                (Some(path), None) => {
                    if !path.is_file() {
                        return Err(format!("{}: no such file: {}", key("path"), path.display()));
                    }
                }
                (None, Some(image)) => {
                    parse_reference(image).map_err(|e| format!("{}: {e}", key("image")))?;
                }
                (Some(_), Some(_)) => {
                    return Err(format!("{}: give `path` or `image`, not both", key("path")));
                }
                (None, None) => {
                    return Err(format!(
                        "{}: missing; give `path` (a .wasm file) or `image` (a reference)",
                        key("path")
                    ));
                }
            }
            let known_store = |label: &String| {
                self.state.stores.is_empty() && label == "default"
                    || self.state.stores.contains_key(label)
            };
            if let Some(label) = &function.state_store
                && !known_store(label)
            {
                return Err(format!(
                    "{}: no store labelled `{label}` in [state.stores]",
                    key("state_store")
                ));
            }
            if let Some(label) = function.shared_stores.iter().find(|l| !known_store(l)) {
                return Err(format!(
                    "{}: no store labelled `{label}` in [state.stores]",
                    key("shared_stores")
                ));
            }
            if let Some(app) = &function.app {
                hearth_state::Namespace::new(app).map_err(|e| format!("{}: {e}", key("app")))?;
            }
            if function.max_invocations == Some(0) {
                return Err(format!("{}: must be at least 1", key("max_invocations")));
            }
            function
                .limits
                .apply(self.limits)
                .validate()
                .map_err(|e| format!("{}.{e}", key("limits")))?;
        }
        Ok(())
    }

    fn validate_blob(&self) -> Result<(), String> {
        if let Some(label) = &self.blob.default_store
            && !self.blob.stores.contains_key(label)
        {
            return Err(format!(
                "blob.default_store: no blob store labelled `{label}` in [blob.stores]"
            ));
        }
        for (label, store) in &self.blob.stores {
            let key = |field: &str| format!("blob.stores.{label}.{field}");
            let given = [
                ("path", store.path.is_some()),
                ("endpoint", store.endpoint.is_some()),
                ("bucket", store.bucket.is_some()),
                ("region", store.region.is_some()),
                ("access_key_id", store.access_key_id.is_some()),
                ("secret_access_key", store.secret_access_key.is_some()),
                ("address", store.address.is_some()),
                ("timeout_ms", store.timeout_ms.is_some()),
                ("transport", store.transport.is_some()),
                ("rdma_device", store.rdma_device.is_some()),
            ];
            let (needed, allowed): (&[&str], &[&str]) = match store.kind {
                BlobKind::Fs => (&[], &["path"]),
                BlobKind::S3 => (
                    &["endpoint", "bucket"],
                    &[
                        "endpoint",
                        "bucket",
                        "region",
                        "access_key_id",
                        "secret_access_key",
                        "timeout_ms",
                    ],
                ),
                BlobKind::Remote => (
                    &["address"],
                    &["address", "timeout_ms", "transport", "rdma_device"],
                ),
            };
            for (field, is_set) in given {
                if is_set && !allowed.contains(&field) {
                    return Err(
                        format!("{}: not a key of a {:?} store", key(field), store.kind)
                            .to_lowercase(),
                    );
                }
                if !is_set && needed.contains(&field) {
                    return Err(format!("{}: missing", key(field)));
                }
            }
            match (store.transport.as_deref(), &store.rdma_device) {
                (None | Some("tcp"), None) => {}
                (None | Some("tcp"), Some(_)) => {
                    return Err(format!(
                        "{}: only a store with transport = \"rdma\" has one",
                        key("rdma_device")
                    ));
                }
                (Some("rdma"), None) => {
                    return Err(format!(
                        "{}: missing; transport = \"rdma\" needs the device",
                        key("rdma_device")
                    ));
                }
                (Some("rdma"), Some(_)) if !cfg!(feature = "rdma") => {
                    return Err(format!(
                        "{}: this hearthd was built without the `rdma` feature",
                        key("transport")
                    ));
                }
                (Some("rdma"), Some(_)) => {}
                (Some(other), _) => {
                    return Err(format!(
                        "{}: `{other}` is not tcp or rdma",
                        key("transport")
                    ));
                }
            }
            if store.timeout_ms == Some(0) || store.max_object_bytes == Some(0) {
                return Err(format!(
                    "{}: must be at least 1",
                    key("timeout_ms / max_object_bytes")
                ));
            }
        }
        for (index, function) in self.function.iter().enumerate() {
            if let Some(label) = &function.blob_store
                && !(self.blob.stores.is_empty() && label == "default"
                    || self.blob.stores.contains_key(label))
            {
                return Err(format!(
                    "function[{index}].blob_store: no blob store labelled `{label}` in [blob.stores]"
                ));
            }
        }
        Ok(())
    }

    /// The blob stores this file asks for, and the default label. Without
    /// `[blob.stores]` there is one fs store, `default`, under the cache
    /// dir. s3 and remote stores connect lazily, so hearthd starts while
    /// they are down.
    pub fn host_blob_stores(
        &self,
    ) -> Result<(BTreeMap<String, hearth_blob::BlobStore>, Option<String>), String> {
        let default_dir = self
            .cache
            .dir
            .clone()
            .unwrap_or_else(default_cache_dir)
            .join("blob");
        let configured = if self.blob.stores.is_empty() {
            BTreeMap::from([(
                "default".to_string(),
                BlobStoreConfig {
                    kind: BlobKind::Fs,
                    path: None,
                    endpoint: None,
                    bucket: None,
                    region: None,
                    access_key_id: None,
                    secret_access_key: None,
                    address: None,
                    transport: None,
                    rdma_device: None,
                    timeout_ms: None,
                    max_object_bytes: None,
                },
            )])
        } else {
            self.blob.stores.clone()
        };
        let mut stores = BTreeMap::new();
        for (label, store) in configured {
            let key = |field: &str| format!("blob.stores.{label}.{field}");
            let timeout = std::time::Duration::from_millis(
                store.timeout_ms.unwrap_or(DEFAULT_BLOB_TIMEOUT_MS),
            );
            let backend: Arc<dyn hearth_blob::BlobBackend> = match store.kind {
                BlobKind::Fs => {
                    let path = store
                        .path
                        .clone()
                        .unwrap_or_else(|| default_dir.join(&label));
                    Arc::new(
                        hearth_blob::fs::FsBackend::open(&path)
                            .map_err(|e| format!("{}: {e}", key("path")))?,
                    )
                }
                BlobKind::S3 => {
                    let from_env = |value: &Option<String>, variable: &str, field: &str| {
                        value
                            .clone()
                            .or_else(|| std::env::var(variable).ok())
                            .ok_or_else(|| {
                                format!("{}: missing, and ${variable} is not set", key(field))
                            })
                    };
                    let settings = hearth_blob::s3::S3Settings {
                        endpoint: store.endpoint.clone().unwrap_or_default(),
                        bucket: store.bucket.clone().unwrap_or_default(),
                        region: store.region.clone().unwrap_or_else(|| "us-east-1".into()),
                        credentials: (
                            from_env(&store.access_key_id, "AWS_ACCESS_KEY_ID", "access_key_id")?,
                            from_env(
                                &store.secret_access_key,
                                "AWS_SECRET_ACCESS_KEY",
                                "secret_access_key",
                            )?,
                        ),
                        timeout,
                    };
                    Arc::new(
                        hearth_blob::s3::S3Backend::connect(&settings)
                            .map_err(|e| format!("{}: {e}", key("endpoint")))?,
                    )
                }
                BlobKind::Remote => {
                    let address = store.address.clone().unwrap_or_default();
                    let resolved = std::net::ToSocketAddrs::to_socket_addrs(&address)
                        .ok()
                        .and_then(|mut addrs| addrs.next())
                        .ok_or_else(|| {
                            format!(
                                "{}: `{address}` is not a reachable host:port",
                                key("address")
                            )
                        })?;
                    let connector = remote_connector(&store, resolved, timeout)
                        .map_err(|e| format!("blob.stores.{label}.{e}"))?;
                    Arc::new(hearth_blob::remote::RemoteBackend::new(connector))
                }
            };
            let mut limits = hearth_blob::BlobLimits::default();
            if let Some(max) = store.max_object_bytes {
                limits.max_object_bytes = max;
            }
            stores.insert(
                label.clone(),
                hearth_blob::BlobStore::new(&label, backend, limits),
            );
        }
        Ok((stores, self.blob.default_store.clone()))
    }

    fn validate_messaging(&self) -> Result<(), String> {
        if let Some(label) = &self.messaging.default_broker
            && !self.messaging.brokers.contains_key(label)
        {
            return Err(format!(
                "messaging.default_broker: no broker labelled `{label}` in [messaging.brokers]"
            ));
        }
        for (label, broker) in &self.messaging.brokers {
            let key = |field: &str| format!("messaging.brokers.{label}.{field}");
            match (broker.kind, &broker.url, &broker.path) {
                (BrokerKind::Embedded, Some(_), _) => {
                    return Err(format!(
                        "{}: an embedded broker has a `path`, not a `url`",
                        key("url")
                    ));
                }
                (BrokerKind::Nats, None, _) => {
                    return Err(format!(
                        "{}: missing; a nats broker needs the server's URL",
                        key("url")
                    ));
                }
                (BrokerKind::Nats, _, Some(_)) => {
                    return Err(format!(
                        "{}: only an embedded broker has a `path`",
                        key("path")
                    ));
                }
                (BrokerKind::Embedded, _, _) if broker.retention_hours.is_some() => {
                    return Err(format!(
                        "{}: an embedded broker keeps messages until they are acked",
                        key("retention_hours")
                    ));
                }
                _ => {}
            }
            if broker.timeout_ms == Some(0) || broker.max_message_bytes == Some(0) {
                return Err(format!(
                    "{}: must be at least 1",
                    key("timeout_ms / max_message_bytes")
                ));
            }
        }
        Ok(())
    }

    /// The message brokers this file asks for, and the default label.
    /// Without `[messaging.brokers]` there is one embedded broker,
    /// `default`, under the cache dir. NATS connects in the background.
    pub async fn host_brokers(
        &self,
    ) -> Result<(BTreeMap<String, hearth_messaging::Broker>, Option<String>), String> {
        let default_dir = self
            .cache
            .dir
            .clone()
            .unwrap_or_else(default_cache_dir)
            .join("messaging");
        let configured = if self.messaging.brokers.is_empty() {
            BTreeMap::from([(
                "default".to_string(),
                BrokerConfig {
                    kind: BrokerKind::Embedded,
                    path: None,
                    url: None,
                    timeout_ms: None,
                    retention_hours: None,
                    max_message_bytes: None,
                },
            )])
        } else {
            self.messaging.brokers.clone()
        };
        let mut brokers = BTreeMap::new();
        for (label, broker) in configured {
            let key = format!("messaging.brokers.{label}");
            let backend: Arc<dyn hearth_messaging::MessagingBackend> = match broker.kind {
                BrokerKind::Embedded => {
                    let path = broker
                        .path
                        .clone()
                        .unwrap_or_else(|| default_dir.join(format!("{label}.redb")));
                    Arc::new(
                        hearth_messaging::embedded::EmbeddedBroker::open(&path)
                            .map_err(|e| format!("{key}: {e}"))?,
                    )
                }
                BrokerKind::Nats => {
                    let defaults = hearth_messaging::nats::NatsSettings::default();
                    let settings = hearth_messaging::nats::NatsSettings {
                        url: broker.url.clone().unwrap_or_default(),
                        timeout: broker
                            .timeout_ms
                            .map_or(defaults.timeout, std::time::Duration::from_millis),
                        retention: broker.retention_hours.map_or(defaults.retention, |h| {
                            std::time::Duration::from_secs(h * 3600)
                        }),
                    };
                    Arc::new(
                        hearth_messaging::nats::NatsBroker::connect(&label, settings)
                            .await
                            .map_err(|e| format!("{key}.url: {e}"))?,
                    )
                }
            };
            let mut limits = hearth_messaging::MessagingLimits::default();
            if let Some(max) = broker.max_message_bytes {
                limits.max_message_bytes = max;
            }
            brokers.insert(
                label.clone(),
                hearth_messaging::Broker::new(&label, backend, limits),
            );
        }
        Ok((brokers, self.messaging.default_broker.clone()))
    }

    fn validate_state(&self) -> Result<(), String> {
        if let Some(label) = &self.state.default_store
            && !self.state.stores.contains_key(label)
        {
            return Err(format!(
                "state.default_store: no store labelled `{label}` in [state.stores]"
            ));
        }
        for (label, store) in &self.state.stores {
            let key = |field: &str| format!("state.stores.{label}.{field}");
            match (store.kind, &store.url, &store.path) {
                (StoreKind::Embedded, Some(_), _) => {
                    return Err(format!(
                        "{}: an embedded store has a `path`, not a `url`",
                        key("url")
                    ));
                }
                (StoreKind::Redis | StoreKind::Postgres, None, _) => {
                    return Err(format!(
                        "{}: missing; a {:?} store needs the server's URL",
                        key("url"),
                        store.kind
                    ));
                }
                (StoreKind::Redis | StoreKind::Postgres, _, _) if store.cache_bytes.is_some() => {
                    return Err(format!(
                        "{}: only an embedded store has a read cache",
                        key("cache_bytes")
                    ));
                }
                (StoreKind::Redis | StoreKind::Postgres, _, Some(_)) => {
                    return Err(format!(
                        "{}: only an embedded store has a `path`",
                        key("path")
                    ));
                }
                _ => {}
            }
            if store.timeout_ms == Some(0) {
                return Err(format!("{}: must be at least 1", key("timeout_ms")));
            }
        }
        Ok(())
    }

    /// The state stores and invoke settings this file asks for. Without
    /// `[state.stores]` there is one embedded store, `default`, under the
    /// cache dir. Nothing is connected here: remote backends connect on
    /// first use, so hearthd starts while they are down.
    pub fn host_capabilities(&self) -> Result<HostCapabilities, String> {
        let mut stores = BTreeMap::new();
        let default_dir = self
            .cache
            .dir
            .clone()
            .unwrap_or_else(default_cache_dir)
            .join("state");
        let configured = if self.state.stores.is_empty() {
            BTreeMap::from([(
                "default".to_string(),
                StoreConfig {
                    kind: StoreKind::Embedded,
                    path: None,
                    url: None,
                    timeout_ms: None,
                    max_value_bytes: None,
                    cache_bytes: None,
                },
            )])
        } else {
            self.state.stores.clone()
        };
        for (label, store) in configured {
            let timeout = std::time::Duration::from_millis(
                store.timeout_ms.unwrap_or(DEFAULT_STATE_TIMEOUT_MS),
            );
            let key = format!("state.stores.{label}");
            let backend: Arc<dyn hearth_state::StateBackend> = match store.kind {
                StoreKind::Embedded => {
                    let path = store
                        .path
                        .clone()
                        .unwrap_or_else(|| default_dir.join(format!("{label}.redb")));
                    let mut backend = hearth_state::embedded::EmbeddedBackend::open(&path)
                        .map_err(|e| format!("{key}: {e}"))?;
                    if let Some(bytes) = store.cache_bytes {
                        backend = backend.with_cache_budget(bytes as usize);
                    }
                    Arc::new(backend)
                }
                StoreKind::Redis => Arc::new(
                    hearth_state::redis::RedisBackend::new(
                        store.url.as_deref().unwrap_or_default(),
                        timeout,
                    )
                    .map_err(|e| format!("{key}.url: {e}"))?,
                ),
                StoreKind::Postgres => Arc::new(
                    hearth_state::postgres::PostgresBackend::new(
                        store.url.as_deref().unwrap_or_default(),
                        timeout,
                    )
                    .map_err(|e| format!("{key}.url: {e}"))?,
                ),
            };
            let mut limits = hearth_state::StateLimits::default();
            if let Some(max) = store.max_value_bytes {
                limits.max_value_bytes = max;
            }
            stores.insert(
                label.clone(),
                hearth_state::StateStore::new(&label, backend, limits),
            );
        }
        Ok(HostCapabilities::new(
            stores,
            self.state.default_store.clone(),
            self.invoke.settings(),
        ))
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
        let env = function.function_env(config.limits, &config.pool);
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
        let message = HearthConfig::parse("[prewarn]\nimages = []\n").unwrap_err();
        assert!(message.contains("prewarn"), "{message}");
    }

    #[test]
    fn missing_key_is_named() {
        let message = HearthConfig::parse("[[function]]\nname = \"a\"\npath = \"Cargo.toml\"\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(message.contains("function[0].listen"), "{message}");
        assert!(message.contains("[[function.subscribe]]"), "{message}");
        let message = HearthConfig::parse("[[function]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n")
            .unwrap()
            .validate()
            .unwrap_err();
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
        let message = HearthConfig::parse("[prewarm]\nimages = [\"Bad Ref\"]\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(message.contains("prewarm.images[0]"), "{message}");
        let message = HearthConfig::parse(
            "[[function]]\nname = \"a\"\nimage = \"x:y:z:w\"\nlisten = \"127.0.0.1:1\"\n",
        )
        .unwrap()
        .validate()
        .unwrap_err();
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
        let message = HearthConfig::parse("[limits]\nmax_memory_mib = 0\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(message.contains("limits.max_memory_mib"), "{message}");
    }

    #[test]
    fn bad_listen_address_is_an_error() {
        let message = HearthConfig::parse(
            "[[function]]\nname = \"a\"\npath = \"a\"\nlisten = \"localhost\"\n",
        )
        .unwrap_err();
        assert!(message.contains("listen"), "{message}");
    }

    #[test]
    fn state_invoke_and_function_capabilities_load() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "cart.wasm", "");
        let file = write(
            dir.path(),
            "hearth.toml",
            r#"
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
            config.state.stores["local"].path,
            Some(dir.path().join("data/local.redb"))
        );
        let env = config.function[0].function_env(config.limits, &config.pool);
        assert_eq!(env.grants.app.as_deref(), Some("shop"));
        assert_eq!(env.grants.shared_stores, ["cache"]);
        assert_eq!(env.grants.config_dir, Some(dir.path().join("cm")));
        assert_eq!(env.grants.config["currency"], "EUR");
        let capabilities = config.host_capabilities().unwrap();
        assert_eq!(capabilities.default_store.as_deref(), Some("local"));
        assert_eq!(capabilities.stores["cache"].kind(), "redis");
        assert_eq!(capabilities.invoke.max_depth, 3);
        assert_eq!(
            capabilities.invoke.targets["billing"],
            "http://10.0.0.7:8080"
        );
    }

    #[test]
    fn without_state_stores_there_is_one_embedded_default_under_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "hearth.toml", "[cache]\ndir = \"c\"\n");
        let capabilities = HearthConfig::load(&file)
            .unwrap()
            .host_capabilities()
            .unwrap();
        assert_eq!(capabilities.stores["default"].kind(), "embedded");
        assert!(dir.path().join("c/state/default.redb").is_file());
    }

    #[test]
    fn state_errors_name_the_key() {
        let cases = [
            (
                "[state.stores.s]\ntype = \"redis\"\n",
                "state.stores.s.url: missing",
            ),
            (
                "[state.stores.s]\ntype = \"embedded\"\nurl = \"redis://x\"\n",
                "state.stores.s.url",
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
            let message = match HearthConfig::parse(text) {
                Err(message) => message,
                Ok(config) => config.validate().unwrap_err(),
            };
            assert!(message.contains(expected), "{text}: {message}");
        }
    }

    #[test]
    fn blob_stores_default_to_fs_under_the_cache_and_build_as_configured() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "hearth.toml", "[cache]\ndir = \"c\"\n");
        let (stores, default) = HearthConfig::load(&file)
            .unwrap()
            .host_blob_stores()
            .unwrap();
        assert_eq!(stores["default"].kind(), "fs");
        assert_eq!(default, None);
        assert!(dir.path().join("c/blob/default").is_dir());

        let file = write(
            dir.path(),
            "hearth.toml",
            "[blob]\ndefault_store = \"node\"\n\
             [blob.stores.local]\ntype = \"fs\"\npath = \"blobs\"\nmax_object_bytes = 1024\n\
             [blob.stores.archive]\ntype = \"s3\"\nendpoint = \"http://127.0.0.1:1\"\nbucket = \"b\"\n\
             access_key_id = \"k\"\nsecret_access_key = \"s\"\n\
             [blob.stores.node]\ntype = \"remote\"\naddress = \"127.0.0.1:1\"\ntimeout_ms = 100\n",
        );
        let (stores, default) = HearthConfig::load(&file)
            .unwrap()
            .host_blob_stores()
            .unwrap();
        assert_eq!(default.as_deref(), Some("node"));
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
                "blob.stores.a.endpoint: missing",
            ),
            (
                "[blob.stores.a]\ntype = \"remote\"\n",
                "blob.stores.a.address: missing",
            ),
            (
                "[blob.stores.a]\ntype = \"fs\"\naddress = \"x:1\"\n",
                "blob.stores.a.address: not a key of a fs store",
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
                "[blob.stores.a]\ntype = \"fs\"\nmax_object_bytes = 0\n",
                "must be at least 1",
            ),
        ];
        for (text, expected) in cases {
            let message = match HearthConfig::parse(text) {
                Err(message) => message,
                Ok(config) => config.validate().unwrap_err(),
            };
            assert!(message.contains(expected), "{text}: {message}");
        }
        let unknown = HearthConfig::parse(&format!("{function}blob_store = \"nope\"\n"))
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(
            unknown.contains("function[0].blob_store: no blob store labelled `nope`"),
            "{unknown}"
        );
        #[cfg(not(feature = "rdma"))]
        {
            let text = "[blob.stores.a]\ntype = \"remote\"\naddress = \"x:1\"\ntransport = \"rdma\"\nrdma_device = \"rxe0\"\n";
            let message = HearthConfig::parse(text).unwrap().validate().unwrap_err();
            assert!(
                message.contains("built without the `rdma` feature"),
                "{message}"
            );
        }
    }
}
