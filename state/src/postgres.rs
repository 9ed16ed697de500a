//! `postgres`: keys in a PostgreSQL table.
//!
//! # Layout
//!
//! ```sql
//! CREATE TABLE hearth_state (
//!   ns text NOT NULL, key text COLLATE "C" NOT NULL,
//!   value bytea NOT NULL, etag bigint NOT NULL,
//!   expires_at bigint,                 -- ms since the epoch, by the server's clock
//!   PRIMARY KEY (ns, key));
//! CREATE SEQUENCE hearth_state_etag;   -- etags
//! ```
//!
//! Created on first use if missing. Expiry is judged by the database
//! server's clock, so nodes with skewed clocks agree. Expired rows are
//! invisible and are overwritten or removed by later writes of their key.
//!
//! Each single write is one statement whose `WHERE`/`ON CONFLICT` carries the
//! precondition, so check and write are atomic; a transaction runs its
//! statements in one SQL transaction and rolls back at the first failed
//! precondition. Durability is the server's (`synchronous_commit`): with
//! PostgreSQL's default an acknowledged write is on disk.
//!
//! # Failures
//!
//! Connections come from a pool (made lazily, so hearthd starts while the
//! database is down); a call that cannot get a connection or an answer
//! within the operation timeout is [`BackendError::Unavailable`], and an
//! interrupted transaction is rolled back by the server.

use crate::{
    Applied, BackendError, Entry, Etag, Namespace, Operation, Page, Precondition, StateBackend,
    unavailable,
};
use deadpool_postgres::GenericClient;
use deadpool_postgres::{Pool, Runtime, Timeouts};
use std::time::Duration;
use tokio::sync::OnceCell;
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS hearth_state (
  ns text NOT NULL,
  key text COLLATE "C" NOT NULL,
  value bytea NOT NULL,
  etag bigint NOT NULL,
  expires_at bigint,
  PRIMARY KEY (ns, key));
CREATE SEQUENCE IF NOT EXISTS hearth_state_etag;
"#;

/// Now, in ms since the epoch, by the server's clock.
macro_rules! now_ms {
    () => {
        "(extract(epoch from clock_timestamp()) * 1000)::bigint"
    };
}

/// Whether the row in `hearth_state` is live.
macro_rules! live {
    () => {
        concat!(
            "(hearth_state.expires_at IS NULL OR hearth_state.expires_at > ",
            now_ms!(),
            ")"
        )
    };
}

/// The expiry for a TTL of `$4` ms (0 = none).
macro_rules! expiry {
    () => {
        concat!(
            "(CASE WHEN $4::bigint > 0 THEN ",
            now_ms!(),
            " + $4::bigint ELSE NULL END)"
        )
    };
}

const GET: &str = concat!(
    "SELECT value, etag FROM hearth_state WHERE ns = $1 AND key = $2 AND ",
    live!()
);
const SET_ANY: &str = concat!(
    "INSERT INTO hearth_state (ns, key, value, etag, expires_at) VALUES ($1, $2, $3, nextval('hearth_state_etag'), ",
    expiry!(),
    ") ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value, etag = excluded.etag, expires_at = excluded.expires_at RETURNING etag"
);
const SET_IF_ABSENT: &str = concat!(
    "INSERT INTO hearth_state (ns, key, value, etag, expires_at) VALUES ($1, $2, $3, nextval('hearth_state_etag'), ",
    expiry!(),
    ") ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value, etag = excluded.etag, expires_at = excluded.expires_at WHERE NOT ",
    live!(),
    " RETURNING etag"
);
const SET_IF_MATCH: &str = concat!(
    "UPDATE hearth_state SET value = $3, etag = nextval('hearth_state_etag'), expires_at = ",
    expiry!(),
    " WHERE ns = $1 AND key = $2 AND etag = $5 AND ",
    live!(),
    " RETURNING etag"
);
const DELETE_ANY: &str = concat!(
    "DELETE FROM hearth_state WHERE ns = $1 AND key = $2 RETURNING ",
    live!()
);
const DELETE_IF_MATCH: &str = concat!(
    "DELETE FROM hearth_state WHERE ns = $1 AND key = $2 AND etag = $3 AND ",
    live!(),
    " RETURNING true"
);
const DELETE_IF_ABSENT: &str = concat!(
    "DELETE FROM hearth_state WHERE ns = $1 AND key = $2 AND NOT ",
    live!()
);
const INCREMENT: &str = concat!(
    "INSERT INTO hearth_state (ns, key, value, etag, expires_at) VALUES ($1, $2, convert_to($3::bigint::text, 'UTF8'), nextval('hearth_state_etag'), NULL) ",
    "ON CONFLICT (ns, key) DO UPDATE SET ",
    "value = convert_to(((CASE WHEN ",
    live!(),
    " THEN convert_from(hearth_state.value, 'UTF8')::bigint ELSE 0 END) + $3::bigint)::text, 'UTF8'), ",
    "etag = excluded.etag, ",
    "expires_at = CASE WHEN ",
    live!(),
    " THEN hearth_state.expires_at ELSE NULL END ",
    "RETURNING convert_from(value, 'UTF8')"
);
const LIST: &str = concat!(
    "SELECT key FROM hearth_state WHERE ns = $1 AND key >= $2 AND ($3::text IS NULL OR key > $3) ",
    "AND left(key, length($2)) = $2 AND ",
    live!(),
    " ORDER BY key LIMIT $4"
);

