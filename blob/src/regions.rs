//! Registered memory regions: what a storage node advertises for one-sided
//! reads, and the rules every transport enforces on them (the rules RDMA
//! verbs enforce in hardware).
//!
//! # Contract
//!
//! * A [`BufferPool`] registers its buffers once, when it makes them (up to
//!   `max_buffers`); taking and returning a buffer never registers or
//!   deregisters anything. [`BufferPool::stats`] counts registered buffers
//!   and those in use, so a test can show that a request which ends in any
//!   way — finished, failed, or its client gone — gives its buffer back.
//! * Each registered buffer is a region with an id and a key (32 bits from
//!   a generator seeded with the time and pid). A
//!   [`RegionTable::read`] of `(region, key, offset, len)` succeeds only if
//!   the region is registered, the key is its key, and
//!   `offset..offset + len` lies within what the buffer holds now; anything
//!   else is a [`RegionError`], never a partial copy.
//! * A taken buffer is open for one [`RemoteAccess`]: reads of what it was filled
//!   with ([`PooledBuffer::fill`], [`PooledBuffer::append`]), or, after
//!   [`PooledBuffer::open_for_writes`], one-sided writes anywhere in it
//!   ([`RegionTable::write`], same checks) until [`PooledBuffer::seal`]
//!   closes it (a new key) and hands out what was written.
//! * A region's key changes every time its buffer is taken from the pool,
//!   and when writes into it are sealed, so a peer holding an old
//!   `(region, key)` cannot read the next request's data or write into it.
//! * A table made [`RegionTable::with_registrar`] also registers each
//!   buffer's memory with a NIC, once, when the pool makes it (a buffer's
//!   memory never moves: it is allocated at its full size and never grows);
//!   [`RegionTable::describe`] gives a transport the address and the NIC's
//!   address. The registration grants no remote access by itself: a verbs
//!   transport opens each take to its one peer with a memory window (see
//!   [`crate::rdma`]), so there the device checks the per-take key, the
//!   bounds and the connection, as this table does for TCP and loopback.
//! * A buffer offered for reads ([`PooledBuffer::advertise`]) holds zeros
//!   past its bytes, to its end. A device should refuse reads past a
//!   window, but soft-RoCE (rxe, Linux 6.1) checks a window's key, queue
//!   pair and access and then only the *registration's* bounds: there a
//!   granted peer can read the rest of the buffer, and finds zeros, never
//!   an earlier take's bytes.

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Why a one-sided read was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegionError {
    /// No region has this id.
    #[error("region {0} is not registered")]
    Unknown(u32),
    /// The key is not the region's key.
    #[error("wrong key for region {0}")]
    WrongKey(u32),
    /// The range goes outside what the region holds.
    #[error("bytes {offset}..{end} are outside region {region} ({len} bytes)")]
    OutOfBounds {
        /// The region.
        region: u32,
        /// The first byte asked for.
        offset: u64,
        /// One past the last.
        end: u64,
        /// What the region holds.
        len: u64,
    },
    /// The region is taken, but not open for this kind of access.
    #[error("region {region} is not open for {access}s")]
    NotOpen {
        /// The region.
        region: u32,
        /// What was asked.
        access: RemoteAccess,
    },
    /// The RDMA device refused the access (a remote access error): a key
    /// that is no longer granted, bytes outside the grant, or a grant made
    /// to another connection. The device does not say which.
    #[error(
        "the RDMA device refused an access to region {0} (a key no longer granted, bytes outside the grant, or another connection's grant)"
    )]
    RefusedByDevice(u32),
}

/// What a peer may do with a taken buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteAccess {
    /// One-sided reads of what it holds.
    Read,
    /// One-sided writes into it.
    Write,
}

impl std::fmt::Display for RemoteAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RemoteAccess::Read => "read",
            RemoteAccess::Write => "write",
        })
    }
}

/// Where a peer may read: a region, its key, and a range in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteSlice {
    /// The region's id.
    pub region: u32,
    /// Its current key.
    pub key: u32,
    /// The first byte.
    pub offset: u64,
    /// How many bytes.
    pub len: u64,
}

/// A registered buffer's bytes, shared by its pool entry and the table.
type RegionData = Arc<RwLock<Vec<u8>>>;

struct Region {
    key: u32,
    /// What the peer holding `key` may do.
    access: RemoteAccess,
    /// The data the buffer holds now (its used length).
    data: RegionData,
    /// Its registration with a NIC, if the table has a registrar.
    nic: Option<NicRegion>,
}

