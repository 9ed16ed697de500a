//! `kv-counter`: a counter on standard `wasi:keyvalue` only (store and
//! atomics), so it is also what a Spin or wasmCloud key-value component
//! looks like to Hearth.
//!
//! * `POST /increment?key=K`: adds 1 with a compare-and-swap loop (read
//!   with `cas::new`, write with `swap`, retry when someone else won);
//!   answers the new number and `x-cas-retries`.
//! * `POST /atomic?key=K&delta=D`: `atomics::increment`.
//! * `GET /?key=K`: the number (0 if absent).
//! * `GET /open?store=LABEL`: whether this function may open `LABEL`.
//!
//! `K` defaults to `counter`. A store failure is a 503 whose body starts
//! with the `wasi:keyvalue` error.

use hearth_sdk::http::{Request, Response, Service};
use hearth_sdk::keyvalue::{atomics, store};

struct Counter;

fn failure(error: store::Error) -> Response {
    let text = match error {
        store::Error::NoSuchStore => "no-such-store".to_string(),
        store::Error::AccessDenied => "access-denied".to_string(),
        store::Error::Other(message) => format!("other: {message}"),
    };
    Response::text(503, format!("{text}\n"))
}

fn number(value: Option<Vec<u8>>) -> i64 {
    value
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn increment_with_cas(bucket: &store::Bucket, key: &str) -> Result<(i64, u32), store::Error> {
    let mut cas = atomics::Cas::new(bucket, key)?;
    let mut retries = 0;
    loop {
        let next = number(cas.current()?) + 1;
        match atomics::swap(cas, next.to_string().as_bytes()) {
            Ok(()) => return Ok((next, retries)),
            Err(atomics::CasError::CasFailed(again)) => {
                retries += 1;
                cas = again;
            }
            Err(atomics::CasError::StoreError(error)) => return Err(error),
        }
    }
}

impl Service for Counter {
    fn handle(request: Request) -> Response {
        let key = request.query("key").unwrap_or_else(|| "counter".into());
        if request.path() == "/open" {
            let label = request.query("store").unwrap_or_default();
            return match store::open(&label) {
                Ok(_) => Response::text(200, "ok\n"),
                Err(error) => failure(error),
            };
        }
        let bucket = match store::open("") {
            Ok(bucket) => bucket,
            Err(error) => return failure(error),
        };
        match (request.method.as_str(), request.path()) {
            ("POST", "/increment") => match increment_with_cas(&bucket, &key) {
                Ok((value, retries)) => Response::text(200, format!("{value}\n"))
                    .with_header("x-cas-retries", retries.to_string()),
                Err(error) => failure(error),
            },
            ("POST", "/atomic") => {
                let delta = request
                    .query("delta")
                    .and_then(|d| d.parse().ok())
                    .unwrap_or(1);
                match atomics::increment(&bucket, &key, delta) {
                    Ok(value) => Response::text(200, format!("{value}\n")),
                    Err(error) => failure(error),
                }
            }
            ("GET", "/") => match bucket.get(&key) {
                Ok(value) => Response::text(200, format!("{}\n", number(value))),
                Err(error) => failure(error),
            },
            _ => Response::text(404, "not found\n"),
        }
    }
}

hearth_sdk::export_service!(Counter);
