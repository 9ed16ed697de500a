//! Hearth's messaging capability below the WIT layer: what a function's
//! `wasi:messaging` / `hearth:function/messaging` calls and its message
//! handler turn into.
//!
//! * [`MessagingBackend`]: the trait every broker implements: [`embedded`]
//!   (a durable log on redb, the default) and [`nats`] (JetStream pull
//!   consumers). Both pass the one [`conformance`] suite.
//! * [`Broker`]: a backend under a label, with the checks every publish
//!   goes through first (topic syntax, size, headers, priority, delay), so
//!   every backend refuses bad input the same way.
//! * [`Consumer`]: one subscription group's view of a topic: receive with a
//!   visibility timeout, then ack, nack (with a delay) or extend.
//!
//! # Delivery contract: at least once, for every backend
//!
//! * A publish that returned `Ok` is durable (fsynced by redb; acknowledged
//!   by JetStream's file store) and will be delivered to every subscription
//!   group of its topic until that group acks it, or until it is older than
//!   its broker's retention (`retention_hours`, 7 days by default). A topic
//!   of the embedded broker that holds its `max_topic_messages` or
//!   `max_topic_bytes` refuses further publishes with
//!   [`MessagingError::TopicFull`] rather than drop anything.
//! * A group that subscribes first starts at the oldest message the topic
//!   still keeps: messages published before any worker existed wait for it.
//!   Within a group, each message goes to one consumer at a time.
//! * A received message is invisible to the group's other consumers for the
//!   subscription's visibility timeout, which `extend` pushes out. When it
//!   runs out before an ack, the message is delivered again (to any
//!   consumer) with `attempt` one higher and `last_error` saying so.
//! * `nack(delay)` makes it deliverable again after `delay`, keeping the
//!   error; `ack` removes it for the group. An ack is durable when it
//!   returns: an acked message is not delivered to that group again.
//! * **Priority** (0..=9, higher first): of the messages deliverable to a
//!   group, higher priorities are delivered first; FIFO within a priority.
//! * **Key ordering.** Messages with the same key are never in flight in
//!   one group at the same time, and are delivered in publish order
//!   (embedded: strictly, across redeliveries too; NATS: within one process,
//!   a nacked message may be overtaken by a later one of its key).
//! * **Delay**: a message published with a delay is not delivered before it.
//! * Dead-lettering (after `max_deliveries`) is the dispatcher's job (in
//!   hearthd), not the backend's: it publishes the message to the
//!   subscription's dead-letter topic with the last error, then acks it.
//! * A backend that cannot be reached answers [`MessagingError::Unavailable`]
//!   within its operation timeout; a publish that failed was not stored
//!   (or, for NATS, may have been: the publisher retries, and JetStream drops
//!   the duplicate by its message id).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub mod config;
pub mod conformance;
pub mod embedded;
pub mod nats;

/// The highest priority; 0 is the default and lowest.
pub const MAX_PRIORITY: u8 = 9;

/// Header names that start with this are Hearth's own and refused from
/// publishers.
pub const RESERVED_HEADER_PREFIX: &str = "hearth-";

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutgoingMessage {
    /// Where it goes.
    pub topic: String,
    /// Its payload.
    pub data: Vec<u8>,
    /// Its ordering key: same-key messages are handled one at a time, in order.
    pub key: Option<String>,
    /// Metadata, in order.
    pub headers: Vec<(String, String)>,
    /// The payload's media type.
    pub content_type: Option<String>,
    /// Not delivered before this much time has passed.
    pub delay: Duration,
    /// 0..=[`MAX_PRIORITY`]; higher is delivered first.
    pub priority: u8,
}

/// A message handed to one consumer of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// What ack/nack/extend name it by.
    pub receipt: Receipt,
    /// The message's id (stable across redeliveries).
    pub id: String,
    /// The topic it was published to.
    pub topic: String,
    /// Its payload.
    pub data: Vec<u8>,
    /// Its ordering key.
    pub key: Option<String>,
    /// Its metadata.
    pub headers: Vec<(String, String)>,
    /// Its media type.
    pub content_type: Option<String>,
    /// Its priority.
    pub priority: u8,
    /// 1 for the first delivery to this group, 2 for the first redelivery...
    pub attempt: u32,
    /// Why the previous attempt failed (a handler's error, a nack's reason,
    /// or an expired visibility timeout).
    pub last_error: Option<String>,
    /// When it was published, in ms since the Unix epoch.
    pub published_at_ms: u64,
}

/// Names one delivery of one message to a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Receipt {
    /// The message's sequence number in its backend.
    pub sequence: u64,
    /// Which delivery of it this is.
    pub attempt: u32,
}

/// One subscription group on one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSpec {
    /// The topic.
    pub topic: String,
    /// The consumer group: each message goes to one consumer of a group;
    /// every group gets every message.
    pub group: String,
    /// How long a received message stays invisible to others.
    pub visibility: Duration,
}

