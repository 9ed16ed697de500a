//! `settings`: shows what a function is configured with, as a Pod's author
//! would check it.
//!
//! * `/env/KEY`: the `wasi:cli` environment variable KEY (a container's
//!   `env`, Secret references included); 404 when unset.
//! * `/config/KEY`: the `wasi:config` value KEY (the env, then the files of
//!   mounted ConfigMap volumes); 404 when unset.

use hearth_sdk::http::{Request, Response, Service};

struct Settings;

impl Service for Settings {
    fn handle(request: Request) -> Response {
        let path = request.path();
        let found = if let Some(key) = path.strip_prefix("/env/") {
            std::env::var(key).ok()
        } else if let Some(key) = path.strip_prefix("/config/") {
            match hearth_sdk::config::get(key) {
                Ok(value) => value,
                Err(error) => return Response::text(500, format!("wasi:config: {error:?}\n")),
            }
        } else {
            return Response::text(404, "ask /env/KEY or /config/KEY\n");
        };
        match found {
            Some(value) => Response::text(200, value),
            None => Response::text(404, format!("{path}: not set\n")),
        }
    }
}

hearth_sdk::export_service!(Settings);
