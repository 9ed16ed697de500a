//! `lifecycle`: proves `init` ran, once, before the request.
//!
//! `init` counts its calls in instance memory; `handle` answers
//! `init_calls=N` (500 if init never ran). `shutdown` prints a line, which
//! the host logs tagged with the function's name. `init` fails when the
//! environment has `FAIL_INIT` set.

use hearth_sdk::http::{Request, Response, Service};
use std::sync::atomic::{AtomicU32, Ordering};

static INIT_CALLS: AtomicU32 = AtomicU32::new(0);

struct Lifecycle;

impl Service for Lifecycle {
    fn init() -> Result<(), String> {
        if let Ok(reason) = std::env::var("FAIL_INIT") {
            return Err(format!("init refused: {reason}"));
        }
        INIT_CALLS.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn handle(_request: Request) -> Response {
        match INIT_CALLS.load(Ordering::SeqCst) {
            0 => Response::text(500, "init did not run before the request\n"),
            n => Response::text(200, format!("init_calls={n}\n")),
        }
    }

    fn shutdown() {
        println!(
            "lifecycle: shutdown after init_calls={}",
            INIT_CALLS.load(Ordering::SeqCst)
        );
    }
}

hearth_sdk::export_service!(Lifecycle);
