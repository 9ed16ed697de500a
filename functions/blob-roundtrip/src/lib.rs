//! Blob storage over HTTP, streamed both ways through `wasi:blobstore`:
//!
//! * `PUT /objects/NAME`: stores the request body (201, `stored N bytes`).
//! * `GET /objects/NAME`: the object; a `range: bytes=A-B` (or `A-`) header
//!   gives 206 with that part.
//! * `GET /objects`: the names, one per line. `GET /info/NAME`: `size N`.
//! * `GET /digest/NAME`: reads the object into guest memory (rather than
//!   splicing it to the response) and answers `size N fnv1a64 HEX`.
//! * `DELETE /objects/NAME`: 204 (also for a missing object).
//! * `POST /copy?from=A&to=B`, `POST /move?from=A&to=B`: 204.
//!
//! `?container=C` picks the container (default `files`; created on first
//! write). Errors answer with the store's message and a status from its
//! kind: 400 invalid name or range, 404 not found, 413 too large, 502
//! corrupt, 503 unavailable.

use hearth_sdk::bindings::exports::hearth::function::lifecycle::Guest as Lifecycle;
use hearth_sdk::bindings::exports::wasi::http::incoming_handler::Guest as Handler;
use hearth_sdk::bindings::wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use hearth_sdk::blob;

struct BlobRoundtrip;

impl Lifecycle for BlobRoundtrip {
    fn init() -> Result<(), String> {
        Ok(())
    }
    fn shutdown() {}
}

impl Handler for BlobRoundtrip {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_else(|| "/".into());
        let (path, query) = path_with_query
            .split_once('?')
            .unwrap_or((path_with_query.as_str(), ""));
        let param = |name: &str| {
            query.split('&').find_map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (key == name).then(|| decode(value))
            })
        };
        let container_name = param("container").unwrap_or_else(|| "files".into());
        let method = request.method();
        let result = match (&method, path) {
            (Method::Get, "/objects") => list(&container_name),
            (Method::Put, p) if p.starts_with("/objects/") => {
                put(&container_name, &decode(&p["/objects/".len()..]), request)
            }
            (Method::Get, p) if p.starts_with("/objects/") => {
                let range = header(&request, "range");
                return get(
                    &container_name,
                    &decode(&p["/objects/".len()..]),
                    range,
                    out,
                );
            }
            (Method::Get, p) if p.starts_with("/info/") => {
                info(&container_name, &decode(&p["/info/".len()..]))
            }
            (Method::Get, p) if p.starts_with("/digest/") => {
                digest(&container_name, &decode(&p["/digest/".len()..]))
            }
            (Method::Delete, p) if p.starts_with("/objects/") => {
                blob::blobstore::get_container(&container_name)
                    .and_then(|c| c.delete_object(&decode(&p["/objects/".len()..])))
                    .map(|()| (204, String::new()))
            }
            (Method::Post, "/copy" | "/move") => {
                let (Some(from), Some(to)) = (param("from"), param("to")) else {
                    return respond(out, 400, "invalid argument: ?from=A&to=B\n");
                };
                let src = blob::types::ObjectId {
                    container: container_name.clone(),
                    object: from,
                };
                let dest = blob::types::ObjectId {
                    container: container_name.clone(),
                    object: to,
                };
                if path == "/copy" {
                    blob::blobstore::copy_object(&src, &dest)
                } else {
                    blob::blobstore::move_object(&src, &dest)
                }
                .map(|()| (204, String::new()))
            }
            _ => Ok((404, "no such route\n".into())),
        };
        match result {
            Ok((status, body)) => respond(out, status, &body),
            Err(error) => respond(out, status_of(&error), &format!("{error}\n")),
        }
    }
}

fn list(container: &str) -> Result<(u16, String), String> {
    let container = blob::blobstore::get_container(container)?;
    let names = blob::list(&container)?;
    Ok((200, names.iter().map(|n| format!("{n}\n")).collect()))
}

fn info(container: &str, name: &str) -> Result<(u16, String), String> {
    let container = blob::blobstore::get_container(container)?;
    let info = container.object_info(name)?;
    Ok((200, format!("size {}\n", info.size)))
}

