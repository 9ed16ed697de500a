//! The storage node's side of the `remote` protocol
//! ([`hearth_blob::remote`] defines the messages and the client): one
//! connection at a time is served by [`serve_connection`], over TCP
//! ([`serve_tcp`]), RDMA verbs (`serve_rdma`, feature `rdma`) or an
//! in-process loopback pair ([`loopback_connector`], for tests).
//!
//! # Contract
//!
//! * Reads put each chunk of the backend's object into one of the pool's
//!   registered buffers (one copy), answer `Chunk { slice, crc32c }`, and
//!   wait for the client's `Next` before reusing the buffer; a client that
//!   goes away mid-read gives the buffer back all the same.
//! * Writes stream `DATA` messages into the backend's atomic put: a client
//!   that goes away mid-write leaves nothing visible.
//! * Errors cross as `Reply::Error` with the [`BlobError`] kind.

use bytes::Bytes;
use futures_util::StreamExt;
use hearth_blob::regions::{BufferPool, PooledBuffer, RegionTable};
use hearth_blob::remote::{CONTROL, Connector, DATA, Reply, Request, decode, encode};
use hearth_blob::transport::{Transport, TransportError};
use hearth_blob::{BlobError, BlobStore, ByteRange};
use std::sync::Arc;

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

/// Serves `store` to every connection `listener` accepts, over TCP, with
/// `pool`'s buffers (registered in `regions`) for reads. Runs until the
/// listener fails.
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    store: BlobStore,
    pool: Arc<BufferPool>,
    regions: Arc<RegionTable>,
) -> std::io::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        let transport: Arc<dyn Transport> = Arc::new(
            hearth_blob::transport::tcp::TcpTransport::new(stream, regions.clone()),
        );
        let (store, pool) = (store.clone(), pool.clone());
        tokio::spawn(async move {
            if let Err(error) = serve_connection(transport, store, pool).await {
                tracing::warn!(%peer, error = %error, "storage connection ended with an error");
            }
        });
    }
}

/// Connects to an in-process storage node serving `store` with `pool`'s
/// buffers (registered in `regions`) over the loopback transport: each
/// connection is a [`hearth_blob::transport::loopback::pair`] whose node end is
/// served by [`serve_connection`].
pub fn loopback_connector(
    store: BlobStore,
    pool: Arc<BufferPool>,
    regions: Arc<RegionTable>,
) -> Connector {
    Arc::new(move || {
        let (store, pool, regions) = (store.clone(), pool.clone(), regions.clone());
        Box::pin(async move {
            let (client, node) =
                hearth_blob::transport::loopback::pair(Arc::new(RegionTable::default()), regions);
            tokio::spawn(serve_connection(Arc::new(node), store, pool));
            Ok(Arc::new(client) as Arc<dyn Transport>)
        })
    })
}
/// Serves `store` over RDMA to every connection `listener` accepts (the
/// setup socket), reads out of `pool`'s buffers, which `regions` (made
/// [`RegionTable::with_registrar`] with `device`) registers with the NIC.
#[cfg(feature = "rdma")]
pub async fn serve_rdma(
    listener: tokio::net::TcpListener,
    device: Arc<hearth_blob::rdma::VerbsDevice>,
    store: BlobStore,
    pool: Arc<hearth_blob::regions::BufferPool>,
    regions: Arc<RegionTable>,
) -> std::io::Result<()> {
    loop {
        let (socket, peer) = listener.accept().await?;
        let (device, store, pool, regions) =
            (device.clone(), store.clone(), pool.clone(), regions.clone());
        tokio::spawn(async move {
            match hearth_blob::rdma::VerbsTransport::establish(device, socket, regions).await {
                Ok(transport) => {
                    let transport: Arc<dyn Transport> = Arc::new(transport);
                    if let Err(error) = serve_connection(transport, store, pool).await {
                        tracing::warn!(%peer, error = %error, "RDMA storage connection ended with an error");
                    }
                }
                Err(error) => tracing::warn!(%peer, error = %error, "RDMA connection setup failed"),
            }
        });
    }
}
