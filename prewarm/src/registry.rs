//! Talking to OCI registries: references, credentials, retries, and verified
//! downloads. Built on `oci-client`.
//!
//! # Contract
//!
//! * **Transport.** HTTPS, except for loopback registries (`localhost`,
//!   `127.0.0.0/8`, `[::1]`), which use plain HTTP automatically, and
//!   registries listed in [`RegistrySettings::insecure_registries`].
//! * **Credentials** come from the docker `config.json` at
//!   `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`: an `auths`
//!   entry for the registry (`auth` = base64 `user:password`, or
//!   `username`/`password`, or `registrytoken` for a bearer token), or a
//!   credential helper named by `credHelpers`/`credsStore`
//!   (`docker-credential-<name> get`). No entry means anonymous. Basic
//!   credentials are exchanged for a bearer token when the registry asks for
//!   token auth.
//! * **Retries.** Connection failures, timeouts, truncated bodies and 5xx
//!   answers are retried with exponential backoff
//!   ([`RegistrySettings::attempts`], starting at
//!   [`RegistrySettings::initial_backoff`]); then the error names the
//!   registry. 401/403 are not retried: the error names the registry and
//!   where credentials were looked up.
//! * **Verification.** Every manifest and blob is hashed while it is read
//!   and checked against the digest it was asked for, and against the size
//!   its descriptor states; nothing unverified is returned or committed.
//!   Layers over [`RegistrySettings::max_layer_bytes`] are refused before
//!   download (by their descriptor) and during it (by the bytes received).
//! * **Bounded reads.** A manifest (and an image config) is read up to
//!   [`RegistrySettings::max_manifest_bytes`] and refused past it, by its
//!   `Content-Length` before reading and by the bytes received while
//!   reading; a registry cannot make a pull hold more than that in memory.
//!   Blobs are streamed to a staged file, never held whole in memory.

use crate::atomic_file::StagedFile;
use crate::image::{self, BuiltImage, Descriptor};
use base64::Engine as _;
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol, LayerDescriptor};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How to reach registries.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// Registries (`host` or `host:port`) reached over plain HTTP even though
    /// they are not on loopback.
    pub insecure_registries: Vec<String>,
    /// The docker config file to read credentials from; `None` means
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
    pub docker_config: Option<PathBuf>,
    /// Attempts per request before giving up on a reachable-but-failing or
    /// unreachable registry.
    pub attempts: u32,
    /// Wait before the first retry; doubles on each further retry.
    pub initial_backoff: Duration,
    /// Largest layer accepted, in bytes.
    pub max_layer_bytes: u64,
    /// Largest manifest (or image config) accepted, in bytes.
    pub max_manifest_bytes: u64,
    /// Largest image accepted: its config and the layers a pull would
    /// download, as their descriptors state them (a layer named twice counts
    /// twice), in bytes.
    pub max_image_bytes: u64,
    /// Most bytes decompressed while looking for the component in an image's
    /// tar layers.
    pub max_unpacked_bytes: u64,
    /// Told how blob transfers go (the CLI draws progress bars with it);
    /// `None`: nobody is told.
    pub progress: Option<ProgressSink>,
}

/// Follows blob transfers, e.g. to draw progress bars. The registry client
/// only reports; what is drawn, and where, is its caller's business.
pub trait TransferProgress: Send + Sync {
    /// A transfer of blob `digest` (`size` bytes) starts.
    fn start(&self, digest: &str, size: u64) -> Box<dyn BlobProgress>;
}

/// One blob transfer's progress.
pub trait BlobProgress: Send + Sync {
    /// `bytes` have moved so far.
    fn set_position(&self, bytes: u64);
    /// The transfer is over (done or failed).
    fn finish(&self);
}

/// A [`TransferProgress`] in [`RegistrySettings`].
#[derive(Clone)]
pub struct ProgressSink(pub Arc<dyn TransferProgress>);

impl std::fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressSink")
    }
}

/// The progress of a transfer nobody follows.
struct Unwatched;

impl BlobProgress for Unwatched {
    fn set_position(&self, _bytes: u64) {}
    fn finish(&self) {}
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            insecure_registries: Vec::new(),
            docker_config: None,
            attempts: 4,
            initial_backoff: Duration::from_millis(200),
            max_layer_bytes: 256 * 1024 * 1024,
            max_manifest_bytes: DEFAULT_MAX_MANIFEST_BYTES,
            max_image_bytes: 1 << 30,
            max_unpacked_bytes: 1 << 30,
            progress: None,
        }
    }
}

