//! The embedded broker: a durable log in one redb file, for one process.
//!
//! # Layout
//!
//! * `log` — `(topic, sequence) → message`: every published message, kept
//!   until every group of its topic has taken it in and acked it. Sequence
//!   numbers are global and never reused (the message id is its sequence).
//! * `groups` — `(topic, group) → cursor`: the last sequence of the topic the
//!   group has taken into its own queue. A new group starts at 0, so it sees
//!   every message its topic still keeps.
//! * Per group (`topic group`): `deliveries` — `sequence → state` (attempt,
//!   ready / waiting until T / in flight until T, key, priority, last error);
//!   `ready` — `(255 - priority, sequence)` in delivery order; `waiting` —
//!   `(until ms, sequence)`: delayed, nacked and in-flight messages, which
//!   become ready at `until` (for one in flight: its visibility ran out).
//!
//! # Retention
//!
//! Every topic (dead-letter topics too) is bounded by [`Retention`]: a
//! message older than `max_age` is expired — removed from the log and from
//! every group, in flight or not — when its topic is next published to or
//! received from, and in a sweep of every topic at open and at most once a
//! minute after. A publish that would take its topic past `max_messages` or
//! `max_bytes` (of stored messages, after expiring what is due) is refused
//! with [`MessagingError::TopicFull`]; nothing stored is dropped to make
//! room. [`EmbeddedBroker::topic_usage`] reports each topic's messages,
//! bytes, expired and refused counts (hearthd's `/metrics`).
//!
//! # Durability
//!
//! A publish and an ack each return only once durable (fsynced). The fsync
//! is shared (group commit, [`hearth_group_commit`]): each commits without
//! one, and one durable commit covers every publish and ack that arrived
//! while the previous fsync ran. A consumer is woken for a publish once it
//! is durable; one already polling may take it a little sooner (from its
//! commit), so after a crash in between a handler may have run a message
//! whose publish was never acknowledged. Receives, nacks and extends
//! commit without fsync: after a crash they may be lost, which only means a
//! message is delivered again. When the file is opened, every message that
//! was in flight is made ready again at once (the process that held it is
//! gone; the file is locked to one process), with `last_error` saying so —
//! a hearthd killed with messages in flight redelivers them as soon as it
//! is back.

use crate::{
    Consumer, Delivery, MessagingBackend, MessagingError, OutgoingMessage, Receipt, Retention,
    SubscriptionSpec, TopicUsage, now_ms,
};
use hearth_group_commit::{GroupCommit, Ticket, Writer};
use redb::{Database, Durability, ReadableTable, TableDefinition, WriteTransaction};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LOG: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const GROUPS: TableDefinition<(&str, &str), u64> = TableDefinition::new("groups");
const DELIVERIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("deliveries");
const READY: TableDefinition<(&str, u8, u64), ()> = TableDefinition::new("ready");
const WAITING: TableDefinition<(&str, u64, u64), ()> = TableDefinition::new("waiting");
const SEQUENCE: &str = "sequence";

/// The embedded broker.
pub struct EmbeddedBroker {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    /// Makes publishes and acks durable, many per fsync.
    group: GroupCommit,
    path: PathBuf,
    retention: Retention,
    /// Serialises write transactions with the in-memory state they update.
    state: Mutex<State>,
    published: tokio::sync::Notify,
}

/// What the write transactions keep in memory beside the file.
struct State {
    keys: KeyIndex,
    /// Per topic: what it holds (rebuilt from the log at open) and the
    /// counters since.
    topics: HashMap<String, TopicUsage>,
    /// When every topic was last checked for expired messages.
    last_sweep: Instant,
}

/// How often every topic (not just those in use) is checked for expired
/// messages.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Per group: for each key, the sequences of its messages not yet acked.
type KeyIndex = HashMap<String, HashMap<String, BTreeSet<u64>>>;

type BackendResult<T> = Result<T, String>;

impl EmbeddedBroker {
    /// Opens (creating if need be) the broker file at `path` with the
    /// default [`Retention`] and makes every message that was in flight
    /// ready again.
    pub fn open(path: &Path) -> Result<Self, String> {
        Self::open_with(path, Retention::default())
    }

