//! `wasi:blobstore@0.2.0-draft` over [`hearth_blob::BlobStore`].
//!
//! # Contract
//!
//! * **Scope.** A function sees one blob store (its `blob_store`, else the
//!   host's default) and, in it, only its identity's containers (see
//!   [`crate::tenancy`]): the guest's container `photos` of app `shop` in
//!   namespace `team-a` is the store's container `team-a.shop.photos`
//!   (a namespace and an app hold no `.`, so the first two end them; a
//!   `NAMESPACE.APP` longer than 31 bytes is replaced by a digest of it).
//!   Replicas and functions of one app share containers; other apps' and
//!   other namespaces' containers cannot be named. A guest container name is what
//!   [`hearth_blob::validate_container`] allows, short enough that the
//!   stored name stays within 63 bytes.
//! * **Errors** are `wasi:blobstore`'s `error` strings, never traps, and
//!   start with the kind: `invalid name: …`, `not found: …`,
//!   `already exists: …`, `too large: …`, `corrupt: …`, `unavailable: …`;
//!   a function without a store gets `unavailable: no blob store …`.
//! * **Writes** (`outgoing-value`): what the guest writes to the body
//!   stream is spooled on the host (in memory up to [`SPOOL_MEMORY_BYTES`],
//!   then in an unnamed file in the host's spool directory, under its
//!   cache dir), never in guest memory at once. All of one function's
//!   unfinished values together hold at most its [`SpoolBudget`]
//!   (`[cache] max_blob_spool_bytes`, 2 GiB): a write past it fails with
//!   `too large: …` and is counted (`hearth_blob_spool_refused_total`); a
//!   value's bytes are given back when it is finished or dropped. `write-data`
//!   names where it goes (before or after the body is written); `finish`
//!   stores it, atomically, and answers the store's error. A value dropped
//!   without `finish`, or whose body went over the store's limit (the
//!   stream's write fails then), writes nothing.
//! * **Reads** (`incoming-value`): `get-data(name, start, end)` is the
//!   inclusive range, clamped to the object; `consume-async` streams it
//!   (the chunks the backend hands over go to the guest without another
//!   copy on the host), `consume-sync` reads it whole (up to
//!   [`CONSUME_SYNC_MAX_BYTES`], else `too large`). A checksum mismatch
//!   is a stream error (`corrupt: …`), never data.
//! * `list-objects` pages through the container in name order; `created-at`
//!   is seconds since the Unix epoch.
//!
//! # Host side
//!
//! The function's [`BlobScope`] is resolved once at load; each instance's
//! [`BlobstoreCtx`] holds it, and the host functions run on a
//! [`BlobstoreView`]. [`add_to_linker`] adds the three interfaces.

use super::bindings::wasi::blobstore::{blobstore, container, types};
use crate::telemetry::{Kind, Span, TraceContext};
use crate::tenancy::Identity;
use bytes::Bytes;
use futures_util::StreamExt;
use hearth_blob::{BlobError, BlobStore, ByteRange, ByteStream};
use std::collections::VecDeque;
use std::io::{Read, Seek, Write};
use std::sync::{Arc, Mutex};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, InputStream, OutputStream, Pollable};
use wasmtime_wasi::p2::{StreamError, StreamResult};

/// The most `incoming-value-consume-sync` reads into guest memory at once.
pub const CONSUME_SYNC_MAX_BYTES: u64 = 64 << 20;

/// Body bytes a write keeps in memory before it spills to a temp file.
pub const SPOOL_MEMORY_BYTES: usize = 1 << 20;

/// Default bound of one function's unfinished blob writes.
pub const DEFAULT_MAX_SPOOL_BYTES: u64 = 2 << 30;

/// Where a host spools outgoing values, and how much one function may hold.
#[derive(Debug, Clone)]
pub struct SpoolSettings {
    /// The directory (made when first needed).
    pub dir: std::path::PathBuf,
    /// Bytes one function's unfinished values may hold, memory and disk.
    pub max_bytes_per_function: u64,
}

impl Default for SpoolSettings {
    fn default() -> Self {
        SpoolSettings {
            dir: std::env::temp_dir().join("hearth-blob-spool"),
            max_bytes_per_function: DEFAULT_MAX_SPOOL_BYTES,
        }
    }
}

/// One function's spool: the bytes its unfinished outgoing values hold,
/// against its bound.
#[derive(Debug)]
pub struct SpoolBudget {
    settings: SpoolSettings,
    /// Whose budget it is, in the log.
    owner: String,
    used: std::sync::atomic::AtomicU64,
    refused: std::sync::atomic::AtomicU64,
}

