//! The job world: run `wasi:cli/run` (WASI 0.2 or 0.3) to completion and
//! report its status.
//!
//! The exit status is 0 when `run` returns `ok`, 1 when it returns `err`, and
//! the exact code when the guest calls `wasi:cli/exit.exit` or
//! `exit-with-code`. A job that fails (trap, deadline, memory limit) returns
//! the [`InvocationError`], logged once, whose
//! [`exit_code`](InvocationError::exit_code) a CLI should exit with.

use crate::function::{CliRun, Function, FunctionKind};
use crate::invocation_error::InvocationError;
use crate::propagation::RequestContext;
use crate::telemetry::{self, Kind};
use std::sync::Arc;
use std::time::Duration;
use wasmtime_wasi::I32Exit;

/// Runs `function` (a job) once, on a fresh instance (see
/// [`crate::invocation`]), as one span (see [`crate::telemetry`]).
/// `timeout` bounds its wall-clock time.
pub async fn run_job(
    function: &Arc<Function>,
    timeout: Option<Duration>,
) -> Result<i32, InvocationError> {
    let span = telemetry::start_request(
        || format!("run {}", function.name()).into(),
        Kind::Internal,
        None,
    );
    span.set("hearth.function", || function.name().to_string());
    span.set("k8s.namespace.name", || {
        function.env().namespace.to_string()
    });
    let context = RequestContext {
        trace: span.context(),
        ..RequestContext::default()
    };
    let result = run_job_in(function, timeout, context).await;
    match &result {
        Ok(code) => span.set("process.exit.code", || i64::from(*code)),
        Err(error) => span.fail(error.name(), error),
    }
    result
}

async fn run_job_in(
    function: &Arc<Function>,
    timeout: Option<Duration>,
    context: RequestContext,
) -> Result<i32, InvocationError> {
    let FunctionKind::Job { run } = function.kind() else {
        return Err(InvocationError::Internal(format!(
            "function `{}` is a service, not a job",
            function.name()
        )));
    };
    let mut invocation = function.begin(timeout, context).await?;
    let deadline = invocation.deadline();
    let ready = invocation.ready();
    let result = deadline
        .run(async {
            match run {
                CliRun::P2(run) => {
                    let command = run.load(&mut ready.store, &ready.instance)?;
                    command.wasi_cli_run().call_run(&mut ready.store).await
                }
                // An async export: called inside the store's event loop,
                // which also runs whatever tasks the guest spawned.
                CliRun::P3(run) => {
                    let command = run.load(&mut ready.store, &ready.instance)?;
                    ready
                        .store
                        .run_concurrent(async |accessor| {
                            command.wasi_cli_run().call_run(accessor).await
                        })
                        .await?
                }
            }
        })
        .await;
    // `wasi:cli/exit` unwinds as an error, but it is the job's status.
    if let Err(raw) = &result
        && let Some(exit) = raw.chain().find_map(|c| c.downcast_ref::<I32Exit>())
    {
        return Ok(exit.0);
    }
    match invocation.finish(result).await? {
        Ok(()) => Ok(0),
        Err(()) => Ok(1),
    }
}
