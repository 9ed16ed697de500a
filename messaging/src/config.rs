//! How a host configures one message broker: `[messaging.brokers.LABEL]`
//! in `hearth.toml`, declared here, next to the backends it builds.
//!
//! ```toml
//! [messaging.brokers.default]
//! type = "embedded"              # embedded | nats
//! path = "messaging/default.redb"  # default: <data dir>/LABEL.redb
//! retention_hours = 168          # a message older than this is expired
//! max_topic_messages = 1000000   # per topic; a publish past it is refused
//! max_topic_bytes = 1073741824   # per topic; a publish past it is refused
//! [messaging.brokers.events]
//! type = "nats"
//! url = "nats://127.0.0.1:4222"
//! timeout_ms = 5000              # per call
//! retention_hours = 168          # how long a stream keeps messages
//! max_message_bytes = 1048576    # payload + key + headers
//! ```
//!
//! # Contract
//!
//! * [`BrokerConfig`] is a serde enum tagged by `type`; each variant denies
//!   keys it does not have (`max_topic_*` are the embedded broker's; a NATS
//!   stream has JetStream's own limits).
//! * [`BrokerConfig::validate`] checks ranges; [`BrokerConfig::build`]
//!   makes the [`Broker`]. NATS connects in the background, so a broker
//!   whose server is down still builds.
//! * Errors are [`ConfigError`]s naming the key within the broker's table.

use crate::embedded::EmbeddedBroker;
use crate::nats::{NatsBroker, NatsSettings};
use crate::{Broker, MessagingBackend, MessagingLimits, Retention};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// One broker's table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum BrokerConfig {
    /// A durable log in redb on this node.
    Embedded(EmbeddedConfig),
    /// A NATS server with JetStream.
    Nats(NatsConfig),
}

/// `type = "embedded"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// The file; relative paths are relative to the config file. Default:
    /// `LABEL.redb` in the host's data directory for messaging.
    pub path: Option<PathBuf>,
    /// Largest message (payload + key + headers).
    pub max_message_bytes: Option<u64>,
    /// How long a topic keeps a message, acked or not, in hours.
    pub retention_hours: Option<u64>,
    /// Messages one topic may hold.
    pub max_topic_messages: Option<u64>,
    /// Bytes of messages one topic may hold.
    pub max_topic_bytes: Option<u64>,
}

/// `type = "nats"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// The server's URL.
    pub url: String,
    /// Bound of one call, in ms.
    pub timeout_ms: Option<u64>,
    /// How long a stream keeps messages, in hours.
    pub retention_hours: Option<u64>,
    /// Largest message (payload + key + headers).
    pub max_message_bytes: Option<u64>,
}

/// A broker's table is wrong: `key` within it, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// The key within the broker's table.
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

impl BrokerConfig {
    /// The broker a host has when it configures none: embedded, in its
    /// data directory.
    pub fn default_embedded() -> Self {
        BrokerConfig::Embedded(EmbeddedConfig::default())
    }

