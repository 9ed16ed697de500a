//! The runtime v2 task service of one shim: every container of one Pod.
//!
//! # Contract
//!
//! * **Sandbox containers** run a namespace holder ([`crate::pause`]) as a
//!   child of the shim; its PID is the task's PID. Kill signals it; its exit
//!   (128 + signal when a signal ended it) is the task's exit.
//! * **Function containers** are handed to hearthd over the control API.
//!   Create mounts the rootfs containerd lists, finds the component in it
//!   (or falls back to the image reference, see [`crate::spec`]) and calls
//!   hearthd's `Create` with the container's env, args, `$PORT`, network
//!   namespace, stdio paths and the shim's pid as owner (so a dead shim
//!   leaves nothing running). The task's PID is the shim's own PID: there is
//!   no process per function. Kill forwards the signal (SIGTERM drains,
//!   SIGKILL stops at once); the task exits with hearthd's exit status.
//! * **hearthd is not started by the shim.** It is the node's daemon (a
//!   DaemonSet or a system service); when it is not reachable, Create fails
//!   with an error naming the socket (`$HEARTH_SOCKET`, else
//!   `/run/hearth/hearthd.sock`).
//! * **hearthd restarts.** While a function runs, the shim waits on it. When
//!   hearthd goes away, the shim reconnects for up to
//!   [`reconnect_patience`] and then, if hearthd no longer knows the
//!   function, creates and starts it again from the same request. If that
//!   fails, or hearthd does not come back in time, the task exits with
//!   status [`LOST_EXIT_STATUS`] and the reason is written to the
//!   container's stderr (so `kubectl logs` shows it) and the shim log.
//! * **Delete** refuses a running task, forgets the function in hearthd,
//!   unmounts the rootfs, stops the namespace holder, and publishes
//!   `/tasks/delete`. Every task publishes `/tasks/create`, `/tasks/start`,
//!   `/tasks/exit` and `/tasks/delete`.
//! * **Stats** reports memory: for a function, the linear memory its live
//!   instances hold in hearthd; for a sandbox, the holder's RSS. Both as
//!   `io.containerd.cgroups.v2.Metrics`.
//! * **Shutdown** ends the shim once it holds no containers.

use crate::pause;
use crate::spec::{
    BundleSpec, CONTAINER_NAME_ANNOTATION, Entrypoint, SANDBOX_ID_ANNOTATION, SUBSCRIBE_ANNOTATION,
    find_entrypoint,
};
use async_trait::async_trait;
use containerd_shim::api::{
    ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse, DeleteRequest,
    DeleteResponse, Empty, KillRequest, PidsRequest, PidsResponse, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, WaitRequest,
    WaitResponse,
};
use containerd_shim::protos::cgroups_v2::metrics::{MemoryStat, Metrics};
use containerd_shim::protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskIO, TaskStart};
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::types::task::{ProcessInfo, Status};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Error as ShimError, ExitSignal, TtrpcContext, TtrpcResult};
use hearth_control::ControlClient;
use hearth_control::v1 as control;
use log::{error, info, warn};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Exit status of a function that could not be kept running across a
/// hearthd restart.
pub const LOST_EXIT_STATUS: u32 = 255;

