//! A real `docker-registry` (Debian's `docker-registry` package, the CNCF
//! distribution registry) for tests: loopback, a free port, a temp storage
//! directory, optional htpasswd auth, stopped by PID when dropped.
//!
//! Also [`FaultProxy`], an HTTP proxy in front of it that injects network
//! faults the registry itself would never produce on loopback: a fixed
//! status for every request, blob bodies cut short, or blob bodies that stall.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The registry binary from Debian's `docker-registry` package.
pub const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A running registry.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    storage: tempfile::TempDir,
    log: PathBuf,
}

impl Registry {
    /// Starts an anonymous registry.
    pub fn start() -> Self {
        Self::start_inner(None)
    }

    /// Starts a registry that requires HTTP basic auth as `user`/`password`.
    pub fn start_with_basic_auth(user: &str, password: &str) -> Self {
        Self::start_inner(Some((user, password)))
    }

    fn start_inner(auth: Option<(&str, &str)>) -> Self {
        assert!(
            Path::new(REGISTRY_BINARY).exists(),
            "{REGISTRY_BINARY} is missing: install Debian's docker-registry package (scripts/setup.sh does)"
        );
        let storage = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let auth_section = match auth {
            Some((user, password)) => {
                let hash = bcrypt::hash(password, 4).expect("bcrypt");
                let htpasswd = storage.path().join("htpasswd");
                std::fs::write(&htpasswd, format!("{user}:{hash}\n")).expect("write htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: hearth-test\n    path: {}\n",
                    htpasswd.display()
                )
            }
            None => String::new(),
        };
        let config = storage.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n  secret: hearth-test\n{auth_section}",
                storage.path().join("data").display()
            ),
        )
        .expect("write registry config");
        let log = storage.path().join("registry.log");
        let log_file = std::fs::File::create(&log).expect("registry log");
        let child = Command::new(REGISTRY_BINARY)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {REGISTRY_BINARY}: {e}"));
        let registry = Registry {
            child,
            addr,
            storage,
            log,
        };
        registry.wait_ready();
        registry
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(&self.addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "docker-registry did not listen on {} within 20s; its log:\n{}",
            self.addr,
            self.log_text()
        );
    }

    /// Everything the registry logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many times a blob was served (GET requests answered 200 or 307),
    /// read from the registry's access log.
    pub fn blob_gets(&self, digest: &str) -> usize {
        self.log_text()
            .lines()
            .filter(|line| {
                line.contains("\"GET /v2/") && line.contains(&format!("/blobs/{digest} "))
            })
            .count()
    }

    /// The file the registry stores a blob (or manifest) in.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.storage
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// `127.0.0.1:<port>/<repository>:<tag>`.
    pub fn reference(&self, repository: &str, tag: &str) -> String {
        format!("{}/{repository}:{tag}", self.addr)
    }

    /// Stops the registry (as when it goes down).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the [`FaultProxy`] does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything untouched.
    None,
    /// Answer every request with this status and an empty body.
    Status(u16),
    /// Send the headers and half of every blob body, then drop the connection.
    TruncateBlobs,
    /// Send the headers and half of every blob body, then hang.
    StallBlobs,
}

/// An HTTP proxy in front of a registry that injects a [`Fault`].
pub struct FaultProxy {
    /// `127.0.0.1:<port>`.
    pub addr: String,
    fault: Arc<Mutex<Fault>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (`host:port`) on its own runtime thread.
    pub fn start(upstream: &str, fault: Fault) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("proxy runtime");
        // Bound here with std so that starting a proxy works from inside
        // another runtime too; handed to this runtime below.
        let std_listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        std_listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = std_listener.local_addr().expect("proxy addr").to_string();
        let fault = Arc::new(Mutex::new(fault));
        let upstream: SocketAddr = upstream.parse().expect("upstream is host:port");
        let shared = fault.clone();
        runtime.spawn(async move {
            let listener =
                tokio::net::TcpListener::from_std(std_listener).expect("register listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let fault = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let fault = *fault.lock().unwrap();
                        proxy(upstream, fault, request)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FaultProxy {
            addr,
            fault,
            runtime: Some(runtime),
        }
    }

    /// Changes the fault from now on.
    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

type ProxyBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

async fn proxy(
    upstream: SocketAddr,
    fault: Fault,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    if let Fault::Status(code) = fault {
        return Ok(Response::builder()
            .status(code)
            .body(full(Bytes::new()))
            .unwrap());
    }
    let is_blob_get =
        request.method() == hyper::Method::GET && request.uri().path().contains("/blobs/");
    let upstream_response = match forward(upstream, request).await {
        Ok(response) => response,
        Err(error) => {
            return Ok(Response::builder()
                .status(502)
                .body(full(Bytes::from(error.to_string())))
                .unwrap());
        }
    };
    let (parts, body) = upstream_response.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    if !is_blob_get || fault == Fault::None || !parts.status.is_success() {
        return Ok(Response::from_parts(parts, full(body)));
    }
    // Announce the full length, deliver half, then fail or hang.
    let half = body.slice(..body.len() / 2);
    let stall = fault == Fault::StallBlobs;
    Ok(Response::from_parts(
        parts,
        boxed(half_then_fault(half, stall)),
    ))
}

/// A body that yields `half`, then either an error (which makes hyper cut
/// the connection) or nothing ever again.
fn half_then_fault(half: Bytes, stall: bool) -> HalfThenFault {
    let (sender, receiver) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        let _ = sender.send(Ok(Frame::data(half))).await;
        if stall {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = sender
                .send(Err(std::io::Error::other("fault proxy: connection cut")))
                .await;
        }
    });
    HalfThenFault(receiver)
}

struct HalfThenFault(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>);

impl hyper::body::Body for HalfThenFault {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.get_mut().0.poll_recv(cx)
    }
}

fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn boxed(body: HalfThenFault) -> ProxyBody {
    body.boxed()
}

async fn forward(
    upstream: SocketAddr,
    request: Request<Incoming>,
) -> std::io::Result<Response<Incoming>> {
    let stream = tokio::net::TcpStream::connect(upstream).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
    tokio::spawn(connection);
    sender
        .send_request(request)
        .await
        .map_err(std::io::Error::other)
}
