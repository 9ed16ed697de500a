//! `hearth-store`: a storage node. Serves one blob backend (`fs` or `s3`)
//! to hearthd's `remote` blob stores over TCP, with object data read
//! one-sided out of a pool of registered buffers (see `hearth_store_node::serve`),
//! and a hot in-memory tier in front of the backend
//! (`hearth_store_node::tiered`; `--hot-mib 0` turns it off).
//!
//! ```text
//! hearth-store --listen 0.0.0.0:7480 --hosts /etc/hearth-store/hosts.toml --fs /var/lib/hearth-store
//! hearth-store --listen 0.0.0.0:7480 --hosts FILE --s3-endpoint http://s3:9000 --s3-bucket blobs
//! # built with --features rdma: also serve over verbs, QP setup on :7481
//! hearth-store --listen 0.0.0.0:7480 --hosts FILE --fs DIR --rdma-device mlx5_0 --rdma-listen 0.0.0.0:7481
//! # the line a hosts file needs for a host's token file
//! hearth-store --hash-token /etc/hearth/store-token
//! ```
//!
//! It serves only the hosts of its `--hosts` file, each in its scope
//! (see `hearth_store_node::access`), unless started with `--no-auth`
//! (anyone who can connect, unscoped: for a node only its host can reach);
//! one of the two must be given. `--metrics-listen ADDR` serves
//! `/metrics` (`hearth_store_node::metrics`).
//!
//! It logs `hearth-store listening on ADDR` once it accepts connections,
//! and exits 2 with the reason on bad arguments, a bad hosts file or a
//! backend it cannot open.

