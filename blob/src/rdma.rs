//! The RDMA verbs transport (cargo feature `rdma`): rdma-core's libibverbs
//! through the `sideway` crate. Its tests run when `HEARTH_RDMA_DEVICE`
//! names a device (soft-RoCE `rxe0` will do) and otherwise say why not.
//!
//! # Contract: [`crate::transport`]'s, over verbs
//!
//! * **Connection.** One reliable-connected (RC) queue pair per
//!   connection, set up the usual way: both sides exchange QP number, LID,
//!   GID, starting PSN and port MTU (the path takes the smaller) as a JSON
//!   line over a TCP socket, move their QP
//!   to ready-to-send, and confirm with one byte. The socket stays open:
//!   its closing is how each side learns, at once, that the other is gone.
//! * **Two-sided control.** A message goes as SENDs of at most
//!   [`FRAGMENT_BYTES`] from a registered staging buffer into
//!   [`RECEIVE_DEPTH`] registered receive buffers the peer posted ahead
//!   (reposted as they are consumed); longer messages go in fragments.
//!   Messages arrive whole and in order. RNR retry is unlimited: a sender
//!   waits for the receiver to repost.
//! * **Grants are memory windows.** A node's buffers are registered once
//!   (by its [`RegionTable`]'s registrar, see [`crate::regions`]) with no
//!   remote access of their own, only the right to bind windows.
//!   [`Transport::grant`] allocates a type 2 memory window and binds it, on
//!   this connection's queue pair, to exactly the granted bytes for reads
//!   or writes; the window's key is the one the peer gets. Dropping the
//!   grant deallocates the window. So the device itself refuses a key that
//!   is no longer granted, a grant used from another connection (a type 2
//!   window belongs to one queue pair), a write through a read grant and
//!   bytes past the registration: a remote access error,
//!   [`RegionError::RefusedByDevice`], after which both queue pairs are in
//!   the error state and the connection is done. A device should also
//!   refuse bytes past the window; soft-RoCE does not (see
//!   [`crate::regions`] for why that shows the peer only zeros).
//! * **One-sided reads** are RDMA READs into memory registered for that
//!   read alone and handed up as it is (no copy): the next copy is the one
//!   into guest memory. A region's address is asked of the peer's
//!   transport once (it answers from its table without the protocol code)
//!   and kept: regions never move.
//! * **One-sided writes** are RDMA WRITEs from the caller's bytes,
//!   registered for that write alone (no copy).
//! * **Completions** are events, not polling: both completion queues of a
//!   connection report to one completion channel, whose file descriptor a
//!   tokio task waits on (armed with `ibv_req_notify_cq`, drained with
//!   `ibv_poll_cq`, and drained again after arming so no completion is
//!   missed). An idle connection costs no CPU and no thread. A work
//!   completion with an error status fails its call and, the QP being in
//!   the error state then, the connection: later calls are
//!   [`TransportError::Closed`].
//! * **The peer going away** is seen at once: a second task waits for the
//!   setup socket to close.

// Verbs hand the NIC raw addresses of registered memory: each unsafe use
// says why the memory outlives the NIC's use of it.
#![allow(unsafe_code)]

use crate::regions::{RegionError, RegionTable, Registrar, RemoteAccess, RemoteSlice};
use crate::transport::{Grant, Transport, TransportError};
use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sideway::ibverbs::AccessFlags;
use sideway::ibverbs::address::{AddressHandleAttribute, Gid, GidType};
use sideway::ibverbs::completion::{CompletionChannel, CompletionQueue, GenericCompletionQueue};
use sideway::ibverbs::device::{DeviceInfo, DeviceList};
use sideway::ibverbs::device_context::{DeviceContext, Mtu};
use sideway::ibverbs::memory_region::MemoryRegion;
use sideway::ibverbs::protection_domain::ProtectionDomain;
use sideway::ibverbs::queue_pair::{
    BasicPostSendGuard, BasicQueuePair, PostSendGuard, QueuePair, QueuePairAttribute,
    QueuePairState, QueuePairType, SetInlineData, SetScatterGatherEntry, WorkRequestFlags,
};
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

/// The largest SEND: one receive buffer.
pub const FRAGMENT_BYTES: usize = 64 * 1024;
/// Receive buffers posted ahead per connection.
pub const RECEIVE_DEPTH: usize = 32;
/// The port every connection uses.
const PORT: u8 = 1;

const MESSAGE_LAST: u8 = 0;
const MESSAGE_MORE: u8 = 1;
const REGION_QUERY: u8 = 2;
const REGION_ANSWER: u8 = 3;
const REGION_UNKNOWN: u8 = 4;
/// A work completion's status for a remote access error: the peer's
/// device refused the key, the bounds or the queue pair.
const REMOTE_ACCESS_ERROR: u32 = 10;
/// Work-request ids of receives are their buffer's index; others start here.
const FIRST_SEND_ID: u64 = 1 << 32;
/// Inline answers to region queries: completions nobody waits for.
const UNWAITED: u64 = u64::MAX;

fn closed(why: impl std::fmt::Display) -> TransportError {
    TransportError::Closed(why.to_string())
}

/// An opened RDMA device and its protection domain; a [`Registrar`] for
/// a node's [`RegionTable`].
pub struct VerbsDevice {
    name: String,
    context: Arc<DeviceContext>,
    domain: Arc<ProtectionDomain>,
    lid: u16,
    /// The port's active MTU, in bytes.
    mtu: u16,
    gid: Gid,
    gid_index: u8,
    /// A node's buffers, by address, for binding windows to them.
    registrations: Mutex<HashMap<u64, Arc<MemoryRegion>>>,
}

