//! A hot in-memory tier in front of a cold backend: what `hearth-store`
//! serves, so repeated reads of the same objects come from memory instead
//! of the disk or the object store behind it.
//!
//! # Contract
//!
//! * Everything but reads goes to the cold backend, which stays the only
//!   copy of record (writes are acknowledged only once it has them); the
//!   tier is a cache, lost at restart without loss of data.
//! * A whole-object read of an object up to `max_object_bytes` that misses
//!   is teed into the tier as it streams (the copy it keeps is of the bytes
//!   the cold backend already checked); later reads of any range of it are
//!   served from memory, sliced without a copy. Ranged reads that miss go
//!   to the cold backend and are not cached.
//! * Any change through the tier (put, delete, copy or rename onto a name,
//!   deleting a container) drops what the tier holds of it before and
//!   after the change, and a read that started before a change ended does
//!   not put its (possibly older) bytes in the tier: one generation
//!   counter, bumped on both sides of every change, guards each insert.
//!   The tier must be the only writer of its cold backend.
//! * The tier holds at most `capacity_bytes`; the least recently read
//!   objects are evicted first.

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use hearth_blob::{
    BlobBackend, BlobError, ByteRange, ByteStream, ContainerInfo, ListPage, ObjectInfo,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Counts of the tier, for tests and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TierStats {
    /// Reads served from memory.
    pub hits: u64,
    /// Reads that went to the cold backend.
    pub misses: u64,
    /// Objects held.
    pub objects: usize,
    /// Bytes held.
    pub bytes: u64,
}

struct Cached {
    info: ObjectInfo,
    data: Bytes,
    last_read: u64,
}

#[derive(Default)]
struct Hot {
    objects: HashMap<(String, String), Cached>,
    bytes: u64,
    clock: u64,
}

/// A cold backend with a hot memory tier; see the module docs.
pub struct TieredBackend {
    cold: Arc<dyn BlobBackend>,
    hot: Arc<Mutex<Hot>>,
    generation: Arc<AtomicU64>,
    capacity_bytes: u64,
    max_object_bytes: u64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl TieredBackend {
    /// `cold` behind a tier of `capacity_bytes`, caching objects of up to
    /// `max_object_bytes`.
    pub fn new(cold: Arc<dyn BlobBackend>, capacity_bytes: u64, max_object_bytes: u64) -> Self {
        TieredBackend {
            cold,
            hot: Arc::default(),
            generation: Arc::default(),
            capacity_bytes,
            max_object_bytes: max_object_bytes.min(capacity_bytes),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The tier's counts now.
    pub fn stats(&self) -> TierStats {
        let hot = self.hot.lock().unwrap_or_else(|e| e.into_inner());
        TierStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            objects: hot.objects.len(),
            bytes: hot.bytes,
        }
    }

    /// Runs `change` to the cold backend with what the tier holds of
    /// `targets` (`(container, Some(name))` for one object, `None` for the
    /// whole container) dropped before it, and again after it: a read that
    /// started while the change ran may have seen the old data and must
    /// not cache it (the second generation bump makes its insert a no-op).
    async fn changing<T>(
        &self,
        targets: &[(&str, Option<&str>)],
        change: impl std::future::Future<Output = T>,
    ) -> T {
        for (container, name) in targets {
            self.invalidate(container, *name);
        }
        let changed = change.await;
        for (container, name) in targets {
            self.invalidate(container, *name);
        }
        changed
    }

    /// Drops what the tier holds of `container` (one object, or all).
    fn invalidate(&self, container: &str, name: Option<&str>) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let mut hot = self.hot.lock().unwrap_or_else(|e| e.into_inner());
        let hot = &mut *hot;
        let objects = &mut hot.objects;
        let bytes = &mut hot.bytes;
        objects.retain(|(c, n), cached| {
            let hit = c == container && name.is_none_or(|name| name == n);
            if hit {
                *bytes -= cached.data.len() as u64;
            }
            !hit
        });
    }
}

fn insert(
    hot: &Mutex<Hot>,
    generation: &AtomicU64,
    seen_generation: u64,
    capacity: u64,
    key: (String, String),
    info: ObjectInfo,
    data: Bytes,
) {
    let mut hot = hot.lock().unwrap_or_else(|e| e.into_inner());
    // Checked under the lock that `invalidate` takes after bumping it.
    if generation.load(Ordering::SeqCst) != seen_generation {
        return;
    }
    let size = data.len() as u64;
    while hot.bytes + size > capacity {
        let Some(oldest) = hot
            .objects
            .iter()
            .min_by_key(|(_, cached)| cached.last_read)
            .map(|(key, _)| key.clone())
        else {
            break;
        };
        if let Some(evicted) = hot.objects.remove(&oldest) {
            hot.bytes -= evicted.data.len() as u64;
        }
    }
    hot.clock += 1;
    let last_read = hot.clock;
    hot.bytes += size;
    if let Some(old) = hot.objects.insert(
        key,
        Cached {
            info,
            data,
            last_read,
        },
    ) {
        hot.bytes -= old.data.len() as u64;
    }
}

#[async_trait]
impl BlobBackend for TieredBackend {
    fn kind(&self) -> &'static str {
        self.cold.kind()
    }

    async fn create_container(&self, container: &str) -> Result<ContainerInfo, BlobError> {
        self.cold.create_container(container).await
    }

    async fn container_info(&self, container: &str) -> Result<ContainerInfo, BlobError> {
        self.cold.container_info(container).await
    }

    async fn delete_container(&self, container: &str) -> Result<(), BlobError> {
        self.changing(&[(container, None)], self.cold.delete_container(container))
            .await
    }

    async fn put(
        &self,
        container: &str,
        name: &str,
        body: ByteStream,
        limit: u64,
    ) -> Result<ObjectInfo, BlobError> {
        self.changing(
            &[(container, Some(name))],
            self.cold.put(container, name, body, limit),
        )
        .await
    }

    async fn get(
        &self,
        container: &str,
        name: &str,
        range: ByteRange,
    ) -> Result<(ObjectInfo, ByteStream), BlobError> {
        let key = (container.to_string(), name.to_string());
        let cached = {
            let mut hot = self.hot.lock().unwrap_or_else(|e| e.into_inner());
            hot.clock += 1;
            let now = hot.clock;
            hot.objects.get_mut(&key).map(|cached| {
                cached.last_read = now;
                (cached.info.clone(), cached.data.clone())
            })
        };
        if let Some((info, data)) = cached {
            self.hits.fetch_add(1, Ordering::Relaxed);
            let (start, end) = range.clamp(info.size);
            let part = data.slice(start as usize..end as usize);
            let body = futures_util::stream::once(async move { Ok(part) }).boxed();
            return Ok((info, body));
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let seen_generation = self.generation.load(Ordering::SeqCst);
        let (info, body) = self.cold.get(container, name, range).await?;
        if range != ByteRange::ALL || info.size > self.max_object_bytes {
            return Ok((info, body));
        }
        // Tee the stream: the chunks go on as they are, and a copy is kept
        // and cached when the read ends whole.
        let (hot, generation, capacity) = (
            self.hot.clone(),
            self.generation.clone(),
            self.capacity_bytes,
        );
        let mut kept = Vec::with_capacity(info.size as usize);
        let mut key = Some(key);
        let cache_info = info.clone();
        let body = body
            .map(move |chunk| {
                if let Ok(chunk) = &chunk {
                    kept.extend_from_slice(chunk);
                    hearth_blob::copy_meter::node_copied(chunk.len());
                    if kept.len() as u64 == cache_info.size
                        && let Some(key) = key.take()
                    {
                        insert(
                            &hot,
                            &generation,
                            seen_generation,
                            capacity,
                            key,
                            cache_info.clone(),
                            Bytes::from(std::mem::take(&mut kept)),
                        );
                    }
                } else {
                    key = None;
                }
                chunk
            })
            .boxed();
        Ok((info, body))
    }

    async fn info(&self, container: &str, name: &str) -> Result<ObjectInfo, BlobError> {
        let key = (container.to_string(), name.to_string());
        if let Some(cached) = self
            .hot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .objects
            .get(&key)
        {
            return Ok(cached.info.clone());
        }
        self.cold.info(container, name).await
    }

    async fn delete(&self, container: &str, name: &str) -> Result<(), BlobError> {
        self.changing(
            &[(container, Some(name))],
            self.cold.delete(container, name),
        )
        .await
    }

    async fn list(
        &self,
        container: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, BlobError> {
        self.cold.list(container, after, limit).await
    }

    async fn copy(
        &self,
        from: (&str, &str),
        to: (&str, &str),
        limit: u64,
    ) -> Result<ObjectInfo, BlobError> {
        self.changing(&[(to.0, Some(to.1))], self.cold.copy(from, to, limit))
            .await
    }

    async fn rename(
        &self,
        from: (&str, &str),
        to: (&str, &str),
        limit: u64,
    ) -> Result<ObjectInfo, BlobError> {
        self.changing(
            &[(to.0, Some(to.1)), (from.0, Some(from.1))],
            self.cold.rename(from, to, limit),
        )
        .await
    }

    async fn ping(&self) -> Result<(), BlobError> {
        self.cold.ping().await
    }
}
