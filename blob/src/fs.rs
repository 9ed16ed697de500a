//! The `fs` backend, the default: objects as files under one directory.
//!
//! # Layout and contract
//!
//! ```text
//! ROOT/CONTAINER/.container          the container's creation time (ms)
//! ROOT/CONTAINER/objects/HH/SHA256   one object: data, checksums, name, footer
//! ROOT/CONTAINER/tmp/                writes in progress (emptied at open)
//! ROOT/.trash/                       containers being deleted
//! ```
//!
//! * An object's file name is the SHA-256 of its name (sharded by the
//!   first byte), so no object name ever becomes a path: a name cannot
//!   escape `ROOT`, and any UTF-8 name the crate contract allows works.
//!   Container names (plain `a-z0-9-_.`) are directory names.
//! * An object file is its data, a CRC-32C of every [`BLOCK_BYTES`] block,
//!   its name, then a fixed footer (magic, size, creation time, name
//!   length, block size, CRC of the table and name, CRC of the footer). Every block a read
//!   touches is checked before its bytes are handed out: a mismatch is
//!   [`BlobError::Corrupt`].
//! * A write goes to a file in `tmp/`, is fsynced, renamed over the object
//!   and the directory is fsynced: readers see the old object or the new
//!   one, never a part. A write that fails or is dropped removes its temp
//!   file; one left by a crash is removed when the store is opened.
//! * Listing reads every object's footer, so it costs one small read per
//!   object in the container: fine for a node-local default, not for
//!   millions of objects (use `s3` or `remote` there).

use crate::{
    BlobBackend, BlobError, ByteRange, ByteStream, ContainerInfo, ListPage, ObjectInfo, now_ms,
};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The checksummed unit of an object file.
pub const BLOCK_BYTES: u64 = 64 * 1024;
/// How much one read step takes from the file (whole blocks).
const READ_STEP_BYTES: u64 = 16 * BLOCK_BYTES;
const MAGIC: &[u8; 8] = b"HRTHBLB1";
const FOOTER_BYTES: u64 = 40;
const CONTAINER_FILE: &str = ".container";

/// The `fs` backend; see the module docs.
pub struct FsBackend {
    root: PathBuf,
    temp_names: AtomicU64,
}

/// An object file's footer and checksum table.
struct Header {
    size: u64,
    created_at_ms: u64,
    block_bytes: u64,
    checksums: Vec<u32>,
    name: String,
}

fn io_error(what: &str, path: &Path, error: std::io::Error) -> BlobError {
    BlobError::Other(format!("{what} {}: {error}", path.display()))
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BlobError> + Send + 'static,
) -> Result<T, BlobError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| BlobError::Other(format!("file task failed: {e}")))?
}

fn sync_dir(dir: &Path) -> Result<(), BlobError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("fsync", dir, e))
}

impl FsBackend {
    /// Opens (creating) a store at `root`, removing writes a crash left.
    pub fn open(root: &Path) -> Result<Self, BlobError> {
        std::fs::create_dir_all(root).map_err(|e| io_error("create", root, e))?;
        let trash = root.join(".trash");
        if trash.exists() {
            std::fs::remove_dir_all(&trash).map_err(|e| io_error("clear", &trash, e))?;
        }
        let entries = std::fs::read_dir(root).map_err(|e| io_error("read", root, e))?;
        for entry in entries.flatten() {
            let tmp = entry.path().join("tmp");
            if tmp.is_dir() {
                for stale in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
                    let _ = std::fs::remove_file(stale.path());
                }
            }
        }
        Ok(FsBackend {
            root: root.to_path_buf(),
            temp_names: AtomicU64::new(0),
        })
    }

    fn container_dir(&self, container: &str) -> PathBuf {
        self.root.join(container)
    }

    fn object_path(&self, container: &str, name: &str) -> PathBuf {
        let digest = hex::encode(Sha256::digest(name.as_bytes()));
        self.container_dir(container)
            .join("objects")
            .join(&digest[..2])
            .join(digest)
    }

    fn temp_path(&self, container: &str) -> PathBuf {
        let n = self.temp_names.fetch_add(1, Ordering::Relaxed);
        self.container_dir(container).join("tmp").join(format!(
            "{}-{}-{n}.part",
            std::process::id(),
            now_ms()
        ))
    }

    /// Opens an object of an existing container, its header checked.
    async fn open_checked(
        &self,
        container: &str,
        name: &str,
    ) -> Result<(File, Header, PathBuf), BlobError> {
        let path = self.object_path(container, name);
        let dir = self.container_dir(container);
        let (c, n) = (container.to_string(), name.to_string());
        blocking(move || {
            FsBackend::read_container(&dir, &c)?;
            let (file, header) = open_object(&path, &c, &n)?;
            Ok((file, header, path))
        })
        .await
    }

    fn read_container(dir: &Path, container: &str) -> Result<ContainerInfo, BlobError> {
        let file = dir.join(CONTAINER_FILE);
        match std::fs::read_to_string(&file) {
            Ok(text) => Ok(ContainerInfo {
                name: container.into(),
                created_at_ms: text.trim().parse().unwrap_or(0),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(BlobError::NotFound(format!("container `{container}`")))
            }
            Err(e) => Err(io_error("read", &file, e)),
        }
    }
}

