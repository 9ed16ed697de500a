//! The supply side of Hearth's prewarm pool.
//!
//! This crate turns WebAssembly bytes into something ready to instantiate, and
//! remembers the result so that the same function is compiled once per
//! process, however many times it is started.
//!
//! # Contract
//!
//! * [`CompiledCache`] is keyed by the SHA-256 [`Digest`] of the component
//!   bytes. Two loads of identical bytes share one [`CompiledFunction`]; any
//!   change to the bytes is a different entry.
//! * A [`CompiledFunction`] holds the compiled [`Component`] and an
//!   [`InstancePre`] linked against the [`Linker`] the cache was built with, so
//!   every import has already been resolved: instantiating it cannot fail for
//!   a missing import.
//! * Bad input never panics and never enters the cache. It is classified as a
//!   [`LoadError`]: not wasm at all, a core module instead of a component, a
//!   component that fails validation or compilation, or a component that
//!   imports something the linker does not provide (the error names it).
//! * The crate is generic over the store data type `T` and does not know
//!   which host functions exist: the caller supplies the engine and linker.
//! * Concurrent loads of the same digest may both compile; the first to
//!   finish is kept and the other result is dropped. Entries live until
//!   [`CompiledCache::remove`], eviction, or the cache is dropped.
//! * With a memory budget ([`CompiledCache::with_memory_budget`]), the
//!   entries' compiled code (its image size) is kept under the budget by
//!   evicting the least recently used entries that nothing else holds. An
//!   entry a live function still holds is never evicted, so the cache may sit
//!   over budget while those functions run; the next insert trims it again.
//!   Evicted entries are counted in [`CacheStats::evictions`] and, with a
//!   store attached, are loaded back from disk rather than recompiled.
//! * With a [`CompiledStore`] attached ([`CompiledCache::with_store`]), a
//!   memory miss is looked up on disk before compiling, and every compile is
//!   written back, so a restarted process does not compile again. A corrupt or
//!   stale disk entry is recompiled and replaced (see [`compiled_store`]).
//!
//! The supply side also covers distribution: [`registry`] (pulling from and
//! pushing to OCI registries), [`image`] (the two OCI forms of a function)
//! and [`artifact_cache`] (verified blobs on disk).
//!
//! ```
//! use hearth_prewarm::CompiledCache;
//! use wasmtime::{Config, Engine, component::Linker};
//!
//! let engine = Engine::new(&Config::new()).unwrap();
//! let linker: Linker<()> = Linker::new(&engine);
//! let cache = CompiledCache::new(engine, linker);
//! let bytes = wat::parse_str("(component)").unwrap();
//! let first = cache.get_or_compile(&bytes).unwrap();
//! let second = cache.get_or_compile(&bytes).unwrap();
//! assert!(std::sync::Arc::ptr_eq(&first, &second));
//! assert_eq!(cache.stats().compiles, 1);
//! ```

pub mod artifact_cache;
mod atomic_file;
pub mod compiled_store;
pub mod image;
pub mod pool;
pub mod registry;

pub use artifact_cache::ArtifactCache;
pub use compiled_store::{CompiledLookup, CompiledStore, engine_fingerprint};

use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::Engine;
use wasmtime::component::{Component, InstancePre, Linker};

