//! `caps-p3`: every Hearth capability called from WASI 0.3 async handlers,
//! and a message handler in the same component.
//!
//! * `GET /kv/K`: increments `K` (`wasi:keyvalue/atomics`), answers `K=N`.
//! * `GET /state-set?key=K&value=V`: writes `K` (`hearth:function/state`).
//! * `GET /state/K`: the value of `K`, 404 if absent.
//! * `GET /config/K`: `wasi:config` value `K`, 404 if absent.
//! * `GET /invoke?target=T`: calls function `T` at `/` (`hearth:function/invoke`)
//!   and answers with its status and body.
//! * `GET /publish?topic=T&data=D`: publishes `D` to `T`, answers 202 with
//!   the message id.
//! * `GET /blob?name=N&data=D`: writes `D` to object `N` of container
//!   `p3` (`wasi:blobstore`) and answers what reading it back gave.
//!
//! Messages (`wasi:messaging/incoming-handler`, exported next to the p3
//! HTTP handler): each is stored at state key `message/<data>`, and
//! `handled` counts them.

use hearth_sdk::keyvalue::{atomics, store};
use hearth_sdk::messages::{self, Handler, Incoming};
use hearth_sdk::p3::{self, ErrorCode, Request, Response, Service};
use hearth_sdk::{blob, config, invoke, state};

struct Caps;

fn query(path: &str, key: &str) -> Option<String> {
    let (_, query) = path.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

fn failed(what: &str, detail: impl std::fmt::Debug) -> Result<Response, ErrorCode> {
    p3::text(500, format!("{what}: {detail:?}\n"))
}

impl Service for Caps {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let path = request.get_path_with_query().unwrap_or_default();
        let route = path.split('?').next().unwrap_or_default().to_string();
        if let Some(key) = route.strip_prefix("/kv/") {
            let bucket = match store::open("") {
                Ok(bucket) => bucket,
                Err(e) => return failed("keyvalue open", e),
            };
            return match atomics::increment(&bucket, key, 1) {
                Ok(value) => p3::text(200, format!("{key}={value}\n")),
                Err(e) => failed("increment", e),
            };
        }
        if route == "/state-set" {
            let (Some(key), Some(value)) = (query(&path, "key"), query(&path, "value")) else {
                return p3::text(400, "key and value, please\n");
            };
            let store = match state::Store::open("") {
                Ok(store) => store,
                Err(e) => return failed("state open", e),
            };
            return match store.set(&key, value.as_bytes(), &state::Precondition::None, None) {
                Ok(_) => p3::text(200, "stored\n"),
                Err(e) => failed("state set", e),
            };
        }
        if let Some(key) = route.strip_prefix("/state/") {
            let store = match state::Store::open("") {
                Ok(store) => store,
                Err(e) => return failed("state open", e),
            };
            return match store.get(key) {
                Ok(Some(entry)) => p3::bytes(200, "text/plain", entry.value),
                Ok(None) => p3::text(404, "absent\n"),
                Err(e) => failed("state get", e),
            };
        }
        if let Some(key) = route.strip_prefix("/config/") {
            return match config::get(key) {
                Ok(Some(value)) => p3::text(200, value),
                Ok(None) => p3::text(404, "unset\n"),
                Err(e) => failed("config", e),
            };
        }
        if route == "/invoke" {
            let target = query(&path, "target").unwrap_or_default();
            let called = invoke::call(
                &target,
                &invoke::Request {
                    method: "GET".into(),
                    path_with_query: "/".into(),
                    headers: Vec::new(),
                    body: Vec::new(),
                },
                invoke::Options {
                    timeout_ms: None,
                    idempotent: true,
                },
            );
            return match called {
                Ok(response) => p3::text(
                    200,
                    format!(
                        "{} {}",
                        response.status,
                        String::from_utf8_lossy(&response.body)
                    ),
                ),
                Err(e) => failed("invoke", e),
            };
        }
        if route == "/publish" {
            let topic = query(&path, "topic").unwrap_or_default();
            let data = query(&path, "data").unwrap_or_default();
            return match messages::publish(&topic, data.as_bytes()) {
                Ok(id) => p3::text(202, format!("{id}\n")),
                Err(e) => failed("publish", e),
            };
        }
        if route == "/blob" {
            let name = query(&path, "name").unwrap_or_default();
            let data = query(&path, "data").unwrap_or_default();
            let container = match blob::open_or_create("p3") {
                Ok(container) => container,
                Err(e) => return failed("blob container", e),
            };
            if let Err(e) = blob::write_bytes(&container, &name, data.as_bytes()) {
                return failed("blob write", e);
            }
            let end = (data.len() as u64).saturating_sub(1);
            return match blob::read_bytes(&container, &name, 0, end) {
                Ok(read) => p3::bytes(200, "text/plain", read),
                Err(e) => failed("blob read", e),
            };
        }
        p3::text(404, "see the module docs\n")
    }
}

impl Handler for Caps {
    fn handle(message: Incoming) -> Result<(), String> {
        let store = state::Store::open("").map_err(|e| format!("state: {e:?}"))?;
        let data = message.text();
        store
            .set(
                &format!("message/{data}"),
                data.as_bytes(),
                &state::Precondition::None,
                None,
            )
            .map_err(|e| format!("state: {e:?}"))?;
        store
            .increment("handled", 1)
            .map_err(|e| format!("state: {e:?}"))?;
        Ok(())
    }
}

hearth_sdk::export_p3_service!(Caps);
hearth_sdk::export_handler!(Caps);
