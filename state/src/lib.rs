//! Hearth's state capability below the WIT layer: what a function's
//! `wasi:keyvalue` and `hearth:function/state` calls turn into.
//!
//! * [`StateBackend`]: the trait every backend implements, over raw
//!   namespaced keys: [`embedded`] (redb, the default), [`redis`] and
//!   [`postgres`]. All three pass the one [`conformance`] suite.
//! * [`StateStore`]: a backend under a label, with the checks every call goes
//!   through before it reaches a backend (key syntax, value size, TTL,
//!   transaction size), so every backend refuses bad input the same way.
//! * [`Namespace`]: the app a key belongs to. A function only ever holds
//!   handles scoped to its own app's namespace, or to a store label it was
//!   granted in config; there is no call that takes another app's namespace.
//!
//! # Contract, for every backend
//!
//! * **Etags.** Every successful write of a key gives it a new etag, unique
//!   across the whole backend for its lifetime (a global counter), so a key
//!   that is deleted and written again never gets an etag an old reader
//!   holds. `IfMatch(etag)` succeeds only if the key is live with exactly
//!   that etag; `IfAbsent` only if it is not live. A failed precondition is
//!   [`StateError::EtagMismatch`] (single calls) or
//!   [`StateError::TransactionConflict`] (transactions), never a partial write.
//! * **TTL.** A key written with a TTL is not live once it has passed: reads,
//!   lists and preconditions treat it as absent. A write without a TTL
//!   clears any earlier one; `increment` keeps it. A TTL must be positive.
//! * **Transactions** apply every operation or none: preconditions are
//!   checked and writes applied under one lock (redb write transaction,
//!   Redis Lua script, PostgreSQL transaction).
//! * **Increment** treats the value as a decimal `i64` in ASCII (Redis's
//!   convention, so `get` of a counter shows its number); a missing key
//!   counts as 0; anything else is [`StateError::NotANumber`].
//! * **Listing** returns live keys with a prefix in byte order, a page at a
//!   time; the cursor is the last key of the page.
//! * **Failures.** A backend that cannot be reached answers
//!   [`StateError::Unavailable`] naming the store label and backend within
//!   its operation timeout; nothing is half-applied.

use std::sync::Arc;
use std::time::Duration;

pub mod config;
pub mod conformance;
pub mod embedded;
pub mod postgres;
pub mod redis;

/// An etag: the version of one write of one key.
pub type Etag = u64;

/// A live key's value and its etag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value.
    pub value: Vec<u8>,
    /// The etag of the write that stored it.
    pub etag: Etag,
}

/// A condition a write needs to hold before it is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precondition {
    /// Write whatever is there.
    #[default]
    None,
    /// Only if the key is live with this etag.
    IfMatch(Etag),
    /// Only if the key is not live.
    IfAbsent,
}

/// One write in a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// Store `value` under `key`.
    Set {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// What must hold first.
        precondition: Precondition,
        /// How long the key lives; forever if `None`.
        ttl: Option<Duration>,
    },
    /// Remove `key` (a no-op if it is absent and there is no precondition).
    Delete {
        /// The key.
        key: String,
        /// What must hold first.
        precondition: Precondition,
    },
}

impl Operation {
    /// The key the operation writes.
    pub fn key(&self) -> &str {
        match self {
            Operation::Set { key, .. } | Operation::Delete { key, .. } => key,
        }
    }
}

/// The outcome of one operation in a committed transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A set, with the key's new etag.
    Set(Etag),
    /// A delete, and whether the key was live.
    Deleted(bool),
}

/// One page of a prefix listing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    /// Live keys, in byte order.
    pub keys: Vec<String>,
    /// Pass this back to get the next page; `None` when this was the last.
    pub cursor: Option<String>,
}

/// Why a state call failed. Every variant is something a guest can act on;
/// none of them is a trap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The key is empty, too long or has control characters.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The key (cut to 64 characters).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The value is over the store's size limit.
    #[error("value of {size} bytes is over the limit of {limit} bytes")]
    ValueTooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A TTL of zero or below.
    #[error("invalid TTL of {ttl_ms} ms: a TTL must be positive")]
    InvalidTtl {
        /// The TTL asked for.
        ttl_ms: i64,
    },
    /// A transaction with more operations than the store allows.
    #[error("transaction of {count} operations is over the limit of {limit}")]
    TooManyOperations {
        /// Operations given.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A single write's precondition failed.
    #[error(
        "etag mismatch on key {key:?}: the key changed (or does or does not exist) since it was read"
    )]
    EtagMismatch {
        /// The key.
        key: String,
    },
    /// A transaction's precondition failed; nothing was applied.
    #[error("transaction conflict on key {key:?}: nothing was applied")]
    TransactionConflict {
        /// The first key whose precondition failed.
        key: String,
    },
    /// `increment` on a value that is not a decimal i64 (or would overflow).
    #[error("key {key:?} does not hold a decimal 64-bit integer")]
    NotANumber {
        /// The key.
        key: String,
    },
    /// The backend could not be reached or failed; nothing was applied.
    #[error("state store `{store}` ({backend}) is unavailable: {detail}")]
    Unavailable {
        /// The store's label.
        store: String,
        /// The backend type.
        backend: String,
        /// What went wrong.
        detail: String,
    },
}

