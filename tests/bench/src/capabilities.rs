//! `capabilities`: the cost of a capability call as a host call against the
//! same operation through a Dapr-style sidecar hop, and invoke's local fast
//! path against its HTTP path. Everything runs in this process, in one run:
//!
//! * one Hearth host per state backend (`embedded` in a temp dir, `redis`: a
//!   real `redis-server` started here unless `--redis-url` is given),
//!   serving `functions/capability-bench`, which times each call from
//!   inside the guest with `wasi:clocks/monotonic-clock`;
//! * a sidecar in front of the same backend (the same `StateStore`): an
//!   HTTP/1 server speaking Dapr's state API on loopback. It is measured two
//!   ways: from the same guest through outbound `wasi:http` (what a wasm
//!   function pays: a connection per request, as wasmtime-wasi-http sends
//!   them), and from a native client on one keep-alive connection (the best
//!   case of any sidecar hop: no connect, no wasm);
//! * invoke of `functions/echo` by name: loaded in the same host (the local
//!   fast path) and served by a second host on a loopback port, reached via
//!   `[invoke.targets]` (the HTTP path).
//!
//! Prints p50 and p99 per row, in microseconds, and the sidecar rows'
//! ratio to the host call. A second table runs `--writers` concurrent
//! writers (each on its own key) through each path to the embedded store,
//! whose group commit shares an fsync among the writes that arrive
//! together, and prints writes per second against the sidecar hop's.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use hearth_host::capabilities::{HostCapabilities, InvokeSettings};
use hearth_host::{EngineSettings, FunctionEnv, Host, Limits};
use hearth_state::{Namespace, Precondition, StateBackend, StateLimits, StateStore};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `hearth-bench capabilities` arguments.
#[derive(clap::Parser)]
pub struct CapabilitiesArgs {
    /// Calls measured per row.
    #[arg(long, default_value_t = 2000)]
    calls: usize,
    /// A Redis server to use instead of starting one.
    #[arg(long)]
    redis_url: Option<String>,
    /// Concurrent writers in the group-commit table (each on its own key).
    #[arg(long, default_value_t = 16)]
    writers: usize,
    /// Writes per writer in the group-commit table.
    #[arg(long, default_value_t = 250)]
    writes: usize,
}

fn limits() -> Limits {
    Limits {
        request_timeout_ms: 300_000,
        ..Limits::default()
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index] as f64 / 1000.0
}

struct Row {
    operation: String,
    backend: String,
    path: String,
    p50_us: f64,
    p99_us: f64,
}

impl Row {
    fn new(operation: &str, backend: &str, path: &str, mut nanos: Vec<u64>) -> Row {
        nanos.sort_unstable();
        Row {
            operation: operation.into(),
            backend: backend.into(),
            path: path.into(),
            p50_us: percentile(&nanos, 0.5),
            p99_us: percentile(&nanos, 0.99),
        }
    }
}

/// Runs the benchmark and prints its table.
pub fn capabilities(args: CapabilitiesArgs) -> Result<()> {
    crate::two_worker_runtime()?.block_on(run(args))
}

