//! The storage node's side of the `remote` protocol
//! ([`hearth_blob::remote`] defines the messages and the client): one
//! connection at a time is served by [`serve_connection`], over TCP
//! ([`serve_tcp`]), RDMA verbs (`serve_rdma`, feature `rdma`) or an
//! in-process loopback pair ([`loopback_connector`], for tests).
//!
//! # Contract
//!
//! * **Hello first.** A connection's first message must be `Hello`, within
//!   [`ServeOptions::hello_timeout`] (10 s); [`ServeOptions::access`]
//!   decides whether the host is served and in which scope (see
//!   [`crate::access`]). A refused or missing `Hello` closes the
//!   connection (`unauthorized` is answered first), logged and counted in
//!   [`ServeOptions::metrics`]. Over RDMA the queue pair is set up first,
//!   bounded by the same timeout; then the `Hello` travels over it.
//! * Reads put each chunk of the backend's object into one of the pool's
//!   registered buffers (one copy), answer `Chunk { slice, crc32c }`, and
//!   wait for the client's `Next` before reusing the buffer; a client that
//!   goes away mid-read gives the buffer back all the same.
//! * Writes stream `DATA` messages, or the bytes written one-sided into
//!   offered buffers (`WriteInto`; each buffer granted to this connection
//!   for writes, closed before its bytes are read), into the backend's
//!   atomic put: a client that goes away mid-write leaves nothing visible.
//! * Every buffer a client may touch is opened to its connection with
//!   [`Transport::grant`] for that one take, and closed before the buffer
//!   goes back to the pool.
//! * Errors cross as `Reply::Error` with the [`BlobError`] kind.
//! * **A lease, not a loan.** A client holds a read buffer (or an offered
//!   write buffer) at most [`ServeOptions::lease_timeout`] (30 s): one
//!   that does not say `Next` (or `Wrote`) by then is cut off (told `unavailable: lease expired: …` if it ever
//!   reads, its connection closed, logged, counted) and the buffer goes
//!   back to the pool, so idle clients cannot drain it.
//! * **Bounded.** At most [`ServeOptions::max_connections`] (1024)
//!   connections are served at once; one past it is told `unavailable:
//!   storage node: serving its max_connections` (if its socket takes the
//!   frame at once) and closed on accept, logged (at powers of two) and
//!   counted. One IP address may hold at most
//!   [`ServeOptions::max_pending_hellos_per_peer`] (16) connections that
//!   have not said `Hello` yet; more are closed on accept the same way.
//!   The TCP transport queues a few frames per
//!   connection before it stops reading the socket (see
//!   [`hearth_blob::transport::tcp`]). An accept that fails (no file
//!   descriptors left, say) is logged and retried after a pause; it never
//!   ends the node.
use crate::access::Access;
use crate::metrics::{NodeMetrics, count};
use bytes::Bytes;
use futures_util::StreamExt;
use hearth_blob::regions::{BufferPool, PooledBuffer, RegionTable, RemoteAccess};
use hearth_blob::remote::{CONTROL, Connector, DATA, Reply, Request, decode, encode};
use hearth_blob::transport::{Transport, TransportError};
use hearth_blob::{BlobError, BlobStore, ByteRange};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Whom a node serves and how it bounds them.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Connections served at once.
    pub max_connections: usize,
    /// How long a client may hold a read buffer before it says `Next`.
    pub lease_timeout: Duration,
    /// How long a new connection has to say `Hello` (and, over RDMA, to
    /// set up its queue pair).
    pub hello_timeout: Duration,
    /// Connections from one IP address that have not said `Hello` yet; one
    /// more is closed on accept, so one peer cannot hold every connection
    /// slot with silent sockets.
    pub max_pending_hellos_per_peer: usize,
    /// Who is served, in which scope.
    pub access: Arc<Access>,
    /// Where refusals are counted.
    pub metrics: Arc<NodeMetrics>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_connections: 1024,
            lease_timeout: Duration::from_secs(30),
            hello_timeout: Duration::from_secs(10),
            max_pending_hellos_per_peer: 16,
            access: Arc::new(Access::Open),
            metrics: Arc::default(),
        }
    }
}