fn digest(container: &str, name: &str) -> Result<(u16, String), String> {
    let container = blob::blobstore::get_container(&container.to_string())?;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let size = blob::read_each(&container, name, 0, u64::MAX, |chunk| {
        for byte in chunk {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    })?;
    Ok((200, format!("size {size} fnv1a64 {hash:016x}\n")))
}

fn put(container: &str, name: &str, request: IncomingRequest) -> Result<(u16, String), String> {
    let container = blob::open_or_create(container)?;
    let body = request
        .consume()
        .map_err(|()| "invalid argument: the body was consumed".to_string())?;
    let stream = body
        .stream()
        .map_err(|()| "invalid argument: no body stream".to_string())?;
    let size = blob::write_from(&container, name, &stream)?;
    Ok((201, format!("stored {size} bytes\n")))
}

/// Streams the object (or the range asked for) into the response.
fn get(container: &str, name: &str, range: Option<String>, out: ResponseOutparam) {
    let opened = blob::blobstore::get_container(container)
        .and_then(|c| c.object_info(name).map(|info| (c, info.size)));
    let (container, size) = match opened {
        Ok(found) => found,
        Err(error) => return respond(out, status_of(&error), &format!("{error}\n")),
    };
    let (status, start, end) = match range.as_deref().map(|r| parse_range(r, size)) {
        None => (200, 0, size.saturating_sub(1)),
        Some(Some((start, end))) => (206, start, end),
        Some(None) => return respond(out, 416, &format!("invalid range for {size} bytes\n")),
    };
    let length = if size == 0 { 0 } else { end - start + 1 };
    let headers = Fields::new();
    let _ = headers.append("content-length", length.to_string().as_bytes());
    if status == 206 {
        let _ = headers.append(
            "content-range",
            format!("bytes {start}-{end}/{size}").as_bytes(),
        );
    }
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let body = response.body().expect("a new response has a body");
    ResponseOutparam::set(out, Ok(response));
    if length > 0 {
        let Ok(sink) = body.write() else { return };
        if let Err(error) = blob::read_into(&container, name, start, end, &sink) {
            // The status is sent; the body ends short, which the client sees.
            eprintln!("blob-roundtrip: reading {name} failed mid-stream: {error}");
            return;
        }
    }
    let _ = OutgoingBody::finish(body, None);
}

/// `bytes=A-B`, `bytes=A-` or `bytes=-N` within `size`.
fn parse_range(header: &str, size: u64) -> Option<(u64, u64)> {
    let spec = header.trim().strip_prefix("bytes=")?;
    let (from, to) = spec.split_once('-')?;
    let (start, end) = match (from.trim(), to.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            (size.checked_sub(n.min(size))?, size.checked_sub(1)?)
        }
        (from, "") => (from.parse().ok()?, size.checked_sub(1)?),
        (from, to) => (
            from.parse().ok()?,
            to.parse::<u64>().ok()?.min(size.checked_sub(1)?),
        ),
    };
    (start <= end && start < size).then_some((start, end))
}

fn header(request: &IncomingRequest, name: &str) -> Option<String> {
    request
        .headers()
        .get(&name.to_string())
        .into_iter()
        .next()
        .and_then(|v| String::from_utf8(v).ok())
}

fn status_of(error: &str) -> u16 {
    let kinds = [
        ("invalid", 400),
        ("not found", 404),
        ("already exists", 409),
        ("too large", 413),
        ("corrupt", 502),
        ("unavailable", 503),
    ];
    kinds
        .iter()
        .find(|(kind, _)| error.starts_with(kind))
        .map_or(500, |(_, status)| *status)
}

fn respond(out: ResponseOutparam, status: u16, text: &str) {
    let headers = Fields::new();
    let _ = headers.append("content-type", b"text/plain; charset=utf-8");
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let body = response.body().expect("a new response has a body");
    ResponseOutparam::set(out, Ok(response));
    if let Ok(stream) = body.write() {
        for chunk in text.as_bytes().chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                return;
            }
        }
    }
    let _ = OutgoingBody::finish(body, None);
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = text
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

hearth_sdk::bindings::export!(BlobRoundtrip with_types_in hearth_sdk::bindings);