impl VerbsDevice {
    /// Opens the device called `name` (e.g. `rxe0`, `mlx5_0`).
    pub fn open(name: &str) -> Result<Arc<Self>, String> {
        let devices = DeviceList::new().map_err(|e| format!("listing RDMA devices: {e}"))?;
        let mut names = Vec::new();
        for device in &devices {
            let found = device.name();
            if found != name {
                names.push(found);
                continue;
            }
            let context = device.open().map_err(|e| format!("opening {name}: {e}"))?;
            let domain = context
                .alloc_pd()
                .map_err(|e| format!("{name}: allocating a protection domain: {e}"))?;
            let port = context
                .query_port(PORT)
                .map_err(|e| format!("{name}: port {PORT}: {e}"))?;
            let gids = context
                .query_gid_table()
                .map_err(|e| format!("{name}: GID table: {e}"))?;
            let on_port: Vec<_> = gids
                .iter()
                .filter(|entry| entry.port_num() == u32::from(PORT))
                .collect();
            let chosen = on_port
                .iter()
                .find(|e| e.gid_type() == GidType::RoceV2 && !e.gid().is_unicast_link_local())
                .or_else(|| on_port.iter().find(|e| !e.gid().is_unicast_link_local()))
                .or_else(|| on_port.first())
                .ok_or_else(|| format!("{name}: port {PORT} has no GID"))?;
            return Ok(Arc::new(VerbsDevice {
                name: name.to_string(),
                lid: port.lid(),
                mtu: mtu_bytes(port.active_mtu()),
                gid: chosen.gid(),
                gid_index: u8::try_from(chosen.gid_index())
                    .map_err(|_| format!("{name}: GID index out of range"))?,
                context,
                domain,
                registrations: Mutex::default(),
            }));
        }
        Err(format!(
            "no RDMA device called `{name}` (found: {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        ))
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Registers `len` bytes at `address` with this device for `access`.
    ///
    /// # Safety
    ///
    /// The memory must stay allocated, and not move, until the returned
    /// registration is dropped.
    unsafe fn register_memory(
        &self,
        address: usize,
        len: usize,
        access: AccessFlags,
    ) -> Result<Arc<MemoryRegion>, String> {
        // Safety: passed on to the caller.
        unsafe { self.domain.reg_mr(address, len, access) }
            .map_err(|e| format!("{}: registering {len} bytes: {e}", self.name))
    }

    /// A buffer of `len` bytes registered for local writes (receiving)
    /// and sends.
    fn local_buffer(&self, len: usize) -> Result<RegisteredBuffer, String> {
        let mut memory = vec![0u8; len].into_boxed_slice();
        // Safety: `memory` lives in the RegisteredBuffer next to its
        // registration, which is dropped (deregistered) first.
        let region = unsafe {
            self.domain
                .reg_mr(memory.as_mut_ptr() as usize, len, AccessFlags::LocalWrite)
        }
        .map_err(|e| format!("{}: registering {len} bytes: {e}", self.name))?;
        Ok(RegisteredBuffer { region, memory })
    }
}

impl Registrar for VerbsDevice {
    unsafe fn register(&self, address: usize, len: usize) -> Result<u32, String> {
        // No remote access through the registration itself: only windows
        // bound to it, one take and one connection at a time.
        // Safety: the caller keeps the memory in place while we live.
        let region = unsafe {
            self.register_memory(
                address,
                len,
                AccessFlags::LocalWrite | AccessFlags::MemoryWindowBind,
            )
        }?;
        let key = region.rkey();
        self.registrations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(address as u64, region);
        Ok(key)
    }
}

/// A type 2 memory window; deallocating it (on drop) ends every access
/// through its key.
struct MemoryWindow {
    window: NonNull<rdma_mummy_sys::ibv_mw>,
    /// Keeps the protection domain (and the registration the window is
    /// bound to) alive while the window is.
    _device: Arc<VerbsDevice>,
}

// Safety: a window handle is used by one owner at a time; libibverbs
// calls on it are thread-safe.
unsafe impl Send for MemoryWindow {}
unsafe impl Sync for MemoryWindow {}

impl MemoryWindow {
    fn handle(&self) -> *mut rdma_mummy_sys::ibv_mw {
        self.window.as_ptr()
    }
}

impl Drop for MemoryWindow {
    fn drop(&mut self) {
        // Safety: allocated by ibv_alloc_mw and deallocated once, here.
        let status = unsafe { rdma_mummy_sys::ibv_dealloc_mw(self.window.as_ptr()) };
        if status != 0 {
            tracing::warn!(status, "deallocating a memory window failed");
        }
    }
}

/// Memory and its registration (deregistered before the memory is freed:
/// the fields drop in this order).
struct RegisteredBuffer {
    region: Arc<MemoryRegion>,
    memory: Box<[u8]>,
}

impl RegisteredBuffer {
    fn address(&self) -> u64 {
        self.memory.as_ptr() as u64
    }
}

/// What each side tells the other to connect their queue pairs.
#[derive(Debug, Serialize, Deserialize)]
struct Endpoint {
    qp_number: u32,
    lid: u16,
    gid: [u8; 16],
    psn: u32,
    /// The port's active MTU in bytes; the path uses the smaller of the
    /// two sides'.
    #[serde(default = "default_mtu")]
    mtu: u16,
}

/// The MTU of a peer that does not say (RoCE's usual).
fn default_mtu() -> u16 {
    1024
}

/// The verbs MTU of `bytes` (256 to 4096), rounded down.
fn mtu_of(bytes: u16) -> Mtu {
    match bytes {
        4096.. => Mtu::Mtu4096,
        2048.. => Mtu::Mtu2048,
        1024.. => Mtu::Mtu1024,
        512.. => Mtu::Mtu512,
        _ => Mtu::Mtu256,
    }
}

/// The bytes of a verbs MTU.
fn mtu_bytes(mtu: Mtu) -> u16 {
    match mtu {
        Mtu::Mtu256 => 256,
        Mtu::Mtu512 => 512,
        Mtu::Mtu1024 => 1024,
        Mtu::Mtu2048 => 2048,
        Mtu::Mtu4096 => 4096,
    }
}

/// Why a work request failed.
#[derive(Debug, Clone)]
struct Failed {
    /// The work completion's status (0 when the connection failed first).
    status: u32,
    why: String,
}

/// What a completion came to: the bytes moved, or why it failed.
type Completion = oneshot::Sender<Result<u32, Failed>>;

/// What the connection's threads and calls share.
struct Shared {
    device: Arc<VerbsDevice>,
    queue_pair: Mutex<BasicQueuePair>,
    send_queue: GenericCompletionQueue,
    receive_queue: GenericCompletionQueue,
    /// Where both queues report completions.
    channel: Arc<CompletionChannel>,
    receive_buffers: Vec<RegisteredBuffer>,
    pending: Mutex<HashMap<u64, Completion>>,
    next_id: AtomicU64,
    /// This side's registered memory, for the peer's region queries.
    regions: Arc<RegionTable>,
    /// The peer's regions already asked about: their addresses.
    peer_regions: Mutex<HashMap<u32, Option<u64>>>,
    region_waiters: Mutex<HashMap<u32, Vec<oneshot::Sender<Option<u64>>>>>,
    broken: AtomicBool,
    /// This side is closing the connection (its end was dropped).
    closing: AtomicBool,
    /// Wakes the completion task when the connection fails, so it ends
    /// (and `recv` answers Closed) without waiting for a completion.
    failed: tokio::sync::Notify,
    why: Mutex<String>,
}

impl Shared {
    fn fail(&self, why: String) {
        if self.broken.swap(true, Ordering::SeqCst) {
            return;
        }
        if self.closing.load(Ordering::SeqCst) {
            tracing::debug!(device = %self.device.name, "RDMA connection closed: {why}");
        } else {
            tracing::warn!(device = %self.device.name, "RDMA connection failed: {why}");
        }
        *self.why.lock().unwrap_or_else(|e| e.into_inner()) = why.clone();
        for (_, completion) in self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            let _ = completion.send(Err(Failed {
                status: 0,
                why: why.clone(),
            }));
        }
        self.region_waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.failed.notify_one();
    }

    fn check_usable(&self) -> Result<(), TransportError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(closed(
                self.why.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            ));
        }
        Ok(())
    }

