//! The remote path's transport: what the storage protocol needs from the
//! wire, in the shape RDMA verbs give it.
//!
//! # Contract, for every transport
//!
//! * **Two-sided** [`Transport::send`] / [`Transport::recv`] carry control
//!   messages, whole and in order.
//! * **One-sided** [`Transport::read`] lands a [`RemoteSlice`] of the
//!   peer's registered memory in memory this side owns, without the peer's
//!   protocol code taking part, and hands that memory back as [`Bytes`]
//!   (no copy after it landed: for TCP the frame's payload buffer the
//!   socket was read into, for verbs the local registered buffer); the
//!   peer's [`RegionTable`] rules apply (region, key, bounds), and a
//!   refused read is [`TransportError::Refused`], never partial data.
//! * **One-sided** [`Transport::write`] puts bytes into a [`RemoteSlice`]
//!   of the peer's registered memory, under the same rules (the buffer must
//!   be open for writes: [`crate::regions::RemoteAccess`]).
//! * **Grants.** The side that owns a buffer opens each take of it to its
//!   peer with [`Transport::grant`] and closes it by dropping the
//!   [`Grant`]; the peer names the slice as the grant says. On loopback
//!   and TCP the table's per-take key already is that grant; over verbs it
//!   is a memory window bound to the connection (see [`crate::rdma`]).
//! * Reads and writes complete in the order they were posted. A failed
//!   completion (a refused access among them) is an error of that call,
//!   and, as with a verbs queue pair in the error state, the connection is
//!   not used again: later calls fail with [`TransportError::Closed`].
//! * A peer that goes away makes pending and later calls
//!   [`TransportError::Closed`].
//!
//! Implementations: [`loopback`] (in-process, for tests of the protocol,
//! with a switch to fail the next read), [`tcp`] (tokio).

use crate::regions::{RegionError, RegionTable, RemoteAccess, RemoteSlice};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;

/// What a transport call came to instead of success.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The peer refused a one-sided read.
    #[error("remote read refused: {0}")]
    Refused(RegionError),
    /// The connection is gone (or broken by an earlier failure).
    #[error("connection closed: {0}")]
    Closed(String),
    /// The peer sent something this side cannot parse.
    #[error("protocol: {0}")]
    Protocol(String),
}

/// A slice of this side's registered memory opened to the peer by
/// [`Transport::grant`]; dropping it closes the slice again.
pub struct Grant {
    slice: RemoteSlice,
    _closes: Option<Box<dyn Send + Sync>>,
}

impl Grant {
    /// A grant of `slice` that `closes` ends when dropped (a memory
    /// window, say); `None` where the region table's key is the grant.
    pub fn new(slice: RemoteSlice, closes: Option<Box<dyn Send + Sync>>) -> Self {
        Grant {
            slice,
            _closes: closes,
        }
    }

    /// The slice as the peer names it.
    pub fn slice(&self) -> RemoteSlice {
        self.slice
    }
}

/// One end of a connection; see the module docs.
#[async_trait]
pub trait Transport: Send + Sync {
    /// `tcp`, `loopback`, `rdma`.
    fn kind(&self) -> &'static str;

    /// Sends one control message.
    async fn send(&self, message: Bytes) -> Result<(), TransportError>;

    /// The peer's next control message.
    async fn recv(&self) -> Result<Bytes, TransportError>;

    /// Lands `slice` of the peer's registered memory here and returns it
    /// (`slice.len` bytes).
    async fn read(&self, slice: RemoteSlice) -> Result<Bytes, TransportError>;

    /// Puts `data` (`slice.len` bytes) into `slice` of the peer's
    /// registered memory.
    async fn write(&self, slice: RemoteSlice, data: Bytes) -> Result<(), TransportError>;

    /// Opens `slice` of a buffer this side took (from its own
    /// [`RegionTable`]) to the peer for `access` until the grant is
    /// dropped. The default is for transports whose peer is checked
    /// against the table: the table's key is the grant.
    async fn grant(
        &self,
        slice: RemoteSlice,
        access: RemoteAccess,
    ) -> Result<Grant, TransportError> {
        let _ = access;
        Ok(Grant::new(slice, None))
    }
}

