//! `redis`: keys in a Redis server (standalone; not Redis Cluster).
//!
//! # Layout
//!
//! * `hearth:s:{namespace}:{key}`: a hash with fields `v` (value) and `e`
//!   (etag); a TTL is the Redis key's own expiry (`PEXPIRE`).
//! * `hearth:i:{namespace}`: a sorted set of the namespace's keys (score 0),
//!   for prefix listing in byte order with `ZRANGEBYLEX`. Members whose
//!   hash has expired are dropped from it when a listing meets them.
//! * `hearth:etag`: the etag counter (`INCR`).
//!
//! Every write is one Lua script, so its precondition check and its writes
//! are atomic, and a transaction checks every precondition before it
//! writes anything. Counters use `HINCRBY`, so they stay decimal text.
//!
//! # Failures
//!
//! The connection is made on first use and re-made after a failure
//! (`ConnectionManager`); each call is bounded by the operation timeout and
//! answers [`BackendError::Unavailable`] past it. Durability is the
//! server's: with Redis's default (no AOF fsync per write) an acknowledged
//! write can be lost if the *Redis server* crashes; configure
//! `appendfsync always` where that matters.

use crate::{
    Applied, BackendError, Entry, Etag, Namespace, Operation, Page, Precondition, StateBackend,
    unavailable,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};
use std::time::Duration;
use tokio::sync::Mutex;

const ETAG_COUNTER: &str = "hearth:etag";

/// Checks a precondition on KEYS[1] from ARGV[1] (mode) and ARGV[2] (etag).
/// Returns 0 when it holds.
const CHECK: &str = r#"
local function holds(key, mode, etag)
  local current = redis.call('HGET', key, 'e')
  if mode == 'match' then return current == etag end
  if mode == 'absent' then return not current end
  return true
end
"#;

const SET: &str = r#"
if not holds(KEYS[1], ARGV[1], ARGV[2]) then return -1 end
local etag = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], 'v', ARGV[3], 'e', etag)
if tonumber(ARGV[4]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[4]) else redis.call('PERSIST', KEYS[1]) end
redis.call('ZADD', KEYS[2], 0, ARGV[5])
return etag
"#;

const DELETE: &str = r#"
if not holds(KEYS[1], ARGV[1], ARGV[2]) then return -1 end
redis.call('ZREM', KEYS[2], ARGV[3])
return redis.call('DEL', KEYS[1])
"#;

const INCREMENT: &str = r#"
local ok = pcall(redis.call, 'HINCRBY', KEYS[1], 'v', ARGV[1])
if not ok then return redis.error_reply('NOTANUMBER') end
redis.call('HSET', KEYS[1], 'e', redis.call('INCR', KEYS[3]))
redis.call('ZADD', KEYS[2], 0, ARGV[2])
return redis.call('HGET', KEYS[1], 'v')
"#;

/// Removes members (ARGV) from the index (KEYS[1]) whose hash, named by
/// the prefix KEYS[2] plus the member, is gone. Checked inside the script,
/// so a key written again meanwhile keeps its member.
const PRUNE: &str = r#"
for i = 1, #ARGV do
  if redis.call('EXISTS', KEYS[2] .. ARGV[i]) == 0 then redis.call('ZREM', KEYS[1], ARGV[i]) end
end
return 0
"#;

/// KEYS: index, counter, then one hash per operation. ARGV per operation:
/// kind ('set'|'del'), mode, etag, value, ttl ms, member. Returns -1-i for a
/// failed precondition of operation i, else the list of results.
const TRANSACT: &str = r#"
local n = #KEYS - 2
for i = 1, n do
  local a = (i - 1) * 6
  if not holds(KEYS[i + 2], ARGV[a + 2], ARGV[a + 3]) then return -i end
end
local results = {}
for i = 1, n do
  local a = (i - 1) * 6
  local key = KEYS[i + 2]
  if ARGV[a + 1] == 'set' then
    local etag = redis.call('INCR', KEYS[2])
    redis.call('HSET', key, 'v', ARGV[a + 4], 'e', etag)
    if tonumber(ARGV[a + 5]) > 0 then redis.call('PEXPIRE', key, ARGV[a + 5]) else redis.call('PERSIST', key) end
    redis.call('ZADD', KEYS[1], 0, ARGV[a + 6])
    results[i] = etag
  else
    redis.call('ZREM', KEYS[1], ARGV[a + 6])
    results[i] = redis.call('DEL', key)
  end
