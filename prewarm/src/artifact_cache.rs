//! The artifact cache: functions pulled from registries, verified, on disk.
//!
//! # Layout
//!
//! ```text
//! <root>/artifacts/blobs/sha256/<hex>   manifests, configs, layers, extracted wasm
//! <root>/artifacts/refs/<hex>.json      one entry per reference: what it resolved to
//! <root>/artifacts/locks/               per-reference pull locks, and the gc lock
//! <root>/artifacts/tmp/                 staging for atomic writes
//! ```
//!
//! # Contract
//!
//! * **Verified before cached.** A blob enters `blobs/` only after its bytes
//!   hash to its digest and match its descriptor's size ([`crate::registry`]);
//!   a reference entry is written only after every blob it names is in
//!   place. Writes are staged and renamed, so a crash mid-pull leaves no
//!   entry that reads as valid; an entry whose blobs have gone missing reads
//!   as a miss.
//! * **Reading re-verifies the wasm.** [`ArtifactCache::read_wasm`] hashes
//!   the component before returning it; a blob damaged on disk is removed
//!   and reported, never returned.
//! * **Pull policy.** [`ArtifactCache::pull`] always resolves the reference
//!   at the registry (a tag may have moved) and downloads only blobs it does
//!   not hold. [`ArtifactCache::get_or_pull`] answers from the cache when the
//!   reference is there (Kubernetes' `IfNotPresent`).
//! * **Deduplicated pulls.** Pulls of one reference are serialised, within a
//!   process and across processes (a file lock); a pull that waited for
//!   another pull of the same reference uses its result instead of fetching
//!   again. Blobs already present are never fetched twice.
//! * **Bounded.** After each pull, whole references are evicted, least
//!   recently used first, until the blobs fit in the size bound; blobs still
//!   named by a remaining reference stay. The reference just pulled is never
//!   evicted (if it alone exceeds the bound, a warning says so).
//!   [`ArtifactCache::gc`] also removes unreferenced blobs and staging
//!   leftovers, under an exclusive lock that pulls share.

use crate::atomic_file::{clean_stale_staging, write_atomically};
use crate::image::{self, Descriptor, ImageError, ImageForm, WasmLocation};
use crate::registry::{RegistryClient, RegistryError, RegistrySettings, parse_reference};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a function could not be pulled or read from the cache.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The registry or the transfer failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The image does not hold a usable component.
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// Why a pull was refused for what the registry served (rather than failing
/// to reach it): the reasons `/metrics` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullRefusal {
    /// [`RegistryError::ManifestTooLarge`].
    ManifestTooLarge,
    /// [`RegistryError::ImageTooLarge`].
    ImageTooLarge,
    /// [`RegistryError::LayerTooLarge`] or [`ImageError::TooLarge`].
    LayerTooLarge,
    /// [`ImageError::UnpackedTooLarge`].
    UnpackedTooLarge,
    /// [`RegistryError::DigestMismatch`].
    DigestMismatch,
}

impl PullRefusal {
    /// Every reason, in a fixed order.
    pub const ALL: [PullRefusal; 5] = [
        PullRefusal::ManifestTooLarge,
        PullRefusal::ImageTooLarge,
        PullRefusal::LayerTooLarge,
        PullRefusal::UnpackedTooLarge,
        PullRefusal::DigestMismatch,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            PullRefusal::ManifestTooLarge => "manifest_too_large",
            PullRefusal::ImageTooLarge => "image_too_large",
            PullRefusal::LayerTooLarge => "layer_too_large",
            PullRefusal::UnpackedTooLarge => "unpacked_too_large",
            PullRefusal::DigestMismatch => "digest_mismatch",
        }
    }
}