impl Header {
    /// The object it describes, in `container`.
    fn info(&self, container: &str) -> ObjectInfo {
        ObjectInfo {
            name: self.name.clone(),
            container: container.into(),
            created_at_ms: self.created_at_ms,
            size: self.size,
        }
    }
}

/// Reads an object file's footer, table and name, checking them.
fn read_header(file: &mut File, path: &Path) -> Result<Header, BlobError> {
    let corrupt = |why: &str| BlobError::Corrupt(format!("{}: {why}", path.display()));
    let length = file
        .metadata()
        .map_err(|e| io_error("stat", path, e))?
        .len();
    if length < FOOTER_BYTES {
        return Err(corrupt("shorter than its footer"));
    }
    let mut footer = [0u8; FOOTER_BYTES as usize];
    file.seek(SeekFrom::Start(length - FOOTER_BYTES))
        .and_then(|_| file.read_exact(&mut footer))
        .map_err(|e| io_error("read", path, e))?;
    if &footer[..8] != MAGIC {
        return Err(corrupt("bad magic"));
    }
    if crc32c::crc32c(&footer[..36])
        != u32::from_le_bytes(footer[36..].try_into().expect("4 bytes"))
    {
        return Err(corrupt("footer does not match its checksum"));
    }
    let u64_at = |at: usize| u64::from_le_bytes(footer[at..at + 8].try_into().expect("8 bytes"));
    let u32_at = |at: usize| u32::from_le_bytes(footer[at..at + 4].try_into().expect("4 bytes"));
    let (size, created_at_ms) = (u64_at(8), u64_at(16));
    let (name_len, block_bytes, table_crc) = (u32_at(24) as u64, u32_at(28) as u64, u32_at(32));
    if block_bytes == 0 {
        return Err(corrupt("zero block size"));
    }
    let blocks = size.div_ceil(block_bytes);
    let table_len = blocks * 4 + name_len;
    if size + table_len + FOOTER_BYTES != length {
        return Err(corrupt("sizes do not add up"));
    }
    let mut table = vec![0u8; table_len as usize];
    file.seek(SeekFrom::Start(size))
        .and_then(|_| file.read_exact(&mut table))
        .map_err(|e| io_error("read", path, e))?;
    if crc32c::crc32c(&table) != table_crc {
        return Err(corrupt("checksum table does not match"));
    }
    let checksums = table[..(blocks * 4) as usize]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    let name = String::from_utf8(table[(blocks * 4) as usize..].to_vec())
        .map_err(|_| corrupt("name is not UTF-8"))?;
    Ok(Header {
        size,
        created_at_ms,
        block_bytes,
        checksums,
        name,
    })
}

fn open_object(path: &Path, container: &str, name: &str) -> Result<(File, Header), BlobError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BlobError::NotFound(format!(
                "object `{name}` in container `{container}`"
            )));
        }
        Err(e) => return Err(io_error("open", path, e)),
    };
    let header = read_header(&mut file, path)?;
    if header.name != name {
        return Err(BlobError::Corrupt(format!(
            "{} holds `{}`, not `{name}`",
            path.display(),
            header.name
        )));
    }
    Ok((file, header))
}

/// A write in progress: the temp file, its block checksums so far, and the
/// partial last block. Dropped before commit, it removes the temp file.
struct PendingWrite {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    checksums: Vec<u32>,
    block: Vec<u8>,
}

impl PendingWrite {
    fn append(&mut self, mut data: &[u8]) -> Result<(), BlobError> {
        let file = self.file.as_mut().expect("open until committed");
        file.write_all(data)
            .map_err(|e| io_error("write", &self.path, e))?;
        self.size += data.len() as u64;
        while !data.is_empty() {
            let take = (BLOCK_BYTES as usize - self.block.len()).min(data.len());
            self.block.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.block.len() == BLOCK_BYTES as usize {
                self.checksums.push(crc32c::crc32c(&self.block));
                self.block.clear();
            }
        }
        Ok(())
    }

