//! The one conformance suite every [`MessagingBackend`] must pass.
//!
//! [`run`] wraps a backend in a [`Broker`] with [`limits`] and runs every
//! case on topics of its own (so one server can run it repeatedly). A
//! failing case panics with its name. `messaging/tests/conformance.rs` runs
//! it against each backend with real servers.

use crate::{
    Broker, Consumer, Delivery, MessagingBackend, MessagingError, MessagingLimits, OutgoingMessage,
    SubscriptionSpec,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The limits the suite runs under.
pub fn limits() -> MessagingLimits {
    MessagingLimits {
        max_message_bytes: 4096,
        max_delay: Duration::from_secs(3600),
    }
}

/// Generous: the suite waits this long for something that must come.
const ARRIVES: Duration = Duration::from_secs(10);
/// Short: how long the suite watches for something that must not come.
const QUIET: Duration = Duration::from_millis(400);

/// Runs every case against `backend`.
pub async fn run(backend: Arc<dyn MessagingBackend>) {
    let broker = Broker::new("conformance", backend, limits());
    macro_rules! cases {
        ($($case:ident),* $(,)?) => {$(
            eprintln!("conformance [{}]: {}", broker.kind(), stringify!($case));
            $case(&broker, &fresh_topic(stringify!($case))).await;
        )*};
    }
    cases!(
        a_message_published_before_anyone_subscribed_is_delivered_with_its_fields,
        an_acked_message_is_not_delivered_again,
        every_group_gets_every_message_and_one_consumer_of_a_group_gets_each,
        a_nack_redelivers_after_its_delay_with_the_error,
        an_expired_visibility_timeout_redelivers_to_another_consumer,
        extend_keeps_a_message_invisible,
        higher_priorities_are_delivered_first,
        same_key_messages_are_one_at_a_time_in_order,
        a_delayed_message_is_not_delivered_before_its_delay,
        receive_hands_out_at_most_max,
        settling_a_delivery_twice_is_lost,
        bad_input_is_refused_before_the_backend,
    );
}

fn fresh_topic(case: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let short: String = case.split('_').map(|w| &w[..1]).collect();
    format!("conf.{short}{}-{n}", std::process::id())
}

fn message(topic: &str, data: &str) -> OutgoingMessage {
    OutgoingMessage {
        topic: topic.into(),
        data: data.as_bytes().to_vec(),
        ..Default::default()
    }
}

async fn subscribe(
    broker: &Broker,
    topic: &str,
    group: &str,
    visibility_ms: u64,
) -> Arc<dyn Consumer> {
    broker
        .subscribe(&SubscriptionSpec {
            topic: topic.into(),
            group: group.into(),
            visibility: Duration::from_millis(visibility_ms),
        })
        .await
        .expect("subscribe")
}

/// Receives until `n` deliveries came (or [`ARRIVES`] passed).
async fn receive_n(consumer: &dyn Consumer, n: usize) -> Vec<Delivery> {
    let deadline = Instant::now() + ARRIVES;
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        out.extend(
            consumer
                .receive(n - out.len(), left)
                .await
                .expect("receive"),
        );
    }
    assert_eq!(out.len(), n, "expected {n} deliveries, got {out:?}");
    out
}

async fn nothing_arrives(consumer: &dyn Consumer) {
    let got = consumer.receive(10, QUIET).await.expect("receive");
    assert!(got.is_empty(), "expected nothing, got {got:?}");
}

fn text(delivery: &Delivery) -> &str {
    std::str::from_utf8(&delivery.data).unwrap_or("<binary>")
}

async fn a_message_published_before_anyone_subscribed_is_delivered_with_its_fields(
    broker: &Broker,
    topic: &str,
) {
    let mut sent = message(topic, "payload");
    sent.key = Some("order-7".into());
    sent.content_type = Some("application/json".into());
    sent.headers = vec![
        ("trace".into(), "abc".into()),
        ("tenant".into(), "t1".into()),
    ];
    let id = broker.publish(&sent).await.expect("publish");
    let consumer = subscribe(broker, topic, "workers", 30_000).await;
    let got = receive_n(&*consumer, 1).await.remove(0);
    assert_eq!(got.id, id);
    assert_eq!(got.topic, topic);
    assert_eq!(got.data, b"payload");
    assert_eq!(got.key.as_deref(), Some("order-7"));
    assert_eq!(got.content_type.as_deref(), Some("application/json"));
    let mut headers = got.headers.clone();
    headers.sort();
    let mut expected = sent.headers.clone();
    expected.sort();
    assert_eq!(headers, expected, "headers (in any order)");
    assert_eq!(got.attempt, 1);
    assert_eq!(got.last_error, None);
    assert!(got.published_at_ms > 0);
    consumer.ack(&got.receipt).await.expect("ack");
}

