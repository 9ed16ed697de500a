//! `invoke-chain`: calls the next function by name with
//! `hearth:function/invoke`; load it several times with different
//! `wasi:config` values to make a chain (A calls B calls C).
//!
//! Config: `NAME` (this link's name), `NEXT` (the function to call; none
//! for the last link), `TIMEOUT_MS` (per call).
//!
//! * `GET /`: the last link answers `NAME depth=D request-id=R trace=T`
//!   (from the headers the host propagated); every other link calls
//!   `NEXT` with `/` and answers `NAME -> <what NEXT answered>`.
//! * `GET /call?target=T[&method=M][&path=P][&timeout_ms=N][&idempotent=1]`:
//!   one call to any function; answers the callee's status, headers and body.
//! * `GET /recurse`: calls itself (`NAME`) again, forever: the host's depth
//!   limit ends it.
//!
//! A failed call answers `<status> <error-name>: <message>`: not-found
//! 404, timeout 504, unavailable 503, callee-trapped 502, depth-exceeded
//! 508, invalid-request 400.

use hearth_sdk::config;
use hearth_sdk::http::{Request, Response, Service};
use hearth_sdk::invoke::{self, Error, Options};

struct Chain;

fn setting(key: &str) -> Option<String> {
    config::get(key).ok().flatten().filter(|v| !v.is_empty())
}

fn failure(error: Error) -> Response {
    let (status, name, message) = match error {
        Error::NotFound(m) => (404, "not-found", m),
        Error::Timeout(m) => (504, "timeout", m),
        Error::Unavailable(m) => (503, "unavailable", m),
        Error::CalleeTrapped(m) => (502, "callee-trapped", m),
        Error::DepthExceeded(m) => (508, "depth-exceeded", m),
        Error::InvalidRequest(m) => (400, "invalid-request", m),
    };
    Response::text(status, format!("{name}: {message}\n"))
}

fn call(
    target: &str,
    method: &str,
    path: &str,
    options: Options,
) -> Result<invoke::Response, Error> {
    invoke::call(
        target,
        &invoke::Request {
            method: method.into(),
            path_with_query: path.into(),
            headers: vec![("accept".into(), b"text/plain".to_vec())],
            body: Vec::new(),
        },
        options,
    )
}

fn options(timeout_ms: Option<u32>, idempotent: bool) -> Options {
    Options {
        timeout_ms: timeout_ms.or_else(|| setting("TIMEOUT_MS").and_then(|t| t.parse().ok())),
        idempotent,
    }
}

impl Service for Chain {
    fn handle(request: Request) -> Response {
        let name = setting("NAME").unwrap_or_else(|| "invoke-chain".into());
        match request.path() {
            "/" => match setting("NEXT") {
                None => Response::text(
                    200,
                    format!(
                        "{name} depth={} request-id={} trace={}\n",
                        request.header("x-hearth-invoke-depth").unwrap_or("0"),
                        request.header("x-request-id").unwrap_or("-"),
                        request
                            .header("traceparent")
                            .and_then(|t| t.split('-').nth(1))
                            .unwrap_or("-"),
                    ),
                ),
                Some(next) => match call(&next, "GET", "/", options(None, false)) {
                    Ok(response) if response.status == 200 => Response::text(
                        200,
                        format!("{name} -> {}", String::from_utf8_lossy(&response.body)),
                    ),
                    Ok(response) => Response::new(response.status).with_body(response.body),
                    Err(error) => failure(error),
                },
            },
            "/call" => {
                let target = request.query("target").unwrap_or_default();
                let path = request.query("path").unwrap_or_else(|| "/".into());
                let method = request.query("method").unwrap_or_else(|| "GET".into());
                let timeout_ms = request.query("timeout_ms").and_then(|t| t.parse().ok());
                let idempotent = request.query("idempotent").is_some_and(|v| v == "1");
                match call(&target, &method, &path, options(timeout_ms, idempotent)) {
                    Ok(response) => {
                        let mut reply = Response::new(response.status);
                        for (name, value) in &response.headers {
                            if !["content-length", "transfer-encoding", "connection"]
                                .contains(&name.as_str())
                            {
                                reply = reply.with_header(name, value);
                            }
                        }
                        reply.with_body(response.body)
                    }
                    Err(error) => failure(error),
                }
            }
            "/recurse" => match call(&name, "GET", "/recurse", options(None, false)) {
                Ok(response) => Response::new(response.status).with_body(response.body),
                Err(error) => failure(error),
            },
            _ => Response::text(404, "not found\n"),
        }
    }
}

hearth_sdk::export_service!(Chain);