    fn post_receive(&self, index: usize) -> Result<(), String> {
        let buffer = &self.receive_buffers[index];
        let mut queue_pair = self.queue_pair.lock().unwrap_or_else(|e| e.into_inner());
        let mut guard = queue_pair.start_post_recv();
        let request = guard.construct_wr(index as u64);
        // Safety: the buffer lives as long as the connection.
        unsafe {
            request.setup_sge(
                buffer.region.lkey(),
                buffer.address(),
                buffer.memory.len() as u32,
            )
        };
        guard.post().map_err(|e| format!("posting a receive: {e}"))
    }

    /// Posts a signaled work request built by `build` and waits for its
    /// completion.
    async fn post_and_wait(
        &self,
        build: impl FnOnce(&mut BasicPostSendGuard<'_>, u64),
    ) -> Result<u32, Failed> {
        self.post_with_and_wait(|queue_pair, id| {
            let mut guard = queue_pair.start_post_send();
            build(&mut guard, id);
            guard.post().map_err(|e| e.to_string())
        })
        .await
    }

    /// Posts a signaled work request with `post` (given the queue pair,
    /// under its lock, and the request's id) and waits for its completion.
    async fn post_with_and_wait(
        &self,
        post: impl FnOnce(&mut BasicQueuePair, u64) -> Result<(), String>,
    ) -> Result<u32, Failed> {
        let failed = |why: String| Failed { status: 0, why };
        self.check_usable().map_err(|e| failed(e.to_string()))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (done, completion) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, done);
        let posted = {
            let mut queue_pair = self.queue_pair.lock().unwrap_or_else(|e| e.into_inner());
            post(&mut queue_pair, id)
        };
        if let Err(error) = posted {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            let why = format!("posting a work request: {error}");
            self.fail(why.clone());
            return Err(failed(why));
        }
        match completion.await {
            Ok(result) => result,
            Err(_) => Err(failed("the connection ended".into())),
        }
    }