impl SpoolBudget {
    /// An empty budget of `owner` (its identity, in the log).
    pub fn new(settings: SpoolSettings, owner: String) -> Self {
        SpoolBudget {
            settings,
            owner,
            used: Default::default(),
            refused: Default::default(),
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Writes refused for the bound.
    pub fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn reserve(&self, bytes: u64) -> Result<(), BlobError> {
        use std::sync::atomic::Ordering::Relaxed;
        let limit = self.settings.max_bytes_per_function;
        self.used
            .fetch_update(Relaxed, Relaxed, |used| {
                used.checked_add(bytes).filter(|total| *total <= limit)
            })
            .map(drop)
            .map_err(|used| {
                let refused = self.refused.fetch_add(1, Relaxed) + 1;
                // Logged at powers of two: a guest retrying in a loop
                // cannot flood the log.
                if refused.is_power_of_two() {
                    tracing::warn!(
                        function = %self.owner,
                        used,
                        bytes,
                        limit,
                        refused,
                        "blob write refused: the function's unfinished writes are at max_blob_spool_bytes"
                    );
                }
                BlobError::Other(format!(
                    "too large: this function's unfinished blob writes hold {used} bytes; {bytes} more would pass its spool limit of {limit} bytes ([cache] max_blob_spool_bytes)"
                ))
            })
    }

    fn release(&self, bytes: u64) {
        self.used
            .fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The store a function's `wasi:blobstore` calls reach, and its app's
/// container prefix.
#[derive(Clone)]
pub struct BlobScope {
    /// The store.
    pub store: BlobStore,
    /// `NAMESPACE.APP.`: what the store's name of each of the app's
    /// containers starts with.
    prefix: String,
    /// The function's spool.
    pub spool: Arc<SpoolBudget>,
}

impl std::fmt::Debug for BlobScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobScope")
            .field("store", &self.store.label())
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl BlobScope {
    /// `store`, scoped to the containers of `identity`'s app, spooling
    /// as `spool` says.
    pub fn new(store: BlobStore, identity: &Identity, spool: SpoolSettings) -> Self {
        BlobScope {
            store,
            prefix: container_prefix(identity),
            spool: Arc::new(SpoolBudget::new(spool, identity.to_string())),
        }
    }

    /// The store's name of the guest's container `name`.
    pub fn stored_name(&self, name: &str) -> Result<String, BlobError> {
        hearth_blob::validate_container(name)?;
        let stored = format!("{}{name}", self.prefix);
        if stored.len() > hearth_blob::MAX_CONTAINER_NAME_BYTES {
            return Err(BlobError::InvalidName(format!(
                "container `{name}`: longer than {} bytes for this app",
                hearth_blob::MAX_CONTAINER_NAME_BYTES - self.prefix.len()
            )));
        }
        Ok(stored)
    }
}

/// Longest `NAMESPACE.APP` used as it is in container names; a longer
/// one is replaced by a digest so guests keep room for their own names.
const MAX_PLAIN_SCOPE_BYTES: usize = 31;

/// `NAMESPACE.APP.`, or `h<first 16 bytes of its SHA-256, hex>.` when it is
/// longer than [`MAX_PLAIN_SCOPE_BYTES`] (no `.` inside, so it never equals
/// a plain scope; SHA-256, so no tenant can choose a name that collides).
fn container_prefix(identity: &Identity) -> String {
    use sha2::Digest as _;
    let scope = identity.scope();
    if scope.len() <= MAX_PLAIN_SCOPE_BYTES {
        return format!("{scope}.");
    }
    let digest = sha2::Sha256::digest(scope.as_bytes());
    format!("h{}.", hex::encode(&digest[..16]))
}

/// One instance's blobstore context.
#[derive(Debug, Clone)]
pub struct BlobstoreCtx {
    /// The function's name (in logs).
    pub function: Arc<str>,
    /// Its store and app scope, if the host has a blob store.
    pub scope: Option<Arc<BlobScope>>,
    /// The span of the request being served (see [`crate::telemetry`]).
    pub trace: TraceContext,
}

/// What `wasi:blobstore` host functions run on.
pub struct BlobstoreView<'a> {
    /// The context.
    pub ctx: &'a BlobstoreCtx,
    /// The instance's resource table (containers, values and the `wasi:io`
    /// streams over them live here).
    pub table: &'a mut ResourceTable,
}

/// The [`HasData`] marker of `wasi:blobstore`.
pub struct Blobstore;

impl HasData for Blobstore {
    type Data<'a> = BlobstoreView<'a>;
}

/// Adds `wasi:blobstore` (blobstore, container, types) to `linker`,
/// reaching the view through `get`. `wasi:io` must be linked too.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> BlobstoreView<'_>,
) -> wasmtime::Result<()> {
    types::add_to_linker::<T, Blobstore>(linker, get)?;
    container::add_to_linker::<T, Blobstore>(linker, get)?;
    blobstore::add_to_linker::<T, Blobstore>(linker, get)?;
    Ok(())
}

/// A `wasi:blobstore/container.container`.
pub struct ContainerHandle {
    scope: BlobScope,
    /// The guest's name.
    name: String,
    /// The store's name.
    stored: String,
}

/// A `wasi:blobstore/container.stream-object-names`.
pub struct ObjectNamesHandle {
    scope: BlobScope,
    stored: String,
    after: Option<String>,
    ready: VecDeque<String>,
    exhausted: bool,
}

/// Where a finished value is stored.
struct WriteTarget {
    scope: BlobScope,
    stored: String,
    name: String,
}

/// A `wasi:blobstore/types.outgoing-value`.
pub struct OutgoingValueHandle {
    spool: Arc<Mutex<Spool>>,
    body_taken: bool,
    targets: Vec<WriteTarget>,
}

/// A `wasi:blobstore/types.incoming-value`.
pub struct IncomingValueHandle {
    body: ByteStream,
    size: u64,
}

/// An outgoing value's body as it is written: chunks in memory, then a
/// temp file; `failed` once a write went over `limit`.
struct Spool {
    memory: Vec<Bytes>,
    file: Option<std::fs::File>,
    written: u64,
    limit: u64,
    failed: Option<BlobError>,
    /// The function's budget, which `written` is reserved from (none for
    /// a replayed copy, which holds nothing of its own).
    budget: Option<Arc<SpoolBudget>>,
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.release(self.written);
        }
    }
}

