//! How a host configures one blob store: `[blob.stores.LABEL]` in
//! `hearth.toml`, declared here, next to the backends it builds.
//!
//! ```toml
//! [blob.stores.default]
//! type = "fs"                   # fs | s3 | remote
//! path = "blob/default"         # default: <data dir>/LABEL
//! max_object_bytes = 1073741824
//! [blob.stores.archive]
//! type = "s3"
//! endpoint = "http://127.0.0.1:9000"
//! bucket = "hearth"
//! region = "us-east-1"          # default us-east-1
//! access_key_id = "..."         # default: $AWS_ACCESS_KEY_ID
//! secret_access_key = "..."     # default: $AWS_SECRET_ACCESS_KEY
//! timeout_ms = 10000            # per request
//! [blob.stores.node]
//! type = "remote"               # a hearth-store storage node
//! address = "10.0.0.9:7400"     # host:port, resolved when built
//! transport = "tcp"             # tcp | rdma (built with the `rdma` feature;
//! # rdma_device = "mlx5_0"      #   then address is the node's --rdma-listen)
//! writes = "messages"           # messages | one-sided (into the node's buffers)
//! token_file = "/etc/hearth/store-token"   # this host's credential; the
//! #                               node's --hosts file holds its SHA-256
//! ```
//!
//! # Contract
//!
//! * [`BlobStoreConfig`] is a serde enum tagged by `type`; each variant
//!   denies keys it does not have.
//! * [`BlobStoreConfig::validate`] checks what serde cannot (ranges, the
//!   transport and its device, whether this build has RDMA);
//!   [`BlobStoreConfig::build`] makes the [`BlobStore`]. s3 and remote
//!   stores connect lazily, so a store whose server is down still builds.
//! * Errors are [`ConfigError`]s naming the key within the store's table.

use crate::fs::FsBackend;
use crate::remote::{Connector, RemoteBackend, WriteMode};
use crate::s3::{S3Backend, S3Settings};
use crate::{BlobBackend, BlobLimits, BlobStore};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Default bound of one request to a remote blob backend.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// One store's table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum BlobStoreConfig {
    /// A directory on this node.
    Fs(FsConfig),
    /// A bucket of an S3-compatible server.
    S3(S3Config),
    /// A `hearth-store` storage node.
    Remote(RemoteConfig),
}

/// `type = "fs"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The directory; relative paths are relative to the config file.
    /// Default: `LABEL` in the host's data directory for blobs.
    pub path: Option<PathBuf>,
    /// The largest object.
    pub max_object_bytes: Option<u64>,
}

/// `type = "s3"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The server.
    pub endpoint: String,
    /// The bucket (it must exist).
    pub bucket: String,
    /// The region requests are signed for (default `us-east-1`).
    pub region: Option<String>,
    /// Access key id; default `$AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// Secret; default `$AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<String>,
    /// Bound of one request, in ms.
    pub timeout_ms: Option<u64>,
    /// The largest object.
    pub max_object_bytes: Option<u64>,
}

/// `type = "remote"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// The storage node, `host:port`.
    pub address: String,
    /// `tcp` (default) or `rdma`.
    pub transport: Option<String>,
    /// The RDMA device for `transport = "rdma"`.
    pub rdma_device: Option<String>,
    /// How written bytes travel: `messages` (default) or `one-sided`
    /// (see [`crate::remote::WriteMode`]).
    pub writes: Option<String>,
    /// Bound of one request, in ms.
    pub timeout_ms: Option<u64>,
    /// The largest object.
    pub max_object_bytes: Option<u64>,
    /// A file holding this host's token, presented to the node on each
    /// connection (see [`crate::remote`]); relative paths are relative to
    /// the config file. None: the node must serve anyone (`--no-auth`).
    pub token_file: Option<PathBuf>,
}

/// A store's table is wrong: `key` within it, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// The key within the store's table.
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

fn error(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key,
        message: message.into(),
    }
}

impl BlobStoreConfig {
    /// The store a host has when it configures none: a directory in its
    /// data directory.
    pub fn default_fs() -> Self {
        BlobStoreConfig::Fs(FsConfig::default())
    }

