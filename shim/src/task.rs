//! The runtime v2 task service of one shim: every container of one Pod.
//!
//! # Contract
//!
//! * **Sandbox containers** are the shim itself: the task's PID is the
//!   shim's, and no process is started. A Pod's network namespace is the
//!   one the CRI created and pinned at a path (the sandbox spec names it);
//!   its containers' specs name it as `/proc/<sandbox PID>/ns/net`, which
//!   the shim reads as that path. The IPC and UTS namespaces a pause
//!   process would hold are not created: functions are not processes and
//!   use neither. Kill with any signal but 0 ends the task with 128 +
//!   signal, as it would end a pause process.
//! * Only a sandbox that asks for a **new network namespace without a
//!   path** (no CRI made one) gets a namespace holder ([`crate::holder`]) as
//!   a child of the shim; its PID is then the task's PID. Kill signals it;
//!   its exit (128 + signal when a signal ended it) is the task's exit.
//! * **Events** (`/tasks/*`) are queued, not awaited ([`crate::events`]):
//!   a reply does not wait for containerd to take them, and they reach it
//!   in order.
//! * **Function containers** are handed to hearthd over the control API.
//!   Create mounts the rootfs containerd lists, finds the component in it
//!   (or falls back to the image reference, see [`crate::spec`]) and calls
//!   hearthd's `Create` with the container's env, args, `$PORT`, network
//!   namespace, stdio paths and the shim's pid as owner (so a dead shim
//!   leaves nothing running). The task's PID is the shim's own PID: there is
//!   no process per function. Kill forwards the signal (SIGTERM drains,
//!   SIGKILL stops at once); the task exits with hearthd's exit status.
//! * **A service's listener belongs to the shim.** Once hearthd has loaded
//!   a service, the shim binds its `$PORT` in the Pod's network namespace
//!   (a port already taken fails Create) and hands the descriptor to
//!   hearthd at Start (see `hearth_control::listener`). The shim closes it
//!   when the task is killed or exits, so the port lives as long as the
//!   task serves, and connections that arrive while hearthd restarts wait
//!   in its backlog.
//! * **hearthd is not started by the shim.** It is the node's daemon (a
//!   DaemonSet or a system service); when it is not reachable, Create fails
//!   with an error naming the socket (`$HEARTH_SOCKET`, else
//!   `/run/hearth/hearthd.sock`).
//! * **hearthd restarts.** While a function runs, the shim waits on it. When
//!   hearthd goes away, the shim reconnects for up to
//!   [`reconnect_patience`] and then, if hearthd no longer knows the
//!   function, creates and starts it again from the same request, on the
//!   same listener. If that fails, or hearthd does not come back in time,
//!   the task exits with status [`LOST_EXIT_STATUS`] and the reason is
//!   written to the container's stderr (so `kubectl logs` shows it) and the
//!   shim log. A Kill while hearthd is unreachable stops the function in
//!   the shim (exit 128 + signal, listener closed) instead of failing, so
//!   a Pod deleted during a hearthd restart does not hang in Terminating.
//! * **Exec** (`kubectl exec`, exec probes) is refused with
//!   `FAILED_PRECONDITION` and a message that says why: a function has no
//!   processes or shell to exec into.
//! * **Delete** refuses a running task, forgets the function in hearthd,
//!   unmounts the rootfs, stops its namespace holder if any, and publishes
//!   `/tasks/delete`. Every task publishes `/tasks/create`, `/tasks/start`,
//!   `/tasks/exit` and `/tasks/delete`.
//! * **Stats** reports memory and CPU: for a function, the linear memory
//!   its live instances hold in hearthd and the CPU time its guest code has
//!   used there (`usage_usec`); for a sandbox, the RSS of its task's
//!   process (the shim, or its holder): what the Pod costs the node outside
//!   hearthd. Both as
//!   `io.containerd.cgroups.v2.Metrics`.
//! * **Identity and limits** go to hearthd with `Create`: the Pod's
//!   namespace (`io.kubernetes.cri.sandbox-namespace`), its app
//!   (`hearth.dev/app`, else the container's name), its
//!   `linux.resources` limits, and the narrowing annotations
//!   `hearth.dev/outbound-hosts`, `hearth.dev/shared-stores` and
//!   `hearth.dev/publish-topics` (see `hearth_host::tenancy`).
//! * **Shutdown** ends the shim once it holds no containers.
//!
//! The task API is here; the sandbox holder is [`crate::holder`], the
//! hearthd client and exit watcher [`crate::hearthd`], the rootfs
//! [`crate::rootfs`], and every failure a [`TaskError`].