/// Why a messaging call failed. Every variant is something a guest or an
/// operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessagingError {
    /// A bad topic, key, header, priority or delay.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The payload is over the broker's size limit.
    #[error("message of {size} bytes is over the limit of {limit} bytes")]
    TooLarge {
        /// Its size (payload + key + headers).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The receipt no longer names a delivery in flight: its visibility ran
    /// out and the message was delivered again (or it was acked already).
    #[error("message {sequence} is no longer held by this delivery: {reason}")]
    Lost {
        /// The message's sequence number.
        sequence: u64,
        /// Why.
        reason: String,
    },
    /// The topic holds as much as its retention allows; the message was not
    /// stored.
    #[error("topic `{topic}` is full: {detail}")]
    TopicFull {
        /// The topic, as the broker names it.
        topic: String,
        /// Which limit, and what it holds.
        detail: String,
    },
    /// The broker could not be reached or failed.
    #[error("messaging `{broker}` ({backend}) is unavailable: {detail}")]
    Unavailable {
        /// The broker's label.
        broker: String,
        /// The backend type.
        backend: String,
        /// What went wrong.
        detail: String,
    },
}

impl MessagingError {
    /// A short stable name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            MessagingError::InvalidArgument(_) => "invalid-argument",
            MessagingError::TooLarge { .. } => "too-large",
            MessagingError::Lost { .. } => "lost",
            MessagingError::TopicFull { .. } => "topic-full",
            MessagingError::Unavailable { .. } => "unavailable",
        }
    }
}

/// How much one topic of a broker keeps (the embedded broker's; a NATS
/// stream's are JetStream's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// A message older than this is expired, acked or not.
    pub max_age: Duration,
    /// Messages held at once; a publish past it is refused.
    pub max_messages: u64,
    /// Bytes of messages held at once; a publish past it is refused.
    pub max_bytes: u64,
}

impl Default for Retention {
    /// 7 days (as a NATS broker's `retention_hours`), a million messages,
    /// 1 GiB.
    fn default() -> Self {
        Retention {
            max_age: Duration::from_secs(168 * 3600),
            max_messages: 1_000_000,
            max_bytes: 1 << 30,
        }
    }
}

/// What one topic holds, and what retention did to it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopicUsage {
    /// The topic, as the broker names it.
    pub topic: String,
    /// Messages held.
    pub messages: u64,
    /// Bytes of messages held.
    pub bytes: u64,
    /// Messages expired for age, since the broker opened.
    pub expired: u64,
    /// Publishes refused because the topic was full, since the broker
    /// opened.
    pub refused: u64,
}

impl TopicUsage {
    /// An empty topic.
    pub fn new(topic: &str) -> Self {
        TopicUsage {
            topic: topic.to_string(),
            ..TopicUsage::default()
        }
    }
}

/// A broker: publish, and open consumers.
#[async_trait::async_trait]
pub trait MessagingBackend: Send + Sync + 'static {
    /// The backend type, as in config (`embedded`, `nats`).
    fn kind(&self) -> &'static str;

    /// Stores `message` durably; returns its id. The message has passed
    /// [`Broker`]'s checks.
    async fn publish(&self, message: &OutgoingMessage) -> Result<String, MessagingError>;

    /// Opens (creating if needed) the group `spec.group` on `spec.topic`.
    async fn subscribe(&self, spec: &SubscriptionSpec)
    -> Result<Arc<dyn Consumer>, MessagingError>;

    /// Whether the broker answers.
    async fn ping(&self) -> Result<(), MessagingError>;

    /// What each topic holds, for backends that account for it (the
    /// embedded broker); empty for others.
    fn topic_usage(&self) -> Vec<TopicUsage> {
        Vec::new()
    }
}

/// One process's handle on a subscription group.
#[async_trait::async_trait]
pub trait Consumer: Send + Sync + 'static {
    /// Up to `max` deliverable messages, waiting up to `wait` for the first.
    /// Empty when none came in time.
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, MessagingError>;

    /// The message is done for this group.
    async fn ack(&self, receipt: &Receipt) -> Result<(), MessagingError>;

    /// The attempt failed with `error`: deliver again after `delay`.
    async fn nack(
        &self,
        receipt: &Receipt,
        delay: Duration,
        error: &str,
    ) -> Result<(), MessagingError>;

    /// Keeps the message invisible to others for `visibility` from now.
    async fn extend(&self, receipt: &Receipt, visibility: Duration) -> Result<(), MessagingError>;
}

/// Size and shape limits every publish is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessagingLimits {
    /// Payload + key + headers, in bytes.
    pub max_message_bytes: u64,
    /// The longest delay a publish may ask for.
    pub max_delay: Duration,
}