/// Default bound of a manifest or image config: the 4 MiB that the CNCF
/// distribution registry accepts on push.
pub const DEFAULT_MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// Why talking to a registry failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The reference does not parse.
    #[error(
        "malformed image reference `{reference}`: {reason}. Expected [registry/]repository[:tag][@sha256:digest], e.g. 127.0.0.1:5000/hello:1"
    )]
    BadReference {
        /// What was given.
        reference: String,
        /// The parser's complaint.
        reason: String,
    },
    /// Connecting failed, or kept failing, after every retry.
    #[error("registry {registry} is unreachable after {attempts} attempts: {cause}")]
    Unreachable {
        /// The registry host.
        registry: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last failure.
        cause: String,
    },
    /// 401 or 403.
    #[error(
        "registry {registry} refused access ({status}) to {repository}. Credentials are read from {credential_source}: add an `auths` entry for \"{registry}\" (e.g. with `docker login {registry}`)"
    )]
    Unauthorized {
        /// The registry host.
        registry: String,
        /// The repository asked for.
        repository: String,
        /// `401 Unauthorized` or `403 Forbidden`.
        status: &'static str,
        /// Where credentials were looked up, and what was found.
        credential_source: String,
    },
    /// The manifest (tag or digest) does not exist.
    #[error("{reference} not found in registry {registry}")]
    NotFound {
        /// The reference asked for.
        reference: String,
        /// The registry host.
        registry: String,
    },
    /// A blob named by the manifest is missing from the registry.
    #[error("registry {registry} is missing blob {digest} of {repository}")]
    MissingBlob {
        /// The registry host.
        registry: String,
        /// The repository.
        repository: String,
        /// The missing blob.
        digest: String,
    },
    /// Content does not hash to the digest it was asked for.
    #[error(
        "digest mismatch for {what}: expected {expected}, received content hashing to {actual}"
    )]
    DigestMismatch {
        /// What was being fetched.
        what: String,
        /// The digest asked for.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// The download ended early, after every retry.
    #[error(
        "download of {digest} from {registry} was truncated: received {received} of {expected} bytes"
    )]
    Truncated {
        /// The registry host.
        registry: String,
        /// The blob.
        digest: String,
        /// Bytes received.
        received: u64,
        /// Bytes announced by the descriptor.
        expected: u64,
    },
    /// A layer is larger than the configured limit.
    #[error(
        "layer {digest} is {size} bytes, over the limit of {limit} bytes (raise max_layer_bytes to accept it)"
    )]
    LayerTooLarge {
        /// The layer.
        digest: String,
        /// Its size (announced or received so far).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A manifest or image config is larger than the configured limit.
    #[error(
        "the {what} of {reference} is {size} bytes, over the limit of {limit} bytes (raise max_manifest_bytes to accept it)"
    )]
    ManifestTooLarge {
        /// `manifest` or `config`.
        what: &'static str,
        /// The image.
        reference: String,
        /// Its size (announced, or received so far).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The image's config and layers add up to more than the limit.
    #[error(
        "{reference} is {size} bytes in {layers} layers and its config, over the limit of {limit} bytes (raise max_image_bytes to accept it)"
    )]
    ImageTooLarge {
        /// The image.
        reference: String,
        /// The sum of its descriptors' sizes.
        size: u64,
        /// How many layers it names.
        layers: usize,
        /// The limit.
        limit: u64,
    },
    /// The registry answered with an error it did not retry away.
    #[error("registry {registry} answered {detail}")]
    Protocol {
        /// The registry host.
        registry: String,
        /// What it said.
        detail: String,
    },
    /// The local cache could not be written.
    #[error("cache I/O on {}: {cause}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
}