use crate::error::TaskError;
use crate::events::Events;
use crate::hearthd::{Hearthd, Watcher};
use crate::spec::{
    APP_ANNOTATION, BundleSpec, CONTAINER_NAME_ANNOTATION, Entrypoint, OUTBOUND_HOSTS_ANNOTATION,
    PUBLISH_TOPICS_ANNOTATION, SANDBOX_ID_ANNOTATION, SANDBOX_NAMESPACE_ANNOTATION,
    SHARED_STORES_ANNOTATION, SUBSCRIBE_ANNOTATION, find_entrypoint,
};
use crate::timing::Stopwatch;
use crate::{holder, rootfs};
use async_trait::async_trait;
use containerd_shim::api::{
    ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse, DeleteRequest,
    DeleteResponse, Empty, KillRequest, PidsRequest, PidsResponse, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, WaitRequest,
    WaitResponse,
};
use containerd_shim::protos::cgroups_v2::metrics::{CPUStat, MemoryStat, Metrics};
use containerd_shim::protos::events::task::{TaskCreate, TaskDelete, TaskIO, TaskStart};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::types::task::{ProcessInfo, Status};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{ExitSignal, TtrpcContext, TtrpcResult};
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
    events: Events,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    hearthd: Arc<Hearthd>,
    exit: Arc<ExitSignal>,
}

/// One container of the Pod.
pub(crate) struct Container {
    pub(crate) id: String,
    pub(crate) bundle: String,
    pub(crate) stdin: String,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) role: Role,
    /// 0 until started.
    pub(crate) pid: AtomicU32,
    pub(crate) exit: watch::Sender<Option<Exited>>,
}

/// How a container ended.
#[derive(Clone)]
pub(crate) struct Exited {
    pub(crate) status: u32,
    pub(crate) at: Timestamp,
}

/// What a container is.
pub(crate) enum Role {
    Sandbox {
        plan: crate::spec::NamespacePlan,
    },
    Function {
        request: Box<control::CreateRequest>,
        /// A service's listening socket, handed to hearthd at Start; closed
        /// when the task exits.
        listener: Mutex<Option<std::net::TcpListener>>,
        rootfs: PathBuf,
        /// A holder of namespaces created for a container outside any Pod.
        holder: Option<u32>,
    },
}

impl HearthTask {
    /// A service for the containers of one shim, publishing events to
    /// containerd's `namespace` through `publisher`, signalling `exit` on
    /// Shutdown. It starts connecting to hearthd at once, so the first
    /// function's Create finds the connection made (or being made) while
    /// containerd was still busy with the Pod's sandbox.
    pub fn new(namespace: &str, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Self {
        let hearthd = Arc::new(Hearthd::new(hearth_control::socket_path()));
        let connecting = hearthd.clone();
        tokio::spawn(async move {
            // Unreachable now is not an error yet: Create connects again,
            // and fails with the socket's name if hearthd is still away.
            let _ = connecting.client().await;
        });
        HearthTask {
            events: Events::start(publisher, namespace.to_string()),
            containers: Mutex::new(HashMap::new()),
            hearthd,
            exit,
        }
    }

    fn get(&self, id: &str) -> Result<Arc<Container>, TaskError> {
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| TaskError::NotFound(format!("no container `{id}` in this shim")))
    }

