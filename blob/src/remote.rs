//! The `remote` backend: the client of a storage node (`hearth-store`, in
//! the `hearth-store-node` crate, which serves this protocol), over any
//! [`Transport`]. The protocol's messages are defined here, once, for both
//! sides.
//!
//! # Protocol
//!
//! Every message starts with a tag byte: [`CONTROL`] (a JSON [`Request`] or
//! [`Reply`]) or [`DATA`] (object bytes of a write). A connection carries
//! one request at a time; [`RemoteBackend`] keeps a pool of connections.
//!
//! * **Hello first.** A connection's first message is `Hello { token }`,
//!   the host's credential (the contents of its `token_file`; none for a
//!   node that serves anyone). The node answers `Welcome { host }` with
//!   the name it knows this host by, or `Error { kind: "unauthorized" }`
//!   and closes the connection; [`RemoteBackend`] turns that into
//!   [`BlobError::Unavailable`] (`unavailable: storage node: not authorized:
//!   …`). What the host may reach (its scope) is the node's to decide, from
//!   the credential, never the host's to say.
//! * **Reads.** `Get` is answered with `Reading` (the object's description),
//!   then, chunk by chunk, `Chunk { slice, crc32c }`: the node has put the
//!   chunk into one of its registered buffers, and the client fetches it
//!   with a one-sided [`Transport::read`], checks the CRC-32C
//!   ([`BlobError::Corrupt`] if it does not match) and answers `Next`, which
//!   gives the buffer back. `End` closes the read. A client that goes away
//!   mid-read makes the node's next `recv` fail, and the buffer goes back
//!   to the pool all the same: the node never leaks registered memory.
//! * **Writes** come two ways; the node streams either into its backend,
//!   whose atomic write applies: a client that goes away mid-write leaves
//!   nothing visible.
//!   * *As messages:* `Put`, then [`DATA`] messages, then `PutEnd`.
//!   * *One-sided:* `WriteInto`; the node answers `Offer { slice }`, a
//!     registered buffer opened to this connection for writes; the client
//!     puts up to its length there with a one-sided [`Transport::write`]
//!     and says `Wrote { len, crc32c, last }`; the node closes the buffer,
//!     checks the CRC-32C, copies the bytes out (one copy) and, unless it
//!     was the last, offers the next buffer. An offer is a lease like a
//!     read's: unanswered, it ends the connection.
//!
//!   [`WriteMode::Messages`] is the default on every transport: measured
//!   on soft-RoCE, SENDs streamed into the node's posted receives moved
//!   64 MiB objects 2.2 times as fast as one-sided WRITEs, whose offer,
//!   write and `wrote` are one round trip per buffer (BENCHMARKS.md).
//!   [`WriteMode::OneSided`] (`writes = "one-sided"` on the store) is for
//!   NICs where a WRITE of a whole buffer is one DMA and a SEND per
//!   fragment is not.
//! * **Copies on reads.** The node copies each byte once, from the
//!   backend's chunk into a registered buffer; the client hands the bytes
//!   the transport landed up as they are (no copy), so the host's next copy
//!   is the one into guest memory.
//! * Everything else is one `Request`, one `Reply`. Errors cross as
//!   `Reply::Error` with the [`BlobError`] kind and message.

use crate::regions::RemoteSlice;
use crate::transport::{Transport, TransportError};
use crate::{BlobBackend, BlobError, ByteRange, ByteStream, ContainerInfo, ListPage, ObjectInfo};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// Tag of a JSON control message.
pub const CONTROL: u8 = 0;
/// Tag of a message of object bytes.
pub const DATA: u8 = 1;
/// The most bytes one write message carries.
pub const WRITE_CHUNK_BYTES: usize = 1 << 20;

