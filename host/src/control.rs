//! hearthd's control API server: functions handed over by shims (or any
//! client of `control.proto`), keyed by container id.
//!
//! # Contract
//!
//! * `Create` loads the function through the host's caches (a compiled-code
//!   hit when it is warm) and reports where the compiled code came from;
//!   nothing runs yet. A component that cannot be loaded is
//!   `INVALID_ARGUMENT` with the load error's message; a used id is
//!   `ALREADY_EXISTS`. A service gets an instance pool with the request's
//!   `min_idle` and `max_invocations` (zero: the node's
//!   [`NodeDefaults`]; an image
//!   listed in `[prewarm]` gets its `min_idle`), and the pool starts filling
//!   at once, so idle instances are ready by `Start`. A `min_idle` the
//!   node's instance slots cannot hold is `RESOURCE_EXHAUSTED`.
//! * `subscribe` (the Pod annotation `hearth.dev/subscribe`,
//!   `topic[@group][,...]`; the group defaults to the function's name) is
//!   checked at `Create`: a bad list, a function without the message
//!   handler, or a message handler with no subscription is
//!   `INVALID_ARGUMENT`; no broker on this node is `FAILED_PRECONDITION`.
//!   Kind: `service` (exports `wasi:http`, may also subscribe), `handler`
//!   (only the message handler) or `job` (`wasi:cli/run`).
//! * `Start` of a service serves on the listener its owner (the shim)
//!   bound and names with `listen_fd` (taken with `pidfd_getfd`, see
//!   [`hearth_control::listener`]), or else binds `listen` itself, inside
//!   the requested network namespace when one is given, and serves until
//!   killed; `Start` of
//!   anything with subscriptions starts them on hearthd's default broker
//!   (see [`crate::messages`]) — a broker that refuses is
//!   `FAILED_PRECONDITION` and nothing keeps running. `Start` of a job
//!   runs it to completion.
//! * `Kill` with SIGTERM drains a service or handler (no new connections or
//!   messages; in-flight requests and messages finish within
//!   [`DRAIN_GRACE`](crate::serving::DRAIN_GRACE), messages still running then are given back; exit
//!   status 0); SIGKILL, or any signal to a job, aborts at once with status
//!   128 + signal (messages in hand are given back for redelivery); so does
//!   a second SIGTERM while a service drains. Killing an exited function is a no-op; killing a
//!   created one marks it exited.
//! * `Wait` resolves once the function has exited, with its status and a
//!   reason; every waiter sees the same result.
//! * `Delete` forgets an exited or never-started function; a running one
//!   is `FAILED_PRECONDITION`, an unknown id `NOT_FOUND`.
//! * A function created with an `owner_pid` (its shim) lives only as long as
//!   that process: hearthd checks owners every [`OWNER_SWEEP`], and a
//!   function whose owner is gone (the pid is dead, or was reused: the
//!   process start time is compared) is stopped at once and forgotten.
//! * **Identity and limits.** `namespace` and `app` make the function's
//!   identity (see [`crate::tenancy`]); the request's annotations
//!   (`outbound_hosts`, `shared_stores`, `publish_topics`) can only narrow
//!   what hearthd's `[tenancy]` policy gives the namespace, and `resources`
//!   (the Pod's limits) cap its memory, instances and `min_idle` — the same
//!   [`FunctionSpec::into_env`] a `hearth.toml` function goes through. A
//!   refusal is `INVALID_ARGUMENT` naming what and why.
//! * `stdout_path`/`stderr_path` receive the guest's output a line at a time
//!   (see [`crate::guest_output`]).
//! * Paths in a request with an `owner_pid` (`wasm_path`, the stdio paths,
//!   `config_dirs`) are opened as the owner sees them, through
//!   `/proc/<owner>/root`: a hearthd running in a container of its own (the
//!   DaemonSet, with `hostPID`) needs no view of containerd's mounts.
//! * **Hand-over** ([`Handover::hand_over`], hearthd's SIGTERM): from then
//!   on every call is `UNAVAILABLE` (`Wait`s in progress too: the function
//!   has not exited, and its shim reattaches to the next hearthd); every
//!   running service stops accepting and its in-flight requests and
//!   messages finish within [`DRAIN_GRACE`](crate::serving::DRAIN_GRACE),
//!   then hearthd may exit. The listeners stay open in their shims, so
//!   connections arriving meanwhile wait for the next hearthd.
//! * Every transition is logged with the id and the function's name.