/// Parses an image reference, normalised as docker does: no registry means
/// `docker.io`, a one-segment name on it means `library/<name>`, and no tag
/// or digest means `:latest`. Only sha256 digests are accepted.
///
/// This is a hand-written parser for the distribution reference grammar, not
/// `oci_spec`'s: that one compiles a large regex on first use, which cost
/// about 60 ms of every `hearth run <reference>` start.
pub fn parse_reference(text: &str) -> Result<Reference, RegistryError> {
    let bad = |reason: &str| RegistryError::BadReference {
        reference: text.to_string(),
        reason: reason.to_string(),
    };
    if text.is_empty() || text.trim() != text {
        return Err(bad("empty or surrounded by whitespace"));
    }
    let (name_and_tag, digest) = match text.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (text, None),
    };
    if let Some(digest) = digest {
        let hex = digest
            .strip_prefix("sha256:")
            .ok_or_else(|| bad("only sha256 digests are supported"))?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad("a sha256 digest is 64 lowercase hex digits"));
        }
    }
    // A tag follows the last ':' that comes after the last '/'.
    let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
        Some(colon) => (
            &name_and_tag[..last_slash + colon],
            Some(&name_and_tag[last_slash + colon + 1..]),
        ),
        None => (name_and_tag, None),
    };
    if let Some(tag) = tag {
        let valid = !tag.is_empty()
            && tag.len() <= 128
            && tag.bytes().enumerate().all(|(i, b)| {
                b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-'))
            });
        if !valid {
            return Err(bad(
                "a tag is up to 128 of [A-Za-z0-9_.-], not starting with . or -",
            ));
        }
    }
    let mut segments: Vec<&str> = name.split('/').collect();
    let first = segments[0];
    let registry = if segments.len() > 1
        && (first.contains('.') || first.contains(':') || first == "localhost")
    {
        segments.remove(0);
        if !is_valid_registry(first) {
            return Err(bad("the registry must be host[:port]"));
        }
        first.to_string()
    } else {
        "docker.io".to_string()
    };
    for segment in &segments {
        let valid = !segment.is_empty()
            && segment.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
            && segment.as_bytes()[0].is_ascii_alphanumeric()
            && segment.as_bytes()[segment.len() - 1].is_ascii_alphanumeric();
        if !valid {
            return Err(bad(
                "repository path segments are lowercase letters, digits and . _ -, starting and ending alphanumeric",
            ));
        }
    }
    let mut repository = segments.join("/");
    if registry == "docker.io" && segments.len() == 1 {
        repository = format!("library/{repository}");
    }
    if registry.len() + 1 + repository.len() > 255 {
        return Err(bad("the name is longer than 255 characters"));
    }
    Ok(match (tag, digest) {
        (Some(tag), Some(digest)) => {
            Reference::with_tag_and_digest(registry, repository, tag.into(), digest.into())
        }
        (None, Some(digest)) => Reference::with_digest(registry, repository, digest.into()),
        (Some(tag), None) => Reference::with_tag(registry, repository, tag.into()),
        (None, None) => Reference::with_tag(registry, repository, "latest".into()),
    })
}

fn is_valid_registry(registry: &str) -> bool {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, port)) => {
                if ip.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                (None, port.strip_prefix(':'))
            }
            None => return false,
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(registry), None),
        }
    };
    let host_ok = host.is_none_or(|host| {
        !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    });
    let port_ok = port.is_none_or(|port| port.parse::<u16>().is_ok());
    host_ok && port_ok
}

/// Whether `registry` (`host[:port]`) is on loopback.
pub fn is_loopback_registry(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        registry.rsplit_once(':').map_or(registry, |(host, _)| host)
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Credentials for one registry, and a description of where they came from.
#[derive(Clone)]
pub struct Credentials {
    /// What to authenticate with.
    pub auth: RegistryAuth,
    /// Where they were looked up, for error messages.
    pub source: String,
}

/// Looks up credentials for `registry` as the module docs describe.
pub fn credentials_for(registry: &str, docker_config: Option<&Path>) -> Credentials {
    let path = docker_config.map(Path::to_path_buf).or_else(|| {
        std::env::var_os("DOCKER_CONFIG")
            .map(|dir| PathBuf::from(dir).join("config.json"))
            .or_else(|| {
                std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker/config.json"))
            })
    });
    let Some(path) = path else {
        return anonymous("no docker config (neither $DOCKER_CONFIG nor $HOME is set)".into());
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(_) => return anonymous(format!("{} (absent; pulling anonymously)", path.display())),
    };
    let config: serde_json::Value = match serde_json::from_str(&text) {
        Ok(config) => config,
        Err(error) => {
            tracing::warn!(file = %path.display(), "ignoring unparsable docker config: {error}");
            return anonymous(format!("{} (unparsable: {error})", path.display()));
        }
    };
    let source = |what: &str| format!("{} ({what})", path.display());
    let keys = [
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
        format!("https://{registry}/v1/"),
        format!("https://{registry}/v2/"),
    ];
    let docker_hub = matches!(
        registry,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    );
    if let Some(entry) = config["auths"].as_object().and_then(|auths| {
        keys.iter().find_map(|key| auths.get(key)).or_else(|| {
            docker_hub
                .then(|| auths.get("https://index.docker.io/v1/"))
                .flatten()
        })
    }) {
        if let Some(token) = entry["registrytoken"].as_str() {
            return Credentials {
                auth: RegistryAuth::Bearer(token.to_string()),
                source: source("auths entry, registrytoken"),
            };
        }
        if let (Some(user), Some(password)) =
            (entry["username"].as_str(), entry["password"].as_str())
        {
            return Credentials {
                auth: RegistryAuth::Basic(user.to_string(), password.to_string()),
                source: source("auths entry, username/password"),
            };
        }
        if let Some(encoded) = entry["auth"].as_str() {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok());
            if let Some((user, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) {
                return Credentials {
                    auth: RegistryAuth::Basic(user.to_string(), password.to_string()),
                    source: source("auths entry"),
                };
            }
            tracing::warn!(file = %path.display(), %registry, "ignoring an auths entry whose `auth` is not base64 user:password");
        }
    }
    let helper = config["credHelpers"][registry]
        .as_str()
        .or_else(|| config["credsStore"].as_str());
    if let Some(helper) = helper {
        match run_credential_helper(helper, registry) {
            Ok(Some(auth)) => {
                return Credentials {
                    auth,
                    source: source(&format!("docker-credential-{helper}")),
                };
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%registry, "credential helper docker-credential-{helper} failed: {error}")
            }
        }
    }
    anonymous(source("no entry for this registry; pulling anonymously"))
}