/// A client's request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// The first message of every connection: who this host is.
    Hello {
        /// The host's token (`None` to a node that authenticates nobody).
        token: Option<Token>,
    },
    /// See [`BlobBackend::create_container`].
    CreateContainer {
        /// The container.
        container: String,
    },
    /// See [`BlobBackend::container_info`].
    ContainerInfo {
        /// The container.
        container: String,
    },
    /// See [`BlobBackend::delete_container`].
    DeleteContainer {
        /// The container.
        container: String,
    },
    /// See [`BlobBackend::info`].
    Info {
        /// The container.
        container: String,
        /// The object.
        name: String,
    },
    /// See [`BlobBackend::delete`].
    Delete {
        /// The container.
        container: String,
        /// The object.
        name: String,
    },
    /// See [`BlobBackend::list`].
    List {
        /// The container.
        container: String,
        /// The cursor.
        after: Option<String>,
        /// The page size.
        limit: usize,
    },
    /// See [`BlobBackend::get`]; answered as the module docs say.
    Get {
        /// The container.
        container: String,
        /// The object.
        name: String,
        /// The first byte.
        start: u64,
        /// The last byte (inclusive).
        end: u64,
    },
    /// The next chunk of a read, please (the last one's buffer is free).
    Next,
    /// See [`BlobBackend::put`]: data messages follow, then `PutEnd`.
    Put {
        /// The container.
        container: String,
        /// The object.
        name: String,
    },
    /// The write's data is complete.
    PutEnd,
    /// See [`BlobBackend::put`]: one-sided writes into the buffers the
    /// node offers follow (see the module docs).
    WriteInto {
        /// The container.
        container: String,
        /// The object.
        name: String,
    },
    /// The offered buffer holds the next `len` bytes of the object.
    Wrote {
        /// How many bytes were written (from the start of the buffer).
        len: u64,
        /// Their CRC-32C.
        crc32c: u32,
        /// Whether they are the object's last.
        last: bool,
    },
}

/// A host's token as it crosses the wire: its `Debug` never shows it, so
/// a logged request gives nobody the credential.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Token(pub String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

/// A node's reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Reply {
    /// The node accepted the `Hello`.
    Welcome {
        /// The name the node knows this host by.
        host: String,
    },
    /// Done, nothing to say.
    Done,
    /// A container.
    Container(ContainerInfo),
    /// An object.
    Object(ObjectInfo),
    /// A page of names.
    Page {
        /// The names.
        names: Vec<String>,
        /// The next cursor.
        next: Option<String>,
    },
    /// A read starts; `Chunk`s follow.
    Reading {
        /// The object's size.
        size: u64,
        /// When it was written.
        created_at_ms: u64,
    },
    /// The next chunk, in a registered buffer.
    Chunk {
        /// Where to read it.
        region: u32,
        /// The region's key.
        key: u32,
        /// Its length.
        len: u64,
        /// Its CRC-32C.
        crc32c: u32,
    },
    /// The read is complete.
    End,
    /// A buffer open for the next bytes of a `WriteInto`.
    Offer {
        /// Where to write.
        region: u32,
        /// The region's key.
        key: u32,
        /// How many bytes it takes.
        len: u64,
    },
    /// The request failed.
    Error {
        /// `invalid-name`, `not-found`, `already-exists`, `too-large`,
        /// `corrupt`, `unavailable`, `unauthorized` (a refused `Hello`),
        /// `other`.
        kind: String,
        /// The message.
        message: String,
        /// For `too-large`: the limit.
        limit: Option<u64>,
    },
}

impl Reply {
    /// The reply that carries `error` across the wire.
    pub fn from_error(error: &BlobError) -> Self {
        let (kind, message, limit) = match error {
            BlobError::InvalidName(m) => ("invalid-name", m.clone(), None),
            BlobError::NotFound(m) => ("not-found", m.clone(), None),
            BlobError::AlreadyExists(m) => ("already-exists", m.clone(), None),
            BlobError::TooLarge { limit } => ("too-large", String::new(), Some(*limit)),
            BlobError::Corrupt(m) => ("corrupt", m.clone(), None),
            BlobError::Unavailable(m) => ("unavailable", m.clone(), None),
            BlobError::Other(m) => ("other", m.clone(), None),
        };
        Reply::Error {
            kind: kind.into(),
            message,
            limit,
        }
    }

