//! Messaging end to end on both brokers (embedded, and a real
//! `nats-server -js` started here): `order-producer` publishes over HTTP,
//! `order-worker` and `flaky-worker` handle messages through the trigger
//! (`hearth_host::messages`), and every fault case of the issue: retries
//! with backoff, poison messages to the dead-letter topic with the queue
//! still flowing, traps and endless loops (nacked, instance discarded),
//! oversize and denied publishes, a handler overrunning its visibility,
//! draining, the broker going down, and hearthd killed with messages in
//! flight.

#[macro_use]
mod common;

use bytes::Bytes;
use common::{serve_on, start_hearthd};
use hearth_host::capabilities::HostCapabilities;
use hearth_host::messages::{Subscription, SubscriptionSettings};
use hearth_host::{EngineSettings, Function, FunctionEnv, Host, Limits};
use hearth_messaging::embedded::EmbeddedBroker;
use hearth_messaging::nats::{NatsBroker, NatsSettings};
use hearth_messaging::{Broker, MessagingBackend, MessagingLimits, SubscriptionSpec};
use hearth_testkit::http::{get, send};
use hearth_testkit::services::NatsServer;
use http::{Method, StatusCode};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
enum Kind {
    Embedded,
    Nats,
}

/// What keeps a broker alive (its server or temp dir) until dropped.
struct Fixture {
    host: Arc<Host>,
    broker: Broker,
    nats: Option<NatsServer>,
    _dir: tempfile::TempDir,
}

fn limits() -> Limits {
    Limits {
        request_timeout_ms: 20_000,
        max_memory_mib: 32,
        max_request_body_bytes: 64 * 1024,
        max_concurrent_instances: 8,
        ..Limits::default()
    }
}

async fn fixture(kind: Kind) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (backend, nats): (Arc<dyn MessagingBackend>, _) = match kind {
        Kind::Embedded => (
            Arc::new(EmbeddedBroker::open(&dir.path().join("messages.redb")).unwrap()),
            None,
        ),
        Kind::Nats => {
            let server = NatsServer::start();
            let settings = NatsSettings {
                url: server.url(),
                timeout: Duration::from_secs(2),
                ..Default::default()
            };
            (
                Arc::new(NatsBroker::connect("events", settings).await.unwrap()),
                Some(server),
            )
        }
    };
    let broker = Broker::new(
        "events",
        backend,
        MessagingLimits {
            max_message_bytes: 4096,
            ..Default::default()
        },
    );
    let host = Host::new(&EngineSettings::for_limits([&limits()])).unwrap();
    let capabilities = HostCapabilities::embedded_default(&dir.path().join("state.redb"))
        .unwrap()
        .with_brokers(BTreeMap::from([("events".into(), broker.clone())]), None);
    host.install_capabilities(
        capabilities.with_invoker(hearth_host::http::LocalInvoker::for_host(&host)),
    )
    .unwrap();
    Fixture {
        host,
        broker,
        nats,
        _dir: dir,
    }
}

/// Every function of the shop shares one app (state namespace).
fn env(name: &str) -> FunctionEnv {
    let mut env = FunctionEnv::new(name);
    env.limits = limits();
    env.grants.app = Some("shop".into());
    env
}

async fn load(fixture: &Fixture, path: &str, env: FunctionEnv) -> Arc<Function> {
    fixture
        .host
        .load(env, hearth_testkit::wasm_bytes(path))
        .await
        .unwrap()
}

async fn producer(fixture: &Fixture) -> SocketAddr {
    serve_on(
        &fixture.host,
        hearth_testkit::ORDER_PRODUCER,
        env("order-producer"),
    )
    .await
}