/// The in-process transport: two ends sharing memory, with the verbs rules.
pub mod loopback {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::sync::{Mutex, mpsc};

    /// One end of a loopback pair.
    pub struct LoopbackTransport {
        outgoing: mpsc::UnboundedSender<Bytes>,
        incoming: Mutex<mpsc::UnboundedReceiver<Bytes>>,
        /// The peer's registered memory.
        peer_regions: Arc<RegionTable>,
        fail_next_read: AtomicBool,
        broken: AtomicBool,
    }

    /// A connected pair: the first end reads `second_regions`, the second
    /// reads `first_regions`.
    pub fn pair(
        first_regions: Arc<RegionTable>,
        second_regions: Arc<RegionTable>,
    ) -> (LoopbackTransport, LoopbackTransport) {
        let (to_second, from_first) = mpsc::unbounded_channel();
        let (to_first, from_second) = mpsc::unbounded_channel();
        let end = |outgoing, incoming, peer_regions| LoopbackTransport {
            outgoing,
            incoming: Mutex::new(incoming),
            peer_regions,
            fail_next_read: AtomicBool::new(false),
            broken: AtomicBool::new(false),
        };
        (
            end(to_second, from_second, second_regions),
            end(to_first, from_first, first_regions),
        )
    }

    impl LoopbackTransport {
        /// Makes the next read fail its completion (as a verbs work
        /// completion with an error status would).
        pub fn fail_next_read(&self) {
            self.fail_next_read.store(true, Ordering::SeqCst);
        }

        fn check_usable(&self) -> Result<(), TransportError> {
            if self.broken.load(Ordering::SeqCst) {
                return Err(TransportError::Closed(
                    "an earlier read failed its completion".into(),
                ));
            }
            Ok(())
        }
    }

    #[async_trait]
    impl Transport for LoopbackTransport {
        fn kind(&self) -> &'static str {
            "loopback"
        }

        async fn send(&self, message: Bytes) -> Result<(), TransportError> {
            self.check_usable()?;
            self.outgoing
                .send(message)
                .map_err(|_| TransportError::Closed("the peer is gone".into()))
        }

        async fn recv(&self) -> Result<Bytes, TransportError> {
            self.check_usable()?;
            self.incoming
                .lock()
                .await
                .recv()
                .await
                .ok_or_else(|| TransportError::Closed("the peer is gone".into()))
        }

        async fn read(&self, slice: RemoteSlice) -> Result<Bytes, TransportError> {
            self.check_usable()?;
            if self.outgoing.is_closed() {
                return Err(TransportError::Closed("the peer is gone".into()));
            }
            if self.fail_next_read.swap(false, Ordering::SeqCst) {
                self.broken.store(true, Ordering::SeqCst);
                return Err(TransportError::Closed(format!(
                    "read of region {} failed its completion",
                    slice.region
                )));
            }
            // The one copy here stands for the wire (a NIC's DMA).
            let mut landed = vec![0u8; slice.len as usize];
            self.peer_regions
                .read(slice, &mut landed)
                .map_err(|refused| self.refused(refused))?;
            Ok(Bytes::from(landed))
        }

        async fn write(&self, slice: RemoteSlice, data: Bytes) -> Result<(), TransportError> {
            self.check_usable()?;
            if self.outgoing.is_closed() {
                return Err(TransportError::Closed("the peer is gone".into()));
            }
            self.peer_regions
                .write(slice, &data)
                .map_err(|refused| self.refused(refused))
        }
    }

    impl LoopbackTransport {
        /// A refused access breaks the connection, as on a verbs QP.
        fn refused(&self, refused: RegionError) -> TransportError {
            self.broken.store(true, Ordering::SeqCst);
            TransportError::Refused(refused)
        }
    }
}

/// The TCP transport: one connection carrying control messages and
/// one-sided reads, which the peer's transport (not its protocol code)
/// answers from its [`RegionTable`].
///
/// Frames: a `u32` length, a kind byte, the payload. Kinds: `0` a control
/// message; `1` a read request (`region u32, key u32, offset u64, len
/// u64`); `2` the read's bytes; `3` a read or write refused (`code u8,
/// region u32, offset u64, end u64, len u64`); `4` a write request
/// (`region u32, key u32, offset u64`, then the bytes); `5` the write
/// done. Requests are answered in order, so completions are matched to
/// reads and writes by order.
pub mod tcp {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex as SyncMutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
    use tokio::sync::{Mutex, mpsc, oneshot};

