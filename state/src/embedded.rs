//! `embedded`: the default backend, a single redb file on the node.
//!
//! # Durability
//!
//! Every call that writes (`set`, `delete`, `increment`, `transact`) is one
//! redb write transaction, and returns only once it is durable: a write a
//! guest saw succeed survives `kill -9` of hearthd and a power cut. The
//! fsync is shared (group commit, [`hearth_group_commit`]): a transaction
//! commits without one, and a single durable commit then covers every
//! write that arrived while the previous fsync ran, so 16 concurrent
//! writers pay about one fsync per batch instead of one each. A write is
//! visible to other readers from its commit, before its fsync; if hearthd
//! dies in between (under a millisecond on a healthy disk), the write is
//! gone and was never acknowledged, and whatever a reader then wrote is
//! ordered after it and gone too. Reads never write. Expired keys are
//! invisible at once and physically removed by a sweep every
//! [`SWEEP_INTERVAL`] (itself a durable transaction).
//!
//! Writes run on tokio's blocking pool, one transaction at a time; the
//! wait for the fsync is async. Reads run inline on the calling task.
//!
//! # The read cache
//!
//! hearthd holds the file exclusively (redb locks it), so every write goes
//! through this backend and a cache in memory can stay exact: `get` is
//! answered from [`EmbeddedBackend::cache_budget`] bytes of recently used
//! entries (absent keys included) and reads the file only on a miss. A
//! write updates the cache after its commit, under the same lock that
//! serialises writes; a miss that raced with a write does not fill the
//! cache (a generation counter tells). Over budget, arbitrary entries are
//! dropped until a quarter of it is free. Listing always reads the file.
//!
//! # Layout
//!
//! Table `entries`: `(namespace, key)` → 8 bytes etag (LE) ‖ 8 bytes expiry
//! in ms since the epoch (LE, 0 = none) ‖ value. Table `meta`: `"etag"` →
//! the last etag handed out.

use crate::{
    Applied, BackendError, Entry, Etag, Namespace, Operation, Page, Precondition, StateBackend,
    add_counter, now_ms, parse_counter, unavailable,
};
use hearth_group_commit::GroupCommit;
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition};
use std::collections::HashMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

const ENTRIES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const ETAG_COUNTER: &str = "etag";
const HEADER: usize = 16;

/// How often expired keys are removed from the file.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Default bytes of entries the read cache holds.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// Per-entry bookkeeping counted against the cache budget.
const CACHE_ENTRY_OVERHEAD: usize = 64;

/// The embedded backend.
pub struct EmbeddedBackend {
    db: Arc<Database>,
    path: PathBuf,
    cache: Arc<Mutex<ReadCache>>,
    writes: Arc<Mutex<()>>,
    group: Arc<GroupCommit>,
}

/// What the cache knows of a key: `None` = absent, else (etag, expiry, value).
type Cached = Option<(Etag, u64, Vec<u8>)>;

struct ReadCache {
    entries: HashMap<String, Cached>,
    bytes: usize,
    budget: usize,
    /// Bumped by every write; a miss fills the cache only if it is unchanged.
    generation: u64,
}

impl ReadCache {
    fn key(ns: &str, key: &str) -> String {
        // Namespaces are [a-z0-9._-] and keys have no control characters.
        format!("{ns}\u{0}{key}")
    }

    fn size(key: &str, cached: &Cached) -> usize {
        key.len() + cached.as_ref().map_or(0, |(_, _, v)| v.len()) + CACHE_ENTRY_OVERHEAD
    }

    fn insert(&mut self, key: String, cached: Cached) {
        if self.budget == 0 {
            return;
        }
        self.bytes += Self::size(&key, &cached);
        if let Some(old) = self.entries.insert(key.clone(), cached) {
            self.bytes -= Self::size(&key, &old);
        }
        if self.bytes > self.budget {
            let target = self.budget / 4 * 3;
            let victims: Vec<String> = self.entries.keys().cloned().collect();
            for victim in victims {
                if self.bytes <= target {
                    break;
                }
                if let Some(old) = self.entries.remove(&victim) {
                    self.bytes -= Self::size(&victim, &old);
                }
            }
        }
    }
}