impl PullError {
    /// The refusal this error is, if it is one.
    pub fn refusal(&self) -> Option<PullRefusal> {
        Some(match self {
            PullError::Registry(RegistryError::ManifestTooLarge { .. }) => {
                PullRefusal::ManifestTooLarge
            }
            PullError::Registry(RegistryError::ImageTooLarge { .. }) => PullRefusal::ImageTooLarge,
            PullError::Registry(RegistryError::LayerTooLarge { .. })
            | PullError::Image(ImageError::TooLarge { .. }) => PullRefusal::LayerTooLarge,
            PullError::Image(ImageError::UnpackedTooLarge { .. }) => PullRefusal::UnpackedTooLarge,
            PullError::Registry(RegistryError::DigestMismatch { .. }) => {
                PullRefusal::DigestMismatch
            }
            _ => return None,
        })
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> PullError + '_ {
    move |cause| {
        PullError::Registry(RegistryError::Io {
            path: path.to_path_buf(),
            cause,
        })
    }
}

/// A reference held in the cache.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CachedFunction {
    /// The reference, normalised (`registry/repository:tag` or `@digest`).
    pub reference: String,
    /// The digest of the manifest the reference resolved to.
    pub manifest_digest: String,
    /// The digest of the component's bytes.
    pub wasm_digest: String,
    /// Which form the image was in.
    pub form: ImageForm,
    /// Every blob this entry needs (manifest, config, layers, wasm).
    pub blobs: Vec<String>,
    /// Bytes of those blobs.
    pub size: u64,
    /// When it was pulled, in milliseconds since the Unix epoch.
    pub pulled_at_ms: u64,
    /// When it was last used (pulled or read); from the entry file's mtime.
    #[serde(skip)]
    pub last_used: Option<SystemTime>,
}

/// Counters describing what an [`ArtifactCache`] has done in this process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArtifactStats {
    /// Blobs downloaded from a registry.
    pub blob_downloads: u64,
    /// Manifests fetched from a registry (an index and its entry count two).
    pub manifest_fetches: u64,
    /// Lookups answered by the cache without the registry.
    pub hits: u64,
    /// References evicted to honour the size bound.
    pub evictions: u64,
}

/// What [`ArtifactCache::gc`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// References evicted for the size bound.
    pub evicted: Vec<String>,
    /// Entries dropped because blobs they need were missing.
    pub incomplete: Vec<String>,
    /// Blobs no entry referenced.
    pub orphan_blobs: usize,
    /// Staging files left by crashed writers.
    pub stale_staging: usize,
    /// Bytes freed.
    pub freed_bytes: u64,
}

/// See the module docs.
pub struct ArtifactCache {
    blobs: PathBuf,
    refs: PathBuf,
    locks: PathBuf,
    staging: PathBuf,
    max_bytes: u64,
    settings: RegistrySettings,
    in_process_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    blob_downloads: AtomicU64,
    manifest_fetches: AtomicU64,
    hits: AtomicU64,
    evictions: AtomicU64,
    refusals: [AtomicU64; PullRefusal::ALL.len()],
}

impl ArtifactCache {
    /// Opens (creating) the cache under `root`, bounded to `max_bytes` of
    /// blobs, reaching registries with `settings`.
    pub fn open(
        root: &Path,
        max_bytes: u64,
        settings: RegistrySettings,
    ) -> Result<Self, PullError> {
        let base = root.join("artifacts");
        let cache = ArtifactCache {
            blobs: base.join("blobs").join("sha256"),
            refs: base.join("refs"),
            locks: base.join("locks"),
            staging: base.join("tmp"),
            max_bytes,
            settings,
            in_process_locks: Mutex::new(HashMap::new()),
            blob_downloads: AtomicU64::new(0),
            manifest_fetches: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            refusals: Default::default(),
        };
        for dir in [&cache.blobs, &cache.refs, &cache.locks, &cache.staging] {
            fs::create_dir_all(dir).map_err(io_error(dir))?;
        }
        Ok(cache)
    }

    /// The registry settings pulls use.
    pub fn settings(&self) -> &RegistrySettings {
        &self.settings
    }

    /// The size bound, in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// What this cache has done in this process.
    pub fn stats(&self) -> ArtifactStats {
        ArtifactStats {
            blob_downloads: self.blob_downloads.load(Ordering::Relaxed),
            manifest_fetches: self.manifest_fetches.load(Ordering::Relaxed),
            hits: self.hits.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }

    /// Pulls refused in this process, by reason (every reason listed).
    pub fn refusals(&self) -> Vec<(PullRefusal, u64)> {
        PullRefusal::ALL
            .into_iter()
            .zip(&self.refusals)
            .map(|(reason, count)| (reason, count.load(Ordering::Relaxed)))
            .collect()
    }

    fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        blob_path_in(&self.blobs, digest)
    }

