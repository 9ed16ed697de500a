//! hearthd's admin endpoint: `/metrics` (Prometheus text format 0.0.4),
//! `/healthz` and `/readyz`.
//!
//! # Contract
//!
//! * `/healthz` answers 200 while the process serves at all; `/readyz`
//!   answers 200 once start-up (prewarm included) is done, 503 before.
//! * `/metrics` is computed from live counters on every scrape; nothing is
//!   sampled in the background. Counters only grow for the life of the
//!   process; per-function series disappear with the function.
//! * Series (all prefixed `hearth_`):
//!   - `pool_hits_total`, `pool_misses_total`, `pool_retired_total`,
//!     `pool_poisoned_total`, `pool_refill_failures_total` and
//!     `pool_instances{state="idle"|"busy"}`, labelled `id`, `namespace`
//!     and `function`;
//!   - `function_memory_bytes` and `function_cpu_seconds_total`: a
//!     function's linear memory and guest CPU time, and
//!     `guest_output_dropped_lines_total` (lines dropped while its log
//!     reader lagged, see [`crate::guest_output`]),
//!     `guest_log_lines_total` and `guest_log_dropped_lines_total`
//!     (`wasi:logging` lines into hearthd's log and dropped past its rate,
//!     see [`crate::capabilities::logging`]), `http_connections` and
//!     `http_connections_refused_total` (see [`crate::http`]), labelled the
//!     same;
//!   - `messages_total` and `message_receive_errors_total`, labelled
//!     `namespace`, `function`, and the broker's topic (and group);
//!   - `function_loads_total{compiled_from="memory"|"disk"|"compiled"}`:
//!     functions loaded, by where their compiled code came from (`memory` is
//!     a compiled-cache hit);
//!   - `compiles_total`, `compile_seconds_total` (compiling and loading from
//!     disk), `compiled_evictions_total` (memory budget),
//!     `compiled_disk_evictions_total` (disk bound), `compiled_entries`,
//!     `compiled_resident_bytes`;
//!   - `instance_slots{state="reserved"|"total"}`: the pool's capacity
//!     ledger.
//! * Any other path is 404. The endpoint has no authentication: bind it to
//!   loopback or a node-local address.

use crate::function::{Function, Host};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;

/// Where the admin endpoint finds the functions to report.
pub trait ServedFunctions: Send + Sync {
    /// Every function served now, with its id.
    fn functions(&self) -> Vec<(String, Arc<Function>)>;
}

impl ServedFunctions for Vec<(String, Arc<Function>)> {
    fn functions(&self) -> Vec<(String, Arc<Function>)> {
        self.clone()
    }
}

/// What the admin endpoint reports on.
pub struct Admin {
    /// The host (compiled cache, capacity).
    pub host: Arc<Host>,
    /// Sources of functions (the control API's, the config's).
    pub sources: Vec<Arc<dyn ServedFunctions>>,
    /// Set once start-up is done.
    pub ready: Arc<AtomicBool>,
    /// Why the node cannot serve right now (e.g. a state backend that is
    /// down), kept current by [`watch_backends`]; `/readyz` answers 503
    /// with these lines while there are any.
    pub not_ready: Arc<std::sync::Mutex<Vec<String>>>,
}

/// How often [`watch_backends`] checks the state backends.
pub const BACKEND_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Checks every state store now and then every [`BACKEND_CHECK_INTERVAL`],
/// keeping `not_ready` to the stores that cannot be reached (each line
/// names the store and its backend) and logging each change.
pub async fn watch_backends(
    capabilities: Arc<crate::capabilities::HostCapabilities>,
    not_ready: Arc<std::sync::Mutex<Vec<String>>>,
) {
    loop {
        let problems = capabilities.check_stores().await;
        {
            let mut current = not_ready.lock().unwrap_or_else(|e| e.into_inner());
            if *current != problems {
                for problem in &problems {
                    tracing::error!("not ready: {problem}");
                }
                if problems.is_empty() && !current.is_empty() {
                    tracing::info!("every state store, broker and blob store is reachable again");
                }
                *current = problems;
            }
        }
        tokio::time::sleep(BACKEND_CHECK_INTERVAL).await;
    }
}

