//! The NATS JetStream broker (`async-nats`, pull consumers).
//!
//! # Mapping
//!
//! * A topic is a stream `HEARTH_<topic>_<hash>` (file storage, limits
//!   retention up to `retention`) over the subjects
//!   `hearth.msg.<topic>.<priority>`: one subject per priority 0..=9.
//! * A subscription group is one durable pull consumer per priority
//!   (`<group>_p<N>`, explicit ack, `ack_wait` = the visibility timeout,
//!   deliver-all so a new group starts at the oldest message kept).
//!   `receive` fetches (no-wait) from the highest priority with messages
//!   first. Which priorities may have messages is learnt from a core NATS
//!   subscription on the topic's subjects (a doorbell per publish), from
//!   nacks (their delay), and from a sweep every [`SWEEP`] while idle (a
//!   redelivery after another process's visibility ran out).
//! * Hearth's own fields travel as headers: `Hearth-Key`,
//!   `Hearth-Priority`, `Hearth-Not-Before` (ms), `Hearth-Published` (ms),
//!   `Hearth-Content-Type`; the id is `Nats-Msg-Id`, so JetStream drops a
//!   retried publish within its duplicate window.
//! * `nack(delay)` is `-NAK {"delay":…}`; `extend` sends `+WPI` now and
//!   then every third of `ack_wait` until the extension runs out; a delayed
//!   message fetched early is `-NAK`ed for the rest of its delay (not an
//!   attempt: this process subtracts it).
//! * Key ordering is kept within this process: a message whose key is in
//!   flight here is held (kept invisible with `+WPI`) until its
//!   predecessor is settled.
//!
//! Known limits: the error of a nacked attempt and the count of delay
//! deferrals live in this process, so after a restart a redelivery says
//! only that the previous attempt was not acked.

use crate::{
    Consumer, Delivery, MAX_PRIORITY, MessagingBackend, MessagingError, OutgoingMessage, Receipt,
    SubscriptionSpec, now_ms,
};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures_util::StreamExt;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often an idle consumer looks at every priority anyway.
pub const SWEEP: Duration = Duration::from_millis(250);

const BANDS: usize = MAX_PRIORITY as usize + 1;

/// How to reach the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSettings {
    /// `nats://host:port`.
    pub url: String,
    /// Per-operation timeout.
    pub timeout: Duration,
    /// How long a stream keeps a message (acked or not).
    pub retention: Duration,
}

