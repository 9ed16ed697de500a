//! `kv-p3`: `kv-counter` as a WASI 0.3 service: each request increments
//! the counter named by its path in the function's key-value store
//! (`wasi:keyvalue/atomics`, a Hearth capability, called from an async
//! handler) and answers with the new value.

use hearth_sdk::keyvalue::{atomics, store};
use hearth_sdk::p3::{self, ErrorCode, Request, Response, Service};

struct Counter;

impl Service for Counter {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let path = request.get_path_with_query().unwrap_or_default();
        let key = path.trim_start_matches('/');
        let key = if key.is_empty() { "hits" } else { key };
        let bucket =
            store::open("").map_err(|e| ErrorCode::InternalError(Some(format!("open: {e:?}"))))?;
        let value = atomics::increment(&bucket, key, 1)
            .map_err(|e| ErrorCode::InternalError(Some(format!("increment: {e:?}"))))?;
        p3::text(200, format!("{key}={value}\n"))
    }
}

hearth_sdk::export_p3_service!(Counter);
