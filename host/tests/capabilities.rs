//! The capability functions (`kv-counter`, `cart`, `invoke-chain`) against
//! every state backend, with real `redis-server` and PostgreSQL started
//! here, and every fault case of state and invoke: isolation between
//! apps, bad input, a backend going down, unknown callees, recursion, a
//! looping callee, the HTTP path, retries and the circuit breaker. The
//! hearthd-process cases (kill -9 durability, not-ready naming a backend)
//! are at the end.

#[macro_use]
mod common;

use bytes::Bytes;
use common::{serve_on, start_hearthd};
use hearth_host::capabilities::{HostCapabilities, InvokeSettings};
use hearth_host::{EngineSettings, FunctionEnv, Host, Limits};
use hearth_state::embedded::EmbeddedBackend;
use hearth_state::postgres::PostgresBackend;
use hearth_state::redis::RedisBackend;
use hearth_state::{StateBackend, StateLimits, StateStore};
use hearth_testkit::http::{get, send};
use hearth_testkit::services::{PostgresServer, RedisServer};
use http::{Method, StatusCode};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn limits() -> Limits {
    Limits {
        request_timeout_ms: 20_000,
        max_memory_mib: 32,
        max_request_body_bytes: 64 * 1024,
        max_concurrent_instances: 8,
        ..Limits::default()
    }
}