use clap::Parser;
use hearth_blob::fs::FsBackend;
use hearth_blob::regions::{BufferPool, RegionTable};
use hearth_blob::s3::{S3Backend, S3Settings};
use hearth_blob::{BlobBackend, BlobLimits, BlobStore};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "hearth-store", version, about = "Hearth's blob storage node")]
struct Args {
    /// Where to accept connections.
    #[arg(long, default_value = "127.0.0.1:7480")]
    listen: SocketAddr,
    /// The hosts it serves: their tokens' SHA-256 and scopes (TOML).
    #[arg(long, conflicts_with = "no_auth")]
    hosts: Option<PathBuf>,
    /// Serve anyone who can connect, unscoped (no tokens).
    #[arg(long)]
    no_auth: bool,
    /// Print the `token_sha256` of the token in FILE for a hosts file, and
    /// exit.
    #[arg(long, value_name = "FILE", exclusive = true)]
    hash_token: Option<PathBuf>,
    /// How long a new connection has to say hello, in ms.
    #[arg(long, default_value_t = 10_000)]
    hello_timeout_ms: u64,
    /// Connections one IP address may hold that have not said hello yet.
    #[arg(long, default_value_t = 16)]
    max_pending_hellos_per_peer: usize,
    /// Serve Prometheus metrics at `/metrics` here.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Serve a directory (the `fs` backend).
    #[arg(long, conflicts_with = "s3_endpoint")]
    fs: Option<PathBuf>,
    /// Serve a bucket of an S3-compatible server.
    #[arg(long, requires = "s3_bucket")]
    s3_endpoint: Option<String>,
    /// The bucket (it must exist).
    #[arg(long)]
    s3_bucket: Option<String>,
    /// The region requests are signed for.
    #[arg(long, default_value = "us-east-1")]
    s3_region: String,
    /// Access key id (else $AWS_ACCESS_KEY_ID).
    #[arg(long, env = "AWS_ACCESS_KEY_ID", default_value = "")]
    s3_access_key: String,
    /// Secret (else $AWS_SECRET_ACCESS_KEY).
    #[arg(
        long,
        env = "AWS_SECRET_ACCESS_KEY",
        default_value = "",
        hide_env_values = true
    )]
    s3_secret_key: String,
    /// Size of each registered read buffer, in KiB.
    #[arg(long, default_value_t = 1024)]
    buffer_kib: usize,
    /// Registered read buffers at most (one per read in progress).
    #[arg(long, default_value_t = 64)]
    buffers: usize,
    /// The largest object, in MiB.
    #[arg(long, default_value_t = 1024)]
    max_object_mib: u64,
    /// The hot tier's size in MiB (0: no hot tier).
    #[arg(long, default_value_t = 256)]
    hot_mib: u64,
    /// The largest object the hot tier keeps, in MiB.
    #[arg(long, default_value_t = 16)]
    hot_max_object_mib: u64,
    /// Connections served at once; more are closed on accept.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// How long a client may hold a read buffer before it is cut off, in ms.
    #[arg(long, default_value_t = 30_000)]
    lease_timeout_ms: u64,
    /// Also serve over RDMA verbs on this device (built with `--features
    /// rdma`); read buffers are then registered with it.
    #[cfg(feature = "rdma")]
    #[arg(long, requires = "rdma_listen")]
    rdma_device: Option<String>,
    /// Where RDMA clients set up their queue pairs (a TCP address).
    #[cfg(feature = "rdma")]
    #[arg(long)]
    rdma_listen: Option<std::net::SocketAddr>,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if let Some(path) = &args.hash_token {
        return match hearth_blob::remote::read_token_file(path) {
            Ok(token) => {
                println!("{}", hearth_store_node::access::token_digest(&token));
                std::process::ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("error: --hash-token {message}");
                std::process::ExitCode::from(2)
            }
        };
    }
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            eprintln!("error: {message}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let access = match (&args.hosts, args.no_auth) {
        (Some(path), false) => {
            let table = hearth_store_node::access::HostTable::load(path)
                .map_err(|e| format!("--hosts {e}"))?;
            tracing::info!(
                hosts = table.len(),
                "serving the hosts of {}",
                path.display()
            );
            hearth_store_node::access::Access::Hosts(table)
        }
        (None, true) => {
            tracing::warn!("--no-auth: serving anyone who can connect, unscoped");
            hearth_store_node::access::Access::Open
        }
        _ => {
            return Err(
                "give --hosts FILE (the hosts it serves, by token) or --no-auth (anyone who can connect)"
                    .into(),
            );
        }
    };
    let backend: Arc<dyn BlobBackend> = match (&args.fs, &args.s3_endpoint) {
        (Some(dir), None) => {
            Arc::new(FsBackend::open(dir).map_err(|e| format!("--fs {}: {e}", dir.display()))?)
        }
        (None, Some(endpoint)) => Arc::new(
            S3Backend::connect(&S3Settings {
                endpoint: endpoint.clone(),
                bucket: args.s3_bucket.clone().unwrap_or_default(),
                region: args.s3_region.clone(),
                credentials: (args.s3_access_key.clone(), args.s3_secret_key.clone()),
                timeout: Duration::from_secs(30),
            })
            .map_err(|e| format!("--s3-endpoint {endpoint}: {e}"))?,
        ),
        _ => return Err("give --fs DIR or --s3-endpoint URL --s3-bucket NAME".into()),
    };
    if args.buffer_kib == 0 || args.buffers == 0 {
        return Err("--buffer-kib and --buffers must be at least 1".into());
    }
    if args.max_connections == 0
        || args.lease_timeout_ms == 0
        || args.hello_timeout_ms == 0
        || args.max_pending_hellos_per_peer == 0
    {
        return Err(
            "--max-connections, --lease-timeout-ms, --hello-timeout-ms and --max-pending-hellos-per-peer must be at least 1"
                .into(),
        );
    }
    let options = hearth_store_node::serve::ServeOptions {
        max_connections: args.max_connections,
        lease_timeout: Duration::from_millis(args.lease_timeout_ms),
        hello_timeout: Duration::from_millis(args.hello_timeout_ms),
        max_pending_hellos_per_peer: args.max_pending_hellos_per_peer,
        access: Arc::new(access),
        metrics: Arc::default(),
    };
    let kind = backend.kind();
    let backend: Arc<dyn BlobBackend> = if args.hot_mib == 0 {
        backend
    } else {
        Arc::new(hearth_store_node::tiered::TieredBackend::new(
            backend,
            args.hot_mib << 20,
            args.hot_max_object_mib << 20,
        ))
    };
    let store = BlobStore::new(
        "node",
        backend,
        BlobLimits {
            max_object_bytes: args.max_object_mib << 20,
            ..BlobLimits::default()
        },
    );
    #[cfg(feature = "rdma")]
    let rdma_device = match &args.rdma_device {
        Some(name) => Some(
            hearth_blob::rdma::VerbsDevice::open(name)
                .map_err(|e| format!("--rdma-device: {e}"))?,
        ),
        None => None,
    };
    #[cfg(feature = "rdma")]
    let regions = Arc::new(match &rdma_device {
        Some(device) => RegionTable::with_registrar(device.clone()),
        None => RegionTable::default(),
    });
    #[cfg(not(feature = "rdma"))]
    let regions = Arc::new(RegionTable::default());
    let pool = BufferPool::new(regions.clone(), args.buffer_kib << 10, args.buffers);
    #[cfg(feature = "rdma")]
    if let (Some(device), Some(rdma_listen)) = (rdma_device, args.rdma_listen) {
        let listener = tokio::net::TcpListener::bind(rdma_listen)
            .await
            .map_err(|e| format!("--rdma-listen {rdma_listen}: {e}"))?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(
            device = device.name(),
            "hearth-store serving RDMA, setup on {bound}"
        );
        tokio::spawn(hearth_store_node::serve::serve_rdma(
            listener,
            device,
            store.clone(),
            pool.clone(),
            regions.clone(),
            options.clone(),
        ));
    }
    if let Some(metrics_listen) = args.metrics_listen {
        let listener = tokio::net::TcpListener::bind(metrics_listen)
            .await
            .map_err(|e| format!("--metrics-listen {metrics_listen}: {e}"))?;
        let (metrics, pool) = (options.metrics.clone(), pool.clone());
        tracing::info!(
            "hearth-store metrics on http://{}/metrics",
            listener.local_addr().map_err(|e| e.to_string())?
        );
        tokio::spawn(hearth_store_node::metrics::serve_metrics(
            listener,
            Arc::new(move || metrics.render(pool.stats().in_use)),
        ));
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("--listen {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(
        backend = kind,
        buffers = args.buffers,
        buffer_kib = args.buffer_kib,
        hot_mib = args.hot_mib,
        "hearth-store listening on {addr}"
    );
    tokio::select! {
        served = hearth_store_node::serve::serve_tcp_with(listener, store, pool, regions, options) => {
            served.map_err(|e| format!("accepting on {addr}: {e}"))
        }
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