/// Why a connection was not served past its `Hello`.
async fn refuse(
    transport: &dyn Transport,
    metrics: &NodeMetrics,
    unauthorized: Option<&BlobError>,
    why: String,
) -> TransportError {
    match unauthorized {
        Some(error) => {
            count(&metrics.refused_unauthorized);
            let reply = Reply::Error {
                kind: "unauthorized".into(),
                message: error.to_string(),
                limit: None,
            };
            // A peer that does not read cannot hold the refusal up.
            let _ =
                tokio::time::timeout(Duration::from_secs(1), transport.send(encode(&reply))).await;
        }
        None => count(&metrics.refused_no_hello),
    }
    TransportError::Protocol(why)
}

/// Waits for the connection's `Hello` and answers it: the store as the
/// host may see it, or the refusal.
async fn hello(
    transport: &dyn Transport,
    store: &BlobStore,
    options: &ServeOptions,
) -> Result<Option<BlobStore>, TransportError> {
    let metrics = &options.metrics;
    let first = match tokio::time::timeout(options.hello_timeout, transport.recv()).await {
        Err(_) => {
            let why = format!(
                "no `hello` within {} ms; closed",
                options.hello_timeout.as_millis()
            );
            return Err(refuse(transport, metrics, None, why).await);
        }
        Ok(Err(TransportError::Closed(_))) => return Ok(None),
        Ok(Err(other)) => return Err(other),
        Ok(Ok(message)) => message,
    };
    let token = match decode::<Request>(&first) {
        Ok(Request::Hello { token }) => token,
        _ => {
            let why = "the first message was not `hello`; closed".to_string();
            return Err(refuse(transport, metrics, None, why).await);
        }
    };
    match options
        .access
        .authenticate(token.as_ref().map(|token| token.0.as_str()))
    {
        Ok(grant) => {
            tracing::debug!(host = %grant.host, scope = ?grant.scope, "storage connection said hello");
            transport
                .send(encode(&Reply::Welcome {
                    host: grant.host.clone(),
                }))
                .await?;
            Ok(Some(crate::scope::scoped_store(
                store,
                grant.scope.as_deref(),
            )))
        }
        Err(error) => {
            let why = format!("host not authorized ({error}); closed");
            Err(refuse(transport, metrics, Some(&error), why).await)
        }
    }
}

/// Serves `store` to one connection until it ends, reading chunks out of
/// `pool`'s registered buffers, with the default [`ServeOptions`].
pub async fn serve_connection(
    transport: Arc<dyn Transport>,
    store: BlobStore,
    pool: Arc<BufferPool>,
) -> Result<(), TransportError> {
    serve_connection_with(transport, store, pool, ServeOptions::default()).await
}

/// [`serve_connection`] with `options`.
pub async fn serve_connection_with(
    transport: Arc<dyn Transport>,
    store: BlobStore,
    pool: Arc<BufferPool>,
    options: ServeOptions,
) -> Result<(), TransportError> {
    serve_admitted(transport, store, pool, options, None).await
}