impl Default for NatsSettings {
    fn default() -> Self {
        NatsSettings {
            url: "nats://127.0.0.1:4222".into(),
            timeout: Duration::from_secs(5),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// The NATS broker.
pub struct NatsBroker {
    shared: Arc<Shared>,
}

struct Shared {
    label: String,
    settings: NatsSettings,
    client: async_nats::Client,
    jetstream: jetstream::Context,
    streams: tokio::sync::Mutex<HashMap<String, jetstream::stream::Stream>>,
}

impl NatsBroker {
    /// A broker labelled `label` at `settings.url`. Connects in the
    /// background: a server that is down now is retried, and calls answer
    /// `unavailable` until it is up.
    pub async fn connect(label: &str, settings: NatsSettings) -> Result<Self, String> {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connection_timeout(settings.timeout)
            .request_timeout(Some(settings.timeout))
            .max_reconnects(None)
            .connect(settings.url.as_str())
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", settings.url))?;
        let mut jetstream = jetstream::new(client.clone());
        jetstream.set_timeout(settings.timeout);
        Ok(NatsBroker {
            shared: Arc::new(Shared {
                label: label.into(),
                settings,
                client,
                jetstream,
                streams: Default::default(),
            }),
        })
    }
}

/// A short stable hash, so names that differ only in `.` vs `_` differ.
fn fnv(text: &str) -> u32 {
    text.bytes().fold(0x811c9dc5u32, |hash, byte| {
        (hash ^ byte as u32).wrapping_mul(0x01000193)
    })
}

fn stream_name(topic: &str) -> String {
    format!("HEARTH_{}_{:08x}", topic.replace('.', "_"), fnv(topic))
}

fn subject(topic: &str, priority: u8) -> String {
    format!("hearth.msg.{topic}.{priority}")
}

impl Shared {
    fn unavailable(&self, detail: impl std::fmt::Display) -> MessagingError {
        MessagingError::Unavailable {
            broker: self.label.clone(),
            backend: "nats".into(),
            detail: format!("{} ({})", detail, self.settings.url),
        }
    }

    async fn timed<T, E: std::fmt::Display>(
        &self,
        what: &str,
        work: impl IntoFuture<Output = Result<T, E>>,
    ) -> Result<T, MessagingError> {
        match tokio::time::timeout(self.settings.timeout, work.into_future()).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(self.unavailable(format!("{what}: {error}"))),
            Err(_) => Err(self.unavailable(format!(
                "{what}: no answer within {} ms",
                self.settings.timeout.as_millis()
            ))),
        }
    }

    async fn stream(&self, topic: &str) -> Result<jetstream::stream::Stream, MessagingError> {
        let mut streams = self.streams.lock().await;
        if let Some(stream) = streams.get(topic) {
            return Ok(stream.clone());
        }
        let config = jetstream::stream::Config {
            name: stream_name(topic),
            subjects: vec![format!("hearth.msg.{topic}.*")],
            storage: jetstream::stream::StorageType::File,
            retention: jetstream::stream::RetentionPolicy::Limits,
            max_age: self.settings.retention,
            ..Default::default()
        };
        let stream = self
            .timed("create stream", self.jetstream.get_or_create_stream(config))
            .await?;
        streams.insert(topic.into(), stream.clone());
        Ok(stream)
    }
}

#[async_trait::async_trait]
impl MessagingBackend for NatsBroker {
    fn kind(&self) -> &'static str {
        "nats"
    }

    async fn publish(&self, message: &OutgoingMessage) -> Result<String, MessagingError> {
        let shared = &self.shared;
        shared.stream(&message.topic).await?;
        let id = nuid::next().to_string();
        let now = now_ms();
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        headers.insert("Hearth-Published", now.to_string().as_str());
        headers.insert("Hearth-Priority", message.priority.to_string().as_str());
        if let Some(key) = &message.key {
            headers.insert("Hearth-Key", key.as_str());
        }
        if let Some(content_type) = &message.content_type {
            headers.insert("Hearth-Content-Type", content_type.as_str());
        }
        if !message.delay.is_zero() {
            let not_before = now + message.delay.as_millis() as u64;
            headers.insert("Hearth-Not-Before", not_before.to_string().as_str());
        }
        for (name, value) in &message.headers {
            headers.append(name.as_str(), value.as_str());
        }
        let ack = shared
            .timed(
                "publish",
                shared.jetstream.publish_with_headers(
                    subject(&message.topic, message.priority),
                    headers,
                    message.data.clone().into(),
                ),
            )
            .await?;
        shared.timed("publish acknowledgement", ack).await?;
        Ok(id)
    }

    async fn subscribe(
        &self,
        spec: &SubscriptionSpec,
    ) -> Result<Arc<dyn Consumer>, MessagingError> {
        let shared = self.shared.clone();
        let stream = shared.stream(&spec.topic).await?;
        let mut bands = Vec::with_capacity(BANDS);
        let group = format!("{}_{:08x}", spec.group.replace('.', "_"), fnv(&spec.group));
        for priority in 0..BANDS {
            let name = format!("{group}_p{priority}");
            let config = jetstream::consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: subject(&spec.topic, priority as u8),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: spec.visibility,
                max_deliver: -1,
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                max_ack_pending: 10_000,
                ..Default::default()
            };
            let consumer: PullConsumer = shared
                .timed(
                    "create consumer",
                    stream.get_or_create_consumer(&name, config),
                )
                .await?;
            bands.push(consumer);
        }
        let doorbell = shared
            .timed(
                "subscribe",
                shared
                    .client
                    .subscribe(format!("hearth.msg.{}.*", spec.topic)),
            )
            .await?;
        let consumer = Arc::new(Group {
            shared,
            spec: spec.clone(),
            bands,
            hints: std::array::from_fn(|_| AtomicBool::new(true)),
            wake: tokio::sync::Notify::new(),
            local: Mutex::default(),
        });
        let weak = Arc::downgrade(&consumer);
        tokio::spawn(ring_doorbell(weak.clone(), doorbell));
        tokio::spawn(keep_alive(weak));
        Ok(Arc::new(NatsConsumer(consumer)))
    }