    fn entry_path(&self, reference: &str) -> PathBuf {
        self.refs.join(format!(
            "{}.json",
            hex::encode(Sha256::digest(reference.as_bytes()))
        ))
    }

    fn read_entry(&self, path: &Path) -> Option<CachedFunction> {
        let text = fs::read_to_string(path).ok()?;
        let mut entry: CachedFunction = serde_json::from_str(&text).ok()?;
        entry.last_used = fs::metadata(path).and_then(|m| m.modified()).ok();
        Some(entry)
    }

    fn is_complete(&self, entry: &CachedFunction) -> bool {
        entry
            .blobs
            .iter()
            .all(|digest| self.blob_path(digest).is_some_and(|path| path.is_file()))
    }

    fn touch(&self, reference: &str) {
        if let Ok(file) = File::options().write(true).open(self.entry_path(reference)) {
            let _ = file.set_modified(SystemTime::now());
        }
    }

    /// The complete cached entry for `reference`, if any, marking it used.
    pub fn lookup(&self, reference: &str) -> Result<Option<CachedFunction>, PullError> {
        let reference = parse_reference(reference)?.whole();
        let Some(entry) = self.read_entry(&self.entry_path(&reference)) else {
            return Ok(None);
        };
        if !self.is_complete(&entry) {
            return Ok(None);
        }
        self.touch(&reference);
        Ok(Some(entry))
    }

    /// Answers from the cache when `reference` is there, else pulls it.
    pub async fn get_or_pull(&self, reference: &str) -> Result<CachedFunction, PullError> {
        if let Some(entry) = self.lookup(reference)? {
            self.hits.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(reference = %entry.reference, "artifact cache hit");
            return Ok(entry);
        }
        self.pull(reference).await
    }

    /// Resolves `reference` at its registry and makes sure every blob of it
    /// is cached. See the module docs for deduplication.
    pub async fn pull(&self, reference_text: &str) -> Result<CachedFunction, PullError> {
        let reference = parse_reference(reference_text)?;
        let key = reference.whole();
        let waiting_since = SystemTime::now();

        let in_process = {
            let mut locks = self
                .in_process_locks
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            locks.entry(key.clone()).or_default().clone()
        };
        let _in_process = in_process.lock().await;
        let _gc_shared = self.lock_file("gc.lock", false).await?;
        let lock_name = format!("{}.lock", hex::encode(Sha256::digest(key.as_bytes())));
        let _cross_process = self.lock_file(&lock_name, true).await?;

        // Another pull of this reference finished while we waited: use it.
        if let Some(entry) = self.read_entry(&self.entry_path(&key))
            && entry.pulled_at_ms >= unix_millis(waiting_since)
            && self.is_complete(&entry)
        {
            tracing::debug!(reference = %key, "joined a concurrent pull");
            return Ok(entry);
        }

        let client = RegistryClient::new(&reference, &self.settings);
        let entry = match self.pull_locked(&client, &key).await {
            Ok(entry) => entry,
            Err(error) => {
                if let Some(reason) = error.refusal() {
                    let index = PullRefusal::ALL
                        .iter()
                        .position(|r| *r == reason)
                        .expect("ALL lists every reason");
                    self.refusals[index].fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(reference = %key, reason = reason.as_str(), "pull refused: {error}");
                }
                return Err(error);
            }
        };
        let path = self.entry_path(&key);
        let json = serde_json::to_vec_pretty(&entry).expect("entries serialise");
        write_atomically(&self.staging, &path, &json).map_err(io_error(&path))?;
        tracing::info!(reference = %key, manifest = %entry.manifest_digest, wasm = %entry.wasm_digest, bytes = entry.size, "pulled");
        if let Err(error) = self.evict_to_bound(Some(&key)) {
            tracing::warn!("artifact cache eviction failed: {error}");
        }
        Ok(CachedFunction {
            last_used: Some(SystemTime::now()),
            ..entry
        })
    }