/// How long a shim keeps trying to reach a restarted hearthd before it
/// reports its functions lost: `$HEARTH_SHIM_RECONNECT_SECS`, default 120 s.
pub fn reconnect_patience() -> Duration {
    let seconds = std::env::var("HEARTH_SHIM_RECONNECT_SECS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(120);
    Duration::from_secs(seconds)
}

/// The task service; see the module docs.
pub struct HearthTask {
    namespace: String,
    publisher: Arc<RemotePublisher>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    hearthd: Hearthd,
    exit: Arc<ExitSignal>,
}

struct Container {
    id: String,
    bundle: String,
    stdin: String,
    stdout: String,
    stderr: String,
    role: Role,
    /// 0 until started.
    pid: AtomicU32,
    exit: watch::Sender<Option<Exited>>,
}

#[derive(Clone)]
struct Exited {
    status: u32,
    at: Timestamp,
}

enum Role {
    Sandbox {
        plan: crate::spec::NamespacePlan,
    },
    Function {
        request: Box<control::CreateRequest>,
        rootfs: PathBuf,
        /// A holder of namespaces created for a container outside any Pod.
        holder: Option<u32>,
    },
}

/// The connection to hearthd, made on first use.
struct Hearthd {
    socket: PathBuf,
    client: tokio::sync::Mutex<Option<ControlClient>>,
}

impl Hearthd {
    async fn client(&self) -> Result<ControlClient, ShimError> {
        let mut client = self.client.lock().await;
        if let Some(client) = client.as_ref() {
            return Ok(client.clone());
        }
        let connected = hearth_control::connect(&self.socket)
            .await
            .map_err(|error| ShimError::FailedPreconditionError(error.to_string()))?;
        *client = Some(connected.clone());
        Ok(connected)
    }
}

fn from_status(status: tonic::Status) -> ShimError {
    let message = format!("hearthd: {}", status.message());
    match status.code() {
        tonic::Code::NotFound => ShimError::NotFoundError(message),
        tonic::Code::InvalidArgument | tonic::Code::AlreadyExists => {
            ShimError::InvalidArgument(message)
        }
        tonic::Code::FailedPrecondition => ShimError::FailedPreconditionError(message),
        _ => ShimError::Other(message),
    }
}

fn now() -> Timestamp {
    Timestamp::now()
}

impl HearthTask {
    /// A service for the containers of one shim, publishing events to
    /// containerd through `publisher`, signalling `exit` on Shutdown.
    pub fn new(namespace: &str, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Self {
        HearthTask {
            namespace: namespace.to_string(),
            publisher: Arc::new(publisher),
            containers: Mutex::new(HashMap::new()),
            hearthd: Hearthd {
                socket: hearth_control::socket_path(),
                client: tokio::sync::Mutex::new(None),
            },
            exit,
        }
    }

    fn get(&self, id: &str) -> Result<Arc<Container>, ShimError> {
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFoundError(format!("no container `{id}` in this shim")))
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let published = self
            .publisher
            .publish(Default::default(), topic, &self.namespace, event)
            .await;
        if let Err(error) = published {
            warn!("cannot publish {topic}: {error}");
        }
    }

    async fn do_create(&self, request: CreateTaskRequest) -> Result<CreateTaskResponse, ShimError> {
        crate::spec::check_id("the container id", &request.id)
            .map_err(|e| ShimError::InvalidArgument(e.to_string()))?;
        if request.terminal {
            return Err(ShimError::InvalidArgument(
                "a terminal is not supported: functions have no TTY".into(),
            ));
        }
        if !request.checkpoint.is_empty() {
            return Err(ShimError::Unimplemented(
                "checkpoints are not supported".into(),
            ));
        }
        if self
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&request.id)
        {
            return Err(ShimError::InvalidArgument(format!(
                "container `{}` exists",
                request.id
            )));
        }
        let bundle = PathBuf::from(&request.bundle);
        let spec =
            BundleSpec::load(&bundle).map_err(|e| ShimError::InvalidArgument(e.to_string()))?;
        if let Some(sandbox) = spec.annotation(SANDBOX_ID_ANNOTATION) {
            crate::spec::check_id("the sandbox-id annotation", sandbox)
                .map_err(|e| ShimError::InvalidArgument(e.to_string()))?;
        }
        let (role, pid) = if spec.is_sandbox() {
            (
                Role::Sandbox {
                    plan: spec.namespace_plan(),
                },
                0,
            )
        } else {
            (
                self.create_function(&request, &spec, &bundle).await?,
                std::process::id(),
            )
        };
        let container = Arc::new(Container {
            id: request.id.clone(),
            bundle: request.bundle.clone(),
            stdin: request.stdin.clone(),
            stdout: request.stdout.clone(),
            stderr: request.stderr.clone(),
            role,
            pid: AtomicU32::new(0),
            exit: watch::channel(None).0,
        });
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(request.id.clone(), container);
        info!(
            "created {} ({})",
            request.id,
            if spec.is_sandbox() {
                "sandbox"
            } else {
                "function"
            }
        );
        self.publish(
            "/tasks/create",
            Box::new(TaskCreate {
                container_id: request.id.clone(),
                bundle: request.bundle.clone(),
                rootfs: request.rootfs.clone(),
                io: Some(TaskIO {
                    stdin: request.stdin.clone(),
                    stdout: request.stdout.clone(),
                    stderr: request.stderr.clone(),
                    ..Default::default()
                })
                .into(),
                pid,
                ..Default::default()
            }),
        )
        .await;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    /// Mounts the rootfs, finds the component and hands it to hearthd.
    async fn create_function(
        &self,
        request: &CreateTaskRequest,
        spec: &BundleSpec,
        bundle: &Path,
    ) -> Result<Role, ShimError> {
        let rootfs = spec.rootfs(bundle);
        mount_rootfs(request, &rootfs).await?;
        let created = self.hand_to_hearthd(request, spec, &rootfs).await;
        match created {
            Ok(role) => Ok(role),
            Err(error) => {
                error!("function {} not created: {error}", request.id);
                unmount_rootfs(&rootfs).await;
                Err(error)
            }
        }
    }

    async fn hand_to_hearthd(
        &self,
        request: &CreateTaskRequest,
        spec: &BundleSpec,
        rootfs: &Path,
    ) -> Result<Role, ShimError> {
        let source = match find_entrypoint(spec, rootfs)
            .map_err(|e| ShimError::InvalidArgument(e.to_string()))?
        {
            Entrypoint::File(path) => {
                control::create_request::Source::WasmPath(path.to_string_lossy().into_owned())
            }
            Entrypoint::Image(image) => control::create_request::Source::Image(image),
        };
        let plan = spec.namespace_plan();
        let mut holder = None;
        let netns = match (&plan.join_network, plan.new_network) {
            (Some(path), _) => path.clone(),
            (None, true) => {
                // A container outside any Pod that asked for a network of its
                // own: hold a fresh namespace for it.
                let pid = spawn_holder(&plan)?.0;
                holder = Some(pid);
                format!("/proc/{pid}/ns/net")
            }
            (None, false) => String::new(),
        };
        let listen = spec.listen_address().map_err(ShimError::InvalidArgument)?;
        let (min_idle, max_invocations) = spec
            .pool_annotations()
            .map_err(ShimError::InvalidArgument)?;
        let name = spec
            .annotation(CONTAINER_NAME_ANNOTATION)
            .unwrap_or(&request.id)
            .to_string();
        let create = control::CreateRequest {
            id: request.id.clone(),
            name,
            source: Some(source),
            env: spec
                .env()
                .into_iter()
                .map(|(key, value)| control::EnvVar { key, value })
                .collect(),
            args: spec.args().iter().skip(1).cloned().collect(),
            listen,
            netns,
            limits: None,
            sandbox_id: spec
                .annotation(SANDBOX_ID_ANNOTATION)
                .unwrap_or_default()
                .to_string(),
            stdout_path: request.stdout.clone(),
            stderr_path: request.stderr.clone(),
            owner_pid: std::process::id(),
            min_idle,
            max_invocations,
            subscribe: spec
                .annotation(SUBSCRIBE_ANNOTATION)
                .unwrap_or_default()
                .to_string(),
        };
        let created = async {
            let mut client = self.hearthd.client().await?;
            client.create(create.clone()).await.map_err(from_status)
        }
        .await;
        match created {
            Ok(response) => {
                let response = response.into_inner();
                info!(
                    "function {} loaded by hearthd: {} {} (compiled code from {})",
                    request.id, response.kind, response.digest, response.compiled_from
                );
                Ok(Role::Function {
                    request: Box::new(create),
                    rootfs: rootfs.to_path_buf(),
                    holder,
                })
            }
            Err(error) => {
                if let Some(pid) = holder {
                    stop_holder(pid);
                }
                error!("create of {} failed: {error}", request.id);
                Err(error)
            }
        }
    }

    async fn do_start(&self, request: StartRequest) -> Result<StartResponse, ShimError> {
        no_exec(&request.exec_id)?;
        let container = self.get(&request.id)?;
        if container.pid.load(Ordering::SeqCst) != 0 {
            return Err(ShimError::FailedPreconditionError(format!(
                "`{}` was already started",
                container.id
            )));
        }
        let pid = match &container.role {
            Role::Sandbox { plan } => {
                let (pid, child) = spawn_holder(plan)?;
                let task = self.clone_for_watch();
                let watched = container.clone();
                tokio::spawn(async move {
                    let status = match child.await {
                        Ok(status) => exit_code(status),
                        Err(error) => {
                            error!("lost the sandbox holder {pid}: {error}");
                            LOST_EXIT_STATUS
                        }
                    };
                    task.finish(&watched, status).await;
                });
                pid
            }
            Role::Function { .. } => {
                let mut client = self.hearthd.client().await?;
                let started = client
                    .start(control::StartRequest {
                        id: container.id.clone(),
                    })
                    .await
                    .map_err(from_status)?
                    .into_inner();
                if !started.listening.is_empty() {
                    info!(
                        "function {} listening on {}",
                        container.id, started.listening
                    );
                }
                let task = self.clone_for_watch();
                let watched = container.clone();
                tokio::spawn(async move { task.watch_function(watched).await });
                std::process::id()
            }
        };
        container.pid.store(pid, Ordering::SeqCst);
        self.publish(
            "/tasks/start",
            Box::new(TaskStart {
                container_id: container.id.clone(),
                pid,
                ..Default::default()
            }),
        )
        .await;
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn clone_for_watch(&self) -> Watcher {
        Watcher {
            namespace: self.namespace.clone(),
            publisher: self.publisher.clone(),
            socket: self.hearthd.socket.clone(),
        }
    }

    async fn do_kill(&self, request: KillRequest) -> Result<(), ShimError> {
        no_exec(&request.exec_id)?;
        let container = self.get(&request.id)?;
        info!("kill {} with signal {}", container.id, request.signal);
        match &container.role {
            Role::Sandbox { .. } => {
                let pid = container.pid.load(Ordering::SeqCst);
                if pid != 0 && container.exit.borrow().is_none() {
                    signal_process(pid, request.signal)?;
                } else if pid == 0 {
                    let task = self.clone_for_watch();
                    task.finish(&container, 128 + request.signal).await;
                }
                Ok(())
            }
            Role::Function { .. } => {
                if container.exit.borrow().is_some() {
                    return Ok(());
                }
                let mut client = self.hearthd.client().await?;
                client
                    .kill(control::KillRequest {
                        id: container.id.clone(),
                        signal: request.signal,
                    })
                    .await
                    .map_err(from_status)?;
                if container.pid.load(Ordering::SeqCst) == 0 {
                    // Never started: no watcher will report the exit.
                    let task = self.clone_for_watch();
                    task.finish(&container, 128 + request.signal).await;
                }
                Ok(())
            }
        }
    }

    async fn do_delete(&self, request: DeleteRequest) -> Result<DeleteResponse, ShimError> {
        no_exec(&request.exec_id)?;
        let container = self.get(&request.id)?;
        let started = container.pid.load(Ordering::SeqCst) != 0;
        if started && container.exit.borrow().is_none() {
            return Err(ShimError::FailedPreconditionError(format!(
                "`{}` is running; kill it first",
                container.id
            )));
        }
        if let Role::Function { rootfs, holder, .. } = &container.role {
            match self.hearthd.client().await {
                Ok(mut client) => {
                    let deleted = client
                        .delete(control::DeleteRequest {
                            id: container.id.clone(),
                        })
                        .await;
                    match deleted {
                        Ok(_) => {}
                        Err(status) if status.code() == tonic::Code::NotFound => {}
                        Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                            // Created, never started, never killed.
                            let _ = client
                                .kill(control::KillRequest {
                                    id: container.id.clone(),
                                    signal: 9,
                                })
                                .await;
                            let _ = client
                                .delete(control::DeleteRequest {
                                    id: container.id.clone(),
                                })
                                .await;
                        }
                        Err(status) => warn!("hearthd could not delete {}: {status}", container.id),
                    }
                }
                Err(error) => warn!(
                    "deleting {} without hearthd ({error}); hearthd forgets it when this shim exits",
                    container.id
                ),
            }
            unmount_rootfs(rootfs).await;
            if let Some(pid) = holder {
                stop_holder(*pid);
            }
        }
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&container.id);
        let exited = container.exit.borrow().clone();
        let pid = container.pid.load(Ordering::SeqCst);
        let (exit_status, exited_at) = match exited {
            Some(exited) => (exited.status, Some(exited.at)),
            None => (0, None),
        };
        info!("deleted {}", container.id);
        self.publish(
            "/tasks/delete",
            Box::new(TaskDelete {
                container_id: container.id.clone(),
                pid,
                exit_status,
                exited_at: exited_at.clone().into(),
                id: container.id.clone(),
                ..Default::default()
            }),
        )
        .await;
        Ok(DeleteResponse {
            pid,
            exit_status,
            exited_at: exited_at.into(),
            ..Default::default()
        })
    }

    async fn do_stats(&self, request: StatsRequest) -> Result<StatsResponse, ShimError> {
        let container = self.get(&request.id)?;
        let usage = match &container.role {
            Role::Sandbox { .. } => rss_bytes(container.pid.load(Ordering::SeqCst)),
            Role::Function { .. } => {
                let mut client = self.hearthd.client().await?;
                client
                    .state(control::StateRequest {
                        id: container.id.clone(),
                    })
                    .await
                    .map_err(from_status)?
                    .into_inner()
                    .memory_bytes
            }
        };
        let metrics = Metrics {
            memory: Some(MemoryStat {
                usage,
                anon: usage,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let stats = containerd_shim::util::convert_to_any(Box::new(metrics))?;
        Ok(StatsResponse {
            stats: Some(stats).into(),
            ..Default::default()
        })
    }
}

/// What a background watcher needs to report an exit.
struct Watcher {
    namespace: String,
    publisher: Arc<RemotePublisher>,
    socket: PathBuf,
}

impl Watcher {
    /// Records the first exit of `container` and publishes `/tasks/exit`.
    async fn finish(&self, container: &Container, status: u32) {
        let at = now();
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
        info!("{} exited with status {status}", container.id);
        let event = TaskExit {
            container_id: container.id.clone(),
            id: container.id.clone(),
            pid: container.pid.load(Ordering::SeqCst),
            exit_status: status,
            exited_at: Some(at).into(),
            ..Default::default()
        };
        let published = self
            .publisher
            .publish(
                Default::default(),
                "/tasks/exit",
                &self.namespace,
                Box::new(event),
            )
            .await;
        if let Err(error) = published {
            warn!("cannot publish /tasks/exit: {error}");
        }
    }

    /// Waits for a function to exit in hearthd, riding out hearthd restarts.
    async fn watch_function(&self, container: Arc<Container>) {
        let Role::Function { request, .. } = &container.role else {
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
                    if let Err(reason) = self.reattach(&container, request).await {
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
    ) -> Result<(), String> {
        let patience = reconnect_patience();
        let deadline = tokio::time::Instant::now() + patience;
        let mut pause = Duration::from_millis(50);
        loop {
            let last_error = match self.try_reattach(container, request).await {
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

fn no_exec(exec_id: &str) -> Result<(), ShimError> {
    if exec_id.is_empty() {
        Ok(())
    } else {
        Err(ShimError::Unimplemented(
            "exec is not supported: a function has no processes to exec into".into(),
        ))
    }
}

fn exit_code(status: std::process::ExitStatus) -> u32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u32,
        (None, Some(signal)) => 128 + signal as u32,
        _ => LOST_EXIT_STATUS,
    }
}

/// Starts a namespace holder; returns its pid and a future of its exit.
fn spawn_holder(
    plan: &crate::spec::NamespacePlan,
) -> Result<
    (
        u32,
        impl std::future::Future<Output = std::io::Result<std::process::ExitStatus>> + use<>,
    ),
    ShimError,
> {
    let command = pause::command_for(plan)
        .map_err(|e| ShimError::Other(format!("cannot find the shim binary: {e}")))?;
    let mut child = tokio::process::Command::from(command)
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| ShimError::Other(format!("cannot start the sandbox holder: {e}")))?;
    let pid = child.id().unwrap_or_default();
    Ok((pid, async move { child.wait().await }))
}

fn stop_holder(pid: u32) {
    let _ = signal_process(pid, 9);
}

fn signal_process(pid: u32, signal: u32) -> Result<(), ShimError> {
    let signal = nix::sys::signal::Signal::try_from(signal as i32)
        .map_err(|_| ShimError::InvalidArgument(format!("unknown signal {signal}")))?;
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(error) => Err(ShimError::Other(format!("cannot signal {pid}: {error}"))),
    }
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

async fn mount_rootfs(request: &CreateTaskRequest, rootfs: &Path) -> Result<(), ShimError> {
    let mounts = request.rootfs.clone();
    let target = rootfs.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<(), ShimError> {
        std::fs::create_dir_all(&target).map_err(|e| {
            ShimError::Other(format!("cannot create rootfs {}: {e}", target.display()))
        })?;
        for mount in &mounts {
            let kind = Some(mount.type_.as_str()).filter(|kind| !kind.is_empty());
            let source = Some(mount.source.as_str()).filter(|source| !source.is_empty());
            containerd_shim::mount::mount_rootfs(kind, source, &mount.options, &target).map_err(
                |e| ShimError::Other(format!("cannot mount the rootfs {}: {e}", target.display())),
            )?;
        }
        Ok(())
    })
    .await
    .map_err(|e| ShimError::Other(e.to_string()))?
}

async fn unmount_rootfs(rootfs: &Path) {
    let target = rootfs.to_string_lossy().into_owned();
    let unmounted = tokio::task::spawn_blocking(move || {
        containerd_shim::mount::umount_recursive(Some(&target), libc_mnt_detach())
    })
    .await;
    match unmounted {
        Ok(Ok(())) => {}
        Ok(Err(error)) => warn!("cannot unmount {}: {error}", rootfs.display()),
        Err(error) => warn!("cannot unmount {}: {error}", rootfs.display()),
    }
}

/// `MNT_DETACH`: unmount even while something holds a file open.
fn libc_mnt_detach() -> i32 {
    nix::mount::MntFlags::MNT_DETACH.bits()
}

#[async_trait]
impl Task for HearthTask {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        request: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        Ok(self.do_create(request).await?)
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        request: StartRequest,
    ) -> TtrpcResult<StartResponse> {
        Ok(self.do_start(request).await?)
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        request: StateRequest,
    ) -> TtrpcResult<StateResponse> {
        no_exec(&request.exec_id)?;
        let container = self.get(&request.id)?;
        let pid = container.pid.load(Ordering::SeqCst);
        let exited = container.exit.borrow().clone();
        let status = match (&exited, pid) {
            (Some(_), _) => Status::STOPPED,
            (None, 0) => Status::CREATED,
            (None, _) => Status::RUNNING,
        };
        Ok(StateResponse {
            id: container.id.clone(),
            bundle: container.bundle.clone(),
            pid,
            status: status.into(),
            stdin: container.stdin.clone(),
            stdout: container.stdout.clone(),
            stderr: container.stderr.clone(),
            exit_status: exited.as_ref().map(|e| e.status).unwrap_or(0),
            exited_at: exited.map(|e| e.at).into(),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, request: KillRequest) -> TtrpcResult<Empty> {
        self.do_kill(request).await?;
        Ok(Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, request: WaitRequest) -> TtrpcResult<WaitResponse> {
        no_exec(&request.exec_id)?;
        let container = self.get(&request.id)?;
        let mut exit = container.exit.subscribe();
        let exited = exit
            .wait_for(|exit| exit.is_some())
            .await
            .map_err(|_| ShimError::Other("the container was dropped".into()))?
            .clone()
            .expect("waited for Some");
        Ok(WaitResponse {
            exit_status: exited.status,
            exited_at: Some(exited.at).into(),
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        request: DeleteRequest,
    ) -> TtrpcResult<DeleteResponse> {
        Ok(self.do_delete(request).await?)
    }

    async fn pids(&self, _ctx: &TtrpcContext, request: PidsRequest) -> TtrpcResult<PidsResponse> {
        let container = self.get(&request.id)?;
        let pid = container.pid.load(Ordering::SeqCst);
        let processes = (pid != 0)
            .then(|| ProcessInfo {
                pid,
                ..Default::default()
            })
            .into_iter()
            .collect();
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        request: StatsRequest,
    ) -> TtrpcResult<StatsResponse> {
        Ok(self.do_stats(request).await?)
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        request: ConnectRequest,
    ) -> TtrpcResult<ConnectResponse> {
        let task_pid = self
            .get(&request.id)
            .map(|container| container.pid.load(Ordering::SeqCst))
            .unwrap_or_default();
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _request: ShutdownRequest) -> TtrpcResult<Empty> {
        let empty = self
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty();
        if empty {
            info!("no containers left: shim exits");
            self.exit.signal();
        }
        Ok(Empty::new())
    }
}