impl Spool {
    fn new(limit: u64, budget: Option<Arc<SpoolBudget>>) -> Self {
        Spool {
            memory: Vec::new(),
            file: None,
            written: 0,
            limit,
            failed: None,
            budget,
        }
    }

    fn append(&mut self, bytes: Bytes) -> Result<(), BlobError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        if self.written + bytes.len() as u64 > self.limit {
            let error = BlobError::TooLarge { limit: self.limit };
            self.failed = Some(error.clone());
            return Err(error);
        }
        if let Some(budget) = &self.budget
            && let Err(error) = budget.reserve(bytes.len() as u64)
        {
            self.failed = Some(error.clone());
            return Err(error);
        }
        self.written += bytes.len() as u64;
        if self.file.is_none() && self.written as usize <= SPOOL_MEMORY_BYTES {
            self.memory.push(bytes);
            return Ok(());
        }
        let result = (|| {
            if self.file.is_none() {
                let mut file = match &self.budget {
                    Some(budget) => {
                        std::fs::create_dir_all(&budget.settings.dir)?;
                        tempfile::tempfile_in(&budget.settings.dir)?
                    }
                    None => tempfile::tempfile()?,
                };
                for chunk in self.memory.drain(..) {
                    file.write_all(&chunk)?;
                }
                self.file = Some(file);
            }
            self.file.as_mut().expect("just made").write_all(&bytes)
        })();
        result.map_err(|e| {
            let error = BlobError::Other(format!("spooling the value on the host: {e}"));
            self.failed = Some(error.clone());
            error
        })
    }

    /// The body, to store; the spool is left empty.
    fn take_body(&mut self) -> Result<ByteStream, BlobError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let Some(mut file) = self.file.take() else {
            let chunks = std::mem::take(&mut self.memory);
            return Ok(futures_util::stream::iter(chunks.into_iter().map(Ok)).boxed());
        };
        file.rewind()
            .map_err(|e| BlobError::Other(format!("spool: {e}")))?;
        let body = futures_util::stream::try_unfold(file, |mut file| async move {
            tokio::task::spawn_blocking(move || {
                let mut chunk = vec![0u8; 256 * 1024];
                let n = file
                    .read(&mut chunk)
                    .map_err(|e| BlobError::Other(format!("spool: {e}")))?;
                chunk.truncate(n);
                Ok(if n == 0 {
                    None
                } else {
                    Some((Bytes::from(chunk), file))
                })
            })
            .await
            .map_err(|e| BlobError::Other(format!("spool: {e}")))?
        });
        Ok(body.boxed())
    }

    /// The body again (for a second `write-data` target).
    fn replay(&mut self) -> Result<ByteStream, BlobError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        match &self.file {
            None => Ok(futures_util::stream::iter(self.memory.clone().into_iter().map(Ok)).boxed()),
            Some(file) => {
                let copy = file
                    .try_clone()
                    .map_err(|e| BlobError::Other(format!("spool: {e}")))?;
                let mut spool = Spool {
                    memory: Vec::new(),
                    file: Some(copy),
                    written: self.written,
                    limit: self.limit,
                    failed: None,
                    budget: None,
                };
                spool.take_body()
            }
        }
    }
}

/// The body stream of an outgoing value.
struct SpoolStream {
    spool: Arc<Mutex<Spool>>,
}

#[async_trait::async_trait]
impl Pollable for SpoolStream {
    async fn ready(&mut self) {}
}

impl OutputStream for SpoolStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.spool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .append(bytes)
            .map_err(|e| StreamError::LastOperationFailed(wasmtime::format_err!("{e}")))
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        let spool = self.spool.lock().unwrap_or_else(|e| e.into_inner());
        match &spool.failed {
            Some(error) => Err(StreamError::LastOperationFailed(wasmtime::format_err!(
                "{error}"
            ))),
            None => Ok(256 * 1024),
        }
    }
}

/// The body of an incoming value as a `wasi:io` input stream: the
/// backend's chunks are handed out as they are (sliced, not copied).
struct BlobInputStream {
    body: Option<ByteStream>,
    current: Bytes,
    failed: Option<BlobError>,
}

#[async_trait::async_trait]
impl Pollable for BlobInputStream {
    async fn ready(&mut self) {
        if !self.current.is_empty() || self.failed.is_some() {
            return;
        }
        let Some(body) = self.body.as_mut() else {
            return;
        };
        match body.next().await {
            Some(Ok(chunk)) => self.current = chunk,
            Some(Err(error)) => {
                tracing::warn!(error = %error, "blob read failed mid-stream");
                self.failed = Some(error);
                self.body = None;
            }
            None => self.body = None,
        }
    }
}

