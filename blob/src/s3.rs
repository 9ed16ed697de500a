//! The `s3` backend: one bucket of an S3-compatible server, through the
//! `object_store` crate.
//!
//! # Layout and contract
//!
//! ```text
//! CONTAINER/.hearth-container   the container's marker (creation time, ms)
//! CONTAINER/o/NAME              one object, its key the object's own name
//! ```
//!
//! * Object names are S3 keys as they are (the crate's name rules make
//!   every name a valid key), so listing is S3's own key order: name order.
//! * A write is spooled to a local temp file first, computing its size and
//!   block checksums, so an object over the limit is refused before
//!   anything is sent, and the checksums travel with the object as user
//!   metadata (`x-amz-meta-hearth-blocks`: block size and one CRC-32C per
//!   block, at most [`MAX_BLOCKS`] blocks). It is then uploaded in one PUT,
//!   or as a multipart upload that is aborted on any failure: S3 makes an
//!   object visible only when its upload completes, so a partial write is
//!   never seen.
//! * A read fetches the whole blocks its range touches and checks each
//!   before handing out any of its bytes ([`BlobError::Corrupt`]); an
//!   object written by something else (no checksum metadata) is read
//!   unchecked.
//! * Errors reaching the server are [`BlobError::Unavailable`] after the
//!   configured timeout (retries are off: the caller decides).

use crate::{
    BlobBackend, BlobError, ByteRange, ByteStream, ContainerInfo, ListPage, ObjectInfo, now_ms,
};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, Attributes, ClientOptions, GetOptions, GetRange, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, RetryConfig,
};
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

/// The most checksummed blocks one object has (the table fits S3's 2 KiB
/// of user metadata).
pub const MAX_BLOCKS: u64 = 128;
/// The smallest block.
const MIN_BLOCK_BYTES: u64 = 1 << 20;
/// Objects up to this size go up in one PUT; larger ones in parts of it.
const PART_BYTES: u64 = 8 << 20;
const MARKER: &str = ".hearth-container";
const BLOCKS_METADATA: &str = "hearth-blocks";

/// Where an `s3` backend connects.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// `http://host:port` (an S3-compatible server) or an AWS endpoint.
    pub endpoint: String,
    /// The bucket (it must exist).
    pub bucket: String,
    /// The region requests are signed for.
    pub region: String,
    /// Access key id and secret.
    pub credentials: (String, String),
    /// Bound of one request.
    pub timeout: Duration,
}

/// The `s3` backend; see the module docs.
pub struct S3Backend {
    store: AmazonS3,
    bucket: String,
}

/// An object's block size and checksums, as kept in its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BlockTable {
    block_bytes: u64,
    checksums: Vec<u32>,
}

impl BlockTable {
    fn block_bytes_for(size: u64) -> u64 {
        size.div_ceil(MAX_BLOCKS)
            .next_power_of_two()
            .max(MIN_BLOCK_BYTES)
    }

    fn encode(&self) -> String {
        let crcs: Vec<String> = self.checksums.iter().map(|c| format!("{c:08x}")).collect();
        format!("{}:{}", self.block_bytes, crcs.join(""))
    }

    fn decode(text: &str) -> Option<Self> {
        let (block, crcs) = text.split_once(':')?;
        let block_bytes = block.parse().ok().filter(|b| *b > 0)?;
        if crcs.len() % 8 != 0 {
            return None;
        }
        let checksums = (0..crcs.len() / 8)
            .map(|i| u32::from_str_radix(&crcs[i * 8..i * 8 + 8], 16).ok())
            .collect::<Option<Vec<_>>>()?;
        Some(BlockTable {
            block_bytes,
            checksums,
        })
    }
}

fn marker_path(container: &str) -> Path {
    Path::from_iter([container, MARKER])
}

fn object_path(container: &str, name: &str) -> Result<Path, BlobError> {
    Path::parse(format!("{container}/o/{name}"))
        .map_err(|e| BlobError::InvalidName(format!("object {name:?}: {e}")))
}

fn objects_prefix(container: &str) -> Path {
    Path::from_iter([container, "o"])
}