    async fn ping(&self) -> Result<(), MessagingError> {
        let shared = &self.shared;
        if shared.client.connection_state() != async_nats::connection::State::Connected {
            return Err(shared.unavailable("not connected"));
        }
        shared.timed("ping", shared.client.flush()).await
    }
}

/// The consumer handed out; background tasks hold only a `Weak` of the group.
struct NatsConsumer(Arc<Group>);

struct Group {
    shared: Arc<Shared>,
    spec: SubscriptionSpec,
    bands: Vec<PullConsumer>,
    /// Which priorities may have deliverable messages.
    hints: [AtomicBool; BANDS],
    wake: tokio::sync::Notify,
    local: Mutex<LocalState>,
}

#[derive(Default)]
struct LocalState {
    in_flight: HashMap<u64, InFlight>,
    /// Errors of nacked attempts, by stream sequence.
    errors: HashMap<u64, String>,
    /// Early fetches of delayed messages, by stream sequence.
    deferrals: HashMap<u64, u32>,
    /// Keys with a message in flight, and what waits behind it.
    held: HashMap<String, VecDeque<jetstream::Message>>,
    /// Held messages whose turn has come.
    released: VecDeque<jetstream::Message>,
}

struct InFlight {
    message: jetstream::Message,
    attempt: u32,
    key: Option<String>,
    /// Kept invisible (`+WPI`) until then, when extended.
    extended_until: Option<Instant>,
}

async fn ring_doorbell(consumer: std::sync::Weak<Group>, mut doorbell: async_nats::Subscriber) {
    while let Some(message) = doorbell.next().await {
        let Some(consumer) = consumer.upgrade() else {
            return;
        };
        if let Some(band) = message
            .subject
            .rsplit('.')
            .next()
            .and_then(|b| b.parse::<usize>().ok())
            .filter(|b| *b < BANDS)
        {
            consumer.hints[band].store(true, Ordering::Release);
            consumer.wake.notify_one();
        }
    }
}

/// Sends `+WPI` for extended and held messages every third of `ack_wait`.
async fn keep_alive(consumer: std::sync::Weak<Group>) {
    loop {
        let period = match consumer.upgrade() {
            Some(consumer) => (consumer.spec.visibility / 3).max(Duration::from_millis(10)),
            None => return,
        };
        tokio::time::sleep(period).await;
        let Some(consumer) = consumer.upgrade() else {
            return;
        };
        let now = Instant::now();
        let messages: Vec<jetstream::Message> = {
            let mut local = consumer.local.lock().unwrap_or_else(|e| e.into_inner());
            let mut out = Vec::new();
            for entry in local.in_flight.values_mut() {
                match entry.extended_until {
                    Some(until) if until > now => out.push(entry.message.clone()),
                    Some(_) => entry.extended_until = None,
                    None => {}
                }
            }
            out.extend(local.held.values().flatten().cloned());
            out.extend(local.released.iter().cloned());
            out
        };
        for message in messages {
            let _ = message.ack_with(AckKind::Progress).await;
        }
    }
}

fn header<'a>(message: &'a jetstream::Message, name: &str) -> Option<&'a str> {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str())
}

fn header_u64(message: &jetstream::Message, name: &str) -> Option<u64> {
    header(message, name).and_then(|v| v.parse().ok())
}

