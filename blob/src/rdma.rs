//! The RDMA verbs transport (cargo feature `rdma`): rdma-core's libibverbs
//! through the `sideway` crate. Its tests run when `HEARTH_RDMA_DEVICE`
//! names a device (soft-RoCE `rxe0` will do) and otherwise say why not.
//!
//! # Contract: [`crate::transport`]'s, over verbs
//!
//! * **Connection.** One reliable-connected (RC) queue pair per
//!   connection, set up the usual way: both sides exchange QP number, LID,
//!   GID and starting PSN as a JSON line over a TCP socket, move their QP
//!   to ready-to-send, and confirm with one byte. The socket stays open:
//!   its closing is how each side learns, at once, that the other is gone.
//! * **Two-sided control.** A message goes as SENDs of at most
//!   [`FRAGMENT_BYTES`] from a registered staging buffer into
//!   [`RECEIVE_DEPTH`] registered receive buffers the peer posted ahead
//!   (reposted as they are consumed); longer messages go in fragments.
//!   Messages arrive whole and in order. RNR retry is unlimited: a sender
//!   waits for the receiver to repost.
//! * **One-sided reads.** `read` is an RDMA READ of the peer's registered
//!   buffer (registered once by its [`RegionTable`]'s registrar, see
//!   [`crate::regions`]) into a registered landing buffer of this side,
//!   whose bytes are then copied into the [`Bytes`] handed up: the one copy
//!   this transport makes, counted by [`crate::copy_meter`]. A region's
//!   address and NIC key are asked of the peer's transport once (it answers
//!   from its table without the protocol code) and kept: regions never
//!   move. The NIC checks its key and the registered bounds; the rotating
//!   key of loopback and TCP is not checked here (see [`crate::regions`]).
//! * **Completions.** One thread per connection polls its completion
//!   queues. A work completion with an error status fails its read or send
//!   and, the QP being in the error state then, the connection: later calls
//!   are [`TransportError::Closed`].

// Verbs hand the NIC raw addresses of registered memory: each unsafe use
// says why the memory outlives the NIC's use of it.
#![allow(unsafe_code)]

use crate::regions::{NicRegion, RegionError, RegionTable, Registrar, RemoteSlice};
use crate::transport::{Transport, TransportError};
use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sideway::ibverbs::AccessFlags;
use sideway::ibverbs::address::{AddressHandleAttribute, Gid, GidType};
use sideway::ibverbs::completion::GenericCompletionQueue;
use sideway::ibverbs::device::{DeviceInfo, DeviceList};
use sideway::ibverbs::device_context::{DeviceContext, Mtu};
use sideway::ibverbs::memory_region::MemoryRegion;
use sideway::ibverbs::protection_domain::ProtectionDomain;
use sideway::ibverbs::queue_pair::{
    BasicPostSendGuard, BasicQueuePair, PostSendGuard, QueuePair, QueuePairAttribute,
    QueuePairState, QueuePairType, SetInlineData, SetScatterGatherEntry, WorkRequestFlags,
};
use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

/// The largest SEND: one receive buffer.
pub const FRAGMENT_BYTES: usize = 64 * 1024;
/// Receive buffers posted ahead per connection.
pub const RECEIVE_DEPTH: usize = 32;
/// Size of each landing buffer for one-sided reads (a longer read is done
/// in pieces of this size).
pub const LANDING_BYTES: usize = 1 << 20;
/// Landing buffers kept registered per connection.
const LANDING_BUFFERS: usize = 8;
/// The port every connection uses.
const PORT: u8 = 1;