    /// Answers the peer's question about one of this side's regions with
    /// an inline SEND (no buffer, nobody waits for its completion).
    fn answer_region_query(&self, id: u32) {
        // The address only: the registration's own key opens nothing.
        let mut answer = Vec::with_capacity(13);
        match self.regions.describe(id) {
            Some(nic) => {
                answer.push(REGION_ANSWER);
                answer.extend_from_slice(&id.to_le_bytes());
                answer.extend_from_slice(&nic.address.to_le_bytes());
            }
            None => {
                answer.push(REGION_UNKNOWN);
                answer.extend_from_slice(&id.to_le_bytes());
            }
        }
        let posted = {
            let mut queue_pair = self.queue_pair.lock().unwrap_or_else(|e| e.into_inner());
            let mut guard = queue_pair.start_post_send();
            guard
                .construct_wr(
                    UNWAITED,
                    WorkRequestFlags::Signaled | WorkRequestFlags::Inline,
                )
                .setup_send()
                .setup_inline_data(&answer);
            guard.post()
        };
        if let Err(error) = posted {
            self.fail(format!("answering a region query: {error}"));
        }
    }

    fn settle_region(&self, id: u32, address: Option<u64>) {
        self.peer_regions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, address);
        for waiter in self
            .region_waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
            .unwrap_or_default()
        {
            let _ = waiter.send(address);
        }
    }
}

/// One end of a verbs connection; see the module docs.
pub struct VerbsTransport {
    shared: Arc<Shared>,
    messages: tokio::sync::Mutex<mpsc::UnboundedReceiver<Bytes>>,
    /// One SEND at a time from the staging buffer.
    staging: tokio::sync::Mutex<RegisteredBuffer>,
    /// The completion task and the task watching the setup socket (which
    /// holds it: ending the task closes the socket, and the peer sees).
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Drop for VerbsTransport {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Shared {
    /// Takes what both completion queues hold and acts on it; returns
    /// whether there was anything.
    fn drain(&self, messages: &mpsc::UnboundedSender<Bytes>, partial: &mut Vec<u8>) -> bool {
        let mut sends = Vec::new();
        if let Ok(poller) = self.send_queue.start_poll() {
            for completion in poller {
                sends.push((
                    completion.wr_id(),
                    completion.status(),
                    completion.byte_len(),
                ));
            }
        }
        let mut receives = Vec::new();
        if let Ok(poller) = self.receive_queue.start_poll() {
            for completion in poller {
                receives.push((
                    completion.wr_id(),
                    completion.status(),
                    completion.byte_len(),
                ));
            }
        }
        if sends.is_empty() && receives.is_empty() {
            return false;
        }
        for (id, status, bytes) in sends {
            if status != 0 {
                let why = format!("a work request failed its completion (status {status})");
                // Its own caller learns the status; everyone else that the
                // connection failed.
                if let Some(done) = self
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id)
                {
                    let _ = done.send(Err(Failed {
                        status,
                        why: why.clone(),
                    }));
                }
                self.fail(why);
                return true;
            }
            if id == UNWAITED {
                continue;
            }
            if let Some(done) = self
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id)
            {
                let _ = done.send(Ok(bytes));
            }
        }
        for (id, status, bytes) in receives {
            if status != 0 {
                self.fail(format!("a receive failed its completion (status {status})"));
                return true;
            }
            let index = id as usize;
            let data = &self.receive_buffers[index].memory[..bytes as usize];
            match data.first().copied() {
                Some(MESSAGE_LAST) => {
                    partial.extend_from_slice(&data[1..]);
                    let _ = messages.send(Bytes::from(std::mem::take(partial)));
                }
                Some(MESSAGE_MORE) => partial.extend_from_slice(&data[1..]),
                Some(REGION_QUERY) if data.len() == 5 => {
                    self.answer_region_query(u32::from_le_bytes(data[1..5].try_into().expect("4")))
                }
                Some(REGION_ANSWER) if data.len() == 13 => self.settle_region(
                    u32::from_le_bytes(data[1..5].try_into().expect("4")),
                    Some(u64::from_le_bytes(data[5..13].try_into().expect("8"))),
                ),
                Some(REGION_UNKNOWN) if data.len() == 5 => {
                    self.settle_region(u32::from_le_bytes(data[1..5].try_into().expect("4")), None)
                }
                _ => {
                    self.fail("the peer sent a SEND this side cannot parse".into());
                    return true;
                }
            }
            if let Err(why) = self.post_receive(index) {
                self.fail(why);
                return true;
            }
        }
        true
    }

    /// Asks both queues to report their next completion on the channel.
    fn arm(&self) -> Result<(), String> {
        for queue in [&self.send_queue, &self.receive_queue] {
            // Safety: the queue lives as long as `self`.
            let status = unsafe { rdma_mummy_sys::ibv_req_notify_cq(queue.cq().as_ptr(), 0) };
            if status != 0 {
                return Err(format!(
                    "arming a completion queue: {}",
                    std::io::Error::from_raw_os_error(status)
                ));
            }
        }
        Ok(())
    }

    /// Takes the events waiting on the (non-blocking) channel and
    /// acknowledges them.
    fn take_events(&self) {
        loop {
            let mut queue = std::ptr::null_mut();
            let mut context = std::ptr::null_mut();
            // Safety: the channel lives as long as `self`; each event
            // taken is acknowledged at once, as destroying a queue needs.
            unsafe {
                if rdma_mummy_sys::ibv_get_cq_event(
                    self.channel.comp_channel().as_ptr(),
                    &mut queue,
                    &mut context,
                ) != 0
                {
                    return;
                }
                rdma_mummy_sys::ibv_ack_cq_events(queue, 1);
            }
        }
    }
}