    /// The backend's name, as `type` spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            BlobStoreConfig::Fs(_) => "fs",
            BlobStoreConfig::S3(_) => "s3",
            BlobStoreConfig::Remote(_) => "remote",
        }
    }

    /// Makes a relative `path` relative to `base` (the config file's
    /// directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        let path = match self {
            BlobStoreConfig::Fs(FsConfig { path, .. }) => path,
            BlobStoreConfig::Remote(RemoteConfig { token_file, .. }) => token_file,
            BlobStoreConfig::S3(_) => return,
        };
        if let Some(path) = path
            && path.is_relative()
        {
            *path = base.join(&*path);
        }
    }

    fn max_object_bytes(&self) -> Option<u64> {
        match self {
            BlobStoreConfig::Fs(c) => c.max_object_bytes,
            BlobStoreConfig::S3(c) => c.max_object_bytes,
            BlobStoreConfig::Remote(c) => c.max_object_bytes,
        }
    }

    /// Checks ranges and the remote transport.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let timeout_ms = match self {
            BlobStoreConfig::Fs(_) => None,
            BlobStoreConfig::S3(c) => c.timeout_ms,
            BlobStoreConfig::Remote(c) => c.timeout_ms,
        };
        for (key, value) in [
            ("timeout_ms", timeout_ms),
            ("max_object_bytes", self.max_object_bytes()),
        ] {
            if value == Some(0) {
                return Err(error(key, "must be at least 1"));
            }
        }
        let BlobStoreConfig::Remote(remote) = self else {
            return Ok(());
        };
        remote.write_mode()?;
        match (remote.transport.as_deref(), &remote.rdma_device) {
            (None | Some("tcp"), None) => Ok(()),
            (None | Some("tcp"), Some(_)) => Err(error(
                "rdma_device",
                "only a store with transport = \"rdma\" has one",
            )),
            (Some("rdma"), None) => Err(error(
                "rdma_device",
                "missing; transport = \"rdma\" needs the device",
            )),
            (Some("rdma"), Some(_)) if !cfg!(feature = "rdma") => Err(error(
                "transport",
                "this hearthd was built without the `rdma` feature",
            )),
            (Some("rdma"), Some(_)) => Ok(()),
            (Some(other), _) => Err(error("transport", format!("`{other}` is not tcp or rdma"))),
        }
    }

    /// Makes the store labelled `label`; an fs one without a `path` lives
    /// in `data_dir/LABEL`.
    pub fn build(&self, label: &str, data_dir: &Path) -> Result<BlobStore, ConfigError> {
        let mut limits = BlobLimits::default();
        limits.max_object_bytes = self.max_object_bytes().unwrap_or(limits.max_object_bytes);
        let timeout = |ms: Option<u64>| Duration::from_millis(ms.unwrap_or(DEFAULT_TIMEOUT_MS));
        let backend: Arc<dyn BlobBackend> = match self {
            BlobStoreConfig::Fs(config) => {
                let path = config.path.clone().unwrap_or_else(|| data_dir.join(label));
                Arc::new(FsBackend::open(&path).map_err(|e| error("path", e.to_string()))?)
            }
            BlobStoreConfig::S3(config) => {
                let from_env = |value: &Option<String>, variable: &str, key: &'static str| {
                    value
                        .clone()
                        .or_else(|| std::env::var(variable).ok())
                        .ok_or_else(|| error(key, format!("missing, and ${variable} is not set")))
                };
                let settings = S3Settings {
                    endpoint: config.endpoint.clone(),
                    bucket: config.bucket.clone(),
                    region: config.region.clone().unwrap_or_else(|| "us-east-1".into()),
                    credentials: (
                        from_env(&config.access_key_id, "AWS_ACCESS_KEY_ID", "access_key_id")?,
                        from_env(
                            &config.secret_access_key,
                            "AWS_SECRET_ACCESS_KEY",
                            "secret_access_key",
                        )?,
                    ),
                    timeout: timeout(config.timeout_ms),
                };
                Arc::new(
                    S3Backend::connect(&settings).map_err(|e| error("endpoint", e.to_string()))?,
                )
            }
            BlobStoreConfig::Remote(config) => {
                let address = std::net::ToSocketAddrs::to_socket_addrs(&config.address)
                    .ok()
                    .and_then(|mut addrs| addrs.next())
                    .ok_or_else(|| {
                        error(
                            "address",
                            format!("`{}` is not a reachable host:port", config.address),
                        )
                    })?;
                let token = match &config.token_file {
                    Some(path) => Some(
                        crate::remote::read_token_file(path).map_err(|e| error("token_file", e))?,
                    ),
                    None => None,
                };
                let connector = remote_connector(config, address, timeout(config.timeout_ms))?;
                Arc::new(
                    RemoteBackend::with_token(connector, token)
                        .with_write_mode(config.write_mode()?),
                )
            }
        };
        Ok(BlobStore::new(label, backend, limits))
    }
}

impl RemoteConfig {
    /// What `writes` names.
    fn write_mode(&self) -> Result<WriteMode, ConfigError> {
        match self.writes.as_deref() {
            None | Some("messages") => Ok(WriteMode::Messages),
            Some("one-sided") => Ok(WriteMode::OneSided),
            Some(other) => Err(error(
                "writes",
                format!("`{other}` is not messages or one-sided"),
            )),
        }
    }
}