const MESSAGE_LAST: u8 = 0;
const MESSAGE_MORE: u8 = 1;
const REGION_QUERY: u8 = 2;
const REGION_ANSWER: u8 = 3;
const REGION_UNKNOWN: u8 = 4;
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
    gid: Gid,
    gid_index: u8,
    registrations: Mutex<Vec<Arc<MemoryRegion>>>,
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

    /// A buffer of `len` bytes registered for local writes (landing,
    /// receiving) and sends.
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
        // Safety: the caller keeps the memory in place while we live.
        let region = unsafe {
            self.domain.reg_mr(
                address,
                len,
                AccessFlags::LocalWrite | AccessFlags::RemoteRead,
            )
        }
        .map_err(|e| format!("{}: registering a read buffer: {e}", self.name))?;
        let key = region.rkey();
        self.registrations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(region);
        Ok(key)
    }
}

/// Memory and its registration (deregistered before the memory is freed).
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
}

/// What a completion came to: the bytes moved, or why it failed.
type Completion = oneshot::Sender<Result<u32, String>>;

/// What the connection's threads and calls share.
struct Shared {
    device: Arc<VerbsDevice>,
    queue_pair: Mutex<BasicQueuePair>,
    send_queue: GenericCompletionQueue,
    receive_queue: GenericCompletionQueue,
    receive_buffers: Vec<RegisteredBuffer>,
    landing: Mutex<Vec<RegisteredBuffer>>,
    pending: Mutex<HashMap<u64, Completion>>,
    next_id: AtomicU64,
    /// This side's registered memory, for the peer's region queries.
    regions: Arc<RegionTable>,
    /// The peer's regions already asked about.
    peer_regions: Mutex<HashMap<u32, Option<NicRegion>>>,
    region_waiters: Mutex<HashMap<u32, Vec<oneshot::Sender<Option<NicRegion>>>>>,
    broken: AtomicBool,
    why: Mutex<String>,
}

impl Shared {
    fn fail(&self, why: String) {
        if self.broken.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::warn!(device = %self.device.name, "RDMA connection failed: {why}");
        *self.why.lock().unwrap_or_else(|e| e.into_inner()) = why.clone();
        for (_, completion) in self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            let _ = completion.send(Err(why.clone()));
        }
        self.region_waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
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
    ) -> Result<u32, TransportError> {
        self.check_usable()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (done, completion) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, done);
        let posted = {
            let mut queue_pair = self.queue_pair.lock().unwrap_or_else(|e| e.into_inner());
            let mut guard = queue_pair.start_post_send();
            build(&mut guard, id);
            guard.post()
        };
        if let Err(error) = posted {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            let why = format!("posting a work request: {error}");
            self.fail(why.clone());
            return Err(closed(why));
        }
        match completion.await {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(why)) => Err(closed(why)),
            Err(_) => Err(closed("the connection ended")),
        }
    }

    /// Answers the peer's question about one of this side's regions with
    /// an inline SEND (no buffer, nobody waits for its completion).
    fn answer_region_query(&self, id: u32) {
        let mut answer = Vec::with_capacity(25);
        match self.regions.describe(id) {
            Some(nic) => {
                answer.push(REGION_ANSWER);
                answer.extend_from_slice(&id.to_le_bytes());
                answer.extend_from_slice(&nic.address.to_le_bytes());
                answer.extend_from_slice(&nic.key.to_le_bytes());
                answer.extend_from_slice(&nic.len.to_le_bytes());
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

    fn settle_region(&self, id: u32, nic: Option<NicRegion>) {
        self.peer_regions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, nic);
        for waiter in self
            .region_waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
            .unwrap_or_default()
        {
            let _ = waiter.send(nic);
        }
    }
}

/// One end of a verbs connection; see the module docs.
pub struct VerbsTransport {
    shared: Arc<Shared>,
    messages: tokio::sync::Mutex<mpsc::UnboundedReceiver<Bytes>>,
    /// One SEND at a time from the staging buffer.
    staging: tokio::sync::Mutex<RegisteredBuffer>,
    stop: Arc<AtomicBool>,
    socket: std::net::TcpStream,
    poller: Option<std::thread::JoinHandle<()>>,
}

impl Drop for VerbsTransport {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        if let Some(poller) = self.poller.take() {
            let _ = poller.join();
        }
    }
}

