//! hearthd's control API, generated from the one `.proto`
//! (`control/proto/hearth/control/v1/control.proto`, which documents every
//! call), and the socket conventions both sides share.
//!
//! # Contract
//!
//! * The socket is `$HEARTH_SOCKET` when set, else [`DEFAULT_SOCKET`].
//! * hearthd creates it with mode 0600 (root only) in a 0700 directory it
//!   creates if missing, and removes a stale socket file left by a previous
//!   run only when nothing answers on it.
//! * [`connect`] returns a client, or an error naming the socket path.

#![allow(missing_docs)] // generated code below carries the .proto's comments

pub mod listener;

/// Generated messages, client and server.
pub mod v1 {
    tonic::include_proto!("hearth.control.v1");
}

use std::path::{Path, PathBuf};

/// Where hearthd listens unless `$HEARTH_SOCKET` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/hearth/hearthd.sock";

/// The control socket path: `$HEARTH_SOCKET`, else [`DEFAULT_SOCKET`].
pub fn socket_path() -> PathBuf {
    std::env::var_os("HEARTH_SOCKET")
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// A client of the control API.
pub type ControlClient = v1::control_client::ControlClient<tonic::transport::Channel>;

/// Connects to hearthd's control socket at `path`.
pub async fn connect(path: &Path) -> Result<ControlClient, ConnectError> {
    let channel = unix_channel(path).await.map_err(|error| ConnectError {
        socket: path.to_path_buf(),
        detail: error_chain(&error),
    })?;
    Ok(v1::control_client::ControlClient::new(channel))
}

/// A gRPC channel over the unix socket at `path` (hearthd's, or any other
/// gRPC server's such as containerd's CRI).
pub async fn unix_channel(
    path: &Path,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let socket = path.to_path_buf();
    tonic::transport::Endpoint::from_static("http://unix.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

/// hearthd could not be reached.
#[derive(Debug)]
pub struct ConnectError {
    /// The socket tried.
    pub socket: PathBuf,
    /// Why it failed.
    pub detail: String,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot reach hearthd at {} ({}); is hearthd running? ($HEARTH_SOCKET overrides the path)",
            self.socket.display(),
            self.detail
        )
    }
}

impl std::error::Error for ConnectError {}

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
