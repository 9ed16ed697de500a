//! Hearth's blob storage capability below the WIT layer: what a function's
//! `wasi:blobstore` calls turn into.
//!
//! * [`BlobBackend`]: the trait every backend implements: [`fs`] (a
//!   directory tree, the default) and [`s3`] (a bucket of an S3-compatible
//!   server). Every backend passes the one [`conformance`] suite.
//! * [`regions`]: registered buffers and the one-sided read rules the
//!   remote transport (TCP, loopback, RDMA verbs) is built on, and
//!   [`transport`]: the transport trait with its loopback and TCP ends;
//!   [`remote`]: the storage-node protocol's messages and its client, the
//!   `remote` backend. With the `rdma` feature, `rdma`: the transport over
//!   RDMA verbs. The wire (transport, region rules, verbs) is here because
//!   the client reads one-sided through it too; the node itself (serving,
//!   its hot tier, the `hearth-store` binary) is the `hearth-store-node`
//!   crate.
//! * [`config`]: `[blob.stores.LABEL]` tables and how they build.
//! * [`BlobStore`]: a backend under a label, with the checks every call goes
//!   through first (container and object names, the size limit), so every
//!   backend refuses bad input the same way.
//!
//! # Contract, for every backend
//!
//! * **Names.** A container name is 1 to 63 of `a-z`, `0-9`, `-`, `_` and
//!   `.`, not `.` or `..`. An object name is 1 to 1024 bytes of UTF-8 with no
//!   NUL or other control character, not starting or ending with `/`, and
//!   with no empty, `.` or `..` segment between `/`s (so it is also a valid
//!   S3 key that lists in name order): anything else is
//!   [`BlobError::InvalidName`] before a backend sees it. A name never
//!   becomes a path outside the store.
//! * **Writes are atomic.** [`BlobBackend::put`] streams the body; the
//!   object becomes visible, whole, only when `put` returns `Ok` (and is
//!   durable then: fsynced, or acknowledged by the server). A write that
//!   fails, is cancelled or goes over the limit leaves the old object (or
//!   none) in place, never a part.
//! * **Reads stream** ([`ByteStream`]), so a large object never has to be
//!   in memory at once. A range is `start..=end` (inclusive, as
//!   `wasi:blobstore` has it), clamped to the object's size. Data whose
//!   checksum does not match what was written is [`BlobError::Corrupt`],
//!   never handed out.
//! * **Missing things.** Reading or describing a missing object, or using
//!   a missing container, is [`BlobError::NotFound`]; deleting a missing
//!   object is `Ok`. Creating an existing container is
//!   [`BlobError::AlreadyExists`].
//! * **Listing** is in name order, a page at a time, after a cursor.
//! * A backend that cannot be reached answers [`BlobError::Unavailable`]
//!   within its timeout.

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub mod config;
pub mod conformance;
pub mod fs;
#[cfg(feature = "rdma")]
pub mod rdma;
pub mod regions;
pub mod remote;
pub mod s3;
pub mod transport;

/// The longest object name, in bytes.
pub const MAX_OBJECT_NAME_BYTES: usize = 1024;

/// The longest container name.
pub const MAX_CONTAINER_NAME_BYTES: usize = 63;

/// Object data as it streams, chunk by chunk.
pub type ByteStream = BoxStream<'static, Result<Bytes, BlobError>>;

/// What went wrong, as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    /// A container or object name the contract refuses.
    #[error("invalid name: {0}")]
    InvalidName(String),
    /// No such container or object.
    #[error("not found: {0}")]
    NotFound(String),
    /// The container exists already.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The object is larger than the store allows.
    #[error("too large: the limit is {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// Stored data failed its checksum.
    #[error("corrupt: {0}")]
    Corrupt(String),
    /// The backend cannot be reached (or timed out).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Anything else the backend reported.
    #[error("{0}")]
    Other(String),
}

/// A container's description.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContainerInfo {
    /// Its name.
    pub name: String,
    /// When it was created, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

/// An object's description.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectInfo {
    /// Its name.
    pub name: String,
    /// Its container.
    pub container: String,
    /// When it was written, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Its size in bytes.
    pub size: u64,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListPage {
    /// Object names, in order.
    pub names: Vec<String>,
    /// Where the next page starts (`None`: this was the last).
    pub next: Option<String>,
}

/// An inclusive byte range, as `wasi:blobstore` `get-data` has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// The first byte.
    pub start: u64,
    /// The last byte (inclusive); `u64::MAX` reads to the end.
    pub end: u64,
}

