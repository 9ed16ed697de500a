//! `order-producer`: HTTP in, messages out.
//!
//! * `POST /orders` with the order as the body: published to `orders`
//!   (`?key=K` orders per key, `?priority=P`, `?delay_ms=D`, and any
//!   `x-order-*` request header becomes a message header). Answers 202 with
//!   the message id.
//! * `POST /publish?topic=T`: the body to any topic (for allow-list tests),
//!   through standard `wasi:messaging` `producer.send`.
//! * `GET /state?key=K`: a value from the app's state (what the workers
//!   wrote), 404 if absent.
//!
//! A publish failure answers with the `hearth:function/messaging` error:
//! 413 `too-large`, 403 `access-denied`, 400 `invalid-argument`, 503
//! `unavailable`.

use hearth_sdk::bindings::wasi::messaging::{producer, types};
use hearth_sdk::http::{Request, Response, Service};
use hearth_sdk::messages::{self, Error, PublishOptions};
use hearth_sdk::state;

struct Producer;

fn failure(error: Error) -> Response {
    let (status, text) = match error {
        Error::TooLarge(limit) => (413, format!("too-large: the limit is {limit} bytes")),
        Error::AccessDenied(detail) => (403, format!("access-denied: {detail}")),
        Error::InvalidArgument(detail) => (400, format!("invalid-argument: {detail}")),
        Error::Unavailable(detail) => (503, format!("unavailable: {detail}")),
        Error::TopicFull(detail) => (503, format!("topic-full: {detail}")),
        Error::NoMessage => (500, "no-message".into()),
        Error::Lost(detail) => (500, format!("lost: {detail}")),
    };
    Response::text(status, format!("{text}\n"))
}

fn wasi_failure(error: types::Error) -> Response {
    let (status, text) = match error {
        types::Error::PermissionDenied(detail) => (403, format!("permission-denied: {detail}")),
        types::Error::Connection(detail) => (503, format!("connection: {detail}")),
        types::Error::Timeout => (503, "timeout".into()),
        types::Error::Other(detail) => (400, format!("other: {detail}")),
    };
    Response::text(status, format!("{text}\n"))
}

impl Service for Producer {
    fn handle(request: Request) -> Response {
        match (request.method.as_str(), request.path()) {
            ("POST", "/orders") => {
                let options = PublishOptions {
                    key: request.query("key"),
                    headers: request
                        .headers
                        .iter()
                        .filter(|(name, _)| name.starts_with("x-order-"))
                        .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
                        .collect(),
                    content_type: request.header("content-type").map(str::to_string),
                    delay_ms: request
                        .query("delay_ms")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                    priority: request
                        .query("priority")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                };
                match messages::publish_with("orders", &request.body, &options) {
                    Ok(id) => Response::text(202, format!("{id}\n")),
                    Err(error) => failure(error),
                }
            }
            ("POST", "/publish") => {
                let topic = request.query("topic").unwrap_or_default();
                let client = match types::Client::connect("") {
                    Ok(client) => client,
                    Err(error) => return wasi_failure(error),
                };
                let message = types::Message::new(&request.body);
                match producer::send(&client, &topic, message) {
                    Ok(()) => Response::text(202, "sent\n"),
                    Err(error) => wasi_failure(error),
                }
            }
            ("GET", "/state") => {
                let key = request.query("key").unwrap_or_default();
                let store = match state::Store::open("") {
                    Ok(store) => store,
                    Err(error) => return Response::text(503, format!("{error:?}\n")),
                };
                match store.get(&key) {
                    Ok(Some(entry)) => Response::new(200).with_body(entry.value),
                    Ok(None) => Response::text(404, "absent\n"),
                    Err(error) => Response::text(503, format!("{error:?}\n")),
                }
            }
            _ => Response::text(
                404,
                "POST /orders, POST /publish?topic=T, GET /state?key=K\n",
            ),
        }
    }
}

hearth_sdk::export_service!(Producer);