    /// The container this reply describes.
    fn into_container(self) -> Result<ContainerInfo, BlobError> {
        match self {
            Reply::Container(info) => Ok(info),
            other => Err(other.into_error()),
        }
    }

    /// The object this reply describes.
    fn into_object(self) -> Result<ObjectInfo, BlobError> {
        match self {
            Reply::Object(info) => Ok(info),
            other => Err(other.into_error()),
        }
    }

    /// `Done`, or the error.
    fn into_done(self) -> Result<(), BlobError> {
        match self {
            Reply::Done => Ok(()),
            other => Err(other.into_error()),
        }
    }

    /// The error this reply carries (or says by being unexpected).
    fn into_error(self) -> BlobError {
        match self {
            Reply::Error {
                kind,
                message,
                limit,
            } => error_from(&kind, message, limit),
            other => BlobError::Other(format!("storage node answered {other:?}")),
        }
    }
}

fn error_from(kind: &str, message: String, limit: Option<u64>) -> BlobError {
    match kind {
        "invalid-name" => BlobError::InvalidName(message),
        "not-found" => BlobError::NotFound(message),
        "already-exists" => BlobError::AlreadyExists(message),
        "too-large" => BlobError::TooLarge {
            limit: limit.unwrap_or(0),
        },
        "corrupt" => BlobError::Corrupt(message),
        "unavailable" => BlobError::Unavailable(message),
        "unauthorized" => {
            BlobError::Unavailable(format!("storage node: not authorized: {message}"))
        }
        _ => BlobError::Other(message),
    }
}

/// A control message: [`CONTROL`] and the JSON of `message`.
pub fn encode<T: Serialize>(message: &T) -> Bytes {
    let mut out = vec![CONTROL];
    serde_json::to_writer(&mut out, message).expect("serializable");
    Bytes::from(out)
}

/// The JSON of a control message.
pub fn decode<T: for<'de> Deserialize<'de>>(message: &[u8]) -> Result<T, TransportError> {
    match message.split_first() {
        Some((&CONTROL, json)) => serde_json::from_slice(json)
            .map_err(|e| TransportError::Protocol(format!("bad control message: {e}"))),
        _ => Err(TransportError::Protocol(
            "expected a control message".into(),
        )),
    }
}

/// Makes a new connection to the storage node.
pub type Connector =
    Arc<dyn Fn() -> BoxFuture<'static, Result<Arc<dyn Transport>, BlobError>> + Send + Sync>;

/// How a [`RemoteBackend`] sends the bytes of a write; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteMode {
    /// `DATA` messages.
    #[default]
    Messages,
    /// One-sided writes into the node's offered buffers.
    OneSided,
}

/// The `remote` backend: a storage node over a [`Transport`]; see the
/// module docs.
pub struct RemoteBackend {
    connect: Connector,
    token: Option<Arc<str>>,
    idle: Idle,
    write_mode: WriteMode,
}

/// Connections with no request in progress.
type Idle = Arc<Mutex<Vec<Arc<dyn Transport>>>>;

fn unavailable(error: TransportError) -> BlobError {
    BlobError::Unavailable(format!("storage node: {error}"))
}

/// The node's next reply on `connection`.
async fn next_reply(connection: &dyn Transport) -> Result<Reply, BlobError> {
    decode(&connection.recv().await.map_err(unavailable)?).map_err(unavailable)
}

impl RemoteBackend {
    /// A backend that opens connections with `connect` as it needs them,
    /// and says `Hello` without a token (to a node that serves anyone).
    pub fn new(connect: Connector) -> Self {
        Self::with_token(connect, None)
    }

    /// [`RemoteBackend::new`] presenting `token` in each connection's
    /// `Hello`.
    pub fn with_token(connect: Connector, token: Option<String>) -> Self {
        RemoteBackend {
            connect,
            token: token.map(Arc::from),
            idle: Idle::default(),
            write_mode: WriteMode::default(),
        }
    }

    /// The same backend, writing the way `mode` says.
    pub fn with_write_mode(mut self, mode: WriteMode) -> Self {
        self.write_mode = mode;
        self
    }

