//! Every way an invocation can fail, with the name and status the caller sees.
//!
//! An HTTP caller gets the status below, a header `x-hearth-error: <name>`
//! and a plain-text body `<name>: <message>`. Every failure is also logged
//! once at `error` level with the function's name (and, for traps, the wasm
//! backtrace). A job that fails this way exits with [`InvocationError::exit_code`].

use crate::function::{InitFailed, Overloaded};
use crate::limits::{DeadlineExceeded, MemoryLimitExceeded};
use http::StatusCode;

/// A failed invocation.
#[derive(Debug, thiserror::Error)]
pub enum InvocationError {
    /// The deadline passed (guest spinning, or blocked too long).
    #[error("{0}")]
    Deadline(DeadlineExceeded),
    /// `memory.grow` past the limit.
    #[error("{0}")]
    MemoryLimit(MemoryLimitExceeded),
    /// The guest trapped (a panic, `unreachable`, out-of-bounds access...).
    #[error("the function trapped: {message}")]
    Trap {
        /// The trap's message, including wasmtime's description.
        message: String,
    },
    /// `lifecycle.init` returned an error.
    #[error("{0}")]
    InitFailed(InitFailed),
    /// The request body was over `max_request_body_bytes`.
    #[error("request body too large: the limit is {limit} bytes")]
    BodyTooLarge {
        /// The limit in force.
        limit: u64,
    },
    /// No instance slot came free in time.
    #[error("{0}")]
    Overloaded(Overloaded),
    /// The guest returned without setting a response.
    #[error("the function returned without sending a response")]
    NoResponse,
    /// The guest answered with a `wasi:http` error code instead of a response.
    #[error("the function answered with an error: {0}")]
    GuestError(String),
    /// A host-side failure (a bug or resource exhaustion in Hearth itself).
    #[error("internal error: {0}")]
    Internal(String),
}

impl InvocationError {
    /// Classifies an error from running guest code.
    pub fn from_wasmtime(error: &wasmtime::Error) -> Self {
        for cause in error.chain() {
            if let Some(e) = cause.downcast_ref::<DeadlineExceeded>() {
                return InvocationError::Deadline(DeadlineExceeded {
                    timeout_ms: e.timeout_ms,
                });
            }
            if let Some(e) = cause.downcast_ref::<MemoryLimitExceeded>() {
                return InvocationError::MemoryLimit(MemoryLimitExceeded {
                    desired: e.desired,
                    limit: e.limit,
                });
            }
            if let Some(e) = cause.downcast_ref::<InitFailed>() {
                return InvocationError::InitFailed(InitFailed {
                    message: e.message.clone(),
                });
            }
        }
        if error.downcast_ref::<wasmtime::Trap>().is_some() {
            // `{:#}` is the one-line chain; the backtrace is logged separately.
            let trap = error
                .downcast_ref::<wasmtime::Trap>()
                .map(|t| t.to_string())
                .unwrap_or_default();
            let message = error.root_cause().to_string();
            let message = if message == trap || trap.is_empty() {
                message
            } else {
                format!("{trap}: {message}")
            };
            return InvocationError::Trap { message };
        }
        InvocationError::Internal(format!("{error:#}"))
    }

    /// The stable name of this kind of failure.
    pub fn name(&self) -> &'static str {
        match self {
            InvocationError::Deadline(_) => "deadline-exceeded",
            InvocationError::MemoryLimit(_) => "memory-limit-exceeded",
            InvocationError::Trap { .. } => "trap",
            InvocationError::InitFailed(_) => "init-failed",
            InvocationError::BodyTooLarge { .. } => "body-too-large",
            InvocationError::Overloaded(_) => "overloaded",
            InvocationError::NoResponse => "no-response",
            InvocationError::GuestError(_) => "guest-error",
            InvocationError::Internal(_) => "internal",
        }
    }

    /// The HTTP status an HTTP caller gets.
    pub fn status(&self) -> StatusCode {
        match self {
            InvocationError::Deadline(_) => StatusCode::GATEWAY_TIMEOUT,
            InvocationError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            InvocationError::Overloaded(_) | InvocationError::InitFailed(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            InvocationError::MemoryLimit(_)
            | InvocationError::Trap { .. }
            | InvocationError::NoResponse
            | InvocationError::GuestError(_)
            | InvocationError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The exit status of a job that failed this way: 124 for a deadline (as
    /// `timeout(1)`), 134 for a trap or memory limit (as an aborted process),
    /// 70 (EX_SOFTWARE) otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            InvocationError::Deadline(_) => 124,
            InvocationError::Trap { .. } | InvocationError::MemoryLimit(_) => 134,
            _ => 70,
        }
    }
}

/// Logs a failure as one event (one line); traps and memory-limit failures
/// carry the wasm backtrace in a `backtrace` field (newlines escaped).
pub fn log_failure(function: &str, error: &InvocationError, raw: Option<&wasmtime::Error>) {
    match raw {
        Some(raw)
            if matches!(
                error,
                InvocationError::Trap { .. } | InvocationError::MemoryLimit(_)
            ) =>
        {
            let causes: Vec<String> = raw.chain().map(|cause| cause.to_string()).collect();
            let backtrace = causes.join("\n");
            tracing::error!(function, error = error.name(), ?backtrace, "{error}");
        }
        _ => tracing::error!(function, error = error.name(), "{error}"),
    }
}