/// Registers memory with a NIC (RDMA verbs), once per buffer.
#[allow(unsafe_code)] // a NIC reads the memory behind the compiler's back
pub trait Registrar: Send + Sync {
    /// Registers `len` bytes at `address` (for memory windows that open it
    /// to one peer at a time), for as long as the registrar lives; returns
    /// the NIC's key for the registration.
    ///
    /// # Safety
    ///
    /// The memory must stay allocated, and not move, while the registrar
    /// lives.
    unsafe fn register(&self, address: usize, len: usize) -> Result<u32, String>;
}

/// Where a region's memory is, for a NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NicRegion {
    /// Its address.
    pub address: u64,
    /// The NIC's key for it.
    pub key: u32,
    /// Its registered size.
    pub len: u64,
}

/// The regions a node has registered, by id.
#[derive(Default)]
pub struct RegionTable {
    regions: RwLock<HashMap<u32, Region>>,
    registrar: Option<Arc<dyn Registrar>>,
}

impl RegionTable {
    /// A table whose buffers are also registered with `registrar`.
    pub fn with_registrar(registrar: Arc<dyn Registrar>) -> Self {
        RegionTable {
            regions: RwLock::default(),
            registrar: Some(registrar),
        }
    }

    /// Where region `id`'s memory is for a NIC, if it is registered with one.
    pub fn describe(&self, id: u32) -> Option<NicRegion> {
        self.regions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .and_then(|region| region.nic)
    }

    /// Copies `slice` into `into` (which must be `slice.len` long) if the
    /// rules of the module docs allow it.
    pub fn read(&self, slice: RemoteSlice, into: &mut [u8]) -> Result<(), RegionError> {
        self.access(slice, RemoteAccess::Read, into.len(), |held, range| {
            into.copy_from_slice(&held[range]);
        })
    }

    /// Copies `from` (which must be `slice.len` long) into `slice` of a
    /// buffer open for writes, if the rules of the module docs allow it.
    pub fn write(&self, slice: RemoteSlice, from: &[u8]) -> Result<(), RegionError> {
        self.access(slice, RemoteAccess::Write, from.len(), |held, range| {
            held[range].copy_from_slice(from);
        })
    }

    /// Checks `slice` (region, key, access, bounds within what the buffer
    /// holds, `len` bytes) and runs `copy` on the buffer and the range.
    fn access(
        &self,
        slice: RemoteSlice,
        access: RemoteAccess,
        len: usize,
        copy: impl FnOnce(&mut Vec<u8>, std::ops::Range<usize>),
    ) -> Result<(), RegionError> {
        let regions = self.regions.read().unwrap_or_else(|e| e.into_inner());
        let region = regions
            .get(&slice.region)
            .ok_or(RegionError::Unknown(slice.region))?;
        if region.key != slice.key {
            return Err(RegionError::WrongKey(slice.region));
        }
        if region.access != access {
            return Err(RegionError::NotOpen {
                region: slice.region,
                access,
            });
        }
        let mut data = region.data.write().unwrap_or_else(|e| e.into_inner());
        let end = slice.offset.saturating_add(slice.len);
        if end > data.len() as u64 || len as u64 != slice.len {
            return Err(RegionError::OutOfBounds {
                region: slice.region,
                offset: slice.offset,
                end,
                len: data.len() as u64,
            });
        }
        copy(&mut data, slice.offset as usize..end as usize);
        Ok(())
    }

    /// Adds a region (registering its memory with the NIC first, if the
    /// table has a registrar).
    fn register(&self, id: u32, key: u32, data: RegionData) -> Result<(), String> {
        let nic = match &self.registrar {
            None => None,
            Some(registrar) => {
                let buffer = data.read().unwrap_or_else(|e| e.into_inner());
                let (address, len) = (buffer.as_ptr() as usize, buffer.capacity());
                // Safety: the buffer is allocated at its full capacity and
                // never grows (`fill`/`append` stay within it), and the
                // table keeps it alive as long as the registrar it holds.
                #[allow(unsafe_code)]
                let key = unsafe { registrar.register(address, len)? };
                Some(NicRegion {
                    address: address as u64,
                    key,
                    len: len as u64,
                })
            }
        };
        self.regions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id,
                Region {
                    key,
                    access: RemoteAccess::Read,
                    data,
                    nic,
                },
            );
        Ok(())
    }

    /// Gives region `id` a new key, open for `access`.
    fn rekey(&self, id: u32, key: u32, access: RemoteAccess) {
        if let Some(region) = self
            .regions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&id)
        {
            region.key = key;
            region.access = access;
        }
    }
}