/// The PostgreSQL backend.
pub struct PostgresBackend {
    pool: Pool,
    schema: OnceCell<()>,
    timeout: Duration,
}

impl PostgresBackend {
    /// A backend for the database at `url` (`postgres://user@host:port/db`);
    /// nothing is connected until the first call. Every call is bounded by
    /// `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        let mut config = deadpool_postgres::Config::new();
        config.url = Some(url.to_string());
        config.connect_timeout = Some(timeout);
        let mut pool_config = deadpool_postgres::PoolConfig::new(16);
        pool_config.timeouts = Timeouts {
            wait: Some(timeout),
            create: Some(timeout),
            recycle: Some(timeout),
        };
        config.pool = Some(pool_config);
        let pool = config
            .create_pool(Some(Runtime::Tokio1), NoTls)
            .map_err(|e| format!("invalid PostgreSQL URL: {e}"))?;
        Ok(PostgresBackend {
            pool,
            schema: OnceCell::new(),
            timeout,
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, BackendError> {
        let client = self.pool.get().await.map_err(unavailable)?;
        self.schema
            .get_or_try_init(|| async {
                // Two nodes creating the schema at once may collide; the
                // loser finds it there on its retry.
                if client.batch_execute(SCHEMA).await.is_err() {
                    client.batch_execute(SCHEMA).await.map_err(unavailable)?;
                }
                Ok::<_, BackendError>(())
            })
            .await?;
        Ok(client)
    }

    async fn call<T>(
        &self,
        work: impl AsyncFnOnce(deadpool_postgres::Object) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let work = async {
            let client = self.client().await?;
            work(client).await
        };
        crate::within(self.timeout, "PostgreSQL", work).await
    }
}

async fn set<C: GenericClient>(
    client: &C,
    ns: &str,
    key: &str,
    value: &[u8],
    precondition: Precondition,
    ttl: Option<Duration>,
) -> Result<Etag, BackendError> {
    let ttl = crate::ttl_millis(ttl) as i64;
    let row = match precondition {
        Precondition::None => client.query_opt(SET_ANY, &[&ns, &key, &value, &ttl]).await,
        Precondition::IfAbsent => {
            client
                .query_opt(SET_IF_ABSENT, &[&ns, &key, &value, &ttl])
                .await
        }
        Precondition::IfMatch(etag) => {
            let etag = etag as i64;
            client
                .query_opt(SET_IF_MATCH, &[&ns, &key, &value, &ttl, &etag])
                .await
        }
    }
    .map_err(unavailable)?;
    match row {
        Some(row) => Ok(row.get::<_, i64>(0) as Etag),
        None => Err(BackendError::PreconditionFailed { key: key.into() }),
    }
}

async fn delete<C: GenericClient>(
    client: &C,
    ns: &str,
    key: &str,
    precondition: Precondition,
) -> Result<bool, BackendError> {
    match precondition {
        Precondition::None => Ok(client
            .query_opt(DELETE_ANY, &[&ns, &key])
            .await
            .map_err(unavailable)?
            .is_some_and(|row| row.get::<_, bool>(0))),
        Precondition::IfMatch(etag) => {
            let etag = etag as i64;
            match client
                .query_opt(DELETE_IF_MATCH, &[&ns, &key, &etag])
                .await
                .map_err(unavailable)?
            {
                Some(_) => Ok(true),
                None => Err(BackendError::PreconditionFailed { key: key.into() }),
            }
        }
        Precondition::IfAbsent => {
            if client
                .query_opt(GET, &[&ns, &key])
                .await
                .map_err(unavailable)?
                .is_some()
            {
                return Err(BackendError::PreconditionFailed { key: key.into() });
            }
            client
                .execute(DELETE_IF_ABSENT, &[&ns, &key])
                .await
                .map_err(unavailable)?;
            Ok(false)
        }
    }
}

#[async_trait::async_trait]
impl StateBackend for PostgresBackend {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.call(async |client| client.simple_query("SELECT 1").await.map_err(unavailable))
            .await
            .map(drop)
    }

    async fn get(&self, ns: &Namespace, key: &str) -> Result<Option<Entry>, BackendError> {
        self.call(async |client| {
            let row = client
                .query_opt(GET, &[&ns.as_str(), &key])
                .await
                .map_err(unavailable)?;
            Ok(row.map(|row| Entry {
                value: row.get(0),
                etag: row.get::<_, i64>(1) as Etag,
            }))
        })
        .await
    }

    async fn set(
        &self,
        ns: &Namespace,
        key: &str,
        value: &[u8],
        precondition: Precondition,
        ttl: Option<Duration>,
    ) -> Result<Etag, BackendError> {
        self.call(async |client| set(&client, ns.as_str(), key, value, precondition, ttl).await)
            .await
    }

    async fn delete(
        &self,
        ns: &Namespace,
        key: &str,
        precondition: Precondition,
    ) -> Result<bool, BackendError> {
        self.call(async |client| delete(&client, ns.as_str(), key, precondition).await)
            .await
    }

    async fn increment(&self, ns: &Namespace, key: &str, delta: i64) -> Result<i64, BackendError> {
        self.call(async |client| {
            match client
                .query_one(INCREMENT, &[&ns.as_str(), &key, &delta])
                .await
            {
                Ok(row) => row
                    .get::<_, String>(0)
                    .parse()
                    .map_err(|_| BackendError::NotANumber { key: key.into() }),
                // Class 22 (data exception): not a number, bad UTF-8, overflow.
                Err(error)
                    if error
                        .code()
                        .is_some_and(|code| code.code().starts_with("22")) =>
                {
                    Err(BackendError::NotANumber { key: key.into() })
                }
                Err(error) => Err(unavailable(error)),
            }
        })
        .await
    }

    async fn transact(
        &self,
        ns: &Namespace,
        operations: &[Operation],
    ) -> Result<Vec<Applied>, BackendError> {
        self.call(async |mut client| {
            let txn = client.transaction().await.map_err(unavailable)?;
            let mut applied = Vec::with_capacity(operations.len());
            for operation in operations {
                let result = match operation {
                    Operation::Set {
                        key,
                        value,
                        precondition,
                        ttl,
                    } => set(&txn, ns.as_str(), key, value, *precondition, *ttl)
                        .await
                        .map(Applied::Set),
                    Operation::Delete { key, precondition } => {
                        delete(&txn, ns.as_str(), key, *precondition)
                            .await
                            .map(Applied::Deleted)
                    }
                };
                match result {
                    Ok(outcome) => applied.push(outcome),
                    Err(error) => {
                        // Dropping `txn` would roll back too; say so explicitly.
                        let _ = txn.rollback().await;
                        return Err(error);
                    }
                }
            }
            txn.commit().await.map_err(|error| {
                if error.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE) {
                    BackendError::PreconditionFailed {
                        key: operations[0].key().to_string(),
                    }
                } else {
                    unavailable(error)
                }
            })?;
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
        self.call(async |client| {
            let limit = limit as i64;
            let rows = client
                .query(LIST, &[&ns.as_str(), &prefix, &after, &limit])
                .await
                .map_err(unavailable)?;
            let keys: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
            let cursor = (keys.len() as i64 == limit)
                .then(|| keys.last().cloned())
                .flatten();
            Ok(Page { keys, cursor })
        })
        .await
    }
}
