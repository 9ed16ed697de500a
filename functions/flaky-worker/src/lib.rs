//! `flaky-worker`: a message handler that fails on purpose.
//!
//! The `x-order-mode` header picks how:
//! * `fail-N` (default `fail-2`): fails deliveries 1..=N with an error,
//!   then succeeds, recording `flaky/<id>` = the attempt that succeeded.
//! * `poison`: always fails (ends in the dead-letter topic).
//! * `trap`: panics (a trap: the instance is discarded).
//! * `spin`: loops forever (the deadline fires).
//! * `noop`: succeeds at once, touching nothing (for benchmarks).
//!
//! `<id>` is the `x-order-id` header, else the message id. Every attempt
//! also bumps `flaky-attempts/<id>`.

use hearth_sdk::messages::{Handler, Incoming};
use hearth_sdk::state;

struct Flaky;

impl Handler for Flaky {
    fn handle(message: Incoming) -> Result<(), String> {
        let id = message
            .header("x-order-id")
            .map(str::to_string)
            .or_else(|| message.delivery.as_ref().map(|d| d.id.clone()))
            .unwrap_or_default();
        if message.header("x-order-mode") == Some("noop") {
            return Ok(());
        }
        let store = state::Store::open("").map_err(|e| format!("state: {e:?}"))?;
        store
            .increment(&format!("flaky-attempts/{id}"), 1)
            .map_err(|e| format!("state: {e:?}"))?;
        let attempt = message.attempt();
        let mode = message
            .header("x-order-mode")
            .unwrap_or("fail-2")
            .to_string();
        match mode.as_str() {
            "poison" => return Err(format!("poison order {id} cannot be processed")),
            "trap" => panic!("order {id} makes the worker trap"),
            "spin" =>
            {
                #[allow(clippy::empty_loop)]
                loop {}
            }
            _ => {}
        }
        let failures: u32 = mode
            .strip_prefix("fail-")
            .and_then(|n| n.parse().ok())
            .unwrap_or(2);
        if attempt <= failures {
            return Err(format!(
                "planned failure {attempt} of {failures} for order {id}"
            ));
        }
        store
            .set(
                &format!("flaky/{id}"),
                attempt.to_string().as_bytes(),
                &state::Precondition::None,
                None,
            )
            .map_err(|e| format!("state: {e:?}"))?;
        Ok(())
    }
}

hearth_sdk::export_handler!(Flaky);