    /// The backend's name, as `type` spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            BrokerConfig::Embedded(_) => "embedded",
            BrokerConfig::Nats(_) => "nats",
        }
    }

    /// Makes a relative `path` relative to `base` (the config file's
    /// directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        if let BrokerConfig::Embedded(EmbeddedConfig {
            path: Some(path), ..
        }) = self
            && path.is_relative()
        {
            *path = base.join(&*path);
        }
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let (timeout_ms, max_message_bytes, retention_hours, max_topic_messages, max_topic_bytes) =
            match self {
                BrokerConfig::Embedded(c) => (
                    None,
                    c.max_message_bytes,
                    c.retention_hours,
                    c.max_topic_messages,
                    c.max_topic_bytes,
                ),
                BrokerConfig::Nats(c) => (
                    c.timeout_ms,
                    c.max_message_bytes,
                    c.retention_hours,
                    None,
                    None,
                ),
            };
        for (key, value) in [
            ("timeout_ms", timeout_ms),
            ("max_message_bytes", max_message_bytes),
            ("retention_hours", retention_hours),
            ("max_topic_messages", max_topic_messages),
            ("max_topic_bytes", max_topic_bytes),
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

    /// Makes the broker labelled `label`; an embedded one without a `path`
    /// lives at `data_dir/LABEL.redb`.
    pub async fn build(&self, label: &str, data_dir: &Path) -> Result<Broker, ConfigError> {
        let mut limits = MessagingLimits::default();
        let backend: Arc<dyn MessagingBackend> = match self {
            BrokerConfig::Embedded(config) => {
                limits.max_message_bytes =
                    config.max_message_bytes.unwrap_or(limits.max_message_bytes);
                let path = config
                    .path
                    .clone()
                    .unwrap_or_else(|| data_dir.join(format!("{label}.redb")));
                let defaults = Retention::default();
                let retention = Retention {
                    max_age: config
                        .retention_hours
                        .map_or(defaults.max_age, |h| Duration::from_secs(h * 3600)),
                    max_messages: config.max_topic_messages.unwrap_or(defaults.max_messages),
                    max_bytes: config.max_topic_bytes.unwrap_or(defaults.max_bytes),
                };
                Arc::new(
                    EmbeddedBroker::open_with(&path, retention).map_err(|message| ConfigError {
                        key: "path",
                        message,
                    })?,
                )
            }
            BrokerConfig::Nats(config) => {
                limits.max_message_bytes =
                    config.max_message_bytes.unwrap_or(limits.max_message_bytes);
                let defaults = NatsSettings::default();
                let settings = NatsSettings {
                    url: config.url.clone(),
                    timeout: config
                        .timeout_ms
                        .map_or(defaults.timeout, Duration::from_millis),
                    retention: config
                        .retention_hours
                        .map_or(defaults.retention, |h| Duration::from_secs(h * 3600)),
                };
                Arc::new(
                    NatsBroker::connect(label, settings)
                        .await
                        .map_err(|message| ConfigError {
                            key: "url",
                            message,
                        })?,
                )
            }
        };
        Ok(Broker::new(label, backend, limits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<BrokerConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn each_type_takes_only_its_own_keys() {
        let nats =
            parse("type = \"nats\"\nurl = \"nats://x:4222\"\nretention_hours = 1\n").unwrap();
        assert_eq!(nats.kind(), "nats");
        let embedded =
            parse("type = \"embedded\"\nretention_hours = 1\nmax_topic_bytes = 9\n").unwrap();
        assert_eq!(embedded.kind(), "embedded");
        let wrong = parse("type = \"nats\"\nurl = \"n\"\nmax_topic_messages = 1\n").unwrap_err();
        assert!(
            wrong.contains("unknown field `max_topic_messages`"),
            "{wrong}"
        );
        let zero = parse("type = \"embedded\"\nmax_topic_messages = 0\n").unwrap();
        assert_eq!(zero.validate().unwrap_err().key, "max_topic_messages");
        let wrong = parse("type = \"embedded\"\nurl = \"nats://x\"\n").unwrap_err();
        assert!(wrong.contains("unknown field `url`"), "{wrong}");
        let missing = parse("type = \"nats\"\n").unwrap_err();
        assert!(missing.contains("missing field `url`"), "{missing}");
        let zero = parse("type = \"nats\"\nurl = \"n\"\nmax_message_bytes = 0\n").unwrap();
        assert_eq!(zero.validate().unwrap_err().key, "max_message_bytes");
    }

    #[tokio::test]
    async fn an_embedded_broker_builds_in_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let broker = BrokerConfig::default_embedded()
            .build("events", dir.path())
            .await
            .unwrap();
        assert_eq!(broker.kind(), "embedded");
        assert!(dir.path().join("events.redb").is_file());
    }
}