    async fn connection(&self) -> Result<Arc<dyn Transport>, BlobError> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match idle {
            Some(connection) => Ok(connection),
            None => self.connect_and_hello().await,
        }
    }

    /// A new connection, past its `Hello`.
    async fn connect_and_hello(&self) -> Result<Arc<dyn Transport>, BlobError> {
        let connection = (self.connect)().await?;
        connection
            .send(encode(&Request::Hello {
                token: self.token.as_deref().map(|token| Token(token.to_string())),
            }))
            .await
            .map_err(unavailable)?;
        let reply: Reply = next_reply(&*connection).await?;
        match reply {
            Reply::Welcome { .. } => Ok(connection),
            other => Err(other.into_error()),
        }
    }

    fn give_back(&self, connection: Arc<dyn Transport>) {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(connection);
    }

    /// One request, one reply; the connection goes back to the pool only
    /// when the exchange completed.
    async fn call(&self, request: &Request) -> Result<Reply, BlobError> {
        let connection = self.connection().await?;
        connection
            .send(encode(request))
            .await
            .map_err(unavailable)?;
        let reply: Reply = next_reply(&*connection).await?;
        self.give_back(connection);
        Ok(reply)
    }
}

#[async_trait]
impl BlobBackend for RemoteBackend {
    fn kind(&self) -> &'static str {
        "remote"
    }

    async fn create_container(&self, container: &str) -> Result<ContainerInfo, BlobError> {
        self.call(&Request::CreateContainer {
            container: container.into(),
        })
        .await?
        .into_container()
    }

    async fn container_info(&self, container: &str) -> Result<ContainerInfo, BlobError> {
        self.call(&Request::ContainerInfo {
            container: container.into(),
        })
        .await?
        .into_container()
    }

    async fn delete_container(&self, container: &str) -> Result<(), BlobError> {
        self.call(&Request::DeleteContainer {
            container: container.into(),
        })
        .await?
        .into_done()
    }

    async fn put(
        &self,
        container: &str,
        name: &str,
        mut body: ByteStream,
        limit: u64,
    ) -> Result<ObjectInfo, BlobError> {
        let connection = self.connection().await?;
        if self.write_mode == WriteMode::OneSided {
            return self
                .put_one_sided(connection, container, name, body, limit)
                .await;
        }
        connection
            .send(encode(&Request::Put {
                container: container.into(),
                name: name.into(),
            }))
            .await
            .map_err(unavailable)?;
        let mut sent = 0u64;
        while let Some(chunk) = body.next().await {
            // A failing body, or one over the limit, drops the connection:
            // the node's write fails and nothing becomes visible.
            let chunk = chunk?;
            sent += chunk.len() as u64;
            if sent > limit {
                return Err(BlobError::TooLarge { limit });
            }
            for piece in chunk.chunks(WRITE_CHUNK_BYTES) {
                let mut message = Vec::with_capacity(piece.len() + 1);
                message.push(DATA);
                message.extend_from_slice(piece);
                connection
                    .send(Bytes::from(message))
                    .await
                    .map_err(unavailable)?;
            }
        }
        connection
            .send(encode(&Request::PutEnd))
            .await
            .map_err(unavailable)?;
        let reply: Reply = next_reply(&*connection).await?;
        self.give_back(connection);
        reply.into_object()
    }

    async fn get(
        &self,
        container: &str,
        name: &str,
        range: ByteRange,
    ) -> Result<(ObjectInfo, ByteStream), BlobError> {
        let connection = self.connection().await?;
        connection
            .send(encode(&Request::Get {
                container: container.into(),
                name: name.into(),
                start: range.start,
                end: range.end,
            }))
            .await
            .map_err(unavailable)?;
        let reply: Reply = next_reply(&*connection).await?;
        let info = match reply {
            Reply::Reading {
                size,
                created_at_ms,
            } => ObjectInfo {
                name: name.into(),
                container: container.into(),
                created_at_ms,
                size,
            },
            error @ Reply::Error { .. } => {
                self.give_back(connection);
                return Err(error.into_error());
            }
            other => return Err(other.into_error()),
        };
        let what = format!("object `{name}` in container `{container}`");
        let (start, end) = range.clamp(info.size);
        let state = ReadState {
            connection: Some(connection),
            idle: self.idle.clone(),
            what,
            remaining: end - start,
        };
        let body = futures_util::stream::try_unfold(state, |mut state| async move {
            let Some(connection) = state.connection.clone() else {
                return Ok(None);
            };
            let reply: Reply = next_reply(&*connection).await?;
            match reply {
                Reply::Chunk {
                    region,
                    key,
                    len,
                    crc32c,
                } => {
                    let data = connection
                        .read(RemoteSlice {
                            region,
                            key,
                            offset: 0,
                            len,
                        })
                        .await
                        .map_err(unavailable)?;
                    connection
                        .send(encode(&Request::Next))
                        .await
                        .map_err(unavailable)?;
                    if crc32c::crc32c(&data) != crc32c {
                        return Err(BlobError::Corrupt(format!(
                            "{}: a chunk did not match its checksum on the way",
                            state.what
                        )));
                    }
                    state.remaining = state.remaining.saturating_sub(len);
                    if state.remaining == 0 {
                        // The last chunk: take the `End` before handing it
                        // up, so a reader that stops at the last byte
                        // (without asking for more) still leaves the
                        // connection ready for the next request.
                        let end: Reply = next_reply(&*connection).await?;
                        match end {
                            Reply::End => state.finished(),
                            other => return Err(other.into_error()),
                        }
                    }
                    Ok(Some((data, state)))
                }
                Reply::End => {
                    state.finished();
                    Ok(None)
                }
                other => Err(other.into_error()),
            }
        });
        Ok((info, body.boxed()))
    }

    async fn info(&self, container: &str, name: &str) -> Result<ObjectInfo, BlobError> {
        self.call(&Request::Info {
            container: container.into(),
            name: name.into(),
        })
        .await?
        .into_object()
    }

    async fn delete(&self, container: &str, name: &str) -> Result<(), BlobError> {
        self.call(&Request::Delete {
            container: container.into(),
            name: name.into(),
        })
        .await?
        .into_done()
    }

    async fn list(
        &self,
        container: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, BlobError> {
        match self
            .call(&Request::List {
                container: container.into(),
                after: after.map(str::to_string),
                limit,
            })
            .await?
        {
            Reply::Page { names, next } => Ok(ListPage { names, next }),
            other => Err(other.into_error()),
        }
    }

    async fn ping(&self) -> Result<(), BlobError> {
        self.connection()
            .await
            .map(|connection| self.give_back(connection))
    }
}

