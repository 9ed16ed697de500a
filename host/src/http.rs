//! The HTTP trigger: serves a service function on a listener.
//!
//! # Contract
//!
//! * Every request gets an instance from the function's pool (see
//!   [`crate::function`]): with the default `max_invocations` of 1 it is a
//!   fresh instance in a fresh store, made from the function's `InstancePre`
//!   ahead of time when `min_idle > 0`, so nothing a request does is visible
//!   to the next. If the function exports `hearth:function/lifecycle`,
//!   `init` runs on the instance before its first request and `shutdown`
//!   after its last. An instance whose request failed in any way is
//!   discarded, never reused.
//! * A request whose `Content-Length` is over `max_request_body_bytes` is
//!   refused with 413 before any instance is made. A body without a length is
//!   counted as it streams; if it goes over, the guest's read fails and the
//!   caller gets 413 whatever the guest answered, unless the guest had
//!   already begun a streaming answer (a WASI 0.3 echo), which is then cut
//!   off: its status is sent already.
//! * A request over the listener is from outside: it cannot name a caller
//!   (`x-hearth-caller` is removed before the guest sees it) nor claim an
//!   `invoke` depth beyond `max_depth` (see [`crate::propagation`]). A
//!   local `invoke` ([`call`]) keeps the headers the host set.
//! * Failures follow [`crate::invocation_error`]: a named error, a status, one
//!   log line. A failure in one request never affects another, and the
//!   listener keeps serving.
//! * **Connections are bounded** (see [`crate::limits`]): a connection
//!   that has not sent a request's headers within `header_read_timeout_ms`
//!   (a slow client, or an idle keep-alive connection) is closed; past
//!   `max_connections` open ones, a new connection is closed as soon as it
//!   is accepted and counted (`hearth_http_connections_refused_total`); an
//!   accept that fails (out of file descriptors) is logged and retried
//!   after a pause, never fatal. Headers are bounded by hyper's defaults
//!   (100 headers, about 400 KiB).
//! * [`serve`] stops accepting when its shutdown future resolves, lets
//!   in-flight requests finish (bounded by the request deadline plus a
//!   second), then returns. Every response sent once draining began says
//!   `Connection: close` and ends its connection; a connection that sends
//!   no request within [`NEXT_REQUEST_GRACE`] is then shut down. So a
//!   client that had just written a request to a connection the server
//!   accepted (a new one, or a keep-alive one between two requests) gets
//!   its answer, not an empty reply, when a drain or a hearthd hand-over
//!   begins in between; only a client idle for the whole grace can still
//!   race the close, as with any keep-alive timeout. Dropping the [`serve`] future instead (SIGKILL)
//!   drops every open connection and in-flight request with it.

use crate::capabilities::invoke::{Invoker, LocalCallee};
use crate::function::{Function, FunctionKind, Host, HttpHandler};
use crate::invocation::{DEADLINE_SLACK, Invocation};
use crate::invocation_error::{InvocationError, log_failure};
use crate::limits::DeadlineExceeded;
use crate::propagation::{ERROR_HEADER, RequestContext};
use crate::telemetry::{self, Kind};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::net::TcpListener;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{Error as HttpError, WasiHttpView};

