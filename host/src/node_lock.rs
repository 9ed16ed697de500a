//! One hearthd per node: an exclusive lock beside the control socket.
//!
//! # Contract
//!
//! * [`NodeLock::acquire`] takes an exclusive `flock` on `<socket>.lock`
//!   (creating the socket's directory 0700 if missing) before hearthd opens
//!   any store or binds anything. When another hearthd holds it (an
//!   upgrade's new Pod started before the old one exited), it logs one
//!   line naming the lock and the holder's pid and waits; it never exits
//!   for it, and never steals it.
//! * The kernel releases the lock when the holding process exits, however
//!   it exits (SIGKILL too), so a crashed hearthd never blocks the next.
//!   The file holds the pid of the last holder.
//! * A process's descriptors close one by one as it exits, the lock's
//!   (opened first, so lowest) before its stores'. So after waiting,
//!   `acquire` also waits (at most [`EXIT_PATIENCE`]) until the holder has
//!   closed everything (it is gone, or a zombie), so the stores it held are
//!   free when this hearthd opens them.

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The lock, held until dropped (or the process exits).
pub struct NodeLock {
    _held: Flock<File>,
    path: PathBuf,
}

impl NodeLock {
    /// Takes the lock for the control socket at `socket`, waiting for any
    /// other hearthd that holds it (see the module docs).
    pub async fn acquire(socket: &Path) -> Result<NodeLock> {
        let path = lock_path(socket);
        create_private_parent(&path)?;
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .with_context(|| format!("cannot open the node lock {}", path.display()))
        };
        let held = match Flock::lock(open()?, FlockArg::LockExclusiveNonblock) {
            Ok(held) => held,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim().to_string();
                tracing::warn!(
                    lock = %path.display(),
                    holder_pid = holder,
                    "another hearthd (pid {}) holds {}: waiting for it to exit",
                    if holder.is_empty() { "unknown" } else { &holder },
                    path.display()
                );
                let waited = tokio::task::spawn_blocking(move || {
                    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| errno)
                })
                .await
                .context("the lock waiter panicked")?;
                let held = waited.with_context(|| format!("cannot lock {}", path.display()))?;
                if let Ok(pid) = holder.parse::<u32>()
                    && pid != std::process::id()
                {
                    let gone = tokio::task::spawn_blocking(move || has_exited(pid, EXIT_PATIENCE))
                        .await
                        .unwrap_or(false);
                    if !gone {
                        tracing::warn!(
                            holder_pid = pid,
                            "the other hearthd let go of the lock but is still exiting after {EXIT_PATIENCE:?}; going on"
                        );
                    }
                }
                tracing::info!(lock = %path.display(), "the other hearthd exited: lock taken");
                held
            }
            Err((_, errno)) => {
                return Err(errno).with_context(|| format!("cannot lock {}", path.display()));
            }
        };
        let mut held = held;
        held.set_len(0)
            .and_then(|()| held.rewind())
            .and_then(|()| writeln!(*held, "{}", std::process::id()))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(NodeLock { _held: held, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// How long `acquire` waits for a holder that let go of the lock to finish
/// exiting.
pub const EXIT_PATIENCE: Duration = Duration::from_secs(10);

/// Waits up to `patience` until process `pid` has closed all its
/// descriptors: it is gone, or a zombie. Whether it has.
fn has_exited(pid: u32, patience: Duration) -> bool {
    let deadline = Instant::now() + patience;
    loop {
        let exited = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            // "pid (comm) S ...": the state follows the last ')'.
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                .is_some_and(|state| matches!(state, 'Z' | 'X')),
        };
        if exited {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Creates the directory holding `path` with mode 0700 if it is missing
/// (the control socket's and the lock's: root only).
pub fn create_private_parent(path: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
        && !parent.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    Ok(())
}

/// `<socket>.lock`.
pub fn lock_path(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_os_string();
    name.push(".lock");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exited_process_is_seen_as_exited_and_a_live_one_is_not() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        assert!(!has_exited(child.id(), Duration::from_millis(50)));
        child.kill().unwrap();
        // Killed but not reaped: a zombie, its descriptors closed.
        assert!(has_exited(child.id(), Duration::from_secs(5)));
        child.wait().unwrap();
        assert!(has_exited(child.id(), Duration::ZERO));
    }

    #[tokio::test]
    async fn a_second_holder_waits_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run/hearthd.sock");
        let first = NodeLock::acquire(&socket).await.unwrap();
        let second = tokio::spawn({
            let socket = socket.clone();
            async move { NodeLock::acquire(&socket).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!second.is_finished(), "took a lock that is held");
        drop(first);
        let second = second.await.unwrap().unwrap();
        let pid = std::fs::read_to_string(second.path()).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
    }
}
