//! The `remote` backend and the storage node's side of its protocol,
//! written once over any [`Transport`].
//!
//! # Protocol
//!
//! Every message starts with a tag byte: [`CONTROL`] (a JSON [`Request`] or
//! [`Reply`]) or [`DATA`] (object bytes of a write). A connection carries
//! one request at a time; [`RemoteBackend`] keeps a pool of connections.
//!
//! * **Reads.** `Get` is answered with `Reading` (the object's description),
//!   then, chunk by chunk, `Chunk { slice, crc32c }`: the node has put the
//!   chunk into one of its registered buffers, and the client fetches it
//!   with a one-sided [`Transport::read`], checks the CRC-32C
//!   ([`BlobError::Corrupt`] if it does not match) and answers `Next`, which
//!   gives the buffer back. `End` closes the read. A client that goes away
//!   mid-read makes the node's next `recv` fail, and the buffer goes back
//!   to the pool all the same: the node never leaks registered memory.
//! * **Writes.** `Put` is followed by [`DATA`] messages and `PutEnd`; the
//!   node streams them into its backend, whose atomic write applies: a
//!   client that goes away mid-write leaves nothing visible.
//! * **Copies on reads.** The node copies each byte once, from the
//!   backend's chunk into a registered buffer; the client hands the bytes
//!   the transport landed up as they are (no copy), so the host's next copy
//!   is the one into guest memory.
//! * Everything else is one `Request`, one `Reply`. Errors cross as
//!   `Reply::Error` with the [`BlobError`] kind and message.

use crate::regions::{BufferPool, PooledBuffer, RemoteSlice};
use crate::transport::{Transport, TransportError};
use crate::{
    BlobBackend, BlobError, BlobStore, ByteRange, ByteStream, ContainerInfo, ListPage, ObjectInfo,
};
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
}

/// A node's reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Reply {
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
    /// The request failed.
    Error {
        /// `invalid-name`, `not-found`, `already-exists`, `too-large`,
        /// `corrupt`, `unavailable`, `other`.
        kind: String,
        /// The message.
        message: String,
        /// For `too-large`: the limit.
        limit: Option<u64>,
    },
}

impl Reply {
    fn from_error(error: &BlobError) -> Self {
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
        _ => BlobError::Other(message),
    }
}

fn encode<T: Serialize>(message: &T) -> Bytes {
    let mut out = vec![CONTROL];
    serde_json::to_writer(&mut out, message).expect("serializable");
    Bytes::from(out)
}

fn decode<T: for<'de> Deserialize<'de>>(message: &[u8]) -> Result<T, TransportError> {
    match message.split_first() {
        Some((&CONTROL, json)) => serde_json::from_slice(json)
            .map_err(|e| TransportError::Protocol(format!("bad control message: {e}"))),
        _ => Err(TransportError::Protocol(
            "expected a control message".into(),
        )),
    }
}

/// Serves `store` to one connection until it ends, reading chunks out of
/// `pool`'s registered buffers.
pub async fn serve_connection(
    transport: Arc<dyn Transport>,
    store: BlobStore,
    pool: Arc<BufferPool>,
) -> Result<(), TransportError> {
    loop {
        let request: Request = match transport.recv().await {
            Ok(message) => decode(&message)?,
            Err(TransportError::Closed(_)) => return Ok(()),
            Err(other) => return Err(other),
        };
        let reply = match request {
            Request::CreateContainer { container } => store
                .create_container(&container)
                .await
                .map(Reply::Container),
            Request::ContainerInfo { container } => {
                store.container_info(&container).await.map(Reply::Container)
            }
            Request::DeleteContainer { container } => store
                .delete_container(&container)
                .await
                .map(|()| Reply::Done),
            Request::Info { container, name } => {
                store.info(&container, &name).await.map(Reply::Object)
            }
            Request::Delete { container, name } => {
                store.delete(&container, &name).await.map(|()| Reply::Done)
            }
            Request::List {
                container,
                after,
                limit,
            } => store
                .list(&container, after.as_deref(), limit)
                .await
                .map(|page| Reply::Page {
                    names: page.names,
                    next: page.next,
                }),
            Request::Get {
                container,
                name,
                start,
                end,
            } => {
                serve_read(
                    &*transport,
                    &store,
                    &pool,
                    &container,
                    &name,
                    ByteRange { start, end },
                )
                .await?;
                continue;
            }
            Request::Put { container, name } => {
                serve_write(&transport, &store, &container, &name).await
            }
            Request::Next | Request::PutEnd => {
                return Err(TransportError::Protocol(
                    "`next` or `put-end` outside a read or write".into(),
                ));
            }
        };
        let reply = reply.unwrap_or_else(|error| Reply::from_error(&error));
        transport.send(encode(&reply)).await?;
    }
}

