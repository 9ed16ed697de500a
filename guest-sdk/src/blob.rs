//! Blob storage: standard `wasi:blobstore` (re-exported as
//! [`blobstore`], [`container`], [`types`]) and helpers that stream between
//! a blob and any `wasi:io` stream, so an object never has to be in guest
//! memory at once.
//!
//! Containers are the function's app's own (see the host's blob docs);
//! every failure is an `Err(String)` starting with its kind (`not found`,
//! `too large`, `unavailable`, ...), never a trap.

pub use crate::bindings::wasi::blobstore::{blobstore, container, types};
use crate::bindings::wasi::io::streams::{InputStream, OutputStream, StreamError};
use container::Container;
use types::{IncomingValue, OutgoingValue};

/// Bytes moved per stream call.
const CHUNK: u64 = 64 * 1024;

/// The container `name`, created if it does not exist yet.
pub fn open_or_create(name: &str) -> Result<Container, String> {
    match blobstore::get_container(name) {
        Ok(container) => Ok(container),
        Err(error) if error.starts_with("not found") => {
            match blobstore::create_container(name) {
                Ok(container) => Ok(container),
                // Created by someone else in between.
                Err(error) if error.starts_with("already exists") => blobstore::get_container(name),
                Err(error) => Err(error),
            }
        }
        Err(error) => Err(error),
    }
}

/// Stores everything `source` yields as object `name`; returns its size.
/// Nothing is stored if `source` fails or the object is over the limit.
pub fn write_from(container: &Container, name: &str, source: &InputStream) -> Result<u64, String> {
    let value = OutgoingValue::new_outgoing_value();
    container.write_data(name, &value)?;
    let mut written = 0u64;
    {
        let body = value
            .outgoing_value_write_body()
            .map_err(|()| "the value's body was taken already".to_string())?;
        loop {
            match body.blocking_splice(source, CHUNK) {
                Ok(n) => written += n,
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(error)) => return Err(error.to_debug_string()),
            }
        }
    }
    OutgoingValue::finish(value)?;
    Ok(written)
}

/// Stores `data` as object `name`.
pub fn write_bytes(container: &Container, name: &str, data: &[u8]) -> Result<(), String> {
    let value = OutgoingValue::new_outgoing_value();
    container.write_data(name, &value)?;
    {
        let body = value
            .outgoing_value_write_body()
            .map_err(|()| "the value's body was taken already".to_string())?;
        for chunk in data.chunks(4096) {
            body.blocking_write_and_flush(chunk)
                .map_err(|e| stream_error(e, "writing the value"))?;
        }
    }
    OutgoingValue::finish(value)
}

/// Streams bytes `start..=end` of object `name` into `sink`; returns how
/// many were written.
pub fn read_into(
    container: &Container,
    name: &str,
    start: u64,
    end: u64,
    sink: &OutputStream,
) -> Result<u64, String> {
    let value = container.get_data(name, start, end)?;
    let source = IncomingValue::incoming_value_consume_async(value)?;
    let mut copied = 0u64;
    loop {
        match sink.blocking_splice(&source, CHUNK) {
            Ok(n) => copied += n,
            Err(StreamError::Closed) => return Ok(copied),
            Err(StreamError::LastOperationFailed(error)) => return Err(error.to_debug_string()),
        }
    }
}

/// Reads bytes `start..=end` of object `name` into guest memory a chunk
/// at a time (each as the host has it, up to 4 MiB: the host hands its
/// chunks over without copying them first), calling `each` on each;
/// returns how many bytes were read.
pub fn read_each(
    container: &Container,
    name: &str,
    start: u64,
    end: u64,
    mut each: impl FnMut(&[u8]),
) -> Result<u64, String> {
    let value = container.get_data(name, start, end)?;
    let source = IncomingValue::incoming_value_consume_async(value)?;
    let mut read = 0u64;
    loop {
        match source.blocking_read(4 << 20) {
            Ok(chunk) => {
                read += chunk.len() as u64;
                each(&chunk);
            }
            Err(StreamError::Closed) => return Ok(read),
            Err(StreamError::LastOperationFailed(error)) => return Err(error.to_debug_string()),
        }
    }
}

/// Reads bytes `start..=end` of object `name` into memory.
pub fn read_bytes(
    container: &Container,
    name: &str,
    start: u64,
    end: u64,
) -> Result<Vec<u8>, String> {
    let value = container.get_data(name, start, end)?;
    IncomingValue::incoming_value_consume_sync(value)
}

/// Every object name in the container, in name order.
pub fn list(container: &Container) -> Result<Vec<String>, String> {
    let names = container.list_objects()?;
    let mut all = Vec::new();
    loop {
        let (batch, done) = names.read_stream_object_names(1000)?;
        all.extend(batch);
        if done {
            return Ok(all);
        }
    }
}

fn stream_error(error: StreamError, what: &str) -> String {
    match error {
        StreamError::Closed => format!("{what}: the stream is closed"),
        StreamError::LastOperationFailed(error) => error.to_debug_string(),
    }
}