async fn an_acked_message_is_not_delivered_again(broker: &Broker, topic: &str) {
    let consumer = subscribe(broker, topic, "workers", 300).await;
    broker.publish(&message(topic, "once")).await.unwrap();
    let got = receive_n(&*consumer, 1).await.remove(0);
    consumer.ack(&got.receipt).await.expect("ack");
    // Past the visibility timeout too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    nothing_arrives(&*consumer).await;
    // A second handle on the same group sees nothing either.
    let again = subscribe(broker, topic, "workers", 300).await;
    nothing_arrives(&*again).await;
}

async fn every_group_gets_every_message_and_one_consumer_of_a_group_gets_each(
    broker: &Broker,
    topic: &str,
) {
    let first = subscribe(broker, topic, "billing", 30_000).await;
    let second = subscribe(broker, topic, "billing", 30_000).await;
    let audit = subscribe(broker, topic, "audit", 30_000).await;
    for i in 0..6 {
        broker
            .publish(&message(topic, &format!("m{i}")))
            .await
            .unwrap();
    }
    let audited = receive_n(&*audit, 6).await;
    let mut seen: Vec<String> = audited.iter().map(|d| text(d).to_string()).collect();
    seen.sort();
    assert_eq!(seen, ["m0", "m1", "m2", "m3", "m4", "m5"]);
    // The billing group's two consumers share the six between them.
    let mut billed = Vec::new();
    let deadline = Instant::now() + ARRIVES;
    while billed.len() < 6 && Instant::now() < deadline {
        for consumer in [&first, &second] {
            for d in consumer
                .receive(6, Duration::from_millis(50))
                .await
                .unwrap()
            {
                billed.push(text(&d).to_string());
                consumer.ack(&d.receipt).await.unwrap();
            }
        }
    }
    billed.sort();
    assert_eq!(
        billed,
        ["m0", "m1", "m2", "m3", "m4", "m5"],
        "each exactly once"
    );
    nothing_arrives(&*first).await;
    nothing_arrives(&*second).await;
}

async fn a_nack_redelivers_after_its_delay_with_the_error(broker: &Broker, topic: &str) {
    let consumer = subscribe(broker, topic, "workers", 30_000).await;
    broker.publish(&message(topic, "retry-me")).await.unwrap();
    let first = receive_n(&*consumer, 1).await.remove(0);
    let nacked_at = Instant::now();
    consumer
        .nack(
            &first.receipt,
            Duration::from_millis(600),
            "boom: db locked",
        )
        .await
        .expect("nack");
    let again = receive_n(&*consumer, 1).await.remove(0);
    assert!(
        nacked_at.elapsed() >= Duration::from_millis(550),
        "redelivered {:?} after a nack with a 600 ms delay",
        nacked_at.elapsed()
    );
    assert_eq!(again.id, first.id);
    assert_eq!(again.attempt, 2);
    assert!(
        again
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("boom: db locked"),
        "{:?}",
        again.last_error
    );
    consumer.ack(&again.receipt).await.expect("ack");
}

async fn an_expired_visibility_timeout_redelivers_to_another_consumer(
    broker: &Broker,
    topic: &str,
) {
    let slow = subscribe(broker, topic, "workers", 500).await;
    let other = subscribe(broker, topic, "workers", 500).await;
    broker.publish(&message(topic, "stalled")).await.unwrap();
    let first = receive_n(&*slow, 1).await.remove(0);
    let again = receive_n(&*other, 1).await.remove(0);
    assert_eq!(again.id, first.id);
    assert_eq!(again.attempt, 2);
    assert!(again.last_error.is_some(), "a redelivery says why");
    other.ack(&again.receipt).await.expect("ack");
}

async fn extend_keeps_a_message_invisible(broker: &Broker, topic: &str) {
    let holder = subscribe(broker, topic, "workers", 500).await;
    let other = subscribe(broker, topic, "workers", 500).await;
    broker.publish(&message(topic, "long job")).await.unwrap();
    let got = receive_n(&*holder, 1).await.remove(0);
    holder
        .extend(&got.receipt, Duration::from_secs(3))
        .await
        .expect("extend");
    // Well past the original 500 ms.
    let seen = other.receive(1, Duration::from_millis(1500)).await.unwrap();
    assert!(
        seen.is_empty(),
        "an extended message was delivered: {seen:?}"
    );
    holder.ack(&got.receipt).await.expect("ack after extend");
}

async fn higher_priorities_are_delivered_first(broker: &Broker, topic: &str) {
    for (data, priority) in [
        ("low", 0),
        ("high", 9),
        ("mid", 5),
        ("low2", 0),
        ("high2", 9),
    ] {
        let mut m = message(topic, data);
        m.priority = priority;
        broker.publish(&m).await.unwrap();
    }
    let consumer = subscribe(broker, topic, "workers", 30_000).await;
    let mut order = Vec::new();
    for _ in 0..5 {
        let d = receive_n(&*consumer, 1).await.remove(0);
        order.push(text(&d).to_string());
        consumer.ack(&d.receipt).await.unwrap();
    }
    assert_eq!(order, ["high", "high2", "mid", "low", "low2"]);
}