/// Counts of a pool's buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Buffers registered (made) so far.
    pub registered: usize,
    /// Of those, taken and not yet given back.
    pub in_use: usize,
}

/// Registered buffers of one size, reused across requests.
pub struct BufferPool {
    table: Arc<RegionTable>,
    buffer_bytes: usize,
    max_buffers: usize,
    free: Mutex<Vec<FreeBuffer>>,
    registered: AtomicUsize,
    in_use: AtomicUsize,
    keys: AtomicU64,
}

impl BufferPool {
    /// A pool of up to `max_buffers` buffers of `buffer_bytes`, registered
    /// in `table`.
    pub fn new(table: Arc<RegionTable>, buffer_bytes: usize, max_buffers: usize) -> Arc<Self> {
        Arc::new(BufferPool {
            table,
            buffer_bytes,
            max_buffers,
            free: Mutex::default(),
            registered: AtomicUsize::new(0),
            in_use: AtomicUsize::new(0),
            keys: AtomicU64::new(seed()),
        })
    }

    /// The size of each buffer.
    pub fn buffer_bytes(&self) -> usize {
        self.buffer_bytes
    }

    /// Its counts.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            registered: self.registered.load(Ordering::Relaxed),
            in_use: self.in_use.load(Ordering::Relaxed),
        }
    }

    fn next_key(&self) -> u32 {
        // A 64-bit LCG step; the high half is the key.
        let state = self
            .keys
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_mul(0x5851_F42D_4C95_7F2D);
        (state >> 32) as u32
    }

    /// A buffer with a fresh key, or `None` when all `max_buffers` are in
    /// use. It goes back to the pool when the [`PooledBuffer`] is dropped.
    pub fn take(self: &Arc<Self>) -> Option<PooledBuffer> {
        let key = self.next_key();
        let reused = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let FreeBuffer { id, data, dirty } = match reused {
            Some(free) => free,
            None => {
                let made = self.registered.fetch_add(1, Ordering::Relaxed);
                if made >= self.max_buffers {
                    self.registered.fetch_sub(1, Ordering::Relaxed);
                    return None;
                }
                let id = REGION_IDS.fetch_add(1, Ordering::Relaxed);
                // Zeroed memory (calloc'd), so a fresh buffer holds nothing
                // of this process's past past what it is filled with.
                let mut zeroed = vec![0u8; self.buffer_bytes];
                zeroed.clear();
                let data = Arc::new(RwLock::new(zeroed));
                if let Err(error) = self.table.register(id, key, data.clone()) {
                    tracing::warn!(error = %error, "registering a read buffer failed");
                    self.registered.fetch_sub(1, Ordering::Relaxed);
                    return None;
                }
                FreeBuffer { id, data, dirty: 0 }
            }
        };
        self.table.rekey(id, key, RemoteAccess::Read);
        data.write().unwrap_or_else(|e| e.into_inner()).clear();
        self.in_use.fetch_add(1, Ordering::Relaxed);
        Some(PooledBuffer {
            pool: self.clone(),
            id,
            key: key.into(),
            data,
            dirty: dirty.into(),
        })
    }
}

static REGION_IDS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

/// A value that differs per process and start: seeds keys (and RDMA PSNs).
pub(crate) fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// A buffer in the pool's free list.
struct FreeBuffer {
    id: u32,
    data: RegionData,
    /// How far its memory may hold bytes of an earlier take (past it:
    /// zeros, or never written).
    dirty: usize,
}

/// A registered buffer taken from a [`BufferPool`].
pub struct PooledBuffer {
    pool: Arc<BufferPool>,
    id: u32,
    key: std::sync::atomic::AtomicU32,
    data: RegionData,
    /// See [`FreeBuffer::dirty`].
    dirty: AtomicUsize,
}

impl PooledBuffer {
    /// Replaces what the buffer holds with `bytes` (at most its size) and
    /// returns the slice a peer reads it by; past them, its memory holds
    /// zeros.
    pub fn fill(&self, bytes: &[u8]) -> RemoteSlice {
        assert!(
            bytes.len() <= self.pool.buffer_bytes,
            "a pooled buffer holds {} bytes",
            self.pool.buffer_bytes
        );
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        data.clear();
        data.extend_from_slice(bytes);
        self.zero_past_the_end(&mut data);
        RemoteSlice {
            region: self.id,
            key: self.key(),
            offset: 0,
            len: bytes.len() as u64,
        }
    }

    fn key(&self) -> u32 {
        self.key.load(Ordering::Relaxed)
    }