async fn run(args: CapabilitiesArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let _redis_server;
    let redis_url = match &args.redis_url {
        Some(url) => url.clone(),
        None => {
            let server = hearth_testkit::services::RedisServer::start();
            let url = server.url();
            _redis_server = server;
            url
        }
    };
    let backends: Vec<(&str, Arc<dyn StateBackend>)> = vec![
        (
            "embedded",
            Arc::new(
                hearth_state::embedded::EmbeddedBackend::open(&dir.path().join("bench.redb"))
                    .map_err(anyhow::Error::msg)?,
            ),
        ),
        (
            "redis",
            Arc::new(
                hearth_state::redis::RedisBackend::new(&redis_url, Duration::from_secs(5))
                    .map_err(anyhow::Error::msg)?,
            ),
        ),
    ];
    let mut rows = Vec::new();
    let mut concurrent_rows = Vec::new();
    for (kind, backend) in backends {
        let store = StateStore::new("statestore", backend, StateLimits::default());
        let sidecar = start_sidecar(store.clone()).await?;
        let host = host_with(Some(store.clone()), InvokeSettings::default())?;
        let bench = serve(&host, "capability-bench", hearth_testkit::CAPABILITY_BENCH).await?;
        if kind == "embedded" {
            let nanos = guest_timings(bench, &format!("/config?n={}", args.calls)).await?;
            rows.push(Row::new(
                "config get",
                "-",
                "host call, no backend (wasi:config)",
                nanos,
            ));
        }
        for op in ["get", "set"] {
            // On a worker task, as the guest's calls are: the runtime's
            // main thread would add a cross-thread wake-up to every I/O.
            let backend_alone = tokio::spawn({
                let (store, calls) = (store.clone(), args.calls);
                async move { backend_timings(&store, op, "bench", calls).await }
            })
            .await??;
            rows.push(Row::new(
                op,
                kind,
                "backend alone (StateStore, in-process Rust)",
                backend_alone,
            ));
            let host_call =
                guest_timings(bench, &format!("/state?op={op}&n={}", args.calls)).await?;
            let via_wasi_http = guest_timings(
                bench,
                &format!("/sidecar?op={op}&n={}&addr={sidecar}", args.calls),
            )
            .await?;
            let native = native_sidecar_timings(sidecar, op, "bench", args.calls).await?;
            rows.push(Row::new(
                op,
                kind,
                "host call (hearth:function/state)",
                host_call,
            ));
            rows.push(Row::new(
                op,
                kind,
                "sidecar hop, from the guest (wasi:http)",
                via_wasi_http,
            ));
            rows.push(Row::new(
                op,
                kind,
                "sidecar hop, native keep-alive client",
                native,
            ));
        }
        if kind == "embedded" {
            concurrent_rows =
                concurrent_writes(&store, bench, sidecar, args.writers, args.writes).await?;
        }
    }

    // Invoke: echo loaded here (local fast path) and on a second host (HTTP).
    let remote_host = host_with(None, InvokeSettings::default())?;
    let remote_echo = serve(&remote_host, "echo", hearth_testkit::ECHO).await?;
    let host = host_with(
        None,
        InvokeSettings {
            targets: BTreeMap::from([("echo-remote".to_string(), format!("http://{remote_echo}"))]),
            ..InvokeSettings::default()
        },
    )?;
    serve(&host, "echo-local", hearth_testkit::ECHO).await?;
    let bench = serve(&host, "capability-bench", hearth_testkit::CAPABILITY_BENCH).await?;
    for (target, path) in [
        (
            "echo-local",
            "invoke, local fast path (pool instance, no socket)",
        ),
        ("echo-remote", "invoke, HTTP path (loopback)"),
    ] {
        let nanos =
            guest_timings(bench, &format!("/invoke?target={target}&n={}", args.calls)).await?;
        rows.push(Row::new("invoke echo", "-", path, nanos));
    }

    println!("| operation | backend | path | p50 µs | p99 µs | p50 × host call |");
    println!("|---|---|---|---:|---:|---:|");
    let mut base = BTreeMap::new();
    for row in &rows {
        if row.path.starts_with("host call") {
            base.insert((row.operation.clone(), row.backend.clone()), row.p50_us);
        }
        let ratio = base
            .get(&(row.operation.clone(), row.backend.clone()))
            .filter(|_| row.path.starts_with("sidecar") || row.path.starts_with("invoke, HTTP"))
            .map_or(String::new(), |base| format!("{:.1}×", row.p50_us / base));
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {ratio} |",
            row.operation, row.backend, row.path, row.p50_us, row.p99_us
        );
    }
    println!();
    println!(
        "{} calls per row, timed inside the guest with wasi:clocks (native client: in this process).",
        args.calls
    );
    println!();
    println!(
        "| writers | backend | path | writes/s | p50 µs | p99 µs | CPU µs/write (whole process) | × sidecar hop from the guest |"
    );
    println!("|---:|---|---|---:|---:|---:|---:|---:|");
    let sidecar_rate = concurrent_rows
        .iter()
        .find(|(row, ..)| row.path.starts_with("sidecar hop, from the guest"))
        .map(|(_, rate, _)| *rate);
    for (row, rate, cpu) in &concurrent_rows {
        let ratio = sidecar_rate
            .filter(|_| row.path.starts_with("host call"))
            .map_or(String::new(), |base| format!("{:.1}×", rate / base));
        println!(
            "| {} | embedded | {} | {rate:.0} | {:.1} | {:.1} | {cpu:.0} | {ratio} |",
            args.writers, row.path, row.p50_us, row.p99_us
        );
    }
    println!();
    println!(
        "{} writes per writer, each on its own key, all started at once; writes/s = all writes / wall time.",
        args.writes
    );
    Ok(())
}