impl InputStream for BlobInputStream {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        if !self.current.is_empty() {
            let take = size.min(self.current.len());
            let piece = self.current.split_to(take);
            // wasmtime turns the piece into a `Vec` before copying it into
            // guest memory: free for a whole chunk nobody else holds, a
            // copy for a slice of one.
            if !piece.is_unique() {
                hearth_blob::copy_meter::client_copied(piece.len());
            }
            return Ok(piece);
        }
        if let Some(error) = self.failed.take() {
            self.body = None;
            return Err(StreamError::LastOperationFailed(wasmtime::format_err!(
                "{error}"
            )));
        }
        if self.body.is_none() {
            return Err(StreamError::Closed);
        }
        Ok(Bytes::new())
    }
}

fn error_text(error: BlobError) -> String {
    error.to_string()
}

impl BlobstoreView<'_> {
    fn blob_scope(&self) -> Result<BlobScope, String> {
        self.ctx.scope.as_deref().cloned().ok_or_else(|| {
            "unavailable: no blob store is configured on this host ([blob.stores] in hearth.toml)"
                .to_string()
        })
    }

    fn open_container(&self, name: &str) -> Result<(BlobScope, String), String> {
        let scope = self.blob_scope()?;
        let stored = scope.stored_name(name).map_err(error_text)?;
        Ok((scope, stored))
    }

    fn container_handle(
        &mut self,
        container: &Resource<ContainerHandle>,
    ) -> wasmtime::Result<(BlobScope, String, String)> {
        let handle = self.table.get(container)?;
        Ok((
            handle.scope.clone(),
            handle.stored.clone(),
            handle.name.clone(),
        ))
    }

    fn object_ids(
        &self,
        src: &blobstore::ObjectId,
        dest: &blobstore::ObjectId,
    ) -> Result<(BlobScope, String, String), String> {
        let (scope, from) = self.open_container(&src.container)?;
        let to = scope.stored_name(&dest.container).map_err(error_text)?;
        Ok((scope, from, to))
    }
}

/// One blob call in progress: its name and span.
struct BlobCall {
    name: &'static str,
    span: Span,
}

impl BlobstoreView<'_> {
    /// Starts the call `name`: its span, a child of the request's.
    fn call(&self, name: &'static str) -> BlobCall {
        let span = self
            .ctx
            .trace
            .start_with(|| format!("blob {name}").into(), Kind::Client);
        span.set("hearth.blob.store", || {
            self.ctx
                .scope
                .as_ref()
                .map_or_else(String::new, |scope| scope.store.label().to_string())
        });
        BlobCall { name, span }
    }

    /// Ends `call` with `result`, logging a failure (kept at debug for `not
    /// found`, an everyday answer), and hands the result on.
    fn note<T>(&self, call: BlobCall, result: Result<T, String>) -> Result<T, String> {
        let BlobCall { name: call, span } = call;
        if let Err(error) = &result {
            span.fail(error.split(':').next().unwrap_or("error"), error);
            let function = &*self.ctx.function;
            if error.starts_with("unavailable") || error.starts_with("corrupt") {
                tracing::warn!(function, call, error, "blob call failed");
            } else if error.starts_with("not found") {
                tracing::debug!(function, call, error, "blob call: not found");
            } else {
                tracing::info!(function, call, error, "blob call refused");
            }
        }
        result
    }

    /// A handle on the guest's container `name`, after creating it
    /// (`create`) or checking it exists.
    async fn container_resource(
        &mut self,
        call: BlobCall,
        name: String,
        create: bool,
    ) -> wasmtime::Result<Result<Resource<ContainerHandle>, String>> {
        let opened = self.open_container(&name);
        let checked = async {
            let (scope, stored) = opened?;
            if create {
                scope.store.create_container(&stored).await
            } else {
                scope.store.container_info(&stored).await
            }
            .map_err(error_text)?;
            Ok((scope, stored))
        }
        .await;
        let result = match checked {
            Ok((scope, stored)) => Ok(self.table.push(ContainerHandle {
                scope,
                name,
                stored,
            })?),
            Err(error) => Err(error),
        };
        Ok(self.note(call, result))
    }
}