impl EmbeddedBackend {
    /// Opens (creating if need be) the store file at `path`.
    pub fn open(path: &Path) -> Result<Self, String> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        let db =
            Database::create(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let txn = db.begin_write().map_err(|e| e.to_string())?;
        txn.open_table(ENTRIES).map_err(|e| e.to_string())?;
        txn.open_table(META).map_err(|e| e.to_string())?;
        txn.commit().map_err(|e| e.to_string())?;
        let db = Arc::new(db);
        spawn_sweeper(Arc::downgrade(&db));
        let group = GroupCommit::start(&db, "hearth-state-sync")
            .map_err(|e| format!("cannot start the fsync thread of {}: {e}", path.display()))?;
        Ok(EmbeddedBackend {
            db,
            path: path.to_owned(),
            cache: Arc::new(Mutex::new(ReadCache {
                entries: HashMap::new(),
                bytes: 0,
                budget: DEFAULT_CACHE_BYTES,
                generation: 0,
            })),
            writes: Arc::new(Mutex::new(())),
            group: Arc::new(group),
        })
    }

    /// Sets the read cache's budget in bytes (0 turns it off).
    pub fn with_cache_budget(self, bytes: usize) -> Self {
        {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache.budget = bytes;
            cache.entries.clear();
            cache.bytes = 0;
        }
        self
    }

    /// The read cache's budget in bytes.
    pub fn cache_budget(&self) -> usize {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).budget
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Writer<'_>) -> Result<T, BackendError> + Send + 'static,
    ) -> Result<T, BackendError> {
        let (db, cache, writes, group) = (
            self.db.clone(),
            self.cache.clone(),
            self.writes.clone(),
            self.group.clone(),
        );
        let writer = group.writer();
        let (value, ticket) = blocking(move || {
            let _serialised = writes.lock().unwrap_or_else(|e| e.into_inner());
            let txn = db.begin_write().map_err(unavailable)?;
            let mut touched = Vec::new();
            let result = {
                let mut writer = Writer {
                    entries: txn.open_table(ENTRIES).map_err(unavailable)?,
                    meta: txn.open_table(META).map_err(unavailable)?,
                    now: now_ms(),
                    touched: &mut touched,
                };
                work(&mut writer)
            };
            match result {
                Ok(value) => {
                    let committed = writer.commit(txn).map_err(unavailable);
                    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
                    cache.generation += 1;
                    match committed {
                        Ok(_) => {
                            for (key, cached) in touched {
                                cache.insert(key, cached);
                            }
                        }
                        // Unknown outcome: forget what the cache knew of these keys.
                        Err(_) => {
                            for (key, _) in touched {
                                if let Some(old) = cache.entries.remove(&key) {
                                    cache.bytes -= ReadCache::size(&key, &old);
                                }
                            }
                        }
                    }
                    Ok((value, committed?))
                }
                Err(error) => {
                    txn.abort().map_err(unavailable)?;
                    Err(error)
                }
            }
        })
        .await?;
        self.group
            .durable(ticket)
            .await
            .map_err(BackendError::Unavailable)?;
        Ok(value)
    }
}

fn spawn_sweeper(db: Weak<Database>) {
    let _ = std::thread::Builder::new()
        .name("hearth-state-sweep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(SWEEP_INTERVAL);
                let Some(db) = db.upgrade() else { return };
                if let Err(error) = sweep(&db) {
                    tracing::warn!(%error, "sweeping expired state keys failed");
                }
            }
        });
}

fn sweep(db: &Database) -> Result<(), BackendError> {
    let txn = db.begin_write().map_err(unavailable)?;
    {
        let mut entries = txn.open_table(ENTRIES).map_err(unavailable)?;
        let now = now_ms();
        entries
            .retain(|_, raw| decode_live(raw, now).is_some())
            .map_err(unavailable)?;
    }
    txn.commit().map_err(unavailable)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
) -> Result<T, BackendError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| BackendError::Unavailable(format!("state task failed: {e}")))?
}

/// A stored entry, as laid out in the `entries` table.
struct Stored<'a> {
    etag: Etag,
    /// ms since the epoch; 0 = none.
    expires: u64,
    value: &'a [u8],
}