impl ByteRange {
    /// The whole object.
    pub const ALL: ByteRange = ByteRange {
        start: 0,
        end: u64::MAX,
    };

    /// The `[start, end)` offsets this range covers in an object of `size`
    /// bytes (empty when it starts past the end).
    pub fn clamp(self, size: u64) -> (u64, u64) {
        let end = self.end.saturating_add(1).min(size);
        (self.start.min(end), end)
    }
}

/// Where object data is kept. Names are checked by [`BlobStore`] before a
/// backend sees them; see the crate docs for the contract.
#[async_trait]
pub trait BlobBackend: Send + Sync {
    /// `fs`, `s3`, `remote`.
    fn kind(&self) -> &'static str;

    /// Creates an empty container.
    async fn create_container(&self, container: &str) -> Result<ContainerInfo, BlobError>;

    /// Describes a container.
    async fn container_info(&self, container: &str) -> Result<ContainerInfo, BlobError>;

    /// Deletes a container and everything in it (a missing one: `Ok`).
    async fn delete_container(&self, container: &str) -> Result<(), BlobError>;

    /// Writes an object from `body`, atomically; more than `limit` bytes is
    /// [`BlobError::TooLarge`] and writes nothing.
    async fn put(
        &self,
        container: &str,
        name: &str,
        body: ByteStream,
        limit: u64,
    ) -> Result<ObjectInfo, BlobError>;

    /// Reads `range` of an object: its description, then its bytes.
    async fn get(
        &self,
        container: &str,
        name: &str,
        range: ByteRange,
    ) -> Result<(ObjectInfo, ByteStream), BlobError>;

    /// Describes an object.
    async fn info(&self, container: &str, name: &str) -> Result<ObjectInfo, BlobError>;

    /// Deletes an object (a missing one: `Ok`).
    async fn delete(&self, container: &str, name: &str) -> Result<(), BlobError>;

    /// Up to `limit` object names after `after`, in order.
    async fn list(
        &self,
        container: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, BlobError>;

    /// Copies an object (overwriting the destination). The default streams
    /// it through [`BlobBackend::get`] and [`BlobBackend::put`].
    async fn copy(
        &self,
        from: (&str, &str),
        to: (&str, &str),
        limit: u64,
    ) -> Result<ObjectInfo, BlobError> {
        self.container_info(to.0).await?;
        let (_, body) = self.get(from.0, from.1, ByteRange::ALL).await?;
        self.put(to.0, to.1, body, limit).await
    }

    /// Moves an object (overwriting the destination): a copy, then the
    /// source's delete.
    async fn rename(
        &self,
        from: (&str, &str),
        to: (&str, &str),
        limit: u64,
    ) -> Result<ObjectInfo, BlobError> {
        let info = self.copy(from, to, limit).await?;
        if from != to {
            self.delete(from.0, from.1).await?;
        }
        Ok(info)
    }

    /// Whether the backend answers now (for `/readyz`).
    async fn ping(&self) -> Result<(), BlobError> {
        Ok(())
    }
}

/// What a store allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLimits {
    /// The largest object, in bytes.
    pub max_object_bytes: u64,
    /// The most names one listing page returns.
    pub max_list_page: usize,
}

impl Default for BlobLimits {
    fn default() -> Self {
        BlobLimits {
            max_object_bytes: 1 << 30,
            max_list_page: 1000,
        }
    }
}

/// A backend under a label, with the checks of the crate docs.
#[derive(Clone)]
pub struct BlobStore {
    label: Arc<str>,
    backend: Arc<dyn BlobBackend>,
    limits: BlobLimits,
}

impl BlobStore {
    /// `backend` as the store `label`.
    pub fn new(label: &str, backend: Arc<dyn BlobBackend>, limits: BlobLimits) -> Self {
        BlobStore {
            label: label.into(),
            backend,
            limits,
        }
    }