impl StateError {
    /// A short stable name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            StateError::InvalidKey { .. } => "invalid-key",
            StateError::ValueTooLarge { .. } => "value-too-large",
            StateError::InvalidTtl { .. } => "invalid-ttl",
            StateError::TooManyOperations { .. } => "too-many-operations",
            StateError::EtagMismatch { .. } => "etag-mismatch",
            StateError::TransactionConflict { .. } => "transaction-conflict",
            StateError::NotANumber { .. } => "not-a-number",
            StateError::Unavailable { .. } => "unavailable",
        }
    }
}

/// What a backend reports when it fails; [`StateStore`] adds its label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// See [`StateError::EtagMismatch`] / [`StateError::TransactionConflict`].
    #[error("precondition failed on key {key:?}")]
    PreconditionFailed {
        /// The key.
        key: String,
    },
    /// See [`StateError::NotANumber`].
    #[error("key {key:?} does not hold a decimal 64-bit integer")]
    NotANumber {
        /// The key.
        key: String,
    },
    /// The backend could not be reached or failed.
    #[error("{0}")]
    Unavailable(String),
}

/// The app a key belongs to: the unit of isolation between functions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace(Arc<str>);

impl Namespace {
    /// A namespace; its name is 1–128 of `[a-z0-9._-]` (so backends can
    /// join it to a key with `:`/`/` unambiguously).
    pub fn new(name: &str) -> Result<Self, String> {
        let valid = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if valid {
            Ok(Namespace(name.into()))
        } else {
            Err(format!(
                "namespace {name:?} must be 1-128 characters of a-z, 0-9, '.', '_' and '-'"
            ))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A storage backend. Keys are already validated and scoped by namespace;
/// see the crate docs for the contract every implementation keeps.
#[async_trait::async_trait]
pub trait StateBackend: Send + Sync + 'static {
    /// The backend type as written in config (`embedded`, `redis`, `postgres`).
    fn kind(&self) -> &'static str;
    /// Whether the backend can be reached now (connecting if need be).
    async fn ping(&self) -> Result<(), BackendError>;
    /// The live entry under `key`.
    async fn get(&self, ns: &Namespace, key: &str) -> Result<Option<Entry>, BackendError>;
    /// Stores `value`; returns the new etag.
    async fn set(
        &self,
        ns: &Namespace,
        key: &str,
        value: &[u8],
        precondition: Precondition,
        ttl: Option<Duration>,
    ) -> Result<Etag, BackendError>;
    /// Removes `key`; returns whether it was live.
    async fn delete(
        &self,
        ns: &Namespace,
        key: &str,
        precondition: Precondition,
    ) -> Result<bool, BackendError>;
    /// Adds `delta` to the decimal number under `key`; returns the new number.
    async fn increment(&self, ns: &Namespace, key: &str, delta: i64) -> Result<i64, BackendError>;
    /// Applies all of `operations` or none.
    async fn transact(
        &self,
        ns: &Namespace,
        operations: &[Operation],
    ) -> Result<Vec<Applied>, BackendError>;
    /// Up to `limit` live keys starting with `prefix`, after `after` if given.
    async fn list(
        &self,
        ns: &Namespace,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page, BackendError>;
}

/// Limits a store enforces before any call reaches its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateLimits {
    /// Largest value, in bytes.
    pub max_value_bytes: u64,
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
    /// Most operations in one transaction (and keys in one batch call).
    pub max_operations: usize,
    /// Most keys in one listing page.
    pub max_page: u32,
}

impl Default for StateLimits {
    fn default() -> Self {
        StateLimits {
            max_value_bytes: 1 << 20,
            max_key_bytes: 1024,
            max_operations: 128,
            max_page: 1000,
        }
    }
}

/// A backend under a label, with the checks of [`StateLimits`].
#[derive(Clone)]
pub struct StateStore {
    label: Arc<str>,
    backend: Arc<dyn StateBackend>,
    limits: StateLimits,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("label", &self.label)
            .field("backend", &self.backend.kind())
            .field("limits", &self.limits)
            .finish()
    }
}

impl StateStore {
    /// `backend` under `label`, enforcing `limits`.
    pub fn new(label: &str, backend: Arc<dyn StateBackend>, limits: StateLimits) -> Self {
        StateStore {
            label: label.into(),
            backend,
            limits,
        }
    }