    async fn do_create(&self, request: CreateTaskRequest) -> Result<CreateTaskResponse, TaskError> {
        let mut stopwatch = Stopwatch::start();
        crate::spec::check_id("the container id", &request.id)
            .map_err(|e| TaskError::InvalidArgument(e.to_string()))?;
        if request.terminal {
            return Err(TaskError::InvalidArgument(
                "a terminal is not supported: functions have no TTY".into(),
            ));
        }
        if !request.checkpoint.is_empty() {
            return Err(TaskError::Unimplemented(
                "checkpoints are not supported".into(),
            ));
        }
        if self
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&request.id)
        {
            return Err(TaskError::AlreadyExists(format!(
                "container `{}` exists",
                request.id
            )));
        }
        let bundle = PathBuf::from(&request.bundle);
        let spec =
            BundleSpec::load(&bundle).map_err(|e| TaskError::InvalidArgument(e.to_string()))?;
        if let Some(sandbox) = spec.annotation(SANDBOX_ID_ANNOTATION) {
            crate::spec::check_id("the sandbox-id annotation", sandbox)
                .map_err(|e| TaskError::InvalidArgument(e.to_string()))?;
        }
        stopwatch.lap("spec");
        let (role, pid) = if spec.is_sandbox() {
            (
                Role::Sandbox {
                    plan: spec.namespace_plan(),
                },
                0,
            )
        } else {
            (
                self.create_function(&request, &spec, &bundle, &mut stopwatch)
                    .await?,
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
        self.events.send(
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
        );
        stopwatch.lap("event");
        let what = if spec.is_sandbox() {
            "create-sandbox"
        } else {
            "create-function"
        };
        stopwatch.log(what, &request.id);
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
        stopwatch: &mut Stopwatch,
    ) -> Result<Role, TaskError> {
        let rootfs = spec.rootfs(bundle);
        rootfs::mount(request, &rootfs).await?;
        stopwatch.lap("rootfs");
        let created = self
            .hand_to_hearthd(request, spec, &rootfs, stopwatch)
            .await;
        match created {
            Ok(role) => Ok(role),
            Err(error) => {
                error!("function {} not created: {error}", request.id);
                rootfs::unmount(&rootfs).await;
                Err(error)
            }
        }
    }

    async fn hand_to_hearthd(
        &self,
        request: &CreateTaskRequest,
        spec: &BundleSpec,
        rootfs: &Path,
        stopwatch: &mut Stopwatch,
    ) -> Result<Role, TaskError> {
        let source = match find_entrypoint(spec, rootfs)
            .map_err(|e| TaskError::InvalidArgument(e.to_string()))?
        {
            Entrypoint::File(path) => {
                control::create_request::Source::WasmPath(path.to_string_lossy().into_owned())
            }
            Entrypoint::Image(image) => control::create_request::Source::Image(image),
        };
        let plan = self.in_pod_network(spec.namespace_plan(), spec)?;
        let mut holder = None;
        let netns = match (&plan.join_network, plan.new_network) {
            (Some(path), _) => path.clone(),
            (None, true) => {
                // A container outside any Pod that asked for a network of its
                // own: hold a fresh namespace for it.
                let pid = holder::spawn(&plan)?.0;
                holder = Some(pid);
                format!("/proc/{pid}/ns/net")
            }
            (None, false) => String::new(),
        };
        let listen = spec.listen_address().map_err(TaskError::InvalidArgument)?;
        let (min_idle, max_invocations) = spec
            .pool_annotations()
            .map_err(TaskError::InvalidArgument)?;
        let instance_concurrency = spec
            .instance_concurrency()
            .map_err(TaskError::InvalidArgument)?;
        let name = spec
            .annotation(CONTAINER_NAME_ANNOTATION)
            .unwrap_or(&request.id)
            .to_string();
        let (memory_limit_bytes, cpu_limit_millis) = spec.resource_limits();
        let names = |key| {
            spec.list_annotation(key)
                .map(|names| control::NameList { names })
        };
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
            limits: (instance_concurrency > 0).then(|| control::Limits {
                instance_concurrency,
                ..Default::default()
            }),
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
            namespace: spec
                .annotation(SANDBOX_NAMESPACE_ANNOTATION)
                .unwrap_or_default()
                .to_string(),
            app: spec
                .annotation(APP_ANNOTATION)
                .unwrap_or_default()
                .to_string(),
            resources: Some(control::PodResources {
                memory_limit_bytes,
                cpu_limit_millis,
            }),
            outbound_hosts: names(OUTBOUND_HOSTS_ANNOTATION),
            shared_stores: names(SHARED_STORES_ANNOTATION),
            publish_topics: names(PUBLISH_TOPICS_ANNOTATION),
            config_dirs: spec.configmap_dirs(),
        };
        let created = async {
            let mut client = self.hearthd.client().await?;
            stopwatch.lap("connect");
            client
                .create(create.clone())
                .await
                .map_err(TaskError::Hearthd)
        }
        .await;
        stopwatch.lap("hearthd");
        let listener = match created {
            Ok(response) => {
                let response = response.into_inner();
                info!(
                    "function {} loaded by hearthd: {} {} (compiled code from {})",
                    request.id, response.kind, response.digest, response.compiled_from
                );
                if response.kind == "service" {
                    self.bind_listener(&create).await.map(Some)
                } else {
                    Ok(None)
                }
            }
            Err(error) => Err(error),
        };
        stopwatch.lap("listener");
        match listener {
            Ok(listener) => Ok(Role::Function {
                request: Box::new(create),
                listener: Mutex::new(listener),
                rootfs: rootfs.to_path_buf(),
                holder,
            }),
            Err(error) => {
                if let Some(pid) = holder {
                    holder::stop(pid);
                }
                error!("create of {} failed: {error}", request.id);
                Err(error)
            }
        }
    }