/// The completion task: drains the queues, arms them, drains again (a
/// completion may have come in between), and waits on the channel.
async fn complete(shared: Arc<Shared>, messages: mpsc::UnboundedSender<Bytes>) {
    /// The channel's descriptor, kept open by the channel it holds.
    struct ChannelFd(Arc<CompletionChannel>);
    impl AsRawFd for ChannelFd {
        fn as_raw_fd(&self) -> std::os::fd::RawFd {
            self.0.as_raw_fd()
        }
    }
    // Safety: the descriptor stays open, and the same, while the AsyncFd
    // owns the ChannelFd (it holds the channel).
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(
            ChannelFd(shared.channel.clone()),
            tokio::io::Interest::READABLE,
        )
    };
    let channel = match registered {
        Ok(channel) => channel,
        Err(error) => {
            shared.fail(format!("watching the completion channel: {error}"));
            return;
        }
    };
    let mut partial: Vec<u8> = Vec::new();
    while !shared.broken.load(Ordering::SeqCst) {
        if shared.drain(&messages, &mut partial) {
            continue;
        }
        if let Err(why) = shared.arm() {
            shared.fail(why);
            break;
        }
        if shared.drain(&messages, &mut partial) {
            continue;
        }
        tokio::select! {
            readable = channel.readable() => match readable {
                Ok(mut ready) => {
                    shared.take_events();
                    ready.clear_ready();
                }
                Err(error) => {
                    shared.fail(format!("waiting on the completion channel: {error}"));
                    break;
                }
            },
            () = shared.failed.notified() => {}
        }
    }
    // Dropping `messages` here makes `recv` answer Closed.
}

/// Watches the setup socket: its end is the peer's.
async fn watch_peer(mut socket: tokio::net::TcpStream, shared: Arc<Shared>) {
    let mut byte = [0u8; 1];
    let _ = socket.read(&mut byte).await;
    shared.fail("the peer is gone (its setup connection closed)".into());
}