impl Group {
    fn lock(&self) -> std::sync::MutexGuard<'_, LocalState> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks `band` as worth a look after `delay`, and again a little
    /// later: JetStream's own redelivery timer may fire just after ours.
    fn hint_later(self: &Arc<Self>, band: usize, delay: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut waited = Duration::ZERO;
            for at in [
                delay,
                delay + Duration::from_millis(2),
                delay + Duration::from_millis(10),
                delay + Duration::from_millis(50),
            ] {
                tokio::time::sleep(at - waited).await;
                waited = at;
                let Some(consumer) = weak.upgrade() else {
                    return;
                };
                consumer.hints[band].store(true, Ordering::Release);
                consumer.wake.notify_one();
            }
        });
    }

    /// Decides what to do with a fetched message: deliver it (returns the
    /// delivery), defer it (delayed), or hold it (its key is busy).
    async fn admit(
        self: &Arc<Self>,
        message: jetstream::Message,
    ) -> Result<Option<Delivery>, MessagingError> {
        let (sequence, delivered) = match message.info() {
            Ok(info) => (info.stream_sequence, info.delivered.max(1) as u32),
            Err(error) => {
                tracing::warn!(error = %error, "not a JetStream message; ignored");
                return Ok(None);
            }
        };
        let priority = header_u64(&message, "Hearth-Priority").unwrap_or(0) as u8;
        if let Some(not_before) = header_u64(&message, "Hearth-Not-Before") {
            let now = now_ms();
            if not_before > now {
                let delay = Duration::from_millis(not_before - now);
                *self.lock().deferrals.entry(sequence).or_default() += 1;
                self.shared
                    .timed("defer", message.ack_with(AckKind::Nak(Some(delay))))
                    .await?;
                self.hint_later(priority.min(MAX_PRIORITY) as usize, delay);
                return Ok(None);
            }
        }
        let key = header(&message, "Hearth-Key").map(str::to_string);
        let mut local = self.lock();
        if let Some(key) = &key {
            let busy = local
                .in_flight
                .values()
                .any(|f| f.key.as_ref() == Some(key));
            if busy {
                local
                    .held
                    .entry(key.clone())
                    .or_default()
                    .push_back(message);
                return Ok(None);
            }
        }
        let attempt =
            delivered.saturating_sub(local.deferrals.get(&sequence).copied().unwrap_or(0));
        let attempt = attempt.max(1);
        let last_error = local.errors.get(&sequence).cloned().or_else(|| {
            (attempt > 1).then(|| {
                "the previous delivery was not acked in time (visibility timeout or a restart)"
                    .to_string()
            })
        });
        let headers = message
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .filter(|(name, _)| {
                let name: &str = name.as_ref();
                !name.starts_with("Hearth-") && !name.starts_with("Nats-")
            })
            .flat_map(|(name, values)| {
                values
                    .iter()
                    .map(move |v| (name.to_string(), v.as_str().to_string()))
            })
            .collect();
        let delivery = Delivery {
            receipt: Receipt { sequence, attempt },
            id: header(&message, "Nats-Msg-Id")
                .map_or_else(|| sequence.to_string(), str::to_string),
            topic: self.spec.topic.clone(),
            data: message.payload.to_vec(),
            key: key.clone(),
            headers,
            content_type: header(&message, "Hearth-Content-Type").map(str::to_string),
            priority,
            attempt,
            last_error,
            published_at_ms: header_u64(&message, "Hearth-Published").unwrap_or(0),
        };
        local.in_flight.insert(
            sequence,
            InFlight {
                message,
                attempt,
                key,
                extended_until: None,
            },
        );
        Ok(Some(delivery))
    }

    /// Takes the delivery `receipt` names out of flight, releasing the next
    /// held message of its key.
    fn settle(&self, receipt: &Receipt) -> Result<InFlight, MessagingError> {
        let mut local = self.lock();
        match local.in_flight.get(&receipt.sequence) {
            Some(entry) if entry.attempt == receipt.attempt => {}
            _ => {
                return Err(MessagingError::Lost {
                    sequence: receipt.sequence,
                    reason:
                        "this process holds no such delivery (settled already, or delivered again)"
                            .into(),
                });
            }
        }
        let entry = local
            .in_flight
            .remove(&receipt.sequence)
            .expect("checked above");
        if let Some(key) = &entry.key {
            let next = local.held.get_mut(key).and_then(VecDeque::pop_front);
            if local.held.get(key).is_some_and(VecDeque::is_empty) {
                local.held.remove(key);
            }
            if let Some(next) = next {
                local.released.push_back(next);
                self.wake.notify_one();
            }
        }
        Ok(entry)
    }
}

