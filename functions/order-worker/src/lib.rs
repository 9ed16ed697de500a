//! `order-worker`: a message handler that records each order in state.
//!
//! For every message: `order/<id>` (the `x-order-id` header, else the
//! message id) = the body, and the `processed` counter goes up by one.
//! An order with an `x-order-work-ms: N` header is long work: the worker
//! first extends its visibility by `N + 2000` ms, then works (sleeps) for
//! `N` ms before recording it. `x-order-stall-ms: N` sleeps without
//! extending (overrunning a short visibility timeout).

use hearth_sdk::messages::{self, Handler, Incoming};
use hearth_sdk::state;

struct Worker;

impl Handler for Worker {
    fn handle(message: Incoming) -> Result<(), String> {
        let id = message
            .header("x-order-id")
            .map(str::to_string)
            .or_else(|| message.delivery.as_ref().map(|d| d.id.clone()))
            .unwrap_or_default();
        if let Some(work_ms) = message
            .header("x-order-work-ms")
            .and_then(|v| v.parse::<u64>().ok())
        {
            messages::extend(work_ms + 2000).map_err(|e| format!("extend: {e:?}"))?;
            std::thread::sleep(std::time::Duration::from_millis(work_ms));
        }
        if let Some(stall_ms) = message
            .header("x-order-stall-ms")
            .and_then(|v| v.parse::<u64>().ok())
        {
            // Stalls without extending: overruns a short visibility.
            std::thread::sleep(std::time::Duration::from_millis(stall_ms));
        }
        let store = state::Store::open("").map_err(|e| format!("state: {e:?}"))?;
        store
            .set(
                &format!("order/{id}"),
                &message.data,
                &state::Precondition::None,
                None,
            )
            .map_err(|e| format!("state: {e:?}"))?;
        store
            .increment("processed", 1)
            .map_err(|e| format!("state: {e:?}"))?;
        Ok(())
    }
}

hearth_sdk::export_handler!(Worker);