/// How long a draining server keeps a connection open for its next
/// request before closing it (see the module docs).
pub const NEXT_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// Serves `function` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    function: Arc<Function>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (draining, drained) = tokio::sync::watch::channel(false);
    // Connections live in this set, owned by this future: when it is
    // dropped (SIGKILL aborts the serving task) every connection, with the
    // request and instance in it, is dropped at once.
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and similar: back off, keep serving.
                    tracing::warn!(function = function.name(), %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let limits = function.env().limits;
        let stats = function.env().connections.clone();
        if connections.len() >= limits.max_connections as usize {
            drop(stream);
            let refused = stats.refused.fetch_add(1, Ordering::Relaxed) + 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    function = function.name(),
                    namespace = %function.env().namespace,
                    %peer,
                    refused,
                    "{} connections are open (max_connections): closed a new one",
                    limits.max_connections
                );
            }
            continue;
        }
        let _ = stream.set_nodelay(true);
        let service_function = function.clone();
        let closing = drained.clone();
        let service = hyper::service::service_fn(move |request| {
            let function = service_function.clone();
            let closing = closing.clone();
            async move {
                let mut response = handle(&function, request).await;
                if *closing.borrow() {
                    response.headers_mut().insert(
                        hyper::header::CONNECTION,
                        hyper::header::HeaderValue::from_static("close"),
                    );
                }
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms))
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), service);
        let drained = drained.clone();
        stats.open.fetch_add(1, Ordering::Relaxed);
        connections.spawn(async move {
            if let Err(error) = serve_until_drained(connection, drained).await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            stats.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(listener);
    let drain = function.env().limits.request_timeout() + Duration::from_secs(1);
    tracing::info!(function = function.name(), "draining in-flight requests");
    draining.send_replace(true);
    let finished = tokio::time::timeout(drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            function = function.name(),
            "drain timed out; closing remaining connections"
        );
    }
    Ok(())
}

/// Serves one connection; once `drained` turns true, lets it end by
/// itself (its next response closes it) for [`NEXT_REQUEST_GRACE`], then
/// shuts it down gracefully (see the module docs).
async fn serve_until_drained<C>(
    connection: C,
    mut drained: tokio::sync::watch::Receiver<bool>,
) -> hyper::Result<()>
where
    C: Future<Output = hyper::Result<()>> + GracefulConnection,
{
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => return result,
        _ = drained.wait_for(|drained| *drained) => {}
    }
    tokio::select! {
        result = connection.as_mut() => return result,
        () = tokio::time::sleep(NEXT_REQUEST_GRACE) => {}
    }
    connection.as_mut().graceful_shutdown();
    connection.await
}

/// A hyper connection that can be shut down gracefully.
trait GracefulConnection {
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>);
}

impl<I, S> GracefulConnection for http1::Connection<I, S>
where
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: 'static + hyper::body::Body,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        http1::Connection::graceful_shutdown(self);
    }
}

/// Handles one request: the guest's response, or a named error response.
pub async fn handle(
    function: &Arc<Function>,
    request: Request<Incoming>,
) -> Response<HyperOutgoingBody> {
    let timeout = function.env().limits.request_timeout();
    match invoke(function, request, timeout, Origin::Outside).await {
        Ok(response) => response,
        Err(failure) => error_response(&failure.logged_for(function)),
    }
}