/// The SHA-256 digest of a component's bytes: the identity of a function.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// Hashes `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(Sha256::digest(bytes).into())
    }

    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses `sha256:HEX` (an OCI digest); `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let hex = text.strip_prefix("sha256:")?;
        let mut raw = [0u8; 32];
        hex::decode_to_slice(hex, &mut raw).ok()?;
        Some(Digest(raw))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why bytes could not become a [`CompiledFunction`].
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes do not start with the WebAssembly magic number.
    #[error(
        "not a WebAssembly binary: expected the magic bytes \\0asm, found {found:02x?} ({len} bytes in all)"
    )]
    NotWasm {
        /// The first (up to four) bytes that were found instead.
        found: Vec<u8>,
        /// How long the input was.
        len: usize,
    },
    /// A core module where a component was expected.
    #[error(
        "this is a core WebAssembly module, not a component. Hearth runs components: \
         build Rust with `cargo build --target wasm32-wasip2`, or wrap a WASI preview 1 module with \
         `wasm-tools component new module.wasm --adapt wasi_snapshot_preview1.reactor.wasm -o component.wasm`"
    )]
    CoreModule,
    /// The component failed validation or compilation.
    #[error("invalid component: {0:#}")]
    Invalid(wasmtime::Error),
    /// The component imports something the linker does not provide.
    #[error(
        "the component imports `{import}`, which this host does not provide ({detail}). \
         Build the function against the worlds in Hearth's wit/ directory"
    )]
    MissingImport {
        /// The import's name, e.g. `wasi:keyvalue/store@0.2.0-draft`.
        import: String,
        /// wasmtime's own description of the mismatch.
        detail: String,
    },
}

/// A compiled component, linked and ready to instantiate.
pub struct CompiledFunction<T: 'static> {
    /// Digest of the bytes it was compiled from.
    pub digest: Digest,
    /// The compiled component.
    pub component: Component,
    /// The component pre-linked against the cache's linker.
    pub instance_pre: InstancePre<T>,
    /// How long compilation and linking took.
    pub compile_time: Duration,
}

/// A function's compiled code and where the cache found it.
pub type Found<T> = (Arc<CompiledFunction<T>>, CompiledFrom);

/// Where a [`CompiledCache`] found a function's compiled code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompiledFrom {
    /// Already in memory: a pool hit.
    Memory,
    /// Loaded from the on-disk compiled store.
    Disk,
    /// Compiled now.
    Compiled,
}

impl CompiledFrom {
    /// `memory`, `disk` or `compiled`.
    pub fn as_str(self) -> &'static str {
        match self {
            CompiledFrom::Memory => "memory",
            CompiledFrom::Disk => "disk",
            CompiledFrom::Compiled => "compiled",
        }
    }
}

/// Counters describing what a [`CompiledCache`] has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Loads answered from the cache.
    pub hits: u64,
    /// Loads that had to compile.
    pub compiles: u64,
    /// Memory misses answered from the on-disk compiled store.
    pub disk_hits: u64,
    /// On-disk entries found corrupt or stale, and replaced.
    pub disk_rejected: u64,
    /// Entries currently held.
    pub entries: usize,
    /// Entries evicted to stay under the memory budget.
    pub evictions: u64,
    /// On-disk entries evicted to stay under the store's size bound.
    pub disk_evictions: u64,
    /// Bytes of compiled code held now.
    pub resident_bytes: u64,
    /// Time spent compiling (and loading from disk), in all.
    pub compile_time: Duration,
}

/// One cached function and when it was last used.
struct CacheEntry<T: 'static> {
    compiled: Arc<CompiledFunction<T>>,
    last_used: u64,
    bytes: u64,
}

/// The entries and the use clock, under one lock.
struct Entries<T: 'static> {
    map: HashMap<Digest, CacheEntry<T>>,
    clock: u64,
    resident_bytes: u64,
}

impl<T: 'static> Entries<T> {
    fn touch(&mut self, digest: &Digest) -> Option<Arc<CompiledFunction<T>>> {
        self.clock += 1;
        let clock = self.clock;
        let entry = self.map.get_mut(digest)?;
        entry.last_used = clock;
        Some(entry.compiled.clone())
    }

    fn remove(&mut self, digest: &Digest) -> bool {
        match self.map.remove(digest) {
            Some(entry) => {
                self.resident_bytes -= entry.bytes;
                true
            }
            None => false,
        }
    }

    /// Evicts least recently used, unheld entries until under `budget`.
    fn trim(&mut self, budget: u64) -> u64 {
        let mut evicted = 0;
        while self.resident_bytes > budget {
            let victim = self
                .map
                .iter()
                .filter(|(_, entry)| Arc::strong_count(&entry.compiled) == 1)
                .min_by_key(|(_, entry)| entry.last_used)
                .map(|(digest, _)| *digest);
            let Some(victim) = victim else { break };
            self.remove(&victim);
            tracing::info!(digest = %victim, "evicted compiled component (memory budget)");
            evicted += 1;
        }
        evicted
    }
}

/// The size of a component's compiled code in memory.
fn image_bytes(component: &Component) -> u64 {
    let range = component.image_range();
    (range.end.addr() - range.start.addr()) as u64
}

/// Compiled components in memory, keyed by [`Digest`]. See the crate docs for
/// the contract.
pub struct CompiledCache<T: 'static> {
    engine: Engine,
    linker: Linker<T>,
    entries: Mutex<Entries<T>>,
    store: Option<CompiledStore>,
    memory_budget: Option<u64>,
    evictions: AtomicU64,
    disk_evictions: AtomicU64,
    compile_nanos: AtomicU64,
    hits: AtomicU64,
    compiles: AtomicU64,
    disk_hits: AtomicU64,
    disk_rejected: AtomicU64,
}

impl<T: 'static> CompiledCache<T> {
    /// A cache that compiles with `engine` and links against `linker`.
    pub fn new(engine: Engine, linker: Linker<T>) -> Self {
        CompiledCache {
            engine,
            linker,
            entries: Mutex::new(Entries {
                map: HashMap::new(),
                clock: 0,
                resident_bytes: 0,
            }),
            store: None,
            memory_budget: None,
            evictions: AtomicU64::new(0),
            disk_evictions: AtomicU64::new(0),
            compile_nanos: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            compiles: AtomicU64::new(0),
            disk_hits: AtomicU64::new(0),
            disk_rejected: AtomicU64::new(0),
        }
    }

    /// Backs the cache with an on-disk [`CompiledStore`].
    pub fn with_store(mut self, store: CompiledStore) -> Self {
        self.store = Some(store);
        self
    }

    /// Keeps compiled code in memory under `max_bytes` (see the contract).
    pub fn with_memory_budget(mut self, max_bytes: u64) -> Self {
        self.memory_budget = Some(max_bytes);
        self
    }

    /// The on-disk store, if one is attached.
    pub fn store(&self) -> Option<&CompiledStore> {
        self.store.as_ref()
    }

    /// The engine everything in this cache was compiled with.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The linker every [`InstancePre`] in this cache was made from.
    pub fn linker(&self) -> &Linker<T> {
        &self.linker
    }

    /// Returns the compiled form of `bytes`, compiling on a miss. This is CPU
    /// heavy on a miss: async callers should run it on a blocking thread.
    pub fn get_or_compile(&self, bytes: &[u8]) -> Result<Arc<CompiledFunction<T>>, LoadError> {
        self.get_or_compile_traced(bytes)
            .map(|(compiled, _)| compiled)
    }

    /// [`CompiledCache::get_or_compile`], also saying where the compiled code
    /// came from.
    pub fn get_or_compile_traced(&self, bytes: &[u8]) -> Result<Found<T>, LoadError> {
        self.get_or_compile_as(Digest::of(bytes), bytes)
    }

    /// The compiled form of the component whose digest is `digest`, from
    /// memory or the on-disk store, without its bytes: `None` if neither
    /// has it. For a caller that knows the digest already (an image's,
    /// verified when it was pulled) and would otherwise read and hash a
    /// large component only to find it compiled.
    pub fn lookup(&self, digest: Digest) -> Result<Option<Found<T>>, LoadError> {
        if let Some(hit) = self.get(&digest) {
            return Ok(Some((hit, CompiledFrom::Memory)));
        }
        match self.load_from_store(digest)? {
            Some(loaded) => Ok(Some(self.remember(digest, loaded, CompiledFrom::Disk))),
            None => Ok(None),
        }
    }

    /// [`CompiledCache::get_or_compile_traced`] for `bytes` whose digest
    /// the caller has already checked is `digest`.
    pub fn get_or_compile_as(&self, digest: Digest, bytes: &[u8]) -> Result<Found<T>, LoadError> {
        if let Some(found) = self.lookup(digest)? {
            return Ok(found);
        }
        let compiled = self.compile(digest, bytes)?;
        self.compiles.fetch_add(1, Ordering::Relaxed);
        if let Some(store) = &self.store {
            match store
                .store(&digest, &compiled.component)
                .and_then(|()| store.trim(&digest))
            {
                Ok(evicted) => {
                    self.disk_evictions.fetch_add(evicted, Ordering::Relaxed);
                }
                // The function still runs; the next process compiles again.
                Err(error) => {
                    tracing::warn!(%digest, dir = %store.dir().display(), "cannot write the compiled cache: {error}")
                }
            }
        }
        Ok(self.remember(digest, compiled, CompiledFrom::Compiled))
    }

    /// Puts `compiled` (just loaded or compiled) into memory, unless
    /// another thread got there first (then theirs is returned).
    fn remember(
        &self,
        digest: Digest,
        compiled: CompiledFunction<T>,
        from: CompiledFrom,
    ) -> Found<T> {
        let compiled = Arc::new(compiled);
        self.compile_nanos
            .fetch_add(compiled.compile_time.as_nanos() as u64, Ordering::Relaxed);
        let mut entries = self.lock();
        if let Some(existing) = entries.touch(&digest) {
            return (existing, from);
        }
        let bytes = image_bytes(&compiled.component);
        let clock = entries.clock;
        entries.map.insert(
            digest,
            CacheEntry {
                compiled: compiled.clone(),
                last_used: clock,
                bytes,
            },
        );
        entries.resident_bytes += bytes;
        if let Some(budget) = self.memory_budget {
            let evicted = entries.trim(budget);
            self.evictions.fetch_add(evicted, Ordering::Relaxed);
        }
        (compiled, from)
    }

    /// Returns the entry for `digest` if it is cached, counting a hit.
    pub fn get(&self, digest: &Digest) -> Option<Arc<CompiledFunction<T>>> {
        let hit = self.lock().touch(digest);
        if hit.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    /// Drops the entry for `digest`; returns whether there was one.
    pub fn remove(&self, digest: &Digest) -> bool {
        self.lock().remove(digest)
    }

    /// What the cache has done so far.
    pub fn stats(&self) -> CacheStats {
        let (entries, resident_bytes) = {
            let held = self.lock();
            (held.map.len(), held.resident_bytes)
        };
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            compiles: self.compiles.load(Ordering::Relaxed),
            disk_hits: self.disk_hits.load(Ordering::Relaxed),
            disk_rejected: self.disk_rejected.load(Ordering::Relaxed),
            entries,
            evictions: self.evictions.load(Ordering::Relaxed),
            disk_evictions: self.disk_evictions.load(Ordering::Relaxed),
            resident_bytes,
            compile_time: Duration::from_nanos(self.compile_nanos.load(Ordering::Relaxed)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries<T>> {
        // A panic while holding this lock cannot leave the map half-updated
        // (every mutation is a single insert or remove), so poisoning is safe
        // to ignore.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Looks `digest` up in the on-disk store (whose entries are named by
    /// the digest of the bytes they were compiled from); the entry is
    /// linked against this cache's linker exactly as a fresh compile would
    /// be.
    fn load_from_store(&self, digest: Digest) -> Result<Option<CompiledFunction<T>>, LoadError> {
        let Some(store) = &self.store else {
            return Ok(None);
        };
        let started = Instant::now();
        match store.load(&self.engine, &digest) {
            CompiledLookup::Hit(component) => {
                let instance_pre = self
                    .linker
                    .instantiate_pre(&component)
                    .map_err(classify_link_error)?;
                self.disk_hits.fetch_add(1, Ordering::Relaxed);
                let compile_time = started.elapsed();
                tracing::info!(%digest, ?compile_time, "loaded precompiled component from disk");
                Ok(Some(CompiledFunction {
                    digest,
                    component,
                    instance_pre,
                    compile_time,
                }))
            }
            CompiledLookup::Miss => Ok(None),
            CompiledLookup::Rejected { .. } => {
                self.disk_rejected.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
        }
    }

    fn compile(&self, digest: Digest, bytes: &[u8]) -> Result<CompiledFunction<T>, LoadError> {
        check_is_component(bytes)?;
        let started = Instant::now();
        let component = Component::new(&self.engine, bytes).map_err(LoadError::Invalid)?;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(classify_link_error)?;
        let compile_time = started.elapsed();
        tracing::info!(%digest, ?compile_time, "compiled component");
        Ok(CompiledFunction {
            digest,
            component,
            instance_pre,
            compile_time,
        })
    }
}

const WASM_MAGIC: &[u8; 4] = b"\0asm";
/// Bytes 4..8 of a core module: version 1, layer 0.
const CORE_MODULE_VERSION: [u8; 4] = [0x01, 0x00, 0x00, 0x00];

/// Rejects bytes that are not a component, saying what they are instead.
pub fn check_is_component(bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[..4] != WASM_MAGIC {
        return Err(LoadError::NotWasm {
            found: bytes.iter().take(4).copied().collect(),
            len: bytes.len(),
        });
    }
    if bytes[4..8] == CORE_MODULE_VERSION {
        return Err(LoadError::CoreModule);
    }
    Ok(())
}

/// wasmtime reports an unresolved import as
/// "component imports instance `NAME`, but a matching implementation was not
/// found in the linker"; lift NAME out so the error can name it.
fn classify_link_error(error: wasmtime::Error) -> LoadError {
    let detail = format!("{error:#}");
    let import = error
        .chain()
        .find_map(|cause| {
            let message = cause.to_string();
            let rest = message.strip_prefix("component imports ")?;
            let start = rest.find('`')? + 1;
            let len = rest[start..].find('`')?;
            Some(rest[start..start + len].to_string())
        })
        .unwrap_or_else(|| "(unknown import)".to_string());
    LoadError::MissingImport { import, detail }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::Config;

    fn cache() -> CompiledCache<()> {
        let engine = Engine::new(&Config::new()).unwrap();
        let linker = Linker::new(&engine);
        CompiledCache::new(engine, linker)
    }

    #[test]
    fn identical_bytes_compile_once() {
        let cache = cache();
        let bytes = wat::parse_str("(component)").unwrap();
        let a = cache.get_or_compile(&bytes).unwrap();
        let b = cache.get_or_compile(&bytes).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let stats = cache.stats();
        assert_eq!(
            (stats.hits, stats.compiles, stats.entries, stats.evictions),
            (1, 1, 1, 0)
        );
        assert!(stats.resident_bytes > 0);
        assert_eq!(a.digest, Digest::of(&bytes));
    }

    /// A component whose compiled code differs per `n`.
    fn numbered_component(n: u32) -> Vec<u8> {
        wat::parse_str(format!(
            "(component (core module (func (export \"f\") (result i32) i32.const {n})))"
        ))
        .unwrap()
    }

    #[test]
    fn the_least_recently_used_unheld_entry_is_evicted_over_budget() {
        let engine = Engine::new(&Config::new()).unwrap();
        let probe = cache();
        let one_entry = probe
            .get_or_compile(&numbered_component(0))
            .map(|c| image_bytes(&c.component))
            .unwrap();
        // Room for two entries, not three.
        let cache = CompiledCache::<()>::new(engine.clone(), Linker::new(&engine))
            .with_memory_budget(one_entry * 2 + one_entry / 2);
        let (a, b, c) = (
            numbered_component(1),
            numbered_component(2),
            numbered_component(3),
        );
        drop(cache.get_or_compile(&a).unwrap());
        drop(cache.get_or_compile(&b).unwrap());
        drop(cache.get_or_compile(&a).unwrap()); // a is now more recent than b
        drop(cache.get_or_compile(&c).unwrap());
        let stats = cache.stats();
        assert_eq!((stats.entries, stats.evictions), (2, 1));
        assert!(cache.get(&Digest::of(&a)).is_some(), "a was used recently");
        assert!(
            cache.get(&Digest::of(&b)).is_none(),
            "b was least recently used"
        );

        // An entry a live function holds is never evicted, even over budget.
        let held = cache.get_or_compile(&a).unwrap();
        drop(cache.get_or_compile(&b).unwrap());
        drop(cache.get_or_compile(&numbered_component(4)).unwrap());
        assert!(cache.get(&Digest::of(&a)).is_some());
        assert!(Arc::ptr_eq(&held, &cache.get(&Digest::of(&a)).unwrap()));
        assert!(cache.stats().evictions >= 2);
    }

    #[test]
    fn different_bytes_are_different_entries() {
        let cache = cache();
        cache
            .get_or_compile(&wat::parse_str("(component)").unwrap())
            .unwrap();
        cache
            .get_or_compile(&wat::parse_str("(component (core module))").unwrap())
            .unwrap();
        assert_eq!(cache.stats().entries, 2);
        assert_eq!(cache.stats().compiles, 2);
    }

    #[test]
    fn remove_forgets_an_entry() {
        let cache = cache();
        let compiled = cache
            .get_or_compile(&wat::parse_str("(component)").unwrap())
            .unwrap();
        assert!(cache.remove(&compiled.digest));
        assert!(!cache.remove(&compiled.digest));
        assert_eq!(cache.stats().entries, 0);
    }

    #[test]
    fn text_is_not_wasm() {
        let err = cache()
            .get_or_compile(b"#!/bin/sh\necho hi\n")
            .err()
            .unwrap();
        assert!(matches!(err, LoadError::NotWasm { .. }), "{err}");
        assert!(err.to_string().contains("not a WebAssembly binary"));
        assert_eq!(cache().stats().entries, 0);
    }

    #[test]
    fn empty_input_is_not_wasm() {
        let err = cache().get_or_compile(b"").err().unwrap();
        assert!(matches!(err, LoadError::NotWasm { len: 0, .. }), "{err}");
    }

    #[test]
    fn core_module_is_named_and_explained() {
        let bytes = wat::parse_str("(module)").unwrap();
        let err = cache().get_or_compile(&bytes).err().unwrap();
        assert!(matches!(err, LoadError::CoreModule));
        let message = err.to_string();
        assert!(message.contains("core WebAssembly module"), "{message}");
        assert!(message.contains("wasm32-wasip2"), "{message}");
    }

    #[test]
    fn truncated_component_is_invalid() {
        let mut bytes = wat::parse_str("(component (core module))").unwrap();
        bytes.truncate(bytes.len() - 3);
        let err = cache().get_or_compile(&bytes).err().unwrap();
        assert!(matches!(err, LoadError::Invalid(_)), "{err}");
    }

    fn cache_on_disk(dir: &std::path::Path) -> CompiledCache<()> {
        let engine = Engine::new(&Config::new()).unwrap();
        let store = CompiledStore::open(dir, &engine).unwrap();
        CompiledCache::new(engine.clone(), Linker::new(&engine)).with_store(store)
    }

    const DISK_COMPONENT: &str = r#"(component (core module (func (export "f"))))"#;

    #[test]
    fn compiled_code_survives_a_new_cache_on_the_same_dir() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = wat::parse_str(DISK_COMPONENT).unwrap();
        let first = cache_on_disk(dir.path());
        first.get_or_compile(&bytes).unwrap();
        assert_eq!(first.stats().compiles, 1);
        let restarted = cache_on_disk(dir.path());
        restarted.get_or_compile(&bytes).unwrap();
        assert_eq!(restarted.stats().compiles, 0);
        assert_eq!(restarted.stats().disk_hits, 1);
    }

    #[test]
    fn the_disk_store_evicts_the_least_recently_loaded_entry_over_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            numbered_component(1),
            numbered_component(2),
            numbered_component(3),
        );
        let one_object = {
            let cache = cache_on_disk(dir.path());
            cache.get_or_compile(&a).unwrap();
            cache.store().unwrap().usage().unwrap().1
        };
        let bounded = |dir: &std::path::Path| {
            let engine = Engine::new(&Config::new()).unwrap();
            let store = CompiledStore::open(dir, &engine)
                .unwrap()
                .with_max_bytes(one_object * 2 + one_object / 2);
            CompiledCache::<()>::new(engine.clone(), Linker::new(&engine)).with_store(store)
        };
        let cache = bounded(dir.path());
        cache.get_or_compile(&b).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        // A new process loads a from disk: a is now more recent than b.
        let reloaded = bounded(dir.path());
        reloaded.get_or_compile(&a).unwrap();
        assert_eq!(reloaded.stats().disk_hits, 1);
        std::thread::sleep(std::time::Duration::from_millis(20));
        reloaded.get_or_compile(&c).unwrap();
        assert_eq!(reloaded.stats().disk_evictions, 1);
        let (entries, _) = reloaded.store().unwrap().usage().unwrap();
        assert_eq!(entries, 2);
        let fresh = bounded(dir.path());
        fresh.get_or_compile(&a).unwrap();
        fresh.get_or_compile(&c).unwrap();
        assert_eq!(fresh.stats().disk_hits, 2, "a and c stayed on disk");
        fresh.get_or_compile(&b).unwrap();
        assert_eq!(fresh.stats().compiles, 1, "b was evicted");
    }

    #[test]
    fn a_corrupt_compiled_entry_is_recompiled_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = wat::parse_str(DISK_COMPONENT).unwrap();
        let first = cache_on_disk(dir.path());
        first.get_or_compile(&bytes).unwrap();
        let objects = first.store().unwrap().dir().join("objects");
        for object in std::fs::read_dir(&objects).unwrap() {
            let path = object.unwrap().path();
            let mut content = std::fs::read(&path).unwrap();
            let middle = content.len() / 2;
            content[middle] ^= 0x55;
            std::fs::write(&path, content).unwrap();
        }
        let second = cache_on_disk(dir.path());
        second.get_or_compile(&bytes).unwrap();
        assert_eq!(second.stats().disk_rejected, 1);
        assert_eq!(second.stats().compiles, 1, "recompiled");
        let third = cache_on_disk(dir.path());
        third.get_or_compile(&bytes).unwrap();
        assert_eq!(third.stats().disk_hits, 1, "the entry was replaced");
    }

    #[test]
    fn a_truncated_or_dangling_entry_is_recompiled() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = wat::parse_str(DISK_COMPONENT).unwrap();
        cache_on_disk(dir.path()).get_or_compile(&bytes).unwrap();
        let engine = Engine::new(&Config::new()).unwrap();
        let store = CompiledStore::open(dir.path(), &engine).unwrap();
        for object in std::fs::read_dir(store.dir().join("objects")).unwrap() {
            let path = object.unwrap().path();
            let content = std::fs::read(&path).unwrap();
            std::fs::write(&path, &content[..content.len() / 3]).unwrap();
        }
        let second = cache_on_disk(dir.path());
        second.get_or_compile(&bytes).unwrap();
        assert_eq!(
            (second.stats().disk_rejected, second.stats().compiles),
            (1, 1)
        );
        for object in std::fs::read_dir(store.dir().join("objects")).unwrap() {
            std::fs::remove_file(object.unwrap().path()).unwrap();
        }
        let third = cache_on_disk(dir.path());
        third.get_or_compile(&bytes).unwrap();
        assert_eq!(
            (third.stats().disk_rejected, third.stats().compiles),
            (1, 1)
        );
    }

    #[test]
    fn engines_with_different_code_settings_do_not_share_entries() {
        let plain = Engine::new(&Config::new()).unwrap();
        let mut config = Config::new();
        config.epoch_interruption(true);
        let with_epochs = Engine::new(&config).unwrap();
        assert_ne!(engine_fingerprint(&plain), engine_fingerprint(&with_epochs));
        assert_eq!(
            engine_fingerprint(&plain),
            engine_fingerprint(&Engine::new(&Config::new()).unwrap())
        );
    }

    #[test]
    fn missing_import_is_named() {
        let bytes = wat::parse_str(
            r#"(component (import "acme:missing/thing@1.0.0" (instance (export "f" (func)))))"#,
        )
        .unwrap();
        let cache = cache();
        let err = cache.get_or_compile(&bytes).err().unwrap();
        match &err {
            LoadError::MissingImport { import, .. } => {
                assert_eq!(import, "acme:missing/thing@1.0.0")
            }
            other => panic!("expected MissingImport, got {other}"),
        }
        assert_eq!(cache.stats().entries, 0);
    }
}