impl S3Backend {
    /// A backend on `settings.bucket`. Nothing is sent until the first call.
    pub fn connect(settings: &S3Settings) -> Result<Self, BlobError> {
        let store = AmazonS3Builder::new()
            .with_endpoint(&settings.endpoint)
            .with_bucket_name(&settings.bucket)
            .with_region(&settings.region)
            .with_access_key_id(&settings.credentials.0)
            .with_secret_access_key(&settings.credentials.1)
            .with_virtual_hosted_style_request(false)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(settings.endpoint.starts_with("http://"))
                    .with_timeout(settings.timeout)
                    .with_connect_timeout(settings.timeout),
            )
            .with_retry(RetryConfig {
                max_retries: 0,
                retry_timeout: settings.timeout,
                ..RetryConfig::default()
            })
            .build()
            .map_err(|e| BlobError::Other(format!("s3 settings: {e}")))?;
        Ok(S3Backend {
            store,
            bucket: settings.bucket.clone(),
        })
    }

    fn error(&self, what: &str, error: object_store::Error) -> BlobError {
        match error {
            object_store::Error::NotFound { .. } => BlobError::NotFound(what.to_string()),
            object_store::Error::Generic { source, .. } => BlobError::Unavailable(format!(
                "s3 bucket `{}`: {what}: {}",
                self.bucket,
                error_chain(source.as_ref())
            )),
            other => BlobError::Other(format!("s3 bucket `{}`: {what}: {other}", self.bucket)),
        }
    }

    async fn require_container(&self, container: &str) -> Result<(), BlobError> {
        self.container_info(container).await.map(|_| ())
    }

    /// The object's metadata and checksum table (a HEAD).
    async fn describe(
        &self,
        container: &str,
        name: &str,
    ) -> Result<(ObjectInfo, Option<BlockTable>), BlobError> {
        let what = format!("object `{name}` in container `{container}`");
        let result = self
            .store
            .get_opts(
                &object_path(container, name)?,
                GetOptions {
                    head: true,
                    ..GetOptions::default()
                },
            )
            .await
            .map_err(|e| self.error(&what, e))?;
        let table = result
            .attributes
            .get(&Attribute::Metadata(BLOCKS_METADATA.into()))
            .map(|value| {
                BlockTable::decode(value.as_ref())
                    .ok_or_else(|| BlobError::Corrupt(format!("{what}: unreadable checksum table")))
            })
            .transpose()?;
        let info = ObjectInfo {
            name: name.into(),
            container: container.into(),
            created_at_ms: result.meta.last_modified.timestamp_millis().max(0) as u64,
            size: result.meta.size,
        };
        if let Some(table) = &table
            && table.checksums.len() as u64 != info.size.div_ceil(table.block_bytes)
        {
            return Err(BlobError::Corrupt(format!(
                "{what}: its checksum table does not fit its size"
            )));
        }
        Ok((info, table))
    }

    /// Uploads the spooled file `spool` of `size` bytes to `path`.
    async fn upload(
        &self,
        path: &Path,
        spool: std::fs::File,
        size: u64,
        attributes: Attributes,
        what: &str,
    ) -> Result<(), BlobError> {
        let read_part = |mut file: std::fs::File, at: u64, len: u64| async move {
            tokio::task::spawn_blocking(move || {
                let mut buffer = vec![0u8; len as usize];
                file.seek(SeekFrom::Start(at))
                    .and_then(|_| file.read_exact(&mut buffer))
                    .map(|_| (file, Bytes::from(buffer)))
                    .map_err(|e| BlobError::Other(format!("spool file: {e}")))
            })
            .await
            .map_err(|e| BlobError::Other(format!("spool task: {e}")))?
        };
        if size <= PART_BYTES {
            let (_, data) = read_part(spool, 0, size).await?;
            self.store
                .put_opts(
                    path,
                    PutPayload::from(data),
                    PutOptions {
                        attributes,
                        ..PutOptions::default()
                    },
                )
                .await
                .map_err(|e| self.error(what, e))?;
            return Ok(());
        }
        let mut upload = self
            .store
            .put_multipart_opts(
                path,
                PutMultipartOptions {
                    attributes,
                    ..PutMultipartOptions::default()
                },
            )
            .await
            .map_err(|e| self.error(what, e))?;
        let mut file = spool;
        let mut at = 0;
        let sent: Result<(), BlobError> = async {
            while at < size {
                let len = PART_BYTES.min(size - at);
                let (back, data) = read_part(file, at, len).await?;
                file = back;
                upload
                    .put_part(PutPayload::from(data))
                    .await
                    .map_err(|e| self.error(what, e))?;
                at += len;
            }
            upload.complete().await.map_err(|e| self.error(what, e))?;
            Ok(())
        }
        .await;
        if sent.is_err() {
            // Nothing of it becomes visible; a failed abort leaves parts the
            // bucket's lifecycle rule (or the next abort) removes.
            let _ = upload.abort().await;
        }
        sent
    }
}