/// `writers` concurrent writers of `writes` sets each, on keys of their
/// own, through each path to the embedded `store`: rows with writes/s.
async fn concurrent_writes(
    store: &StateStore,
    bench: SocketAddr,
    sidecar: SocketAddr,
    writers: usize,
    writes: usize,
) -> Result<Vec<(Row, f64, f64)>> {
    let mut rows = Vec::new();
    let paths = [
        "backend alone (StateStore, in-process Rust)",
        "host call (hearth:function/state)",
        "sidecar hop, from the guest (wasi:http)",
        "sidecar hop, native keep-alive clients",
    ];
    for path in paths {
        let started = Instant::now();
        let cpu_before = crate::cpu_time(None)?;
        let tasks: Vec<_> = (0..writers)
            .map(|writer| {
                let store = store.clone();
                let key = format!("writer{writer}");
                tokio::spawn(async move {
                    match path {
                        p if p.starts_with("backend") => {
                            backend_timings(&store, "set", &key, writes).await
                        }
                        p if p.starts_with("host call") => {
                            guest_timings(bench, &format!("/state?op=set&n={writes}&key={key}"))
                                .await
                        }
                        p if p.starts_with("sidecar hop, from the guest") => {
                            guest_timings(
                                bench,
                                &format!("/sidecar?op=set&n={writes}&addr={sidecar}&key={key}"),
                            )
                            .await
                        }
                        _ => native_sidecar_timings(sidecar, "set", &key, writes).await,
                    }
                })
            })
            .collect();
        let mut nanos = Vec::with_capacity(writers * writes);
        for task in tasks {
            nanos.extend(task.await??);
        }
        let rate = nanos.len() as f64 / started.elapsed().as_secs_f64();
        let cpu_per_write =
            (crate::cpu_time(None)? - cpu_before).as_secs_f64() * 1e6 / nanos.len() as f64;
        rows.push((
            Row::new("set", "embedded", path, nanos),
            rate,
            cpu_per_write,
        ));
    }
    Ok(rows)
}

fn host_with(store: Option<StateStore>, invoke: InvokeSettings) -> Result<Arc<Host>> {
    let host = Host::new(&EngineSettings::for_limits([&limits()]))?;
    let stores: BTreeMap<String, StateStore> = store
        .into_iter()
        .map(|store| (store.label().to_string(), store))
        .collect();
    host.install_capabilities(
        HostCapabilities::new(stores, None, invoke)
            .with_invoker(hearth_host::http::LocalInvoker::for_host(&host)),
    )
    .map_err(anyhow::Error::msg)?;
    Ok(host)
}

async fn serve(host: &Arc<Host>, name: &str, path: &str) -> Result<SocketAddr> {
    let mut env = FunctionEnv::new(name);
    env.limits = limits();
    env.allowed_outbound_hosts = Arc::from(vec!["127.0.0.1".to_string()]);
    let function = host.load(env, hearth_testkit::wasm_bytes(path)).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(hearth_host::http::serve(
        function,
        listener,
        std::future::pending(),
    ));
    Ok(addr)
}

/// Per-call nanoseconds the guest reports for `path`.
async fn guest_timings(bench: SocketAddr, path: &str) -> Result<Vec<u64>> {
    let reply =
        hearth_testkit::http::send(bench, http::Method::POST, path, &[], Bytes::new()).await?;
    if reply.status != StatusCode::OK {
        bail!("{path}: {} {}", reply.status, reply.text());
    }
    reply
        .text()
        .lines()
        .map(|line| line.parse().context("a timing line"))
        .collect()
}

