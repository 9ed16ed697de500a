//! What a storage node counts, in the Prometheus text format, served by
//! `hearth-store --metrics-listen ADDR` at `GET /metrics`.
//!
//! # Contract
//!
//! * Every refusal the node makes is counted here as well as logged:
//!   `hearth_store_connections_refused_total{reason}` (`max_connections`,
//!   `unauthorized`, `no_hello`: no `Hello` within the hello timeout, or
//!   another message first; `pending_hellos_per_peer`: one IP address
//!   holding too many connections that have not said `Hello`), `hearth_store_leases_expired_total` (a client
//!   cut off for holding a read buffer, or an offered write buffer, past
//!   its lease),
//!   `hearth_store_reads_refused_total{reason="no_buffer"}`,
//!   `hearth_store_writes_refused_total{reason="no_buffer"}` (a one-sided
//!   write found no free buffer to offer) and
//!   `hearth_store_accept_errors_total`.
//! * Gauges: `hearth_store_connections_open` (admitted, not yet ended),
//!   `hearth_store_read_buffers_in_use`.
//! * Counting is a relaxed atomic add; rendering reads each once.

use std::sync::atomic::{AtomicU64, Ordering};

/// The node's counters; see the module docs.
#[derive(Debug, Default)]
pub struct NodeMetrics {
    /// Connections closed at accept: at `max_connections`.
    pub refused_at_cap: AtomicU64,
    /// Connections whose `Hello` was refused.
    pub refused_unauthorized: AtomicU64,
    /// Connections that sent no `Hello` in time (or something else first).
    pub refused_no_hello: AtomicU64,
    /// Connections closed at accept: their peer held too many that had not
    /// said `Hello`.
    pub refused_pending_per_peer: AtomicU64,
    /// Clients cut off for holding a read buffer past the lease.
    pub leases_expired: AtomicU64,
    /// Reads refused: no free read buffer.
    pub reads_refused_no_buffer: AtomicU64,
    /// One-sided writes refused: no free buffer to offer.
    pub writes_refused_no_buffer: AtomicU64,
    /// Failed accepts (no file descriptors left, say).
    pub accept_errors: AtomicU64,
    /// Connections admitted and not yet ended.
    pub connections_open: AtomicU64,
}

/// Adds one to `counter`.
pub fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl NodeMetrics {
    /// The Prometheus text of these counters, with `buffers_in_use` (the
    /// read buffer pool's, read by the caller).
    pub fn render(&self, buffers_in_use: usize) -> String {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut out = String::new();
        out.push_str(
            "# HELP hearth_store_connections_refused_total Connections the node closed without serving them.\n\
             # TYPE hearth_store_connections_refused_total counter\n",
        );
        for (reason, counter) in [
            ("max_connections", &self.refused_at_cap),
            ("unauthorized", &self.refused_unauthorized),
            ("no_hello", &self.refused_no_hello),
            ("pending_hellos_per_peer", &self.refused_pending_per_peer),
        ] {
            out.push_str(&format!(
                "hearth_store_connections_refused_total{{reason=\"{reason}\"}} {}\n",
                get(counter)
            ));
        }
        for (name, help, kind, value) in [
            (
                "hearth_store_leases_expired_total",
                "Clients cut off for holding a read buffer past its lease.",
                "counter",
                get(&self.leases_expired),
            ),
            (
                "hearth_store_accept_errors_total",
                "Accepts that failed (and were retried).",
                "counter",
                get(&self.accept_errors),
            ),
            (
                "hearth_store_connections_open",
                "Connections being served.",
                "gauge",
                get(&self.connections_open),
            ),
            (
                "hearth_store_read_buffers_in_use",
                "Registered read buffers lent to clients.",
                "gauge",
                buffers_in_use as u64,
            ),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        }
        out.push_str(&format!(
            "# HELP hearth_store_reads_refused_total Reads the node refused.\n\
             # TYPE hearth_store_reads_refused_total counter\n\
             hearth_store_reads_refused_total{{reason=\"no_buffer\"}} {}\n",
            get(&self.reads_refused_no_buffer)
        ));
        out.push_str(&format!(
            "# HELP hearth_store_writes_refused_total One-sided writes the node refused.\n\
             # TYPE hearth_store_writes_refused_total counter\n\
             hearth_store_writes_refused_total{{reason=\"no_buffer\"}} {}\n",
            get(&self.writes_refused_no_buffer)
        ));
        out
    }
}

/// Scrapes served at once; another connection is closed on accept, so a
/// flood of connections to the metrics port costs the node a few tasks and
/// descriptors, not one per connection.
pub const MAX_METRICS_CONNECTIONS: usize = 16;

/// Serves `GET /metrics` (anything else: 404) on `listener` until the task
/// is dropped, [`MAX_METRICS_CONNECTIONS`] at a time, each connection for
/// 30 s at most; `render` makes the body.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    render: std::sync::Arc<dyn Fn() -> String + Send + Sync>,
) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let open = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_METRICS_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let render = render.clone();
                    async move {
                        let response = if request.uri().path() == "/metrics" {
                            hyper::Response::builder()
                                .header("content-type", "text/plain; version=0.0.4")
                                .body(Full::new(Bytes::from(render())))
                        } else {
                            hyper::Response::builder()
                                .status(404)
                                .body(Full::new(Bytes::from_static(b"try /metrics\n")))
                        };
                        Ok::<_, std::convert::Infallible>(response.expect("a valid response"))
                    }
                },
            );
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(30),
                hyper::server::conn::http1::Builder::new().serve_connection(io, service),
            )
            .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_past_the_metrics_cap_are_closed_and_scrapes_go_on() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(NodeMetrics::default());
        let server = tokio::spawn(serve_metrics(listener, Arc::new(move || metrics.render(0))));
        let scrape = || async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            tokio::io::AsyncWriteExt::write_all(
                &mut stream,
                b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            )
            .await
            .unwrap();
            let mut reply = String::new();
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut reply).await;
            reply
        };
        // Silent connections fill every place: one more is closed unserved.
        let mut held = Vec::new();
        for _ in 0..MAX_METRICS_CONNECTIONS {
            held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let refused = tokio::time::timeout(std::time::Duration::from_secs(10), scrape())
            .await
            .expect("closed, not left waiting");
        assert!(!refused.contains("200 OK"), "{refused}");
        // Once they go, scrapes are served again.
        drop(held);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let reply = scrape().await;
            if reply.contains("hearth_store_connections_refused_total") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{reply}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        server.abort();
    }
}