impl VerbsTransport {
    /// The verbs resources of a connection, made before any await (they
    /// are not `Send`): queues, buffers with receives posted, and this
    /// side's endpoint.
    #[allow(clippy::type_complexity)]
    fn prepare(
        device: &Arc<VerbsDevice>,
        regions: Arc<RegionTable>,
    ) -> Result<
        (
            Arc<Shared>,
            RegisteredBuffer,
            mpsc::UnboundedSender<Bytes>,
            mpsc::UnboundedReceiver<Bytes>,
            Endpoint,
        ),
        TransportError,
    > {
        let setup = |what: &str, error: &dyn std::fmt::Display| {
            closed(format!("{}: {what}: {error}", device.name))
        };
        let queue_size = (RECEIVE_DEPTH * 2) as u32;
        let channel = device
            .context
            .create_comp_channel()
            .map_err(|e| setup("completion channel", &e))?;
        channel
            .set_nonblocking(true)
            .map_err(|e| setup("completion channel", &e))?;
        let mut builder = device.context.create_cq_builder();
        builder
            .setup_cqe(queue_size * 2)
            .setup_comp_channel(&channel, 0);
        let send_queue = GenericCompletionQueue::from(
            builder
                .build()
                .map_err(|e| setup("send completion queue", &e))?,
        );
        let receive_queue = GenericCompletionQueue::from(
            builder
                .build()
                .map_err(|e| setup("receive completion queue", &e))?,
        );
        let mut builder = device.domain.create_qp_builder();
        builder
            .setup_qp_type(QueuePairType::ReliableConnection)
            .setup_max_send_wr(queue_size)
            .setup_max_recv_wr(RECEIVE_DEPTH as u32)
            .setup_max_send_sge(1)
            .setup_max_recv_sge(1)
            .setup_max_inline_data(64)
            .setup_send_cq(send_queue.clone())
            .setup_recv_cq(receive_queue.clone());
        let mut queue_pair = builder.build().map_err(|e| setup("queue pair", &e))?;
        let mut init = QueuePairAttribute::new();
        init.setup_state(QueuePairState::Init)
            .setup_pkey_index(0)
            .setup_port(PORT)
            .setup_access_flags(
                AccessFlags::LocalWrite | AccessFlags::RemoteRead | AccessFlags::RemoteWrite,
            );
        queue_pair
            .modify(&init)
            .map_err(|e| setup("queue pair to INIT", &e))?;

        let mut receive_buffers = Vec::with_capacity(RECEIVE_DEPTH);
        for _ in 0..RECEIVE_DEPTH {
            receive_buffers.push(
                device
                    .local_buffer(FRAGMENT_BYTES)
                    .map_err(|e| setup("receive buffer", &e))?,
            );
        }
        let staging = device
            .local_buffer(FRAGMENT_BYTES)
            .map_err(|e| setup("staging buffer", &e))?;
        let (to_messages, messages) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            queue_pair: Mutex::new(queue_pair),
            send_queue,
            receive_queue,
            channel,
            receive_buffers,
            pending: Mutex::default(),
            next_id: AtomicU64::new(FIRST_SEND_ID),
            regions,
            peer_regions: Mutex::default(),
            region_waiters: Mutex::default(),
            broken: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            failed: tokio::sync::Notify::new(),
            why: Mutex::default(),
            device: device.clone(),
        });
        for index in 0..RECEIVE_DEPTH {
            shared
                .post_receive(index)
                .map_err(|e| setup("posting receives", &e))?;
        }

        let own = Endpoint {
            qp_number: shared
                .queue_pair
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .qp_number(),
            lid: device.lid,
            gid: device.gid.raw,
            psn: (crate::regions::seed() as u32) & 0x00ff_ffff,
            mtu: device.mtu,
        };
        Ok((shared, staging, to_messages, messages, own))
    }

    /// Moves the queue pair to ready-to-send, connected to `peer`.
    fn connect_queue_pair(
        shared: &Shared,
        own: &Endpoint,
        peer: &Endpoint,
    ) -> Result<(), TransportError> {
        let device = &shared.device;
        let setup = |what: &str, error: &dyn std::fmt::Display| {
            closed(format!("{}: {what}: {error}", device.name))
        };

        let mut queue_pair = shared.queue_pair.lock().unwrap_or_else(|e| e.into_inner());
        let mut ready_to_receive = QueuePairAttribute::new();
        ready_to_receive
            .setup_state(QueuePairState::ReadyToReceive)
            .setup_path_mtu(mtu_of(own.mtu.min(peer.mtu)))
            .setup_dest_qp_num(peer.qp_number)
            .setup_rq_psn(peer.psn)
            .setup_max_dest_read_atomic(16)
            .setup_min_rnr_timer(12);
        let mut address = AddressHandleAttribute::new();
        address
            .setup_dest_lid(peer.lid)
            .setup_port(PORT)
            .setup_service_level(0)
            .setup_grh_src_gid_index(device.gid_index)
            .setup_grh_dest_gid(&Gid { raw: peer.gid })
            .setup_grh_hop_limit(64);
        ready_to_receive.setup_address_vector(&address);
        queue_pair
            .modify(&ready_to_receive)
            .map_err(|e| setup("queue pair to RTR", &e))?;
        let mut ready_to_send = QueuePairAttribute::new();
        ready_to_send
            .setup_state(QueuePairState::ReadyToSend)
            .setup_sq_psn(own.psn)
            .setup_timeout(14)
            .setup_retry_cnt(7)
            .setup_rnr_retry(7)
            .setup_max_read_atomic(16);
        queue_pair
            .modify(&ready_to_send)
            .map_err(|e| setup("queue pair to RTS", &e))?;

        Ok(())
    }

    /// Connects a queue pair over `socket` (already connected to the peer,
    /// which does the same); `regions` is this side's registered memory,
    /// which the peer may read.
    pub async fn establish(
        device: Arc<VerbsDevice>,
        socket: tokio::net::TcpStream,
        regions: Arc<RegionTable>,
    ) -> Result<Self, TransportError> {
        let setup = |what: &str, error: &dyn std::fmt::Display| {
            closed(format!("{}: {what}: {error}", device.name))
        };
        let (shared, staging, to_messages, messages, own) = Self::prepare(&device, regions)?;
        // Exchange endpoints over the socket, then connect the QP.
        let mut line = serde_json::to_vec(&own).map_err(|e| setup("endpoint", &e))?;
        line.push(b'\n');
        let mut socket = BufReader::new(socket);
        socket
            .get_mut()
            .write_all(&line)
            .await
            .map_err(|e| setup("sending the endpoint", &e))?;
        // The endpoint is a short JSON line: a peer sending more is cut
        // off there (and fails to parse), not buffered.
        let mut peer_line = String::new();
        (&mut socket)
            .take(MAX_ENDPOINT_LINE_BYTES)
            .read_line(&mut peer_line)
            .await
            .map_err(|e| setup("reading the peer's endpoint", &e))?;
        let peer: Endpoint =
            serde_json::from_str(&peer_line).map_err(|e| setup("the peer's endpoint", &e))?;
        Self::connect_queue_pair(&shared, &own, &peer)?;
        // Both sides are ready to receive before either sends.
        socket
            .get_mut()
            .write_all(b"R")
            .await
            .map_err(|e| setup("confirming", &e))?;
        let mut ready = [0u8; 1];
        tokio::io::AsyncReadExt::read_exact(&mut socket, &mut ready)
            .await
            .map_err(|e| setup("waiting for the peer", &e))?;

        let tasks = [
            tokio::spawn(complete(shared.clone(), to_messages)),
            tokio::spawn(watch_peer(socket.into_inner(), shared.clone())),
        ];
        Ok(VerbsTransport {
            shared,
            messages: tokio::sync::Mutex::new(messages),
            staging: tokio::sync::Mutex::new(staging),
            tasks,
        })
    }

    /// Sends one SEND of `tag` + `payload` from the staging buffer.
    async fn send_fragment(
        &self,
        staging: &mut RegisteredBuffer,
        tag: u8,
        payload: &[u8],
    ) -> Result<(), TransportError> {
        staging.memory[0] = tag;
        staging.memory[1..=payload.len()].copy_from_slice(payload);
        let (key, address, len) = (
            staging.region.lkey(),
            staging.address(),
            (payload.len() + 1) as u32,
        );
        self.shared
            .post_and_wait(|guard, id| {
                let request = guard
                    .construct_wr(id, WorkRequestFlags::Signaled)
                    .setup_send();
                // Safety: the staging buffer is held (locked) until the
                // completion came.
                unsafe { request.setup_sge(key, address, len) };
            })
            .await
            .map(drop)
            .map_err(|failed| closed(failed.why))
    }

    /// Where the peer's region `id` is, asked once.
    async fn peer_region(&self, id: u32) -> Result<u64, TransportError> {
        let known = self
            .shared
            .peer_regions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .copied();
        let answer = match known {
            Some(answer) => answer,
            None => {
                let (tell, told) = oneshot::channel();
                self.shared
                    .region_waiters
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(id)
                    .or_default()
                    .push(tell);
                let mut staging = self.staging.lock().await;
                self.send_fragment(&mut staging, REGION_QUERY, &id.to_le_bytes())
                    .await?;
                drop(staging);
                told.await
                    .map_err(|_| closed("the connection ended during a region query"))?
            }
        };
        answer.ok_or(TransportError::Refused(RegionError::Unknown(id)))
    }

    /// Posts one READ or WRITE of `len` bytes between `local` (registered
    /// as `registration`) and `slice` of the peer's memory, and waits;
    /// a refusal by the peer's device is [`RegionError::RefusedByDevice`].
    async fn one_sided(
        &self,
        slice: RemoteSlice,
        registration: &MemoryRegion,
        local: u64,
        write: bool,
    ) -> Result<(), TransportError> {
        self.shared.check_usable()?;
        let base = self.peer_region(slice.region).await?;
        let remote = base.checked_add(slice.offset).ok_or({
            TransportError::Refused(RegionError::OutOfBounds {
                region: slice.region,
                offset: slice.offset,
                end: u64::MAX,
                len: 0,
            })
        })?;
        let len = u32::try_from(slice.len)
            .map_err(|_| TransportError::Protocol(format!("one access of {} bytes", slice.len)))?;
        let local_key = registration.lkey();
        let done = self
            .shared
            .post_and_wait(|guard, id| {
                let request = guard.construct_wr(id, WorkRequestFlags::Signaled);
                let request = if write {
                    request.setup_write(slice.key, remote)
                } else {
                    request.setup_read(slice.key, remote)
                };
                // Safety: the caller keeps the local memory registered
                // until this completes (or the connection failed).
                unsafe { request.setup_sge(local_key, local, len) };
            })
            .await;
        match done {
            Ok(_) => Ok(()),
            Err(failed) if failed.status == REMOTE_ACCESS_ERROR => Err(TransportError::Refused(
                RegionError::RefusedByDevice(slice.region),
            )),
            Err(failed) => Err(closed(format!(
                "{} of region {} failed its completion: {}",
                if write { "write" } else { "read" },
                slice.region,
                failed.why
            ))),
        }
    }
}