async fn order(addr: SocketAddr, headers: &[(&str, &str)], body: &str) -> String {
    let reply = send(
        addr,
        Method::POST,
        "/orders",
        headers,
        Bytes::copy_from_slice(body.as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
    reply.text().trim().to_string()
}

/// Polls the app's state until `key` holds something (or 30 s pass).
async fn wait_for_state(addr: SocketAddr, key: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = get(addr, &format!("/state?key={key}")).await.unwrap();
        if reply.status == StatusCode::OK {
            return reply.text();
        }
        assert!(Instant::now() < deadline, "`{key}` never appeared in state");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn count(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(std::sync::atomic::Ordering::Relaxed)
}

/// A consumer of the orders' dead-letter topic.
async fn dead_letters(fixture: &Fixture) -> Arc<dyn hearth_messaging::Consumer> {
    fixture
        .broker
        .subscribe(&SubscriptionSpec {
            topic: "default.orders.dlq".into(),
            group: "inspect".into(),
            visibility: Duration::from_secs(30),
        })
        .await
        .unwrap()
}

/// A delivery's header (names compared without case), or "".
fn header(delivery: &hearth_messaging::Delivery, name: &str) -> String {
    delivery
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

macro_rules! per_broker {
    ($scenario:ident) => {
        per_kind!($scenario: Embedded => embedded, Nats => nats);
    };
}

per_broker!(orders_flow_from_the_producer_through_the_worker_into_state);
per_broker!(failures_are_retried_with_backoff_and_poison_goes_to_the_dead_letter_topic);
per_broker!(a_trapping_or_endless_handler_is_nacked_and_its_instance_discarded);
per_broker!(oversize_and_denied_publishes_are_typed_errors);
per_broker!(a_handler_overrunning_its_visibility_loses_the_message_to_a_redelivery);
per_broker!(draining_finishes_what_it_can_and_gives_back_the_rest);

async fn orders_flow_from_the_producer_through_the_worker_into_state(kind: Kind) {
    let fixture = fixture(kind).await;
    let addr = producer(&fixture).await;
    let worker = load(&fixture, hearth_testkit::ORDER_WORKER, env("order-worker")).await;
    let mut settings = SubscriptionSettings::new("orders", "workers");
    settings.visibility = Duration::from_millis(1000);
    let subscription = Subscription::start(worker, fixture.broker.clone(), settings)
        .await
        .unwrap();
    for i in 0..20 {
        let id = format!("o{i}");
        order(addr, &[("x-order-id", &id)], &format!("order {i}")).await;
    }
    // Long work (2 s) past the 1 s visibility: the worker extends it.
    order(
        addr,
        &[("x-order-id", "long"), ("x-order-work-ms", "2000")],
        "long order",
    )
    .await;
    assert_eq!(wait_for_state(addr, "order/long").await, "long order");
    for i in 0..20 {
        assert_eq!(
            wait_for_state(addr, &format!("order/o{i}")).await,
            format!("order {i}")
        );
    }
    let stats = subscription.stats();
    wait_until("21 acks", || count(&stats.acked) == 21).await;
    assert_eq!(wait_for_state(addr, "processed").await, "21");
    assert_eq!(count(&stats.redelivered), 0, "extend kept the long one");
    assert_eq!(count(&stats.lost), 0);
}

async fn failures_are_retried_with_backoff_and_poison_goes_to_the_dead_letter_topic(kind: Kind) {
    let fixture = fixture(kind).await;
    let addr = producer(&fixture).await;
    let flaky = load(&fixture, hearth_testkit::FLAKY_WORKER, env("flaky-worker")).await;
    let mut settings = SubscriptionSettings::new("orders", "flaky");
    settings.max_deliveries = 3;
    settings.backoff = Duration::from_millis(100);
    let subscription = Subscription::start(flaky, fixture.broker.clone(), settings)
        .await
        .unwrap();
    let dead_letters = dead_letters(&fixture).await;
    let started = Instant::now();
    order(
        addr,
        &[("x-order-id", "retry"), ("x-order-mode", "fail-2")],
        "r",
    )
    .await;
    assert_eq!(wait_for_state(addr, "flaky/retry").await, "3", "third try");
    // Two backoffs: 100 ms, then 200 ms.
    assert!(started.elapsed() >= Duration::from_millis(280));
    order(
        addr,
        &[("x-order-id", "poison"), ("x-order-mode", "poison")],
        "p",
    )
    .await;
    // The queue keeps flowing past the poison message.
    for i in 0..3 {
        let id = format!("after{i}");
        order(
            addr,
            &[("x-order-id", &id), ("x-order-mode", "fail-0")],
            "a",
        )
        .await;
        assert_eq!(wait_for_state(addr, &format!("flaky/{id}")).await, "1");
    }
    let letter = loop {
        let got = dead_letters
            .receive(1, Duration::from_secs(30))
            .await
            .unwrap();
        if let Some(letter) = got.into_iter().next() {
            break letter;
        }
    };
    let header = |name: &str| header(&letter, name);
    assert_eq!(letter.data, b"p");
    assert!(
        header("hearth-error").contains("poison order poison"),
        "{letter:?}"
    );
    assert_eq!(header("hearth-deliveries"), "3");
    assert_eq!(header("hearth-original-topic"), "default.orders");
    assert_eq!(header("x-order-id"), "poison", "its own headers stay");
    assert_eq!(wait_for_state(addr, "flaky-attempts/poison").await, "3");
    let stats = subscription.stats();
    wait_until("one dead letter", || count(&stats.dead_lettered) == 1).await;
    assert!(count(&stats.nacked) >= 4, "2 for retry, 2 for poison");
}

async fn a_trapping_or_endless_handler_is_nacked_and_its_instance_discarded(kind: Kind) {
    let fixture = fixture(kind).await;
    let addr = producer(&fixture).await;
    let mut flaky_env = env("flaky-worker");
    flaky_env.limits.request_timeout_ms = 500;
    let flaky = load(&fixture, hearth_testkit::FLAKY_WORKER, flaky_env).await;
    let mut settings = SubscriptionSettings::new("orders", "flaky");
    settings.max_deliveries = 2;
    settings.backoff = Duration::from_millis(50);
    settings.visibility = Duration::from_secs(30);
    let subscription = Subscription::start(flaky.clone(), fixture.broker.clone(), settings)
        .await
        .unwrap();
    let dead_letters = dead_letters(&fixture).await;
    order(
        addr,
        &[("x-order-id", "spin"), ("x-order-mode", "spin")],
        "s",
    )
    .await;
    order(
        addr,
        &[("x-order-id", "trap"), ("x-order-mode", "trap")],
        "t",
    )
    .await;
    let mut errors = BTreeMap::new();
    while errors.len() < 2 {
        for letter in dead_letters
            .receive(2, Duration::from_secs(30))
            .await
            .unwrap()
        {
            errors.insert(
                header(&letter, "x-order-id"),
                header(&letter, "hearth-error"),
            );
            dead_letters.ack(&letter.receipt).await.unwrap();
        }
    }
    assert!(
        errors["spin"].starts_with("deadline-exceeded"),
        "{errors:?}"
    );
    assert!(errors["trap"].starts_with("trap"), "{errors:?}");
    assert!(errors["trap"].contains("unreachable"), "{errors:?}");
    let poisoned = flaky.pool().unwrap().stats().poisoned;
    assert!(poisoned >= 4, "each failed instance discarded: {poisoned}");
    // The handler still works afterwards.
    order(
        addr,
        &[("x-order-id", "fine"), ("x-order-mode", "fail-0")],
        "f",
    )
    .await;
    assert_eq!(wait_for_state(addr, "flaky/fine").await, "1");
    assert_eq!(count(&subscription.stats().dead_lettered), 2);
}

async fn oversize_and_denied_publishes_are_typed_errors(kind: Kind) {
    let fixture = fixture(kind).await;
    let mut producer_env = env("order-producer");
    producer_env.grants.publish_topics = Some(vec!["orders".into(), "audit.>".into()]);
    let addr = serve_on(&fixture.host, hearth_testkit::ORDER_PRODUCER, producer_env).await;
    let big = "x".repeat(5000);
    let reply = send(addr, Method::POST, "/orders", &[], Bytes::from(big))
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.text()
    );
    assert!(
        reply
            .text()
            .starts_with("too-large: the limit is 4096 bytes")
    );
    for (topic, status) in [
        ("payments", StatusCode::FORBIDDEN),
        ("audit", StatusCode::FORBIDDEN),
        ("audit.orders", StatusCode::ACCEPTED),
    ] {
        let reply = send(
            addr,
            Method::POST,
            &format!("/publish?topic={topic}"),
            &[],
            Bytes::from_static(b"x"),
        )
        .await
        .unwrap();
        assert_eq!(reply.status, status, "{topic}: {}", reply.text());
        if status == StatusCode::FORBIDDEN {
            assert!(
                reply.text().starts_with("permission-denied"),
                "{}",
                reply.text()
            );
        }
    }
    let reply = send(
        addr,
        Method::POST,
        "/orders?priority=12",
        &[],
        Bytes::from_static(b"x"),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
}

async fn a_handler_overrunning_its_visibility_loses_the_message_to_a_redelivery(kind: Kind) {
    let fixture = fixture(kind).await;
    let addr = producer(&fixture).await;
    let worker = load(&fixture, hearth_testkit::ORDER_WORKER, env("order-worker")).await;
    let mut settings = SubscriptionSettings::new("orders", "workers");
    settings.visibility = Duration::from_millis(700);
    settings.concurrency = 2;
    let subscription = Subscription::start(worker, fixture.broker.clone(), settings)
        .await
        .unwrap();
    // Stalls 2 s without extending its 700 ms visibility.
    order(
        addr,
        &[("x-order-id", "stall"), ("x-order-stall-ms", "2000")],
        "stalled",
    )
    .await;
    let stats = subscription.stats().clone();
    wait_until("a redelivery", || count(&stats.redelivered) >= 1).await;
    wait_until("the late ack refused", || count(&stats.lost) >= 1).await;
    assert_eq!(wait_for_state(addr, "order/stall").await, "stalled");
}

async fn draining_finishes_what_it_can_and_gives_back_the_rest(kind: Kind) {
    let fixture = fixture(kind).await;
    let addr = producer(&fixture).await;
    let worker = load(&fixture, hearth_testkit::ORDER_WORKER, env("order-worker")).await;
    let settings = SubscriptionSettings::new("orders", "workers");
    let subscription =
        Subscription::start(worker.clone(), fixture.broker.clone(), settings.clone())
            .await
            .unwrap();
    order(addr, &[("x-order-id", "quick")], "q").await;
    assert_eq!(wait_for_state(addr, "order/quick").await, "q");
    order(
        addr,
        &[("x-order-id", "slow"), ("x-order-work-ms", "4000")],
        "slow",
    )
    .await;
    let stats = subscription.stats().clone();
    wait_until("the slow one in hand", || count(&stats.delivered) == 2).await;
    subscription.drain(Duration::from_millis(300)).await;
    assert_eq!(
        count(&stats.nacked),
        1,
        "given back at the end of the grace"
    );
    // A new subscription (a restarted node) gets it at once.
    let again = Subscription::start(worker, fixture.broker.clone(), settings)
        .await
        .unwrap();
    assert_eq!(wait_for_state(addr, "order/slow").await, "slow");
    assert!(count(&again.stats().redelivered) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_mid_stream_publishes_fail_typed_and_consumption_resumes() {
    let mut fixture = fixture(Kind::Nats).await;
    let addr = producer(&fixture).await;
    let worker = load(&fixture, hearth_testkit::ORDER_WORKER, env("order-worker")).await;
    let subscription = Subscription::start(
        worker,
        fixture.broker.clone(),
        SubscriptionSettings::new("orders", "workers"),
    )
    .await
    .unwrap();
    order(addr, &[("x-order-id", "before")], "b").await;
    assert_eq!(wait_for_state(addr, "order/before").await, "b");
    let server = fixture.nats.as_mut().unwrap();
    server.kill();
    let reply = send(addr, Method::POST, "/orders", &[], Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    assert!(
        reply.text().starts_with("unavailable: "),
        "{}",
        reply.text()
    );
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = send(
            addr,
            Method::POST,
            "/orders",
            &[("x-order-id", "after")],
            Bytes::from_static(b"a"),
        )
        .await
        .unwrap();
        if reply.status == StatusCode::ACCEPTED {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never reconnected: {}",
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(wait_for_state(addr, "order/after").await, "a");
    assert_eq!(count(&subscription.stats().dead_lettered), 0);
}

// ---------------------------------------------------------------------------
// hearthd as a process.

async fn hearthd_killed_with_messages_in_flight_redelivers_them_after_restart(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let nats = matches!(kind, Kind::Nats).then(NatsServer::start);
    let broker = match &nats {
        None => "type = \"embedded\"\npath = \"messages.redb\"".to_string(),
        Some(server) => format!("type = \"nats\"\nurl = \"{}\"", server.url()),
    };
    let port = hearth_testkit::services::free_port();
    let toml = format!(
        r#"
[state.stores.default]
type = "embedded"
path = "state.redb"

[messaging.brokers.default]
{broker}

[[function]]
name = "order-producer"
path = "{producer}"
listen = "127.0.0.1:{port}"
app = "shop"

[[function]]
name = "order-worker"
path = "{worker}"
app = "shop"
[[function.subscribe]]
topic = "orders"
group = "workers"
concurrency = 4
visibility_ms = 1500
"#,
        producer = hearth_testkit::ORDER_PRODUCER,
        worker = hearth_testkit::ORDER_WORKER,
    );
    let mut hearthd = start_hearthd(dir.path(), &toml);
    let addr = hearthd.serving_addr("order-producer");
    for i in 0..4 {
        let id = format!("inflight{i}");
        order(
            addr,
            &[("x-order-id", &id), ("x-order-work-ms", "3000")],
            "w",
        )
        .await;
    }
    // All four are in hand (working for 3 s); then the node dies.
    tokio::time::sleep(Duration::from_millis(800)).await;
    hearthd.kill();
    let hearthd = start_hearthd(dir.path(), &toml);
    let addr = hearthd.serving_addr("order-producer");
    for i in 0..4 {
        assert_eq!(
            wait_for_state(addr, &format!("order/inflight{i}")).await,
            "w"
        );
    }
    // The worker stores the order, then counts it: the last count may land
    // just after its order does.
    let deadline = Instant::now() + Duration::from_secs(30);
    let processed = loop {
        let processed: u64 = wait_for_state(addr, "processed").await.parse().unwrap();
        if processed >= 4 || Instant::now() > deadline {
            break processed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        processed, 4,
        "each once: none had been acked before the kill"
    );
}

per_broker!(hearthd_killed_with_messages_in_flight_redelivers_them_after_restart);