    /// [`EmbeddedBroker::open`] with `retention`; messages already past it
    /// are expired now.
    pub fn open_with(path: &Path, retention: Retention) -> Result<Self, String> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        let db =
            Database::create(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let (keys, topics) =
            recover(&db).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let db = Arc::new(db);
        let group = GroupCommit::start(&db, "hearth-broker-sync")
            .map_err(|e| format!("cannot start the fsync thread of {}: {e}", path.display()))?;
        let inner = Inner {
            db,
            group,
            path: path.to_owned(),
            retention,
            state: Mutex::new(State {
                keys,
                topics,
                last_sweep: Instant::now(),
            }),
            published: tokio::sync::Notify::new(),
        };
        inner
            .sweep()
            .map_err(|e| format!("cannot expire old messages in {}: {e}", path.display()))?;
        Ok(EmbeddedBroker {
            inner: Arc::new(inner),
        })
    }

    /// Each topic's messages and bytes held, and its expired and refused
    /// counts since open, by topic.
    pub fn topic_usage(&self) -> Vec<TopicUsage> {
        let state = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut usage: Vec<TopicUsage> = state.topics.values().cloned().collect();
        usage.sort_by(|a, b| a.topic.cmp(&b.topic));
        usage
    }

    /// The file it lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

/// Creates the tables, requeues in-flight messages and rebuilds the key
/// index and each topic's usage.
fn recover(db: &Database) -> Result<(KeyIndex, HashMap<String, TopicUsage>), redb::Error> {
    let txn = db.begin_write()?;
    let mut keys = KeyIndex::new();
    let mut topics = HashMap::<String, TopicUsage>::new();
    {
        let log = txn.open_table(LOG)?;
        for row in log.iter()? {
            let (key, value) = row?;
            let topic = key.value().0;
            let usage = topics
                .entry(topic.to_string())
                .or_insert_with(|| TopicUsage::new(topic));
            usage.messages += 1;
            usage.bytes += value.value().len() as u64;
        }
        txn.open_table(META)?;
        txn.open_table(GROUPS)?;
        let mut deliveries = txn.open_table(DELIVERIES)?;
        let mut ready = txn.open_table(READY)?;
        let mut waiting = txn.open_table(WAITING)?;
        let mut requeue = Vec::new();
        for row in deliveries.iter()? {
            let (key, value) = row?;
            let (group, sequence) = key.value();
            let state = DeliveryState::decode(value.value());
            if let Some(key) = &state.key {
                keys.entry(group.to_string())
                    .or_default()
                    .entry(key.clone())
                    .or_default()
                    .insert(sequence);
            }
            if state.in_flight {
                requeue.push((group.to_string(), sequence, state));
            }
        }
        for (group, sequence, mut state) in requeue {
            waiting.remove((group.as_str(), state.until, sequence))?;
            ready.insert((group.as_str(), 255 - state.priority, sequence), ())?;
            state.in_flight = false;
            state.until = 0;
            state.last_error = Some(format!(
                "the process holding delivery {} stopped before it was acked",
                state.attempt
            ));
            deliveries.insert((group.as_str(), sequence), state.encode().as_slice())?;
        }
    }
    txn.commit()?;
    Ok((keys, topics))
}

/// When a stored message was published: its first 8 bytes.
fn published_at_ms(raw: &[u8]) -> u64 {
    Reader(raw).u64()
}

/// A group's state for one message.
#[derive(Debug, Clone, Default)]
struct DeliveryState {
    /// Deliveries so far.
    attempt: u32,
    /// Delivered and not yet acked or nacked.
    in_flight: bool,
    /// Waiting (or in flight) until this ms; 0 when ready.
    until: u64,
    priority: u8,
    key: Option<String>,
    last_error: Option<String>,
}

impl DeliveryState {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        out.extend_from_slice(&self.attempt.to_le_bytes());
        out.push(self.in_flight as u8);
        out.extend_from_slice(&self.until.to_le_bytes());
        out.push(self.priority);
        put_opt(&mut out, self.key.as_deref());
        put_opt(&mut out, self.last_error.as_deref());
        out
    }