#[async_trait]
impl Transport for VerbsTransport {
    fn kind(&self) -> &'static str {
        "rdma"
    }

    async fn send(&self, message: Bytes) -> Result<(), TransportError> {
        self.shared.check_usable()?;
        let mut staging = self.staging.lock().await;
        let pieces: Vec<&[u8]> = if message.is_empty() {
            vec![&[][..]]
        } else {
            message.chunks(FRAGMENT_BYTES - 1).collect()
        };
        let last = pieces.len() - 1;
        for (index, piece) in pieces.into_iter().enumerate() {
            let tag = if index == last {
                MESSAGE_LAST
            } else {
                MESSAGE_MORE
            };
            self.send_fragment(&mut staging, tag, piece).await?;
        }
        Ok(())
    }

    async fn recv(&self) -> Result<Bytes, TransportError> {
        match self.messages.lock().await.recv().await {
            Some(message) => Ok(message),
            None => Err(closed(
                self.shared
                    .why
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
            )),
        }
    }

    async fn read(&self, slice: RemoteSlice) -> Result<Bytes, TransportError> {
        self.shared.check_usable()?;
        let len = usize::try_from(slice.len)
            .map_err(|_| TransportError::Protocol(format!("a read of {} bytes", slice.len)))?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        // Landed where it is handed up: registered for this read alone.
        let mut landed = vec![0u8; len];
        // Safety: `landed` outlives the registration, dropped first below
        // (also when this future is dropped mid-read: the fields of this
        // frame drop in reverse order), so no DMA reaches freed memory.
        let registration = unsafe {
            self.shared.device.register_memory(
                landed.as_mut_ptr() as usize,
                len,
                AccessFlags::LocalWrite,
            )
        }
        .map_err(closed)?;
        let read = self
            .one_sided(slice, &registration, landed.as_ptr() as u64, false)
            .await;
        drop(registration);
        read?;
        Ok(Bytes::from(landed))
    }

    async fn write(&self, slice: RemoteSlice, data: Bytes) -> Result<(), TransportError> {
        self.shared.check_usable()?;
        if data.len() as u64 != slice.len {
            return Err(TransportError::Protocol(format!(
                "a write of {} bytes into a slice of {}",
                data.len(),
                slice.len
            )));
        }
        if data.is_empty() {
            return Ok(());
        }
        // The source needs no access flags: a WRITE only reads it.
        // Safety: `data` outlives the registration, dropped first below.
        let registration = unsafe {
            self.shared.device.register_memory(
                data.as_ptr() as usize,
                data.len(),
                AccessFlags::none(),
            )
        }
        .map_err(closed)?;
        let written = self
            .one_sided(slice, &registration, data.as_ptr() as u64, true)
            .await;
        drop(registration);
        written
    }

    async fn grant(
        &self,
        slice: RemoteSlice,
        access: RemoteAccess,
    ) -> Result<Grant, TransportError> {
        self.shared.check_usable()?;
        if slice.len == 0 {
            return Ok(Grant::new(slice, None));
        }
        let device = &self.shared.device;
        let nic = self
            .shared
            .regions
            .describe(slice.region)
            .ok_or(TransportError::Refused(RegionError::Unknown(slice.region)))?;
        let end = slice.offset.saturating_add(slice.len);
        if end > nic.len {
            return Err(TransportError::Refused(RegionError::OutOfBounds {
                region: slice.region,
                offset: slice.offset,
                end,
                len: nic.len,
            }));
        }
        let registration = device
            .registrations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&nic.address)
            .cloned()
            .ok_or(TransportError::Refused(RegionError::Unknown(slice.region)))?;
        // Safety: the protection domain outlives the window (the window
        // holds the device).
        let window = NonNull::new(unsafe {
            rdma_mummy_sys::ibv_alloc_mw(
                device.domain.pd().as_ptr(),
                rdma_mummy_sys::ibv_mw_type::IBV_MW_TYPE_2,
            )
        })
        .ok_or_else(|| {
            closed(format!(
                "{}: allocating a memory window: {}",
                device.name,
                std::io::Error::last_os_error()
            ))
        })?;
        let window = MemoryWindow {
            window,
            _device: device.clone(),
        };
        // Safety: the window is ours; ibv_inc_rkey only computes.
        let key = unsafe { rdma_mummy_sys::ibv_inc_rkey((*window.handle()).rkey) };
        let flags = match access {
            RemoteAccess::Read => rdma_mummy_sys::ibv_access_flags::IBV_ACCESS_REMOTE_READ.0,
            RemoteAccess::Write => rdma_mummy_sys::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0,
        };
        let bound_window = &window;
        let bound = self
            .shared
            .post_with_and_wait(|queue_pair, id| {
                // Safety: a zeroed ibv_send_wr is a valid empty request;
                // the window and the registration outlive the bind (the
                // grant holds the window; the device the registration).
                unsafe {
                    let mut request: rdma_mummy_sys::ibv_send_wr = std::mem::zeroed();
                    request.wr_id = id;
                    request.opcode = rdma_mummy_sys::ibv_wr_opcode::IBV_WR_BIND_MW;
                    request.send_flags = rdma_mummy_sys::ibv_send_flags::IBV_SEND_SIGNALED.0;
                    request.bind_mw_tso_union.bind_mw = rdma_mummy_sys::bind_mw_t {
                        mw: bound_window.handle(),
                        rkey: key,
                        bind_info: rdma_mummy_sys::ibv_mw_bind_info {
                            mr: registration.mr().as_ptr(),
                            addr: nic.address + slice.offset,
                            length: slice.len,
                            mw_access_flags: flags as _,
                        },
                    };
                    let mut bad = std::ptr::null_mut();
                    match rdma_mummy_sys::ibv_post_send(
                        queue_pair.qp().as_ptr(),
                        &mut request,
                        &mut bad,
                    ) {
                        0 => Ok(()),
                        errno => Err(std::io::Error::from_raw_os_error(errno).to_string()),
                    }
                }
            })
            .await;
        if let Err(failed) = bound {
            return Err(closed(format!(
                "binding a memory window to region {}: {}",
                slice.region, failed.why
            )));
        }
        Ok(Grant::new(
            RemoteSlice { key, ..slice },
            Some(Box::new(window)),
        ))
    }
}