/// The entry in `raw`; `None` only for a damaged record.
fn decode(raw: &[u8]) -> Option<Stored<'_>> {
    Some(Stored {
        etag: u64::from_le_bytes(raw.get(0..8)?.try_into().ok()?),
        expires: u64::from_le_bytes(raw.get(8..HEADER)?.try_into().ok()?),
        value: &raw[HEADER..],
    })
}

/// Whether an entry expiring at `expires` (0 = never) is live at `now`.
fn is_live(expires: u64, now: u64) -> bool {
    expires == 0 || expires > now
}

/// The entry in `raw` if it is live at `now`.
fn decode_live(raw: &[u8], now: u64) -> Option<Stored<'_>> {
    decode(raw).filter(|stored| is_live(stored.expires, now))
}

fn encode(etag: Etag, expires: u64, value: &[u8]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(HEADER + value.len());
    raw.extend_from_slice(&etag.to_le_bytes());
    raw.extend_from_slice(&expires.to_le_bytes());
    raw.extend_from_slice(value);
    raw
}

fn holds(precondition: Precondition, current: Option<Etag>) -> bool {
    match precondition {
        Precondition::None => true,
        Precondition::IfMatch(etag) => current == Some(etag),
        Precondition::IfAbsent => current.is_none(),
    }
}

struct Writer<'txn> {
    entries: Table<'txn, (&'static str, &'static str), &'static [u8]>,
    meta: Table<'txn, &'static str, u64>,
    now: u64,
    /// What each written key holds now, for the read cache.
    touched: &'txn mut Vec<(String, Cached)>,
}

impl Writer<'_> {
    /// The live entry's etag, value and expiry.
    fn current(&self, ns: &str, key: &str) -> Result<Option<(Etag, Vec<u8>, u64)>, BackendError> {
        let Some(raw) = self.entries.get((ns, key)).map_err(unavailable)? else {
            return Ok(None);
        };
        Ok(decode_live(raw.value(), self.now)
            .map(|stored| (stored.etag, stored.value.to_vec(), stored.expires)))
    }

    fn next_etag(&mut self) -> Result<Etag, BackendError> {
        let last = self
            .meta
            .get(ETAG_COUNTER)
            .map_err(unavailable)?
            .map(|v| v.value())
            .unwrap_or(0);
        let next = last + 1;
        self.meta.insert(ETAG_COUNTER, next).map_err(unavailable)?;
        Ok(next)
    }

    fn set(
        &mut self,
        ns: &str,
        key: &str,
        value: &[u8],
        precondition: Precondition,
        ttl: Option<Duration>,
    ) -> Result<Etag, BackendError> {
        let current = self.current(ns, key)?.map(|(etag, ..)| etag);
        if !holds(precondition, current) {
            return Err(BackendError::PreconditionFailed { key: key.into() });
        }
        let etag = self.next_etag()?;
        let expires = match crate::ttl_millis(ttl) {
            0 => 0,
            ttl => self.now.saturating_add(ttl),
        };
        self.put(ns, key, etag, expires, value)?;
        Ok(etag)
    }

    fn put(
        &mut self,
        ns: &str,
        key: &str,
        etag: Etag,
        expires: u64,
        value: &[u8],
    ) -> Result<(), BackendError> {
        self.entries
            .insert((ns, key), encode(etag, expires, value).as_slice())
            .map_err(unavailable)?;
        self.touched.push((
            ReadCache::key(ns, key),
            Some((etag, expires, value.to_vec())),
        ));
        Ok(())
    }

    fn delete(
        &mut self,
        ns: &str,
        key: &str,
        precondition: Precondition,
    ) -> Result<bool, BackendError> {
        let current = self.current(ns, key)?.map(|(etag, ..)| etag);
        if !holds(precondition, current) {
            return Err(BackendError::PreconditionFailed { key: key.into() });
        }
        self.entries.remove((ns, key)).map_err(unavailable)?;
        self.touched.push((ReadCache::key(ns, key), None));
        Ok(current.is_some())
    }
}

#[async_trait::async_trait]
impl StateBackend for EmbeddedBackend {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn ping(&self) -> Result<(), BackendError> {
        // A read, so inline like every read.
        self.db.begin_read().map(drop).map_err(unavailable)
    }