    fn decode(raw: &[u8]) -> Self {
        let mut reader = Reader(raw);
        DeliveryState {
            attempt: reader.u32(),
            in_flight: reader.u8() != 0,
            until: reader.u64(),
            priority: reader.u8(),
            key: reader.opt(),
            last_error: reader.opt(),
        }
    }
}

/// A message as stored in the log.
struct StoredMessage {
    published_at_ms: u64,
    not_before_ms: u64,
    message: OutgoingMessage,
}

impl StoredMessage {
    fn encode(&self) -> Vec<u8> {
        let m = &self.message;
        let mut out = Vec::with_capacity(m.data.len() + 64);
        out.extend_from_slice(&self.published_at_ms.to_le_bytes());
        out.extend_from_slice(&self.not_before_ms.to_le_bytes());
        out.push(m.priority);
        put_opt(&mut out, m.key.as_deref());
        put_opt(&mut out, m.content_type.as_deref());
        out.extend_from_slice(&(m.headers.len() as u32).to_le_bytes());
        for (name, value) in &m.headers {
            put_str(&mut out, name);
            put_str(&mut out, value);
        }
        out.extend_from_slice(&m.data);
        out
    }

    fn decode(topic: &str, raw: &[u8]) -> Self {
        let mut reader = Reader(raw);
        let published_at_ms = reader.u64();
        let not_before_ms = reader.u64();
        let priority = reader.u8();
        let key = reader.opt();
        let content_type = reader.opt();
        let count = reader.u32();
        let headers = (0..count).map(|_| (reader.str(), reader.str())).collect();
        StoredMessage {
            published_at_ms,
            not_before_ms,
            message: OutgoingMessage {
                topic: topic.into(),
                data: reader.0.to_vec(),
                key,
                headers,
                content_type,
                delay: Duration::ZERO,
                priority,
            },
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

/// Reads what this module wrote (the file is ours: a short read is a bug,
/// and yields zeros rather than a panic).
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        head
    }
    fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }
    fn u32(&mut self) -> u32 {
        let mut b = [0; 4];
        let head = self.take(4);
        b[..head.len()].copy_from_slice(head);
        u32::from_le_bytes(b)
    }
    fn u64(&mut self) -> u64 {
        let mut b = [0; 8];
        let head = self.take(8);
        b[..head.len()].copy_from_slice(head);
        u64::from_le_bytes(b)
    }
    fn str(&mut self) -> String {
        let len = self.u32() as usize;
        String::from_utf8_lossy(self.take(len)).into_owned()
    }
    fn opt(&mut self) -> Option<String> {
        (self.u8() == 1).then(|| self.str())
    }
}

fn group_key(topic: &str, group: &str) -> String {
    // Topics and groups have no spaces (crate::validate_topic).
    format!("{topic} {group}")
}

impl Inner {
    fn unavailable(&self, detail: impl std::fmt::Display) -> MessagingError {
        MessagingError::Unavailable {
            broker: self.path.display().to_string(),
            backend: "embedded".into(),
            detail: detail.to_string(),
        }
    }