/// Calls `function` in-process with `request`, as if it had come in over
/// HTTP (same limits, pool and failure handling, one log line per failure),
/// with the deadline cut to `timeout` if that is shorter than the
/// function's own. This is `invoke`'s local fast path: no socket.
pub async fn call(
    function: &Arc<Function>,
    request: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<Response<HyperOutgoingBody>, InvocationError> {
    let timeout = timeout.min(function.env().limits.request_timeout());
    invoke(function, request, timeout, Origin::Host)
        .await
        .map_err(|failure| failure.logged_for(function))
}

/// An [`InvocationError`] and whether it has been logged already.
struct Failure {
    error: InvocationError,
    logged: bool,
}

impl Failure {
    /// A failure that was logged where it happened.
    fn logged(error: InvocationError) -> Self {
        Failure {
            error,
            logged: true,
        }
    }

    /// The error, logged once for `function` if it was not yet.
    fn logged_for(self, function: &Function) -> InvocationError {
        if !self.logged {
            log_failure(
                &function.env().namespace,
                function.name(),
                &self.error,
                None,
            );
        }
        self.error
    }
}

impl From<InvocationError> for Failure {
    fn from(error: InvocationError) -> Self {
        Failure {
            error,
            logged: false,
        }
    }
}

/// The response for a failed invocation.
pub fn error_response(error: &InvocationError) -> Response<HyperOutgoingBody> {
    let body = Full::new(Bytes::from(format!("{}: {error}\n", error.name())))
        .map_err(|never| match never {})
        .boxed_unsync();
    Response::builder()
        .status(error.status())
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(ERROR_HEADER, error.name())
        .body(body)
        .expect("static header names and values are valid")
}

fn declared_length<B>(request: &Request<B>) -> Option<u64> {
    request
        .headers()
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Who made a request, which decides which of its headers are believed.
#[derive(Clone, Copy)]
enum Origin {
    /// A client or peer, over the listener: see
    /// [`RequestContext::from_untrusted`].
    Outside,
    /// This host, for a local `invoke`: its headers are the host's own.
    Host,
}

/// One request, as a server span (see [`crate::telemetry`]): a child of
/// its `traceparent`, the parent of its capability calls.
async fn invoke<B>(
    function: &Arc<Function>,
    mut request: Request<B>,
    timeout: Duration,
    origin: Origin,
) -> Result<Response<HyperOutgoingBody>, Failure>
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut context = match origin {
        Origin::Outside => {
            let max_depth = function.capabilities().invoke.settings.max_depth;
            RequestContext::from_untrusted(request.headers_mut(), max_depth)
        }
        Origin::Host => RequestContext::from_headers(request.headers()),
    };
    let span = telemetry::start_request(
        || format!("{} {}", request.method(), function.name()).into(),
        Kind::Server,
        context.traceparent.as_deref(),
    );
    span.set("http.request.method", || request.method().to_string());
    span.set("url.path", || request.uri().path().to_string());
    span.set("hearth.function", || function.name().to_string());
    span.set("k8s.namespace.name", || {
        function.env().namespace.to_string()
    });
    context.trace = span.context();
    let result = invoke_in(function, request, timeout, context).await;
    match &result {
        Ok(response) => span.set("http.response.status_code", || {
            i64::from(response.status().as_u16())
        }),
        Err(failure) => {
            span.set("http.response.status_code", || {
                i64::from(failure.error.status().as_u16())
            });
            span.fail(failure.error.name(), &failure.error);
        }
    }
    result
}

/// [`invoke`], once the request's context is known.
async fn invoke_in<B>(
    function: &Arc<Function>,
    request: Request<B>,
    timeout: Duration,
    context: RequestContext,
) -> Result<Response<HyperOutgoingBody>, Failure>
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let body_limit = function.env().limits.max_request_body_bytes;
    if declared_length(&request).is_some_and(|len| len > body_limit) {
        return Err(InvocationError::BodyTooLarge { limit: body_limit }.into());
    }
    let body_over_limit = Arc::new(AtomicBool::new(false));
    let (parts, body) = request.into_parts();
    let body = limited_body(body, body_limit, body_over_limit.clone());
    if let Some(concurrent) = function.concurrent() {
        let request = Request::from_parts(parts, body.boxed_unsync());
        let response = concurrent
            .handle(function, request, context, timeout)
            .await
            .map_err(Failure::logged);
        if body_over_limit.load(Ordering::Relaxed) {
            return Err(InvocationError::BodyTooLarge { limit: body_limit }.into());
        }
        return response;
    }
    let mut invocation = function
        .begin(Some(timeout), context)
        .await
        .map_err(Failure::logged)?;

    let internal = |e: wasmtime::Error| InvocationError::Internal(format!("{e:#}"));
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let mut http = invocation.store_data().http();
    let incoming = http
        .new_incoming_request(Scheme::Http, Request::from_parts(parts, body))
        .map_err(internal)?;
    let outparam = http.new_response_outparam(sender).map_err(internal)?;

    let remaining = invocation.remaining().unwrap_or(timeout);
    let task = tokio::spawn(run_request(invocation, incoming, outparam));
    let outcome = match tokio::time::timeout(remaining + DEADLINE_SLACK * 2, receiver).await {
        Ok(Ok(Ok(response))) => Ok(response),
        Ok(Ok(Err(code))) => Err(InvocationError::GuestError(format!("{code:?}")).into()),
        // The guest dropped the outparam without answering: the task says why.
        Ok(Err(_)) => match task.await {
            Ok(Ok(())) => Err(InvocationError::NoResponse.into()),
            Ok(Err(error)) => Err(Failure::logged(error)),
            Err(join) => Err(InvocationError::Internal(join.to_string()).into()),
        },
        Err(_) => {
            task.abort();
            Err(InvocationError::Deadline(DeadlineExceeded {
                timeout_ms: timeout.as_millis() as u64,
            })
            .into())
        }
    };
    if body_over_limit.load(Ordering::Relaxed) {
        return Err(InvocationError::BodyTooLarge { limit: body_limit }.into());
    }
    outcome
}