use crate::capabilities::CapabilityGrants;
use crate::distribution::PullPolicy;
use crate::function::{Function, FunctionKind, FunctionLoadError, Host};
use crate::function_env::{FunctionSpec, NodeDefaults, PodResources};
use crate::guest_output::{GuestOutputFiles, GuestStdio};
use crate::limits::LimitsOverride;
use crate::messages::SubscriptionSettings;
use crate::serving::{Drain, Serving};
use crate::telemetry;
use crate::tenancy::Narrowing;
use hearth_control::v1::control_server::Control;
use hearth_control::v1::{
    CreateRequest, CreateResponse, DeleteRequest, DeleteResponse, FunctionState, KillRequest,
    KillResponse, ListRequest, ListResponse, StartRequest, StartResponse, StateRequest,
    WaitRequest, WaitResponse, create_request::Source,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// SIGKILL.
const SIGKILL: u32 = 9;
/// SIGTERM.
const SIGTERM: u32 = 15;

/// How often functions are checked for a dead owner.
pub const OWNER_SWEEP: std::time::Duration = std::time::Duration::from_millis(500);

type Functions = Arc<Mutex<HashMap<String, Arc<Managed>>>>;

/// The control service; see the module docs.
pub struct ControlService {
    host: Arc<Host>,
    defaults: NodeDefaults,
    prewarm: Prewarmed,
    functions: Functions,
    /// Set once hearthd hands its functions over (see [`Handover`]).
    leaving: Arc<watch::Sender<bool>>,
}

/// Hands the functions of a [`ControlService`] over to the next hearthd;
/// see the module docs.
pub struct Handover {
    functions: Functions,
    leaving: Arc<watch::Sender<bool>>,
}

impl Handover {
    /// Refuses every call from now on, stops every running function from
    /// accepting and waits (at most `grace`) for what is in flight; returns
    /// how many functions were running. Nothing is reported exited.
    pub async fn hand_over(&self, grace: std::time::Duration) -> usize {
        self.leaving.send_replace(true);
        let running: Vec<Arc<Managed>> = self
            .functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|managed| managed.phase() == Phase::Running)
            .cloned()
            .collect();
        let mut tasks = Vec::new();
        for managed in &running {
            if let Some(drain) = managed
                .serving
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
            {
                drain.drain();
            }
            if let Some(task) = managed
                .task
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
            {
                tasks.push((managed.clone(), task));
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        for (managed, mut task) in tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!(id = %managed.id, function = managed.function.name(), "still busy after the hand-over grace: stopped");
                task.abort();
            }
        }
        running.len()
    }
}

/// What every call answers once hearthd hands over.
fn leaving_status() -> Status {
    Status::unavailable(
        "hearthd is shutting down; its functions are handed over to the next hearthd",
    )
}

struct ControlFunctions(Functions);

impl crate::admin::ServedFunctions for ControlFunctions {
    fn functions(&self) -> Vec<(String, Arc<Function>)> {
        let functions = self.0.lock().unwrap_or_else(|e| e.into_inner());
        functions
            .iter()
            .map(|(id, managed)| (id.clone(), managed.function.clone()))
            .collect()
    }
}

/// `[prewarm]`: functions from these images keep `min_idle` idle
/// instances unless they ask for their own.
#[derive(Debug, Clone, Default)]
pub struct Prewarmed {
    /// Images listed in `[prewarm]`...
    pub images: Vec<String>,
    /// ...and the idle instances their functions keep.
    pub min_idle: u32,
}

/// A process identified by pid and start time, so a reused pid is not
/// mistaken for the owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OwnerProcess {
    pid: u32,
    started_at: u64,
}