    /// Commits `message` (not yet durable): its sequence, and the ticket
    /// to await before acknowledging it.
    fn publish(
        &self,
        message: &OutgoingMessage,
        writer: Writer,
    ) -> Result<(u64, Ticket), MessagingError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let fail = |e: redb::Error| self.unavailable(e);
        let now = now_ms();
        let stored = StoredMessage {
            published_at_ms: now,
            not_before_ms: now + message.delay.as_millis() as u64,
            message: message.clone(),
        }
        .encode();
        let topic = message.topic.as_str();
        if state.last_sweep.elapsed() >= SWEEP_EVERY {
            drop(state);
            self.sweep().map_err(fail)?;
            state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        }
        let txn = self.db.begin_write().map_err(|x| fail(x.into()))?;
        self.expire(&txn, &mut state, topic, now).map_err(fail)?;
        let usage = state
            .topics
            .entry(topic.to_string())
            .or_insert_with(|| TopicUsage::new(topic));
        let limit = &self.retention;
        let full = if usage.messages + 1 > limit.max_messages {
            Some(format!("it holds {} messages, the limit", usage.messages))
        } else if usage.bytes + stored.len() as u64 > limit.max_bytes {
            Some(format!(
                "it holds {} bytes and the limit is {}",
                usage.bytes, limit.max_bytes
            ))
        } else {
            None
        };
        if let Some(detail) = full {
            usage.refused += 1;
            // Keep what was expired; store nothing.
            writer.commit(txn).map_err(fail)?;
            return Err(MessagingError::TopicFull {
                topic: topic.to_string(),
                detail: format!(
                    "{detail} (messages leave it when every group has acked them, or after {} hours)",
                    limit.max_age.as_secs() / 3600
                ),
            });
        }
        let sequence = {
            let mut meta = txn.open_table(META).map_err(|x| fail(x.into()))?;
            let sequence = meta
                .get(SEQUENCE)
                .map_err(|x| fail(x.into()))?
                .map_or(0, |v| v.value())
                + 1;
            meta.insert(SEQUENCE, sequence)
                .map_err(|x| fail(x.into()))?;
            let mut log = txn.open_table(LOG).map_err(|x| fail(x.into()))?;
            log.insert((topic, sequence), stored.as_slice())
                .map_err(|x| fail(x.into()))?;
            sequence
        };
        let ticket = writer.commit(txn).map_err(fail)?;
        usage.messages += 1;
        usage.bytes += stored.len() as u64;
        Ok((sequence, ticket))
    }

    /// Expires what is due in every topic.
    fn sweep(&self) -> Result<(), redb::Error> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = now_ms();
        let txn = self.db.begin_write()?;
        let topics: Vec<String> = state.topics.keys().cloned().collect();
        for topic in topics {
            self.expire(&txn, &mut state, &topic, now)?;
        }
        txn.commit()?;
        state.last_sweep = Instant::now();
        Ok(())
    }

    /// Within `txn`: removes `topic`'s messages published more than
    /// `max_age` before `now` from the log and from every group.
    fn expire(
        &self,
        txn: &WriteTransaction,
        state: &mut State,
        topic: &str,
        now: u64,
    ) -> Result<(), redb::Error> {
        let cutoff = now.saturating_sub(self.retention.max_age.as_millis() as u64);
        let mut log = txn.open_table(LOG)?;
        let mut expired = Vec::new();
        for row in log.range((topic, 0)..=(topic, u64::MAX))? {
            let (key, value) = row?;
            if published_at_ms(value.value()) > cutoff {
                break;
            }
            expired.push((key.value().1, value.value().len() as u64));
        }
        if expired.is_empty() {
            return Ok(());
        }
        let groups: Vec<String> = txn
            .open_table(GROUPS)?
            .range((topic, "")..=(topic, "\u{7f}"))?
            .map(|row| row.map(|(key, _)| group_key(topic, key.value().1)))
            .collect::<Result<_, _>>()?;
        let mut deliveries = txn.open_table(DELIVERIES)?;
        let mut ready = txn.open_table(READY)?;
        let mut waiting = txn.open_table(WAITING)?;
        let mut bytes = 0;
        for &(sequence, size) in &expired {
            log.remove((topic, sequence))?;
            bytes += size;
            for gk in &groups {
                let Some(raw) = deliveries
                    .remove((gk.as_str(), sequence))?
                    .map(|v| v.value().to_vec())
                else {
                    continue;
                };
                let delivery = DeliveryState::decode(&raw);
                if delivery.until == 0 {
                    ready.remove((gk.as_str(), 255 - delivery.priority, sequence))?;
                } else {
                    waiting.remove((gk.as_str(), delivery.until, sequence))?;
                }
                if let Some(key) = &delivery.key
                    && let Some(group_keys) = state.keys.get_mut(gk)
                    && let Some(sequences) = group_keys.get_mut(key)
                {
                    sequences.remove(&sequence);
                    if sequences.is_empty() {
                        group_keys.remove(key);
                    }
                }
            }
        }
        let usage = state
            .topics
            .entry(topic.to_string())
            .or_insert_with(|| TopicUsage::new(topic));
        usage.messages = usage.messages.saturating_sub(expired.len() as u64);
        usage.bytes = usage.bytes.saturating_sub(bytes);
        usage.expired += expired.len() as u64;
        tracing::info!(
            broker = %self.path.display(),
            topic,
            messages = expired.len(),
            bytes,
            "expired messages older than the topic's retention"
        );
        Ok(())
    }

    /// Takes new log entries into the group, makes due waiting ones ready and
    /// hands out up to `max`. `None` means nothing now; the `u64` is when the
    /// next waiting message is due (ms), if any.
    fn take(
        &self,
        spec: &SubscriptionSpec,
        max: usize,
    ) -> BackendResult<(Vec<Delivery>, Option<u64>)> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let gk = group_key(&spec.topic, &spec.group);
        let now = now_ms();
        let mut txn = self.db.begin_write().map_err(|e| e.to_string())?;
        txn.set_durability(Durability::None)
            .map_err(|e| e.to_string())?;
        self.expire(&txn, &mut state, &spec.topic, now)
            .map_err(|e| e.to_string())?;
        let group_keys = state.keys.entry(gk.clone()).or_default();
        let mut out = Vec::new();
        let next_due;
        {
            let e = |e: redb::Error| e.to_string();
            let log = txn.open_table(LOG).map_err(|x| e(x.into()))?;
            let mut groups = txn.open_table(GROUPS).map_err(|x| e(x.into()))?;
            let mut deliveries = txn.open_table(DELIVERIES).map_err(|x| e(x.into()))?;
            let mut ready = txn.open_table(READY).map_err(|x| e(x.into()))?;
            let mut waiting = txn.open_table(WAITING).map_err(|x| e(x.into()))?;
            let topic = spec.topic.as_str();
            // 1. New messages of the topic.
            let cursor = groups
                .get((topic, spec.group.as_str()))
                .map_err(|x| e(x.into()))?
                .map_or(0, |v| v.value());
            let mut last = cursor;
            for row in log
                .range((topic, cursor + 1)..=(topic, u64::MAX))
                .map_err(|x| e(x.into()))?
            {
                let (key, value) = row.map_err(|x| e(x.into()))?;
                let sequence = key.value().1;
                let stored = StoredMessage::decode(topic, value.value());
                let mut state = DeliveryState {
                    priority: stored.message.priority,
                    key: stored.message.key.clone(),
                    ..Default::default()
                };
                if stored.not_before_ms > now {
                    state.until = stored.not_before_ms;
                    waiting
                        .insert((gk.as_str(), state.until, sequence), ())
                        .map_err(|x| e(x.into()))?;
                } else {
                    ready
                        .insert((gk.as_str(), 255 - state.priority, sequence), ())
                        .map_err(|x| e(x.into()))?;
                }
                if let Some(key) = &state.key {
                    group_keys.entry(key.clone()).or_default().insert(sequence);
                }
                deliveries
                    .insert((gk.as_str(), sequence), state.encode().as_slice())
                    .map_err(|x| e(x.into()))?;
                last = sequence;
            }
            if last != cursor {
                groups
                    .insert((topic, spec.group.as_str()), last)
                    .map_err(|x| e(x.into()))?;
            }
            // 2. Waiting messages whose time has come.
            let due: Vec<(u64, u64)> = waiting
                .range((gk.as_str(), 0, 0)..=(gk.as_str(), now, u64::MAX))
                .map_err(|x| e(x.into()))?
                .map(|row| row.map(|(k, _)| (k.value().1, k.value().2)))
                .collect::<Result<_, _>>()
                .map_err(|x| e(x.into()))?;
            for (until, sequence) in due {
                waiting
                    .remove((gk.as_str(), until, sequence))
                    .map_err(|x| e(x.into()))?;
                let Some(raw) = deliveries
                    .get((gk.as_str(), sequence))
                    .map_err(|x| e(x.into()))?
                    .map(|v| v.value().to_vec())
                else {
                    continue;
                };
                let mut state = DeliveryState::decode(&raw);
                if state.in_flight {
                    state.in_flight = false;
                    state.last_error = Some(format!(
                        "the visibility timeout of delivery {} ran out before it was acked",
                        state.attempt
                    ));
                }
                state.until = 0;
                deliveries
                    .insert((gk.as_str(), sequence), state.encode().as_slice())
                    .map_err(|x| e(x.into()))?;
                ready
                    .insert((gk.as_str(), 255 - state.priority, sequence), ())
                    .map_err(|x| e(x.into()))?;
            }
            // 3. Hand out ready ones, by priority then sequence, skipping a
            //    keyed message unless it is its key's oldest unacked one.
            let mut chosen = Vec::new();
            if max > 0 {
                for row in ready
                    .range((gk.as_str(), 0, 0)..=(gk.as_str(), 255, u64::MAX))
                    .map_err(|x| e(x.into()))?
                {
                    let (key, _) = row.map_err(|x| e(x.into()))?;
                    let (_, inverse_priority, sequence) = key.value();
                    let raw = deliveries
                        .get((gk.as_str(), sequence))
                        .map_err(|x| e(x.into()))?
                        .map(|v| v.value().to_vec())
                        .unwrap_or_default();
                    let state = DeliveryState::decode(&raw);
                    if let Some(key) = &state.key
                        && group_keys.get(key).and_then(|s| s.first()) != Some(&sequence)
                    {
                        continue;
                    }
                    chosen.push((inverse_priority, sequence, state));
                    if chosen.len() == max {
                        break;
                    }
                }
            }
            let until = now + spec.visibility.as_millis() as u64;
            for (inverse_priority, sequence, mut state) in chosen {
                ready
                    .remove((gk.as_str(), inverse_priority, sequence))
                    .map_err(|x| e(x.into()))?;
                state.attempt += 1;
                state.in_flight = true;
                state.until = until;
                waiting
                    .insert((gk.as_str(), until, sequence), ())
                    .map_err(|x| e(x.into()))?;
                deliveries
                    .insert((gk.as_str(), sequence), state.encode().as_slice())
                    .map_err(|x| e(x.into()))?;
                let raw = log
                    .get((topic, sequence))
                    .map_err(|x| e(x.into()))?
                    .map(|v| v.value().to_vec())
                    .unwrap_or_default();
                let stored = StoredMessage::decode(topic, &raw);
                out.push(Delivery {
                    receipt: Receipt {
                        sequence,
                        attempt: state.attempt,
                    },
                    id: sequence.to_string(),
                    topic: topic.into(),
                    data: stored.message.data,
                    key: stored.message.key,
                    headers: stored.message.headers,
                    content_type: stored.message.content_type,
                    priority: stored.message.priority,
                    attempt: state.attempt,
                    last_error: state.last_error,
                    published_at_ms: stored.published_at_ms,
                });
            }
            next_due = waiting
                .range((gk.as_str(), 0, 0)..=(gk.as_str(), u64::MAX, u64::MAX))
                .map_err(|x| e(x.into()))?
                .next()
                .transpose()
                .map_err(|x| e(x.into()))?
                .map(|(k, _)| k.value().1);
        }
        txn.commit().map_err(|e| e.to_string())?;
        Ok((out, next_due))
    }

    /// Applies `change` to the in-flight delivery `receipt` names, or
    /// refuses with `Lost`. `change` returns the new state (`None` = acked).
    /// Committed through `durable`, the ticket to await before
    /// acknowledging it; without, the commit may be lost in a crash.
    fn settle(
        &self,
        spec: &SubscriptionSpec,
        receipt: &Receipt,
        durable: Option<Writer>,
        change: impl FnOnce(DeliveryState) -> Option<DeliveryState>,
    ) -> Result<Option<Ticket>, MessagingError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let gk = group_key(&spec.topic, &spec.group);
        let topic = spec.topic.as_str();
        let sequence = receipt.sequence;
        let mut removed_bytes = None;
        let fail = |e: redb::Error| self.unavailable(e);
        let mut txn = self.db.begin_write().map_err(|x| fail(x.into()))?;
        if durable.is_none() {
            txn.set_durability(Durability::None)
                .map_err(|x| self.unavailable(x))?;
        }
        let mut acked_key = None;
        {
            let mut deliveries = txn.open_table(DELIVERIES).map_err(|x| fail(x.into()))?;
            let mut waiting = txn.open_table(WAITING).map_err(|x| fail(x.into()))?;
            let mut ready = txn.open_table(READY).map_err(|x| fail(x.into()))?;
            let state = deliveries
                .get((gk.as_str(), sequence))
                .map_err(|x| fail(x.into()))?
                .map(|v| DeliveryState::decode(v.value()));
            let state = match state {
                Some(state) if state.in_flight && state.attempt == receipt.attempt => state,
                Some(state) if state.attempt != receipt.attempt => {
                    return Err(MessagingError::Lost {
                        sequence,
                        reason: format!(
                            "its visibility timeout ran out and it was delivered again (attempt {})",
                            state.attempt
                        ),
                    });
                }
                Some(_) => {
                    return Err(MessagingError::Lost {
                        sequence,
                        reason: "its visibility timeout ran out".into(),
                    });
                }
                None => {
                    return Err(MessagingError::Lost {
                        sequence,
                        reason: "it was acked already, or its topic's retention expired it".into(),
                    });
                }
            };
            waiting
                .remove((gk.as_str(), state.until, sequence))
                .map_err(|x| fail(x.into()))?;
            let key = state.key.clone();
            match change(state) {
                None => {
                    deliveries
                        .remove((gk.as_str(), sequence))
                        .map_err(|x| fail(x.into()))?;
                    acked_key = Some(key);
                }
                Some(state) => {
                    if state.until == 0 {
                        ready
                            .insert((gk.as_str(), 255 - state.priority, sequence), ())
                            .map_err(|x| fail(x.into()))?;
                    } else {
                        waiting
                            .insert((gk.as_str(), state.until, sequence), ())
                            .map_err(|x| fail(x.into()))?;
                    }
                    deliveries
                        .insert((gk.as_str(), sequence), state.encode().as_slice())
                        .map_err(|x| fail(x.into()))?;
                }
            }
            if acked_key.is_some() {
                // Drop the message from the log once no group needs it.
                let groups = txn.open_table(GROUPS).map_err(|x| fail(x.into()))?;
                let mut needed = false;
                for row in groups
                    .range((topic, "")..=(topic, "\u{7f}"))
                    .map_err(|x| fail(x.into()))?
                {
                    let (group, cursor) = row.map_err(|x| fail(x.into()))?;
                    let other = group_key(topic, group.value().1);
                    if cursor.value() < sequence
                        || deliveries
                            .get((other.as_str(), sequence))
                            .map_err(|x| fail(x.into()))?
                            .is_some()
                    {
                        needed = true;
                        break;
                    }
                }
                if !needed {
                    let mut log = txn.open_table(LOG).map_err(|x| fail(x.into()))?;
                    removed_bytes = log
                        .remove((topic, sequence))
                        .map_err(|x| fail(x.into()))?
                        .map(|v| v.value().len() as u64);
                }
            }
        }
        let ticket = if let Some(writer) = durable {
            Some(writer.commit(txn).map_err(fail)?)
        } else {
            txn.commit().map_err(|x| fail(x.into()))?;
            None
        };
        if let Some(bytes) = removed_bytes
            && let Some(usage) = state.topics.get_mut(topic)
        {
            usage.messages = usage.messages.saturating_sub(1);
            usage.bytes = usage.bytes.saturating_sub(bytes);
        }
        if let Some(Some(key)) = acked_key
            && let Some(group_keys) = state.keys.get_mut(&gk)
            && let Some(sequences) = group_keys.get_mut(&key)
        {
            sequences.remove(&sequence);
            if sequences.is_empty() {
                group_keys.remove(&key);
            }
        }
        Ok(ticket)
    }

    /// Waits until the commit of `ticket` is durable.
    async fn durable(&self, ticket: Ticket) -> Result<(), MessagingError> {
        self.group
            .durable(ticket)
            .await
            .map_err(|error| self.unavailable(error))
    }
}