    /// Writes the table, name and footer, fsyncs and renames over `target`.
    fn commit(mut self, name: &str, target: &Path) -> Result<u64, BlobError> {
        if !self.block.is_empty() {
            self.checksums.push(crc32c::crc32c(&self.block));
        }
        let created_at_ms = now_ms();
        let mut table: Vec<u8> = self
            .checksums
            .iter()
            .flat_map(|c| c.to_le_bytes())
            .collect();
        table.extend_from_slice(name.as_bytes());
        let mut footer = Vec::with_capacity(FOOTER_BYTES as usize);
        footer.extend_from_slice(MAGIC);
        footer.extend_from_slice(&self.size.to_le_bytes());
        footer.extend_from_slice(&created_at_ms.to_le_bytes());
        footer.extend_from_slice(&(name.len() as u32).to_le_bytes());
        footer.extend_from_slice(&(BLOCK_BYTES as u32).to_le_bytes());
        footer.extend_from_slice(&crc32c::crc32c(&table).to_le_bytes());
        let footer_crc = crc32c::crc32c(&footer);
        footer.extend_from_slice(&footer_crc.to_le_bytes());
        let mut file = self.file.take().expect("open until committed");
        file.write_all(&table)
            .and_then(|_| file.write_all(&footer))
            .and_then(|_| file.sync_all())
            .map_err(|e| io_error("write", &self.path, e))?;
        drop(file);
        let dir = target.parent().expect("objects/HH");
        std::fs::create_dir_all(dir).map_err(|e| io_error("create", dir, e))?;
        std::fs::rename(&self.path, target).map_err(|e| io_error("rename", target, e))?;
        sync_dir(dir)?;
        Ok(created_at_ms)
    }
}

impl Drop for PendingWrite {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[async_trait]
impl BlobBackend for FsBackend {
    fn kind(&self) -> &'static str {
        "fs"
    }

    async fn create_container(&self, container: &str) -> Result<ContainerInfo, BlobError> {
        let dir = self.container_dir(container);
        let root = self.root.clone();
        let container = container.to_string();
        blocking(move || {
            if dir.join(CONTAINER_FILE).exists() {
                return Err(BlobError::AlreadyExists(format!("container `{container}`")));
            }
            for sub in ["objects", "tmp"] {
                std::fs::create_dir_all(dir.join(sub)).map_err(|e| io_error("create", &dir, e))?;
            }
            let created_at_ms = now_ms();
            let marker = dir.join(CONTAINER_FILE);
            std::fs::write(&marker, created_at_ms.to_string())
                .and_then(|_| File::open(&marker)?.sync_all())
                .map_err(|e| io_error("write", &marker, e))?;
            sync_dir(&dir)?;
            sync_dir(&root)?;
            Ok(ContainerInfo {
                name: container,
                created_at_ms,
            })
        })
        .await
    }

    async fn container_info(&self, container: &str) -> Result<ContainerInfo, BlobError> {
        let dir = self.container_dir(container);
        let container = container.to_string();
        blocking(move || FsBackend::read_container(&dir, &container)).await
    }

    async fn delete_container(&self, container: &str) -> Result<(), BlobError> {
        let dir = self.container_dir(container);
        let trash = self
            .root
            .join(".trash")
            .join(self.temp_path(container).file_name().expect("a name"));
        let root = self.root.clone();
        blocking(move || {
            if !dir.exists() {
                return Ok(());
            }
            // Gone at once (a rename), then removed at leisure.
            let parent = trash.parent().expect("ROOT/.trash");
            std::fs::create_dir_all(parent).map_err(|e| io_error("create", parent, e))?;
            std::fs::rename(&dir, &trash).map_err(|e| io_error("delete", &dir, e))?;
            sync_dir(&root)?;
            std::fs::remove_dir_all(&trash).map_err(|e| io_error("delete", &trash, e))
        })
        .await
    }

