//! `hearth-bench messaging`: the message trigger on the embedded broker and
//! on NATS JetStream (a `nats-server -js` the bench starts on loopback, or
//! `--nats-url`), through `flaky-worker` in its no-op mode.
//!
//! * publish → handler start: one message at a time, from the start of
//!   `Broker::publish` (which returns once the message is durable) to the
//!   moment the trigger calls the guest's `handle` (p50, p99);
//! * sustained messages per second: `--messages` published by
//!   `--publishers` tasks, until the last one is acked, with the
//!   subscription's `--concurrency`;
//! * redelivery after a nack: from the start of a failing attempt to the
//!   start of its redelivery, with the backoff set to 1 ms (p50, p99).

use anyhow::Result;
use clap::Parser;
use hearth_host::capabilities::HostCapabilities;
use hearth_host::messages::{Subscription, SubscriptionSettings};
use hearth_host::{EngineSettings, FunctionEnv, Host, Limits};
use hearth_messaging::{Broker, MessagingBackend, MessagingLimits, OutgoingMessage};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser)]
pub struct MessagingArgs {
    /// Samples for the latency rows.
    #[arg(long, default_value_t = 500)]
    samples: usize,
    /// Messages for the throughput row.
    #[arg(long, default_value_t = 5000)]
    messages: usize,
    /// Publishing tasks in the throughput row.
    #[arg(long, default_value_t = 8)]
    publishers: usize,
    /// The subscription's concurrency (handlers at once).
    #[arg(long, default_value_t = 8)]
    concurrency: u32,
    /// A NATS server (with JetStream) to use instead of starting one.
    #[arg(long)]
    nats_url: Option<String>,
}

/// Runs the benchmark and prints its table.
pub fn messaging(args: MessagingArgs) -> Result<()> {
    crate::two_worker_runtime()?.block_on(run(args))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn quantiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort_unstable();
    let at = |q: f64| ms(samples[((samples.len() as f64 - 1.0) * q).round() as usize]);
    (at(0.5), at(0.99))
}

type Starts = Arc<Mutex<HashMap<String, Vec<Instant>>>>;

fn noop(topic: &str, id: &str, mode: &str) -> OutgoingMessage {
    OutgoingMessage {
        topic: topic.into(),
        data: b"{}".to_vec(),
        headers: vec![
            ("x-order-id".into(), id.into()),
            ("x-order-mode".into(), mode.into()),
        ],
        ..Default::default()
    }
}

async fn wait_for(starts: &Starts, id: &str, count: usize) -> Vec<Instant> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(seen) = starts.lock().unwrap().get(id)
            && seen.len() >= count
        {
            return seen.clone();
        }
        assert!(
            Instant::now() < deadline,
            "message {id} never reached its handler"
        );
        tokio::task::yield_now().await;
    }
}