async fn serve_read(
    transport: &dyn Transport,
    store: &BlobStore,
    pool: &Arc<BufferPool>,
    container: &str,
    name: &str,
    range: ByteRange,
) -> Result<(), TransportError> {
    let (info, mut body) = match store.get(container, name, range).await {
        Ok(found) => found,
        Err(error) => return transport.send(encode(&Reply::from_error(&error))).await,
    };
    transport
        .send(encode(&Reply::Reading {
            size: info.size,
            created_at_ms: info.created_at_ms,
        }))
        .await?;
    // The backend's chunks are copied once, into registered buffers, and
    // each full buffer (the last may be short) is offered to the client.
    let mut chunk = Bytes::new();
    let mut buffer: Option<PooledBuffer> = None;
    let mut ended = false;
    loop {
        if chunk.is_empty() && !ended {
            match body.next().await {
                Some(Ok(next)) => chunk = next,
                Some(Err(error)) => {
                    return transport.send(encode(&Reply::from_error(&error))).await;
                }
                None => ended = true,
            }
        }
        if !chunk.is_empty() {
            if buffer.is_none() {
                let Some(taken) = pool.take() else {
                    let error =
                        BlobError::Unavailable("the storage node has no free read buffer".into());
                    return transport.send(encode(&Reply::from_error(&error))).await;
                };
                buffer = Some(taken);
            }
            let filled = buffer.as_ref().expect("just taken").append(&chunk);
            bytes::Buf::advance(&mut chunk, filled);
        }
        let offer = match &buffer {
            Some(held) => held.is_full() || (ended && chunk.is_empty()),
            None => false,
        };
        if offer {
            let held = buffer.take().expect("checked");
            let (slice, crc32c) = held.advertise();
            transport
                .send(encode(&Reply::Chunk {
                    region: slice.region,
                    key: slice.key,
                    len: slice.len,
                    crc32c,
                }))
                .await?;
            // The buffer stays registered until the client says `next`
            // (or goes away: then `recv` fails and the buffer is dropped
            // here, back to the pool).
            let answer: Request = decode(&transport.recv().await?)?;
            drop(held);
            if !matches!(answer, Request::Next) {
                return Err(TransportError::Protocol(
                    "expected `next` during a read".into(),
                ));
            }
        }
        if ended && chunk.is_empty() && buffer.is_none() {
            return transport.send(encode(&Reply::End)).await;
        }
    }
}

async fn serve_write(
    transport: &Arc<dyn Transport>,
    store: &BlobStore,
    container: &str,
    name: &str,
) -> Result<Reply, BlobError> {
    // Data messages flow into the backend's put as a stream; the put ends
    // when `put-end` arrives (or fails, and nothing is written, when the
    // client goes away or sends something else).
    let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let incoming = futures_util::stream::try_unfold(
        (transport.clone(), ended.clone()),
        |(transport, ended)| async move {
            let message = transport.recv().await.map_err(|e| {
                BlobError::Unavailable(format!("the client went away mid-write: {e}"))
            })?;
            match message.first() {
                Some(&DATA) => Ok(Some((message.slice(1..), (transport, ended)))),
                Some(&CONTROL) => match decode::<Request>(&message) {
                    Ok(Request::PutEnd) => {
                        ended.store(true, std::sync::atomic::Ordering::SeqCst);
                        Ok(None)
                    }
                    _ => Err(BlobError::Other(
                        "expected data or `put-end` during a write".into(),
                    )),
                },
                _ => Err(BlobError::Other("an empty message during a write".into())),
            }
        },
    )
    .boxed();
    let written = store.put(container, name, incoming).await;
    // A put refused early (a missing container, a bad name, over the
    // limit) did not read all the data: skip the rest, so the connection is
    // ready for the next request.
    while !ended.load(std::sync::atomic::Ordering::SeqCst) {
        let Ok(message) = transport.recv().await else {
            break;
        };
        if message.first() == Some(&CONTROL)
            && matches!(decode::<Request>(&message), Ok(Request::PutEnd))
        {
            break;
        }
    }
    written.map(Reply::Object)
}