impl OwnerProcess {
    /// The process `pid` as it is now, if it exists.
    fn find(pid: u32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) may hold spaces and parentheses; the
        // fields after its closing parenthesis start at field 3.
        let after_name = &stat[stat.rfind(')')? + 1..];
        let started_at = after_name.split_whitespace().nth(19)?.parse().ok()?;
        Some(OwnerProcess { pid, started_at })
    }

    fn is_alive(&self) -> bool {
        OwnerProcess::find(self.pid) == Some(*self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Created,
    Running,
    Exited,
}

struct Managed {
    id: String,
    sandbox_id: String,
    listen: String,
    netns: String,
    owner: Option<OwnerProcess>,
    function: Arc<Function>,
    subscriptions: Vec<SubscriptionSettings>,
    phase: Mutex<Phase>,
    listening: Mutex<String>,
    /// Drains it; taken by the first SIGTERM.
    drain: Mutex<Option<Drain>>,
    /// Drains it for a hand-over (kept after a SIGTERM took `drain`).
    serving: Mutex<Option<Drain>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    exit: watch::Sender<Option<(i32, String)>>,
}

impl Managed {
    fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_phase(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase;
    }

    /// Records the exit once; later calls keep the first result.
    fn exited(&self, status: i32, reason: &str) {
        let first = self.exit.send_if_modified(|exit| {
            if exit.is_some() {
                return false;
            }
            *exit = Some((status, reason.to_string()));
            true
        });
        if first {
            self.set_phase(Phase::Exited);
            tracing::info!(id = %self.id, function = self.function.name(), status, reason, "function exited");
        }
    }

    fn state(&self) -> FunctionState {
        let exit = self.exit.borrow().clone();
        let pool = self.function.pool().map(|p| p.stats()).unwrap_or_default();
        FunctionState {
            id: self.id.clone(),
            name: self.function.name().to_string(),
            status: match self.phase() {
                Phase::Created => "created",
                Phase::Running => "running",
                Phase::Exited => "exited",
            }
            .into(),
            exit_status: exit.as_ref().map(|(status, _)| *status).unwrap_or(0),
            sandbox_id: self.sandbox_id.clone(),
            kind: self.function.kind().name().into(),
            wasi: self.function.wasi().label().into(),
            listening: self
                .listening
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            instances: self.function.live_instances(),
            memory_bytes: self.function.env().memory.bytes(),
            exit_reason: exit.map(|(_, reason)| reason).unwrap_or_default(),
            idle_instances: pool.idle,
            pool_hits: pool.hits,
            pool_misses: pool.misses,
            cpu_nanos: self.function.env().cpu.nanos(),
            namespace: self.function.env().namespace.clone(),
            app: self.function.capabilities().identity.app().to_string(),
        }
    }

    /// Stops the function at once (SIGKILL semantics).
    fn stop_now(&self, status: i32, reason: &str) {
        self.drain.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
        self.exited(status, reason);
    }
}

/// A control-API number that is "unset" when zero.
fn given<T: Default + PartialEq>(value: T) -> Option<T> {
    (value != T::default()).then_some(value)
}

/// Checks the subscriptions asked for against the function and the node.
fn subscriptions_for(
    request: &CreateRequest,
    name: &str,
    function: &Function,
) -> Result<Vec<SubscriptionSettings>, Status> {
    let subscriptions = match request.subscribe.trim() {
        "" => Vec::new(),
        list => SubscriptionSettings::from_annotation(list, name).map_err(|error| {
            Status::invalid_argument(format!("hearth.dev/subscribe `{list}`: {error}"))
        })?,
    };
    if !subscriptions.is_empty() && function.message_handler().is_none() {
        return Err(Status::invalid_argument(format!(
            "hearth.dev/subscribe is set, but function `{name}` does not export `{}`",
            crate::function::MESSAGE_HANDLER
        )));
    }
    if subscriptions.is_empty() && matches!(function.kind(), FunctionKind::MessageHandler { .. }) {
        return Err(Status::invalid_argument(format!(
            "function `{name}` only handles messages; say which topics with the Pod annotation hearth.dev/subscribe: <topic>[@group][,...]"
        )));
    }
    let scope = &function.capabilities().messaging;
    if let Some(refused) = subscriptions
        .iter()
        .find_map(|s| scope.broker_topic(&s.topic).err())
    {
        return Err(Status::invalid_argument(format!(
            "hearth.dev/subscribe: {refused}"
        )));
    }
    if !subscriptions.is_empty() && function.capabilities().broker().is_none() {
        return Err(Status::failed_precondition(format!(
            "function `{name}` subscribes to messages, but this node's hearthd has no message broker ([messaging.brokers])"
        )));
    }
    Ok(subscriptions)
}

impl ControlService {
    /// A service loading functions into `host`, filling in `defaults`
    /// where a request leaves a limit or pool setting at zero.
    pub fn new(host: Arc<Host>, defaults: NodeDefaults) -> Self {
        ControlService {
            host,
            defaults,
            prewarm: Prewarmed::default(),
            functions: Functions::default(),
            leaving: Arc::new(watch::channel(false).0),
        }
    }

    /// The handle that hands this service's functions over.
    pub fn handover(&self) -> Handover {
        Handover {
            functions: self.functions.clone(),
            leaving: self.leaving.clone(),
        }
    }

    /// `UNAVAILABLE` once hearthd hands over.
    fn refuse_if_leaving(&self) -> Result<(), Status> {
        if *self.leaving.borrow() {
            Err(leaving_status())
        } else {
            Ok(())
        }
    }

    /// A live view of the functions this service holds, for the admin
    /// endpoint.
    pub fn served_functions(&self) -> Arc<dyn crate::admin::ServedFunctions> {
        Arc::new(ControlFunctions(self.functions.clone()))
    }

    /// Gives functions from `prewarm.images` its `min_idle`.
    pub fn with_prewarmed(mut self, prewarm: Prewarmed) -> Self {
        self.prewarm = prewarm;
        self
    }

    /// What a Create request asks for, as every way of starting a function
    /// says it (see [`FunctionSpec`]); a zero means "the node's default".
    fn spec(
        &self,
        request: &CreateRequest,
        name: &str,
        owner: Option<OwnerProcess>,
    ) -> FunctionSpec {
        let limits = request
            .limits
            .as_ref()
            .map_or_else(LimitsOverride::default, |l| LimitsOverride {
                request_timeout_ms: given(l.request_timeout_ms),
                max_memory_mib: given(l.max_memory_mib),
                max_request_body_bytes: given(l.max_request_body_bytes),
                max_concurrent_instances: given(l.max_concurrent_instances),
                instance_concurrency: given(l.instance_concurrency),
                ..LimitsOverride::default()
            });
        let prewarmed = matches!(&request.source, Some(Source::Image(image)) if self.prewarm.images.contains(image));
        let min_idle = match given(request.min_idle) {
            None if prewarmed => Some(self.prewarm.min_idle),
            asked => asked,
        };
        let path_or_none = |path: &str| (!path.is_empty()).then(|| as_owner_sees(owner, path));
        let stdio = if request.stdout_path.is_empty() && request.stderr_path.is_empty() {
            GuestStdio::Log
        } else {
            GuestStdio::Files(Arc::new(GuestOutputFiles::new(
                name,
                path_or_none(&request.stdout_path),
                path_or_none(&request.stderr_path),
            )))
        };
        let names = |list: &Option<hearth_control::v1::NameList>| {
            list.as_ref().map(|l| {
                l.names
                    .iter()
                    .map(|n| n.trim().to_string())
                    .filter(|n| !n.is_empty())
                    .collect()
            })
        };
        let resources = request.resources.unwrap_or_default();
        let mut grants = CapabilityGrants::default();
        if !request.app.is_empty() {
            grants.app = Some(request.app.clone());
        }
        grants.config_dirs = request
            .config_dirs
            .iter()
            .map(|dir| as_owner_sees(owner, dir))
            .collect();
        FunctionSpec {
            name: name.to_string(),
            namespace: given(request.namespace.clone()),
            grants,
            narrowing: Narrowing {
                outbound_hosts: names(&request.outbound_hosts),
                shared_stores: names(&request.shared_stores),
                publish_topics: names(&request.publish_topics),
            },
            resources: PodResources {
                memory_limit_bytes: given(resources.memory_limit_bytes),
                cpu_limit_millis: given(resources.cpu_limit_millis),
            },
            env: request
                .env
                .iter()
                .map(|v| (v.key.clone(), v.value.clone()))
                .collect(),
            args: request.args.clone(),
            limits,
            min_idle,
            max_invocations: given(request.max_invocations),
            stdio,
            ..FunctionSpec::default()
        }
    }

    /// Every [`OWNER_SWEEP`], stops and forgets functions whose owner
    /// process is gone. Runs until the runtime shuts down.
    fn spawn_owner_sweeper(&self) {
        let functions = Arc::downgrade(&self.functions);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(OWNER_SWEEP);
            loop {
                ticks.tick().await;
                let Some(functions) = functions.upgrade() else {
                    return;
                };
                let orphans: Vec<Arc<Managed>> = {
                    let mut functions = functions.lock().unwrap_or_else(|e| e.into_inner());
                    let orphan_ids: Vec<String> = functions
                        .values()
                        .filter(|managed| managed.owner.is_some_and(|owner| !owner.is_alive()))
                        .map(|managed| managed.id.clone())
                        .collect();
                    orphan_ids
                        .iter()
                        .filter_map(|id| functions.remove(id))
                        .collect()
                };
                for managed in orphans {
                    let pid = managed.owner.map(|owner| owner.pid).unwrap_or_default();
                    tracing::warn!(id = %managed.id, function = managed.function.name(), owner_pid = pid, "owner process is gone: function stopped and forgotten");
                    managed.stop_now(128 + SIGKILL as i32, "owner gone");
                }
            }
        });
    }

    fn get(&self, id: &str) -> Result<Arc<Managed>, Status> {
        self.functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("no function with id `{id}`")))
    }
}

