//! One error type for the task service, and the ttrpc status code each
//! kind becomes (containerd turns these codes into its `errdefs`: a
//! `NOT_FOUND` from Delete is "already gone", `UNAVAILABLE` is worth a
//! retry, and so on).
//!
//! # Contract
//!
//! * Every task call fails with a [`TaskError`]; [`TaskError::code`] is its
//!   code, and the message is what `kubectl describe` and containerd's log
//!   show.
//! * hearthd's answers keep their gRPC code ([`TaskError::Hearthd`]);
//!   hearthd that cannot be reached at all is `UNAVAILABLE`, naming the
//!   socket.

use containerd_shim::protos::ttrpc;

/// Why a task call failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The request is malformed, or asks for what a function cannot have
    /// (a TTY, a bad annotation).
    #[error("{0}")]
    InvalidArgument(String),
    /// No such container (or exec).
    #[error("{0}")]
    NotFound(String),
    /// The container exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The container is not in a state that allows the call.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Not something a function supports (exec, checkpoints).
    #[error("{0}")]
    Unimplemented(String),
    /// hearthd could not be reached (the error names the socket).
    #[error("{0}")]
    HearthdUnreachable(hearth_control::ConnectError),
    /// hearthd answered with an error.
    #[error("hearthd: {}", .0.message())]
    Hearthd(tonic::Status),
    /// Something on this node failed (a mount, a process).
    #[error("{0}")]
    Internal(String),
}

impl TaskError {
    /// hearthd did not answer: not running, or shutting down (it answers
    /// every call `UNAVAILABLE` while it hands over).
    pub fn is_unreachable(&self) -> bool {
        match self {
            TaskError::HearthdUnreachable(_) => true,
            TaskError::Hearthd(status) => matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
            ),
            _ => false,
        }
    }

    /// The ttrpc status code containerd sees.
    pub fn code(&self) -> ttrpc::Code {
        use ttrpc::Code;
        match self {
            TaskError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            TaskError::NotFound(_) => Code::NOT_FOUND,
            TaskError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            TaskError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            TaskError::Unimplemented(_) => Code::UNIMPLEMENTED,
            TaskError::HearthdUnreachable(_) => Code::UNAVAILABLE,
            TaskError::Hearthd(status) => match status.code() {
                tonic::Code::NotFound => Code::NOT_FOUND,
                tonic::Code::InvalidArgument => Code::INVALID_ARGUMENT,
                tonic::Code::AlreadyExists => Code::ALREADY_EXISTS,
                tonic::Code::FailedPrecondition => Code::FAILED_PRECONDITION,
                tonic::Code::ResourceExhausted => Code::RESOURCE_EXHAUSTED,
                tonic::Code::Unavailable => Code::UNAVAILABLE,
                tonic::Code::DeadlineExceeded => Code::DEADLINE_EXCEEDED,
                tonic::Code::Unimplemented => Code::UNIMPLEMENTED,
                tonic::Code::Cancelled => Code::CANCELLED,
                _ => Code::INTERNAL,
            },
            TaskError::Internal(_) => Code::INTERNAL,
        }
    }
}

impl From<TaskError> for ttrpc::Error {
    fn from(error: TaskError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(error.code(), error.to_string()))
    }
}

impl From<containerd_shim::Error> for TaskError {
    fn from(error: containerd_shim::Error) -> Self {
        TaskError::Internal(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ttrpc::Code;

    #[test]
    fn each_kind_becomes_its_ttrpc_code_with_its_message() {
        let cases = [
            (
                TaskError::InvalidArgument("bad".into()),
                Code::INVALID_ARGUMENT,
            ),
            (TaskError::NotFound("gone".into()), Code::NOT_FOUND),
            (
                TaskError::AlreadyExists("twice".into()),
                Code::ALREADY_EXISTS,
            ),
            (
                TaskError::FailedPrecondition("running".into()),
                Code::FAILED_PRECONDITION,
            ),
            (TaskError::Unimplemented("exec".into()), Code::UNIMPLEMENTED),
            (
                TaskError::HearthdUnreachable(hearth_control::ConnectError {
                    socket: "/run/hearth/hearthd.sock".into(),
                    detail: "connection refused".into(),
                }),
                Code::UNAVAILABLE,
            ),
            (TaskError::Internal("mount".into()), Code::INTERNAL),
        ];
        for (error, code) in cases {
            let message = error.to_string();
            let ttrpc::Error::RpcStatus(status) = ttrpc::Error::from(error) else {
                panic!("a status");
            };
            assert_eq!(status.code(), code, "{message}");
            assert_eq!(status.message(), message);
        }
    }

    #[test]
    fn hearthds_answers_keep_their_code() {
        let cases = [
            (tonic::Status::not_found("x"), Code::NOT_FOUND),
            (tonic::Status::invalid_argument("x"), Code::INVALID_ARGUMENT),
            (tonic::Status::already_exists("x"), Code::ALREADY_EXISTS),
            (
                tonic::Status::failed_precondition("x"),
                Code::FAILED_PRECONDITION,
            ),
            (
                tonic::Status::resource_exhausted("x"),
                Code::RESOURCE_EXHAUSTED,
            ),
            (tonic::Status::unavailable("x"), Code::UNAVAILABLE),
            (tonic::Status::internal("x"), Code::INTERNAL),
            (tonic::Status::unknown("x"), Code::INTERNAL),
        ];
        for (status, code) in cases {
            let error = TaskError::Hearthd(status);
            assert_eq!(error.code(), code, "{error}");
            assert_eq!(error.to_string(), "hearthd: x");
        }
    }
}