    /// `plan` with a network namespace named as the sandbox task's
    /// (`/proc/<this shim>/ns/net`, as the CRI names a Pod's network for its
    /// containers) replaced by the namespace the sandbox was given: this
    /// shim is the sandbox task and has no namespace of its own.
    fn in_pod_network(
        &self,
        mut plan: crate::spec::NamespacePlan,
        spec: &BundleSpec,
    ) -> Result<crate::spec::NamespacePlan, TaskError> {
        let own = format!("/proc/{}/ns/net", std::process::id());
        if plan.join_network.as_deref() != Some(own.as_str()) {
            return Ok(plan);
        }
        let sandbox_id = spec.annotation(SANDBOX_ID_ANNOTATION).unwrap_or_default();
        let sandbox = self.get(sandbox_id).map_err(|_| {
            TaskError::InvalidArgument(format!(
                "the container joins the network of sandbox `{sandbox_id}` ({own}), which this shim does not run"
            ))
        })?;
        let Role::Sandbox { plan: sandbox_plan } = &sandbox.role else {
            return Err(TaskError::InvalidArgument(format!(
                "`{sandbox_id}` is not a sandbox"
            )));
        };
        plan.join_network = sandbox_plan.join_network.clone();
        Ok(plan)
    }

    /// Binds a service's listener in its network namespace; on failure,
    /// forgets the function hearthd just created.
    async fn bind_listener(
        &self,
        create: &control::CreateRequest,
    ) -> Result<std::net::TcpListener, TaskError> {
        let addr: std::net::SocketAddr = create.listen.parse().map_err(|_| {
            TaskError::InvalidArgument(format!("bad listen address `{}`", create.listen))
        })?;
        let netns = PathBuf::from(&create.netns);
        let bound = tokio::task::spawn_blocking(move || {
            hearth_control::listener::listen_in_netns(addr, &netns)
        })
        .await
        .map_err(|error| TaskError::Internal(error.to_string()))?;
        match bound {
            Ok(listener) => Ok(listener),
            Err(error) => {
                if let Ok(mut client) = self.hearthd.client().await {
                    let _ = client
                        .delete(control::DeleteRequest {
                            id: create.id.clone(),
                        })
                        .await;
                }
                Err(TaskError::FailedPrecondition(format!(
                    "cannot listen on {addr} ($PORT) in the Pod's network: {error}"
                )))
            }
        }
    }

