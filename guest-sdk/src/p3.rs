//! WASI 0.3 services and jobs: async handlers (feature `p3`).
//!
//! A p3 service exports `wasi:http/handler@0.3.0`, whose `handle` is an
//! `async fn`: while one request waits (for its body, a timer, another
//! service) the same instance runs others. Hearth gives one p3 instance up
//! to `instance_concurrency` requests at once (16 unless the operator or
//! the Pod says otherwise), so requests on one instance share its memory,
//! as they do in any async server. Hearth's capabilities
//! ([`crate::keyvalue`], [`crate::state`], [`crate::invoke`],
//! [`crate::config`], [`crate::messages`], [`crate::blob`]) are called
//! from a p3 handler exactly as from a p2 one.
//!
//! ```ignore
//! use hearth_sdk::p3::{self, ErrorCode, Request, Response, Service};
//!
//! struct Hello;
//!
//! impl Service for Hello {
//!     async fn handle(_request: Request) -> Result<Response, ErrorCode> {
//!         p3::text(200, "Hello from Hearth!\n")
//!     }
//! }
//!
//! hearth_sdk::export_p3_service!(Hello);
//! ```
//!
//! A p3 job implements [`Job`] and is exported with
//! [`export_p3_job!`](crate::export_p3_job). The raw `wasi:http@0.3.0`
//! types are [`wasip3::http::types`]; [`wasip3::http_compat`] converts
//! them to and from the `http` crate's.

pub use wasip3;
pub use wasip3::http::types::{ErrorCode, Fields, Request, Response};
pub use wasip3::{spawn_local, wit_future, wit_stream};

/// A WASI 0.3 HTTP service: one `handle` call per request, many at once.
pub trait Service {
    /// Answers one request.
    fn handle(request: Request) -> impl Future<Output = Result<Response, ErrorCode>>;
}

/// A WASI 0.3 job: `run` once; `Ok` exits 0, `Err` exits 1, and
/// [`exit_with_code`] exits with any code.
pub trait Job {
    /// Runs the job.
    fn run() -> impl Future<Output = Result<(), ()>>;
}

/// Ends the job now with `code` as its exit status.
pub fn exit_with_code(code: u8) -> ! {
    wasip3::cli::exit::exit_with_code(code);
    unreachable!("exit-with-code returned")
}

/// A response with `status`, `content-type: text/plain` and `body`, which
/// is written to the response's stream after `handle` returns.
pub fn text(status: u16, body: impl Into<String>) -> Result<Response, ErrorCode> {
    bytes(
        status,
        "text/plain; charset=utf-8",
        body.into().into_bytes(),
    )
}

/// A response with `status`, `content_type` and `body`.
pub fn bytes(status: u16, content_type: &str, body: Vec<u8>) -> Result<Response, ErrorCode> {
    let headers = Fields::from_list(&[("content-type".to_string(), content_type.into())])
        .map_err(|e| ErrorCode::InternalError(Some(format!("content-type: {e:?}"))))?;
    let (mut writer, reader) = wit_stream::new();
    let (trailers_writer, trailers) = wit_future::new(|| Ok(None));
    drop(trailers_writer);
    let (response, _sent) = Response::new(headers, Some(reader), trailers);
    response
        .set_status_code(status)
        .map_err(|()| ErrorCode::InternalError(Some(format!("bad status {status}"))))?;
    spawn_local(async move {
        let _unwritten = writer.write_all(body).await;
    });
    Ok(response)
}

/// Exports `$service` (a [`Service`]) as the component's
/// `wasi:http/handler@0.3.0`.
#[macro_export]
macro_rules! export_p3_service {
    ($service:ty) => {
        struct __HearthP3Service;

        impl $crate::p3::wasip3::exports::http::handler::Guest for __HearthP3Service {
            async fn handle(
                request: $crate::p3::Request,
            ) -> Result<$crate::p3::Response, $crate::p3::ErrorCode> {
                <$service as $crate::p3::Service>::handle(request).await
            }
        }

        $crate::p3::wasip3::http::service::export!(
            __HearthP3Service with_types_in $crate::p3::wasip3
        );
    };
}

/// Exports `$job` (a [`Job`]) as the component's `wasi:cli/run@0.3.0`.
#[macro_export]
macro_rules! export_p3_job {
    ($job:ty) => {
        struct __HearthP3Job;

        impl $crate::p3::wasip3::exports::cli::run::Guest for __HearthP3Job {
            async fn run() -> Result<(), ()> {
                <$job as $crate::p3::Job>::run().await
            }
        }

        $crate::p3::wasip3::cli::command::export!(__HearthP3Job with_types_in $crate::p3::wasip3);
    };
}