impl RemoteBackend {
    /// [`BlobBackend::put`] by one-sided writes into the node's offered
    /// buffers (see the module docs). A body chunk that fills an offer
    /// goes as it is; smaller ones are gathered into one buffer first.
    async fn put_one_sided(
        &self,
        connection: Arc<dyn Transport>,
        container: &str,
        name: &str,
        mut body: ByteStream,
        limit: u64,
    ) -> Result<ObjectInfo, BlobError> {
        connection
            .send(encode(&Request::WriteInto {
                container: container.into(),
                name: name.into(),
            }))
            .await
            .map_err(unavailable)?;
        let mut sent = 0u64;
        let mut left = Bytes::new();
        let mut body_done = false;
        loop {
            let reply: Reply = next_reply(&*connection).await?;
            let offer = match reply {
                Reply::Offer { region, key, len } => RemoteSlice {
                    region,
                    key,
                    offset: 0,
                    len,
                },
                Reply::Object(info) => {
                    self.give_back(connection);
                    return Ok(info);
                }
                error @ Reply::Error { .. } => {
                    // The node refused the write before or between
                    // offers: the exchange is over, the connection ready.
                    self.give_back(connection);
                    return Err(error.into_error());
                }
                other => return Err(other.into_error()),
            };
            let room = usize::try_from(offer.len).unwrap_or(usize::MAX);
            // The next bytes: a chunk that fills the offer as it is, or
            // what fits of the following chunks gathered in one buffer.
            let mut current = std::mem::take(&mut left);
            let mut gathered: Option<Vec<u8>> = None;
            loop {
                let have = gathered.as_ref().map_or(current.len(), Vec::len);
                if have >= room || body_done {
                    break;
                }
                match body.next().await {
                    // A failing body, or one over the limit, drops the
                    // connection: the node's write fails, nothing is kept.
                    Some(chunk) => {
                        let chunk = chunk?;
                        sent += chunk.len() as u64;
                        if sent > limit {
                            return Err(BlobError::TooLarge { limit });
                        }
                        if gathered.is_none() && current.is_empty() {
                            current = chunk;
                            continue;
                        }
                        let into = gathered.get_or_insert_with(|| {
                            let mut into = Vec::with_capacity(room);
                            into.extend_from_slice(&current);
                            into
                        });
                        let take = (room - into.len()).min(chunk.len());
                        into.extend_from_slice(&chunk[..take]);
                        left = chunk.slice(take..);
                    }
                    None => body_done = true,
                }
            }
            let data = match gathered {
                Some(gathered) => Bytes::from(gathered),
                None => {
                    if current.len() > room {
                        left = current.split_off(room);
                    }
                    current
                }
            };
            let last = body_done && left.is_empty();
            let wrote = Request::Wrote {
                len: data.len() as u64,
                crc32c: crc32c::crc32c(&data),
                last,
            };
            if !data.is_empty() {
                let slice = RemoteSlice {
                    len: data.len() as u64,
                    ..offer
                };
                connection.write(slice, data).await.map_err(unavailable)?;
            }
            connection.send(encode(&wrote)).await.map_err(unavailable)?;
        }
    }
}