/// `error: cause: cause`, for messages.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Wrappers often repeat their cause's message.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[async_trait]
impl BlobBackend for S3Backend {
    fn kind(&self) -> &'static str {
        "s3"
    }

    async fn create_container(&self, container: &str) -> Result<ContainerInfo, BlobError> {
        match self.container_info(container).await {
            Ok(_) => {
                return Err(BlobError::AlreadyExists(format!("container `{container}`")));
            }
            Err(BlobError::NotFound(_)) => {}
            Err(error) => return Err(error),
        }
        let created_at_ms = now_ms();
        let what = format!("container `{container}`");
        self.store
            .put(
                &marker_path(container),
                PutPayload::from(created_at_ms.to_string()),
            )
            .await
            .map_err(|e| self.error(&what, e))?;
        Ok(ContainerInfo {
            name: container.into(),
            created_at_ms,
        })
    }

    async fn container_info(&self, container: &str) -> Result<ContainerInfo, BlobError> {
        let what = format!("container `{container}`");
        let marker = self
            .store
            .get(&marker_path(container))
            .await
            .map_err(|e| self.error(&what, e))?
            .bytes()
            .await
            .map_err(|e| self.error(&what, e))?;
        Ok(ContainerInfo {
            name: container.into(),
            created_at_ms: std::str::from_utf8(&marker)
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0),
        })
    }

    async fn delete_container(&self, container: &str) -> Result<(), BlobError> {
        let what = format!("container `{container}`");
        // The marker first: the container is gone at once, its objects
        // are removed after.
        match self.store.delete(&marker_path(container)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.error(&what, e)),
        }
        let prefix = objects_prefix(container);
        let locations = self
            .store
            .list(Some(&prefix))
            .map_ok(|meta| meta.location)
            .boxed();
        self.store
            .delete_stream(locations)
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| self.error(&what, e))?;
        Ok(())
    }

    async fn put(
        &self,
        container: &str,
        name: &str,
        mut body: ByteStream,
        limit: u64,
    ) -> Result<ObjectInfo, BlobError> {
        let path = object_path(container, name)?;
        self.require_container(container).await?;
        let spool =
            tempfile::tempfile().map_err(|e| BlobError::Other(format!("spool file: {e}")))?;
        // Spool the body, checksumming whole blocks once the size is known:
        // first the data, then the table over the spooled file.
        let mut spool = spool;
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(BlobError::TooLarge { limit });
            }
            spool = tokio::task::spawn_blocking(move || {
                let mut spool = spool;
                spool.write_all(&chunk).map(|_| spool)
            })
            .await
            .map_err(|e| BlobError::Other(format!("spool task: {e}")))?
            .map_err(|e| BlobError::Other(format!("spool file: {e}")))?;
        }
        let block_bytes = BlockTable::block_bytes_for(size);
        let (spool, table) = tokio::task::spawn_blocking(move || {
            let mut spool = spool;
            spool.seek(SeekFrom::Start(0))?;
            let mut checksums = Vec::new();
            let mut block = vec![0u8; block_bytes as usize];
            let mut left = size;
            while left > 0 {
                let len = left.min(block_bytes) as usize;
                spool.read_exact(&mut block[..len])?;
                checksums.push(crc32c::crc32c(&block[..len]));
                left -= len as u64;
            }
            Ok::<_, std::io::Error>((
                spool,
                BlockTable {
                    block_bytes,
                    checksums,
                },
            ))
        })
        .await
        .map_err(|e| BlobError::Other(format!("spool task: {e}")))?
        .map_err(|e| BlobError::Other(format!("spool file: {e}")))?;
        let mut attributes = Attributes::new();
        attributes.insert(
            Attribute::Metadata(BLOCKS_METADATA.into()),
            AttributeValue::from(table.encode()),
        );
        let what = format!("object `{name}` in container `{container}`");
        self.upload(&path, spool, size, attributes, &what).await?;
        Ok(ObjectInfo {
            name: name.into(),
            container: container.into(),
            created_at_ms: now_ms(),
            size,
        })
    }

    async fn get(
        &self,
        container: &str,
        name: &str,
        range: ByteRange,
    ) -> Result<(ObjectInfo, ByteStream), BlobError> {
        self.require_container(container).await?;
        let (info, table) = self.describe(container, name).await?;
        let (start, end) = range.clamp(info.size);
        if start >= end {
            return Ok((info, futures_util::stream::empty().boxed()));
        }
        let what = format!("object `{name}` in container `{container}`");
        // Whole blocks when checked, else just the range.
        let (fetch_from, fetch_to) = match &table {
            Some(table) => {
                let b = table.block_bytes;
                ((start / b) * b, (end.div_ceil(b) * b).min(info.size))
            }
            None => (start, end),
        };
        let result = self
            .store
            .get_opts(
                &object_path(container, name)?,
                GetOptions {
                    range: Some(GetRange::Bounded(fetch_from..fetch_to)),
                    ..GetOptions::default()
                },
            )
            .await
            .map_err(|e| self.error(&what, e))?;
        let checker = BlockChecker {
            table,
            what,
            at: fetch_from,
            fetch_to,
            pending: BytesMut::new(),
            start,
            end,
        };
        let body = checked_stream(result.into_stream(), checker);
        Ok((info, body))
    }

    async fn info(&self, container: &str, name: &str) -> Result<ObjectInfo, BlobError> {
        self.require_container(container).await?;
        self.describe(container, name).await.map(|(info, _)| info)
    }

    async fn delete(&self, container: &str, name: &str) -> Result<(), BlobError> {
        self.require_container(container).await?;
        let what = format!("object `{name}` in container `{container}`");
        match self.store.delete(&object_path(container, name)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(&what, e)),
        }
    }

    async fn list(
        &self,
        container: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, BlobError> {
        self.require_container(container).await?;
        let what = format!("container `{container}`");
        let prefix = objects_prefix(container);
        let skip = format!("{prefix}/");
        let listing = match after {
            Some(after) => self
                .store
                .list_with_offset(Some(&prefix), &object_path(container, after)?),
            None => self.store.list(Some(&prefix)),
        };
        let mut names: Vec<String> = listing
            .take(limit + 1)
            .map_ok(|meta| meta.location.as_ref()[skip.len()..].to_string())
            .try_collect()
            .await
            .map_err(|e| self.error(&what, e))?;
        // S3 lists in key order already; sorting keeps that promise for
        // servers that do not.
        names.sort_unstable();
        let next = (names.len() > limit).then(|| names[limit - 1].clone());
        names.truncate(limit);
        Ok(ListPage { names, next })
    }

    async fn ping(&self) -> Result<(), BlobError> {
        match self.store.head(&Path::from("hearth-ping")).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error("ping", e)),
        }
    }
}