    /// Opens the whole buffer for one-sided writes (what it held is
    /// zeroed) under a new key; returns the slice the peer writes by.
    pub fn open_for_writes(&self) -> RemoteSlice {
        let key = self.pool.next_key();
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        data.clear();
        // Within the capacity it was allocated with: the memory never moves.
        data.resize(self.pool.buffer_bytes, 0);
        self.dirty.store(data.len(), Ordering::Relaxed);
        self.key.store(key, Ordering::Relaxed);
        self.pool.table.rekey(self.id, key, RemoteAccess::Write);
        RemoteSlice {
            region: self.id,
            key,
            offset: 0,
            len: data.len() as u64,
        }
    }

    /// Closes writes (a new key: the writer's no longer works) and returns
    /// the first `len` bytes written, copied out (one copy) so the buffer
    /// can go back to the pool; `None` if `len` is more than it holds.
    pub fn seal(&self, len: u64) -> Option<Bytes> {
        let key = self.pool.next_key();
        self.key.store(key, Ordering::Relaxed);
        self.pool.table.rekey(self.id, key, RemoteAccess::Read);
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        let written = data.get(..usize::try_from(len).ok()?)?;
        crate::copy_meter::node_copied(written.len());
        Some(Bytes::copy_from_slice(written))
    }
}

impl PooledBuffer {
    /// Appends as much of `bytes` as still fits; returns how much did.
    pub fn append(&self, bytes: &[u8]) -> usize {
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        let take = bytes.len().min(self.pool.buffer_bytes - data.len());
        data.extend_from_slice(&bytes[..take]);
        self.dirty.fetch_max(data.len(), Ordering::Relaxed);
        crate::copy_meter::node_copied(take);
        take
    }

