//! The job world: run `wasi:cli/run` to completion and report its status.
//!
//! The exit status is 0 when `run` returns `ok`, 1 when it returns `err`, and
//! the exact code when the guest calls `wasi:cli/exit.exit` or
//! `exit-with-code`. A job that fails (trap, deadline, memory limit) returns
//! the [`InvocationError`], logged once, whose
//! [`exit_code`](InvocationError::exit_code) a CLI should exit with.

use crate::function::{Function, FunctionKind};
use crate::invocation_error::{InvocationError, log_failure};
use std::sync::Arc;
use std::time::Duration;
use wasmtime_wasi::I32Exit;

/// Runs `function` (a job) once. `timeout` bounds its wall-clock time.
pub async fn run_job(
    function: &Arc<Function>,
    timeout: Option<Duration>,
) -> Result<i32, InvocationError> {
    let FunctionKind::Job { run } = function.kind() else {
        return Err(InvocationError::Internal(format!(
            "function `{}` is a service, not a job",
            function.name()
        )));
    };
    let slot = function
        .acquire_slot(timeout.unwrap_or(Duration::from_secs(3600)))
        .await
        .map_err(InvocationError::Overloaded)?;
    let store = function.new_store(timeout);
    let result = async {
        let mut live = function.instantiate(store, slot).await?;
        let command = run.load(&mut live.store, &live.instance)?;
        command.wasi_cli_run().call_run(&mut live.store).await
    }
    .await;
    match result {
        Ok(Ok(())) => Ok(0),
        Ok(Err(())) => Ok(1),
        Err(raw) => {
            if let Some(exit) = raw.chain().find_map(|c| c.downcast_ref::<I32Exit>()) {
                return Ok(exit.0);
            }
            let error = InvocationError::from_wasmtime(&raw);
            log_failure(function.name(), &error, Some(&raw));
            Err(error)
        }
    }
}