impl Default for MessagingLimits {
    fn default() -> Self {
        MessagingLimits {
            max_message_bytes: 1024 * 1024,
            max_delay: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// A backend under a label, with the checks every publish goes through.
#[derive(Clone)]
pub struct Broker {
    label: Arc<str>,
    backend: Arc<dyn MessagingBackend>,
    limits: MessagingLimits,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("label", &self.label)
            .field("backend", &self.backend.kind())
            .finish()
    }
}

impl Broker {
    /// `backend` under `label`.
    pub fn new(label: &str, backend: Arc<dyn MessagingBackend>, limits: MessagingLimits) -> Self {
        Broker {
            label: label.into(),
            backend,
            limits,
        }
    }

    /// Its label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Its backend type.
    pub fn kind(&self) -> &'static str {
        self.backend.kind()
    }

    /// Its limits.
    pub fn limits(&self) -> MessagingLimits {
        self.limits
    }

    /// Checks `message` and publishes it; returns its id.
    pub async fn publish(&self, message: &OutgoingMessage) -> Result<String, MessagingError> {
        self.check(message, false)?;
        self.backend.publish(message).await
    }

    /// [`Broker::publish`] for the host itself, which may set `hearth-`
    /// headers (dead letters carry their error in `hearth-error`).
    pub async fn publish_from_host(
        &self,
        message: &OutgoingMessage,
    ) -> Result<String, MessagingError> {
        self.check(message, true)?;
        self.backend.publish(message).await
    }

    fn check(&self, message: &OutgoingMessage, host: bool) -> Result<(), MessagingError> {
        validate_topic(&message.topic)?;
        if let Some(key) = &message.key
            && (key.is_empty() || key.len() > 256 || key.chars().any(char::is_control))
        {
            return Err(MessagingError::InvalidArgument(
                "a key is 1 to 256 bytes without control characters".into(),
            ));
        }
        for (name, value) in &message.headers {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(MessagingError::InvalidArgument(format!(
                    "header name {name:?}: use letters, digits, `-`, `_` and `.`"
                )));
            }
            if !host
                && name
                    .to_ascii_lowercase()
                    .starts_with(RESERVED_HEADER_PREFIX)
            {
                return Err(MessagingError::InvalidArgument(format!(
                    "header name {name:?}: names starting with `{RESERVED_HEADER_PREFIX}` are reserved for the host"
                )));
            }
            if value.contains(['\r', '\n']) {
                return Err(MessagingError::InvalidArgument(format!(
                    "header {name:?}: a value cannot hold line breaks"
                )));
            }
        }
        if message.priority > MAX_PRIORITY {
            return Err(MessagingError::InvalidArgument(format!(
                "priority {} is over the highest, {MAX_PRIORITY}",
                message.priority
            )));
        }
        if message.delay > self.limits.max_delay {
            return Err(MessagingError::InvalidArgument(format!(
                "a delay of {} s is over the limit of {} s",
                message.delay.as_secs(),
                self.limits.max_delay.as_secs()
            )));
        }
        let size = message_size(message);
        if size > self.limits.max_message_bytes {
            return Err(MessagingError::TooLarge {
                size,
                limit: self.limits.max_message_bytes,
            });
        }
        Ok(())
    }

    /// Opens a group on a topic (see [`MessagingBackend::subscribe`]).
    pub async fn subscribe(
        &self,
        spec: &SubscriptionSpec,
    ) -> Result<Arc<dyn Consumer>, MessagingError> {
        validate_topic(&spec.topic)?;
        validate_topic(&spec.group)
            .map_err(|e| MessagingError::InvalidArgument(format!("group: {e}")))?;
        self.backend.subscribe(spec).await
    }

    /// Whether the broker answers.
    pub async fn ping(&self) -> Result<(), MessagingError> {
        self.backend.ping().await
    }

    /// What each topic holds (see [`MessagingBackend::topic_usage`]).
    pub fn topic_usage(&self) -> Vec<TopicUsage> {
        self.backend.topic_usage()
    }
}

/// The bytes a message counts against the size limit.
pub fn message_size(message: &OutgoingMessage) -> u64 {
    (message.data.len()
        + message.key.as_ref().map_or(0, String::len)
        + message.content_type.as_ref().map_or(0, String::len)
        + message
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .sum::<usize>()) as u64
}

/// A topic (or group) name: 1..=200 of `[A-Za-z0-9_-]` in `.`-separated
/// tokens (NATS subject rules; no wildcards).
pub fn validate_topic(topic: &str) -> Result<(), MessagingError> {
    let ok = !topic.is_empty()
        && topic.len() <= 200
        && topic.split('.').all(|token| {
            !token.is_empty()
                && token
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if ok {
        Ok(())
    } else {
        Err(MessagingError::InvalidArgument(format!(
            "topic {:?}: use 1 to 200 letters, digits, `-` and `_`, in tokens separated by `.`",
            topic.chars().take(64).collect::<String>()
        )))
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