/// Small values, so the size limit is cheap to hit.
fn state_limits() -> StateLimits {
    StateLimits {
        max_value_bytes: 1024,
        ..StateLimits::default()
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Embedded,
    Redis,
    Postgres,
}

/// What keeps a backend alive (its server or temp dir) until dropped.
type KeepAlive = Box<dyn std::any::Any + Send>;

fn backend(kind: Kind) -> (KeepAlive, Arc<dyn StateBackend>) {
    let timeout = Duration::from_secs(2);
    match kind {
        Kind::Embedded => {
            let dir = tempfile::tempdir().unwrap();
            let backend = EmbeddedBackend::open(&dir.path().join("state.redb")).unwrap();
            (Box::new(dir), Arc::new(backend))
        }
        Kind::Redis => {
            let server = RedisServer::start();
            let backend = RedisBackend::new(&server.url(), timeout).unwrap();
            (Box::new(server), Arc::new(backend))
        }
        Kind::Postgres => {
            let server = PostgresServer::start();
            let backend = PostgresBackend::new(&server.url(), timeout).unwrap();
            (Box::new(server), Arc::new(backend))
        }
    }
}

/// A host whose stores are `stores` (label → backend); the first is the default.
fn host(stores: Vec<(&str, Arc<dyn StateBackend>)>, invoke: InvokeSettings) -> Arc<Host> {
    let host = Host::new(&EngineSettings::for_limits([&limits()])).unwrap();
    let stores: BTreeMap<String, StateStore> = stores
        .into_iter()
        .map(|(label, backend)| {
            (
                label.to_string(),
                StateStore::new(label, backend, state_limits()),
            )
        })
        .collect();
    let default = stores.keys().next().cloned();
    host.install_capabilities(
        HostCapabilities::new(stores, default, invoke)
            .with_invoker(hearth_host::http::LocalInvoker::for_host(&host)),
    )
    .unwrap();
    host
}

fn env(name: &str) -> FunctionEnv {
    let mut env = FunctionEnv::new(name);
    env.limits = limits();
    env
}

async fn post(addr: SocketAddr, path: &str, body: &[u8]) -> hearth_testkit::http::Reply {
    send(addr, Method::POST, path, &[], Bytes::copy_from_slice(body))
        .await
        .unwrap()
}

/// Runs `scenario` once per backend, each as its own test.
macro_rules! per_backend {
    ($scenario:ident) => {
        per_kind!($scenario: Embedded => embedded, Redis => redis, Postgres => postgres);
    };
}

per_backend!(kv_counter_counts_every_concurrent_increment);
per_backend!(cart_read_modify_write_and_checkout_transaction);
per_backend!(bad_state_input_gets_typed_errors);
per_backend!(apps_see_only_their_own_keys_unless_a_store_is_shared);
per_backend!(invoke_chain_runs_with_state_on_the_same_host);

async fn kv_counter_counts_every_concurrent_increment(kind: Kind) {
    let (_server, backend) = backend(kind);
    let host = host(vec![("orders", backend)], InvokeSettings::default());
    let addr = serve_on(&host, hearth_testkit::KV_COUNTER, env("kv-counter")).await;
    let calls: Vec<_> = (0..16)
        .map(|_| tokio::spawn(async move { post(addr, "/increment?key=hits", b"").await }))
        .collect();
    let mut retries = 0;
    for call in calls {
        let reply = call.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{kind:?}: {}", reply.text());
        retries += reply
            .header("x-cas-retries")
            .unwrap()
            .parse::<u32>()
            .unwrap();
    }
    assert_eq!(
        get(addr, "/?key=hits").await.unwrap().text(),
        "16\n",
        "{kind:?}: every CAS increment counted ({retries} retries)"
    );
    assert_eq!(
        post(addr, "/atomic?key=hits&delta=-6", b"").await.text(),
        "10\n"
    );
}

async fn cart_read_modify_write_and_checkout_transaction(kind: Kind) {
    let (_server, backend) = backend(kind);
    let host = host(vec![("orders", backend)], InvokeSettings::default());
    let addr = serve_on(&host, hearth_testkit::CART, env("cart")).await;
    let adds: Vec<_> = (0..8)
        .map(|i| {
            tokio::spawn(async move {
                post(addr, &format!("/add?user=bob&sku=sku{i}&qty=2"), b"").await
            })
        })
        .collect();
    for add in adds {
        let reply = add.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{kind:?}: {}", reply.text());
    }
    let cart = get(addr, "/cart?user=bob").await.unwrap();
    assert_eq!(
        cart.text().lines().count(),
        8,
        "{kind:?}: no add lost: {}",
        cart.text()
    );
    let seen = cart.header("etag").unwrap().to_string();

    // The cart changes after the shopper saw it: checkout of the old view
    // is a conflict and neither write happens.
    assert_eq!(
        post(addr, "/add?user=bob&sku=late&qty=1", b"").await.status,
        StatusCode::OK
    );
    let conflict = post(addr, &format!("/checkout?user=bob&etag={seen}"), b"").await;
    assert_eq!(
        conflict.status,
        StatusCode::CONFLICT,
        "{kind:?}: {}",
        conflict.text()
    );
    assert!(
        conflict
            .text()
            .starts_with("transaction-conflict: cart:bob"),
        "{}",
        conflict.text()
    );
    assert_eq!(
        get(addr, "/cart?user=bob")
            .await
            .unwrap()
            .text()
            .lines()
            .count(),
        9
    );
    assert_eq!(get(addr, "/keys?prefix=order:").await.unwrap().text(), "\n");

    let order = post(addr, "/checkout?user=bob", b"").await;
    assert_eq!(order.status, StatusCode::OK, "{kind:?}: {}", order.text());
    let order_key = order.text().trim().to_string();
    assert_eq!(
        get(addr, "/cart?user=bob").await.unwrap().status,
        StatusCode::NOT_FOUND
    );
    let stored = get(addr, &format!("/get?key={order_key}")).await.unwrap();
    assert_eq!(stored.text().lines().count(), 9);
    assert_eq!(
        get(addr, "/keys?prefix=order:").await.unwrap().text(),
        format!("{order_key}\n")
    );

    // Etag-guarded write with a stale etag.
    let stale = post(addr, &format!("/set?key=cart:bob&if_match={seen}"), b"x").await;
    assert_eq!(
        stale.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        stale.text()
    );
    assert!(
        stale.text().starts_with("etag-mismatch"),
        "{}",
        stale.text()
    );

    // Paging with a cursor.
    for i in 0..5 {
        post(addr, &format!("/set?key=page:{i}"), b"v").await;
    }
    let first = get(addr, "/keys?prefix=page:&limit=3").await.unwrap();
    assert_eq!(first.text(), "page:0\npage:1\npage:2\n");
    let cursor = first.header("x-cursor").unwrap();
    let rest = get(addr, &format!("/keys?prefix=page:&limit=3&cursor={cursor}"))
        .await
        .unwrap();
    assert_eq!(rest.text(), "page:3\npage:4\n");
}

async fn bad_state_input_gets_typed_errors(kind: Kind) {
    let (_server, backend) = backend(kind);
    let host = host(vec![("orders", backend)], InvokeSettings::default());
    let addr = serve_on(&host, hearth_testkit::CART, env("cart")).await;
    let cases: [(&str, Vec<u8>, StatusCode, &str); 5] = [
        (
            "/set?key=big",
            vec![b'x'; 1025],
            StatusCode::PAYLOAD_TOO_LARGE,
            "value-too-large",
        ),
        (
            "/set?key=bad%0Akey",
            b"v".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid-key",
        ),
        (
            "/set?key=",
            b"v".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid-key",
        ),
        (
            "/set?key=t&ttl_ms=0",
            b"v".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid-ttl",
        ),
        (
            "/set?key=t&ttl_ms=-5",
            b"v".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid-ttl",
        ),
    ];
    for (path, body, status, name) in cases {
        let reply = post(addr, path, &body).await;
        assert_eq!(reply.status, status, "{kind:?} {path}: {}", reply.text());
        assert!(
            reply.text().starts_with(name),
            "{kind:?} {path}: {}",
            reply.text()
        );
    }
    for key in ["big", "t"] {
        assert_eq!(
            get(addr, &format!("/get?key={key}")).await.unwrap().status,
            StatusCode::NOT_FOUND,
            "{kind:?}: nothing written for a refused call"
        );
    }
    // The instance that got an error keeps serving: errors are values, not traps.
    assert_eq!(post(addr, "/set?key=ok", b"v").await.status, StatusCode::OK);
    // A TTL that passes.
    assert_eq!(
        post(addr, "/set?key=brief&ttl_ms=300", b"v").await.status,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        get(addr, "/get?key=brief").await.unwrap().status,
        StatusCode::NOT_FOUND
    );
}

async fn apps_see_only_their_own_keys_unless_a_store_is_shared(kind: Kind) {
    let (_server, backend) = backend(kind);
    let host = host(
        vec![("orders", backend.clone()), ("common", backend)],
        InvokeSettings::default(),
    );
    let mut a = env("shop-a");
    a.grants.state_store = Some("orders".into());
    a.grants.shared_stores = vec!["common".into()];
    let mut b = env("shop-b");
    b.grants.state_store = Some("orders".into());
    b.grants.shared_stores = vec!["common".into()];
    let mut c = env("counter-c");
    c.grants.state_store = Some("orders".into());
    let a = serve_on(&host, hearth_testkit::CART, a).await;
    let b = serve_on(&host, hearth_testkit::CART, b).await;
    let c = serve_on(&host, hearth_testkit::KV_COUNTER, c).await;

    assert_eq!(
        post(a, "/set?key=secret", b"a's").await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(b, "/get?key=secret").await.unwrap().status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(get(b, "/keys?prefix=").await.unwrap().text(), "\n");
    assert_eq!(get(a, "/keys?prefix=").await.unwrap().text(), "secret\n");

    // A shared label is one namespace for every function granted it.
    assert_eq!(
        post(a, "/set?key=note&store=common", b"hi").await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(b, "/get?key=note&store=common").await.unwrap().text(),
        "hi"
    );
    // ...and is not the app's own namespace.
    assert_eq!(
        get(b, "/get?key=note").await.unwrap().status,
        StatusCode::NOT_FOUND
    );

    // Not granted: refused, in both interfaces.
    let denied = get(c, "/open?store=common").await.unwrap();
    assert_eq!(denied.text(), "access-denied\n", "{kind:?}");
    let denied = get(a, "/get?key=x&store=shop-b").await.unwrap();
    assert_eq!(denied.status, StatusCode::FORBIDDEN, "{}", denied.text());
    assert!(
        denied.text().starts_with("no-such-store"),
        "{}",
        denied.text()
    );
}

async fn invoke_chain_runs_with_state_on_the_same_host(kind: Kind) {
    let (_server, backend) = backend(kind);
    let host = host(vec![("orders", backend)], InvokeSettings::default());
    serve_on(&host, hearth_testkit::KV_COUNTER, env("counter")).await;
    let chain = chain(&host, &[("caller", "")]).await;
    // invoke-chain calls kv-counter by name; the count lands in the
    // counter's own namespace.
    for expected in 1..=3 {
        let reply = get(chain, "/call?target=counter&method=POST&path=/increment")
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{kind:?}: {}", reply.text());
        assert_eq!(reply.text(), format!("{expected}\n"));
    }
}

/// Serves invoke-chain once per `(name, next)`; returns the last one's address.
async fn chain(host: &Arc<Host>, links: &[(&str, &str)]) -> SocketAddr {
    let mut addr = None;
    for (name, next) in links {
        let mut env = env(name);
        env.grants.config = [("NAME", *name), ("NEXT", *next)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        addr = Some(serve_on(host, hearth_testkit::INVOKE_CHAIN, env).await);
    }
    addr.unwrap()
}

// ---------------------------------------------------------------------------
// A backend going down mid-request.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_mid_request_is_a_typed_error_and_serving_resumes() {
    let mut server = RedisServer::start();
    let backend = Arc::new(RedisBackend::new(&server.url(), Duration::from_secs(1)).unwrap());
    let host = host(vec![("orders", backend)], InvokeSettings::default());
    let addr = serve_on(&host, hearth_testkit::KV_COUNTER, env("kv-counter")).await;
    assert_eq!(post(addr, "/increment", b"").await.text(), "1\n");
    server.kill();
    let reply = post(addr, "/increment", b"").await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    assert!(
        reply
            .text()
            .contains("unavailable: state store `orders` (redis) is unavailable"),
        "{}",
        reply.text()
    );
    server.restart();
    let mut recovered = None;
    for _ in 0..50 {
        let reply = post(addr, "/increment", b"").await;
        if reply.status == StatusCode::OK {
            recovered = Some(reply.text());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // This Redis keeps nothing on disk, so the count starts again.
    assert_eq!(recovered.as_deref(), Some("1\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_mid_transaction_applies_nothing() {
    let mut server = PostgresServer::start();
    let backend = Arc::new(PostgresBackend::new(&server.url(), Duration::from_secs(1)).unwrap());
    let host = host(vec![("orders", backend)], InvokeSettings::default());
    let addr = serve_on(&host, hearth_testkit::CART, env("cart")).await;
    assert_eq!(
        post(addr, "/add?user=eve&sku=a", b"").await.status,
        StatusCode::OK
    );
    server.kill();
    let reply = post(addr, "/checkout?user=eve", b"").await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    assert!(
        reply.text().contains("`orders` (postgres)"),
        "{}",
        reply.text()
    );
    server.restart();
    let mut cart = None;
    for _ in 0..50 {
        let reply = get(addr, "/cart?user=eve").await.unwrap();
        if reply.status != StatusCode::SERVICE_UNAVAILABLE {
            cart = Some(reply.text());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cart.as_deref(), Some("a 1\n"), "the cart is intact");
    assert_eq!(get(addr, "/keys?prefix=order:").await.unwrap().text(), "\n");
}

// ---------------------------------------------------------------------------
// Invoke.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_chain_propagates_request_id_and_trace_through_three_functions() {
    let host = host(vec![], InvokeSettings::default());
    let first = chain(
        &host,
        &[
            ("chain-c", ""),
            ("chain-b", "chain-c"),
            ("chain-a", "chain-b"),
        ],
    )
    .await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let reply = send(
        first,
        Method::GET,
        "/",
        &[
            ("x-request-id", "req-42"),
            ("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01")),
        ],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(
        reply.text(),
        format!("chain-a -> chain-b -> chain-c depth=2 request-id=req-42 trace={trace}\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoofed_caller_and_an_impossible_depth_from_outside_are_ignored() {
    let host = host(vec![], InvokeSettings::default());
    let spoofing = [
        ("x-hearth-caller", "admin"),
        ("x-hearth-invoke-depth", "4294967295"),
        ("x-app", "kept"),
    ];
    // What the guest is handed: `echo` reflects every request header.
    let echo = serve_on(&host, hearth_testkit::ECHO, env("echo")).await;
    let reply = send(echo, Method::GET, "/", &spoofing, Bytes::new())
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-echo-x-app"), Some("kept"));
    assert_eq!(reply.header("x-echo-x-hearth-caller"), None);
    assert_eq!(reply.header("x-echo-x-hearth-invoke-depth"), None);
    // What an invoke from it carries: the chain starts at 0, the callee
    // sees the host's depth (the counter did not overflow).
    let head = chain(&host, &[("tail", ""), ("head", "tail")]).await;
    let reply = send(head, Method::GET, "/", &spoofing, Bytes::new())
        .await
        .unwrap();
    assert!(
        reply.text().starts_with("head -> tail depth=1 "),
        "{}",
        reply.text()
    );
    // A depth a peer's invoke can send is believed: one more hop is the limit.
    let reply = send(
        head,
        Method::GET,
        "/",
        &[("x-hearth-invoke-depth", "8")],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert!(
        reply.text().starts_with("depth-exceeded"),
        "{}",
        reply.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasi_config_reads_a_configmap_directory_under_the_config_table() {
    let host = host(vec![], InvokeSettings::default());
    let configmap = tempfile::tempdir().unwrap();
    std::fs::write(configmap.path().join("NAME"), "from-configmap").unwrap();
    std::fs::write(configmap.path().join("NEXT"), "").unwrap();
    let mut from_dir = env("from-dir");
    from_dir.grants.config_dirs = vec![configmap.path().to_owned()];
    from_dir.env = vec![("NAME".into(), "from-env".into())];
    let addr = serve_on(&host, hearth_testkit::INVOKE_CHAIN, from_dir).await;
    let reply = get(addr, "/").await.unwrap();
    assert!(
        reply.text().starts_with("from-configmap depth=0"),
        "{}",
        reply.text()
    );

    let mut overridden = env("overridden");
    overridden.grants.config_dirs = vec![configmap.path().to_owned()];
    overridden.grants.config = BTreeMap::from([("NAME".to_string(), "from-table".to_string())]);
    let addr = serve_on(&host, hearth_testkit::INVOKE_CHAIN, overridden).await;
    let reply = get(addr, "/").await.unwrap();
    assert!(
        reply.text().starts_with("from-table depth=0"),
        "{}",
        reply.text()
    );

    // A config_dir that is not there fails the load, naming it.
    let mut missing = env("missing");
    missing.grants.config_dirs = vec!["/nonexistent/configmap".into()];
    let error = host
        .load(
            missing,
            hearth_testkit::wasm_bytes(hearth_testkit::INVOKE_CHAIN),
        )
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("config_dir: cannot read /nonexistent/configmap"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_failures_are_typed() {
    let host = host(
        vec![],
        InvokeSettings {
            max_depth: 4,
            ..InvokeSettings::default()
        },
    );
    serve_on(&host, hearth_testkit::MISBEHAVE, env("misbehave")).await;
    let caller = chain(&host, &[("looper", "")]).await;

    let unknown = get(caller, "/call?target=nobody").await.unwrap();
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.text());
    assert!(
        unknown
            .text()
            .starts_with("not-found: no function `nobody`"),
        "{}",
        unknown.text()
    );

    let recursion = get(caller, "/recurse").await.unwrap();
    assert!(
        recursion.text().starts_with(
            "depth-exceeded: calling `looper` would make a chain of 5 calls; the limit is 4"
        ),
        "{}",
        recursion.text()
    );

    // A callee that loops forever: the caller's timeout (300 ms) fires
    // long before the callee's own 20 s deadline, and the callee is stopped.
    let started = Instant::now();
    let looping = get(caller, "/call?target=misbehave&path=/loop&timeout_ms=300")
        .await
        .unwrap();
    assert_eq!(
        looping.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        looping.text()
    );
    assert!(
        looping.text().starts_with("timeout: `misbehave`"),
        "{}",
        looping.text()
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the 20 s deadline did not decide"
    );

    let trapped = get(caller, "/call?target=misbehave&path=/trap")
        .await
        .unwrap();
    assert_eq!(
        trapped.status,
        StatusCode::BAD_GATEWAY,
        "{}",
        trapped.text()
    );
    assert!(
        trapped
            .text()
            .starts_with("callee-trapped: `misbehave`: trap"),
        "{}",
        trapped.text()
    );

    // The callee keeps serving after all of that.
    let ok = get(caller, "/call?target=misbehave&path=/ok")
        .await
        .unwrap();
    assert_eq!((ok.status, ok.text().as_str()), (StatusCode::OK, "ok\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_reaches_a_function_on_another_node_over_http() {
    // "Another node": a second host serving echo on its own port.
    let remote = host(vec![], InvokeSettings::default());
    let echo = serve_on(&remote, hearth_testkit::ECHO, env("echo")).await;
    let local = host(
        vec![],
        InvokeSettings {
            targets: BTreeMap::from([("echo".to_string(), format!("http://{echo}"))]),
            ..InvokeSettings::default()
        },
    );
    let caller = chain(&local, &[("caller", "")]).await;
    let reply = get(caller, "/call?target=echo&path=/over/http%3Fx%3D1")
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("x-echo-path"), Some("/over/http?x=1"));
    // Another node is outside this host: nothing authenticates the peer, so
    // the callee's host does not believe its caller header; the depth, which
    // can only shorten the chain, is kept.
    assert_eq!(reply.header("x-echo-x-hearth-caller"), None);
    assert_eq!(reply.header("x-echo-x-hearth-invoke-depth"), Some("1"));
    assert!(reply.header("x-echo-x-request-id").is_some());
    assert!(reply.header("x-echo-traceparent").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_calls_are_retried_and_repeated_failures_open_the_breaker() {
    let closed = hearth_testkit::services::free_port();
    let dead = format!("http://127.0.0.1:{closed}");
    let host = host(
        vec![],
        InvokeSettings {
            targets: BTreeMap::from([
                ("once".to_string(), dead.clone()),
                ("retried".to_string(), dead),
            ]),
            retries: 2,
            breaker_failures: 5,
            breaker_open: Duration::from_secs(60),
            ..InvokeSettings::default()
        },
    );
    let caller = chain(&host, &[("caller", "")]).await;
    // Not idempotent: one attempt per call, so four calls are four failures
    // and the circuit stays closed.
    for _ in 0..4 {
        let reply = get(caller, "/call?target=once").await.unwrap();
        assert!(
            reply.text().starts_with("unavailable: `once` at"),
            "{}",
            reply.text()
        );
        assert!(reply.text().contains("cannot connect"), "{}", reply.text());
    }
    // Idempotent: up to three attempts per call. The first call fails
    // three times; the second fails twice more, which opens the circuit,
    // so it ends naming the breaker, and so does the next one, at once.
    let first = get(caller, "/call?target=retried&idempotent=1")
        .await
        .unwrap();
    assert!(first.text().contains("cannot connect"), "{}", first.text());
    for _ in 0..2 {
        let open = get(caller, "/call?target=retried&idempotent=1")
            .await
            .unwrap();
        assert_eq!(open.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            open.text().contains(
                "circuit breaker for `retried.default` is open after 5 consecutive failures"
            ),
            "{}",
            open.text()
        );
    }
    let still_closed = get(caller, "/call?target=once").await.unwrap();
    assert!(
        still_closed.text().contains("cannot connect"),
        "per target: {}",
        still_closed.text()
    );
}

// ---------------------------------------------------------------------------
// hearthd as a process.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_writes_acknowledged_before_a_kill_9_survive_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = hearth_testkit::services::free_port();
    let toml = format!(
        r#"
[state.stores.default]
type = "embedded"
path = "state.redb"

[[function]]
name = "kv-counter"
path = "{}"
listen = "127.0.0.1:{port}"
"#,
        hearth_testkit::KV_COUNTER
    );
    let mut hearthd = start_hearthd(dir.path(), &toml);
    let addr = hearthd.serving_addr("kv-counter");
    // Four writers increment as fast as they can; hearthd is killed while
    // they are at it. Every increment answered 200 is acknowledged.
    let acknowledged = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let acknowledged = acknowledged.clone();
            tokio::spawn(async move {
                loop {
                    match send(addr, Method::POST, "/increment", &[], Bytes::new()).await {
                        Ok(reply) if reply.status == StatusCode::OK => {
                            acknowledged.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        _ => return,
                    }
                }
            })
        })
        .collect();
    while acknowledged.load(std::sync::atomic::Ordering::SeqCst) < 50 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    hearthd.kill();
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged = acknowledged.load(std::sync::atomic::Ordering::SeqCst);

    let hearthd = start_hearthd(dir.path(), &toml);
    let addr = hearthd.serving_addr("kv-counter");
    let count: u64 = get(addr, "/").await.unwrap().text().trim().parse().unwrap();
    assert!(
        count >= acknowledged,
        "{count} survived but {acknowledged} increments were acknowledged"
    );
    // At most the four in flight at the kill committed without an answer.
    assert!(count <= acknowledged + 4, "{count} vs {acknowledged}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_down_at_start_makes_hearthd_not_ready_naming_it_until_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let redis_port = hearth_testkit::services::free_port();
    let port = hearth_testkit::services::free_port();
    let toml = format!(
        r#"
[state]
default_store = "cache"
[state.stores.cache]
type = "redis"
url = "redis://127.0.0.1:{redis_port}/"
timeout_ms = 500

[[function]]
name = "counter"
path = "{}"
listen = "127.0.0.1:{port}"
"#,
        hearth_testkit::KV_COUNTER
    );
    let hearthd = start_hearthd(dir.path(), &toml);
    let admin = hearthd.admin_addr();
    hearthd.wait_for_line("not ready: state store `cache` (redis) is unavailable");
    let readyz = get(admin, "/readyz").await.unwrap();
    assert_eq!(readyz.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        readyz
            .text()
            .contains("state store `cache` (redis) is unavailable"),
        "{}",
        readyz.text()
    );
    // The function is served; its state calls fail with a typed error.
    let addr = hearthd.serving_addr("counter");
    let reply = post(addr, "/increment", b"").await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );

    let _redis = RedisServer::start_on(redis_port);
    let started = Instant::now();
    while get(admin, "/readyz").await.unwrap().status != StatusCode::OK {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "still not ready; log:\n{}",
            hearthd.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(post(addr, "/increment", b"").await.text(), "1\n");
}

/// A chain across languages: Python calls JavaScript calls Rust, by name,
/// with the request id propagated and `wasi:config` telling each link its
/// name and the next one (functions/python/chain, functions/js/chain,
/// functions/invoke-chain).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_chain_across_python_javascript_and_rust() {
    let host = host(vec![], InvokeSettings::default());
    let mut first = None;
    for (name, next, wasm) in [
        ("chain-c", "", hearth_testkit::INVOKE_CHAIN),
        ("chain-b", "chain-c", hearth_testkit::JS_CHAIN),
        ("chain-a", "chain-b", hearth_testkit::PY_CHAIN),
    ] {
        let mut env = env(name);
        env.grants.config = BTreeMap::from([
            ("NAME".to_string(), name.to_string()),
            ("NEXT".to_string(), next.to_string()),
        ]);
        first = Some(serve_on(&host, wasm, env).await);
    }
    let reply = send(
        first.unwrap(),
        Method::GET,
        "/",
        &[("x-request-id", "req-7")],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(
        reply
            .text()
            .starts_with("chain-a -> chain-b -> chain-c depth=2 request-id=req-7"),
        "{}",
        reply.text()
    );
}