fn anonymous(source: String) -> Credentials {
    Credentials {
        auth: RegistryAuth::Anonymous,
        source,
    }
}

fn run_credential_helper(helper: &str, registry: &str) -> std::io::Result<Option<RegistryAuth>> {
    use std::io::Write;
    let mut child = std::process::Command::new(format!("docker-credential-{helper}"))
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("stdin was piped")
        .write_all(registry.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        return Ok(None);
    }
    let answer: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(std::io::Error::other)?;
    let (Some(user), Some(secret)) = (answer["Username"].as_str(), answer["Secret"].as_str())
    else {
        return Ok(None);
    };
    Ok(Some(if user == "<token>" {
        RegistryAuth::Bearer(secret.to_string())
    } else {
        RegistryAuth::Basic(user.to_string(), secret.to_string())
    }))
}

/// How long connecting to a registry may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a registry may go without sending while a body is read.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection to the registry of one reference.
pub struct RegistryClient {
    client: Client,
    /// Manifests are read with this, not `client`, so their size is bounded.
    http: reqwest::Client,
    /// `http` for plain-HTTP registries.
    scheme: &'static str,
    /// The pull token `client` obtained, fetched once per client.
    pull_token: tokio::sync::OnceCell<Option<String>>,
    reference: Reference,
    credentials: Credentials,
    settings: RegistrySettings,
}

/// What a manifest fetch returns.
pub struct FetchedManifest {
    /// The verified bytes.
    pub bytes: Vec<u8>,
    /// Their digest.
    pub digest: String,
    /// The parsed manifest.
    pub manifest: image::Manifest,
    /// Manifest requests it took: 2 when an index was resolved.
    pub requests: u64,
}

impl RegistryClient {
    /// A client for `reference`'s registry.
    pub fn new(reference: &Reference, settings: &RegistrySettings) -> Self {
        let registry = reference.resolve_registry().to_string();
        let plain_http = is_loopback_registry(&registry)
            || settings
                .insecure_registries
                .iter()
                .any(|r| r == &registry || r == reference.registry());
        let config = ClientConfig {
            protocol: if plain_http {
                ClientProtocol::HttpsExcept(vec![registry.clone()])
            } else {
                ClientProtocol::Https
            },
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            ..ClientConfig::default()
        };
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build()
            .unwrap_or_default();
        RegistryClient {
            client: Client::new(config),
            http,
            scheme: if plain_http { "http" } else { "https" },
            pull_token: tokio::sync::OnceCell::new(),
            credentials: credentials_for(&registry, settings.docker_config.as_deref()),
            reference: reference.clone(),
            settings: settings.clone(),
        }
    }

    /// The registry host this client talks to.
    pub fn registry(&self) -> &str {
        self.reference.resolve_registry()
    }