/// [`serve_connection_with`] for a connection that counts against its
/// peer's pending hellos until it has said `Hello`.
async fn serve_admitted(
    transport: Arc<dyn Transport>,
    store: BlobStore,
    pool: Arc<BufferPool>,
    options: ServeOptions,
    mut pending: Option<PendingHello>,
) -> Result<(), TransportError> {
    let Some(store) = hello(&*transport, &store, &options).await? else {
        return Ok(());
    };
    drop(pending.take());
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
                    &options,
                )
                .await?;
                continue;
            }
            Request::Put { container, name } => {
                serve_write(&transport, &store, &container, &name).await
            }
            Request::WriteInto { container, name } => {
                serve_write_into(&transport, &store, &pool, &container, &name, &options).await?
            }
            Request::Next | Request::PutEnd | Request::Hello { .. } | Request::Wrote { .. } => {
                return Err(TransportError::Protocol(
                    "`next`, `put-end`, `wrote` or `hello` out of place".into(),
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
    options: &ServeOptions,
) -> Result<(), TransportError> {
    let lease_timeout = options.lease_timeout;
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
                    count(&options.metrics.reads_refused_no_buffer);
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
            let grant = transport.grant(slice, RemoteAccess::Read).await?;
            let granted = grant.slice();
            transport
                .send(encode(&Reply::Chunk {
                    region: granted.region,
                    key: granted.key,
                    len: granted.len,
                    crc32c,
                }))
                .await?;
            // The buffer stays open to the client until it says `next`
            // (or goes away, or lets the lease run out: then the grant is
            // closed, the buffer dropped here, back to the pool, and the
            // connection ends).
            let answer = tokio::time::timeout(lease_timeout, transport.recv()).await;
            drop(grant);
            drop(held);
            let Ok(answer) = answer else {
                return Err(lease_expired(transport, options, "a read buffer", "next").await);
            };
            let answer: Request = decode(&answer?)?;
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

/// Counts and logs a client cut off for holding a buffer past its lease,
/// tells it so if it ever reads, and returns why the connection ends.
async fn lease_expired(
    transport: &dyn Transport,
    options: &ServeOptions,
    what: &str,
    expected: &str,
) -> TransportError {
    count(&options.metrics.leases_expired);
    let why = format!(
        "the client held {what} for {} ms without saying `{expected}`",
        options.lease_timeout.as_millis()
    );
    // The client's last word from the node, if it ever reads.
    let expired = BlobError::Unavailable(format!("lease expired: {why}"));
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        transport.send(encode(&Reply::from_error(&expired))),
    )
    .await;
    TransportError::Protocol(why)
}

/// Serves one `WriteInto`: offers buffers, one at a time, opened to this
/// connection for writes, and streams what the client wrote into the
/// backend's put. Returns the put's reply, or why the connection ends (the
/// client went away, broke the protocol or let an offer's lease expire).
async fn serve_write_into(
    transport: &Arc<dyn Transport>,
    store: &BlobStore,
    pool: &Arc<BufferPool>,
    container: &str,
    name: &str,
    options: &ServeOptions,
) -> Result<Result<Reply, BlobError>, TransportError> {
    struct Offers {
        transport: Arc<dyn Transport>,
        pool: Arc<BufferPool>,
        options: ServeOptions,
        last_seen: bool,
        ends_connection: Arc<std::sync::Mutex<Option<TransportError>>>,
    }
    impl Offers {
        /// The next bytes the client wrote, or `None` after its last.
        async fn next(&mut self) -> Result<Option<Bytes>, BlobError> {
            if self.last_seen {
                return Ok(None);
            }
            let Some(buffer) = self.pool.take() else {
                count(&self.options.metrics.writes_refused_no_buffer);
                return Err(BlobError::Unavailable(
                    "the storage node has no free buffer to write into".into(),
                ));
            };
            let slice = buffer.open_for_writes();
            let ends = |error: TransportError, ends_connection: &std::sync::Mutex<_>| {
                let message = format!("the client went away mid-write: {error}");
                *ends_connection.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
                BlobError::Unavailable(message)
            };
            let grant = match self.transport.grant(slice, RemoteAccess::Write).await {
                Ok(grant) => grant,
                Err(error) => return Err(ends(error, &self.ends_connection)),
            };
            let granted = grant.slice();
            let offer = Reply::Offer {
                region: granted.region,
                key: granted.key,
                len: granted.len,
            };
            if let Err(error) = self.transport.send(encode(&offer)).await {
                return Err(ends(error, &self.ends_connection));
            }
            let answer =
                tokio::time::timeout(self.options.lease_timeout, self.transport.recv()).await;
            // Closed before a byte of it is read: nothing lands after.
            drop(grant);
            let answer = match answer {
                Err(_) => {
                    let error = lease_expired(
                        &*self.transport,
                        &self.options,
                        "an offered write buffer",
                        "wrote",
                    )
                    .await;
                    return Err(ends(error, &self.ends_connection));
                }
                Ok(Err(error)) => return Err(ends(error, &self.ends_connection)),
                Ok(Ok(answer)) => answer,
            };
            let (len, crc32c, last) = match decode::<Request>(&answer) {
                Ok(Request::Wrote { len, crc32c, last }) => (len, crc32c, last),
                _ => {
                    let error = TransportError::Protocol("expected `wrote` during a write".into());
                    return Err(ends(error, &self.ends_connection));
                }
            };
            let Some(written) = buffer.seal(len) else {
                let error = TransportError::Protocol(format!(
                    "`wrote` {len} bytes into a buffer of {}",
                    granted.len
                ));
                return Err(ends(error, &self.ends_connection));
            };
            drop(buffer);
            if crc32c::crc32c(&written) != crc32c {
                return Err(BlobError::Corrupt(
                    "written bytes did not match their checksum on the way".into(),
                ));
            }
            self.last_seen = last;
            Ok(Some(written))
        }
    }

    let ends_connection = Arc::new(std::sync::Mutex::new(None));
    let offers = Offers {
        transport: transport.clone(),
        pool: pool.clone(),
        options: options.clone(),
        last_seen: false,
        ends_connection: ends_connection.clone(),
    };
    let incoming = futures_util::stream::try_unfold(offers, |mut offers| async move {
        Ok(offers.next().await?.map(|bytes| (bytes, offers)))
    })
    .boxed();
    let written = store.put(container, name, incoming).await;
    if let Some(error) = ends_connection
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        return Err(error);
    }
    Ok(written.map(Reply::Object))
}

/// Serves `store` to every connection `listener` accepts, over TCP, with
/// `pool`'s buffers (registered in `regions`) for reads and the default
/// [`ServeOptions`]. Runs until the task is dropped.
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    store: BlobStore,
    pool: Arc<BufferPool>,
    regions: Arc<RegionTable>,
) -> std::io::Result<()> {
    serve_tcp_with(listener, store, pool, regions, ServeOptions::default()).await
}