    async fn get(&self, ns: &Namespace, key: &str) -> Result<Option<Entry>, BackendError> {
        let cache_key = ReadCache::key(ns.as_str(), key);
        let now = now_ms();
        let live = |cached: &Cached| {
            cached
                .as_ref()
                .filter(|(_, expires, _)| is_live(*expires, now))
                .map(|(etag, _, value)| Entry {
                    value: value.clone(),
                    etag: *etag,
                })
        };
        let generation = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(cached) = cache.entries.get(&cache_key) {
                return Ok(live(cached));
            }
            cache.generation
        };
        // A miss reads the file inline: a read transaction takes no lock
        // and its pages are almost always in memory.
        let cached: Cached = {
            let txn = self.db.begin_read().map_err(unavailable)?;
            let table = txn.open_table(ENTRIES).map_err(unavailable)?;
            match table.get((ns.as_str(), key)).map_err(unavailable)? {
                None => None,
                Some(raw) => decode(raw.value())
                    .map(|stored| (stored.etag, stored.expires, stored.value.to_vec())),
            }
        };
        let entry = live(&cached);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.generation == generation {
            cache.insert(cache_key, cached);
        }
        Ok(entry)
    }

    async fn set(
        &self,
        ns: &Namespace,
        key: &str,
        value: &[u8],
        precondition: Precondition,
        ttl: Option<Duration>,
    ) -> Result<Etag, BackendError> {
        let (ns, key, value) = (ns.clone(), key.to_string(), value.to_vec());
        self.write(move |w| w.set(ns.as_str(), &key, &value, precondition, ttl))
            .await
    }

    async fn delete(
        &self,
        ns: &Namespace,
        key: &str,
        precondition: Precondition,
    ) -> Result<bool, BackendError> {
        let (ns, key) = (ns.clone(), key.to_string());
        self.write(move |w| w.delete(ns.as_str(), &key, precondition))
            .await
    }

    async fn increment(&self, ns: &Namespace, key: &str, delta: i64) -> Result<i64, BackendError> {
        let (ns, key) = (ns.clone(), key.to_string());
        self.write(move |w| {
            let (current, expires) = match w.current(ns.as_str(), &key)? {
                Some((_, value, expires)) => (parse_counter(&key, &value)?, expires),
                None => (0, 0),
            };
            let next = add_counter(&key, current, delta)?;
            let etag = w.next_etag()?;
            w.put(
                ns.as_str(),
                &key,
                etag,
                expires,
                next.to_string().as_bytes(),
            )?;
            Ok(next)
        })
        .await
    }

    async fn transact(
        &self,
        ns: &Namespace,
        operations: &[Operation],
    ) -> Result<Vec<Applied>, BackendError> {
        let (ns, operations) = (ns.clone(), operations.to_vec());
        self.write(move |w| {
            let mut applied = Vec::with_capacity(operations.len());
            for operation in &operations {
                applied.push(match operation {
                    Operation::Set {
                        key,
                        value,
                        precondition,
                        ttl,
                    } => Applied::Set(w.set(ns.as_str(), key, value, *precondition, *ttl)?),
                    Operation::Delete { key, precondition } => {
                        Applied::Deleted(w.delete(ns.as_str(), key, *precondition)?)
                    }
                });
            }
            Ok(applied)
        })
        .await
    }

    async fn list(
        &self,
        ns: &Namespace,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page, BackendError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(ENTRIES).map_err(unavailable)?;
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded((ns.as_str(), after)),
            _ => Bound::Included((ns.as_str(), prefix)),
        };
        let now = now_ms();
        let mut page = Page::default();
        for item in table
            .range::<(&str, &str)>((start, Bound::Unbounded))
            .map_err(unavailable)?
        {
            let (key, raw) = item.map_err(unavailable)?;
            let (key_ns, key) = key.value();
            if key_ns != ns.as_str() || !key.starts_with(prefix) {
                break;
            }
            if decode_live(raw.value(), now).is_none() {
                continue;
            }
            page.keys.push(key.to_string());
            if page.keys.len() == limit as usize {
                page.cursor = Some(key.to_string());
                break;
            }
        }
        Ok(page)
    }
}