/// The poller thread: completions of both queues until `stop`.
fn poll_completions(
    shared: Arc<Shared>,
    messages: mpsc::UnboundedSender<Bytes>,
    stop: Arc<AtomicBool>,
) {
    let mut partial: Vec<u8> = Vec::new();
    let mut idle_rounds = 0u32;
    while !stop.load(Ordering::SeqCst) && !shared.broken.load(Ordering::SeqCst) {
        let mut sends = Vec::new();
        if let Ok(poller) = shared.send_queue.start_poll() {
            for completion in poller {
                sends.push((
                    completion.wr_id(),
                    completion.status(),
                    completion.byte_len(),
                ));
            }
        }
        let mut receives = Vec::new();
        if let Ok(poller) = shared.receive_queue.start_poll() {
            for completion in poller {
                receives.push((
                    completion.wr_id(),
                    completion.status(),
                    completion.byte_len(),
                ));
            }
        }
        if sends.is_empty() && receives.is_empty() {
            idle_rounds = idle_rounds.saturating_add(1);
            if idle_rounds > 1000 {
                std::thread::sleep(Duration::from_micros(50));
            } else {
                std::hint::spin_loop();
            }
            continue;
        }
        idle_rounds = 0;
        for (id, status, bytes) in sends {
            if status != 0 {
                shared.fail(format!(
                    "a work request failed its completion (status {status})"
                ));
                break;
            }
            if id == UNWAITED {
                continue;
            }
            if let Some(done) = shared
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
                shared.fail(format!("a receive failed its completion (status {status})"));
                break;
            }
            let index = id as usize;
            let data = &shared.receive_buffers[index].memory[..bytes as usize];
            match data.first().copied() {
                Some(MESSAGE_LAST) => {
                    partial.extend_from_slice(&data[1..]);
                    let _ = messages.send(Bytes::from(std::mem::take(&mut partial)));
                }
                Some(MESSAGE_MORE) => partial.extend_from_slice(&data[1..]),
                Some(REGION_QUERY) if data.len() == 5 => shared
                    .answer_region_query(u32::from_le_bytes(data[1..5].try_into().expect("4"))),
                Some(REGION_ANSWER) if data.len() == 25 => {
                    let u32_at =
                        |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().expect("4"));
                    let u64_at =
                        |at: usize| u64::from_le_bytes(data[at..at + 8].try_into().expect("8"));
                    shared.settle_region(
                        u32_at(1),
                        Some(NicRegion {
                            address: u64_at(5),
                            key: u32_at(13),
                            len: u64_at(17),
                        }),
                    );
                }
                Some(REGION_UNKNOWN) if data.len() == 5 => shared
                    .settle_region(u32::from_le_bytes(data[1..5].try_into().expect("4")), None),
                _ => {
                    shared.fail("the peer sent a SEND this side cannot parse".into());
                    break;
                }
            }
            if let Err(why) = shared.post_receive(index) {
                shared.fail(why);
                break;
            }
        }
    }
    // Dropping `messages` here makes `recv` answer Closed.
}