    async fn do_start(&self, request: StartRequest) -> Result<StartResponse, TaskError> {
        let mut stopwatch = Stopwatch::start();
        no_exec(&request.exec_id)?;
        let container = self.get(&request.id)?;
        if container.pid.load(Ordering::SeqCst) != 0 {
            return Err(TaskError::FailedPrecondition(format!(
                "`{}` was already started",
                container.id
            )));
        }
        let pid = match &container.role {
            Role::Sandbox { plan } if !plan.new_network => {
                // The Pod's network namespace, if it has one, is pinned by
                // the CRI at a path; nothing else a namespace holder would
                // keep is used by functions. The shim is the sandbox task.
                std::process::id()
            }
            Role::Sandbox { plan } => {
                let (pid, child) = holder::spawn(plan)?;
                stopwatch.lap("holder");
                let task = self.clone_for_watch();
                let watched = container.clone();
                tokio::spawn(async move {
                    let status = match child.await {
                        Ok(status) => holder::exit_code(status),
                        Err(error) => {
                            error!("lost the sandbox holder {pid}: {error}");
                            LOST_EXIT_STATUS
                        }
                    };
                    task.finish(&watched, status).await;
                });
                pid
            }
            Role::Function { listener, .. } => {
                let mut client = self.hearthd.client().await?;
                let started = client
                    .start(control::StartRequest {
                        id: container.id.clone(),
                        listen_fd: listen_fd(listener),
                    })
                    .await
                    .map_err(TaskError::Hearthd)?
                    .into_inner();
                stopwatch.lap("hearthd");
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
        self.events.send(
            "/tasks/start",
            Box::new(TaskStart {
                container_id: container.id.clone(),
                pid,
                ..Default::default()
            }),
        );
        stopwatch.lap("event");
        let what = match &container.role {
            Role::Sandbox { .. } => "start-sandbox",
            Role::Function { .. } => "start-function",
        };
        stopwatch.log(what, &container.id);
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn clone_for_watch(&self) -> Watcher {
        Watcher {
            events: self.events.clone(),
            socket: self.hearthd.socket().to_path_buf(),
        }
    }

    async fn do_kill(&self, request: KillRequest) -> Result<(), TaskError> {
        no_exec(&request.exec_id)?;
        let container = self.get(&request.id)?;
        info!("kill {} with signal {}", container.id, request.signal);
        match &container.role {
            Role::Sandbox { .. } => {
                let pid = container.pid.load(Ordering::SeqCst);
                if container.exit.borrow().is_some() {
                    return Ok(());
                }
                if pid == 0 || pid == std::process::id() {
                    // No holder process: the task is this shim's, and a
                    // signal ends it as it would end a pause process.
                    if request.signal != 0 {
                        let task = self.clone_for_watch();
                        task.finish(&container, 128 + request.signal).await;
                    }
                } else {
                    holder::signal(pid, request.signal)?;
                }
                Ok(())
            }
            Role::Function { .. } => {
                if container.exit.borrow().is_some() {
                    return Ok(());
                }
                let killed = match self.hearthd.client().await {
                    Ok(mut client) => client
                        .kill(control::KillRequest {
                            id: container.id.clone(),
                            signal: request.signal,
                        })
                        .await
                        .map(|_| ())
                        .map_err(TaskError::Hearthd),
                    Err(error) => Err(error),
                };
                match killed {
                    Ok(()) => {}
                    Err(error) if error.is_unreachable() => {
                        // hearthd is restarting (or gone): nothing of the
                        // function runs anywhere but in the old hearthd's
                        // drain, and the reattach is now moot.
                        warn!(
                            "kill {}: {error}; stopping it here, it will not be re-loaded",
                            container.id
                        );
                        let task = self.clone_for_watch();
                        task.finish(&container, 128 + request.signal).await;
                        return Ok(());
                    }
                    Err(error) => return Err(error),
                }
                if let Role::Function { listener, .. } = &container.role {
                    // hearthd stops accepting now; so does the port, rather
                    // than queue connections nobody will take.
                    listener.lock().unwrap_or_else(|e| e.into_inner()).take();
                }
                if container.pid.load(Ordering::SeqCst) == 0 {
                    // Never started: no watcher will report the exit.
                    let task = self.clone_for_watch();
                    task.finish(&container, 128 + request.signal).await;
                }
                Ok(())
            }
        }
    }

    async fn do_delete(&self, request: DeleteRequest) -> Result<DeleteResponse, TaskError> {
        no_exec(&request.exec_id)?;
        let container = self.get(&request.id)?;
        let started = container.pid.load(Ordering::SeqCst) != 0;
        if started && container.exit.borrow().is_none() {
            return Err(TaskError::FailedPrecondition(format!(
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
            rootfs::unmount(rootfs).await;
            if let Some(pid) = holder {
                holder::stop(*pid);
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
        self.events.send(
            "/tasks/delete",
            Box::new(TaskDelete {
                container_id: container.id.clone(),
                pid,
                exit_status,
                exited_at: exited_at.clone().into(),
                id: container.id.clone(),
                ..Default::default()
            }),
        );
        Ok(DeleteResponse {
            pid,
            exit_status,
            exited_at: exited_at.into(),
            ..Default::default()
        })
    }

    async fn do_stats(&self, request: StatsRequest) -> Result<StatsResponse, TaskError> {
        let container = self.get(&request.id)?;
        let (usage, cpu_nanos) = match &container.role {
            Role::Sandbox { .. } => (holder::rss_bytes(container.pid.load(Ordering::SeqCst)), 0),
            Role::Function { .. } => {
                let mut client = self.hearthd.client().await?;
                let state = client
                    .state(control::StateRequest {
                        id: container.id.clone(),
                    })
                    .await
                    .map_err(TaskError::Hearthd)?
                    .into_inner();
                (state.memory_bytes, state.cpu_nanos)
            }
        };
        let metrics = Metrics {
            memory: Some(MemoryStat {
                usage,
                anon: usage,
                ..Default::default()
            })
            .into(),
            cpu: Some(CPUStat {
                usage_usec: cpu_nanos / 1000,
                user_usec: cpu_nanos / 1000,
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

/// The descriptor number of a service's listener (0: none).
pub(crate) fn listen_fd(listener: &Mutex<Option<std::net::TcpListener>>) -> u32 {
    use std::os::fd::AsRawFd;
    listener
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map_or(0, |listener| listener.as_raw_fd() as u32)
}

/// Why `kubectl exec` and exec probes cannot work on a function.
pub const NO_EXEC: &str = "hearth: a function has no processes to exec into: it runs as a WebAssembly component inside the node's hearthd, with no shell or filesystem of its own. Use an httpGet probe instead of an exec probe, and `kubectl logs` to see its output";

fn no_exec(exec_id: &str) -> Result<(), TaskError> {
    if exec_id.is_empty() {
        Ok(())
    } else {
        Err(TaskError::Unimplemented(
            "exec is not supported: a function has no processes to exec into".into(),
        ))
    }
}

#[async_trait]
impl Task for HearthTask {
    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        request: containerd_shim::api::ExecProcessRequest,
    ) -> TtrpcResult<Empty> {
        info!(
            "exec into {} refused: functions have no processes",
            request.id
        );
        Err(TaskError::FailedPrecondition(NO_EXEC.into()).into())
    }

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
            .map_err(|_| TaskError::Internal("the container was dropped".into()))?
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
            self.events.flush().await;
            self.exit.signal();
        }
        Ok(Empty::new())
    }
}
