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
//! * A region's key changes every time its buffer is taken from the pool,
//!   so a peer holding an old `(region, key)` cannot read the next request's
//!   data.
//! * A table made [`RegionTable::with_registrar`] also registers each
//!   buffer's memory with a NIC, once, when the pool makes it (a buffer's
//!   memory never moves: it is allocated at its full size and never grows);
//!   [`RegionTable::describe`] gives a transport the address and the NIC's
//!   key. A NIC checks its own key and the registered bounds, not the
//!   rotating key or what the buffer holds now: over RDMA verbs those two
//!   checks rest on the protocol (a buffer is refilled only after the
//!   client said `next`).

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
    /// The data the buffer holds now (its used length).
    data: RegionData,
    /// Its registration with a NIC, if the table has a registrar.
    nic: Option<NicRegion>,
}

/// Registers memory with a NIC (RDMA verbs), once per buffer.
#[allow(unsafe_code)] // a NIC reads the memory behind the compiler's back
pub trait Registrar: Send + Sync {
    /// Registers `len` bytes at `address` for one-sided remote reads, for
    /// as long as the registrar lives; returns the key the NIC checks.
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
        let regions = self.regions.read().unwrap_or_else(|e| e.into_inner());
        let region = regions
            .get(&slice.region)
            .ok_or(RegionError::Unknown(slice.region))?;
        if region.key != slice.key {
            return Err(RegionError::WrongKey(slice.region));
        }
        let data = region.data.read().unwrap_or_else(|e| e.into_inner());
        let end = slice.offset.saturating_add(slice.len);
        if end > data.len() as u64 || into.len() as u64 != slice.len {
            return Err(RegionError::OutOfBounds {
                region: slice.region,
                offset: slice.offset,
                end,
                len: data.len() as u64,
            });
        }
        into.copy_from_slice(&data[slice.offset as usize..end as usize]);
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
            .insert(id, Region { key, data, nic });
        Ok(())
    }

    fn rekey(&self, id: u32, key: u32) {
        if let Some(region) = self
            .regions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&id)
        {
            region.key = key;
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
    free: Mutex<Vec<(u32, RegionData)>>,
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
        let (id, data) = match reused {
            Some(free) => free,
            None => {
                let made = self.registered.fetch_add(1, Ordering::Relaxed);
                if made >= self.max_buffers {
                    self.registered.fetch_sub(1, Ordering::Relaxed);
                    return None;
                }
                let id = REGION_IDS.fetch_add(1, Ordering::Relaxed);
                let data = Arc::new(RwLock::new(Vec::with_capacity(self.buffer_bytes)));
                if let Err(error) = self.table.register(id, key, data.clone()) {
                    tracing::warn!(error = %error, "registering a read buffer failed");
                    self.registered.fetch_sub(1, Ordering::Relaxed);
                    return None;
                }
                (id, data)
            }
        };
        self.table.rekey(id, key);
        data.write().unwrap_or_else(|e| e.into_inner()).clear();
        self.in_use.fetch_add(1, Ordering::Relaxed);
        Some(PooledBuffer {
            pool: self.clone(),
            id,
            key,
            data,
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

/// A registered buffer taken from a [`BufferPool`].
pub struct PooledBuffer {
    pool: Arc<BufferPool>,
    id: u32,
    key: u32,
    data: RegionData,
}

impl PooledBuffer {
    /// Replaces what the buffer holds with `bytes` (at most its size) and
    /// returns the slice a peer reads it by.
    pub fn fill(&self, bytes: &[u8]) -> RemoteSlice {
        assert!(
            bytes.len() <= self.pool.buffer_bytes,
            "a pooled buffer holds {} bytes",
            self.pool.buffer_bytes
        );
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        data.clear();
        data.extend_from_slice(bytes);
        RemoteSlice {
            region: self.id,
            key: self.key,
            offset: 0,
            len: bytes.len() as u64,
        }
    }
}

impl PooledBuffer {
    /// Appends as much of `bytes` as still fits; returns how much did.
    pub fn append(&self, bytes: &[u8]) -> usize {
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        let take = bytes.len().min(self.pool.buffer_bytes - data.len());
        data.extend_from_slice(&bytes[..take]);
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

    /// The slice a peer reads what it holds by, and the CRC-32C of that.
    pub fn advertise(&self) -> (RemoteSlice, u32) {
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        (
            RemoteSlice {
                region: self.id,
                key: self.key,
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
        self.pool.table.rekey(self.id, key);
        self.pool
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((self.id, self.data.clone()));
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