/// Re-chunks fetched bytes into whole blocks, checks each against the
/// table, and hands out only the requested `start..end`.
struct BlockChecker {
    table: Option<BlockTable>,
    what: String,
    /// Object offset of `pending`'s first byte.
    at: u64,
    /// One past the last byte fetched.
    fetch_to: u64,
    pending: BytesMut,
    start: u64,
    end: u64,
}

impl BlockChecker {
    /// Takes a fetched chunk and returns the checked bytes now ready.
    fn feed(&mut self, chunk: &[u8]) -> Result<Bytes, BlobError> {
        self.pending.extend_from_slice(chunk);
        let Some(table) = &self.table else {
            let ready = self.pending.split().freeze();
            self.at += ready.len() as u64;
            return Ok(ready);
        };
        let mut ready = BytesMut::new();
        loop {
            let block_len = table.block_bytes.min(self.fetch_to - self.at) as usize;
            if block_len == 0 || self.pending.len() < block_len {
                break;
            }
            let data = self.pending.split_to(block_len);
            let index = (self.at / table.block_bytes) as usize;
            if table.checksums.get(index) != Some(&crc32c::crc32c(&data)) {
                return Err(BlobError::Corrupt(format!(
                    "{}: block {index} does not match its checksum",
                    self.what
                )));
            }
            let from = self.start.max(self.at) - self.at;
            let to = self
                .end
                .min(self.at + block_len as u64)
                .saturating_sub(self.at);
            if from < to {
                ready.extend_from_slice(&data[from as usize..to as usize]);
            }
            self.at += block_len as u64;
        }
        Ok(ready.freeze())
    }

    /// At the end of the fetch: everything asked for must have come.
    fn finish(&self) -> Result<(), BlobError> {
        if self.at < self.fetch_to || !self.pending.is_empty() {
            return Err(BlobError::Unavailable(format!(
                "{}: the server sent {} of {} bytes",
                self.what,
                self.at + self.pending.len() as u64,
                self.fetch_to
            )));
        }
        Ok(())
    }
}

/// The checked bytes of `raw` (the fetch), as a stream.
fn checked_stream(
    raw: futures_util::stream::BoxStream<'static, object_store::Result<Bytes>>,
    checker: BlockChecker,
) -> ByteStream {
    futures_util::stream::try_unfold((raw, checker), |(mut raw, mut checker)| async move {
        loop {
            match raw.next().await {
                Some(chunk) => {
                    let chunk = chunk.map_err(|e| {
                        BlobError::Unavailable(format!("reading {}: {e}", checker.what))
                    })?;
                    let ready = checker.feed(&chunk)?;
                    if !ready.is_empty() {
                        return Ok(Some((ready, (raw, checker))));
                    }
                }
                None => {
                    checker.finish()?;
                    return Ok(None);
                }
            }
        }
    })
    .boxed()
}