async fn same_key_messages_are_one_at_a_time_in_order(broker: &Broker, topic: &str) {
    for (data, key) in [("a1", "a"), ("a2", "a"), ("b1", "b"), ("a3", "a")] {
        let mut m = message(topic, data);
        m.key = Some(key.into());
        broker.publish(&m).await.unwrap();
    }
    let consumer = subscribe(broker, topic, "workers", 30_000).await;
    let mut first: Vec<Delivery> = receive_n(&*consumer, 2).await;
    first.sort_by(|x, y| x.data.cmp(&y.data));
    let names: Vec<&str> = first.iter().map(text).collect();
    assert_eq!(names, ["a1", "b1"], "one per key in flight");
    nothing_arrives(&*consumer).await;
    for d in &first {
        consumer.ack(&d.receipt).await.unwrap();
    }
    let a2 = receive_n(&*consumer, 1).await.remove(0);
    assert_eq!(text(&a2), "a2");
    nothing_arrives(&*consumer).await;
    consumer.ack(&a2.receipt).await.unwrap();
    let a3 = receive_n(&*consumer, 1).await.remove(0);
    assert_eq!(text(&a3), "a3");
    consumer.ack(&a3.receipt).await.unwrap();
}

async fn a_delayed_message_is_not_delivered_before_its_delay(broker: &Broker, topic: &str) {
    let consumer = subscribe(broker, topic, "workers", 30_000).await;
    let mut m = message(topic, "later");
    m.delay = Duration::from_millis(800);
    let published = Instant::now();
    broker.publish(&m).await.unwrap();
    broker.publish(&message(topic, "now")).await.unwrap();
    let first = receive_n(&*consumer, 1).await.remove(0);
    assert_eq!(text(&first), "now", "the undelayed one overtakes");
    consumer.ack(&first.receipt).await.unwrap();
    let later = receive_n(&*consumer, 1).await.remove(0);
    assert_eq!(text(&later), "later");
    assert!(
        published.elapsed() >= Duration::from_millis(750),
        "delivered after {:?}",
        published.elapsed()
    );
    assert_eq!(later.attempt, 1, "waiting out a delay is not an attempt");
    consumer.ack(&later.receipt).await.unwrap();
}

async fn receive_hands_out_at_most_max(broker: &Broker, topic: &str) {
    for i in 0..5 {
        broker
            .publish(&message(topic, &format!("m{i}")))
            .await
            .unwrap();
    }
    let consumer = subscribe(broker, topic, "workers", 30_000).await;
    let mut total = 0;
    let deadline = Instant::now() + ARRIVES;
    while total < 5 && Instant::now() < deadline {
        let got = consumer.receive(2, Duration::from_secs(1)).await.unwrap();
        assert!(got.len() <= 2, "asked for 2, got {}", got.len());
        for d in &got {
            consumer.ack(&d.receipt).await.unwrap();
        }
        total += got.len();
    }
    assert_eq!(total, 5);
}

async fn settling_a_delivery_twice_is_lost(broker: &Broker, topic: &str) {
    let consumer = subscribe(broker, topic, "workers", 30_000).await;
    broker.publish(&message(topic, "x")).await.unwrap();
    let got = receive_n(&*consumer, 1).await.remove(0);
    consumer.ack(&got.receipt).await.unwrap();
    let again = consumer.ack(&got.receipt).await;
    assert!(
        matches!(again, Err(MessagingError::Lost { .. })),
        "{again:?}"
    );
    let nack = consumer.nack(&got.receipt, Duration::ZERO, "late").await;
    assert!(matches!(nack, Err(MessagingError::Lost { .. })), "{nack:?}");
}

async fn bad_input_is_refused_before_the_backend(broker: &Broker, topic: &str) {
    let big = OutgoingMessage {
        topic: topic.into(),
        data: vec![0; 5000],
        ..Default::default()
    };
    match broker.publish(&big).await {
        Err(MessagingError::TooLarge { size, limit }) => {
            assert_eq!((size, limit), (5000, 4096));
        }
        other => panic!("expected too-large, got {other:?}"),
    }
    let invalid = |result: Result<String, MessagingError>| {
        assert!(
            matches!(result, Err(MessagingError::InvalidArgument(_))),
            "{result:?}"
        )
    };
    for bad_topic in ["", "a b", "a..b", "orders.*", "orders.>", ".x"] {
        invalid(broker.publish(&message(bad_topic, "x")).await);
    }
    let mut m = message(topic, "x");
    m.priority = 10;
    invalid(broker.publish(&m).await);
    let mut m = message(topic, "x");
    m.headers = vec![("Hearth-Key".into(), "spoof".into())];
    invalid(broker.publish(&m).await);
    let mut m = message(topic, "x");
    m.headers = vec![("x".into(), "line\nbreak".into())];
    invalid(broker.publish(&m).await);
    let mut m = message(topic, "x");
    m.delay = Duration::from_secs(7200);
    invalid(broker.publish(&m).await);
    // Nothing of the above was stored.
    let consumer = subscribe(broker, topic, "workers", 30_000).await;
    nothing_arrives(&*consumer).await;
}