impl Admin {
    /// The `/metrics` text.
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        // Each function with its labels: `id="…",namespace="…",function="…"`.
        let functions: Vec<_> = self
            .sources
            .iter()
            .flat_map(|s| s.functions())
            .map(|(id, function)| {
                let labels = format!(
                    "id=\"{}\",namespace=\"{}\",function=\"{}\"",
                    escape(&id),
                    escape(&function.env().namespace),
                    escape(function.name())
                );
                (labels, function)
            })
            .collect();
        let pools: Vec<_> = functions
            .iter()
            .filter_map(|(labels, function)| function.pool().map(|pool| (labels, pool.stats())))
            .collect();
        let counters: [PoolCounter; 5] = [
            (
                "pool_hits_total",
                "Checkouts served by an idle instance.",
                |s| s.hits,
            ),
            (
                "pool_misses_total",
                "Checkouts that instantiated on the request path.",
                |s| s.misses,
            ),
            (
                "pool_retired_total",
                "Instances retired after max_invocations.",
                |s| s.retired,
            ),
            (
                "pool_poisoned_total",
                "Instances discarded after a failed call.",
                |s| s.poisoned,
            ),
            (
                "pool_refill_failures_total",
                "Background instantiations that failed.",
                |s| s.refill_failures,
            ),
        ];
        for (name, help, value) in counters {
            header(&mut out, name, help, "counter");
            for (labels, stats) in &pools {
                let _ = writeln!(out, "hearth_{name}{{{labels}}} {}", value(stats));
            }
        }
        header(
            &mut out,
            "pool_instances",
            "Instances in a function's pool, by state.",
            "gauge",
        );
        for (labels, stats) in &pools {
            for (state, count) in [("idle", stats.idle), ("busy", stats.busy)] {
                let _ = writeln!(
                    out,
                    "hearth_pool_instances{{{labels},state=\"{state}\"}} {count}"
                );
            }
        }
        type Usage = (
            &'static str,
            &'static str,
            &'static str,
            fn(&Function) -> f64,
        );
        let usage: [Usage; 10] = [
            (
                "http_requests_in_flight",
                "Requests a WASI 0.3 service's instances are serving now (a 0.2 instance serves one: see hearth_pool_instances).",
                "gauge",
                |f| f.concurrent().map_or(0, |c| c.in_flight()) as f64,
            ),
            (
                "blob_spool_bytes",
                "Bytes a function's unfinished blob writes hold on the host.",
                "gauge",
                |f| {
                    f.capabilities()
                        .blob
                        .as_ref()
                        .map_or(0, |scope| scope.spool.used()) as f64
                },
            ),
            (
                "blob_spool_refused_total",
                "Blob writes refused because the function's unfinished writes held max_blob_spool_bytes.",
                "counter",
                |f| {
                    f.capabilities()
                        .blob
                        .as_ref()
                        .map_or(0, |scope| scope.spool.refused()) as f64
                },
            ),
            (
                "function_memory_bytes",
                "Linear memory held by a function's live instances.",
                "gauge",
                |f| f.env().memory.bytes() as f64,
            ),
            (
                "function_cpu_seconds_total",
                "CPU time a function's guest calls have used.",
                "counter",
                |f| f.env().cpu.nanos() as f64 / 1e9,
            ),
            (
                "http_connections",
                "HTTP connections open to a function's listener.",
                "gauge",
                |f| f.env().connections.open.load(Ordering::Relaxed) as f64,
            ),
            (
                "http_connections_refused_total",
                "HTTP connections closed on accept because max_connections were open.",
                "counter",
                |f| f.env().connections.refused.load(Ordering::Relaxed) as f64,
            ),
            (
                "guest_output_dropped_lines_total",
                "Output lines a function wrote while its log reader was more than 1 MiB behind.",
                "counter",
                |f| {
                    f.env()
                        .stdio
                        .files()
                        .map_or(0, |files| files.dropped_lines()) as f64
                },
            ),
            (
                "guest_log_lines_total",
                "wasi:logging lines a function put into hearthd's log.",
                "counter",
                |f| f.capabilities().logging.lines() as f64,
            ),
            (
                "guest_log_dropped_lines_total",
                "wasi:logging lines dropped from hearthd's log because a function logged faster than 1000 lines/s.",
                "counter",
                |f| f.capabilities().logging.dropped_lines() as f64,
            ),
        ];
        for (name, help, kind, value) in usage {
            header(&mut out, name, help, kind);
            for (labels, function) in &functions {
                let _ = writeln!(out, "hearth_{name}{{{labels}}} {}", value(function));
            }
        }