    /// Its label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Its backend's kind.
    pub fn kind(&self) -> &'static str {
        self.backend.kind()
    }

    /// Its limits.
    pub fn limits(&self) -> BlobLimits {
        self.limits
    }

    /// Its backend (names reach it only through the store's checks; a
    /// wrapper that renames, as a storage node's scopes do, goes here).
    pub fn backend(&self) -> &Arc<dyn BlobBackend> {
        &self.backend
    }

    /// See [`BlobBackend::create_container`].
    pub async fn create_container(&self, container: &str) -> Result<ContainerInfo, BlobError> {
        validate_container(container)?;
        self.backend.create_container(container).await
    }

    /// See [`BlobBackend::container_info`].
    pub async fn container_info(&self, container: &str) -> Result<ContainerInfo, BlobError> {
        validate_container(container)?;
        self.backend.container_info(container).await
    }

    /// Whether `container` exists.
    pub async fn container_exists(&self, container: &str) -> Result<bool, BlobError> {
        match self.container_info(container).await {
            Ok(_) => Ok(true),
            Err(BlobError::NotFound(_)) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// See [`BlobBackend::delete_container`].
    pub async fn delete_container(&self, container: &str) -> Result<(), BlobError> {
        validate_container(container)?;
        self.backend.delete_container(container).await
    }

    /// See [`BlobBackend::put`]; the limit is the store's.
    pub async fn put(
        &self,
        container: &str,
        name: &str,
        body: ByteStream,
    ) -> Result<ObjectInfo, BlobError> {
        validate_container(container)?;
        validate_object(name)?;
        self.backend
            .put(container, name, body, self.limits.max_object_bytes)
            .await
    }

    /// [`BlobStore::put`] of bytes in memory.
    pub async fn put_bytes(
        &self,
        container: &str,
        name: &str,
        data: impl Into<Bytes>,
    ) -> Result<ObjectInfo, BlobError> {
        let data = data.into();
        self.put(
            container,
            name,
            futures_util::stream::once(async { Ok(data) }).boxed(),
        )
        .await
    }

    /// See [`BlobBackend::get`].
    pub async fn get(
        &self,
        container: &str,
        name: &str,
        range: ByteRange,
    ) -> Result<(ObjectInfo, ByteStream), BlobError> {
        validate_container(container)?;
        validate_object(name)?;
        self.backend.get(container, name, range).await
    }

    /// [`BlobStore::get`], collected into memory.
    pub async fn get_bytes(
        &self,
        container: &str,
        name: &str,
        range: ByteRange,
    ) -> Result<Vec<u8>, BlobError> {
        let (_, body) = self.get(container, name, range).await?;
        body.try_fold(Vec::new(), |mut all, chunk| async move {
            all.extend_from_slice(&chunk);
            Ok(all)
        })
        .await
    }

    /// See [`BlobBackend::info`].
    pub async fn info(&self, container: &str, name: &str) -> Result<ObjectInfo, BlobError> {
        validate_container(container)?;
        validate_object(name)?;
        self.backend.info(container, name).await
    }

    /// Whether the object exists (its container must).
    pub async fn exists(&self, container: &str, name: &str) -> Result<bool, BlobError> {
        match self.info(container, name).await {
            Ok(_) => Ok(true),
            Err(BlobError::NotFound(_)) => {
                self.container_info(container).await?;
                Ok(false)
            }
            Err(error) => Err(error),
        }
    }

    /// See [`BlobBackend::delete`].
    pub async fn delete(&self, container: &str, name: &str) -> Result<(), BlobError> {
        validate_container(container)?;
        validate_object(name)?;
        self.backend.delete(container, name).await
    }

    /// See [`BlobBackend::list`]; `limit` is capped by the store's page.
    pub async fn list(
        &self,
        container: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, BlobError> {
        validate_container(container)?;
        let limit = limit.clamp(1, self.limits.max_list_page);
        self.backend.list(container, after, limit).await
    }

    /// See [`BlobBackend::copy`].
    pub async fn copy(
        &self,
        from: (&str, &str),
        to: (&str, &str),
    ) -> Result<ObjectInfo, BlobError> {
        validate_ids(from, to)?;
        self.backend
            .copy(from, to, self.limits.max_object_bytes)
            .await
    }

    /// See [`BlobBackend::rename`].
    pub async fn rename(
        &self,
        from: (&str, &str),
        to: (&str, &str),
    ) -> Result<ObjectInfo, BlobError> {
        validate_ids(from, to)?;
        self.backend
            .rename(from, to, self.limits.max_object_bytes)
            .await
    }

    /// See [`BlobBackend::ping`].
    pub async fn ping(&self) -> Result<(), BlobError> {
        self.backend.ping().await
    }
}

/// Checks both `(container, object)` pairs of a copy or move.
fn validate_ids(from: (&str, &str), to: (&str, &str)) -> Result<(), BlobError> {
    for (container, name) in [from, to] {
        validate_container(container)?;
        validate_object(name)?;
    }
    Ok(())
}

/// Checks a container name against the crate docs' rules.
pub fn validate_container(name: &str) -> Result<(), BlobError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_CONTAINER_NAME_BYTES
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(BlobError::InvalidName(format!(
            "container {:?}: use 1 to {MAX_CONTAINER_NAME_BYTES} of a-z, 0-9, `-`, `_` and `.`",
            name.chars().take(80).collect::<String>()
        )))
    }
}