/// How a `remote` store reaches its node: TCP, or RDMA verbs in a build
/// with the `rdma` feature.
fn remote_connector(
    config: &RemoteConfig,
    address: std::net::SocketAddr,
    timeout: Duration,
) -> Result<Connector, ConfigError> {
    #[cfg(feature = "rdma")]
    if let Some(device) = &config.rdma_device {
        let device = crate::rdma::VerbsDevice::open(device).map_err(|e| error("rdma_device", e))?;
        return Ok(crate::rdma::rdma_connector(device, address, timeout));
    }
    let _ = config;
    Ok(crate::remote::tcp_connector(address, timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<BlobStoreConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn each_type_takes_only_its_own_keys() {
        let wrong = parse("type = \"fs\"\naddress = \"x:1\"\n").unwrap_err();
        assert!(wrong.contains("unknown field `address`"), "{wrong}");
        let missing = parse("type = \"s3\"\nbucket = \"b\"\n").unwrap_err();
        assert!(missing.contains("missing field `endpoint`"), "{missing}");
        let missing = parse("type = \"remote\"\n").unwrap_err();
        assert!(missing.contains("missing field `address`"), "{missing}");
        assert!(parse("type = \"ftp\"\n").unwrap_err().contains("ftp"));
    }

    #[test]
    fn the_transport_and_its_device_are_checked() {
        let check = |text: &str| parse(text).unwrap().validate().map_err(|e| e.to_string());
        let remote = "type = \"remote\"\naddress = \"x:1\"\n";
        assert!(check(remote).is_ok());
        let udp = check(&format!("{remote}transport = \"udp\"\n")).unwrap_err();
        assert_eq!(udp, "transport: `udp` is not tcp or rdma");
        for writes in ["messages", "one-sided"] {
            assert!(check(&format!("{remote}writes = \"{writes}\"\n")).is_ok());
        }
        let sideways = check(&format!("{remote}writes = \"sideways\"\n")).unwrap_err();
        assert_eq!(sideways, "writes: `sideways` is not messages or one-sided");
        let no_device = check(&format!("{remote}transport = \"rdma\"\n")).unwrap_err();
        assert!(no_device.starts_with("rdma_device: missing"), "{no_device}");
        let stray = check(&format!("{remote}rdma_device = \"rxe0\"\n")).unwrap_err();
        assert!(stray.starts_with("rdma_device:"), "{stray}");
        #[cfg(not(feature = "rdma"))]
        {
            let text = format!("{remote}transport = \"rdma\"\nrdma_device = \"rxe0\"\n");
            assert!(
                check(&text)
                    .unwrap_err()
                    .contains("without the `rdma` feature")
            );
        }
        let zero = check("type = \"fs\"\nmax_object_bytes = 0\n").unwrap_err();
        assert_eq!(zero, "max_object_bytes: must be at least 1");
    }

    #[test]
    fn stores_build_as_configured() {
        let dir = tempfile::tempdir().unwrap();
        let fs = BlobStoreConfig::default_fs()
            .build("default", dir.path())
            .unwrap();
        assert_eq!(fs.kind(), "fs");
        assert!(dir.path().join("default").is_dir());
        let s3 = parse(
            "type = \"s3\"\nendpoint = \"http://127.0.0.1:1\"\nbucket = \"b\"\naccess_key_id = \"k\"\nsecret_access_key = \"s\"\n",
        )
        .unwrap()
        .build("archive", dir.path())
        .unwrap();
        assert_eq!(s3.kind(), "s3");
        let remote = parse("type = \"remote\"\naddress = \"127.0.0.1:1\"\nmax_object_bytes = 9\n")
            .unwrap()
            .build("node", dir.path())
            .unwrap();
        assert_eq!(
            (remote.kind(), remote.limits().max_object_bytes),
            ("remote", 9)
        );
        let unreachable = parse("type = \"remote\"\naddress = \"no-port\"\n")
            .unwrap()
            .build("node", dir.path());
        assert_eq!(unreachable.err().map(|e| e.key), Some("address"));
    }

    #[test]
    fn a_token_file_is_read_relative_to_the_config_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let build = |text: &str| {
            let mut config = parse(&format!(
                "type = \"remote\"\naddress = \"127.0.0.1:1\"\n{text}"
            ))
            .unwrap();
            config.resolve_paths(dir.path());
            config
                .build("node", dir.path())
                .err()
                .map(|e| e.to_string())
        };
        std::fs::write(dir.path().join("good"), "0123456789abcdef0123\n").unwrap();
        std::fs::write(dir.path().join("short"), "0123\n").unwrap();
        assert_eq!(build("token_file = \"good\"\n"), None);
        let short = build("token_file = \"short\"\n").unwrap();
        assert!(
            short.starts_with("token_file: ") && short.contains("at least 16 characters"),
            "{short}"
        );
        let missing = build("token_file = \"missing\"\n").unwrap();
        assert!(
            missing.starts_with("token_file: ") && missing.contains("missing"),
            "{missing}"
        );
    }
}