async fn run(args: MessagingArgs) -> Result<()> {
    let _nats_server;
    let nats_url = match &args.nats_url {
        Some(url) => url.clone(),
        None => {
            let server = hearth_testkit::services::NatsServer::start();
            let url = server.url();
            _nats_server = server;
            url
        }
    };
    println!("| broker | measure | p50 | p99 |");
    println!("|---|---|---|---|");
    for kind in ["embedded", "nats"] {
        let dir = tempfile::tempdir()?;
        let backend: Arc<dyn MessagingBackend> = match kind {
            "embedded" => Arc::new(
                hearth_messaging::embedded::EmbeddedBroker::open(&dir.path().join("m.redb"))
                    .map_err(anyhow::Error::msg)?,
            ),
            _ => Arc::new(
                hearth_messaging::nats::NatsBroker::connect(
                    "bench",
                    hearth_messaging::nats::NatsSettings {
                        url: nats_url.clone(),
                        ..Default::default()
                    },
                )
                .await
                .map_err(anyhow::Error::msg)?,
            ),
        };
        let broker = Broker::new("bench", backend, MessagingLimits::default());
        let limits = Limits::default();
        let host = Host::new(&EngineSettings::for_limits([&limits]))?;
        host.install_capabilities(
            HostCapabilities::embedded_default(&dir.path().join("state.redb"))
                .map_err(anyhow::Error::msg)?
                .with_brokers(BTreeMap::from([("bench".into(), broker.clone())]), None)
                .with_invoker(hearth_host::http::LocalInvoker::for_host(&host)),
        )
        .map_err(anyhow::Error::msg)?;
        let mut env = FunctionEnv::new("flaky-worker");
        env.pool.min_idle = args.concurrency;
        env.pool.max_invocations = u32::MAX;
        let function = host
            .load(
                env,
                hearth_testkit::wasm_bytes(hearth_testkit::FLAKY_WORKER),
            )
            .await?;
        // The function's `bench` is its namespace's: the broker's name for it.
        let topic = function
            .capabilities()
            .messaging
            .broker_topic("bench")
            .map_err(anyhow::Error::msg)?;
        let starts: Starts = Arc::default();
        let observer = {
            let starts = starts.clone();
            Arc::new(move |delivery: &hearth_messaging::Delivery| {
                let now = Instant::now();
                let id = delivery
                    .headers
                    .iter()
                    .find(|(n, _)| n == "x-order-id")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                starts.lock().unwrap().entry(id).or_default().push(now);
            })
        };
        let mut settings = SubscriptionSettings::new("bench", "workers");
        settings.concurrency = args.concurrency;
        settings.backoff = Duration::from_millis(1);
        settings.max_deliveries = 1000;
        let subscription =
            Subscription::start_observed(function, broker.clone(), settings, Some(observer))
                .await
                .map_err(anyhow::Error::msg)?;
        // Warm up the pool and the connection.
        for i in 0..50 {
            let id = format!("warm{i}");
            broker.publish(&noop(&topic, &id, "noop")).await?;
            wait_for(&starts, &id, 1).await;
        }
        let mut to_start = Vec::new();
        let mut to_published = Vec::new();
        for i in 0..args.samples {
            let id = format!("lat{i}");
            let started = Instant::now();
            broker.publish(&noop(&topic, &id, "noop")).await?;
            to_published.push(started.elapsed());
            let seen = wait_for(&starts, &id, 1).await;
            to_start.push(seen[0] - started);
        }
        let (p50, p99) = quantiles(to_published);
        println!("| {kind} | publish (durable) | {p50:.3} ms | {p99:.3} ms |");
        let (p50, p99) = quantiles(to_start);
        println!("| {kind} | publish → handler start | {p50:.3} ms | {p99:.3} ms |");
        let mut redelivery = Vec::new();
        for i in 0..args.samples.min(200) {
            let id = format!("re{i}");
            broker.publish(&noop(&topic, &id, "fail-1")).await?;
            let seen = wait_for(&starts, &id, 2).await;
            redelivery.push(seen[1] - seen[0]);
        }
        let (p50, p99) = quantiles(redelivery);
        println!("| {kind} | redelivery after a nack (1 ms backoff) | {p50:.3} ms | {p99:.3} ms |");
        let acked_before = subscription.stats().acked.load(Ordering::Relaxed);
        let started = Instant::now();
        let cpu_before = crate::cpu_time(None)?;
        let per_task = args.messages / args.publishers;
        let publishers: Vec<_> = (0..args.publishers)
            .map(|t| {
                let (broker, topic) = (broker.clone(), topic.clone());
                tokio::spawn(async move {
                    for i in 0..per_task {
                        broker
                            .publish(&noop(&topic, &format!("tp{t}-{i}"), "noop"))
                            .await
                            .expect("publish");
                    }
                })
            })
            .collect();
        for publisher in publishers {
            publisher.await?;
        }
        let total = (per_task * args.publishers) as u64;
        while subscription.stats().acked.load(Ordering::Relaxed) < acked_before + total {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let rate = total as f64 / started.elapsed().as_secs_f64();
        let cpu_us = (crate::cpu_time(None)? - cpu_before).as_secs_f64() * 1e6 / total as f64;
        println!(
            "| {kind} | sustained, no-op handler, {} publishers, concurrency {} | {rate:.0} msg/s | {cpu_us:.0} µs CPU/msg (this process) |",
            args.publishers, args.concurrency
        );
        subscription.drain(Duration::from_secs(5)).await;
    }
    Ok(())
}