    const MESSAGE: u8 = 0;
    const READ: u8 = 1;
    const READ_OK: u8 = 2;
    const REFUSED: u8 = 3;
    const WRITE: u8 = 4;
    const WRITE_OK: u8 = 5;
    /// A write request's header: region, key, offset.
    const WRITE_HEADER_BYTES: usize = 16;
    /// The largest frame accepted.
    pub const MAX_FRAME_BYTES: usize = 64 << 20;
    /// Control messages received and not yet taken by `recv`; past them
    /// the connection stops reading its socket until `recv` catches up
    /// (read requests behind them wait too), so a peer that sends faster
    /// than it is served cannot grow this side's memory.
    pub const QUEUED_MESSAGES: usize = 8;

    type Completion = oneshot::Sender<Result<Bytes, TransportError>>;

    /// One end of a TCP connection; see the module docs.
    pub struct TcpTransport {
        writer: Arc<Mutex<OwnedWriteHalf>>,
        messages: Mutex<mpsc::Receiver<Bytes>>,
        pending: Arc<SyncMutex<VecDeque<Completion>>>,
        broken: Arc<AtomicBool>,
        reader: tokio::task::JoinHandle<()>,
    }

    impl Drop for TcpTransport {
        fn drop(&mut self) {
            self.reader.abort();
        }
    }

    async fn write_frame(
        writer: &Mutex<OwnedWriteHalf>,
        kind: u8,
        parts: &[&[u8]],
    ) -> Result<(), TransportError> {
        write_frame_locked(&mut *writer.lock().await, kind, parts).await
    }

    async fn write_frame_locked(
        writer: &mut OwnedWriteHalf,
        kind: u8,
        parts: &[&[u8]],
    ) -> Result<(), TransportError> {
        let len: usize = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
        let mut head = Vec::with_capacity(5);
        head.extend_from_slice(&(len as u32).to_le_bytes());
        head.push(kind);
        let closed = |e: std::io::Error| TransportError::Closed(e.to_string());
        writer.write_all(&head).await.map_err(closed)?;
        for part in parts {
            writer.write_all(part).await.map_err(closed)?;
        }
        Ok(())
    }

    fn refusal_bytes(error: &RegionError) -> Vec<u8> {
        let (code, region, offset, end, len) = match *error {
            RegionError::Unknown(region) => (0u8, region, 0, 0, 0),
            RegionError::WrongKey(region) => (1, region, 0, 0, 0),
            RegionError::OutOfBounds {
                region,
                offset,
                end,
                len,
            } => (2, region, offset, end, len),
            RegionError::NotOpen { region, access } => {
                (3, region, u64::from(access == RemoteAccess::Write), 0, 0)
            }
            RegionError::RefusedByDevice(region) => (4, region, 0, 0, 0),
        };
        let mut out = vec![code];
        out.extend_from_slice(&region.to_le_bytes());
        for n in [offset, end, len] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out
    }

    fn refusal_from(bytes: &[u8]) -> Option<RegionError> {
        if bytes.len() != 29 {
            return None;
        }
        let region = u32::from_le_bytes(bytes[1..5].try_into().ok()?);
        let n = |at: usize| bytes[at..at + 8].try_into().ok().map(u64::from_le_bytes);
        Some(match bytes[0] {
            0 => RegionError::Unknown(region),
            1 => RegionError::WrongKey(region),
            2 => RegionError::OutOfBounds {
                region,
                offset: n(5)?,
                end: n(13)?,
                len: n(21)?,
            },
            3 => RegionError::NotOpen {
                region,
                access: if n(5)? == 1 {
                    RemoteAccess::Write
                } else {
                    RemoteAccess::Read
                },
            },
            4 => RegionError::RefusedByDevice(region),
            _ => return None,
        })
    }