    /// The label it was configured under.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The backend type.
    pub fn kind(&self) -> &'static str {
        self.backend.kind()
    }

    /// The limits in force.
    pub fn limits(&self) -> StateLimits {
        self.limits
    }

    /// Whether the backend can be reached now.
    pub async fn ping(&self) -> Result<(), StateError> {
        self.backend.ping().await.map_err(|e| self.error(e, false))
    }

    /// The live entry under `key`.
    pub async fn get(&self, ns: &Namespace, key: &str) -> Result<Option<Entry>, StateError> {
        self.check_key(key)?;
        self.backend
            .get(ns, key)
            .await
            .map_err(|e| self.error(e, false))
    }

    /// Stores `value` under `key` if `precondition` holds; the new etag.
    pub async fn set(
        &self,
        ns: &Namespace,
        key: &str,
        value: &[u8],
        precondition: Precondition,
        ttl_ms: Option<i64>,
    ) -> Result<Etag, StateError> {
        self.check_key(key)?;
        self.check_value(value)?;
        let ttl = check_ttl(ttl_ms)?;
        self.backend
            .set(ns, key, value, precondition, ttl)
            .await
            .map_err(|e| self.error(e, false))
    }

    /// Removes `key` if `precondition` holds; whether it was live.
    pub async fn delete(
        &self,
        ns: &Namespace,
        key: &str,
        precondition: Precondition,
    ) -> Result<bool, StateError> {
        self.check_key(key)?;
        self.backend
            .delete(ns, key, precondition)
            .await
            .map_err(|e| self.error(e, false))
    }

    /// Adds `delta` to the number under `key`; the new number.
    pub async fn increment(
        &self,
        ns: &Namespace,
        key: &str,
        delta: i64,
    ) -> Result<i64, StateError> {
        self.check_key(key)?;
        self.backend
            .increment(ns, key, delta)
            .await
            .map_err(|e| self.error(e, false))
    }

    /// Applies every operation or none. The operations are checked (keys,
    /// values, TTLs, count) before anything is sent to the backend.
    pub async fn transact(
        &self,
        ns: &Namespace,
        operations: Vec<TransactionOp>,
    ) -> Result<Vec<Applied>, StateError> {
        self.check_count(operations.len())?;
        let mut checked = Vec::with_capacity(operations.len());
        for operation in operations {
            checked.push(match operation {
                TransactionOp::Set {
                    key,
                    value,
                    precondition,
                    ttl_ms,
                } => {
                    self.check_key(&key)?;
                    self.check_value(&value)?;
                    Operation::Set {
                        key,
                        value,
                        precondition,
                        ttl: check_ttl(ttl_ms)?,
                    }
                }
                TransactionOp::Delete { key, precondition } => {
                    self.check_key(&key)?;
                    Operation::Delete { key, precondition }
                }
            });
        }
        if checked.is_empty() {
            return Ok(Vec::new());
        }
        self.backend
            .transact(ns, &checked)
            .await
            .map_err(|e| self.error(e, true))
    }

    /// The values of `keys`, `None` where a key is not live.
    pub async fn get_many(
        &self,
        ns: &Namespace,
        keys: &[String],
    ) -> Result<Vec<Option<Entry>>, StateError> {
        self.check_count(keys.len())?;
        let mut entries = Vec::with_capacity(keys.len());
        for key in keys {
            entries.push(self.get(ns, key).await?);
        }
        Ok(entries)
    }