    /// How many bytes it holds.
    pub fn len(&self) -> usize {
        self.data.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether it holds all it can.
    pub fn is_full(&self) -> bool {
        self.len() == self.pool.buffer_bytes
    }

    /// Zeros the buffer's memory past what it holds, to its end, so a
    /// device that checks only the registration's bounds (soft-RoCE's, see
    /// the module docs) shows nothing of an earlier take there. Lazily:
    /// only as far as an earlier take wrote.
    fn zero_past_the_end(&self, data: &mut Vec<u8>) {
        let stale = self
            .dirty
            .load(Ordering::Relaxed)
            .saturating_sub(data.len());
        if stale > 0 {
            data.spare_capacity_mut()[..stale].fill(std::mem::MaybeUninit::new(0));
        }
        self.dirty.store(data.len(), Ordering::Relaxed);
    }

    /// The slice a peer reads what it holds by, and the CRC-32C of that;
    /// past what it holds, its memory holds zeros.
    pub fn advertise(&self) -> (RemoteSlice, u32) {
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        self.zero_past_the_end(&mut data);
        (
            RemoteSlice {
                region: self.id,
                key: self.key(),
                offset: 0,
                len: data.len() as u64,
            },
            crc32c::crc32c(&data),
        )
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        // A fresh key at once: whoever held this one can read no more.
        let key = self.pool.next_key();
        self.pool.table.rekey(self.id, key, RemoteAccess::Read);
        self.pool
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(FreeBuffer {
                id: self.id,
                data: self.data.clone(),
                dirty: self.dirty.load(Ordering::Relaxed),
            });
        self.pool.in_use.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_need_the_region_its_key_and_a_range_inside_it() {
        let table = Arc::new(RegionTable::default());
        let pool = BufferPool::new(table.clone(), 64, 2);
        let buffer = pool.take().unwrap();
        let slice = buffer.fill(b"hello, regions");
        let mut into = vec![0u8; 5];
        table
            .read(
                RemoteSlice {
                    offset: 7,
                    len: 5,
                    ..slice
                },
                &mut into,
            )
            .unwrap();
        assert_eq!(&into, b"regio");
        let refused = [
            (
                RemoteSlice {
                    region: 9999,
                    ..slice
                },
                "is not registered",
            ),
            (
                RemoteSlice {
                    key: slice.key ^ 1,
                    ..slice
                },
                "wrong key",
            ),
            (
                RemoteSlice {
                    offset: 10,
                    len: 5,
                    ..slice
                },
                "outside region",
            ),
            (
                RemoteSlice {
                    offset: u64::MAX,
                    len: 5,
                    ..slice
                },
                "outside region",
            ),
        ];
        for (bad, why) in refused {
            let mut into = vec![0u8; bad.len.min(64) as usize];
            let error = table.read(bad, &mut into).unwrap_err();
            assert!(error.to_string().contains(why), "{bad:?}: {error}");
        }
    }

    #[test]
    fn buffers_are_registered_once_reused_rekeyed_and_never_leaked() {
        let table = Arc::new(RegionTable::default());
        let pool = BufferPool::new(table.clone(), 16, 2);
        let first = pool.take().unwrap();
        let old = first.fill(b"secret");
        let second = pool.take().unwrap();
        assert!(pool.take().is_none(), "no more than max_buffers");
        assert_eq!(
            pool.stats(),
            PoolStats {
                registered: 2,
                in_use: 2
            }
        );
        drop(first);
        // The old key no longer reads the region, even before it is reused.
        let mut into = vec![0u8; 6];
        assert_eq!(
            table.read(old, &mut into),
            Err(RegionError::WrongKey(old.region))
        );
        let again = pool.take().unwrap();
        let new = again.fill(b"next");
        assert_eq!(
            new.region, old.region,
            "the buffer was reused, not registered anew"
        );
        assert_ne!(new.key, old.key);
        drop((second, again));
        assert_eq!(
            pool.stats(),
            PoolStats {
                registered: 2,
                in_use: 0
            }
        );
    }

    #[test]
    fn writes_need_a_buffer_open_for_them_and_stop_when_sealed() {
        let table = Arc::new(RegionTable::default());
        let pool = BufferPool::new(table.clone(), 16, 1);
        let buffer = pool.take().unwrap();
        let read_only = buffer.fill(b"data");
        assert_eq!(
            table.write(read_only, b"evil"),
            Err(RegionError::NotOpen {
                region: read_only.region,
                access: RemoteAccess::Write
            })
        );
        let open = buffer.open_for_writes();
        assert_eq!(open.len, 16, "the whole buffer");
        assert_ne!(open.key, read_only.key);
        table
            .write(RemoteSlice { len: 5, ..open }, b"hello")
            .unwrap();
        table
            .write(
                RemoteSlice {
                    offset: 5,
                    len: 6,
                    ..open
                },
                b", pool",
            )
            .unwrap();
        assert!(matches!(
            table.write(
                RemoteSlice {
                    offset: 12,
                    len: 5,
                    ..open
                },
                b"12345"
            ),
            Err(RegionError::OutOfBounds { .. })
        ));
        let mut peek = [0u8; 2];
        assert!(
            matches!(
                table.read(RemoteSlice { len: 2, ..open }, &mut peek),
                Err(RegionError::NotOpen { .. })
            ),
            "a buffer open for writes is not read by its key"
        );
        assert_eq!(&buffer.seal(11).unwrap()[..], b"hello, pool");
        assert_eq!(
            table.write(RemoteSlice { len: 1, ..open }, b"x"),
            Err(RegionError::WrongKey(open.region)),
            "sealed: the writer's key no longer works"
        );
        assert!(buffer.seal(17).is_none(), "more than the buffer holds");
        drop(buffer);
        assert_eq!(pool.stats().in_use, 0);
    }

    /// Records what it is asked to register, as a NIC driver would see it.
    #[derive(Default)]
    struct RecordingRegistrar {
        registered: Mutex<Vec<(usize, usize)>>,
    }

    #[allow(unsafe_code)]
    impl Registrar for RecordingRegistrar {
        unsafe fn register(&self, address: usize, len: usize) -> Result<u32, String> {
            let mut registered = self.registered.lock().unwrap();
            registered.push((address, len));
            Ok(1000 + registered.len() as u32)
        }
    }

    #[test]
    fn buffers_are_registered_with_the_nic_once_and_never_move() {
        let registrar = Arc::new(RecordingRegistrar::default());
        let table = Arc::new(RegionTable::with_registrar(registrar.clone()));
        let pool = BufferPool::new(table.clone(), 4096, 2);
        let mut seen = Vec::new();
        for round in 0..5u8 {
            let first = pool.take().unwrap();
            let second = pool.take().unwrap();
            first.append(&[round; 4096]);
            second.fill(&[round; 100]);
            for buffer in [&first, &second] {
                let nic = table.describe(buffer.id).unwrap();
                assert!(nic.len >= 4096);
                let data = buffer.data.read().unwrap();
                assert_eq!(data.as_ptr() as u64, nic.address, "the memory did not move");
                seen.push((buffer.id, nic));
            }
        }
        assert_eq!(
            registrar.registered.lock().unwrap().len(),
            2,
            "two buffers, registered once each over five rounds"
        );
        seen.sort_by_key(|(id, _)| *id);
        seen.dedup();
        assert_eq!(seen.len(), 2, "each region keeps its one registration");
        assert!(RegionTable::default().describe(seen[0].0).is_none());
    }
}