    /// Reads frames until the connection ends: messages to `messages`,
    /// read requests answered from `regions`, completions to `pending`.
    async fn read_loop(
        reader: OwnedReadHalf,
        writer: Arc<Mutex<OwnedWriteHalf>>,
        regions: Arc<RegionTable>,
        messages: mpsc::Sender<Bytes>,
        pending: Arc<SyncMutex<VecDeque<Completion>>>,
        broken: Arc<AtomicBool>,
    ) {
        // No read buffer: each payload is read from the socket straight
        // into its own allocation, which is handed up as it is.
        let mut reader = reader;
        let why = loop {
            let mut head = [0u8; 5];
            if let Err(e) = reader.read_exact(&mut head).await {
                break format!("the peer closed the connection ({e})");
            }
            let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
            if len == 0 || len > MAX_FRAME_BYTES {
                break format!("a frame of {len} bytes");
            }
            let mut payload = vec![0u8; len - 1];
            if let Err(e) = reader.read_exact(&mut payload).await {
                break format!("the peer closed the connection mid-frame ({e})");
            }
            match head[4] {
                MESSAGE => {
                    if messages.send(Bytes::from(payload)).await.is_err() {
                        break "this side closed the connection".into();
                    }
                }
                READ if payload.len() == 24 => {
                    let u32_at =
                        |at: usize| u32::from_le_bytes(payload[at..at + 4].try_into().expect("4"));
                    let u64_at =
                        |at: usize| u64::from_le_bytes(payload[at..at + 8].try_into().expect("8"));
                    let slice = RemoteSlice {
                        region: u32_at(0),
                        key: u32_at(4),
                        offset: u64_at(8),
                        len: u64_at(16),
                    };
                    let reply = if slice.len as usize > MAX_FRAME_BYTES - 1 {
                        Err(RegionError::OutOfBounds {
                            region: slice.region,
                            offset: slice.offset,
                            end: slice.offset.saturating_add(slice.len),
                            len: 0,
                        })
                    } else {
                        let mut data = vec![0u8; slice.len as usize];
                        regions.read(slice, &mut data).map(|()| data)
                    };
                    let written = match reply {
                        Ok(data) => write_frame(&writer, READ_OK, &[&data]).await,
                        Err(refused) => {
                            write_frame(&writer, REFUSED, &[&refusal_bytes(&refused)]).await
                        }
                    };
                    if let Err(e) = written {
                        break e.to_string();
                    }
                }
                WRITE if payload.len() >= WRITE_HEADER_BYTES => {
                    let (head, data) = payload.split_at(WRITE_HEADER_BYTES);
                    let slice = RemoteSlice {
                        region: u32::from_le_bytes(head[0..4].try_into().expect("4")),
                        key: u32::from_le_bytes(head[4..8].try_into().expect("4")),
                        offset: u64::from_le_bytes(head[8..16].try_into().expect("8")),
                        len: data.len() as u64,
                    };
                    let written = match regions.write(slice, data) {
                        Ok(()) => write_frame(&writer, WRITE_OK, &[]).await,
                        Err(refused) => {
                            write_frame(&writer, REFUSED, &[&refusal_bytes(&refused)]).await
                        }
                    };
                    if let Err(e) = written {
                        break e.to_string();
                    }
                }
                kind @ (READ_OK | REFUSED | WRITE_OK) => {
                    let Some(completion) = pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .pop_front()
                    else {
                        break "a read completion nobody asked for".into();
                    };
                    let result = match kind {
                        READ_OK => Ok(Bytes::from(payload)),
                        WRITE_OK => Ok(Bytes::new()),
                        _ => match refusal_from(&payload) {
                            Some(refused) => Err(TransportError::Refused(refused)),
                            None => Err(TransportError::Protocol("a bad refusal frame".into())),
                        },
                    };
                    let _ = completion.send(result);
                }
                other => break format!("a frame of unknown kind {other}"),
            }
        };
        broken.store(true, Ordering::SeqCst);
        for completion in pending.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = completion.send(Err(TransportError::Closed(why.clone())));
        }
    }

    /// Writes `message` as one control frame on `stream` if the socket
    /// takes it at once, and gives up otherwise: for a last word (a
    /// refusal) to a peer about to be dropped, which must never stall the
    /// side that sends it.
    pub fn try_send_last_word(stream: &TcpStream, message: &[u8]) {
        let mut frame = Vec::with_capacity(5 + message.len());
        frame.extend_from_slice(&((message.len() + 1) as u32).to_le_bytes());
        frame.push(MESSAGE);
        frame.extend_from_slice(message);
        let _ = stream.try_write(&frame);
    }

    impl TcpTransport {
        /// Wraps a connected stream; `regions` is this side's registered
        /// memory, which the peer may read.
        pub fn new(stream: TcpStream, regions: Arc<RegionTable>) -> Self {
            let _ = stream.set_nodelay(true);
            let (read_half, write_half) = stream.into_split();
            let writer = Arc::new(Mutex::new(write_half));
            let (to_messages, messages) = mpsc::channel(QUEUED_MESSAGES);
            let pending = Arc::new(SyncMutex::new(VecDeque::new()));
            let broken = Arc::new(AtomicBool::new(false));
            let reader = tokio::spawn(read_loop(
                read_half,
                writer.clone(),
                regions,
                to_messages,
                pending.clone(),
                broken.clone(),
            ));
            TcpTransport {
                writer,
                messages: Mutex::new(messages),
                pending,
                broken,
                reader,
            }
        }

        fn check_usable(&self) -> Result<(), TransportError> {
            if self.broken.load(Ordering::SeqCst) {
                return Err(TransportError::Closed(
                    "the connection failed earlier".into(),
                ));
            }
            Ok(())
        }

        /// Sends a read or write request frame and waits for its
        /// completion; a failed one breaks the connection.
        async fn one_sided(&self, kind: u8, parts: &[&[u8]]) -> Result<Bytes, TransportError> {
            self.check_usable()?;
            let (done, completion) = oneshot::channel();
            {
                // Queued and sent under the writer lock, so completions
                // come back in the order of this queue.
                let mut writer = self.writer.lock().await;
                self.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back(done);
                write_frame_locked(&mut writer, kind, parts).await?;
            }
            let result = completion
                .await
                .map_err(|_| TransportError::Closed("the connection ended".into()))?;
            if result.is_err() {
                self.broken.store(true, Ordering::SeqCst);
            }
            result
        }
    }

    #[async_trait]
    impl Transport for TcpTransport {
        fn kind(&self) -> &'static str {
            "tcp"
        }

        async fn send(&self, message: Bytes) -> Result<(), TransportError> {
            self.check_usable()?;
            write_frame(&self.writer, MESSAGE, &[&message]).await
        }

        async fn recv(&self) -> Result<Bytes, TransportError> {
            let mut messages = self.messages.lock().await;
            match messages.recv().await {
                Some(message) => Ok(message),
                None => Err(TransportError::Closed("the connection ended".into())),
            }
        }

        async fn read(&self, slice: RemoteSlice) -> Result<Bytes, TransportError> {
            let mut head = Vec::with_capacity(24);
            head.extend_from_slice(&slice.region.to_le_bytes());
            head.extend_from_slice(&slice.key.to_le_bytes());
            head.extend_from_slice(&slice.offset.to_le_bytes());
            head.extend_from_slice(&slice.len.to_le_bytes());
            let data = self.one_sided(READ, &[&head]).await?;
            if data.len() as u64 != slice.len {
                self.broken.store(true, Ordering::SeqCst);
                return Err(TransportError::Protocol(format!(
                    "asked for {} bytes, got {}",
                    slice.len,
                    data.len()
                )));
            }
            Ok(data)
        }

        async fn write(&self, slice: RemoteSlice, data: Bytes) -> Result<(), TransportError> {
            if data.len() as u64 != slice.len
                || data.len() + WRITE_HEADER_BYTES + 1 > MAX_FRAME_BYTES
            {
                return Err(TransportError::Protocol(format!(
                    "a write of {} bytes into a slice of {}",
                    data.len(),
                    slice.len
                )));
            }
            let mut head = Vec::with_capacity(WRITE_HEADER_BYTES);
            head.extend_from_slice(&slice.region.to_le_bytes());
            head.extend_from_slice(&slice.key.to_le_bytes());
            head.extend_from_slice(&slice.offset.to_le_bytes());
            self.one_sided(WRITE, &[&head, &data]).await.map(drop)
        }
    }
}
