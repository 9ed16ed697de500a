//! Group commit for a redb [`Database`]: one fsync for the writes that
//! arrive together, and every acknowledgement still after its data is
//! durable.
//!
//! # Contract
//!
//! A writer first announces itself with [`GroupCommit::writer`] (before
//! it queues for redb's write lock), then commits its write transaction
//! through [`Writer::commit`]: with `Durability::None`, so the commit is
//! visible to every later transaction at once but has not reached the
//! disk. It gets a [`Ticket`], and awaits [`GroupCommit::durable`] before
//! it tells anyone the write happened.
//!
//! One thread per database (the syncer) commits an empty transaction with
//! `Durability::Immediate` whenever tickets wait. redb makes that commit
//! durable together with every commit before it, so one fsync acknowledges
//! every ticket handed out before the syncer began it. Before it begins,
//! the syncer lets the writers announced by the time of the first unsynced
//! commit commit too (for up to [`MAX_GATHER`]): its own transaction
//! takes redb's write lock for the length of an fsync, and taking it while
//! writers queue would sync one write at a time. While that fsync runs, new
//! writers queue for the next one: the busier the database, the more
//! writes share an fsync; a lone writer pays one commit and one fsync, as
//! with an `Immediate` commit of its own.
//!
//! What a crash can do: a write that was committed but not yet durable is
//! gone after a crash. Its writer was never acknowledged, so nothing
//! acknowledged is lost. Another transaction may have read it in between
//! (well under a millisecond on a healthy disk); anything that transaction
//! then committed is ordered after it, so it is durable only if the write
//! it read is.
//!
//! A failed fsync fails every ticket waiting for it, with the error: their
//! commits happened and are visible, but may not survive a crash (an
//! unknown outcome, as when a commit itself fails). The syncer tries again
//! for the next tickets; a later success makes the earlier commits durable
//! too.
//!
//! The syncer ends when the [`GroupCommit`] is dropped, or when its
//! database is gone.

use redb::{Database, Durability, WriteTransaction};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The longest the syncer waits for announced writers to commit before it
/// makes what is committed durable.
pub const MAX_GATHER: Duration = Duration::from_millis(1);

/// Commits and makes durable, many commits per fsync.
pub struct GroupCommit {
    shared: Arc<Shared>,
}

/// Counters of a [`GroupCommit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Commits made through it.
    pub committed: u64,
    /// Of those, how many are known durable.
    pub durable: u64,
    /// Durable commits the syncer made (each one fsync).
    pub syncs: u64,
}

/// The place of one commit in the order tickets were handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

struct Shared {
    /// Tickets handed out (each after its commit returned).
    committed: AtomicU64,
    /// Writers announced and not yet committed (or given up).
    writing: AtomicU64,
    /// Wakes the syncer; `true` once the [`GroupCommit`] is dropped.
    wake: Mutex<bool>,
    wake_syncer: Condvar,
    outcome: watch::Sender<Outcome>,
}

/// What the syncer has done so far.
#[derive(Clone, Default)]
struct Outcome {
    /// Every ticket up to this one is durable.
    durable: u64,
    /// Durable commits made (successful or not).
    syncs: u64,
    /// The last sync failed: tickets up to `.0` (beyond `durable`) failed
    /// with `.1`.
    failed: Option<(u64, Arc<str>)>,
}

impl GroupCommit {
    /// Starts the syncer of `db`, on a thread named `name`.
    pub fn start(db: &Arc<Database>, name: &str) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            committed: AtomicU64::new(0),
            writing: AtomicU64::new(0),
            wake: Mutex::new(false),
            wake_syncer: Condvar::new(),
            outcome: watch::Sender::new(Outcome::default()),
        });
        let db = Arc::downgrade(db);
        let syncer = shared.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run_syncer(&syncer, &db))?;
        Ok(GroupCommit { shared })
    }

    /// Announces a writer: the syncer waits (up to [`MAX_GATHER`]) for it
    /// to commit, or to be dropped, before it syncs.
    pub fn writer(&self) -> Writer {
        self.shared.writing.fetch_add(1, Ordering::SeqCst);
        Writer {
            shared: self.shared.clone(),
        }
    }

    /// Waits until the commit of `ticket` is durable; the fsync's error if
    /// the one meant for it failed.
    pub async fn durable(&self, ticket: Ticket) -> Result<(), String> {
        let mut outcome = self.shared.outcome.subscribe();
        let seen = outcome
            .wait_for(|outcome| {
                outcome.durable >= ticket.0
                    || outcome
                        .failed
                        .as_ref()
                        .is_some_and(|(through, _)| *through >= ticket.0)
            })
            .await
            .map_err(|_| "the store's syncer stopped".to_string())?;
        match &seen.failed {
            Some((_, error)) if seen.durable < ticket.0 => Err(format!(
                "committed, but the fsync that makes it durable failed: {error}"
            )),
            _ => Ok(()),
        }
    }

    /// What was committed, made durable, and with how many fsyncs.
    pub fn progress(&self) -> Progress {
        let outcome = self.shared.outcome.borrow();
        Progress {
            committed: self.shared.committed.load(Ordering::SeqCst),
            durable: outcome.durable,
            syncs: outcome.syncs,
        }
    }
}

/// An announced writer (see [`GroupCommit::writer`]).
pub struct Writer {
    shared: Arc<Shared>,
}