/// A read in progress on the client side.
struct ReadState {
    connection: Option<Arc<dyn Transport>>,
    idle: Idle,
    what: String,
    /// Bytes of the range not read yet.
    remaining: u64,
}

impl ReadState {
    /// A read that ran to its `End` leaves the connection ready for the
    /// next request; one cut short does not (the node is mid-read), and
    /// is dropped with the state.
    fn finished(&mut self) {
        if let Some(connection) = self.connection.take() {
            self.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(connection);
        }
    }
}

/// The shortest token a host may present.
pub const MIN_TOKEN_CHARS: usize = 16;

/// The token in `path`: its contents without surrounding whitespace (so
/// `openssl rand -hex 32 > FILE` makes one), at least
/// [`MIN_TOKEN_CHARS`] long.
pub fn read_token_file(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let token = text.trim();
    if token.chars().count() < MIN_TOKEN_CHARS {
        return Err(format!(
            "{}: a token has at least {MIN_TOKEN_CHARS} characters (make one with `openssl rand -hex 32`)",
            path.display()
        ));
    }
    Ok(token.to_string())
}

/// Connects to a storage node at `addr` over TCP.
pub fn tcp_connector(addr: std::net::SocketAddr, timeout: std::time::Duration) -> Connector {
    Arc::new(move || {
        Box::pin(async move {
            let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| {
                    BlobError::Unavailable(format!("storage node {addr}: connect timed out"))
                })?
                .map_err(|e| BlobError::Unavailable(format!("storage node {addr}: {e}")))?;
            // This side registers nothing: the node never reads from us.
            let transport = crate::transport::tcp::TcpTransport::new(
                stream,
                Arc::new(crate::regions::RegionTable::default()),
            );
            Ok(Arc::new(transport) as Arc<dyn Transport>)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_crosses_the_wire_with_its_token_and_never_logs_it() {
        let hello = Request::Hello {
            token: Some(Token("secret-token-0123456789".into())),
        };
        let wire = encode(&hello);
        assert!(String::from_utf8_lossy(&wire).contains("\"token\":\"secret-token-0123456789\""));
        let Request::Hello { token } = decode::<Request>(&wire).unwrap() else {
            panic!("not a hello");
        };
        assert_eq!(token.unwrap().0, "secret-token-0123456789");
        assert!(!format!("{hello:?}").contains("secret"), "{hello:?}");
    }
}
