//! The shim's side of hearthd: the control-API client (connected on first
//! use) and the watcher that waits for a function's exit, riding out
//! hearthd restarts (see [`crate::task`]'s contract).

use crate::error::TaskError;
use crate::task::{Container, Exited, LOST_EXIT_STATUS, Role, reconnect_patience};
use containerd_shim::protos::events::task::TaskExit;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use hearth_control::ControlClient;
use hearth_control::v1 as control;
use log::{error, info, warn};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The connection to hearthd, made on first use.
pub struct Hearthd {
    socket: PathBuf,
    client: tokio::sync::Mutex<Option<ControlClient>>,
}

impl Hearthd {
    /// hearthd at `socket`, connected on first use.
    pub fn new(socket: PathBuf) -> Self {
        Hearthd {
            socket,
            client: tokio::sync::Mutex::new(None),
        }
    }

    /// The control socket.
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// The client, connecting now if this is the first call.
    pub async fn client(&self) -> Result<ControlClient, TaskError> {
        let mut client = self.client.lock().await;
        if let Some(client) = client.as_ref() {
            return Ok(client.clone());
        }
        let connected = hearth_control::connect(&self.socket)
            .await
            .map_err(TaskError::HearthdUnreachable)?;
        *client = Some(connected.clone());
        Ok(connected)
    }
}

/// What a background watcher needs to report an exit.
pub(crate) struct Watcher {
    /// Where `/tasks/exit` goes.
    pub(crate) events: crate::events::Events,
    /// hearthd's control socket.
    pub(crate) socket: PathBuf,
}

impl Watcher {
    /// Records the first exit of `container` and publishes `/tasks/exit`.
    pub(crate) async fn finish(&self, container: &Container, status: u32) {
        let at = Timestamp::now();
        let first = container.exit.send_if_modified(|exit| {
            if exit.is_some() {
                return false;
            }
            *exit = Some(Exited {
                status,
                at: at.clone(),
            });
            true
        });
        if !first {
            return;
        }
        if let Role::Function { listener, .. } = &container.role {
            // The port lives as long as the task.
            listener.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
        info!("{} exited with status {status}", container.id);
        let event = TaskExit {
            container_id: container.id.clone(),
            id: container.id.clone(),
            pid: container.pid.load(Ordering::SeqCst),
            exit_status: status,
            exited_at: Some(at).into(),
            ..Default::default()
        };
        self.events.send("/tasks/exit", Box::new(event));
    }

    /// Waits for a function to exit in hearthd, riding out hearthd restarts.
    pub(crate) async fn watch_function(&self, container: Arc<Container>) {
        let Role::Function {
            request, listener, ..
        } = &container.role
        else {
            return;
        };
        loop {
            let waited = match hearth_control::connect(&self.socket).await {
                Ok(mut client) => client
                    .wait(control::WaitRequest {
                        id: container.id.clone(),
                    })
                    .await
                    .map(|response| response.into_inner()),
                Err(error) => Err(tonic::Status::unavailable(error.to_string())),
            };
            match waited {
                Ok(exit) => {
                    let status = u32::try_from(exit.exit_status).unwrap_or(LOST_EXIT_STATUS);
                    info!("function {} exited: {}", container.id, exit.reason);
                    self.finish(&container, status).await;
                    return;
                }
                Err(status) => {
                    if container.exit.borrow().is_some() {
                        return;
                    }
                    warn!(
                        "lost hearthd while {} runs ({}): reconnecting",
                        container.id,
                        status.message()
                    );
                    let listen_fd = crate::task::listen_fd(listener);
                    if let Err(reason) = self.reattach(&container, request, listen_fd).await {
                        error!("function {} is lost: {reason}", container.id);
                        write_to_stderr(&container.stderr, &reason).await;
                        self.finish(&container, LOST_EXIT_STATUS).await;
                        return;
                    }
                }
            }
        }
    }

    /// Reconnects to hearthd; re-creates and restarts the function if
    /// hearthd no longer has it. Transport failures (hearthd still going
    /// down, or not yet up) are retried until the reconnect patience runs
    /// out; an answer from hearthd that it cannot run the function is final.
    async fn reattach(
        &self,
        container: &Container,
        request: &control::CreateRequest,
        listen_fd: u32,
    ) -> Result<(), String> {
        let patience = reconnect_patience();
        let deadline = tokio::time::Instant::now() + patience;
        let mut pause = Duration::from_millis(50);
        loop {
            if container.exit.borrow().is_some() {
                // Killed in the shim meanwhile: nothing to re-load.
                return Ok(());
            }
            let last_error = match self.try_reattach(container, request, listen_fd).await {
                Ok(()) => return Ok(()),
                Err(Reattach::Final(reason)) => return Err(reason),
                Err(Reattach::Transient(reason)) => reason,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "hearth: hearthd at {} did not come back within {} s ({last_error}); the function was lost",
                    self.socket.display(),
                    patience.as_secs()
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    async fn try_reattach(
        &self,
        container: &Container,
        request: &control::CreateRequest,
        listen_fd: u32,
    ) -> Result<(), Reattach> {
        let mut client = hearth_control::connect(&self.socket)
            .await
            .map_err(|error| Reattach::Transient(error.to_string()))?;
        let state = client
            .state(control::StateRequest {
                id: container.id.clone(),
            })
            .await;
        let needs_start = match state {
            Ok(state) => state.into_inner().status == "created",
            Err(status) if status.code() == tonic::Code::NotFound => {
                client
                    .create(request.clone())
                    .await
                    .map_err(|status| Reattach::from_status("re-load", status))?;
                true
            }
            Err(status) => return Err(Reattach::from_status("report", status)),
        };
        if needs_start {
            client
                .start(control::StartRequest {
                    id: container.id.clone(),
                    listen_fd,
                })
                .await
                .map_err(|status| Reattach::from_status("restart", status))?;
            info!(
                "function {} re-loaded into the restarted hearthd",
                container.id
            );
        }
        Ok(())
    }
}

/// Why one attempt to reattach failed.
enum Reattach {
    /// hearthd was not (yet) reachable: try again.
    Transient(String),
    /// hearthd answered that it cannot run the function.
    Final(String),
}

impl Reattach {
    fn from_status(what: &str, status: tonic::Status) -> Self {
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown => {
                Reattach::Transient(status.message().to_string())
            }
            _ => Reattach::Final(format!(
                "hearth: hearthd restarted and could not {what} the function: {}",
                status.message()
            )),
        }
    }
}

/// Appends `line` to the task's stderr (a FIFO read by containerd), without
/// ever blocking: a FIFO nobody reads is skipped (and the line is only in
/// the shim log).
async fn write_to_stderr(path: &str, line: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    if path.is_empty() {
        return;
    }
    let path = path.to_string();
    let line = format!("{line}\n");
    let written = tokio::task::spawn_blocking(move || {
        std::fs::OpenOptions::new()
            .append(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(&path)
            .and_then(|mut file| std::io::Write::write_all(&mut file, line.as_bytes()))
            .map_err(|error| format!("cannot write to {path}: {error}"))
    })
    .await;
    if let Ok(Err(error)) = written {
        warn!("{error}");
    }
}
