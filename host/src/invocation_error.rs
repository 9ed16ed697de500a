//! Every way an invocation can fail, with the name and status the caller sees.
//!
//! An HTTP caller gets the status below, a header `x-hearth-error: <name>`
//! and a plain-text body `<name>: <message>`. Every failure is also logged
//! once at `error` level with the function's name (and, for traps, the wasm
//! backtrace). A job that fails this way exits with [`InvocationError::exit_code`].

use crate::limits::{DeadlineExceeded, MemoryLimitExceeded};
use http::StatusCode;

/// The guest's `init` returned an error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("init failed: {message}")]
pub struct InitFailed {
    /// The guest's message.
    pub message: String,
}

/// A slot could not be had before the deadline.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("overloaded: all {max} instance slots of this function stayed busy for {waited_ms} ms")]
pub struct Overloaded {
    /// `max_concurrent_instances`.
    pub max: u32,
    /// How long the request waited.
    pub waited_ms: u64,
}

/// The kind of an [`InvocationError`], without its details: what a caller
/// on another node reads back from the `x-hearth-error` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// [`InvocationError::Deadline`].
    Deadline,
    /// [`InvocationError::MemoryLimit`].
    MemoryLimit,
    /// [`InvocationError::Trap`].
    Trap,
    /// [`InvocationError::InitFailed`].
    InitFailed,
    /// [`InvocationError::BodyTooLarge`].
    BodyTooLarge,
    /// [`InvocationError::Overloaded`].
    Overloaded,
    /// [`InvocationError::NoResponse`].
    NoResponse,
    /// [`InvocationError::GuestError`].
    GuestError,
    /// [`InvocationError::Internal`].
    Internal,
}

impl ErrorKind {
    const ALL: [ErrorKind; 9] = [
        ErrorKind::Deadline,
        ErrorKind::MemoryLimit,
        ErrorKind::Trap,
        ErrorKind::InitFailed,
        ErrorKind::BodyTooLarge,
        ErrorKind::Overloaded,
        ErrorKind::NoResponse,
        ErrorKind::GuestError,
        ErrorKind::Internal,
    ];

    /// The stable name of this kind of failure.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Deadline => "deadline-exceeded",
            ErrorKind::MemoryLimit => "memory-limit-exceeded",
            ErrorKind::Trap => "trap",
            ErrorKind::InitFailed => "init-failed",
            ErrorKind::BodyTooLarge => "body-too-large",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::NoResponse => "no-response",
            ErrorKind::GuestError => "guest-error",
            ErrorKind::Internal => "internal",
        }
    }

    /// The kind called `name` (as [`ErrorKind::name`] spells it), if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

/// A failed invocation.
#[derive(Debug, Clone, thiserror::Error)]
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
                return InvocationError::MemoryLimit(*e);
            }
            if let Some(e) = cause.downcast_ref::<Overloaded>() {
                return InvocationError::Overloaded(*e);
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

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            InvocationError::Deadline(_) => ErrorKind::Deadline,
            InvocationError::MemoryLimit(_) => ErrorKind::MemoryLimit,
            InvocationError::Trap { .. } => ErrorKind::Trap,
            InvocationError::InitFailed(_) => ErrorKind::InitFailed,
            InvocationError::BodyTooLarge { .. } => ErrorKind::BodyTooLarge,
            InvocationError::Overloaded(_) => ErrorKind::Overloaded,
            InvocationError::NoResponse => ErrorKind::NoResponse,
            InvocationError::GuestError(_) => ErrorKind::GuestError,
            InvocationError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// The stable name of this kind of failure.
    pub fn name(&self) -> &'static str {
        self.kind().name()
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
pub fn log_failure(
    namespace: &str,
    function: &str,
    error: &InvocationError,
    raw: Option<&wasmtime::Error>,
) {
    match raw {
        Some(raw)
            if matches!(
                error,
                InvocationError::Trap { .. } | InvocationError::MemoryLimit(_)
            ) =>
        {
            let causes: Vec<String> = raw.chain().map(|cause| cause.to_string()).collect();
            let backtrace = causes.join("\n");
            tracing::error!(
                namespace,
                function,
                error = error.name(),
                ?backtrace,
                "{error}"
            );
        }
        _ => tracing::error!(namespace, function, error = error.name(), "{error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_from_its_name() {
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(ErrorKind::from_name("no-such-kind"), None);
        let error = InvocationError::BodyTooLarge { limit: 1 };
        assert_eq!(error.kind(), ErrorKind::BodyTooLarge);
        assert_eq!(error.name(), "body-too-large");
    }
}
