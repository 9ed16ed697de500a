//! `[[function]]` entries: what `hearth.toml` says of each function it
//! serves, turned into the [`FunctionSpec`] every way of starting a
//! function goes through.

use crate::capabilities::CapabilityGrants;
use crate::function_env::FunctionSpec;
use crate::limits::LimitsOverride;
use crate::messages::SubscriptionSettings;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

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
    /// Its namespace; default `[tenancy] default_namespace`.
    pub namespace: Option<String>,
    /// Its app within its namespace; default its name.
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

impl FunctionConfig {
    /// What this entry asks for, as every way of starting a function says it.
    pub fn spec(&self) -> FunctionSpec {
        FunctionSpec {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            env: self
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            args: Vec::new(),
            allowed_outbound_hosts: self.allowed_outbound_hosts.clone(),
            limits: self.limits,
            min_idle: Some(self.min_idle),
            max_invocations: self.max_invocations,
            grants: CapabilityGrants {
                app: self.app.clone(),
                state_store: self.state_store.clone(),
                shared_stores: self.shared_stores.clone(),
                config: self.config.clone(),
                config_dirs: self.config_dir.iter().cloned().collect(),
                broker: self.broker.clone(),
                publish_topics: self.publish_topics.clone(),
                blob_store: self.blob_store.clone(),
            },
            stdio: Default::default(),
            narrowing: Default::default(),
            resources: Default::default(),
        }
    }
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
    pub fn settings(&self, function: &str) -> SubscriptionSettings {
        let group = self
            .group
            .clone()
            .unwrap_or_else(|| SubscriptionSettings::default_group(function));
        let mut settings = SubscriptionSettings::new(&self.topic, &group);
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
