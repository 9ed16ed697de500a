//! The conformance suite (`hearth_messaging::conformance`) against every
//! backend, with a real `nats-server -js` started here, and what each must
//! survive: the embedded file reopened after a crash with messages in
//! flight, the NATS server killed mid-stream and started again.

use hearth_messaging::embedded::EmbeddedBroker;
use hearth_messaging::nats::{NatsBroker, NatsSettings};
use hearth_messaging::{
    Broker, MessagingBackend, MessagingError, OutgoingMessage, Retention, SubscriptionSpec,
    conformance,
};
use hearth_testkit::services::NatsServer;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn nats_settings(server: &NatsServer) -> NatsSettings {
    NatsSettings {
        url: server.url(),
        timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

fn spec(topic: &str, visibility_ms: u64) -> SubscriptionSpec {
    SubscriptionSpec {
        topic: topic.into(),
        group: "workers".into(),
        visibility: Duration::from_millis(visibility_ms),
    }
}

fn message(topic: &str, data: &str) -> OutgoingMessage {
    OutgoingMessage {
        topic: topic.into(),
        data: data.as_bytes().to_vec(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::open(&dir.path().join("messages.redb")).unwrap();
    conformance::run(Arc::new(broker)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_passes_the_conformance_suite() {
    let server = NatsServer::start();
    let broker = NatsBroker::connect("conformance", nats_settings(&server))
        .await
        .unwrap();
    conformance::run(Arc::new(broker)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_redelivers_what_was_in_flight_at_a_crash_and_never_an_acked_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("messages.redb");
    {
        let broker = Broker::new(
            "m",
            Arc::new(EmbeddedBroker::open(&path).unwrap()),
            Default::default(),
        );
        for data in ["acked", "in-flight", "queued"] {
            broker.publish(&message("orders", data)).await.unwrap();
        }
        let consumer = broker.subscribe(&spec("orders", 60_000)).await.unwrap();
        let got = consumer.receive(2, Duration::from_secs(5)).await.unwrap();
        assert_eq!(got.len(), 2);
        consumer.ack(&got[0].receipt).await.unwrap();
        // got[1] stays in flight with a minute of visibility: the "crash".
    }
    let broker = Broker::new(
        "m",
        Arc::new(EmbeddedBroker::open(&path).unwrap()),
        Default::default(),
    );
    let consumer = broker.subscribe(&spec("orders", 60_000)).await.unwrap();
    let mut got = consumer.receive(10, Duration::from_secs(5)).await.unwrap();
    got.sort_by_key(|d| d.receipt.sequence);
    let names: Vec<&[u8]> = got.iter().map(|d| d.data.as_slice()).collect();
    assert_eq!(
        names,
        [b"in-flight".as_slice(), b"queued"],
        "at once, not after a minute"
    );
    assert_eq!(got[0].attempt, 2);
    assert!(got[0].last_error.as_deref().unwrap().contains("stopped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_mid_stream_answers_unavailable_then_resumes_without_losing_a_publish() {
    let mut server = NatsServer::start();
    let broker = Broker::new(
        "events",
        Arc::new(
            NatsBroker::connect("events", nats_settings(&server))
                .await
                .unwrap(),
        ),
        Default::default(),
    );
    let consumer = broker.subscribe(&spec("outage", 30_000)).await.unwrap();
    broker.publish(&message("outage", "before")).await.unwrap();
    server.kill();
    let started = Instant::now();
    let failed = broker.publish(&message("outage", "during")).await;
    assert!(
        matches!(failed, Err(MessagingError::Unavailable { .. })),
        "{failed:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by the timeout"
    );
    assert!(broker.ping().await.is_err());
    server.restart();
    // The client reconnects by itself; publishes succeed again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match broker.publish(&message("outage", "after")).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for the reconnect: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no reconnect: {e}"),
        }
    }
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline
        && !(seen.contains(&"after".to_string()) && seen.contains(&"before".to_string()))
    {
        match consumer.receive(10, Duration::from_secs(1)).await {
            Ok(got) => {
                for d in got {
                    seen.push(String::from_utf8(d.data.clone()).unwrap());
                    consumer.ack(&d.receipt).await.unwrap();
                }
            }
            Err(e) => eprintln!("receive while reconnecting: {e}"),
        }
    }
    // The publish that failed may still have gone out on reconnect (the
    // client buffers it): at least once, so it may appear, once.
    seen.sort();
    seen.retain(|m| m != "during");
    assert_eq!(
        seen,
        ["after", "before"],
        "the acknowledged publishes, each once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_not_running_at_start_is_unavailable_not_a_hang() {
    let port = hearth_testkit::services::free_port();
    let backend = NatsBroker::connect(
        "missing",
        NatsSettings {
            url: format!("nats://127.0.0.1:{port}"),
            timeout: Duration::from_millis(500),
            ..Default::default()
        },
    )
    .await
    .expect("connects lazily");
    let error = backend.publish(&message("x", "y")).await.unwrap_err();
    assert_eq!(error.name(), "unavailable", "{error}");
    assert!(error.to_string().contains(&port.to_string()), "{error}");
    assert!(backend.ping().await.is_err());
}

fn usage_of(broker: &EmbeddedBroker, topic: &str) -> hearth_messaging::TopicUsage {
    broker
        .topic_usage()
        .into_iter()
        .find(|usage| usage.topic == topic)
        .unwrap_or_else(|| hearth_messaging::TopicUsage::new(topic))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_refuses_a_publish_past_a_full_topic_and_frees_room_on_ack() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("messages.redb");
    let retention = Retention {
        max_messages: 3,
        ..Retention::default()
    };
    let broker = EmbeddedBroker::open_with(&path, retention).unwrap();
    let consumer = broker.subscribe(&spec("orders", 30_000)).await.unwrap();
    for n in 0..3 {
        broker
            .publish(&message("orders", &format!("o{n}")))
            .await
            .unwrap();
    }
    let refused = broker.publish(&message("orders", "o3")).await.unwrap_err();
    assert_eq!(refused.name(), "topic-full", "{refused}");
    assert!(refused.to_string().contains("3 messages"), "{refused}");
    // Other topics are not affected.
    broker.publish(&message("refunds", "r0")).await.unwrap();
    let usage = usage_of(&broker, "orders");
    assert_eq!((usage.messages, usage.refused), (3, 1));
    assert!(usage.bytes > 0);

    // An ack by the only group frees room for one more.
    let taken = consumer.receive(1, Duration::from_secs(5)).await.unwrap();
    consumer.ack(&taken[0].receipt).await.unwrap();
    assert_eq!(usage_of(&broker, "orders").messages, 2);
    broker.publish(&message("orders", "o3")).await.unwrap();

    // What a topic holds is rebuilt from the file when it is opened again;
    // nothing acknowledged was dropped.
    drop((consumer, broker));
    let broker = EmbeddedBroker::open_with(&path, retention).unwrap();
    assert_eq!(usage_of(&broker, "orders").messages, 3);
    let consumer = broker.subscribe(&spec("orders", 30_000)).await.unwrap();
    let mut payloads = Vec::new();
    for delivery in consumer.receive(10, Duration::from_secs(5)).await.unwrap() {
        payloads.push(String::from_utf8(delivery.data.clone()).unwrap());
        consumer.ack(&delivery.receipt).await.unwrap();
    }
    payloads.sort();
    assert_eq!(payloads, ["o1", "o2", "o3"]);
    assert_eq!(usage_of(&broker, "orders").messages, 0);
    assert_eq!(usage_of(&broker, "orders").bytes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_expires_messages_past_their_age_from_every_group() {
    let dir = tempfile::tempdir().unwrap();
    let age = Duration::from_millis(300);
    let broker = EmbeddedBroker::open_with(
        &dir.path().join("messages.redb"),
        Retention {
            max_age: age,
            ..Retention::default()
        },
    )
    .unwrap();
    let in_group = |group: &str| SubscriptionSpec {
        group: group.into(),
        ..spec("orders", 30_000)
    };
    let gone = broker.subscribe(&in_group("gone")).await.unwrap();
    let busy = broker.subscribe(&in_group("busy")).await.unwrap();
    // `gone` takes the keyed message into its queue and never comes back;
    // `busy` holds it in flight.
    broker
        .publish(&OutgoingMessage {
            key: Some("cart-1".into()),
            ..message("orders", "old")
        })
        .await
        .unwrap();
    assert_eq!(gone.receive(0, Duration::ZERO).await.unwrap().len(), 0);
    let held = busy.receive(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(held.len(), 1);
    // A topic nobody subscribes to keeps nothing forever either.
    broker
        .publish(&message("orders.dlq", "dead"))
        .await
        .unwrap();

    tokio::time::sleep(age * 2).await;
    // A new message of the same key: once the old one has expired, it is
    // not held back behind it.
    broker
        .publish(&OutgoingMessage {
            key: Some("cart-1".into()),
            ..message("orders", "new")
        })
        .await
        .unwrap();
    let usage = usage_of(&broker, "orders");
    assert_eq!((usage.messages, usage.expired), (1, 1), "{usage:?}");
    let fresh = gone.receive(10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(fresh.len(), 1);
    assert_eq!(fresh[0].data, b"new");
    let lost = busy.ack(&held[0].receipt).await.unwrap_err();
    assert_eq!(lost.name(), "lost", "{lost}");
    assert!(lost.to_string().contains("retention"), "{lost}");

    // The dead-letter topic is expired too (by the next touch of it).
    broker
        .publish(&message("orders.dlq", "dead2"))
        .await
        .unwrap();
    let dlq = usage_of(&broker, "orders.dlq");
    assert_eq!((dlq.messages, dlq.expired), (1, 1), "{dlq:?}");
}

/// 8 publishers and 4 consumers on one embedded broker: prints
/// `published DATA` once a publish returned, `acking DATA` before an ack
/// and `acked DATA` once it returned; killed with SIGKILL mid-stream by
/// [`embedded_publishes_and_acks_acknowledged_before_a_kill_9_survive_it`].
async fn publish_and_consume_until_killed(path: &std::path::Path) {
    let broker: Arc<dyn MessagingBackend> = Arc::new(EmbeddedBroker::open(path).unwrap());
    use hearth_testkit::process::tell_parent;
    let mut tasks = Vec::new();
    for publisher in 0..8 {
        let broker = broker.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0u64.. {
                let data = format!("p{publisher}-{i}");
                broker.publish(&message("kill9", &data)).await.unwrap();
                tell_parent(&format!("published {data}"));
            }
        }));
    }
    for _ in 0..4 {
        let consumer = broker.subscribe(&spec("kill9", 60_000)).await.unwrap();
        tasks.push(tokio::spawn(async move {
            loop {
                for delivery in consumer.receive(8, Duration::from_secs(1)).await.unwrap() {
                    let data = String::from_utf8(delivery.data).unwrap();
                    tell_parent(&format!("acking {data}"));
                    consumer.ack(&delivery.receipt).await.unwrap();
                    tell_parent(&format!("acked {data}"));
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_publishes_and_acks_acknowledged_before_a_kill_9_survive_it() {
    use hearth_testkit::process::{child_role, rerun_as_child};
    use std::collections::HashSet;
    if child_role().as_deref() == Some("broker") {
        let path = std::env::var_os("BROKER_PATH").unwrap();
        return publish_and_consume_until_killed(std::path::Path::new(&path)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("messages.redb");
    let mut acks = 0;
    let told = rerun_as_child(
        "embedded_publishes_and_acks_acknowledged_before_a_kill_9_survive_it",
        "broker",
        &[("BROKER_PATH", path.as_os_str())],
    )
    .kill_when(|line| {
        acks += usize::from(line.starts_with("acked "));
        acks >= 1500
    });
    // Everything it told before it died was acknowledged.
    let told_as = |what: &str| -> HashSet<String> {
        told.iter()
            .filter_map(|line| line.strip_prefix(what))
            .map(str::to_string)
            .collect()
    };
    let (published, acking, acked) = (told_as("published "), told_as("acking "), told_as("acked "));
    let broker = EmbeddedBroker::open(&path).unwrap();
    let consumer = broker.subscribe(&spec("kill9", 60_000)).await.unwrap();
    let mut delivered = HashSet::new();
    loop {
        let got = consumer
            .receive(256, Duration::from_millis(300))
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        for delivery in got {
            delivered.insert(String::from_utf8(delivery.data.clone()).unwrap());
            consumer.ack(&delivery.receipt).await.unwrap();
        }
    }
    let redelivered: Vec<_> = acked.intersection(&delivered).collect();
    assert!(
        redelivered.is_empty(),
        "acknowledged acks came back: {redelivered:?}"
    );
    // A published message is gone only if it was acked (or being acked).
    let lost: Vec<_> = published
        .iter()
        .filter(|data| !delivered.contains(*data) && !acking.contains(*data))
        .collect();
    assert!(lost.is_empty(), "acknowledged publishes lost: {lost:?}");
}