async fn blocking<T: Send + 'static>(
    inner: &Arc<Inner>,
    work: impl FnOnce(&Inner) -> Result<T, MessagingError> + Send + 'static,
) -> Result<T, MessagingError> {
    let task_inner = inner.clone();
    tokio::task::spawn_blocking(move || work(&task_inner))
        .await
        .map_err(|e| inner.unavailable(format!("broker task failed: {e}")))?
}

#[async_trait::async_trait]
impl MessagingBackend for EmbeddedBroker {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn publish(&self, message: &OutgoingMessage) -> Result<String, MessagingError> {
        let message = message.clone();
        let writer = self.inner.group.writer();
        let (sequence, ticket) =
            blocking(&self.inner, move |inner| inner.publish(&message, writer)).await?;
        self.inner.durable(ticket).await?;
        self.inner.published.notify_waiters();
        Ok(sequence.to_string())
    }

    fn topic_usage(&self) -> Vec<TopicUsage> {
        EmbeddedBroker::topic_usage(self)
    }

    async fn subscribe(
        &self,
        spec: &SubscriptionSpec,
    ) -> Result<Arc<dyn Consumer>, MessagingError> {
        Ok(Arc::new(EmbeddedConsumer {
            inner: self.inner.clone(),
            spec: spec.clone(),
        }))
    }

