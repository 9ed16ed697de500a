//! A real `docker-registry` (Debian's `docker-registry` package, the CNCF
//! distribution registry) for tests: loopback, a free port, a temp storage
//! directory, stopped by PID when dropped. Anonymous, htpasswd (basic) auth,
//! or token (bearer) auth backed by [`TokenServer`], which plays the
//! registry's token service: it checks basic credentials and issues ES256
//! JWTs signed by a self-signed certificate that the registry trusts.
//!
//! Also [`FaultProxy`], an HTTP proxy in front of it that injects network
//! faults the registry itself would never produce on loopback: a fixed
//! status for every request, blob bodies cut short, or blob bodies that stall.

use bytes::Bytes;
use hearth_prewarm::image::{self, BuiltImage};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The registry binary from Debian's `docker-registry` package.
pub const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";

/// This machine's address on its default route (not loopback), found
/// without sending anything. Panics, saying so, on a machine with none.
pub fn non_loopback_ip() -> std::net::IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp socket");
    socket
        .connect("192.0.2.1:9")
        .and_then(|()| socket.local_addr())
        .map(|addr| addr.ip())
        .ok()
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .expect("this test needs a network interface with a non-loopback IPv4 address (a default route)")
}

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
        Self::start_inner(Auth::None, "127.0.0.1")
    }

    /// Starts an anonymous registry listening on `ip` instead of loopback.
    pub fn start_on(ip: std::net::IpAddr) -> Self {
        Self::start_inner(Auth::None, &ip.to_string())
    }

    /// Starts a registry that requires HTTP basic auth as `user`/`password`.
    pub fn start_with_basic_auth(user: &str, password: &str) -> Self {
        Self::start_inner(Auth::Basic(user, password), "127.0.0.1")
    }

    /// Starts a registry that requires bearer tokens from `tokens`.
    pub fn start_with_token_auth(tokens: &TokenServer) -> Self {
        Self::start_inner(Auth::Token(tokens), "127.0.0.1")
    }

    fn start_inner(auth: Auth<'_>, ip: &str) -> Self {
        assert!(
            Path::new(REGISTRY_BINARY).exists(),
            "{REGISTRY_BINARY} is missing: install Debian's docker-registry package (scripts/setup.sh does)"
        );
        let storage = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let addr = format!("{ip}:{port}");
        let auth_section = match auth {
            Auth::Token(tokens) => {
                let bundle = storage.path().join("token-root.pem");
                std::fs::write(&bundle, &tokens.certificate_pem).expect("write root bundle");
                format!(
                    "auth:\n  token:\n    realm: http://{}/token\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                    tokens.addr,
                    bundle.display()
                )
            }
            Auth::Basic(user, password) => {
                let hash = bcrypt::hash(password, 4).expect("bcrypt");
                let htpasswd = storage.path().join("htpasswd");
                std::fs::write(&htpasswd, format!("{user}:{hash}\n")).expect("write htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: hearth-test\n    path: {}\n",
                    htpasswd.display()
                )
            }
            Auth::None => String::new(),
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

enum Auth<'a> {
    None,
    Basic(&'a str, &'a str),
    Token(&'a TokenServer),
}

const TOKEN_SERVICE: &str = "hearth-test-registry";
const TOKEN_ISSUER: &str = "hearth-test-token-service";

/// A registry token service: answers `GET /token` with a JWT granting pull
/// and push on the requested repository to callers that present the right
/// basic credentials, and 401 to everyone else. Counts tokens issued.
pub struct TokenServer {
    /// `127.0.0.1:<port>`.
    pub addr: String,
    certificate_pem: String,
    issued: Arc<std::sync::atomic::AtomicUsize>,
    runtime: Option<tokio::runtime::Runtime>,
}

struct TokenSigner {
    key: aws_lc_rs::signature::EcdsaKeyPair,
    certificate_der: Vec<u8>,
    credentials: String,
}

impl TokenServer {
    /// Starts the service, accepting `user`/`password`.
    pub fn start(user: &str, password: &str) -> Self {
        use base64::Engine as _;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let certificate = rcgen::CertificateParams::new(vec!["hearth-test-token".into()])
            .expect("params")
            .self_signed(&key)
            .expect("self-signed certificate");
        let signer = Arc::new(TokenSigner {
            key: aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &key.serialize_der(),
            )
            .expect("pkcs8 key"),
            certificate_der: certificate.der().to_vec(),
            credentials: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            ),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("token runtime");
        let std_listener = TcpListener::bind("127.0.0.1:0").expect("bind token server");
        std_listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = std_listener.local_addr().expect("addr").to_string();
        let issued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = issued.clone();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let signer = signer.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let response = signer.answer(&request, &counter);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TokenServer {
            addr,
            certificate_pem: certificate.pem(),
            issued,
            runtime: Some(runtime),
        }
    }

    /// How many tokens have been issued.
    pub fn issued(&self) -> usize {
        self.issued.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl TokenSigner {
    fn answer(
        &self,
        request: &Request<Incoming>,
        issued: &std::sync::atomic::AtomicUsize,
    ) -> Response<ProxyBody> {
        let authorized = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == self.credentials);
        if !authorized {
            return Response::builder()
                .status(401)
                .header("www-authenticate", "Basic realm=\"hearth-test-token\"")
                .body(full(Bytes::from_static(
                    b"{\"details\":\"bad credentials\"}",
                )))
                .unwrap();
        }
        // scope=repository:NAME:pull,push (possibly several scope params)
        let query = request.uri().query().unwrap_or("");
        let access: Vec<serde_json::Value> = query
            .split('&')
            .filter_map(|pair| pair.strip_prefix("scope="))
            .filter_map(|scope| {
                let scope = scope
                    .replace("%3A", ":")
                    .replace("%2C", ",")
                    .replace("%2F", "/");
                let mut parts = scope.splitn(3, ':');
                let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                Some(serde_json::json!({
                    "type": kind,
                    "name": name,
                    "actions": actions.split(',').collect::<Vec<_>>(),
                }))
            })
            .collect();
        let token = self.sign(access);
        issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let body = serde_json::json!({ "token": token, "access_token": token, "expires_in": 3600 });
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(full(Bytes::from(body.to_string())))
            .unwrap()
    }

    fn sign(&self, access: Vec<serde_json::Value>) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = serde_json::json!({
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [base64::engine::general_purpose::STANDARD.encode(&self.certificate_der)],
        });
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER,
            "sub": "hearth-test",
            "aud": TOKEN_SERVICE,
            "exp": now + 3600,
            "nbf": now - 60,
            "iat": now,
            "jti": format!("{now}-{}", std::process::id()),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            b64.encode(header.to_string()),
            b64.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(
                &aws_lc_rs::rand::SystemRandom::new(),
                signing_input.as_bytes(),
            )
            .expect("ES256 signing");
        format!("{signing_input}.{}", b64.encode(signature.as_ref()))
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
    stalled: Arc<AtomicUsize>,
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
        let stalled = Arc::new(AtomicUsize::new(0));
        let stalled_count = stalled.clone();
        runtime.spawn(async move {
            let listener =
                tokio::net::TcpListener::from_std(std_listener).expect("register listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let fault = shared.clone();
                let stalled = stalled_count.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let fault = *fault.lock().unwrap();
                        proxy(upstream, fault, stalled.clone(), request)
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
            stalled,
            runtime: Some(runtime),
        }
    }

    /// How many blob bodies [`Fault::StallBlobs`] has delivered half of and
    /// now holds: once this is nonzero, a client is mid-download.
    pub fn stalled_bodies(&self) -> usize {
        self.stalled.load(Ordering::SeqCst)
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
    stalled: Arc<AtomicUsize>,
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
        boxed(half_then_fault(half, stall, stalled)),
    ))
}

/// A body that yields `half`, then either an error (which makes hyper cut
/// the connection) or nothing ever again.
fn half_then_fault(half: Bytes, stall: bool, stalled: Arc<AtomicUsize>) -> HalfThenFault {
    // Capacity 1: the send after the half completes only once the client
    // has taken the half.
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let _ = sender.send(Ok(Frame::data(half))).await;
        if stall {
            let _ = sender.reserve().await;
            stalled.fetch_add(1, Ordering::SeqCst);
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

/// Writes `built` as an OCI image layout that skopeo can copy. With
/// `as_index`, the tag names an image index whose one entry is `built` for
/// platform wasip2/wasm, as multi-platform builders push it.
pub fn write_oci_layout(dir: &Path, built: &BuiltImage, tag: &str, as_index: bool) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let write_blob = |digest: &str, bytes: &[u8]| {
        std::fs::write(blobs.join(digest.trim_start_matches("sha256:")), bytes).unwrap();
    };
    write_blob(&built.config.descriptor.digest, &built.config.bytes);
    for layer in &built.layers {
        write_blob(&layer.descriptor.digest, &layer.bytes);
    }
    write_blob(&built.manifest_digest(), &built.manifest);
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut top = serde_json::json!({
        "mediaType": built.manifest_media_type,
        "digest": built.manifest_digest(),
        "size": built.manifest.len(),
    });
    if as_index {
        let platform_index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": image::OCI_INDEX,
            "manifests": [{
                "mediaType": built.manifest_media_type,
                "digest": built.manifest_digest(),
                "size": built.manifest.len(),
                "platform": { "os": "wasip2", "architecture": "wasm" },
            }],
        })
        .to_string();
        let digest = image::sha256_digest(platform_index.as_bytes());
        write_blob(&digest, platform_index.as_bytes());
        top = serde_json::json!({
            "mediaType": image::OCI_INDEX,
            "digest": digest,
            "size": platform_index.len(),
        });
    }
    top["annotations"] = serde_json::json!({ "org.opencontainers.image.ref.name": tag });
    let index = serde_json::json!({ "schemaVersion": 2, "manifests": [top] });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
}

/// Pushes `built` to `reference` the way other tools do, with skopeo from an
/// OCI layout (as an image index with one wasip2/wasm entry if `as_index`),
/// bypassing every check `hearth push` makes.
pub fn skopeo_push(built: &BuiltImage, reference: &str, as_index: bool) {
    assert!(
        std::path::Path::new("/usr/bin/skopeo").exists(),
        "/usr/bin/skopeo is missing: install Debian's skopeo package (scripts/setup.sh does)"
    );
    let layout = tempfile::tempdir().unwrap();
    write_oci_layout(layout.path(), built, "1", as_index);
    let output = std::process::Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--all",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:1", layout.path().display()))
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "skopeo copy failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