    /// The reference this client was made for.
    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    fn classify(&self, error: OciDistributionError, what: &str) -> Classified {
        let registry = self.registry().to_string();
        let unauthorized = |status| RegistryError::Unauthorized {
            registry: registry.clone(),
            repository: self.reference.repository().to_string(),
            status,
            credential_source: self.credentials.source.clone(),
        };
        match error {
            OciDistributionError::RequestError(error)
                if error.status().is_some_and(|s| s.as_u16() == 401) =>
            {
                Classified::Fatal(unauthorized("401 Unauthorized"))
            }
            OciDistributionError::RequestError(error)
                if error.status().is_some_and(|s| s.as_u16() == 403) =>
            {
                Classified::Fatal(unauthorized("403 Forbidden"))
            }
            OciDistributionError::RequestError(error) => {
                if error.is_connect() || error.is_timeout() || error.is_body() || error.is_request()
                {
                    Classified::Retry(format!("{what}: {}", error_chain(&error)))
                } else {
                    Classified::Fatal(RegistryError::Protocol {
                        registry,
                        detail: format!("{what}: {}", error_chain(&error)),
                    })
                }
            }
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => {
                Classified::Fatal(unauthorized("401 Unauthorized"))
            }
            OciDistributionError::ServerError { code: 401, .. } => {
                Classified::Fatal(unauthorized("401 Unauthorized"))
            }
            OciDistributionError::ServerError { code: 403, .. } => {
                Classified::Fatal(unauthorized("403 Forbidden"))
            }
            OciDistributionError::ServerError { code: 404, .. } => {
                Classified::Fatal(RegistryError::NotFound {
                    reference: self.reference.whole(),
                    registry,
                })
            }
            OciDistributionError::ServerError { code, message, .. } if code >= 500 => {
                Classified::Retry(format!("{what}: HTTP {code}: {}", message.trim()))
            }
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized))
                {
                    Classified::Fatal(unauthorized("401 Unauthorized"))
                } else if codes.iter().any(|c| matches!(c, OciErrorCode::Denied)) {
                    Classified::Fatal(unauthorized("403 Forbidden"))
                } else if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown))
                {
                    Classified::Fatal(RegistryError::NotFound {
                        reference: self.reference.whole(),
                        registry,
                    })
                } else {
                    Classified::Fatal(RegistryError::Protocol {
                        registry,
                        detail: format!("{what}: {envelope}"),
                    })
                }
            }
            OciDistributionError::DigestError(error) => {
                Classified::Fatal(RegistryError::DigestMismatch {
                    what: format!("{what} of {}", self.reference.whole()),
                    expected: String::new(),
                    actual: error.to_string(),
                })
            }
            other => Classified::Fatal(RegistryError::Protocol {
                registry,
                detail: format!("{what}: {other}"),
            }),
        }
    }

    /// Runs `attempt` with the retry policy of the module docs.
    async fn with_retries<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Attempt>>,
    {
        let mut backoff = self.settings.initial_backoff;
        let attempts = self.settings.attempts.max(1);
        let mut last_cause = String::new();
        for number in 1..=attempts {
            match attempt().await {
                Ok(value) => return Ok(value),
                Err(Attempt::Fatal(error)) => return Err(error),
                Err(Attempt::Oci(error)) => match self.classify(error, what) {
                    Classified::Fatal(error) => return Err(error),
                    Classified::Retry(cause) => last_cause = cause,
                },
                Err(Attempt::Retry(cause, final_error)) => {
                    if number == attempts {
                        return Err(*final_error);
                    }
                    last_cause = cause;
                }
            }
            if number < attempts {
                tracing::warn!(registry = %self.registry(), attempt = number, "{last_cause}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
        Err(RegistryError::Unreachable {
            registry: self.registry().to_string(),
            attempts,
            cause: last_cause,
        })
    }

    /// Fetches and verifies the manifest of `reference` (a tag or digest).
    /// An index is resolved to its wasm platform entry.
    pub async fn fetch_manifest(
        &self,
        reference: &Reference,
    ) -> Result<FetchedManifest, RegistryError> {
        let fetched = self.fetch_one_manifest(reference).await?;
        if !fetched.manifest.is_index() {
            return Ok(fetched);
        }
        let Some(entry) = fetched.manifest.wasm_platform_entry() else {
            let platforms: Vec<String> = fetched
                .manifest
                .manifests
                .iter()
                .filter_map(|m| {
                    m.platform
                        .as_ref()
                        .map(|p| format!("{}/{}", p.os, p.architecture))
                })
                .collect();
            return Err(RegistryError::Protocol {
                registry: self.registry().to_string(),
                detail: format!(
                    "an image index for {} with no wasm platform entry (platforms: {})",
                    reference.whole(),
                    platforms.join(", ")
                ),
            });
        };
        let platform_reference = reference.clone_with_digest(entry.digest.clone());
        let mut platform = self.fetch_one_manifest(&platform_reference).await?;
        platform.requests += fetched.requests;
        if platform.manifest.is_index() {
            return Err(RegistryError::Protocol {
                registry: self.registry().to_string(),
                detail: format!("nested image index in {}", reference.whole()),
            });
        }
        Ok(platform)
    }

    async fn fetch_one_manifest(
        &self,
        reference: &Reference,
    ) -> Result<FetchedManifest, RegistryError> {
        let (bytes, header_digest) = self
            .with_retries("fetching the manifest", || {
                self.fetch_manifest_bytes_once(reference)
            })
            .await?;
        let header_digest = header_digest.unwrap_or_else(|| image::sha256_digest(&bytes));
        // The body must hash to the reference's digest, else to the digest
        // the registry announced.
        let actual = image::sha256_digest(&bytes);
        let expected = reference
            .digest()
            .map(str::to_string)
            .unwrap_or(header_digest);
        if actual != expected {
            return Err(RegistryError::DigestMismatch {
                what: format!("the manifest of {}", reference.whole()),
                expected,
                actual,
            });
        }
        let manifest = image::parse_manifest(&reference.whole(), &bytes).map_err(|e| {
            RegistryError::Protocol {
                registry: self.registry().to_string(),
                detail: e.to_string(),
            }
        })?;
        Ok(FetchedManifest {
            bytes,
            digest: actual,
            manifest,
            requests: 1,
        })
    }

    /// One `GET /v2/<name>/manifests/<tag or digest>`, read up to
    /// [`RegistrySettings::max_manifest_bytes`]. oci-client's manifest pull
    /// reads the whole body, whatever its size; this uses its pull token.
    /// Returns the body and the `Docker-Content-Digest` header, if any.
    async fn fetch_manifest_bytes_once(
        &self,
        reference: &Reference,
    ) -> Result<(Vec<u8>, Option<String>), Attempt> {
        let token = self
            .pull_token
            .get_or_try_init(|| async {
                self.client
                    .auth(reference, &self.credentials.auth, RegistryOperation::Pull)
                    .await
            })
            .await
            .map_err(Attempt::Oci)?;
        let url = format!(
            "{}://{}/v2/{}/manifests/{}",
            self.scheme,
            reference.resolve_registry(),
            reference.repository(),
            reference
                .digest()
                .unwrap_or_else(|| reference.tag().unwrap_or("latest")),
        );
        let mut request = self
            .http
            .get(&url)
            .header(http::header::ACCEPT, image::ACCEPTED_MANIFESTS.join(", "));
        request = match (token, &self.credentials.auth) {
            (Some(token), _) => request.bearer_auth(token),
            (None, RegistryAuth::Basic(user, password)) => request.basic_auth(user, Some(password)),
            (None, _) => request,
        };
        let what = "fetching the manifest";
        let transport = |error: reqwest::Error| {
            let cause = format!("{what}: {}", error_chain(&error));
            Attempt::Retry(
                cause.clone(),
                Box::new(RegistryError::Unreachable {
                    registry: self.registry().to_string(),
                    attempts: self.settings.attempts.max(1),
                    cause,
                }),
            )
        };
        let mut response = request.send().await.map_err(transport)?;
        let status = response.status();
        if !status.is_success() {
            let detail = read_error_body(&mut response).await;
            let registry = self.registry().to_string();
            let unauthorized = |status| RegistryError::Unauthorized {
                registry: registry.clone(),
                repository: self.reference.repository().to_string(),
                status,
                credential_source: self.credentials.source.clone(),
            };
            return Err(match status.as_u16() {
                401 => Attempt::Fatal(unauthorized("401 Unauthorized")),
                403 => Attempt::Fatal(unauthorized("403 Forbidden")),
                404 => Attempt::Fatal(RegistryError::NotFound {
                    reference: reference.whole(),
                    registry,
                }),
                code @ (429 | 500..) => {
                    let cause = format!("{what}: HTTP {code}: {detail}");
                    Attempt::Retry(
                        cause.clone(),
                        Box::new(RegistryError::Protocol {
                            registry,
                            detail: cause,
                        }),
                    )
                }
                code => Attempt::Fatal(RegistryError::Protocol {
                    registry,
                    detail: format!("{what}: HTTP {code}: {detail}"),
                }),
            });
        }
        let limit = self.settings.max_manifest_bytes;
        let too_large = |size| {
            Attempt::Fatal(RegistryError::ManifestTooLarge {
                what: "manifest",
                reference: reference.whole(),
                size,
                limit,
            })
        };
        if let Some(announced) = response.content_length()
            && announced > limit
        {
            return Err(too_large(announced));
        }
        let digest = response
            .headers()
            .get("docker-content-digest")
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            let size = (body.len() + chunk.len()) as u64;
            if size > limit {
                return Err(too_large(size));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, digest))
    }

    /// Downloads the blob `descriptor` into a staged file in `staging_dir`,
    /// verifying size and digest; the caller commits it.
    pub async fn fetch_blob(
        &self,
        descriptor: &Descriptor,
        staging_dir: &Path,
    ) -> Result<StagedFile, RegistryError> {
        let limit = self.settings.max_layer_bytes;
        if descriptor.size > limit {
            return Err(RegistryError::LayerTooLarge {
                digest: descriptor.digest.clone(),
                size: descriptor.size,
                limit,
            });
        }
        let progress = self.progress(descriptor);
        let result = self
            .with_retries(&format!("fetching blob {}", descriptor.digest), || async {
                self.fetch_blob_once(descriptor, staging_dir, progress.as_ref())
                    .await
            })
            .await;
        progress.finish();
        result
    }

    async fn fetch_blob_once(
        &self,
        descriptor: &Descriptor,
        staging_dir: &Path,
        progress: &dyn BlobProgress,
    ) -> Result<StagedFile, Attempt> {
        let io_error = |cause| {
            Attempt::Fatal(RegistryError::Io {
                path: staging_dir.to_path_buf(),
                cause,
            })
        };
        let layer = LayerDescriptor {
            digest: &descriptor.digest,
            urls: &None,
        };
        // Authenticate for pulls first: blob requests reuse the token.
        self.client
            .store_auth_if_needed(self.registry(), &self.credentials.auth)
            .await;
        let response = self.client.pull_blob_stream(&self.reference, &layer).await;
        let stream = match response {
            Ok(stream) => stream,
            Err(OciDistributionError::RegistryError { envelope, .. })
                if envelope
                    .errors
                    .iter()
                    .any(|e| matches!(e.code, OciErrorCode::BlobUnknown)) =>
            {
                return Err(Attempt::Fatal(self.missing_blob(descriptor)));
            }
            Err(OciDistributionError::ServerError { code: 404, .. }) => {
                return Err(Attempt::Fatal(self.missing_blob(descriptor)));
            }
            Err(error) => return Err(Attempt::Oci(error)),
        };
        let mut staged = StagedFile::create(staging_dir).map_err(io_error)?;
        progress.set_position(0);
        let mut stream = stream.stream;
        let mut interrupted = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => {
                    if staged.len() + chunk.len() as u64
                        > limit_for(descriptor, self.settings.max_layer_bytes)
                    {
                        return Err(Attempt::Fatal(
                            self.oversize(descriptor, staged.len() + chunk.len() as u64),
                        ));
                    }
                    staged.write_all(&chunk).map_err(io_error)?;
                    progress.set_position(staged.len());
                }
                Err(error) => {
                    interrupted = Some(error.to_string());
                    break;
                }
            }
        }
        let received = staged.len();
        if received < descriptor.size {
            let truncated = RegistryError::Truncated {
                registry: self.registry().to_string(),
                digest: descriptor.digest.clone(),
                received,
                expected: descriptor.size,
            };
            let cause = format!(
                "blob {} ended after {received} of {} bytes ({})",
                descriptor.digest,
                descriptor.size,
                interrupted.as_deref().unwrap_or("connection closed")
            );
            return Err(Attempt::Retry(cause, Box::new(truncated)));
        }
        let actual = staged.digest();
        if actual != descriptor.digest || received != descriptor.size {
            return Err(Attempt::Fatal(RegistryError::DigestMismatch {
                what: format!(
                    "blob {} of {} ({received} bytes)",
                    descriptor.digest,
                    self.reference.whole()
                ),
                expected: descriptor.digest.clone(),
                actual,
            }));
        }
        Ok(staged)
    }

    fn missing_blob(&self, descriptor: &Descriptor) -> RegistryError {
        RegistryError::MissingBlob {
            registry: self.registry().to_string(),
            repository: self.reference.repository().to_string(),
            digest: descriptor.digest.clone(),
        }
    }

    fn oversize(&self, descriptor: &Descriptor, size: u64) -> RegistryError {
        if size > self.settings.max_layer_bytes {
            RegistryError::LayerTooLarge {
                digest: descriptor.digest.clone(),
                size,
                limit: self.settings.max_layer_bytes,
            }
        } else {
            RegistryError::DigestMismatch {
                what: format!(
                    "blob {} of {}: more bytes than its descriptor's {}",
                    descriptor.digest,
                    self.reference.whole(),
                    descriptor.size
                ),
                expected: descriptor.digest.clone(),
                actual: format!("(at least {size} bytes)"),
            }
        }
    }

    fn progress(&self, descriptor: &Descriptor) -> Box<dyn BlobProgress> {
        match &self.settings.progress {
            Some(sink) => sink.0.start(&descriptor.digest, descriptor.size),
            None => Box::new(Unwatched),
        }
    }

    /// Pushes `built` to this client's reference: blobs the registry lacks,
    /// then the manifest. Returns the manifest digest.
    pub async fn push(&self, built: &BuiltImage) -> Result<String, RegistryError> {
        self.with_retries("authenticating for push", || async {
            self.client
                .auth(
                    &self.reference,
                    &self.credentials.auth,
                    RegistryOperation::Push,
                )
                .await
                .map(|_| ())
                .map_err(Attempt::Oci)
        })
        .await?;
        for blob in std::iter::once(&built.config).chain(&built.layers) {
            let digest = &blob.descriptor.digest;
            let exists = self
                .with_retries(&format!("checking blob {digest}"), || async {
                    self.client
                        .blob_exists(&self.reference, digest)
                        .await
                        .map_err(Attempt::Oci)
                })
                .await?;
            let progress = self.progress(&blob.descriptor);
            if !exists {
                self.with_retries(&format!("uploading blob {digest}"), || async {
                    self.client
                        .push_blob(&self.reference, blob.bytes.clone(), digest)
                        .await
                        .map_err(Attempt::Oci)
                })
                .await?;
            }
            progress.set_position(blob.descriptor.size);
            progress.finish();
        }
        let content_type = http::HeaderValue::from_static(built.manifest_media_type);
        self.with_retries("uploading the manifest", || async {
            self.client
                .push_manifest_raw(
                    &self.reference,
                    built.manifest.clone(),
                    content_type.clone(),
                )
                .await
                .map_err(Attempt::Oci)
        })
        .await?;
        Ok(built.manifest_digest())
    }
}