impl blobstore::Host for BlobstoreView<'_> {
    async fn create_container(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<Resource<ContainerHandle>, String>> {
        let call = self.call("create-container");
        self.container_resource(call, name, true).await
    }

    async fn get_container(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<Resource<ContainerHandle>, String>> {
        let call = self.call("get-container");
        self.container_resource(call, name, false).await
    }

    async fn delete_container(&mut self, name: String) -> wasmtime::Result<Result<(), String>> {
        let call = self.call("delete-container");
        let opened = self.open_container(&name);
        let result = async {
            let (scope, stored) = opened?;
            scope
                .store
                .delete_container(&stored)
                .await
                .map_err(error_text)
        }
        .await;
        Ok(self.note(call, result))
    }

    async fn container_exists(&mut self, name: String) -> wasmtime::Result<Result<bool, String>> {
        let call = self.call("container-exists");
        let opened = self.open_container(&name);
        let result = async {
            let (scope, stored) = opened?;
            scope
                .store
                .container_exists(&stored)
                .await
                .map_err(error_text)
        }
        .await;
        Ok(self.note(call, result))
    }

    async fn copy_object(
        &mut self,
        src: blobstore::ObjectId,
        dest: blobstore::ObjectId,
    ) -> wasmtime::Result<Result<(), String>> {
        let call = self.call("copy-object");
        let ids = self.object_ids(&src, &dest);
        let result = async {
            let (scope, from, to) = ids?;
            scope
                .store
                .copy((&from, &src.object), (&to, &dest.object))
                .await
                .map(drop)
                .map_err(error_text)
        }
        .await;
        Ok(self.note(call, result))
    }

    async fn move_object(
        &mut self,
        src: blobstore::ObjectId,
        dest: blobstore::ObjectId,
    ) -> wasmtime::Result<Result<(), String>> {
        let call = self.call("move-object");
        let ids = self.object_ids(&src, &dest);
        let result = async {
            let (scope, from, to) = ids?;
            scope
                .store
                .rename((&from, &src.object), (&to, &dest.object))
                .await
                .map(drop)
                .map_err(error_text)
        }
        .await;
        Ok(self.note(call, result))
    }
}

impl container::Host for BlobstoreView<'_> {}

impl container::HostContainer for BlobstoreView<'_> {
    async fn name(
        &mut self,
        container: Resource<ContainerHandle>,
    ) -> wasmtime::Result<Result<String, String>> {
        Ok(Ok(self.table.get(&container)?.name.clone()))
    }

    async fn info(
        &mut self,
        container: Resource<ContainerHandle>,
    ) -> wasmtime::Result<Result<types::ContainerMetadata, String>> {
        let call = self.call("info");
        let (scope, stored, name) = self.container_handle(&container)?;
        let result = scope
            .store
            .container_info(&stored)
            .await
            .map(|info| types::ContainerMetadata {
                name,
                created_at: info.created_at_ms / 1000,
            })
            .map_err(error_text);
        Ok(self.note(call, result))
    }

    async fn get_data(
        &mut self,
        container: Resource<ContainerHandle>,
        name: String,
        start: u64,
        end: u64,
    ) -> wasmtime::Result<Result<Resource<IncomingValueHandle>, String>> {
        let call = self.call("get-data");
        let (scope, stored, _) = self.container_handle(&container)?;
        if end < start {
            return Ok(Err(format!(
                "invalid range: end {end} is before start {start}"
            )));
        }
        let result = match scope
            .store
            .get(&stored, &name, ByteRange { start, end })
            .await
        {
            Ok((info, body)) => {
                let (from, to) = ByteRange { start, end }.clamp(info.size);
                Ok(self.table.push(IncomingValueHandle {
                    body,
                    size: to.saturating_sub(from),
                })?)
            }
            Err(error) => Err(error_text(error)),
        };
        Ok(self.note(call, result))
    }

    async fn write_data(
        &mut self,
        container: Resource<ContainerHandle>,
        name: String,
        data: Resource<OutgoingValueHandle>,
    ) -> wasmtime::Result<Result<(), String>> {
        let call = self.call("write-data");
        let (scope, stored, _) = self.container_handle(&container)?;
        if let Err(error) = hearth_blob::validate_object(&name) {
            return Ok(self.note(call, Err(error_text(error))));
        }
        self.table.get_mut(&data)?.targets.push(WriteTarget {
            scope,
            stored,
            name,
        });
        Ok(Ok(()))
    }

    async fn list_objects(
        &mut self,
        container: Resource<ContainerHandle>,
    ) -> wasmtime::Result<Result<Resource<ObjectNamesHandle>, String>> {
        let (scope, stored, _) = self.container_handle(&container)?;
        Ok(Ok(self.table.push(ObjectNamesHandle {
            scope,
            stored,
            after: None,
            ready: VecDeque::new(),
            exhausted: false,
        })?))
    }

    async fn delete_object(
        &mut self,
        container: Resource<ContainerHandle>,
        name: String,
    ) -> wasmtime::Result<Result<(), String>> {
        let call = self.call("delete-object");
        let (scope, stored, _) = self.container_handle(&container)?;
        let result = scope.store.delete(&stored, &name).await.map_err(error_text);
        Ok(self.note(call, result))
    }

    async fn delete_objects(
        &mut self,
        container: Resource<ContainerHandle>,
        names: Vec<String>,
    ) -> wasmtime::Result<Result<(), String>> {
        let call = self.call("delete-objects");
        let (scope, stored, _) = self.container_handle(&container)?;
        let mut result = Ok(());
        for name in &names {
            if let Err(error) = scope.store.delete(&stored, name).await {
                result = Err(error_text(error));
                break;
            }
        }
        Ok(self.note(call, result))
    }

    async fn has_object(
        &mut self,
        container: Resource<ContainerHandle>,
        name: String,
    ) -> wasmtime::Result<Result<bool, String>> {
        let call = self.call("has-object");
        let (scope, stored, _) = self.container_handle(&container)?;
        let result = scope.store.exists(&stored, &name).await.map_err(error_text);
        Ok(self.note(call, result))
    }

    async fn object_info(
        &mut self,
        container: Resource<ContainerHandle>,
        name: String,
    ) -> wasmtime::Result<Result<types::ObjectMetadata, String>> {
        let call = self.call("object-info");
        let (scope, stored, guest_container) = self.container_handle(&container)?;
        let result = scope
            .store
            .info(&stored, &name)
            .await
            .map(|info| types::ObjectMetadata {
                name: info.name,
                container: guest_container,
                created_at: info.created_at_ms / 1000,
                size: info.size,
            })
            .map_err(error_text);
        Ok(self.note(call, result))
    }

    async fn clear(
        &mut self,
        container: Resource<ContainerHandle>,
    ) -> wasmtime::Result<Result<(), String>> {
        let call = self.call("clear");
        let (scope, stored, _) = self.container_handle(&container)?;
        let result = async {
            loop {
                let page = scope.store.list(&stored, None, 1000).await?;
                if page.names.is_empty() {
                    return Ok(());
                }
                for name in &page.names {
                    scope.store.delete(&stored, name).await?;
                }
            }
        }
        .await
        .map_err(error_text);
        Ok(self.note(call, result))
    }

    async fn drop(&mut self, container: Resource<ContainerHandle>) -> wasmtime::Result<()> {
        self.table.delete(container)?;
        Ok(())
    }
}