/// [`serve_tcp`] with `options`.
pub async fn serve_tcp_with(
    listener: tokio::net::TcpListener,
    store: BlobStore,
    pool: Arc<BufferPool>,
    regions: Arc<RegionTable>,
    options: ServeOptions,
) -> std::io::Result<()> {
    let admission = Admission::new(&options);
    loop {
        let (stream, peer) = accept(&listener, &options.metrics).await;
        let (permit, pending) = match admission.admit(peer) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                hearth_blob::transport::tcp::try_send_last_word(
                    &stream,
                    &encode(&Reply::from_error(&refusal)),
                );
                drop(stream);
                continue;
            }
        };
        let transport: Arc<dyn Transport> = Arc::new(
            hearth_blob::transport::tcp::TcpTransport::new(stream, regions.clone()),
        );
        let (store, pool, options) = (store.clone(), pool.clone(), options.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(error) = serve_admitted(transport, store, pool, options, Some(pending)).await
            {
                tracing::warn!(%peer, error = %error, "storage connection ended with an error");
            }
        });
    }
}

/// The next connection; an accept that fails (EMFILE, ENFILE, a reset
/// before accept) is logged and retried after a pause, never returned.
async fn accept(
    listener: &tokio::net::TcpListener,
    metrics: &NodeMetrics,
) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    let mut failures = 0u64;
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(error) => {
                count(&metrics.accept_errors);
                failures += 1;
                if failures.is_power_of_two() {
                    tracing::warn!(%error, failures, "storage node accept failed; retrying");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Counts connections against [`ServeOptions::max_connections`], and
/// those not past their `Hello` against
/// [`ServeOptions::max_pending_hellos_per_peer`] per IP address.
struct Admission {
    open: Arc<tokio::sync::Semaphore>,
    open_max: usize,
    pending: Arc<PendingHellos>,
    metrics: Arc<NodeMetrics>,
}

/// One admitted connection: its place under the cap, and its count in
/// `connections_open`, both given back when it ends.
struct Admitted {
    _permit: tokio::sync::OwnedSemaphorePermit,
    metrics: Arc<NodeMetrics>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.metrics
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Connections not past their `Hello`, by peer address.
struct PendingHellos {
    max_per_peer: usize,
    by_peer: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One connection's place among its peer's pending hellos, given back
/// when it has said `Hello` or ended.
struct PendingHello {
    peers: Arc<PendingHellos>,
    ip: std::net::IpAddr,
}

impl Drop for PendingHello {
    fn drop(&mut self) {
        let mut by_peer = self.peers.by_peer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = by_peer.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                by_peer.remove(&self.ip);
            }
        }
    }
}

impl PendingHellos {
    fn enter(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<PendingHello> {
        let mut by_peer = self.by_peer.lock().unwrap_or_else(|e| e.into_inner());
        let count = by_peer.entry(ip).or_insert(0);
        if *count >= self.max_per_peer {
            return None;
        }
        *count += 1;
        Some(PendingHello {
            peers: self.clone(),
            ip,
        })
    }
}

impl Admission {
    fn new(options: &ServeOptions) -> Self {
        Admission {
            open: Arc::new(tokio::sync::Semaphore::new(options.max_connections.max(1))),
            open_max: options.max_connections.max(1),
            pending: Arc::new(PendingHellos {
                max_per_peer: options.max_pending_hellos_per_peer.max(1),
                by_peer: Default::default(),
            }),
            metrics: options.metrics.clone(),
        }
    }

    /// Places for one more connection from `peer`, or why not (logged at
    /// powers of two, counted): the refused peer's last word.
    fn admit(&self, peer: std::net::SocketAddr) -> Result<(Admitted, PendingHello), BlobError> {
        let Some(pending) = self.pending.enter(peer.ip()) else {
            let refused = self
                .metrics
                .refused_pending_per_peer
                .fetch_add(1, Ordering::Relaxed)
                + 1;
            if refused.is_power_of_two() {
                tracing::warn!(%peer, refused, "storage node: this peer holds max_pending_hellos_per_peer connections that have not said hello; closed a new one");
            }
            return Err(BlobError::Unavailable(format!(
                "storage node: {} connections from {} have not said hello yet; try again",
                self.pending.max_per_peer,
                peer.ip()
            )));
        };
        match self.open.clone().try_acquire_owned() {
            Ok(permit) => {
                count(&self.metrics.connections_open);
                Ok((
                    Admitted {
                        _permit: permit,
                        metrics: self.metrics.clone(),
                    },
                    pending,
                ))
            }
            Err(_) => {
                let refused = self.metrics.refused_at_cap.fetch_add(1, Ordering::Relaxed) + 1;
                if refused.is_power_of_two() {
                    tracing::warn!(%peer, refused, "storage node at max_connections; closed a new connection");
                }
                Err(BlobError::Unavailable(format!(
                    "storage node: serving its max_connections ({}); try again",
                    self.open_max
                )))
            }
        }
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
    loopback_connector_with(store, pool, regions, ServeOptions::default())
}

/// [`loopback_connector`] with `options` (its lease timeout; connections
/// are not capped).
pub fn loopback_connector_with(
    store: BlobStore,
    pool: Arc<BufferPool>,
    regions: Arc<RegionTable>,
    options: ServeOptions,
) -> Connector {
    Arc::new(move || {
        let (store, pool, regions, options) = (
            store.clone(),
            pool.clone(),
            regions.clone(),
            options.clone(),
        );
        Box::pin(async move {
            let (client, node) =
                hearth_blob::transport::loopback::pair(Arc::new(RegionTable::default()), regions);
            tokio::spawn(serve_connection_with(Arc::new(node), store, pool, options));
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
    options: ServeOptions,
) -> std::io::Result<()> {
    let admission = Admission::new(&options);
    loop {
        let (socket, peer) = accept(&listener, &options.metrics).await;
        let Ok((permit, pending)) = admission.admit(peer) else {
            drop(socket);
            continue;
        };
        let (device, store, pool, regions, options) = (
            device.clone(),
            store.clone(),
            pool.clone(),
            regions.clone(),
            options.clone(),
        );
        tokio::spawn(async move {
            let _permit = permit;
            let established = tokio::time::timeout(
                options.hello_timeout,
                hearth_blob::rdma::VerbsTransport::establish(device, socket, regions),
            )
            .await
            .unwrap_or_else(|_| {
                count(&options.metrics.refused_no_hello);
                Err(TransportError::Closed("queue pair setup timed out".into()))
            });
            match established {
                Ok(transport) => {
                    let transport: Arc<dyn Transport> = Arc::new(transport);
                    if let Err(error) =
                        serve_admitted(transport, store, pool, options, Some(pending)).await
                    {
                        tracing::warn!(%peer, error = %error, "RDMA storage connection ended with an error");
                    }
                }
                Err(error) => tracing::warn!(%peer, error = %error, "RDMA connection setup failed"),
            }
        });
    }
}