impl Group {
    async fn receive(
        self: &Arc<Self>,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, MessagingError> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        loop {
            let released: Vec<jetstream::Message> = {
                let mut local = self.lock();
                let n = local.released.len().min(max - out.len());
                local.released.drain(..n).collect()
            };
            for message in released {
                if let Some(delivery) = self.admit(message).await? {
                    out.push(delivery);
                }
            }
            for band in (0..BANDS).rev() {
                if out.len() >= max {
                    break;
                }
                if !self.hints[band].swap(false, Ordering::AcqRel) {
                    continue;
                }
                let asked = max - out.len();
                let mut batch = self
                    .shared
                    .timed(
                        "fetch",
                        self.bands[band].fetch().max_messages(asked).messages(),
                    )
                    .await
                    .inspect_err(|_| self.hints[band].store(true, Ordering::Release))?;
                let mut got = 0;
                while let Some(message) = batch.next().await {
                    let message = message.map_err(|e| {
                        self.hints[band].store(true, Ordering::Release);
                        self.shared.unavailable(format!("fetch: {e}"))
                    })?;
                    got += 1;
                    if let Some(delivery) = self.admit(message).await? {
                        out.push(delivery);
                    }
                }
                if got >= asked {
                    // There may be more.
                    self.hints[band].store(true, Ordering::Release);
                }
            }
            if !out.is_empty() {
                return Ok(out);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(out);
            }
            let sweep = tokio::time::sleep_until((now + SWEEP).min(deadline).into());
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = sweep => {
                    for hint in &self.hints {
                        hint.store(true, Ordering::Release);
                    }
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Consumer for NatsConsumer {
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, MessagingError> {
        self.0.receive(max.max(1), wait).await
    }

    async fn ack(&self, receipt: &Receipt) -> Result<(), MessagingError> {
        let group = &self.0;
        let entry = group.settle(receipt)?;
        {
            let mut local = group.lock();
            local.errors.remove(&receipt.sequence);
            local.deferrals.remove(&receipt.sequence);
        }
        group.shared.timed("ack", entry.message.double_ack()).await
    }

    async fn nack(
        &self,
        receipt: &Receipt,
        delay: Duration,
        error: &str,
    ) -> Result<(), MessagingError> {
        let group = &self.0;
        let entry = group.settle(receipt)?;
        let band =
            (header_u64(&entry.message, "Hearth-Priority").unwrap_or(0) as usize).min(BANDS - 1);
        group
            .lock()
            .errors
            .insert(receipt.sequence, error.to_string());
        let kind = if delay.is_zero() {
            AckKind::Nak(None)
        } else {
            AckKind::Nak(Some(delay))
        };
        group
            .shared
            .timed("nack", entry.message.double_ack_with(kind))
            .await?;
        group.hint_later(band, delay);
        Ok(())
    }

    async fn extend(&self, receipt: &Receipt, visibility: Duration) -> Result<(), MessagingError> {
        let group = &self.0;
        let message = {
            let mut local = group.lock();
            let entry = local
                .in_flight
                .get_mut(&receipt.sequence)
                .filter(|e| e.attempt == receipt.attempt)
                .ok_or_else(|| MessagingError::Lost {
                    sequence: receipt.sequence,
                    reason: "this process holds no such delivery".into(),
                })?;
            entry.extended_until = Some(Instant::now() + visibility);
            entry.message.clone()
        };
        group
            .shared
            .timed("extend", message.ack_with(AckKind::Progress))
            .await
    }
}