    async fn put(
        &self,
        container: &str,
        name: &str,
        mut body: ByteStream,
        limit: u64,
    ) -> Result<ObjectInfo, BlobError> {
        let dir = self.container_dir(container);
        let target = self.object_path(container, name);
        let temp = self.temp_path(container);
        let owned = (container.to_string(), name.to_string());
        let mut pending = blocking(move || {
            FsBackend::read_container(&dir, &owned.0)?;
            let file = File::create(&temp).map_err(|e| io_error("create", &temp, e))?;
            Ok(PendingWrite {
                path: temp,
                file: Some(file),
                size: 0,
                checksums: Vec::new(),
                block: Vec::with_capacity(BLOCK_BYTES as usize),
            })
        })
        .await?;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            if pending.size + chunk.len() as u64 > limit {
                return Err(BlobError::TooLarge { limit });
            }
            pending = blocking(move || {
                pending.append(&chunk)?;
                Ok(pending)
            })
            .await?;
        }
        let size = pending.size;
        let name_owned = name.to_string();
        let created_at_ms = blocking(move || pending.commit(&name_owned, &target)).await?;
        Ok(ObjectInfo {
            name: name.into(),
            container: container.into(),
            created_at_ms,
            size,
        })
    }

    async fn get(
        &self,
        container: &str,
        name: &str,
        range: ByteRange,
    ) -> Result<(ObjectInfo, ByteStream), BlobError> {
        let (file, header, path) = self.open_checked(container, name).await?;
        let info = header.info(container);
        let (start, end) = range.clamp(header.size);
        let reader = BlockReader {
            file,
            path,
            header,
            next: start,
            end,
        };
        let body = futures_util::stream::try_unfold(reader, |reader| async move {
            if reader.next >= reader.end {
                return Ok(None);
            }
            let (chunk, reader) = blocking(move || {
                let mut reader = reader;
                let chunk = reader.read_step()?;
                Ok((chunk, reader))
            })
            .await?;
            Ok(Some((chunk, reader)))
        })
        .boxed();
        Ok((info, body))
    }

    async fn info(&self, container: &str, name: &str) -> Result<ObjectInfo, BlobError> {
        let (_, header, _) = self.open_checked(container, name).await?;
        Ok(header.info(container))
    }

    async fn delete(&self, container: &str, name: &str) -> Result<(), BlobError> {
        let path = self.object_path(container, name);
        let dir = self.container_dir(container);
        let c = container.to_string();
        blocking(move || {
            FsBackend::read_container(&dir, &c)?;
            match std::fs::remove_file(&path) {
                Ok(()) => sync_dir(path.parent().expect("objects/HH")),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_error("delete", &path, e)),
            }
        })
        .await
    }

    async fn list(
        &self,
        container: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, BlobError> {
        let dir = self.container_dir(container);
        let c = container.to_string();
        let after = after.map(str::to_string);
        blocking(move || {
            FsBackend::read_container(&dir, &c)?;
            let objects = dir.join("objects");
            let mut names = Vec::new();
            let shards = std::fs::read_dir(&objects).map_err(|e| io_error("list", &objects, e))?;
            for shard in shards.flatten() {
                let Ok(files) = std::fs::read_dir(shard.path()) else {
                    continue;
                };
                for file in files.flatten() {
                    let path = file.path();
                    // An object deleted while listing is simply not listed.
                    let Ok(mut handle) = File::open(&path) else {
                        continue;
                    };
                    let header = read_header(&mut handle, &path)?;
                    if after
                        .as_deref()
                        .is_none_or(|after| header.name.as_str() > after)
                    {
                        names.push(header.name);
                    }
                }
            }
            names.sort_unstable();
            let next = (names.len() > limit).then(|| names[limit - 1].clone());
            names.truncate(limit);
            Ok(ListPage { names, next })
        })
        .await
    }

    async fn ping(&self) -> Result<(), BlobError> {
        let root = self.root.clone();
        blocking(move || {
            std::fs::metadata(&root)
                .map(|_| ())
                .map_err(|e| BlobError::Unavailable(format!("{}: {e}", root.display())))
        })
        .await
    }
}

/// Streams a range of an object file, whole blocks at a time, checking
/// each block's CRC before handing out any of its bytes.
struct BlockReader {
    file: File,
    path: PathBuf,
    header: Header,
    /// The next byte to hand out.
    next: u64,
    /// One past the last byte to hand out.
    end: u64,
}

impl BlockReader {
    fn read_step(&mut self) -> Result<Bytes, BlobError> {
        let block = self.header.block_bytes;
        let first_block = self.next / block;
        let step_end = ((first_block * block) + READ_STEP_BYTES.max(block))
            .min(self.end.div_ceil(block) * block)
            .min(self.header.size);
        let read_from = first_block * block;
        let mut buffer = vec![0u8; (step_end - read_from) as usize];
        self.file
            .seek(SeekFrom::Start(read_from))
            .and_then(|_| self.file.read_exact(&mut buffer))
            .map_err(|e| io_error("read", &self.path, e))?;
        for (i, data) in buffer.chunks(block as usize).enumerate() {
            let index = first_block as usize + i;
            if crc32c::crc32c(data) != self.header.checksums[index] {
                return Err(BlobError::Corrupt(format!(
                    "object `{}`: block {index} (bytes {}..{}) does not match its checksum",
                    self.header.name,
                    index as u64 * block,
                    index as u64 * block + data.len() as u64
                )));
            }
        }
        let skip = (self.next - read_from) as usize;
        let take = (self.end.min(step_end) - self.next) as usize;
        self.next += take as u64;
        let mut bytes = Bytes::from(buffer);
        Ok(bytes.split_off(skip).split_to(take))
    }
}