impl container::HostStreamObjectNames for BlobstoreView<'_> {
    async fn read_stream_object_names(
        &mut self,
        names: Resource<ObjectNamesHandle>,
        len: u64,
    ) -> wasmtime::Result<Result<(Vec<String>, bool), String>> {
        let call = self.call("read-stream-object-names");
        let wanted = usize::try_from(len).unwrap_or(usize::MAX).min(10_000);
        let result = fill_names(self.table.get_mut(&names)?, wanted).await;
        let handle = self.table.get_mut(&names)?;
        let result = result.map(|()| {
            let take = wanted.min(handle.ready.len());
            let batch: Vec<String> = handle.ready.drain(..take).collect();
            (batch, handle.exhausted && handle.ready.is_empty())
        });
        Ok(self.note(call, result))
    }

    async fn skip_stream_object_names(
        &mut self,
        names: Resource<ObjectNamesHandle>,
        num: u64,
    ) -> wasmtime::Result<Result<(u64, bool), String>> {
        let call = self.call("skip-stream-object-names");
        let mut skipped = 0u64;
        let result = loop {
            let handle = self.table.get_mut(&names)?;
            let wanted = usize::try_from(num - skipped)
                .unwrap_or(usize::MAX)
                .min(10_000);
            if wanted == 0 {
                break Ok(());
            }
            if let Err(error) = fill_names(handle, wanted).await {
                break Err(error);
            }
            let take = wanted.min(handle.ready.len());
            handle.ready.drain(..take);
            skipped += take as u64;
            if take == 0 {
                break Ok(());
            }
        };
        let handle = self.table.get(&names)?;
        let at_end = handle.exhausted && handle.ready.is_empty();
        Ok(self.note(call, result.map(|()| (skipped, at_end))))
    }

    async fn drop(&mut self, names: Resource<ObjectNamesHandle>) -> wasmtime::Result<()> {
        self.table.delete(names)?;
        Ok(())
    }
}

/// Pages names in until `wanted` are ready or the listing ends.
async fn fill_names(handle: &mut ObjectNamesHandle, wanted: usize) -> Result<(), String> {
    while handle.ready.len() < wanted && !handle.exhausted {
        let page = handle
            .scope
            .store
            .list(&handle.stored, handle.after.as_deref(), wanted)
            .await
            .map_err(error_text)?;
        handle.exhausted = page.next.is_none();
        handle.after = page.names.last().cloned().or(handle.after.take());
        if page.names.is_empty() {
            handle.exhausted = true;
        }
        handle.ready.extend(page.names);
    }
    Ok(())
}

impl types::Host for BlobstoreView<'_> {}

impl types::HostOutgoingValue for BlobstoreView<'_> {
    async fn new_outgoing_value(&mut self) -> wasmtime::Result<Resource<OutgoingValueHandle>> {
        let limit = self
            .ctx
            .scope
            .as_ref()
            .map_or(u64::MAX, |scope| scope.store.limits().max_object_bytes);
        let budget = self.ctx.scope.as_ref().map(|scope| scope.spool.clone());
        Ok(self.table.push(OutgoingValueHandle {
            spool: Arc::new(Mutex::new(Spool::new(limit, budget))),
            body_taken: false,
            targets: Vec::new(),
        })?)
    }

    async fn outgoing_value_write_body(
        &mut self,
        value: Resource<OutgoingValueHandle>,
    ) -> wasmtime::Result<Result<Resource<DynOutputStream>, ()>> {
        let handle = self.table.get_mut(&value)?;
        if handle.body_taken {
            return Ok(Err(()));
        }
        handle.body_taken = true;
        let stream: DynOutputStream = Box::new(SpoolStream {
            spool: handle.spool.clone(),
        });
        Ok(Ok(self.table.push_child(stream, &value)?))
    }

    async fn finish(
        &mut self,
        value: Resource<OutgoingValueHandle>,
    ) -> wasmtime::Result<Result<(), String>> {
        let call = self.call("finish");
        let handle = self.table.delete(value)?;
        let mut result = Ok(());
        if handle.targets.is_empty() {
            result = Err(
                "invalid argument: finish before write-data named where the value goes".to_string(),
            );
        }
        let last = handle.targets.len().saturating_sub(1);
        for (index, target) in handle.targets.iter().enumerate() {
            let body = {
                let mut spool = handle.spool.lock().unwrap_or_else(|e| e.into_inner());
                if index == last {
                    spool.take_body()
                } else {
                    spool.replay()
                }
            };
            let stored = match body {
                Ok(body) => target
                    .scope
                    .store
                    .put(&target.stored, &target.name, body)
                    .await
                    .map(drop),
                Err(error) => Err(error),
            };
            if let Err(error) = stored {
                result = Err(error_text(error));
                break;
            }
        }
        Ok(self.note(call, result))
    }

    async fn drop(&mut self, value: Resource<OutgoingValueHandle>) -> wasmtime::Result<()> {
        self.table.delete(value)?;
        Ok(())
    }
}