    async fn ping(&self) -> Result<(), MessagingError> {
        Ok(())
    }
}

struct EmbeddedConsumer {
    inner: Arc<Inner>,
    spec: SubscriptionSpec,
}

#[async_trait::async_trait]
impl Consumer for EmbeddedConsumer {
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, MessagingError> {
        let deadline = Instant::now() + wait;
        loop {
            // Registered before looking, so a publish in between wakes us.
            let published = self.inner.published.notified();
            tokio::pin!(published);
            published.as_mut().enable();
            let spec = self.spec.clone();
            let (deliveries, next_due) = blocking(&self.inner, move |inner| {
                inner.take(&spec, max).map_err(|e| inner.unavailable(e))
            })
            .await?;
            if !deliveries.is_empty() {
                return Ok(deliveries);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let mut wake = deadline;
            if let Some(due) = next_due {
                let in_ms = due.saturating_sub(now_ms());
                wake = wake.min(now + Duration::from_millis(in_ms));
            }
            tokio::select! {
                _ = &mut published => {}
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    async fn ack(&self, receipt: &Receipt) -> Result<(), MessagingError> {
        let (spec, receipt) = (self.spec.clone(), *receipt);
        let writer = self.inner.group.writer();
        let ticket = blocking(&self.inner, move |inner| {
            inner.settle(&spec, &receipt, Some(writer), |_| None)
        })
        .await?;
        if let Some(ticket) = ticket {
            self.inner.durable(ticket).await?;
        }
        // A key's next message may be deliverable now.
        self.inner.published.notify_waiters();
        Ok(())
    }

    async fn nack(
        &self,
        receipt: &Receipt,
        delay: Duration,
        error: &str,
    ) -> Result<(), MessagingError> {
        let (spec, receipt, error) = (self.spec.clone(), *receipt, error.to_string());
        let until = if delay.is_zero() {
            0
        } else {
            now_ms() + delay.as_millis() as u64
        };
        blocking(&self.inner, move |inner| {
            inner.settle(&spec, &receipt, None, |mut state| {
                state.in_flight = false;
                state.until = until;
                state.last_error = Some(error);
                Some(state)
            })
        })
        .await?;
        self.inner.published.notify_waiters();
        Ok(())
    }

    async fn extend(&self, receipt: &Receipt, visibility: Duration) -> Result<(), MessagingError> {
        let (spec, receipt) = (self.spec.clone(), *receipt);
        let until = now_ms() + visibility.as_millis().max(1) as u64;
        blocking(&self.inner, move |inner| {
            inner.settle(&spec, &receipt, None, |mut state| {
                state.until = until;
                Some(state)
            })
        })
        .await
        .map(drop)
    }
}