end
return results
"#;

/// The Redis backend.
pub struct RedisBackend {
    client: redis::Client,
    connection: Mutex<Option<ConnectionManager>>,
    timeout: Duration,
    set: Script,
    delete: Script,
    increment: Script,
    transact: Script,
    prune: Script,
}

impl RedisBackend {
    /// A backend for the server at `url` (`redis://host:port/db`); nothing
    /// is connected until the first call. Every call is bounded by `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        let client =
            redis::Client::open(url).map_err(|e| format!("invalid Redis URL {url:?}: {e}"))?;
        let script = |body: &str| Script::new(&format!("{CHECK}{body}"));
        Ok(RedisBackend {
            client,
            connection: Mutex::new(None),
            timeout,
            set: script(SET),
            delete: script(DELETE),
            increment: script(INCREMENT),
            transact: script(TRANSACT),
            prune: Script::new(PRUNE),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, BackendError> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = &*slot {
            return Ok(connection.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_with_config(self.client.clone(), config)
            .await
            .map_err(unavailable)?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// Runs `call` on a connection within the operation timeout.
    async fn call<T>(
        &self,
        call: impl AsyncFnOnce(ConnectionManager) -> redis::RedisResult<T>,
    ) -> Result<T, BackendError> {
        let work = async {
            let connection = self.connection().await?;
            call(connection).await.map_err(|error| {
                if error.code() == Some("NOTANUMBER") || error.to_string().contains("NOTANUMBER") {
                    BackendError::NotANumber { key: String::new() }
                } else {
                    unavailable(error)
                }
            })
        };
        crate::within(self.timeout, "Redis", work).await
    }
}

fn data_key(ns: &Namespace, key: &str) -> String {
    format!("hearth:s:{ns}:{key}")
}

fn index_key(ns: &Namespace) -> String {
    format!("hearth:i:{ns}")
}

fn mode(precondition: Precondition) -> (&'static str, String) {
    match precondition {
        Precondition::None => ("any", String::new()),
        Precondition::IfMatch(etag) => ("match", etag.to_string()),
        Precondition::IfAbsent => ("absent", String::new()),
    }
}

#[async_trait::async_trait]
impl StateBackend for RedisBackend {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.call(async |mut c| redis::cmd("PING").query_async::<String>(&mut c).await)
            .await
            .map(drop)
    }

    async fn get(&self, ns: &Namespace, key: &str) -> Result<Option<Entry>, BackendError> {
        let data = data_key(ns, key);
        let (value, etag): (Option<Vec<u8>>, Option<u64>) = self
            .call(async |mut c| {
                redis::cmd("HMGET")
                    .arg(&data)
                    .arg("v")
                    .arg("e")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(match (value, etag) {
            (Some(value), Some(etag)) => Some(Entry { value, etag }),
            _ => None,
        })
    }

    async fn set(
        &self,
        ns: &Namespace,
        key: &str,
        value: &[u8],
        precondition: Precondition,
        ttl: Option<Duration>,
    ) -> Result<Etag, BackendError> {
        let (mode, etag) = mode(precondition);
        let result: i64 = self
            .call(async |mut c| {
                self.set
                    .key(data_key(ns, key))
                    .key(index_key(ns))
                    .key(ETAG_COUNTER)
                    .arg(mode)
                    .arg(etag)
                    .arg(value)
                    .arg(crate::ttl_millis(ttl))
                    .arg(key)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        if result < 0 {
            return Err(BackendError::PreconditionFailed { key: key.into() });
        }
        Ok(result as Etag)
    }

    async fn delete(
        &self,
        ns: &Namespace,
        key: &str,
        precondition: Precondition,
    ) -> Result<bool, BackendError> {
        let (mode, etag) = mode(precondition);
        let result: i64 = self
            .call(async |mut c| {
                self.delete
                    .key(data_key(ns, key))
                    .key(index_key(ns))
                    .arg(mode)
                    .arg(etag)
                    .arg(key)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        if result < 0 {
            return Err(BackendError::PreconditionFailed { key: key.into() });
        }
        Ok(result > 0)
    }

    async fn increment(&self, ns: &Namespace, key: &str, delta: i64) -> Result<i64, BackendError> {
        let result: String = self
            .call(async |mut c| {
                self.increment
                    .key(data_key(ns, key))
                    .key(index_key(ns))
                    .key(ETAG_COUNTER)
                    .arg(delta)
                    .arg(key)
                    .invoke_async(&mut c)
                    .await
            })
            .await
            .map_err(|error| match error {
                BackendError::NotANumber { .. } => BackendError::NotANumber { key: key.into() },
                other => other,
            })?;
        result
            .parse()
            .map_err(|_| BackendError::NotANumber { key: key.into() })
    }

    async fn transact(
        &self,
        ns: &Namespace,
        operations: &[Operation],
    ) -> Result<Vec<Applied>, BackendError> {
        let mut invocation = self.transact.key(index_key(ns));
        invocation.key(ETAG_COUNTER);
        for operation in operations {
            invocation.key(data_key(ns, operation.key()));
            let (kind, precondition, value, ttl) = match operation {
                Operation::Set {
                    value,
                    precondition,
                    ttl,
                    ..
                } => (
                    "set",
                    *precondition,
                    value.as_slice(),
                    crate::ttl_millis(*ttl),
                ),
                Operation::Delete { precondition, .. } => ("del", *precondition, &[][..], 0),
            };
            let (mode, etag) = mode(precondition);
            invocation
                .arg(kind)
                .arg(mode)
                .arg(etag)
                .arg(value)
                .arg(ttl)
                .arg(operation.key());
        }
        let result: Value = self
            .call(async |mut c| invocation.invoke_async(&mut c).await)
            .await?;
        match result {
            Value::Int(failed) if failed < 0 => {
                let index = (-failed - 1) as usize;
                Err(BackendError::PreconditionFailed {
                    key: operations
                        .get(index)
                        .map(|op| op.key().to_string())
                        .unwrap_or_default(),
                })
            }
            Value::Array(results) => Ok(operations
                .iter()
                .zip(results)
                .map(|(operation, result)| {
                    let number = match result {
                        Value::Int(number) => number,
                        _ => 0,
                    };
                    match operation {
                        Operation::Set { .. } => Applied::Set(number as Etag),
                        Operation::Delete { .. } => Applied::Deleted(number > 0),
                    }
                })
                .collect()),
            other => Err(BackendError::Unavailable(format!(
                "unexpected reply from the transaction script: {other:?}"
            ))),
        }
    }

    async fn list(
        &self,
        ns: &Namespace,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page, BackendError> {
        let index = index_key(ns);
        let mut start = match after {
            Some(after) if after >= prefix => format!("({after}"),
            _ => format!("[{prefix}"),
        };
        let mut end = Vec::from(b"[".as_slice());
        end.extend_from_slice(prefix.as_bytes());
        end.push(0xff);
        let mut page = Page::default();
        // Members whose hash expired are skipped (and removed), so a page
        // may need more than one round.
        loop {
            let members: Vec<String> = self
                .call(async |mut c| {
                    redis::cmd("ZRANGEBYLEX")
                        .arg(&index)
                        .arg(&start)
                        .arg(&end)
                        .arg("LIMIT")
                        .arg(0)
                        .arg(limit as usize - page.keys.len())
                        .query_async(&mut c)
                        .await
                })
                .await?;
            let exhausted = members.len() < limit as usize - page.keys.len();
            let Some(last) = members.last().cloned() else {
                return Ok(page);
            };
            let mut pipe = redis::pipe();
            for member in &members {
                pipe.cmd("EXISTS").arg(data_key(ns, member));
            }
            let live: Vec<bool> = self
                .call(async |mut c| pipe.query_async(&mut c).await)
                .await?;
            let mut stale = Vec::new();
            for (member, live) in members.into_iter().zip(live) {
                if live {
                    page.keys.push(member);
                } else {
                    stale.push(member);
                }
            }
            if !stale.is_empty() {
                let mut prune = self.prune.key(&index);
                prune.key(data_key(ns, "")).arg(&stale);
                let _: Result<i64, _> = self
                    .call(async |mut c| prune.invoke_async(&mut c).await)
                    .await;
            }
            if page.keys.len() == limit as usize {
                page.cursor = Some(last);
                return Ok(page);
            }
            if exhausted {
                return Ok(page);
            }
            start = format!("({last}");
        }
    }
}