impl types::HostIncomingValue for BlobstoreView<'_> {
    async fn incoming_value_consume_sync(
        &mut self,
        value: Resource<IncomingValueHandle>,
    ) -> wasmtime::Result<Result<Vec<u8>, String>> {
        let call = self.call("consume-sync");
        let handle = self.table.delete(value)?;
        if handle.size > CONSUME_SYNC_MAX_BYTES {
            let error = format!(
                "too large: {} bytes to read at once (the limit is {CONSUME_SYNC_MAX_BYTES}); stream it with incoming-value-consume-async",
                handle.size
            );
            return Ok(self.note(call, Err(error)));
        }
        let mut body = handle.body;
        let mut all = Vec::with_capacity(usize::try_from(handle.size).unwrap_or(0).min(64 << 20));
        let mut result = Ok(());
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => {
                    all.extend_from_slice(&chunk);
                    hearth_blob::copy_meter::client_copied(chunk.len());
                }
                Err(error) => {
                    result = Err(error_text(error));
                    break;
                }
            }
        }
        Ok(self.note(call, result.map(|()| all)))
    }

    async fn incoming_value_consume_async(
        &mut self,
        value: Resource<IncomingValueHandle>,
    ) -> wasmtime::Result<Result<Resource<DynInputStream>, String>> {
        let handle = self.table.delete(value)?;
        let stream: DynInputStream = Box::new(BlobInputStream {
            body: Some(handle.body),
            current: Bytes::new(),
            failed: None,
        });
        Ok(Ok(self.table.push(stream)?))
    }

    async fn size(&mut self, value: Resource<IncomingValueHandle>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&value)?.size)
    }

    async fn drop(&mut self, value: Resource<IncomingValueHandle>) -> wasmtime::Result<()> {
        self.table.delete(value)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blobstore::Host as _;
    use container::HostContainer as _;
    use types::{HostIncomingValue as _, HostOutgoingValue as _};

    fn fs_store(dir: &std::path::Path) -> BlobStore {
        let backend = hearth_blob::fs::FsBackend::open(dir).unwrap();
        BlobStore::new(
            "files",
            Arc::new(backend),
            hearth_blob::BlobLimits::default(),
        )
    }

    fn ctx(app: &str, store: Option<&BlobStore>) -> BlobstoreCtx {
        ctx_spooling(app, store, SpoolSettings::default())
    }

    /// `ctx` with `spool` as its host's spool settings.
    fn ctx_spooling(app: &str, store: Option<&BlobStore>, spool: SpoolSettings) -> BlobstoreCtx {
        BlobstoreCtx {
            function: app.into(),
            scope: store.map(|store| {
                let (namespace, app) = app.split_once('/').unwrap_or(("default", app));
                let identity = Identity::new(namespace, app).unwrap();
                Arc::new(BlobScope::new(store.clone(), &identity, spool))
            }),
            trace: TraceContext::default(),
        }
    }

    fn borrow<T: 'static>(resource: &Resource<T>) -> Resource<T> {
        Resource::new_borrow(resource.rep())
    }

    /// Writes `bytes` as `name` in `container` the way a guest does: a
    /// value, its body stream, write-data, then finish.
    async fn put(
        view: &mut BlobstoreView<'_>,
        container: &Resource<ContainerHandle>,
        name: &str,
        bytes: &[u8],
    ) -> Result<(), String> {
        let value = view.new_outgoing_value().await.unwrap();
        let body = view
            .outgoing_value_write_body(borrow(&value))
            .await
            .unwrap()
            .unwrap();
        view.table
            .get_mut(&body)
            .unwrap()
            .write(Bytes::copy_from_slice(bytes))
            .unwrap();
        view.table.delete(body).unwrap();
        view.write_data(borrow(container), name.into(), borrow(&value))
            .await
            .unwrap()?;
        view.finish(value).await.unwrap()
    }

    #[tokio::test]
    async fn a_value_round_trips_in_the_apps_own_container() {
        let dir = tempfile::tempdir().unwrap();
        let store = fs_store(dir.path());
        let shop = ctx("shop", Some(&store));
        let mut table = ResourceTable::new();
        let mut view = BlobstoreView {
            ctx: &shop,
            table: &mut table,
        };
        let photos = view
            .create_container("photos".into())
            .await
            .unwrap()
            .unwrap();
        put(&mut view, &photos, "cat.jpg", b"meow").await.unwrap();
        let value = view
            .get_data(borrow(&photos), "cat.jpg".into(), 0, u64::MAX)
            .await
            .unwrap()
            .unwrap();
        let bytes = view.incoming_value_consume_sync(value).await.unwrap();
        assert_eq!(bytes.unwrap(), b"meow");
        assert!(
            store.container_info("default.shop.photos").await.is_ok(),
            "the guest's `photos` is the store's `default.shop.photos`"
        );
        let missing = view
            .get_data(borrow(&photos), "dog.jpg".into(), 0, u64::MAX)
            .await
            .unwrap();
        let Err(error) = missing else {
            panic!("a missing object has no data");
        };
        assert!(error.starts_with("not found"), "{error}");
    }

    #[tokio::test]
    async fn unfinished_writes_of_one_function_are_bounded_and_spool_under_its_dir() {
        let dir = tempfile::tempdir().unwrap();
        let store = fs_store(&dir.path().join("store"));
        let spool_dir = dir.path().join("cache/blob-spool");
        let limit = 3 * SPOOL_MEMORY_BYTES as u64;
        let shop = ctx_spooling(
            "shop",
            Some(&store),
            SpoolSettings {
                dir: spool_dir.clone(),
                max_bytes_per_function: limit,
            },
        );
        let budget = shop.scope.as_ref().unwrap().spool.clone();
        let mut table = ResourceTable::new();
        let mut view = BlobstoreView {
            ctx: &shop,
            table: &mut table,
        };
        let photos = view
            .create_container("photos".into())
            .await
            .unwrap()
            .unwrap();
        // Two values left unfinished, each past the in-memory part: the
        // second cannot take the function past its bound.
        let chunk = Bytes::from(vec![7u8; 2 * SPOOL_MEMORY_BYTES]);
        let mut open = Vec::new();
        let mut results = Vec::new();
        for _ in 0..2 {
            let value = view.new_outgoing_value().await.unwrap();
            let body = view
                .outgoing_value_write_body(borrow(&value))
                .await
                .unwrap()
                .unwrap();
            results.push(view.table.get_mut(&body).unwrap().write(chunk.clone()));
            view.table.delete(body).unwrap();
            open.push(value);
        }
        assert!(results[0].is_ok());
        let refused = format!("{:?}", results[1].as_ref().unwrap_err());
        assert!(
            refused.contains("too large") && refused.contains("max_blob_spool_bytes"),
            "{refused}"
        );
        assert_eq!(budget.used(), chunk.len() as u64);
        assert_eq!(budget.refused(), 1);
        // The first one's bytes are in an (unnamed) file of the spool dir.
        assert!(spool_dir.is_dir());
        let spooled = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
            .any(|target| target.starts_with(&spool_dir));
        assert!(spooled, "no open file under {}", spool_dir.display());
        // Dropping the values gives their bytes back; a new write fits.
        for value in open {
            view.table.delete(value).unwrap();
        }
        assert_eq!(budget.used(), 0);
        put(&mut view, &photos, "big.bin", &chunk).await.unwrap();
        assert_eq!(budget.used(), 0, "a finished value holds nothing");
    }

    #[test]
    fn long_identities_get_a_digest_prefix_that_no_plain_one_equals() {
        let short = container_prefix(&Identity::new("team-a", "shop").unwrap());
        assert_eq!(short, "team-a.shop.");
        let long =
            container_prefix(&Identity::new("a-rather-longer-namespace", "and-app").unwrap());
        assert_eq!(long.len(), 34);
        assert!(
            long.starts_with('h') && long.matches('.').count() == 1,
            "{long}"
        );
        let other =
            container_prefix(&Identity::new("a-rather-longer-namespace", "and-apq").unwrap());
        assert_ne!(long, other);
    }

    #[tokio::test]
    async fn the_same_app_in_another_namespace_cannot_see_the_container() {
        let dir = tempfile::tempdir().unwrap();
        let store = fs_store(dir.path());
        let (a, b) = (
            ctx("team-a/shop", Some(&store)),
            ctx("team-b/shop", Some(&store)),
        );
        let (mut a_table, mut b_table) = (ResourceTable::new(), ResourceTable::new());
        let mut a = BlobstoreView {
            ctx: &a,
            table: &mut a_table,
        };
        let mut b = BlobstoreView {
            ctx: &b,
            table: &mut b_table,
        };
        a.create_container("photos".into()).await.unwrap().unwrap();
        assert_eq!(
            b.container_exists("photos".into()).await.unwrap(),
            Ok(false)
        );
        assert!(store.container_info("team-a.shop.photos").await.is_ok());
    }

    #[tokio::test]
    async fn another_app_cannot_see_or_name_the_container() {
        let dir = tempfile::tempdir().unwrap();
        let store = fs_store(dir.path());
        let (shop, other) = (ctx("shop", Some(&store)), ctx("other", Some(&store)));
        let (mut shop_table, mut other_table) = (ResourceTable::new(), ResourceTable::new());
        let mut shop = BlobstoreView {
            ctx: &shop,
            table: &mut shop_table,
        };
        let mut other = BlobstoreView {
            ctx: &other,
            table: &mut other_table,
        };
        shop.create_container("photos".into())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            other.container_exists("photos".into()).await.unwrap(),
            Ok(false)
        );
        let Err(error) = other.get_container("photos".into()).await.unwrap() else {
            panic!("another app's container must not open");
        };
        assert!(error.starts_with("not found"), "{error}");
        let Err(error) = other.get_container("../shop.photos".into()).await.unwrap() else {
            panic!("a path-like name must be refused");
        };
        assert!(error.starts_with("invalid name"), "{error}");
    }

    #[tokio::test]
    async fn without_a_store_every_call_is_unavailable() {
        let nothing = ctx("shop", None);
        let mut table = ResourceTable::new();
        let mut view = BlobstoreView {
            ctx: &nothing,
            table: &mut table,
        };
        let Err(error) = view.create_container("photos".into()).await.unwrap() else {
            panic!("no store, no container");
        };
        assert!(error.starts_with("unavailable"), "{error}");
    }
}
