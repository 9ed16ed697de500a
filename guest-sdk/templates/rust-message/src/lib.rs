//! `{{name}}`: a message handler. Deployed with `hearth deploy IMAGE
//! --subscribe TOPIC` (or `[[function.subscribe]]` in hearthd's config), it
//! gets every message of TOPIC: it logs it (`wasi:logging`: hearthd's log
//! and the Pod's, `kubectl logs`) and counts it in its state. Returning an
//! error hands the message back to be delivered again.

use hearth_sdk::logging::{Level, log};
use hearth_sdk::messages::{Handler, Incoming};
use hearth_sdk::state;

struct Function;

impl Handler for Function {
    fn handle(message: Incoming) -> Result<(), String> {
        let store = state::Store::open("").map_err(|error| format!("state: {error:?}"))?;
        let count = store
            .increment("messages", 1)
            .map_err(|error| format!("state: {error:?}"))?;
        log(
            Level::Info,
            "{{name}}",
            &format!("message {count} on {}: {}", message.topic, message.text()),
        );
        Ok(())
    }
}

hearth_sdk::export_handler!(Function);