/// Makes a new connection to the storage node.
pub type Connector =
    Arc<dyn Fn() -> BoxFuture<'static, Result<Arc<dyn Transport>, BlobError>> + Send + Sync>;

/// The `remote` backend: a storage node over a [`Transport`]; see the
/// module docs.
pub struct RemoteBackend {
    connect: Connector,
    idle: Idle,
}

/// Connections with no request in progress.
type Idle = Arc<Mutex<Vec<Arc<dyn Transport>>>>;

fn unavailable(error: TransportError) -> BlobError {
    BlobError::Unavailable(format!("storage node: {error}"))
}

impl RemoteBackend {
    /// A backend that opens connections with `connect` as it needs them.
    pub fn new(connect: Connector) -> Self {
        RemoteBackend {
            connect,
            idle: Idle::default(),
        }
    }

    async fn connection(&self) -> Result<Arc<dyn Transport>, BlobError> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match idle {
            Some(connection) => Ok(connection),
            None => (self.connect)().await,
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
        let reply: Reply =
            decode(&connection.recv().await.map_err(unavailable)?).map_err(unavailable)?;
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
        let reply: Reply =
            decode(&connection.recv().await.map_err(unavailable)?).map_err(unavailable)?;
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
        let reply: Reply =
            decode(&connection.recv().await.map_err(unavailable)?).map_err(unavailable)?;
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
        let state = ReadState {
            connection: Some(connection),
            idle: self.idle.clone(),
            what,
        };
        let body = futures_util::stream::try_unfold(state, |mut state| async move {
            let Some(connection) = state.connection.clone() else {
                return Ok(None);
            };
            let reply: Reply =
                decode(&connection.recv().await.map_err(unavailable)?).map_err(unavailable)?;
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
                    Ok(Some((data, state)))
                }
                Reply::End => {
                    // A read that ran to its end leaves the connection
                    // ready for the next request; one cut short does not
                    // (the node is mid-read), and is dropped.
                    if let Some(connection) = state.connection.take() {
                        state
                            .idle
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(connection);
                    }
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

/// A read in progress on the client side.
struct ReadState {
    connection: Option<Arc<dyn Transport>>,
    idle: Idle,
    what: String,
}

/// Serves `store` to every connection `listener` accepts, over TCP, with
/// `pool`'s buffers (registered in `regions`) for reads. Runs until the
/// listener fails.
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    store: BlobStore,
    pool: Arc<BufferPool>,
    regions: Arc<crate::regions::RegionTable>,
) -> std::io::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        let transport: Arc<dyn Transport> = Arc::new(crate::transport::tcp::TcpTransport::new(
            stream,
            regions.clone(),
        ));
        let (store, pool) = (store.clone(), pool.clone());
        tokio::spawn(async move {
            if let Err(error) = serve_connection(transport, store, pool).await {
                tracing::warn!(%peer, error = %error, "storage connection ended with an error");
            }
        });
    }
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

/// Connects to an in-process storage node serving `store` with `pool`'s
/// buffers (registered in `regions`) over the loopback transport: each
/// connection is a [`crate::transport::loopback::pair`] whose node end is
/// served by [`serve_connection`].
pub fn loopback_connector(
    store: BlobStore,
    pool: Arc<BufferPool>,
    regions: Arc<crate::regions::RegionTable>,
) -> Connector {
    Arc::new(move || {
        let (store, pool, regions) = (store.clone(), pool.clone(), regions.clone());
        Box::pin(async move {
            let (client, node) = crate::transport::loopback::pair(
                Arc::new(crate::regions::RegionTable::default()),
                regions,
            );
            tokio::spawn(serve_connection(Arc::new(node), store, pool));
            Ok(Arc::new(client) as Arc<dyn Transport>)
        })
    })
}
