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
}

/// The regions a node has registered, by id.
#[derive(Default)]
pub struct RegionTable {
    regions: RwLock<HashMap<u32, Region>>,
}

impl RegionTable {
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

    fn register(&self, id: u32, key: u32, data: RegionData) {
        self.regions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Region { key, data });
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
                self.table.register(id, key, data.clone());
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

fn seed() -> u64 {
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
}