    async fn pull_locked(
        &self,
        client: &RegistryClient,
        key: &str,
    ) -> Result<CachedFunction, PullError> {
        let fetched = client.fetch_manifest(client.reference()).await?;
        self.manifest_fetches
            .fetch_add(fetched.requests, Ordering::Relaxed);
        self.store_bytes(&fetched.digest, &fetched.bytes)?;
        let mut blobs = vec![fetched.digest.clone()];
        let manifest = &fetched.manifest;
        self.check_image_size(key, manifest)?;

        let config_bytes = match &manifest.config {
            Some(config) => {
                blobs.push(config.digest.clone());
                let path = self.ensure_blob(client, config).await?;
                fs::read(&path).map_err(io_error(&path))?
            }
            None => Vec::new(),
        };
        let (form, wasm_digest) = match image::wasm_location(key, manifest, &config_bytes)? {
            WasmLocation::Layer(layer) => {
                self.ensure_blob(client, &layer).await?;
                blobs.push(layer.digest.clone());
                (ImageForm::Artifact, layer.digest)
            }
            WasmLocation::InLayers { path, layers } => {
                let mut files = Vec::new();
                for layer in &layers {
                    files.push((
                        layer.media_type.clone(),
                        self.ensure_blob(client, layer).await?,
                    ));
                    blobs.push(layer.digest.clone());
                }
                let digest = self.extract_wasm(key, path, files).await?;
                blobs.push(digest.clone());
                (ImageForm::Image, digest)
            }
        };
        blobs.sort();
        blobs.dedup();
        let size = blobs
            .iter()
            .filter_map(|digest| self.blob_path(digest))
            .filter_map(|path| fs::metadata(path).ok())
            .map(|m| m.len())
            .sum();
        Ok(CachedFunction {
            reference: key.to_string(),
            manifest_digest: fetched.digest,
            wasm_digest,
            form,
            blobs,
            size,
            pulled_at_ms: unix_millis(SystemTime::now()),
            last_used: None,
        })
    }

    /// Refuses an image whose config and layers add up to more than
    /// [`RegistrySettings::max_image_bytes`], or whose config is over
    /// [`RegistrySettings::max_manifest_bytes`], before anything is
    /// downloaded.
    fn check_image_size(&self, key: &str, manifest: &image::Manifest) -> Result<(), PullError> {
        if let Some(config) = &manifest.config
            && config.size > self.settings.max_manifest_bytes
        {
            return Err(RegistryError::ManifestTooLarge {
                what: "config",
                reference: key.to_string(),
                size: config.size,
                limit: self.settings.max_manifest_bytes,
            }
            .into());
        }
        let size = manifest
            .config
            .iter()
            .chain(&manifest.layers)
            .fold(0u64, |sum, descriptor| sum.saturating_add(descriptor.size));
        if size > self.settings.max_image_bytes {
            return Err(RegistryError::ImageTooLarge {
                reference: key.to_string(),
                size,
                layers: manifest.layers.len(),
                limit: self.settings.max_image_bytes,
            }
            .into());
        }
        Ok(())
    }

    /// Extracts the component at `path` from the cached tar `layers` (media
    /// type, blob file) and caches it; returns its digest. Decompression and
    /// hashing run on a blocking thread, never on an async worker.
    async fn extract_wasm(
        &self,
        key: &str,
        path: String,
        layers: Vec<(String, PathBuf)>,
    ) -> Result<String, PullError> {
        let key = key.to_string();
        let max_file_bytes = self.settings.max_layer_bytes;
        let max_unpacked_bytes = self.settings.max_unpacked_bytes;
        let staging = self.staging.clone();
        let blobs = self.blobs.clone();
        let extracted = tokio::task::spawn_blocking(move || {
            let mut opened = Vec::new();
            for (media_type, file) in layers {
                let reader = File::open(&file).map_err(io_error(&file))?;
                opened.push((media_type, reader));
            }
            let wasm = image::extract_from_layers(
                &key,
                &path,
                max_file_bytes,
                max_unpacked_bytes,
                opened
                    .iter()
                    .map(|(media_type, file)| (media_type.as_str(), file)),
            )?;
            let digest = image::sha256_digest(&wasm);
            let target = blob_path_in(&blobs, &digest).expect("sha256 digests map to paths");
            if !target.is_file() {
                write_atomically(&staging, &target, &wasm).map_err(io_error(&target))?;
            }
            Ok::<_, PullError>(digest)
        })
        .await;
        match extracted {
            Ok(result) => result,
            Err(join) => Err(RegistryError::Io {
                path: self.staging.clone(),
                cause: io::Error::other(format!("extracting the component failed: {join}")),
            }
            .into()),
        }
    }

