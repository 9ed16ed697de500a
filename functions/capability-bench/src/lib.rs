//! `capability-bench`: times capability calls from inside the guest, for
//! `hearth-bench capabilities`. Every endpoint makes `n` calls, timing each
//! with `wasi:clocks/monotonic-clock`, and answers one line per call: its
//! duration in nanoseconds. A failed call answers 500 with the error.
//!
//! * `POST /state?op=get|set&n=N&key=K`: `hearth:function/state` host
//!   calls on the app's own store (key `K`, default `bench`, a 100-byte
//!   value).
//! * `POST /sidecar?op=get|set&n=N&addr=HOST:PORT&key=K`: the same operation as a
//!   Dapr-style sidecar hop: an outbound `wasi:http` request to the state
//!   API at `addr` (`GET /v1.0/state/STORE/KEY`, `POST /v1.0/state/STORE`
//!   with `[{"key":…,"value":…}]`). Needs `addr`'s host in
//!   `allowed_outbound_hosts`.
//! * `POST /invoke?target=T&n=N`: `hearth:function/invoke` calls of `GET /`.
//! * `POST /config?n=N`: `wasi:config` `get` calls: a host call that
//!   touches no backend, i.e. the cost of the boundary itself.

use hearth_sdk::bindings::wasi::clocks::monotonic_clock;
use hearth_sdk::bindings::wasi::http::outgoing_handler;
use hearth_sdk::bindings::wasi::http::types::{
    Fields, Method, OutgoingBody, OutgoingRequest, Scheme,
};
use hearth_sdk::http::{Request, Response, Service};
use hearth_sdk::invoke;
use hearth_sdk::state::{Precondition, Store};

struct Bench;

const VALUE: [u8; 100] = [b'v'; 100];

fn timed(n: usize, mut call: impl FnMut() -> Result<(), String>) -> Result<String, String> {
    let mut out = String::with_capacity(n * 8);
    for _ in 0..n {
        let started = monotonic_clock::now();
        call()?;
        out.push_str(&(monotonic_clock::now() - started).to_string());
        out.push('\n');
    }
    Ok(out)
}

/// One HTTP/1 request through `wasi:http/outgoing-handler`; the status.
fn http(method: Method, authority: &str, path: &str, body: &[u8]) -> Result<u16, String> {
    let headers = Fields::new();
    if !body.is_empty() {
        headers
            .append("content-type", b"application/json")
            .map_err(|e| format!("{e:?}"))?;
    }
    let request = OutgoingRequest::new(headers);
    request.set_method(&method).map_err(|()| "method")?;
    request
        .set_scheme(Some(&Scheme::Http))
        .map_err(|()| "scheme")?;
    request
        .set_authority(Some(authority))
        .map_err(|()| "authority")?;
    request
        .set_path_with_query(Some(path))
        .map_err(|()| "path")?;
    let outgoing = request.body().map_err(|()| "body")?;
    {
        let stream = outgoing.write().map_err(|()| "write")?;
        if !body.is_empty() {
            stream
                .blocking_write_and_flush(body)
                .map_err(|e| format!("{e:?}"))?;
        }
    }
    OutgoingBody::finish(outgoing, None).map_err(|e| format!("{e:?}"))?;
    let future = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    future.subscribe().block();
    let response = future
        .get()
        .ok_or("no response")?
        .map_err(|()| "response taken")?
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let incoming = response.consume().map_err(|()| "consume")?;
    {
        let stream = incoming.stream().map_err(|()| "stream")?;
        while stream.blocking_read(64 * 1024).is_ok() {}
    }
    Ok(status)
}

fn run(request: &Request) -> Result<String, String> {
    let n: usize = request
        .query("n")
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let op = request.query("op").unwrap_or_else(|| "get".into());
    let key = request.query("key").unwrap_or_else(|| "bench".into());
    match request.path() {
        "/state" => {
            let store = Store::open("").map_err(|e| format!("{e:?}"))?;
            store
                .set(&key, &VALUE, &Precondition::None, None)
                .map_err(|e| format!("{e:?}"))?;
            timed(n, || match op.as_str() {
                "set" => store
                    .set(&key, &VALUE, &Precondition::None, None)
                    .map(drop)
                    .map_err(|e| format!("{e:?}")),
                _ => store.get(&key).map(drop).map_err(|e| format!("{e:?}")),
            })
        }
        "/sidecar" => {
            let addr = request.query("addr").ok_or("give addr")?;
            let body = format!(
                "[{{\"key\":\"{key}\",\"value\":\"{}\"}}]",
                String::from_utf8_lossy(&VALUE)
            );
            let get_path = format!("/v1.0/state/statestore/{key}");
            http(
                Method::Post,
                &addr,
                "/v1.0/state/statestore",
                body.as_bytes(),
            )?;
            timed(n, || {
                let status = match op.as_str() {
                    "set" => http(
                        Method::Post,
                        &addr,
                        "/v1.0/state/statestore",
                        body.as_bytes(),
                    )?,
                    _ => http(Method::Get, &addr, &get_path, b"")?,
                };
                match status {
                    200 | 204 => Ok(()),
                    other => Err(format!("sidecar answered {other}")),
                }
            })
        }
        "/invoke" => {
            let target = request.query("target").ok_or("give target")?;
            let call = invoke::Request {
                method: "GET".into(),
                path_with_query: "/".into(),
                headers: Vec::new(),
                body: Vec::new(),
            };
            let options = invoke::Options {
                timeout_ms: None,
                idempotent: false,
            };
            timed(n, || {
                invoke::call(&target, &call, options)
                    .map(drop)
                    .map_err(|e| format!("{e:?}"))
            })
        }
        "/config" => timed(n, || {
            hearth_sdk::config::get("bench")
                .map(drop)
                .map_err(|e| format!("{e:?}"))
        }),
        other => Err(format!("no endpoint {other}")),
    }
}

impl Service for Bench {
    fn handle(request: Request) -> Response {
        match run(&request) {
            Ok(lines) => Response::text(200, lines),
            Err(error) => Response::text(500, format!("{error}\n")),
        }
    }
}

hearth_sdk::export_service!(Bench);