/// The longest endpoint line read during queue pair setup.
const MAX_ENDPOINT_LINE_BYTES: u64 = 4096;

/// Connects to a storage node's RDMA listener (its setup socket) at `addr`.
pub fn rdma_connector(
    device: Arc<VerbsDevice>,
    addr: std::net::SocketAddr,
    timeout: Duration,
) -> crate::remote::Connector {
    Arc::new(move || {
        let device = device.clone();
        Box::pin(async move {
            let unavailable = |e: &dyn std::fmt::Display| {
                crate::BlobError::Unavailable(format!("storage node {addr} (rdma): {e}"))
            };
            let socket = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| unavailable(&"connect timed out"))?
                .map_err(|e| unavailable(&e))?;
            let transport = tokio::time::timeout(
                timeout,
                VerbsTransport::establish(device, socket, Arc::new(RegionTable::default())),
            )
            .await
            .map_err(|_| unavailable(&"queue pair setup timed out"))?
            .map_err(|e| unavailable(&e))?;
            Ok(Arc::new(transport) as Arc<dyn Transport>)
        })
    })
}

/// The device the verbs tests run on: the one `HEARTH_RDMA_DEVICE` names.
/// Without one they cannot run: this prints why and gives `None`, except
/// under `CI` (set), where running them is the point: there it panics,
/// saying how (scripts/test.sh runs them in tests/rdma-vm, on soft-RoCE).
pub fn device_for_tests() -> Option<String> {
    match std::env::var("HEARTH_RDMA_DEVICE") {
        Ok(device) if !device.is_empty() => Some(device),
        _ => {
            let why = "RDMA verbs tests not run: HEARTH_RDMA_DEVICE is not set. Run them on soft-RoCE in a VM as scripts/test.sh does (tests/rdma-vm/run as the cargo runner, HEARTH_RDMA_DEVICE=rxe0), or name a device of this machine";
            assert!(
                std::env::var_os("CI").is_none(),
                "{why}; under CI they must run"
            );
            println!("{why}");
            None
        }
    }
}