/// A Dapr-style state API over HTTP/1 in front of `store`:
/// `GET /v1.0/state/NAME/KEY` (200 with the value, 204 if absent) and
/// `POST /v1.0/state/NAME` with `[{"key": "...", "value": "..."}]` (204).
async fn start_sidecar(store: StateStore) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let ns = Namespace::new("sidecar").map_err(anyhow::Error::msg)?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (store, ns) = (store.clone(), ns.clone());
            let service = hyper::service::service_fn(
                move |request: Request<hyper::body::Incoming>| {
                    let (store, ns) = (store.clone(), ns.clone());
                    async move { Ok::<_, std::convert::Infallible>(sidecar(&store, &ns, request).await) }
                },
            );
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    Ok(addr)
}

async fn sidecar(
    store: &StateStore,
    ns: &Namespace,
    request: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let respond = |status: StatusCode, body: Vec<u8>| {
        Response::builder()
            .status(status)
            .body(Full::new(Bytes::from(body)))
            .expect("valid response")
    };
    let path = request.uri().path().to_string();
    let Some(rest) = path.strip_prefix("/v1.0/state/") else {
        return respond(StatusCode::NOT_FOUND, b"no such route".to_vec());
    };
    if request.method() == http::Method::GET {
        let key = rest.split_once('/').map_or("", |(_, key)| key).to_string();
        return match store.get(ns, &key).await {
            Ok(Some(entry)) => respond(StatusCode::OK, entry.value),
            Ok(None) => respond(StatusCode::NO_CONTENT, Vec::new()),
            Err(error) => respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                error.to_string().into_bytes(),
            ),
        };
    }
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => return respond(StatusCode::BAD_REQUEST, error.to_string().into_bytes()),
    };
    let items: Vec<serde_json::Value> = match serde_json::from_slice(&body) {
        Ok(items) => items,
        Err(error) => return respond(StatusCode::BAD_REQUEST, error.to_string().into_bytes()),
    };
    for item in items {
        let key = item["key"].as_str().unwrap_or_default();
        let value = item["value"].as_str().unwrap_or_default();
        if let Err(error) = store
            .set(ns, key, value.as_bytes(), Precondition::None, None)
            .await
        {
            return respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                error.to_string().into_bytes(),
            );
        }
    }
    respond(StatusCode::NO_CONTENT, Vec::new())
}

/// The backend without any boundary: `StateStore` called from Rust.
async fn backend_timings(
    store: &StateStore,
    op: &'static str,
    key: &str,
    calls: usize,
) -> Result<Vec<u64>> {
    let ns = Namespace::new("direct").map_err(anyhow::Error::msg)?;
    let value = [b'v'; 100];
    store
        .set(&ns, key, &value, Precondition::None, None)
        .await?;
    let mut nanos = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        if op == "set" {
            store
                .set(&ns, key, &value, Precondition::None, None)
                .await?;
        } else {
            store.get(&ns, key).await?;
        }
        nanos.push(started.elapsed().as_nanos() as u64);
    }
    Ok(nanos)
}

/// The sidecar hop from a native client on one keep-alive connection.
async fn native_sidecar_timings(
    sidecar: SocketAddr,
    op: &str,
    key: &str,
    calls: usize,
) -> Result<Vec<u64>> {
    let stream = tokio::net::TcpStream::connect(sidecar).await?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let body = format!("[{{\"key\":\"{key}\",\"value\":\"{}\"}}]", "v".repeat(100));
    let mut nanos = Vec::with_capacity(calls);
    for i in 0..calls + 1 {
        let request = if op == "set" {
            Request::post("/v1.0/state/statestore")
                .header("host", sidecar.to_string())
                .body(Full::new(Bytes::from(body.clone())))?
        } else {
            Request::get(format!("/v1.0/state/statestore/{key}"))
                .header("host", sidecar.to_string())
                .body(Full::new(Bytes::new()))?
        };
        let started = Instant::now();
        sender
            .ready()
            .await
            .context("the sidecar connection closed")?;
        let response = sender
            .send_request(request)
            .await
            .with_context(|| format!("native sidecar {op}, call {i}"))?;
        let status = response.status();
        response.into_body().collect().await?;
        if !status.is_success() {
            bail!("sidecar answered {status}");
        }
        // The first call also writes the value the gets read.
        if i > 0 {
            nanos.push(started.elapsed().as_nanos() as u64);
        }
    }
    Ok(nanos)
}