    /// Makes sure the blob is cached, downloading and verifying it if not.
    async fn ensure_blob(
        &self,
        client: &RegistryClient,
        descriptor: &Descriptor,
    ) -> Result<PathBuf, PullError> {
        let path = self
            .blob_path(&descriptor.digest)
            .ok_or_else(|| RegistryError::Protocol {
                registry: client.registry().to_string(),
                detail: format!(
                    "a descriptor with an unsupported digest `{}`",
                    descriptor.digest
                ),
            })?;
        if path.is_file() {
            return Ok(path);
        }
        let staged = client.fetch_blob(descriptor, &self.staging).await?;
        staged.commit(&path).map_err(io_error(&path))?;
        self.blob_downloads.fetch_add(1, Ordering::Relaxed);
        Ok(path)
    }

    /// Stores bytes whose digest the caller has just computed or verified.
    fn store_bytes(&self, digest: &str, bytes: &[u8]) -> Result<(), PullError> {
        debug_assert_eq!(image::sha256_digest(bytes), digest);
        let path = self.blob_path(digest).expect("sha256 digests map to paths");
        if !path.is_file() {
            write_atomically(&self.staging, &path, bytes).map_err(io_error(&path))?;
        }
        Ok(())
    }

    /// The component bytes of `entry`, verified against its digest. A
    /// damaged blob is removed (so the next pull fetches it again) and
    /// reported.
    pub fn read_wasm(&self, entry: &CachedFunction) -> Result<Vec<u8>, PullError> {
        let path = self
            .blob_path(&entry.wasm_digest)
            .ok_or_else(|| RegistryError::Protocol {
                registry: "(cache)".into(),
                detail: format!("entry with unsupported digest {}", entry.wasm_digest),
            })?;
        let bytes = fs::read(&path).map_err(io_error(&path))?;
        let actual = image::sha256_digest(&bytes);
        if actual != entry.wasm_digest {
            let _ = fs::remove_file(&path);
            tracing::error!(reference = %entry.reference, file = %path.display(), "cached wasm is damaged; removed it");
            return Err(RegistryError::DigestMismatch {
                what: format!("cached wasm of {} ({})", entry.reference, path.display()),
                expected: entry.wasm_digest.clone(),
                actual,
            }
            .into());
        }
        Ok(bytes)
    }

    /// Every entry, most recently used first. Incomplete entries are listed
    /// too; [`ArtifactCache::is_entry_complete`] tells them apart.
    pub fn list(&self) -> Result<Vec<CachedFunction>, PullError> {
        let mut entries = Vec::new();
        for dirent in fs::read_dir(&self.refs).map_err(io_error(&self.refs))? {
            let dirent = dirent.map_err(io_error(&self.refs))?;
            if let Some(entry) = self.read_entry(&dirent.path()) {
                entries.push(entry);
            }
        }
        entries.sort_by_key(|entry| std::cmp::Reverse(entry.last_used));
        Ok(entries)
    }

    /// Whether every blob of `entry` is present.
    pub fn is_entry_complete(&self, entry: &CachedFunction) -> bool {
        self.is_complete(entry)
    }