/// Watches the setup socket: its end is the peer's.
fn watch_peer(mut socket: std::net::TcpStream, shared: Arc<Shared>) {
    let mut byte = [0u8; 1];
    let _ = socket.read(&mut byte);
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
        let mut builder = device.context.create_cq_builder();
        builder.setup_cqe(queue_size * 2);
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
            .setup_access_flags(AccessFlags::LocalWrite | AccessFlags::RemoteRead);
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
            receive_buffers,
            landing: Mutex::default(),
            pending: Mutex::default(),
            next_id: AtomicU64::new(FIRST_SEND_ID),
            regions,
            peer_regions: Mutex::default(),
            region_waiters: Mutex::default(),
            broken: AtomicBool::new(false),
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
            .setup_path_mtu(Mtu::Mtu1024)
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

        let socket = socket
            .into_inner()
            .into_std()
            .map_err(|e| setup("the setup socket", &e))?;
        socket
            .set_nonblocking(false)
            .map_err(|e| setup("the setup socket", &e))?;
        let watched = socket
            .try_clone()
            .map_err(|e| setup("the setup socket", &e))?;
        let watcher_shared = shared.clone();
        std::thread::Builder::new()
            .name("hearth-rdma-peer".into())
            .spawn(move || watch_peer(watched, watcher_shared))
            .map_err(|e| setup("a thread", &e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (poller_shared, poller_stop) = (shared.clone(), stop.clone());
        let poller = std::thread::Builder::new()
            .name("hearth-rdma-cq".into())
            .spawn(move || poll_completions(poller_shared, to_messages, poller_stop))
            .map_err(|e| setup("a thread", &e))?;
        Ok(VerbsTransport {
            shared,
            messages: tokio::sync::Mutex::new(messages),
            staging: tokio::sync::Mutex::new(staging),
            stop,
            socket,
            poller: Some(poller),
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
    }

    /// Where the peer's region `id` is, asked once.
    async fn peer_region(&self, id: u32) -> Result<NicRegion, TransportError> {
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

    fn take_landing(&self) -> Result<RegisteredBuffer, TransportError> {
        let reused = self
            .shared
            .landing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        match reused {
            Some(buffer) => Ok(buffer),
            None => self
                .shared
                .device
                .local_buffer(LANDING_BYTES)
                .map_err(closed),
        }
    }

    fn give_back_landing(&self, buffer: RegisteredBuffer) {
        let mut landing = self
            .shared
            .landing
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if landing.len() < LANDING_BUFFERS {
            landing.push(buffer);
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
        let nic = self.peer_region(slice.region).await?;
        let end = slice.offset.saturating_add(slice.len);
        if end > nic.len {
            self.shared
                .fail(format!("a read past the end of region {}", slice.region));
            return Err(TransportError::Refused(RegionError::OutOfBounds {
                region: slice.region,
                offset: slice.offset,
                end,
                len: nic.len,
            }));
        }
        let mut landed = Vec::with_capacity(slice.len as usize);
        let landing = self.take_landing()?;
        let mut at = slice.offset;
        while at < end {
            let len = (end - at).min(LANDING_BYTES as u64) as u32;
            let (local_key, local_address) = (landing.region.lkey(), landing.address());
            let remote_address = nic.address + at;
            let read = self
                .shared
                .post_and_wait(|guard, id| {
                    let request = guard
                        .construct_wr(id, WorkRequestFlags::Signaled)
                        .setup_read(nic.key, remote_address);
                    // Safety: the landing buffer is ours until the
                    // completion came.
                    unsafe { request.setup_sge(local_key, local_address, len) };
                })
                .await;
            if let Err(error) = read {
                // The landing buffer may be mid-DMA on a failed QP: dropped.
                return Err(match error {
                    TransportError::Closed(why) => closed(format!(
                        "read of region {} failed its completion: {why}",
                        slice.region
                    )),
                    other => other,
                });
            }
            landed.extend_from_slice(&landing.memory[..len as usize]);
            crate::copy_meter::client_copied(len as usize);
            at += u64::from(len);
        }
        self.give_back_landing(landing);
        Ok(Bytes::from(landed))
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

/// Why the verbs tests cannot run here, if they cannot (they need a device
/// named by `HEARTH_RDMA_DEVICE`).
pub fn not_run_reason() -> Option<String> {
    match std::env::var("HEARTH_RDMA_DEVICE") {
        Ok(device) if !device.is_empty() => None,
        _ => Some(
            "RDMA verbs tests not run: HEARTH_RDMA_DEVICE is not set (name a device, e.g. soft-RoCE `rxe0` made with `rdma link add rxe0 type rxe netdev eth0`)"
                .into(),
        ),
    }
}