/// Checks an object name against the crate docs' rules.
pub fn validate_object(name: &str) -> Result<(), BlobError> {
    let shown = || format!("{:?}", name.chars().take(80).collect::<String>());
    let refuse = |why: &str| Err(BlobError::InvalidName(format!("object {}: {why}", shown())));
    if name.is_empty() {
        return refuse("empty");
    }
    if name.len() > MAX_OBJECT_NAME_BYTES {
        return refuse(&format!("longer than {MAX_OBJECT_NAME_BYTES} bytes"));
    }
    if name.contains('\0') {
        return refuse("contains NUL");
    }
    if name.chars().any(char::is_control) {
        return refuse("contains a control character");
    }
    if name.starts_with('/') || name.starts_with('\\') {
        return refuse("an absolute path");
    }
    if name.ends_with('/') || name.contains("//") {
        return refuse("has an empty segment");
    }
    if name
        .split(['/', '\\'])
        .any(|segment| segment == ".." || segment == ".")
    {
        return refuse("has a `.` or `..` segment");
    }
    Ok(())
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_that_could_escape_are_refused() {
        for bad in [
            "",
            "..",
            "../etc/passwd",
            "a/../../b",
            "a/./b",
            "/etc/passwd",
            "\\windows",
            "a\\..\\b",
            "dir/",
            "a//b",
            "nul\0byte",
            "bell\x07",
        ] {
            assert!(
                matches!(validate_object(bad), Err(BlobError::InvalidName(_))),
                "{bad:?} must be refused"
            );
        }
        assert!(validate_object(&"x".repeat(MAX_OBJECT_NAME_BYTES + 1)).is_err());
        for good in [
            "a",
            "photos/2026/cat.jpg",
            "..hidden",
            "a..b",
            "ünïcode/名前",
            "a b",
        ] {
            validate_object(good).unwrap_or_else(|e| panic!("{good:?}: {e}"));
        }
    }

    #[test]
    fn container_names_are_plain() {
        for bad in ["", ".", "..", "Upper", "a/b", "a b", &"c".repeat(64)] {
            assert!(validate_container(bad).is_err(), "{bad:?}");
        }
        for good in ["photos", "my-bucket.v2", "a_b"] {
            validate_container(good).unwrap();
        }
    }

    #[test]
    fn ranges_are_inclusive_and_clamped() {
        assert_eq!(ByteRange::ALL.clamp(10), (0, 10));
        assert_eq!(ByteRange { start: 2, end: 4 }.clamp(10), (2, 5));
        assert_eq!(ByteRange { start: 8, end: 100 }.clamp(10), (8, 10));
        assert_eq!(ByteRange { start: 20, end: 30 }.clamp(10), (10, 10));
        assert_eq!(ByteRange::ALL.clamp(0), (0, 0));
    }
}

/// Bytes of object data copied in memory on the read path, by where, so a
/// benchmark can report copies per byte read. Landing data from the wire
/// (a socket read, an RDMA READ, the loopback's stand-in for it) is not a
/// copy here; copying it afterwards is.
pub mod copy_meter {
    use std::sync::atomic::{AtomicU64, Ordering};

    static NODE: AtomicU64 = AtomicU64::new(0);
    static CLIENT: AtomicU64 = AtomicU64::new(0);

    /// The storage node copied `bytes` (backend chunk → registered buffer,
    /// or into its hot tier).
    pub fn node_copied(bytes: usize) {
        NODE.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// The client side copied `bytes` between the landed data and the
    /// guest's allocation (not counting the copy into guest memory itself).
    /// The host counts a chunk handed to a guest `read` in pieces (which
    /// wasmtime copies into a `Vec` first); a `splice` passes pieces on
    /// without that copy, so for splices this is an upper bound.
    pub fn client_copied(bytes: usize) {
        CLIENT.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// `(node, client)` bytes copied so far in this process.
    pub fn totals() -> (u64, u64) {
        (NODE.load(Ordering::Relaxed), CLIENT.load(Ordering::Relaxed))
    }
}