impl Writer {
    /// Commits `txn` without waiting for the disk; the ticket to await
    /// with [`GroupCommit::durable`] before acknowledging it.
    pub fn commit(self, mut txn: WriteTransaction) -> Result<Ticket, redb::Error> {
        txn.set_durability(Durability::None)
            .map_err(redb::Error::from)?;
        txn.commit()?;
        // A ticket only after the commit returned: every ticket the syncer
        // sees was committed before its own transaction begins.
        let ticket = self.shared.committed.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Ticket(ticket))
        // Dropping `self` wakes the syncer.
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.shared.writing.fetch_sub(1, Ordering::SeqCst);
        // Under the lock the syncer checks the counters in: no lost wake-up.
        let _guard = self.shared.wake.lock().unwrap_or_else(|e| e.into_inner());
        self.shared.wake_syncer.notify_one();
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        *self.shared.wake.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.shared.wake_syncer.notify_one();
    }
}

fn run_syncer(shared: &Shared, db: &Weak<Database>) {
    let mut synced = 0;
    loop {
        let target = {
            let mut closed = shared.wake.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if shared.committed.load(Ordering::SeqCst) > synced {
                    break;
                }
                if *closed {
                    return;
                }
                closed = shared
                    .wake_syncer
                    .wait(closed)
                    .unwrap_or_else(|e| e.into_inner());
            }
            // Let the writers announced by now commit first (not those
            // announced later: they would keep this one waiting).
            let first = Instant::now();
            let expected =
                shared.committed.load(Ordering::SeqCst) + shared.writing.load(Ordering::SeqCst);
            while shared.writing.load(Ordering::SeqCst) > 0
                && shared.committed.load(Ordering::SeqCst) < expected
                && !*closed
            {
                let Some(left) = MAX_GATHER.checked_sub(first.elapsed()) else {
                    break;
                };
                closed = shared
                    .wake_syncer
                    .wait_timeout(closed, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            shared.committed.load(Ordering::SeqCst)
        };
        // Every ticket up to `target` was handed out after its commit
        // returned, so this transaction (begun now) follows all of them.
        let result = match db.upgrade() {
            Some(db) => sync(&db),
            None => Err("the database was closed".into()),
        };
        match result {
            Ok(()) => {
                synced = target;
                shared.outcome.send_modify(|outcome| {
                    outcome.durable = target;
                    outcome.failed = None;
                    outcome.syncs += 1;
                });
            }
            Err(error) => {
                tracing::error!(%error, "fsync of the commits waiting for it failed");
                synced = target;
                shared.outcome.send_modify(|outcome| {
                    outcome.failed = Some((target, error.into()));
                    outcome.syncs += 1;
                });
            }
        }
    }
}

/// One durable commit, which makes every commit before it durable.
fn sync(db: &Database) -> Result<(), String> {
    let mut txn = db.begin_write().map_err(|e| e.to_string())?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| e.to_string())?;
    txn.commit().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, ReadableTableMetadata, TableDefinition};

    const TABLE: TableDefinition<u64, u64> = TableDefinition::new("t");

    fn open() -> (tempfile::TempDir, Arc<Database>, GroupCommit) {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::create(dir.path().join("db")).unwrap());
        let group = GroupCommit::start(&db, "test-sync").unwrap();
        (dir, db, group)
    }

    fn write(db: &Database, group: &GroupCommit, key: u64) -> Ticket {
        let writer = group.writer();
        let txn = db.begin_write().unwrap();
        txn.open_table(TABLE).unwrap().insert(key, key).unwrap();
        writer.commit(txn).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_share_fsyncs_and_every_acknowledged_write_is_reopened() {
        let (dir, db, group) = open();
        let group = Arc::new(group);
        let mut writers = Vec::new();
        for writer in 0..16u64 {
            let (db, group) = (db.clone(), group.clone());
            writers.push(tokio::spawn(async move {
                for i in 0..50 {
                    let key = writer * 1000 + i;
                    let db2 = db.clone();
                    let ticket = {
                        let group = group.clone();
                        tokio::task::spawn_blocking(move || write(&db2, &group, key))
                            .await
                            .unwrap()
                    };
                    group.durable(ticket).await.unwrap();
                }
            }));
        }
        for writer in writers {
            writer.await.unwrap();
        }
        let progress = group.progress();
        assert_eq!((progress.committed, progress.durable), (800, 800));
        // 16 writers on 2 cores: commits pile up behind every fsync.
        assert!(progress.syncs < 800, "{progress:?}");
        drop(group);
        drop(db);
        let db = Database::create(dir.path().join("db")).unwrap();
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(TABLE).unwrap();
        assert_eq!(table.len().unwrap(), 800);
    }

    /// A ticket as a commit would get one, for a database already gone.
    fn write_without_a_database(group: &GroupCommit) -> Ticket {
        let writer = group.writer();
        let ticket = Ticket(group.shared.committed.fetch_add(1, Ordering::SeqCst) + 1);
        drop(writer);
        ticket
    }

    #[tokio::test]
    async fn a_closed_database_fails_the_waiting_tickets_with_a_reason() {
        let (_dir, db, group) = open();
        let ticket = write(&db, &group, 1);
        group.durable(ticket).await.unwrap();
        // The syncer holds the database weakly: with it gone, the next
        // ticket fails with the reason instead of waiting forever.
        drop(db);
        let ticket = write_without_a_database(&group);
        let error = group.durable(ticket).await.unwrap_err();
        assert!(error.contains("the database was closed"), "{error}");
    }
}