/// `body`, failing with `HttpRequestBodySize` (and setting `over_limit`)
/// once more than `limit` bytes have come.
fn limited_body<B>(
    body: B,
    limit: u64,
    over_limit: Arc<AtomicBool>,
) -> impl hyper::body::Body<Data = Bytes, Error = HttpError> + Send + Sync + 'static
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)).map_err(move |error| {
        if error.is::<LengthLimitError>() {
            over_limit.store(true, Ordering::Relaxed);
            HttpError::HttpRequestBodySize(Some(limit))
        } else {
            match error.downcast::<hyper::Error>() {
                Ok(error) => HttpError::Hyper(*error),
                Err(_) => HttpError::ConnectionTerminated,
            }
        }
    })
}

/// The HTTP trigger's own part of an invocation: the `incoming-handler`
/// export call. It runs in its own task, because the guest may go on
/// streaming the response body after it has sent the response.
async fn run_request(
    mut invocation: Invocation,
    incoming: wasmtime::component::Resource<wasmtime_wasi_http::p2::types::HostIncomingRequest>,
    outparam: wasmtime::component::Resource<wasmtime_wasi_http::p2::types::HostResponseOutparam>,
) -> Result<(), InvocationError> {
    let function = invocation.function().clone();
    let FunctionKind::Service {
        handler: HttpHandler::P2(handler),
        ..
    } = function.kind()
    else {
        return Err(InvocationError::Internal(format!(
            "function `{}` is not a WASI 0.2 service",
            function.name()
        )));
    };
    let deadline = invocation.deadline();
    let ready = invocation.ready();
    let result = deadline
        .run(async {
            let proxy = handler.load(&mut ready.store, &ready.instance)?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut ready.store, incoming, outparam)
                .await
        })
        .await;
    invocation.finish(result).await
}

/// `invoke`'s local route: finds services loaded on `host` by name and
/// calls them through [`call`] (no socket).
pub struct LocalInvoker {
    host: Weak<Host>,
}

impl LocalInvoker {
    /// An invoker for the services loaded on `host`, to inject with
    /// [`HostCapabilities::with_invoker`](crate::capabilities::HostCapabilities::with_invoker).
    pub fn for_host(host: &Arc<Host>) -> Arc<dyn Invoker> {
        Arc::new(LocalInvoker {
            host: Arc::downgrade(host),
        })
    }
}

impl Invoker for LocalInvoker {
    fn local(&self, namespace: &str, name: &str) -> Option<Arc<dyn LocalCallee>> {
        let function = self.host.upgrade()?.local_function(namespace, name)?;
        Some(Arc::new(LocalService(function)))
    }
}

struct LocalService(Arc<Function>);

#[async_trait::async_trait]
impl LocalCallee for LocalService {
    async fn call(
        &self,
        request: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Response<HyperOutgoingBody>, InvocationError> {
        call(&self.0, request, timeout).await
    }
}