/// `path` as the owner process sees it: through `/proc/<pid>/root` (its
/// mount namespace and root), so a hearthd in a container of its own reads
/// the shim's rootfs mounts, stdio FIFOs and volumes without sharing the
/// host's mounts. A path without an owner, or a relative one, is as given.
fn as_owner_sees(owner: Option<OwnerProcess>, path: &str) -> std::path::PathBuf {
    match owner {
        Some(owner) if path.starts_with('/') => {
            std::path::PathBuf::from(format!("/proc/{}/root{path}", owner.pid))
        }
        _ => std::path::PathBuf::from(path),
    }
}

/// The listener of a service: the owner's socket `listen_fd` when given,
/// else `addr` bound inside the network namespace at `netns` (if not empty).
async fn service_listener(
    addr: SocketAddr,
    netns: &str,
    owner: Option<OwnerProcess>,
    listen_fd: u32,
) -> std::io::Result<tokio::net::TcpListener> {
    let netns = std::path::PathBuf::from(netns);
    let listener = tokio::task::spawn_blocking(move || match (listen_fd, owner) {
        (0, _) => hearth_control::listener::listen_in_netns(addr, &netns),
        (fd, Some(owner)) => hearth_control::listener::take_listener(owner.pid, fd),
        (_, None) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "listen_fd is given but Create named no owner_pid",
        )),
    })
    .await
    .map_err(std::io::Error::other)??;
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn create(
        &self,
        request: Request<CreateRequest>,
    ) -> Result<Response<CreateResponse>, Status> {
        self.refuse_if_leaving()?;
        let request = request.into_inner();
        if request.id.is_empty() {
            return Err(Status::invalid_argument("id must not be empty"));
        }
        if self
            .functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&request.id)
        {
            return Err(Status::already_exists(format!(
                "a function with id `{}` exists",
                request.id
            )));
        }
        let name = if request.name.is_empty() {
            request.id.clone()
        } else {
            request.name.clone()
        };
        let owner = match request.owner_pid {
            0 => None,
            pid => Some(OwnerProcess::find(pid).ok_or_else(|| {
                Status::invalid_argument(format!("owner_pid {pid} is not a running process"))
            })?),
        };
        let env = self
            .spec(&request, &name, owner)
            .into_env(&self.defaults)
            .map_err(|error| {
                tracing::error!(id = %request.id, function = %name, namespace = %request.namespace, "create refused: {error}");
                Status::invalid_argument(error.to_string())
            })?;
        // A Pod start's trace: this span, with the pull and the compile
        // inside it (see crate::telemetry).
        let span = telemetry::start_request(
            || format!("create {name}").into(),
            telemetry::Kind::Server,
            None,
        );
        span.set("hearth.function", || name.clone());
        span.set("k8s.namespace.name", || request.namespace.clone());
        span.set("hearth.container.id", || request.id.clone());
        let loaded = match &request.source {
            Some(Source::WasmPath(path)) => {
                let path = as_owner_sees(owner, path);
                span.context().scope(self.host.load_file(env, &path)).await
            }
            Some(Source::Image(image)) => {
                let load = self.host.load_image(env, image, PullPolicy::Missing);
                span.context().scope(load).await
            }
            None => return Err(Status::invalid_argument("give wasm_path or image")),
        };
        if let Err(error) = &loaded {
            span.fail("load", error);
        }
        span.end();
        let function = loaded.map_err(|error| {
            tracing::error!(id = %request.id, function = %name, "create failed: {error}");
            match error {
                FunctionLoadError::Capacity { .. } => Status::resource_exhausted(error.to_string()),
                _ => Status::invalid_argument(error.to_string()),
            }
        })?;
        let subscriptions = subscriptions_for(&request, &name, &function).inspect_err(|status| {
            tracing::error!(id = %request.id, function = %name, "create failed: {}", status.message());
        })?;
        if function.is_service() && request.listen.parse::<SocketAddr>().is_err() {
            return Err(Status::invalid_argument(format!(
                "listen must be an address like 0.0.0.0:8080 for a service, got `{}`",
                request.listen
            )));
        }
        let response = CreateResponse {
            digest: function.compiled().digest.to_string(),
            kind: function.kind().name().into(),
            wasi: function.wasi().label().into(),
            compiled_from: function.compiled_from().as_str().into(),
        };
        tracing::info!(id = %request.id, namespace = %function.env().namespace, function = %name, digest = %response.digest, compiled_from = %response.compiled_from, wasi = %response.wasi, "function created");
        let managed = Arc::new(Managed {
            id: request.id.clone(),
            sandbox_id: request.sandbox_id,
            listen: request.listen,
            netns: request.netns,
            owner,
            function,
            subscriptions,
            phase: Mutex::new(Phase::Created),
            listening: Mutex::new(String::new()),
            drain: Mutex::new(None),
            serving: Mutex::new(None),
            task: Mutex::new(None),
            exit: watch::channel(None).0,
        });
        let mut functions = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        if functions.contains_key(&request.id) {
            return Err(Status::already_exists(format!(
                "a function with id `{}` exists",
                request.id
            )));
        }
        functions.insert(request.id, managed);
        Ok(Response::new(response))
    }

    async fn start(
        &self,
        request: Request<StartRequest>,
    ) -> Result<Response<StartResponse>, Status> {
        self.refuse_if_leaving()?;
        let request = request.into_inner();
        let managed = self.get(&request.id)?;
        if managed.phase() != Phase::Created {
            return Err(Status::failed_precondition(format!(
                "`{}` was already started",
                managed.id
            )));
        }
        managed.set_phase(Phase::Running);
        let function = managed.function.clone();
        if function.is_service() || !managed.subscriptions.is_empty() {
            let listener = if function.is_service() {
                let addr: SocketAddr = managed.listen.parse().expect("validated at create");
                match service_listener(addr, &managed.netns, managed.owner, request.listen_fd).await
                {
                    Ok(listener) => Some(listener),
                    Err(error) => {
                        managed.set_phase(Phase::Created);
                        tracing::error!(id = %managed.id, "cannot listen on {addr}: {error}");
                        return Err(Status::failed_precondition(format!(
                            "cannot listen on {addr}: {error}"
                        )));
                    }
                }
            } else {
                None
            };
            // A refused subscription stops what already started: dropped
            // subscriptions give their messages back.
            let serving = match Serving::start(function, listener, &managed.subscriptions).await {
                Ok(serving) => serving,
                Err(error) => {
                    managed.set_phase(Phase::Created);
                    tracing::error!(id = %managed.id, "cannot subscribe: {error}");
                    return Err(Status::failed_precondition(error.to_string()));
                }
            };
            let listening = serving
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            *managed.listening.lock().unwrap_or_else(|e| e.into_inner()) = listening.clone();
            *managed.drain.lock().unwrap_or_else(|e| e.into_inner()) = Some(serving.drain_handle());
            *managed.serving.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(serving.drain_handle());
            let task_managed = managed.clone();
            let leaving = self.leaving.clone();
            let task = tokio::spawn(async move {
                let result = serving.run().await;
                if *leaving.borrow() {
                    // Handed over, not exited: the next hearthd serves it.
                    return;
                }
                match result {
                    Ok(()) => task_managed.exited(0, "drained"),
                    Err(error) => task_managed.exited(1, &format!("listener failed: {error}")),
                }
            });
            *managed.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
            if managed.function.is_service() {
                tracing::info!(id = %managed.id, function = managed.function.name(), "serving function `{}` on http://{listening}", managed.function.name());
            }
            for settings in &managed.subscriptions {
                tracing::info!(id = %managed.id, function = managed.function.name(), topic = %settings.topic, group = %settings.group, "handling messages");
            }
            Ok(Response::new(StartResponse { listening }))
        } else {
            let task_managed = managed.clone();
            let timeout = None;
            let task = tokio::spawn(async move {
                match crate::job::run_job(&function, timeout).await {
                    Ok(code) => task_managed.exited(code, "job exited"),
                    Err(error) => task_managed.exited(error.exit_code(), error.name()),
                }
            });
            *managed.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
            tracing::info!(id = %managed.id, function = managed.function.name(), "job started");
            Ok(Response::new(StartResponse::default()))
        }
    }

    async fn kill(&self, request: Request<KillRequest>) -> Result<Response<KillResponse>, Status> {
        self.refuse_if_leaving()?;
        let request = request.into_inner();
        let managed = self.get(&request.id)?;
        tracing::info!(id = %managed.id, function = managed.function.name(), signal = request.signal, "kill");
        match managed.phase() {
            Phase::Exited => {}
            Phase::Created => managed.exited(128 + request.signal as i32, "killed before start"),
            Phase::Running => {
                let drain = managed
                    .drain
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                match (request.signal, drain) {
                    (SIGTERM, Some(drain)) => drain.drain(),
                    (signal, _) => {
                        let reason = if signal == SIGKILL {
                            "killed"
                        } else {
                            "terminated"
                        };
                        managed.stop_now(128 + signal as i32, reason);
                    }
                }
            }
        }
        Ok(Response::new(KillResponse {}))
    }

    async fn wait(&self, request: Request<WaitRequest>) -> Result<Response<WaitResponse>, Status> {
        self.refuse_if_leaving()?;
        let managed = self.get(&request.into_inner().id)?;
        let mut exit = managed.exit.subscribe();
        let mut leaving = self.leaving.subscribe();
        let result = tokio::select! {
            biased;
            _ = leaving.wait_for(|leaving| *leaving) => return Err(leaving_status()),
            exited = exit.wait_for(|exit| exit.is_some()) => exited
                .map_err(|_| Status::internal("the function's state was dropped"))?
                .clone()
                .expect("waited for Some"),
        };
        Ok(Response::new(WaitResponse {
            exit_status: result.0,
            reason: result.1,
        }))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        self.refuse_if_leaving()?;
        let id = request.into_inner().id;
        let managed = self.get(&id)?;
        if managed.phase() == Phase::Running {
            return Err(Status::failed_precondition(format!(
                "`{id}` is running; kill it first"
            )));
        }
        self.functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        tracing::info!(id = %id, function = managed.function.name(), "function deleted");
        Ok(Response::new(DeleteResponse {}))
    }

    async fn state(
        &self,
        request: Request<StateRequest>,
    ) -> Result<Response<FunctionState>, Status> {
        self.refuse_if_leaving()?;
        Ok(Response::new(self.get(&request.into_inner().id)?.state()))
    }

    async fn list(&self, _request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        self.refuse_if_leaving()?;
        let mut functions: Vec<FunctionState> = self
            .functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|managed| managed.state())
            .collect();
        functions.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Response::new(ListResponse { functions }))
    }
}

/// Creates the control socket at `path` as the `hearth_control` crate docs
/// say: a 0700 parent directory if missing, a stale socket removed only when
/// nothing answers on it, mode 0600.
pub async fn bind_socket(path: &std::path::Path) -> anyhow::Result<tokio::net::UnixListener> {
    use anyhow::Context as _;
    use std::os::unix::fs::PermissionsExt;
    crate::node_lock::create_private_parent(path)?;
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            anyhow::bail!(
                "another hearthd is already listening on {} (set HEARTH_SOCKET to run a second one)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot bind the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    tracing::info!(socket = %path.display(), "control API listening");
    Ok(listener)
}

/// Serves the control API on `listener` (bound at `path`) until `shutdown`
/// resolves, then removes the socket file.
pub async fn serve(
    service: ControlService,
    listener: tokio::net::UnixListener,
    path: std::path::PathBuf,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    service.spawn_owner_sweeper();
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let result = tonic::transport::Server::builder()
        .add_service(hearth_control::v1::control_server::ControlServer::new(
            service,
        ))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    let _ = std::fs::remove_file(&path);
    result.map_err(std::io::Error::other)
}