    /// Bytes of all blobs held.
    pub fn total_bytes(&self) -> Result<u64, PullError> {
        let mut total = 0;
        for dirent in fs::read_dir(&self.blobs).map_err(io_error(&self.blobs))? {
            total += dirent
                .and_then(|d| d.metadata())
                .map_err(io_error(&self.blobs))?
                .len();
        }
        Ok(total)
    }

    /// Evicts least-recently-used references until the blobs fit the bound.
    fn evict_to_bound(&self, keep: Option<&str>) -> Result<(Vec<String>, u64), PullError> {
        let mut total = self.total_bytes()?;
        let mut evicted = Vec::new();
        let mut freed = 0;
        if total <= self.max_bytes {
            return Ok((evicted, freed));
        }
        let mut entries = self.list()?;
        // Oldest last, so pop() yields the least recently used.
        while total > self.max_bytes {
            let Some(victim_index) = entries
                .iter()
                .rposition(|e| Some(e.reference.as_str()) != keep)
            else {
                tracing::warn!(
                    reference = keep.unwrap_or(""),
                    total,
                    bound = self.max_bytes,
                    "the artifact cache is over its size bound with nothing left to evict"
                );
                break;
            };
            let victim = entries.remove(victim_index);
            let still_needed: HashSet<&String> = entries.iter().flat_map(|e| &e.blobs).collect();
            let _ = fs::remove_file(self.entry_path(&victim.reference));
            for digest in &victim.blobs {
                if still_needed.contains(digest) {
                    continue;
                }
                if let Some(path) = self.blob_path(digest)
                    && let Ok(meta) = fs::metadata(&path)
                    && fs::remove_file(&path).is_ok()
                {
                    total = total.saturating_sub(meta.len());
                    freed += meta.len();
                }
            }
            tracing::info!(reference = %victim.reference, "evicted from the artifact cache (least recently used)");
            self.evictions.fetch_add(1, Ordering::Relaxed);
            evicted.push(victim.reference);
        }
        Ok((evicted, freed))
    }

    /// Removes incomplete entries, unreferenced blobs and staging leftovers,
    /// then evicts to the size bound. Waits for running pulls to finish.
    pub async fn gc(&self) -> Result<GcReport, PullError> {
        let _exclusive = self.lock_file("gc.lock", true).await?;
        let mut report = GcReport {
            stale_staging: clean_stale_staging(&self.staging).map_err(io_error(&self.staging))?,
            ..GcReport::default()
        };
        let mut referenced = HashSet::new();
        for entry in self.list()? {
            if self.is_complete(&entry) {
                referenced.extend(entry.blobs.iter().cloned());
            } else {
                let _ = fs::remove_file(self.entry_path(&entry.reference));
                report.incomplete.push(entry.reference);
            }
        }
        for dirent in fs::read_dir(&self.blobs).map_err(io_error(&self.blobs))? {
            let dirent = dirent.map_err(io_error(&self.blobs))?;
            let digest = format!("sha256:{}", dirent.file_name().to_string_lossy());
            if !referenced.contains(&digest) {
                let size = dirent.metadata().map(|m| m.len()).unwrap_or(0);
                if fs::remove_file(dirent.path()).is_ok() {
                    report.orphan_blobs += 1;
                    report.freed_bytes += size;
                }
            }
        }
        let (evicted, freed) = self.evict_to_bound(None)?;
        report.evicted = evicted;
        report.freed_bytes += freed;
        Ok(report)
    }

    /// Takes a file lock in `locks/` (exclusive or shared), waiting for it
    /// on a blocking thread. Released when the returned file is dropped.
    async fn lock_file(&self, name: &str, exclusive: bool) -> Result<File, PullError> {
        let path = self.locks.join(name);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_error(&path))?;
        let locked = tokio::task::spawn_blocking(move || {
            let result = if exclusive {
                file.lock()
            } else {
                file.lock_shared()
            };
            result.map(|()| file)
        })
        .await
        .expect("locking does not panic");
        locked.map_err(io_error(&path))
    }
}

/// Where blob `digest` lives under `blobs`; `None` for anything but a
/// well-formed sha256 digest.
fn blob_path_in(blobs: &Path, digest: &str) -> Option<PathBuf> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| blobs.join(hex))
}

fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}
