//! `hearth-bench blob`: blob storage throughput and latency per backend and
//! object size, CPU time per GB on both sides of the remote path, and
//! copies per byte read.
//!
//! * Backends: `fs` (a temp dir, in this process), `s3` (a moto server the
//!   bench starts, see the README), `remote-tcp` (a `hearth-store`
//!   process serving `fs` over TCP, with its default hot tier), and, when
//!   `--rdma-device` names one, `remote-rdma` (the same node over verbs,
//!   writes as SENDs of messages: a remote store's default) and
//!   `remote-rdma-write` (writes one-sided, RDMA WRITEs into buffers the
//!   node offers: `writes = "one-sided"`; both binaries built with
//!   `--features rdma`). With RDMA rows, a second
//!   table gives each RDMA row against `remote-tcp` in the same run.
//! * Per size (4 KiB, 1 MiB, 64 MiB): `--samples` writes of distinct
//!   objects, then as many whole reads of them, one at a time; MB/s is the
//!   bytes moved over the summed call times, p50/p99 are per call.
//! * CPU: this process's user+system time over the run of a row (the
//!   client: for `fs` and `s3` that is all of Hearth's side), and the
//!   storage node's, from `/proc/PID/stat`, for remote rows; per GB moved.
//! * Copies per byte read: counted by `hearth_blob::copy_meter` while
//!   `blob-roundtrip` reads 1 MiB objects into guest memory (`/digest`)
//!   from a remote node in this process over TCP (and over verbs, with a
//!   device) (node: backend chunk → registered buffer; host: landed bytes
//!   → what wasmtime copies into guest memory), plus that one copy into
//!   guest memory every read ends with.

use anyhow::{Result, bail};
use clap::Parser;
use hearth_blob::remote::WriteMode;
use hearth_blob::{BlobBackend, BlobLimits, BlobStore, ByteRange};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
pub struct BlobArgs {
    /// The `hearth-store` binary for the remote rows.
    #[arg(long, default_value = "target/release/hearth-store")]
    store_bin: PathBuf,
    /// Calls per row for 4 KiB and 1 MiB objects (64 MiB rows use a tenth,
    /// at least 3).
    #[arg(long, default_value_t = 100)]
    samples: usize,
    /// Rows to run: any of fs, s3, remote-tcp, remote-rdma,
    /// remote-rdma-write (the two RDMA rows are added when a device is
    /// named).
    #[arg(long, value_delimiter = ',', default_value = "fs,s3,remote-tcp")]
    backends: Vec<String>,
    /// An RDMA device (e.g. `rxe0`) for the verbs rows; they are skipped,
    /// with a line saying so, without one.
    #[arg(long, env = "HEARTH_RDMA_DEVICE")]
    rdma_device: Option<String>,
}

const SIZES: [(usize, &str); 3] = [(4 << 10, "4 KiB"), (1 << 20, "1 MiB"), (64 << 20, "64 MiB")];

/// Runs the benchmark and prints its table.
pub fn blob(args: BlobArgs) -> Result<()> {
    crate::two_worker_runtime()?.block_on(run(args))
}