    /// Up to `limit` (at most [`StateLimits::max_page`]) live keys starting
    /// with `prefix`, after `cursor`.
    pub async fn list(
        &self,
        ns: &Namespace,
        prefix: &str,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page, StateError> {
        if !prefix.is_empty() {
            self.check_key(prefix)?;
        }
        if let Some(cursor) = cursor {
            self.check_key(cursor)?;
        }
        let limit = limit.clamp(1, self.limits.max_page);
        self.backend
            .list(ns, prefix, cursor, limit)
            .await
            .map_err(|e| self.error(e, false))
    }

    fn check_key(&self, key: &str) -> Result<(), StateError> {
        let reason = if key.is_empty() {
            Some("a key must not be empty".to_string())
        } else if key.len() > self.limits.max_key_bytes {
            Some(format!(
                "{} bytes is over the limit of {} bytes",
                key.len(),
                self.limits.max_key_bytes
            ))
        } else if key.chars().any(char::is_control) {
            Some("a key must not contain control characters".to_string())
        } else {
            None
        };
        match reason {
            None => Ok(()),
            Some(reason) => Err(StateError::InvalidKey {
                key: key.chars().take(64).collect(),
                reason,
            }),
        }
    }

    fn check_value(&self, value: &[u8]) -> Result<(), StateError> {
        let size = value.len() as u64;
        if size > self.limits.max_value_bytes {
            return Err(StateError::ValueTooLarge {
                size,
                limit: self.limits.max_value_bytes,
            });
        }
        Ok(())
    }

    fn check_count(&self, count: usize) -> Result<(), StateError> {
        if count > self.limits.max_operations {
            return Err(StateError::TooManyOperations {
                count,
                limit: self.limits.max_operations,
            });
        }
        Ok(())
    }

    fn error(&self, error: BackendError, in_transaction: bool) -> StateError {
        match error {
            BackendError::PreconditionFailed { key } if in_transaction => {
                StateError::TransactionConflict { key }
            }
            BackendError::PreconditionFailed { key } => StateError::EtagMismatch { key },
            BackendError::NotANumber { key } => StateError::NotANumber { key },
            BackendError::Unavailable(detail) => {
                tracing::warn!(store = %self.label, backend = self.backend.kind(), %detail, "state backend unavailable");
                StateError::Unavailable {
                    store: self.label.to_string(),
                    backend: self.backend.kind().to_string(),
                    detail,
                }
            }
        }
    }
}

/// A transaction operation as a guest gives it, before checking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransactionOp {
    /// See [`Operation::Set`]; `ttl_ms` is checked to be positive.
    Set {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// What must hold first.
        precondition: Precondition,
        /// TTL in milliseconds.
        ttl_ms: Option<i64>,
    },
    /// See [`Operation::Delete`].
    Delete {
        /// The key.
        key: String,
        /// What must hold first.
        precondition: Precondition,
    },
}

fn check_ttl(ttl_ms: Option<i64>) -> Result<Option<Duration>, StateError> {
    match ttl_ms {
        None => Ok(None),
        Some(ttl_ms) if ttl_ms <= 0 => Err(StateError::InvalidTtl { ttl_ms }),
        Some(ttl_ms) => Ok(Some(Duration::from_millis(ttl_ms as u64))),
    }
}

/// Parses a counter value (decimal ASCII i64), for backends that add in Rust.
pub(crate) fn parse_counter(key: &str, value: &[u8]) -> Result<i64, BackendError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.trim().parse::<i64>().ok())
        .ok_or_else(|| BackendError::NotANumber {
            key: key.to_string(),
        })
}

/// `current + delta`, or [`BackendError::NotANumber`] on overflow.
pub(crate) fn add_counter(key: &str, current: i64, delta: i64) -> Result<i64, BackendError> {
    current
        .checked_add(delta)
        .ok_or_else(|| BackendError::NotANumber {
            key: key.to_string(),
        })
}

/// `work`, or [`BackendError::Unavailable`] naming `server` once `timeout`
/// has passed (remote backends bound every call with it).
pub(crate) async fn within<T>(
    timeout: Duration,
    server: &str,
    work: impl Future<Output = Result<T, BackendError>>,
) -> Result<T, BackendError> {
    match tokio::time::timeout(timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(BackendError::Unavailable(format!(
            "no answer from {server} within {} ms",
            timeout.as_millis()
        ))),
    }
}

/// [`BackendError::Unavailable`] with the error and its causes (deadpool
/// and tokio-postgres, for one, keep the server's message in the source
/// chain).
pub(crate) fn unavailable(error: impl std::error::Error) -> BackendError {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !message.contains(&cause_text) {
            message.push_str(": ");
            message.push_str(&cause_text);
        }
        source = cause.source();
    }
    BackendError::Unavailable(message)
}

/// A TTL in whole milliseconds for a backend: 0 for none, else at least 1.
pub(crate) fn ttl_millis(ttl: Option<Duration>) -> u64 {
    ttl.map_or(0, |ttl| (ttl.as_millis() as u64).max(1))
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
