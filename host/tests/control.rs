//! hearthd's control API as a shim drives it: over the unix socket, a
//! function is created, started, killed, waited for and deleted.

use hearth_control::v1::{
    CreateRequest, DeleteRequest, EnvVar, KillRequest, ListRequest, StartRequest, StateRequest,
    WaitRequest, create_request::Source,
};
use hearth_control::{ControlClient, connect};
use hearth_testkit::http::get;
use hearth_testkit::process::Running;
use hearth_testkit::{HELLO, JOB_EXIT, MISBEHAVE, metric};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const HEARTHD: &str = env!("CARGO_BIN_EXE_hearthd");

/// A hearthd in daemon mode (no config) on a private socket.
struct Daemon {
    process: Running,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Daemon {
    fn start() -> Self {
        Self::start_with_config("")
    }

    /// A hearthd with `toml` as its config file and an admin endpoint.
    fn start_with_config(toml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run/hearthd.sock");
        std::fs::write(dir.path().join("hearth.toml"), toml).unwrap();
        let process = Self::spawn(dir.path(), &socket);
        process.wait_for_line("hearthd ready");
        Daemon {
            process,
            socket,
            dir,
        }
    }

    /// Another hearthd process on this one's socket, config and caches.
    fn spawn(dir: &Path, socket: &Path) -> Running {
        Running::start(
            Command::new(HEARTHD)
                .env("HEARTH_SOCKET", socket)
                .env("HEARTH_CACHE_DIR", dir.join("cache"))
                .arg("--config")
                .arg(dir.join("hearth.toml"))
                .args(["--admin", "127.0.0.1:0"]),
        )
    }

    async fn metrics(&self) -> String {
        let reply = get(self.process.admin_addr(), "/metrics").await.unwrap();
        assert_eq!(reply.status, 200);
        reply.text()
    }

    async fn client(&self) -> ControlClient {
        connect(&self.socket).await.expect("connect to hearthd")
    }
}

fn create(id: &str, path: &str, env: &[(&str, &str)]) -> CreateRequest {
    CreateRequest {
        id: id.into(),
        name: Path::new(path)
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into(),
        source: Some(Source::WasmPath(path.into())),
        env: env
            .iter()
            .map(|(key, value)| EnvVar {
                key: key.to_string(),
                value: value.to_string(),
            })
            .collect(),
        listen: "127.0.0.1:0".into(),
        ..CreateRequest::default()
    }
}

fn id(id: &str) -> String {
    id.to_string()
}

/// Starts the created service `name` and returns the address it listens on.
async fn start_service(client: &mut ControlClient, name: &str) -> std::net::SocketAddr {
    let started = client
        .start(StartRequest {
            id: id(name),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    started.listening.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_is_created_served_drained_and_deleted_and_the_second_create_is_a_pool_hit() {
    let daemon = Daemon::start();
    let mode = std::fs::metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the control socket is root-only");
    let mut client = daemon.client().await;

    let created = client
        .create(create("pod-a", HELLO, &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (created.kind.as_str(), created.compiled_from.as_str()),
        ("service", "compiled")
    );
    let addr = start_service(&mut client, "pod-a").await;
    let reply = get(addr, "/").await.unwrap();
    assert_eq!(reply.status, 200);
    assert!(reply.text().contains("Hello"), "{}", reply.text());
    let state = client
        .state(StateRequest { id: id("pod-a") })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (state.status.as_str(), state.kind.as_str()),
        ("running", "service")
    );

    client
        .kill(KillRequest {
            id: id("pod-a"),
            signal: 15,
        })
        .await
        .unwrap();
    let exit = client
        .wait(WaitRequest { id: id("pod-a") })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((exit.exit_status, exit.reason.as_str()), (0, "drained"));
    assert!(get(addr, "/").await.is_err(), "no longer listening");
    client
        .delete(DeleteRequest { id: id("pod-a") })
        .await
        .unwrap();
    assert!(
        client
            .list(ListRequest {})
            .await
            .unwrap()
            .into_inner()
            .functions
            .is_empty()
    );

    // The same function for another Pod: already compiled in the daemon.
    let again = client
        .create(create("pod-b", HELLO, &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.compiled_from, "memory");
    assert_eq!(again.digest, created.digest);
    let log = daemon.process.log_text();
    assert!(
        log.contains("id=pod-a") && log.contains("function exited"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_exits_with_its_status_and_sigkill_stops_a_service_at_once() {
    let daemon = Daemon::start();
    let mut client = daemon.client().await;
    client
        .create(create("job", JOB_EXIT, &[("MODE", "code:9")]))
        .await
        .unwrap();
    client
        .start(StartRequest {
            id: id("job"),
            ..Default::default()
        })
        .await
        .unwrap();
    let exit = client
        .wait(WaitRequest { id: id("job") })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(exit.exit_status, 9);

    client.create(create("svc", HELLO, &[])).await.unwrap();
    client
        .start(StartRequest {
            id: id("svc"),
            ..Default::default()
        })
        .await
        .unwrap();
    client
        .kill(KillRequest {
            id: id("svc"),
            signal: 9,
        })
        .await
        .unwrap();
    let exit = client
        .wait(WaitRequest { id: id("svc") })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((exit.exit_status, exit.reason.as_str()), (137, "killed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_named_errors_and_the_daemon_keeps_serving() {
    let daemon = Daemon::start();
    let mut client = daemon.client().await;
    let not_wasm = daemon.dir.path().join("not.wasm");
    std::fs::write(&not_wasm, "#!/bin/sh\n").unwrap();

    let error = client
        .create(create("bad", not_wasm.to_str().unwrap(), &[]))
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(
        error.message().contains("not a WebAssembly binary"),
        "{}",
        error.message()
    );

    let error = client
        .delete(DeleteRequest { id: id("nope") })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::NotFound);
    assert!(error.message().contains("nope"), "{}", error.message());

    client.create(create("svc", HELLO, &[])).await.unwrap();
    let error = client.create(create("svc", HELLO, &[])).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::AlreadyExists);
    client
        .start(StartRequest {
            id: id("svc"),
            ..Default::default()
        })
        .await
        .unwrap();
    let error = client
        .delete(DeleteRequest { id: id("svc") })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::FailedPrecondition);

    let log = daemon.process.log_text();
    assert!(
        log.contains("create failed") && log.contains("id=bad"),
        "{log}"
    );

    // (A second daemon on the same socket waits for this one: see
    // a_second_hearthd_waits_for_the_first_to_exit_saying_so.) It still
    // answers.
    assert_eq!(
        client
            .list(ListRequest {})
            .await
            .unwrap()
            .into_inner()
            .functions
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_daemon_is_named_by_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let error = connect(&socket).await.unwrap_err();
    let message = error.to_string();
    assert!(message.contains(&socket.display().to_string()), "{message}");
    assert!(message.contains("HEARTH_SOCKET"), "{message}");
}

/// A network namespace made for one test, deleted on drop.
struct NetNs(String);

impl NetNs {
    fn create() -> Self {
        let name = format!("hearth-test-{}", std::process::id());
        let output = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "this test needs `ip` (Debian's iproute2; scripts/setup.sh installs it): {e}"
                )
            });
        assert!(
            output.status.success(),
            "this test needs root to create a network namespace: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let netns = NetNs(name);
        let up = Command::new("ip")
            .args(["-n", &netns.0, "link", "set", "lo", "up"])
            .status()
            .unwrap();
        assert!(up.success());
        netns
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_listens_inside_the_requested_network_namespace() {
    let netns = NetNs::create();
    let daemon = Daemon::start();
    let mut client = daemon.client().await;
    let port = hearth_testkit::registry::free_port();
    let mut request = create("in-netns", HELLO, &[]);
    request.listen = format!("127.0.0.1:{port}");
    request.netns = netns.path();
    client.create(request).await.unwrap();
    client
        .start(StartRequest {
            id: id("in-netns"),
            ..Default::default()
        })
        .await
        .unwrap();

    let inside = Command::new("ip")
        .args(["netns", "exec", &netns.0, "curl", "-sS", "--max-time", "10"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&inside.stdout);
    assert!(
        body.contains("Hello"),
        "{body}{}",
        String::from_utf8_lossy(&inside.stderr)
    );
    let outside = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        get(outside, "/").await.is_err(),
        "not reachable from the host's namespace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_whose_owner_dies_is_stopped_and_forgotten() {
    let daemon = Daemon::start();
    let mut client = daemon.client().await;
    let mut owner = Command::new("sleep").arg("600").spawn().unwrap();
    let mut request = create("owned", HELLO, &[]);
    request.owner_pid = owner.id();
    client.create(request).await.unwrap();
    let addr = start_service(&mut client, "owned").await;
    assert_eq!(get(addr, "/").await.unwrap().status, 200);

    owner.kill().unwrap();
    owner.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let listed = client.list(ListRequest {}).await.unwrap().into_inner();
        if listed.functions.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still held: {listed:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(get(addr, "/").await.is_err(), "still serving");
    daemon.process.wait_for_line("owner process is gone");

    // An owner that is not running is refused at create.
    let mut request = create("orphaned", HELLO, &[]);
    request.owner_pid = owner.id();
    let refused = client.create(request).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("owner_pid"),
        "{}",
        refused.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_output_goes_to_the_given_files_and_memory_is_reported() {
    let daemon = Daemon::start();
    let mut client = daemon.client().await;
    let dir = tempfile::tempdir().unwrap();
    let stdout = dir.path().join("stdout");
    let stderr = dir.path().join("stderr");
    std::fs::write(&stdout, "").unwrap();
    std::fs::write(&stderr, "").unwrap();
    let mut request = create("printer", MISBEHAVE, &[]);
    request.stdout_path = stdout.to_string_lossy().into();
    request.stderr_path = stderr.to_string_lossy().into();
    client.create(request).await.unwrap();
    let addr = start_service(&mut client, "printer").await;
    assert_eq!(get(addr, "/print").await.unwrap().status, 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    // Each file has its own writer thread, so the two lines land in
    // either order: wait for both.
    while std::fs::read_to_string(&stdout).unwrap().is_empty()
        || std::fs::read_to_string(&stderr).unwrap().is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "stdout or stderr was never written"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        std::fs::read_to_string(&stdout).unwrap(),
        "misbehave: to stdout\n"
    );
    assert_eq!(
        std::fs::read_to_string(&stderr).unwrap(),
        "misbehave: to stderr\n"
    );

    // While a request holds an instance, its linear memory is counted.
    let in_flight = tokio::spawn(get(addr, "/sleep?ms=1500"));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let state = client
        .state(StateRequest { id: id("printer") })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.instances, 1);
    assert!(state.memory_bytes >= 64 * 1024, "{state:?}");
    in_flight.await.unwrap().unwrap();
    let state = client
        .state(StateRequest { id: id("printer") })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((state.instances, state.memory_bytes), (0, 0), "released");
}

async fn pool_state(
    client: &mut ControlClient,
    function: &str,
) -> hearth_control::v1::FunctionState {
    client
        .state(StateRequest { id: id(function) })
        .await
        .unwrap()
        .into_inner()
}

async fn wait_for_idle(client: &mut ControlClient, function: &str, idle: u32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while pool_state(client, function).await.idle_instances != idle {
        assert!(
            std::time::Instant::now() < deadline,
            "{function} never had {idle} idle instances"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_idle_instances_are_ready_before_the_first_request_and_metrics_count_hits() {
    let daemon = Daemon::start_with_config("");
    let mut client = daemon.client().await;
    let mut request = create("warm", HELLO, &[]);
    request.min_idle = 2;
    client.create(request).await.unwrap();
    // The pool fills at Create, before Start.
    wait_for_idle(&mut client, "warm", 2).await;
    let addr = start_service(&mut client, "warm").await;
    for _ in 0..3 {
        assert_eq!(get(addr, "/").await.unwrap().status, 200);
    }
    let state = pool_state(&mut client, "warm").await;
    assert_eq!((state.pool_hits, state.pool_misses), (3, 0), "{state:?}");
    wait_for_idle(&mut client, "warm", 2).await;

    let metrics = daemon.metrics().await;
    let series =
        |name: &str| format!("hearth_{name}{{id=\"warm\",namespace=\"default\",function=\"hello\"");
    assert_eq!(
        metric(&metrics, &series("pool_hits_total")),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(metric(&metrics, &series("pool_misses_total")), Some(0.0));
    // Each instance served once (max_invocations 1) and was retired.
    assert_eq!(metric(&metrics, &series("pool_retired_total")), Some(3.0));
    assert_eq!(
        metric(
            &metrics,
            "hearth_pool_instances{id=\"warm\",namespace=\"default\",function=\"hello\",state=\"idle\"}"
        ),
        Some(2.0)
    );
    assert_eq!(metric(&metrics, "hearth_compiles_total"), Some(1.0));
    assert_eq!(
        metric(&metrics, "hearth_instance_slots{state=\"reserved\"}"),
        Some(2.0)
    );

    // Without min_idle every request is a miss, and a second function from
    // the same bytes is a compiled-cache hit.
    client.create(create("cold", HELLO, &[])).await.unwrap();
    let addr = start_service(&mut client, "cold").await;
    assert_eq!(get(addr, "/").await.unwrap().status, 200);
    let state = pool_state(&mut client, "cold").await;
    assert_eq!(
        (state.pool_hits, state.pool_misses, state.idle_instances),
        (0, 1, 0)
    );
    let metrics = daemon.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "hearth_function_loads_total{compiled_from=\"memory\"}"
        ),
        Some(1.0)
    );
    assert_eq!(metric(&metrics, "hearth_compiles_total"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_request_poisons_its_instance_and_the_pool_replaces_it() {
    let daemon = Daemon::start_with_config("[pool]\nmax_invocations = 100\n");
    let mut client = daemon.client().await;
    let mut request = create("reused", MISBEHAVE, &[]);
    request.min_idle = 1;
    client.create(request).await.unwrap();
    wait_for_idle(&mut client, "reused", 1).await;
    let addr = start_service(&mut client, "reused").await;
    assert_eq!(get(addr, "/ok").await.unwrap().status, 200);
    let trapped = get(addr, "/trap").await.unwrap();
    assert_eq!(trapped.status, 500, "{}", trapped.text());
    wait_for_idle(&mut client, "reused", 1).await;
    assert_eq!(get(addr, "/ok").await.unwrap().status, 200);
    let metrics = daemon.metrics().await;
    let series = |name: &str| {
        format!("hearth_{name}{{id=\"reused\",namespace=\"default\",function=\"misbehave\"")
    };
    assert_eq!(
        metric(&metrics, &series("pool_poisoned_total")),
        Some(1.0),
        "{metrics}"
    );
    // max_invocations 100: the instance that served /ok went back to idle.
    assert_eq!(metric(&metrics, &series("pool_retired_total")), Some(0.0));
    assert_eq!(metric(&metrics, &series("pool_hits_total")), Some(3.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_idle_beyond_the_instance_slots_is_refused_with_a_clear_error() {
    let daemon = Daemon::start_with_config("[pool]\ninstance_slots = 4\n");
    let mut client = daemon.client().await;
    let mut request = create("greedy", HELLO, &[]);
    request.min_idle = 5;
    let refused = client.create(request).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("asks for 5 idle instances")
            && refused
                .message()
                .contains("only 4 of 4 instance slots are free"),
        "{}",
        refused.message()
    );
    daemon.process.wait_for_line("create failed");
    // The daemon keeps serving, and a pool that fits is admitted.
    let mut request = create("modest", HELLO, &[]);
    request.min_idle = 4;
    client.create(request).await.unwrap();
    wait_for_idle(&mut client, "modest", 4).await;
}

/// `hearth_messages_total` for `function` on `orders` in group `workers`
/// (the broker's names in the default namespace),
/// outcome `outcome` (0 while the subscription has not counted any).
fn orders_metric(metrics: &str, function: &str, outcome: &str) -> f64 {
    metric(
        metrics,
        &format!(
            "hearth_messages_total{{namespace=\"default\",function=\"{function}\",topic=\"default.orders\",group=\"default.workers\",outcome=\"{outcome}\"}}"
        ),
    )
    .unwrap_or(0.0)
}

/// Polls the metrics until `done` holds for them (or 30 s pass).
async fn wait_for_metrics(daemon: &Daemon, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let metrics = daemon.metrics().await;
        if done(&metrics) {
            return metrics;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never saw {what}:\n{metrics}\n{}",
            daemon.process.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// POSTs an order to `order-producer` at `addr`.
async fn post_order(addr: std::net::SocketAddr, headers: &[(&str, &str)], body: &str) {
    let reply = hearth_testkit::http::send(
        addr,
        http::Method::POST,
        "/orders",
        headers,
        bytes::Bytes::copy_from_slice(body.as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 202, "{}", reply.text());
}

/// A request named `id` (so each Pod's metrics are its own).
fn subscribed(id: &str, path: &str, subscribe: &str) -> CreateRequest {
    CreateRequest {
        name: id.into(),
        subscribe: subscribe.into(),
        ..create(id, path, &[])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscribe_annotation_is_checked_at_create() {
    let daemon = Daemon::start();
    let mut client = daemon.client().await;
    let cases = [
        (
            subscribed("hello", HELLO, "orders"),
            "does not export `wasi:messaging/incoming-handler",
        ),
        (
            subscribed("plain", hearth_testkit::ORDER_WORKER, ""),
            "only handles messages; say which topics with the Pod annotation hearth.dev/subscribe",
        ),
        (
            subscribed("bad", hearth_testkit::ORDER_WORKER, "orders, no spaces"),
            "hearth.dev/subscribe `orders, no spaces`",
        ),
    ];
    for (request, message) in cases {
        let id = request.id.clone();
        let error = client.create(request).await.unwrap_err();
        assert_eq!(
            error.code(),
            tonic::Code::InvalidArgument,
            "{id}: {error:?}"
        );
        assert!(
            error.message().contains(message),
            "{id}: {}",
            error.message()
        );
    }
    let log = daemon.process.log_text();
    assert!(
        log.contains("create failed") && log.contains("id=plain"),
        "{log}"
    );
}

/// The Pod annotation `hearth.dev/subscribe` as the shim passes it: a
/// handler-only function consumes `orders` from hearthd's default
/// (embedded) broker; SIGTERM lets a message in hand finish (so a
/// successor does not see it again); SIGKILL gives a message in hand back,
/// and the successor (same group) handles it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribed_handler_consumes_drains_on_sigterm_and_gives_back_on_sigkill() {
    let daemon = Daemon::start_with_config("");
    let mut client = daemon.client().await;
    client
        .create(create("producer", hearth_testkit::ORDER_PRODUCER, &[]))
        .await
        .unwrap();
    let producer = start_service(&mut client, "producer").await;

    let created = client
        .create(subscribed(
            "worker-1",
            hearth_testkit::ORDER_WORKER,
            "orders@workers",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.kind, "handler");
    let started = client
        .start(StartRequest {
            id: id("worker-1"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(started.listening, "", "a handler does not listen");
    let worker = "worker-1";
    post_order(producer, &[], "first").await;
    wait_for_metrics(&daemon, "the first order acked", |m| {
        orders_metric(m, worker, "acked") == 1.0
    })
    .await;

    // SIGTERM while a long order is in hand: it finishes and is acked.
    post_order(producer, &[("x-order-work-ms", "1500")], "long").await;
    wait_for_metrics(&daemon, "the long order delivered", |m| {
        orders_metric(m, worker, "delivered") == 2.0
    })
    .await;
    client
        .kill(KillRequest {
            id: id("worker-1"),
            signal: 15,
        })
        .await
        .unwrap();
    let waited = client
        .wait(WaitRequest { id: id("worker-1") })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((waited.exit_status, waited.reason.as_str()), (0, "drained"));
    // The log line may reach the reader a moment after the exit does.
    daemon.process.wait_for_line("subscription drained");
    let log = daemon.process.log_text();
    assert!(!log.contains("message given back"), "{log}");

    // The successor sees only what was published after: nothing of
    // worker-1's came back.
    client
        .create(subscribed(
            "worker-2",
            hearth_testkit::ORDER_WORKER,
            "orders@workers",
        ))
        .await
        .unwrap();
    client
        .start(StartRequest {
            id: id("worker-2"),
            ..Default::default()
        })
        .await
        .unwrap();
    let worker = "worker-2";
    post_order(producer, &[], "after").await;
    let metrics = wait_for_metrics(&daemon, "the order after acked", |m| {
        orders_metric(m, worker, "acked") == 1.0
    })
    .await;
    assert_eq!(orders_metric(&metrics, worker, "delivered"), 1.0);
    assert_eq!(orders_metric(&metrics, worker, "redelivered"), 0.0);

    // SIGKILL while an order is in hand: it is given back, and worker-3
    // (the same group) handles it as a redelivery.
    post_order(producer, &[("x-order-work-ms", "3000")], "cut short").await;
    wait_for_metrics(&daemon, "the cut-short order delivered", |m| {
        orders_metric(m, worker, "delivered") == 2.0
    })
    .await;
    client
        .kill(KillRequest {
            id: id("worker-2"),
            signal: 9,
        })
        .await
        .unwrap();
    let waited = client
        .wait(WaitRequest { id: id("worker-2") })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(waited.exit_status, 137);
    client
        .create(subscribed(
            "worker-3",
            hearth_testkit::ORDER_WORKER,
            "orders@workers",
        ))
        .await
        .unwrap();
    client
        .start(StartRequest {
            id: id("worker-3"),
            ..Default::default()
        })
        .await
        .unwrap();
    let worker = "worker-3";
    let metrics = wait_for_metrics(&daemon, "the cut-short order redelivered and acked", |m| {
        orders_metric(m, worker, "acked") == 1.0
    })
    .await;
    assert_eq!(orders_metric(&metrics, worker, "redelivered"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_printing_in_a_loop_to_a_log_nobody_reads_loses_counted_lines_not_the_node() {
    let daemon = Daemon::start();
    let mut client = daemon.client().await;
    // The chatty function's stdout is a FIFO nobody opens for reading: its
    // writer thread never gets past `open`, as with a stuck log reader.
    let fifos = tempfile::tempdir().unwrap();
    let fifo = fifos.path().join("stdout");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo (coreutils) failed");
    let mut chatty = create("chatty", hearth_testkit::MISBEHAVE, &[]);
    chatty.stdout_path = fifo.to_string_lossy().into();
    client.create(chatty).await.unwrap();
    client
        .create(create("quiet", hearth_testkit::HELLO, &[]))
        .await
        .unwrap();
    let chatty = start_service(&mut client, "chatty").await;
    let quiet = start_service(&mut client, "quiet").await;

    // 100,000 lines of about 40 bytes: about 4 MiB, four times what may
    // wait for the reader. The guest is never blocked by it.
    let reply = get(chatty, "/chatter?lines=100000").await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "printed 100000 lines\n");
    assert_eq!(get(quiet, "/").await.unwrap().status, 200);
    let metrics = daemon.metrics().await;
    let dropped = hearth_testkit::metric(
        &metrics,
        "hearth_guest_output_dropped_lines_total{id=\"chatty\"",
    )
    .unwrap_or_else(|| panic!("no dropped-lines series for chatty:\n{metrics}"));
    assert!(
        (50_000.0..100_000.0).contains(&dropped),
        "about 1 MiB of lines kept, the rest dropped and counted: {dropped}"
    );
    // What was kept arrives, in order, once a reader comes.
    let kept = 100_000 - dropped as usize;
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let fifo = std::io::BufReader::new(std::fs::File::open(&fifo).unwrap());
        fifo.lines()
            .take(kept)
            .map(Result::unwrap)
            .collect::<Vec<String>>()
    });
    let lines = reader.join().unwrap();
    assert_eq!(lines.len(), kept);
    for (n, line) in lines.iter().enumerate() {
        assert_eq!(line, &format!("misbehave: chatter line {n} of 100000"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_the_functions_over_and_the_next_hearthd_serves_what_waited_in_the_backlog() {
    use std::os::fd::AsRawFd;
    let mut daemon = Daemon::start();
    // The test plays the shim: it owns the service's listener.
    let listener =
        hearth_control::listener::listen_in_netns("127.0.0.1:0".parse().unwrap(), Path::new(""))
            .unwrap();
    let addr = listener.local_addr().unwrap();
    let request = CreateRequest {
        owner_pid: std::process::id(),
        ..create("svc", MISBEHAVE, &[])
    };
    let start = StartRequest {
        id: id("svc"),
        listen_fd: listener.as_raw_fd() as u32,
    };
    let mut client = daemon.client().await;
    client.create(request.clone()).await.unwrap();
    let listening = client
        .start(start.clone())
        .await
        .unwrap()
        .into_inner()
        .listening;
    assert_eq!(listening, addr.to_string(), "served on the owner's socket");
    assert_eq!(get(addr, "/ok").await.unwrap().status, 200);

    // A shim waits on the function, and a request is in flight, when
    // hearthd is told to stop.
    let mut waiter = daemon.client().await;
    let waited = tokio::spawn(async move { waiter.wait(WaitRequest { id: id("svc") }).await });
    let in_flight = tokio::spawn(get(addr, "/sleep?ms=1000"));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let status = tokio::task::block_in_place(|| daemon.process.terminate());
    assert!(status.success(), "hearthd exits 0 on SIGTERM: {status:?}");
    let log = daemon.process.log_text();
    assert!(
        log.contains("1 running functions left for the next hearthd"),
        "{log}"
    );
    let reply = in_flight.await.unwrap().unwrap();
    assert_eq!(
        (reply.status.as_u16(), reply.text()),
        (200, "slept\n".to_string())
    );
    let status = waited.await.unwrap().unwrap_err();
    assert_eq!(
        status.code(),
        tonic::Code::Unavailable,
        "the function did not exit; the shim is told to reattach: {status:?}"
    );

    // With no hearthd, a client's connection waits in the socket's backlog...
    let waiting = tokio::spawn(get(addr, "/ok"));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!waiting.is_finished());
    // ...and the next hearthd, given the same socket, answers it.
    daemon.process = Daemon::spawn(daemon.dir.path(), &daemon.socket);
    daemon.process.wait_for_line("hearthd ready");
    let mut client = daemon.client().await;
    client.create(request).await.unwrap();
    client.start(start).await.unwrap();
    let reply = waiting.await.unwrap().unwrap();
    assert_eq!(reply.status, 200);
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_hearthd_waits_for_the_first_to_exit_saying_so() {
    let mut first = Daemon::start();
    let second = Daemon::spawn(first.dir.path(), &first.socket);
    let waiting = second.wait_for_line("waiting for it to exit");
    assert!(
        waiting.contains(&format!("pid {}", first.process.pid())),
        "{waiting}"
    );
    assert!(!second.log_text().contains("hearthd ready"));
    let status = tokio::task::block_in_place(|| first.process.terminate());
    assert!(status.success());
    second.wait_for_line("hearthd ready");
    let mut client = connect(&first.socket).await.unwrap();
    assert!(client.list(ListRequest {}).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_s_wasi_logging_lines_reach_hearthd_s_log_with_its_identity_and_its_own_log_file() {
    let daemon = Daemon::start();
    let mut client = daemon.client().await;
    let dir = tempfile::tempdir().unwrap();
    let stderr = dir.path().join("stderr");
    std::fs::write(&stderr, "").unwrap();
    let flood = 5_000;
    let mut request = create(
        "logger",
        hearth_testkit::WASI_LOGGING,
        &[("FLOOD", &flood.to_string())],
    );
    request.namespace = "team-a".into();
    request.app = "shop".into();
    request.stderr_path = stderr.to_string_lossy().into();
    client.create(request).await.unwrap();
    client
        .start(StartRequest {
            id: id("logger"),
            ..Default::default()
        })
        .await
        .unwrap();
    let exit = client
        .wait(WaitRequest { id: id("logger") })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(exit.exit_status, 0);

    // hearthd's log: the level, the identity and the context on each line.
    let line = daemon.process.wait_for_line("a line at warn");
    for field in [
        " WARN ",
        "namespace=\"team-a\"",
        "app=\"shop\"",
        "context=\"levels\"",
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }
    daemon
        .process
        .wait_for_line("logs faster than 1000 lines/s");
    let metrics = daemon.metrics().await;
    let series = |name: &str| {
        hearth_testkit::metric(&metrics, &format!("{name}{{id=\"logger\""))
            .unwrap_or_else(|| panic!("no {name} for logger:\n{metrics}"))
    };
    let (lines, dropped) = (
        series("hearth_guest_log_lines_total"),
        series("hearth_guest_log_dropped_lines_total"),
    );
    assert_eq!(lines + dropped, (9 + flood) as f64);
    assert!(dropped > 0.0, "{lines} lines, none dropped");

    // The Pod's own log has every line, with its level.
    let deadline = std::time::Instant::now() + hearth_testkit::process::patience();
    let text = loop {
        let text = std::fs::read_to_string(&stderr).unwrap();
        if text.lines().count() >= 9 + flood || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(text.lines().count(), 9 + flood);
    assert!(text.starts_with("TRACE levels: a line at trace\nDEBUG levels: a line at debug\n"));
}