/// The start of an error response's body, for the error message.
async fn read_error_body(response: &mut reqwest::Response) -> String {
    const SHOWN: usize = 512;
    let mut body = Vec::new();
    while body.len() < SHOWN {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(SHOWN);
    String::from_utf8_lossy(&body).trim().to_string()
}

fn limit_for(descriptor: &Descriptor, max_layer_bytes: u64) -> u64 {
    descriptor.size.min(max_layer_bytes)
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// How one attempt failed.
enum Attempt {
    /// An oci-client error, to classify.
    Oci(OciDistributionError),
    /// Worth retrying; the error to report if this was the last attempt.
    Retry(String, Box<RegistryError>),
    /// Not worth retrying.
    Fatal(RegistryError),
}

enum Classified {
    Retry(String),
    Fatal(RegistryError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_recognised() {
        for registry in [
            "localhost:5000",
            "127.0.0.1:5000",
            "127.9.9.9",
            "[::1]:5000",
            "localhost",
        ] {
            assert!(is_loopback_registry(registry), "{registry}");
        }
        for registry in ["registry.example:5000", "10.0.0.1:5000", "docker.io"] {
            assert!(!is_loopback_registry(registry), "{registry}");
        }
    }

    #[test]
    fn malformed_references_are_rejected_with_the_expected_shape() {
        for text in [
            "",
            " x",
            "reg:99999/x:1",
            "reg.example//x",
            "reg.example/-x",
            "x:",
            "fn/hello:bad!tag",
            "Bad Ref",
            "a:b:c:d",
            "reg/x@sha256:short",
            "reg/x@md5:0123",
        ] {
            let error = parse_reference(text)
                .err()
                .unwrap_or_else(|| panic!("`{text}` parsed"));
            assert!(
                error.to_string().contains("malformed image reference"),
                "{error}"
            );
        }
        // Valid references normalise exactly as oci-spec's parser does.
        for text in [
            "127.0.0.1:5000/fn/hello:1",
            "localhost:5000/hello",
            "registry.example/a/b/c:v1.2-rc_3",
            "hello",
            "user/hello:2",
            "docker.io/library/hello:latest",
            "reg.example/x@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "reg.example:443/x:t@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            let ours = parse_reference(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let theirs: Reference = text
                .parse()
                .unwrap_or_else(|e| panic!("oci-spec on {text}: {e:?}"));
            assert_eq!(ours.whole(), theirs.whole(), "{text}");
        }
        // oci-spec has no IPv6 hosts; loopback [::1] registries are ours too.
        assert_eq!(
            parse_reference("[::1]:5000/x:y").unwrap().registry(),
            "[::1]:5000"
        );
        let ok = parse_reference("127.0.0.1:5000/fn/hello:1").unwrap();
        assert_eq!(ok.registry(), "127.0.0.1:5000");
        assert_eq!(ok.repository(), "fn/hello");
        assert_eq!(ok.tag(), Some("1"));
    }

    #[test]
    fn credentials_come_from_the_docker_config() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.json");
        std::fs::write(
            &config,
            r#"{"auths":{"reg.example:5000":{"auth":"YWxpY2U6czNjcjN0"},"https://other.example":{"username":"bob","password":"pw"},"tok.example":{"registrytoken":"T"}}}"#,
        )
        .unwrap();
        let found = credentials_for("reg.example:5000", Some(&config));
        assert!(
            matches!(found.auth, RegistryAuth::Basic(ref u, ref p) if u == "alice" && p == "s3cr3t")
        );
        let found = credentials_for("other.example", Some(&config));
        assert!(matches!(found.auth, RegistryAuth::Basic(ref u, _) if u == "bob"));
        let found = credentials_for("tok.example", Some(&config));
        assert!(matches!(found.auth, RegistryAuth::Bearer(ref t) if t == "T"));
        let found = credentials_for("nobody.example", Some(&config));
        assert!(matches!(found.auth, RegistryAuth::Anonymous));
        assert!(found.source.contains("config.json"), "{}", found.source);
    }
}