        header(
            &mut out,
            "function_info",
            "A function loaded here: its kind and the WASI generation it targets (wasi-0.2, wasi-0.3).",
            "gauge",
        );
        for (labels, function) in &functions {
            let _ = writeln!(
                out,
                "hearth_function_info{{{labels},kind=\"{}\",wasi=\"{}\"}} 1",
                function.kind().name(),
                function.wasi(),
            );
        }

        let loads = self.host.load_counts();
        header(
            &mut out,
            "function_loads_total",
            "Functions loaded, by where their compiled code came from.",
            "counter",
        );
        for (from, count) in [
            ("memory", loads.memory),
            ("disk", loads.disk),
            ("compiled", loads.compiled),
        ] {
            let _ = writeln!(
                out,
                "hearth_function_loads_total{{compiled_from=\"{from}\"}} {count}"
            );
        }
        let cache = self.host.compiled().stats();
        let scalars: [(&str, &str, &str, String); 6] = [
            (
                "compiles_total",
                "Components compiled.",
                "counter",
                cache.compiles.to_string(),
            ),
            (
                "compile_seconds_total",
                "Time spent compiling or loading compiled code from disk.",
                "counter",
                format!("{:.6}", cache.compile_time.as_secs_f64()),
            ),
            (
                "compiled_evictions_total",
                "Compiled components evicted from memory (LRU budget).",
                "counter",
                cache.evictions.to_string(),
            ),
            (
                "compiled_disk_evictions_total",
                "Compiled components evicted from disk (size bound).",
                "counter",
                cache.disk_evictions.to_string(),
            ),
            (
                "compiled_entries",
                "Compiled components held in memory.",
                "gauge",
                cache.entries.to_string(),
            ),
            (
                "compiled_resident_bytes",
                "Bytes of compiled code held in memory.",
                "gauge",
                cache.resident_bytes.to_string(),
            ),
        ];
        for (name, help, kind, value) in scalars {
            header(&mut out, name, help, kind);
            let _ = writeln!(out, "hearth_{name} {value}");
        }
        let subscriptions = self.host.subscriptions().all();
        header(
            &mut out,
            "messages_total",
            "Messages per subscription by outcome: delivered, redelivered (attempt > 1), acked, nacked, dead_lettered, lost (settled after the broker had delivered it again).",
            "counter",
        );
        for stats in &subscriptions {
            for (outcome, count) in stats.outcomes() {
                let _ = writeln!(
                    out,
                    "hearth_messages_total{{namespace=\"{}\",function=\"{}\",topic=\"{}\",group=\"{}\",outcome=\"{outcome}\"}} {count}",
                    escape(&stats.namespace),
                    escape(&stats.function),
                    escape(&stats.topic),
                    escape(&stats.group),
                );
            }
        }
        header(
            &mut out,
            "message_receive_errors_total",
            "Receives from the broker that failed (it was unreachable).",
            "counter",
        );
        for stats in &subscriptions {
            let _ = writeln!(
                out,
                "hearth_message_receive_errors_total{{namespace=\"{}\",function=\"{}\",topic=\"{}\"}} {}",
                escape(&stats.namespace),
                escape(&stats.function),
                escape(&stats.topic),
                stats.receive_errors.load(Ordering::Relaxed),
            );
        }
        let (reserved, total) = self.host.capacity().usage();
        header(
            &mut out,
            "instance_slots",
            "Pooling-allocator instance slots: reserved for idle instances, and in all.",
            "gauge",
        );
        let _ = writeln!(
            out,
            "hearth_instance_slots{{state=\"reserved\"}} {reserved}"
        );
        let _ = writeln!(out, "hearth_instance_slots{{state=\"total\"}} {total}");
        let topics: Vec<(String, hearth_messaging::TopicUsage)> = self
            .host
            .capabilities()
            .brokers
            .values()
            .flat_map(|broker| {
                let label = broker.label().to_string();
                broker
                    .topic_usage()
                    .into_iter()
                    .map(move |usage| (label.clone(), usage))
            })
            .collect();
        let retention: [TopicSeries; 4] = [
            (
                "broker_topic_messages",
                "Messages a topic of the embedded broker holds.",
                "gauge",
                |u| u.messages,
            ),
            (
                "broker_topic_bytes",
                "Bytes of messages a topic of the embedded broker holds.",
                "gauge",
                |u| u.bytes,
            ),
            (
                "broker_messages_expired_total",
                "Messages expired by their topic's retention_hours.",
                "counter",
                |u| u.expired,
            ),
            (
                "broker_publishes_refused_total",
                "Publishes refused because the topic was full (max_topic_messages or max_topic_bytes).",
                "counter",
                |u| u.refused,
            ),
        ];
        for (name, help, kind, value) in retention {
            header(&mut out, name, help, kind);
            for (broker, usage) in &topics {
                let _ = writeln!(
                    out,
                    "hearth_{name}{{broker=\"{}\",topic=\"{}\"}} {}",
                    escape(broker),
                    escape(&usage.topic),
                    value(usage)
                );
            }
        }
        if let Some(artifacts) = self.host.artifacts() {
            header(
                &mut out,
                "image_pulls_refused_total",
                "Image pulls refused for what the registry served, by reason.",
                "counter",
            );
            for (reason, count) in artifacts.refusals() {
                let _ = writeln!(
                    out,
                    "hearth_image_pulls_refused_total{{reason=\"{}\"}} {count}",
                    reason.as_str()
                );
            }
        }
        out
    }

    fn not_ready_lines(&self) -> Vec<String> {
        self.not_ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn respond(&self, path: &str) -> Response<Full<Bytes>> {
        let (status, body) = match path {
            "/metrics" => (StatusCode::OK, self.render_metrics()),
            "/healthz" => (StatusCode::OK, "ok\n".into()),
            "/readyz" if !self.not_ready_lines().is_empty() => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready:\n{}\n", self.not_ready_lines().join("\n")),
            ),
            "/readyz" if self.ready.load(Ordering::Relaxed) => (StatusCode::OK, "ready\n".into()),
            "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "starting\n".into()),
            _ => (StatusCode::NOT_FOUND, "not found\n".into()),
        };
        let content_type = if path == "/metrics" {
            "text/plain; version=0.0.4; charset=utf-8"
        } else {
            "text/plain; charset=utf-8"
        };
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid")
    }
}

/// A per-topic broker series: name, help, type, and how to read it.
type TopicSeries = (
    &'static str,
    &'static str,
    &'static str,
    fn(&hearth_messaging::TopicUsage) -> u64,
);

/// A per-function pool counter: name, help, and how to read it.
type PoolCounter = (
    &'static str,
    &'static str,
    fn(&hearth_prewarm::pool::PoolStats) -> u64,
);

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP hearth_{name} {help}");
    let _ = writeln!(out, "# TYPE hearth_{name} {kind}");
}

/// Escapes a label value per the text format.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `admin` on `listener` until `shutdown` resolves.
pub async fn serve(
    admin: Arc<Admin>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<_>| {
                let response = admin.respond(request.uri().path());
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
    }
}