fn quantiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort_unstable();
    let at = |q: f64| {
        samples[((samples.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0
    };
    (at(0.5), at(0.99))
}

struct Row {
    backend: String,
    size: &'static str,
    op: &'static str,
    mb_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    client_cpu_s_per_gb: f64,
    node_cpu_s_per_gb: Option<f64>,
}

/// A `hearth-store` child process.
struct StoreNode {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    /// Where RDMA clients set up queue pairs (when serving verbs).
    #[cfg_attr(not(feature = "rdma"), allow(dead_code))]
    rdma_addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl StoreNode {
    /// Starts `bin` serving a temp dir over TCP, and over RDMA on
    /// `rdma_device` too when given (its setup address is `rdma_addr`).
    fn start(bin: &PathBuf, rdma_device: Option<&str>) -> Result<Self> {
        if !bin.exists() {
            bail!(
                "{} is missing: build it with `cargo build --release -p hearth-store-node --bin hearth-store` (scripts/bench-blob.sh does)",
                bin.display()
            );
        }
        let dir = tempfile::tempdir()?;
        let loopback = |port| std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let addr = loopback(hearth_testkit::services::free_port());
        let rdma_addr = loopback(hearth_testkit::services::free_port());
        let mut command = std::process::Command::new(bin);
        command
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--fs")
            .arg(dir.path())
            // Authentication costs one hello per pooled connection, which
            // these rows do not measure.
            .arg("--no-auth")
            .stderr(std::process::Stdio::null());
        if let Some(device) = rdma_device {
            command
                .args(["--rdma-device", device, "--rdma-listen"])
                .arg(rdma_addr.to_string());
        }
        let child = command.spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                bail!("hearth-store did not listen on {addr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        while rdma_device.is_some() && std::net::TcpStream::connect(rdma_addr).is_err() {
            if Instant::now() > deadline {
                bail!("hearth-store did not listen for RDMA setup on {rdma_addr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(StoreNode {
            child,
            addr,
            rdma_addr,
            _dir: dir,
        })
    }
}

impl Drop for StoreNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What keeps a backend alive until the row is done.
type KeepAlive = Box<dyn std::any::Any>;

fn limits() -> BlobLimits {
    BlobLimits {
        max_object_bytes: 128 << 20,
        ..Default::default()
    }
}

async fn open(
    backend: &str,
    args: &BlobArgs,
) -> Result<(KeepAlive, Arc<dyn BlobBackend>, Option<u32>)> {
    Ok(match backend {
        "fs" => {
            let dir = tempfile::tempdir()?;
            let fs = hearth_blob::fs::FsBackend::open(dir.path())?;
            (Box::new(dir), Arc::new(fs), None)
        }
        "s3" => {
            let server = hearth_testkit::services::S3Server::start();
            server.create_bucket("bench");
            let s3 = hearth_blob::s3::S3Backend::connect(&hearth_blob::s3::S3Settings {
                endpoint: server.endpoint(),
                bucket: "bench".into(),
                region: hearth_testkit::services::S3Server::REGION.into(),
                credentials: (
                    hearth_testkit::services::S3Server::CREDENTIALS.0.into(),
                    hearth_testkit::services::S3Server::CREDENTIALS.1.into(),
                ),
                timeout: Duration::from_secs(120),
            })?;
            (Box::new(server), Arc::new(s3), None)
        }
        "remote-rdma" => remote_rdma(args, WriteMode::Messages)?,
        "remote-rdma-write" => remote_rdma(args, WriteMode::OneSided)?,
        "remote-tcp" => {
            let node = StoreNode::start(&args.store_bin, None)?;
            let remote = hearth_blob::remote::RemoteBackend::new(
                hearth_blob::remote::tcp_connector(node.addr, Duration::from_secs(30)),
            );
            let pid = node.child.id();
            (Box::new(node), Arc::new(remote), Some(pid))
        }
        other => {
            bail!("unknown backend `{other}` (fs, s3, remote-tcp, remote-rdma, remote-rdma-write)")
        }
    })
}

/// A `hearth-store` serving over verbs on `--rdma-device`, and a client
/// connected through the same device, writing as `mode` says.
#[cfg(feature = "rdma")]
fn remote_rdma(
    args: &BlobArgs,
    mode: WriteMode,
) -> Result<(KeepAlive, Arc<dyn BlobBackend>, Option<u32>)> {
    use anyhow::Context as _;
    let device_name = args
        .rdma_device
        .as_deref()
        .context("remote-rdma needs --rdma-device or HEARTH_RDMA_DEVICE")?;
    let node = StoreNode::start(&args.store_bin, Some(device_name))?;
    let device = hearth_blob::rdma::VerbsDevice::open(device_name).map_err(anyhow::Error::msg)?;
    let remote = hearth_blob::remote::RemoteBackend::new(hearth_blob::rdma::rdma_connector(
        device,
        node.rdma_addr,
        Duration::from_secs(30),
    ))
    .with_write_mode(mode);
    let pid = node.child.id();
    Ok((Box::new(node), Arc::new(remote), Some(pid)))
}

#[cfg(not(feature = "rdma"))]
fn remote_rdma(
    _args: &BlobArgs,
    _mode: WriteMode,
) -> Result<(KeepAlive, Arc<dyn BlobBackend>, Option<u32>)> {
    bail!(
        "remote-rdma: this hearth-bench was built without `--features rdma` (scripts/bench-blob.sh builds it so when HEARTH_RDMA_DEVICE is set)"
    )
}

async fn measure(backend_name: &str, args: &BlobArgs, rows: &mut Vec<Row>) -> Result<()> {
    let (_keep, backend, node_pid) = open(backend_name, args).await?;
    let store = BlobStore::new(backend_name, backend, limits());
    store.create_container("bench").await?;
    for (size, size_name) in SIZES {
        let samples = if size >= 64 << 20 {
            (args.samples / 10).max(3)
        } else {
            args.samples
        };
        let data = bytes::Bytes::from(
            (0..size)
                .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1])
                .collect::<Vec<u8>>(),
        );
        for op in ["write", "read"] {
            let (client_before, node_before) = (
                crate::cpu_time(None)?,
                node_pid.map(|p| crate::cpu_time(Some(p))),
            );
            let mut latencies = Vec::with_capacity(samples);
            for sample in 0..samples {
                let name = format!("{size_name}-{sample}");
                let started = Instant::now();
                if op == "write" {
                    store.put_bytes("bench", &name, data.clone()).await?;
                } else {
                    let read = store.get_bytes("bench", &name, ByteRange::ALL).await?;
                    anyhow::ensure!(read.len() == size, "short read of {name}");
                }
                latencies.push(started.elapsed());
            }
            let total: Duration = latencies.iter().sum();
            let gb = (size * samples) as f64 / 1e9;
            let client_cpu = (crate::cpu_time(None)? - client_before).as_secs_f64();
            let node_cpu = match (node_pid, node_before) {
                (Some(pid), Some(before)) => {
                    Some((crate::cpu_time(Some(pid))? - before?).as_secs_f64())
                }
                _ => None,
            };
            let (p50_ms, p99_ms) = quantiles(latencies);
            rows.push(Row {
                backend: backend_name.into(),
                size: size_name,
                op,
                mb_per_s: (size * samples) as f64 / 1e6 / total.as_secs_f64(),
                p50_ms,
                p99_ms,
                client_cpu_s_per_gb: client_cpu / gb,
                node_cpu_s_per_gb: node_cpu.map(|cpu| cpu / gb),
            });
        }
        for sample in 0..samples {
            store
                .delete("bench", &format!("{size_name}-{sample}"))
                .await?;
        }
    }
    Ok(())
}

/// A storage node in this process serving a temp dir over TCP, or over
/// verbs on `rdma_device`; what keeps it alive, and a connector to it.
async fn node_in_process(
    rdma_device: Option<&str>,
) -> Result<(KeepAlive, hearth_blob::remote::Connector)> {
    let dir = tempfile::tempdir()?;
    let node = BlobStore::new(
        "node",
        Arc::new(hearth_blob::fs::FsBackend::open(dir.path())?),
        limits(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let node_addr = listener.local_addr()?;
    let Some(device_name) = rdma_device else {
        let regions = Arc::new(hearth_blob::regions::RegionTable::default());
        let pool = hearth_blob::regions::BufferPool::new(regions.clone(), 1 << 20, 8);
        let server = tokio::spawn(hearth_store_node::serve::serve_tcp(
            listener, node, pool, regions,
        ));
        return Ok((
            Box::new((dir, AbortOnDrop(server))),
            hearth_blob::remote::tcp_connector(node_addr, Duration::from_secs(10)),
        ));
    };
    #[cfg(feature = "rdma")]
    {
        let device =
            hearth_blob::rdma::VerbsDevice::open(device_name).map_err(anyhow::Error::msg)?;
        let regions = Arc::new(hearth_blob::regions::RegionTable::with_registrar(
            device.clone(),
        ));
        let pool = hearth_blob::regions::BufferPool::new(regions.clone(), 1 << 20, 8);
        let server = tokio::spawn(hearth_store_node::serve::serve_rdma(
            listener,
            device.clone(),
            node,
            pool,
            regions,
            Default::default(),
        ));
        Ok((
            Box::new((dir, AbortOnDrop(server))),
            hearth_blob::rdma::rdma_connector(device, node_addr, Duration::from_secs(10)),
        ))
    }
    #[cfg(not(feature = "rdma"))]
    bail!("{device_name}: this hearth-bench was built without `--features rdma`")
}

/// Ends a task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads 1 MiB objects into guest memory with `blob-roundtrip`'s
/// `/digest` (`wasi:blobstore` → `wasi:io` blocking reads) on a host whose blob
/// store is a remote node in this process, over TCP or, with
/// `rdma_device`, over verbs; returns (node, client) copies per byte
/// read, as `copy_meter` counted them.
async fn copies_per_byte(rdma_device: Option<&str>) -> Result<(f64, f64)> {
    let (_node, connector) = node_in_process(rdma_device).await?;
    let remote = BlobStore::new(
        "remote",
        Arc::new(hearth_blob::remote::RemoteBackend::new(connector)),
        limits(),
    );
    let function_limits = hearth_host::Limits {
        request_timeout_ms: 30_000,
        max_memory_mib: 64,
        max_request_body_bytes: 8 << 20,
        max_concurrent_instances: 4,
        ..hearth_host::Limits::default()
    };
    let host =
        hearth_host::Host::new(&hearth_host::EngineSettings::for_limits([&function_limits]))?;
    host.install_capabilities(
        hearth_host::capabilities::HostCapabilities::new(
            Default::default(),
            None,
            Default::default(),
        )
        .with_blob_stores(
            std::collections::BTreeMap::from([("remote".to_string(), remote)]),
            None,
        )
        .with_invoker(hearth_host::http::LocalInvoker::for_host(&host)),
    )
    .map_err(anyhow::Error::msg)?;
    let mut env = hearth_host::FunctionEnv::new("blob-roundtrip");
    env.limits = function_limits;
    let function = host
        .load(
            env,
            hearth_testkit::wasm_bytes(hearth_testkit::BLOB_ROUNDTRIP),
        )
        .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(hearth_host::http::serve(
        function,
        listener,
        std::future::pending(),
    ));
    let data = bytes::Bytes::from(vec![7u8; 1 << 20]);
    for i in 0..16 {
        let path = format!("/objects/o{i}");
        let reply =
            hearth_testkit::http::send(addr, http::Method::PUT, &path, &[], data.clone()).await?;
        anyhow::ensure!(
            reply.status == http::StatusCode::CREATED,
            "{path}: {}",
            reply.text()
        );
    }
    let (node_before, client_before) = hearth_blob::copy_meter::totals();
    let mut read = 0u64;
    for i in 0..16 {
        // `/digest` reads the object into guest memory (`/objects` would
        // splice it to the response without it ever entering the guest).
        let reply = hearth_testkit::http::get(addr, &format!("/digest/o{i}")).await?;
        anyhow::ensure!(
            reply.text().starts_with(&format!("size {} ", data.len())),
            "o{i}: {}",
            reply.text()
        );
        read += data.len() as u64;
    }
    let (node_after, client_after) = hearth_blob::copy_meter::totals();
    Ok((
        (node_after - node_before) as f64 / read as f64,
        (client_after - client_before) as f64 / read as f64,
    ))
}

/// Each RDMA row against the `remote-tcp` row of the same size and op (a
/// software RDMA device under emulation is no NIC: the ratio is what
/// carries over, not the figures).
fn print_ratios(rows: &[Row]) {
    let rdma: Vec<&Row> = rows
        .iter()
        .filter(|row| row.backend.starts_with("remote-rdma"))
        .collect();
    if rdma.is_empty() {
        return;
    }
    println!();
    println!(
        "| backend | size | op | MB/s vs TCP | p50 vs TCP | p99 vs TCP | client CPU/GB vs TCP | node CPU/GB vs TCP |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|");
    for row in rdma {
        let Some(tcp) = rows
            .iter()
            .find(|t| t.backend == "remote-tcp" && t.size == row.size && t.op == row.op)
        else {
            continue;
        };
        let node = match (row.node_cpu_s_per_gb, tcp.node_cpu_s_per_gb) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
            _ => "-".into(),
        };
        println!(
            "| {} | {} | {} | {:.2}× | {:.2}× | {:.2}× | {:.2}× | {node} |",
            row.backend,
            row.size,
            row.op,
            row.mb_per_s / tcp.mb_per_s,
            row.p50_ms / tcp.p50_ms,
            row.p99_ms / tcp.p99_ms,
            row.client_cpu_s_per_gb / tcp.client_cpu_s_per_gb,
        );
    }
}

async fn run(args: BlobArgs) -> Result<()> {
    let mut rows = Vec::new();
    let mut backends = args.backends.clone();
    match &args.rdma_device {
        Some(_) => {
            for rdma in ["remote-rdma", "remote-rdma-write"] {
                if !backends.iter().any(|b| b == rdma) {
                    backends.push(rdma.into());
                }
            }
        }
        None => eprintln!(
            "remote-rdma: not run (no HEARTH_RDMA_DEVICE / --rdma-device names an RDMA device)"
        ),
    }
    for backend in &backends {
        eprintln!("measuring {backend} ...");
        measure(backend, &args, &mut rows).await?;
    }
    println!("| backend | size | op | MB/s | p50 ms | p99 ms | client CPU s/GB | node CPU s/GB |");
    println!("|---|---|---|---:|---:|---:|---:|---:|");
    for row in &rows {
        println!(
            "| {} | {} | {} | {:.1} | {:.3} | {:.3} | {:.2} | {} |",
            row.backend,
            row.size,
            row.op,
            row.mb_per_s,
            row.p50_ms,
            row.p99_ms,
            row.client_cpu_s_per_gb,
            row.node_cpu_s_per_gb
                .map_or("-".to_string(), |cpu| format!("{cpu:.2}")),
        );
    }
    print_ratios(&rows);
    let mut paths = vec![("TCP", None)];
    if let Some(device) = &args.rdma_device {
        paths.push(("RDMA verbs", Some(device.as_str())));
    }
    for (path, device) in paths {
        let (node, client) = copies_per_byte(device).await?;
        println!();
        println!(
            "| remote read path ({path}, 1 MiB objects, read into guest memory by blob-roundtrip /digest) | copies per byte read |"
        );
        println!("|---|---:|");
        println!("| storage node: backend chunk → registered buffer | {node:.2} |");
        println!("| host: landed bytes → what wasmtime copies into the guest | {client:.2} |");
        println!("| host → guest memory (wasmtime's copy into the guest's allocation) | 1.00 |");
        println!(
            "| between the wire and guest memory, in all | {:.2} |",
            client + 1.0
        );
    }
    Ok(())
}
