//! `hearth:function/invoke`: one function calling another by name.
//!
//! # Contract
//!
//! * **Names are per namespace** (see [`crate::tenancy`]). `invoke("cart")`
//!   calls `cart` in the caller's own namespace; `invoke("cart.team-b")`
//!   calls `cart` in `team-b`, and only when the caller's namespace policy
//!   lists `cart.team-b` or `*.team-b` in `invoke`; otherwise it is
//!   `not-found`, saying the policy refused it, and no request is made.
//! * **Routing.** A callee loaded in this hearthd (in that namespace) is
//!   called directly: the request goes into one of its pool instances
//!   through the same path the HTTP trigger uses (limits, deadline, pool),
//!   with no socket. Otherwise `NAME.NAMESPACE` is looked up in
//!   `[invoke.targets]` (a base URL; a plain `NAME` key is a function of the
//!   default namespace) and then, if `[invoke] cluster_domain` is set, sent
//!   to `http://NAME.NAMESPACE.svc.DOMAIN` (its Kubernetes Service).
//!   Nothing matches: `not-found`.
//! * **Timeout.** `options.timeout-ms`, else `[invoke] default_timeout_ms`.
//!   A local callee runs with its deadline cut to the call's, so a callee
//!   that loops forever is stopped when the caller's timeout fires.
//! * **Retries** only when the caller sets `idempotent`: an `unavailable`
//!   failure is retried up to `[invoke] retries` times with doubling
//!   backoff from 25 ms, within the timeout. Non-idempotent calls are
//!   tried exactly once.
//! * **Circuit breaker per target** (`NAME.NAMESPACE`, so one namespace's
//!   failing callee never opens another's circuit). A timeout counts as
//!   the target's failure only when the caller allowed at least
//!   `default_timeout_ms`: a caller's own short timeout never opens a
//!   circuit for others. At most [`MAX_BREAKERS`] targets are tracked;
//!   closed circuits are forgotten first, and when every tracked one is
//!   open a new target is called untracked. After `breaker_failures` consecutive
//!   `unavailable`/`timeout` failures a target's circuit opens for
//!   `breaker_open_ms`: calls fail at once with `unavailable` naming the
//!   breaker. Then one call is let through; its success closes the
//!   circuit, its failure opens it again.
//! * **Propagation.** The callee sees `x-request-id` (the caller's, or a
//!   new one), `traceparent` (the caller's trace id with a new parent
//!   span id, or a new trace), `x-hearth-caller` (`NAME.NAMESPACE` of the
//!   caller) and
//!   `x-hearth-invoke-depth`, all set by the host: a guest's own values for
//!   them are dropped. A call that would make the chain deeper than
//!   `max_depth` is `depth-exceeded`, whatever the callee; the count
//!   saturates, it never wraps. A request from outside the host cannot
//!   claim a caller or a depth beyond `max_depth` (see
//!   [`crate::propagation`]).
//! * **Errors.** A local callee's failure maps from its
//!   [`InvocationError`]; a remote Hearth's from its `x-hearth-error`
//!   header: deadline → `timeout`, overloaded → `unavailable`, body too
//!   large → `invalid-request`, any other failure of the callee →
//!   `callee-trapped`. Other responses, any status, are returned as they are.

//!
//! # Host side
//!
//! [`InvokeScope`] (the caller's name, the settings, the injected
//! [`Invoker`] and the host's breakers) is resolved once at load; each
//! instance's [`InvokeCtx`] adds the request in progress, and the host
//! function runs on an [`InvokeView`]. [`add_to_linker`] adds the interface.

use super::bindings::hearth::function::invoke as wit;
use crate::invocation_error::{ErrorKind, InvocationError};
use crate::propagation::{
    CALLER_HEADER, DEPTH_HEADER, ERROR_HEADER, REQUEST_ID_HEADER, RequestContext,
    TRACEPARENT_HEADER, child_traceparent,
};
use crate::telemetry::{Kind, TraceContext};
use crate::tenancy::InvokeTarget;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::component::{HasData, Linker};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// How one function's calls are routed, resolved at load.
pub struct InvokeScope {
    /// The calling function's name (`x-hearth-caller`, logs).
    pub caller: Arc<str>,
    /// The caller's namespace: where plain names are found.
    pub namespace: Arc<str>,
    /// Functions of other namespaces it may call (`name.NS`, `*.NS`; its
    /// namespace's policy).
    pub other_namespaces: Vec<String>,
    /// `[invoke]`.
    pub settings: InvokeSettings,
    /// Finds callees on this node (none: every callee is remote).
    pub invoker: Option<Arc<dyn Invoker>>,
    /// The host's circuit breakers, shared by every caller.
    pub breakers: Arc<Breakers>,
}

impl std::fmt::Debug for InvokeScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InvokeScope")
            .field("caller", &self.caller)
            .field("namespace", &self.namespace)
            .field("other_namespaces", &self.other_namespaces)
            .field("settings", &self.settings)
            .field("local", &self.invoker.is_some())
            .finish()
    }
}

/// One instance's invoke context.
pub struct InvokeCtx {
    /// How its calls are routed.
    pub scope: Arc<InvokeScope>,
    /// The request in progress (set by the trigger before each call).
    pub request: RequestContext,
}

/// What the invoke host function runs on.
pub struct InvokeView<'a> {
    /// The context.
    pub ctx: &'a mut InvokeCtx,
}

/// The [`HasData`] marker of `hearth:function/invoke`.
pub struct Invoke;

impl HasData for Invoke {
    type Data<'a> = InvokeView<'a>;
}

/// Adds `hearth:function/invoke` to `linker`, reaching the view through `get`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> InvokeView<'_>,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, Invoke>(linker, get)
}

/// A function loaded on this node that `invoke` calls without a socket.
#[async_trait::async_trait]
pub trait LocalCallee: Send + Sync {
    /// Calls it with `request`, with its deadline cut to `timeout` if that
    /// is shorter than its own; its failure is logged once by the callee.
    async fn call(
        &self,
        request: http::Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<http::Response<HyperOutgoingBody>, InvocationError>;
}

/// Finds the functions loaded on this node by namespace and name.
/// Injected into [`super::HostCapabilities`] by the layer that serves
/// functions (the HTTP trigger implements it), so this capability never
/// reaches up into it.
pub trait Invoker: Send + Sync {
    /// The local function called `name` in `namespace`, if one is loaded.
    fn local(&self, namespace: &str, name: &str) -> Option<Arc<dyn LocalCallee>>;
}

/// Largest response body a caller receives.
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// `[invoke]` in `hearth.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvokeSettings {
    /// Base URLs of functions not loaded here, by `NAME.NAMESPACE` (or
    /// `NAME`, for [`Self::default_namespace`]).
    pub targets: BTreeMap<String, String>,
    /// The namespace a plain `NAME` in `targets` is in.
    pub default_namespace: String,
    /// `NAME.NAMESPACE.svc.DOMAIN` is tried for other names when set.
    pub cluster_domain: Option<String>,
    /// Longest chain of calls.
    pub max_depth: u32,
    /// Timeout of a call that gives none.
    pub default_timeout: Duration,
    /// Extra attempts for an idempotent call.
    pub retries: u32,
    /// Consecutive failures that open a target's circuit.
    pub breaker_failures: u32,
    /// How long an open circuit stays open.
    pub breaker_open: Duration,
}

impl Default for InvokeSettings {
    fn default() -> Self {
        InvokeSettings {
            targets: BTreeMap::new(),
            default_namespace: crate::tenancy::DEFAULT_NAMESPACE.into(),
            cluster_domain: None,
            max_depth: 8,
            default_timeout: Duration::from_secs(10),
            retries: 2,
            breaker_failures: 5,
            breaker_open: Duration::from_secs(5),
        }
    }
}

/// Targets tracked at most (guests choose names).
pub const MAX_BREAKERS: usize = 4096;

/// Circuit breakers by target name.
#[derive(Default)]
pub struct Breakers(Mutex<HashMap<String, Breaker>>);

#[derive(Default)]
struct Breaker {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

impl Breakers {
    /// `Err(message)` if `target`'s circuit is open.
    fn admit(&self, target: &str) -> Result<(), String> {
        let mut breakers = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !breakers.contains_key(target) && !Self::make_room(&mut breakers) {
            // Full of open circuits: this target is called untracked.
            return Ok(());
        }
        let breaker = breakers.entry(target.to_string()).or_default();
        match breaker.open_until {
            Some(until) if Instant::now() < until => Err(format!(
                "circuit breaker for `{target}` is open after {} consecutive failures; retry in {} ms",
                breaker.consecutive_failures,
                until.saturating_duration_since(Instant::now()).as_millis()
            )),
            Some(_) if breaker.probing => Err(format!(
                "circuit breaker for `{target}` is half-open and a probe call is in flight"
            )),
            Some(_) => {
                breaker.probing = true;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Whether a new target can be tracked: at [`MAX_BREAKERS`], closed
    /// circuits are forgotten first (those with no failures, then those
    /// with some); open ones are kept.
    fn make_room(breakers: &mut HashMap<String, Breaker>) -> bool {
        if breakers.len() >= MAX_BREAKERS {
            breakers.retain(|_, b| b.consecutive_failures > 0 || b.open_until.is_some());
        }
        if breakers.len() >= MAX_BREAKERS {
            breakers.retain(|_, b| b.open_until.is_some());
        }
        breakers.len() < MAX_BREAKERS
    }

    fn record(&self, target: &str, failed: bool, settings: &InvokeSettings) {
        let mut breakers = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !breakers.contains_key(target) && !Self::make_room(&mut breakers) {
            return;
        }
        let breaker = breakers.entry(target.to_string()).or_default();
        breaker.probing = false;
        if failed {
            breaker.consecutive_failures += 1;
            if breaker.consecutive_failures >= settings.breaker_failures {
                if breaker.open_until.is_none()
                    || breaker.consecutive_failures == settings.breaker_failures
                {
                    tracing::warn!(
                        target,
                        failures = breaker.consecutive_failures,
                        "invoke circuit breaker opened"
                    );
                }
                breaker.open_until = Some(Instant::now() + settings.breaker_open);
            }
        } else {
            if breaker.open_until.is_some() {
                tracing::info!(target, "invoke circuit breaker closed");
            }
            *breaker = Breaker::default();
        }
    }
}

/// The URL of a function that is not loaded here: its `[invoke.targets]`
/// entry, else its Service `http://NAME.NAMESPACE.svc.DOMAIN` with the
/// cluster domain, else none.
fn remote_url(settings: &InvokeSettings, target: &InvokeTarget<'_>) -> Option<http::Uri> {
    let key = format!("{}.{}", target.name, target.namespace);
    let plain = (target.namespace == settings.default_namespace)
        .then(|| settings.targets.get(target.name))
        .flatten();
    let base = match settings.targets.get(&key).or(plain) {
        Some(base) => base.clone(),
        None => {
            let domain = settings.cluster_domain.as_ref()?;
            // A Service's name is a DNS label: a name with anything else is
            // not a Service.
            if !crate::tenancy::is_dns_label(target.name) {
                return None;
            }
            format!("http://{key}.svc.{domain}")
        }
    };
    base.parse().ok()
}

/// Where a call goes.
enum Route {
    Local(Arc<dyn LocalCallee>),
    Remote(http::Uri),
}

fn error_from_invocation(target: &str, error: &InvocationError) -> wit::Error {
    let message = format!("`{target}`: {}: {error}", error.name());
    error_from_kind(Some(error.kind()), message)
}

/// What the caller sees of a callee's failure of `kind` (`None`: a remote
/// callee named a kind this host does not know).
fn error_from_kind(kind: Option<ErrorKind>, message: String) -> wit::Error {
    match kind {
        Some(ErrorKind::Deadline) => wit::Error::Timeout(message),
        Some(ErrorKind::Overloaded | ErrorKind::Internal) => wit::Error::Unavailable(message),
        Some(ErrorKind::BodyTooLarge) => wit::Error::InvalidRequest(message),
        Some(
            ErrorKind::MemoryLimit
            | ErrorKind::Trap
            | ErrorKind::InitFailed
            | ErrorKind::NoResponse
            | ErrorKind::GuestError,
        )
        | None => wit::Error::CalleeTrapped(message),
    }
}

impl InvokeView<'_> {
    fn route(&self, target: &InvokeTarget<'_>) -> Option<Route> {
        let scope = &self.ctx.scope;
        if let Some(callee) = scope
            .invoker
            .as_ref()
            .and_then(|i| i.local(target.namespace, target.name))
        {
            return Some(Route::Local(callee));
        }
        remote_url(&scope.settings, target).map(Route::Remote)
    }

    fn build_request(
        &mut self,
        target: &str,
        request: &wit::Request,
        depth: u32,
        span: &TraceContext,
    ) -> Result<http::Request<Full<Bytes>>, wit::Error> {
        let invalid = |what: String| wit::Error::InvalidRequest(what);
        let method = http::Method::from_bytes(request.method.as_bytes())
            .map_err(|_| invalid(format!("invalid method {:?}", request.method)))?;
        let path = if request.path_with_query.is_empty() {
            "/"
        } else {
            &request.path_with_query
        };
        let uri: http::Uri = path
            .parse()
            .map_err(|_| invalid(format!("invalid path {path:?}")))?;
        if uri.scheme().is_some() || !path.starts_with('/') {
            return Err(invalid(format!(
                "the path must start with `/` (the callee is named, not addressed): {path:?}"
            )));
        }
        let mut builder = http::Request::builder().method(method).uri(uri);
        for (name, value) in &request.headers {
            let lower = name.to_ascii_lowercase();
            if [
                DEPTH_HEADER,
                REQUEST_ID_HEADER,
                TRACEPARENT_HEADER,
                CALLER_HEADER,
                "host",
            ]
            .contains(&lower.as_str())
            {
                continue;
            }
            let name = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid(format!("invalid header name {name:?}")))?;
            let value = http::HeaderValue::from_bytes(value)
                .map_err(|_| invalid(format!("invalid value for header `{name}`")))?;
            builder = builder.header(name, value);
        }
        // wasi:http needs an authority; a local callee sees its own name
        // (a remote one gets its URL's host instead).
        let authority = http::HeaderValue::from_str(target)
            .unwrap_or_else(|_| http::HeaderValue::from_static("localhost"));
        builder = builder.header(http::header::HOST, authority);
        // A request that came without an id gets one on its first call, kept
        // for its later calls, so every hop of a chain carries the same id.
        let request_id = self.ctx.request.request_id_or_new();
        // The call's own span is the callee's parent when it is traced.
        let traceparent = span
            .traceparent()
            .unwrap_or_else(|| child_traceparent(self.ctx.request.traceparent.as_deref()));
        builder = builder
            .header(REQUEST_ID_HEADER, request_id)
            .header(TRACEPARENT_HEADER, traceparent)
            .header(DEPTH_HEADER, depth.to_string())
            .header(
                CALLER_HEADER,
                format!("{}.{}", self.ctx.scope.caller, self.ctx.scope.namespace),
            );
        builder
            .body(Full::new(Bytes::from(request.body.clone())))
            .map_err(|e| invalid(e.to_string()))
    }
}

async fn attempt_call(
    target: &str,
    route: &Route,
    request: http::Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<wit::Response, wit::Error> {
    match route {
        Route::Local(callee) => {
            let response = callee
                .call(request, timeout)
                .await
                .map_err(|error| error_from_invocation(target, &error))?;
            read_response(target, response, timeout).await
        }
        Route::Remote(base) => {
            let work = remote_call(target, base, request);
            match tokio::time::timeout(timeout, work).await {
                Ok(result) => result,
                Err(_) => Err(wit::Error::Timeout(format!(
                    "`{target}` did not answer within {} ms",
                    timeout.as_millis()
                ))),
            }
        }
    }
}

async fn read_response<B>(
    target: &str,
    response: http::Response<B>,
    timeout: Duration,
) -> Result<wit::Response, wit::Error>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::fmt::Display + Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = response.into_parts();
    if let Some(name) = parts
        .headers
        .get(ERROR_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        let detail =
            match tokio::time::timeout(timeout, Limited::new(body, 64 << 10).collect()).await {
                Ok(Ok(body)) => String::from_utf8_lossy(&body.to_bytes()).trim().to_string(),
                _ => String::new(),
            };
        return Err(error_from_kind(
            ErrorKind::from_name(name),
            format!("`{target}`: {detail}"),
        ));
    }
    let body = match tokio::time::timeout(timeout, Limited::new(body, MAX_RESPONSE_BYTES).collect())
        .await
    {
        Ok(Ok(body)) => body.to_bytes().to_vec(),
        Ok(Err(error)) => {
            return Err(wit::Error::CalleeTrapped(format!(
                "`{target}`: reading its response failed: {error}"
            )));
        }
        Err(_) => {
            return Err(wit::Error::Timeout(format!(
                "`{target}`: its response body did not finish within {} ms",
                timeout.as_millis()
            )));
        }
    };
    Ok(wit::Response {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
            .collect(),
        body,
    })
}

async fn remote_call(
    target: &str,
    base: &http::Uri,
    request: http::Request<Full<Bytes>>,
) -> Result<wit::Response, wit::Error> {
    let unavailable =
        |what: String| wit::Error::Unavailable(format!("`{target}` at {base}: {what}"));
    let host = base
        .host()
        .ok_or_else(|| unavailable("the target URL has no host".into()))?
        .to_string();
    let port = base.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| unavailable(format!("cannot connect: {e}")))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| unavailable(format!("handshake failed: {e}")))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let (mut parts, body) = request.into_parts();
    let base_path = base.path().trim_end_matches('/');
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    parts.uri = format!("{base_path}{path}")
        .parse()
        .map_err(|_| unavailable("the target URL and path do not make a URL".into()))?;
    let authority = base
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or(host);
    parts.headers.insert(
        http::header::HOST,
        http::HeaderValue::from_str(&authority).map_err(|_| unavailable("invalid host".into()))?,
    );
    let response = sender
        .send_request(http::Request::from_parts(parts, body))
        .await
        .map_err(|e| unavailable(format!("request failed: {e}")))?;
    read_response(target, response, Duration::from_secs(3600)).await
}

impl wit::Host for InvokeView<'_> {
    async fn call(
        &mut self,
        target: String,
        request: wit::Request,
        options: wit::Options,
    ) -> wasmtime::Result<Result<wit::Response, wit::Error>> {
        let span = self
            .ctx
            .request
            .trace
            .start_with(|| format!("invoke {target}").into(), Kind::Client);
        span.set("hearth.invoke.target", || target.clone());
        let result = self.call_as(span.context(), target, request, options).await;
        match &result {
            Ok(Ok(response)) => {
                span.set("http.response.status_code", || i64::from(response.status))
            }
            Ok(Err(error)) => span.fail(error_name(error), format!("{error:?}")),
            Err(trap) => span.fail("trap", trap),
        }
        result
    }
}

/// The name of an invoke error, as the WIT spells it.
fn error_name(error: &wit::Error) -> &'static str {
    match error {
        wit::Error::NotFound(_) => "not-found",
        wit::Error::Timeout(_) => "timeout",
        wit::Error::Unavailable(_) => "unavailable",
        wit::Error::CalleeTrapped(_) => "callee-trapped",
        wit::Error::DepthExceeded(_) => "depth-exceeded",
        wit::Error::InvalidRequest(_) => "invalid-request",
    }
}

impl InvokeView<'_> {
    /// `call`, as the span `span`.
    async fn call_as(
        &mut self,
        span: TraceContext,
        target: String,
        request: wit::Request,
        options: wit::Options,
    ) -> wasmtime::Result<Result<wit::Response, wit::Error>> {
        let scope = self.ctx.scope.clone();
        let settings = &scope.settings;
        let depth = self.ctx.request.depth.saturating_add(1);
        let caller = scope.caller.clone();
        if depth > settings.max_depth {
            let error = format!(
                "calling `{target}` would make a chain of {depth} calls; the limit is {}",
                settings.max_depth
            );
            tracing::warn!(function = %caller, target, "invoke refused: {error}");
            return Ok(Err(wit::Error::DepthExceeded(error)));
        }
        let Some(callee) = InvokeTarget::parse(&target, &scope.namespace) else {
            return Ok(Err(wit::Error::NotFound(format!(
                "`{target}`: after the last `.` must come a namespace name"
            ))));
        };
        if callee.namespace != &*scope.namespace && !callee.allowed_by(&scope.other_namespaces) {
            let error = format!(
                "`{target}`: namespace `{}` may not invoke functions of namespace `{}` (invoke in [tenancy.namespaces.{}] of hearthd's hearth.toml)",
                scope.namespace, callee.namespace, scope.namespace
            );
            tracing::warn!(function = %caller, namespace = %scope.namespace, target, "invoke refused by policy");
            return Ok(Err(wit::Error::NotFound(error)));
        }
        let Some(route) = self.route(&callee) else {
            tracing::warn!(function = %caller, namespace = %scope.namespace, target, "invoke of unknown function");
            return Ok(Err(wit::Error::NotFound(format!(
                "no function `{}` of namespace `{}` is loaded on this host or configured in [invoke.targets]",
                callee.name, callee.namespace
            ))));
        };
        let breaker_key = format!("{}.{}", callee.name, callee.namespace);
        let http_request = match self.build_request(&target, &request, depth, &span) {
            Ok(request) => request,
            Err(error) => return Ok(Err(error)),
        };
        let timeout = options
            .timeout_ms
            .map(|ms| Duration::from_millis(ms.into()))
            .unwrap_or(settings.default_timeout);
        let deadline = Instant::now() + timeout;
        let attempts = if options.idempotent {
            1 + settings.retries
        } else {
            1
        };
        let mut backoff = Duration::from_millis(25);
        let breakers = &scope.breakers;
        for attempt in 1..=attempts {
            if let Err(open) = breakers.admit(&breaker_key) {
                return Ok(Err(wit::Error::Unavailable(open)));
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let request = clone_request(&http_request);
            let result = attempt_call(&target, &route, request, remaining).await;
            // A timeout counts against the target only when the caller gave
            // it at least the node's default time: a caller's own
            // impatience (`timeout-ms = 0`) never opens a circuit for others.
            let counts_as_failure = match &result {
                Err(wit::Error::Unavailable(_)) => true,
                Err(wit::Error::Timeout(_)) => timeout >= settings.default_timeout,
                _ => false,
            };
            breakers.record(&breaker_key, counts_as_failure, settings);
            match result {
                Err(wit::Error::Unavailable(error))
                    if attempt < attempts
                        && deadline.saturating_duration_since(Instant::now()) > backoff =>
                {
                    tracing::info!(function = %caller, target, attempt, "idempotent invoke retried: {error}");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Err(error) => {
                    tracing::warn!(function = %caller, target, "invoke failed: {error:?}");
                    return Ok(Err(error));
                }
                Ok(response) => return Ok(Ok(response)),
            }
        }
        unreachable!("the last attempt always returns")
    }
}

fn clone_request(request: &http::Request<Full<Bytes>>) -> http::Request<Full<Bytes>> {
    let mut builder = http::Request::builder()
        .method(request.method().clone())
        .uri(request.uri().clone());
    for (name, value) in request.headers() {
        builder = builder.header(name, value);
    }
    builder
        .body(request.body().clone())
        .expect("parts of a valid request are valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invocation_error::{InvocationError, Overloaded};
    use crate::limits::DeadlineExceeded;
    use wit::Host as _;

    /// What the fake callee answers: the request's headers back, or a failure.
    #[derive(Clone, Copy)]
    enum Answer {
        EchoHeaders,
        Fail(ErrorKind),
    }

    /// The injected seam: one local function, `callee`, answering `answer`.
    struct OneCallee {
        answer: Answer,
        seen: Mutex<Vec<http::HeaderMap>>,
    }

    #[async_trait::async_trait]
    impl LocalCallee for Arc<OneCallee> {
        async fn call(
            &self,
            request: http::Request<Full<Bytes>>,
            _timeout: Duration,
        ) -> Result<http::Response<HyperOutgoingBody>, InvocationError> {
            self.seen.lock().unwrap().push(request.headers().clone());
            match self.answer {
                Answer::EchoHeaders => {
                    let body = Full::new(Bytes::from_static(b"ok"))
                        .map_err(|never| match never {})
                        .boxed_unsync();
                    Ok(http::Response::new(body))
                }
                Answer::Fail(ErrorKind::Deadline) => {
                    Err(InvocationError::Deadline(DeadlineExceeded {
                        timeout_ms: 5,
                    }))
                }
                Answer::Fail(ErrorKind::Overloaded) => {
                    Err(InvocationError::Overloaded(Overloaded {
                        max: 1,
                        waited_ms: 5,
                    }))
                }
                Answer::Fail(_) => Err(InvocationError::Trap {
                    message: "unreachable".into(),
                }),
            }
        }
    }

    impl Invoker for Arc<OneCallee> {
        fn local(&self, namespace: &str, name: &str) -> Option<Arc<dyn LocalCallee>> {
            (namespace == "team-a" && name == "callee")
                .then(|| Arc::new(self.clone()) as Arc<dyn LocalCallee>)
        }
    }

    fn ctx(answer: Answer, settings: InvokeSettings, depth: u32) -> (InvokeCtx, Arc<OneCallee>) {
        let callee = Arc::new(OneCallee {
            answer,
            seen: Mutex::default(),
        });
        let ctx = InvokeCtx {
            scope: Arc::new(InvokeScope {
                caller: "caller".into(),
                namespace: "team-a".into(),
                other_namespaces: Vec::new(),
                settings,
                invoker: Some(Arc::new(callee.clone())),
                breakers: Arc::default(),
            }),
            request: RequestContext {
                depth,
                request_id: None,
                traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
                ..Default::default()
            },
        };
        (ctx, callee)
    }

    fn request(headers: &[(&str, &str)]) -> wit::Request {
        wit::Request {
            method: "GET".into(),
            path_with_query: "/x".into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: Vec::new(),
        }
    }

    fn options() -> wit::Options {
        wit::Options {
            timeout_ms: Some(1000),
            idempotent: false,
        }
    }

    #[tokio::test]
    async fn a_local_call_carries_the_host_set_caller_depth_and_one_request_id() {
        let (mut ctx, callee) = ctx(Answer::EchoHeaders, InvokeSettings::default(), 2);
        let mut view = InvokeView { ctx: &mut ctx };
        let spoofing = request(&[
            (CALLER_HEADER, "admin"),
            (DEPTH_HEADER, "0"),
            ("x-app", "1"),
        ]);
        for _ in 0..2 {
            let response = view
                .call("callee".into(), spoofing.clone(), options())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (response.status, response.body.as_slice()),
                (200, &b"ok"[..])
            );
        }
        let seen = callee.seen.lock().unwrap();
        let header =
            |i: usize, name: &str| seen[i].get(name).unwrap().to_str().unwrap().to_string();
        assert_eq!(
            header(0, CALLER_HEADER),
            "caller.team-a",
            "the guest cannot name the caller"
        );
        assert_eq!(
            header(0, DEPTH_HEADER),
            "3",
            "the guest cannot reset the depth"
        );
        assert_eq!(header(0, "x-app"), "1");
        assert_eq!(header(0, REQUEST_ID_HEADER), header(1, REQUEST_ID_HEADER));
        assert!(header(0, TRACEPARENT_HEADER).contains("4bf92f3577b34da6a3ce929d0e0e4736"));
    }

    #[tokio::test]
    async fn another_namespaces_function_is_reached_only_when_the_policy_allows() {
        let (mut ctx, callee) = ctx(Answer::EchoHeaders, InvokeSettings::default(), 0);
        let invoker = ctx.scope.invoker.clone();
        let from_team_b = |other_namespaces: Vec<String>| {
            Arc::new(InvokeScope {
                caller: "caller".into(),
                namespace: "team-b".into(),
                other_namespaces,
                settings: InvokeSettings::default(),
                invoker: invoker.clone(),
                breakers: Arc::default(),
            })
        };
        ctx.scope = from_team_b(Vec::new());
        let mut view = InvokeView { ctx: &mut ctx };
        let own = view.call("callee".into(), request(&[]), options()).await;
        assert!(
            matches!(&own, Ok(Err(wit::Error::NotFound(m))) if m.contains("namespace `team-b`")),
            "a plain name is the caller's own namespace: {own:?}"
        );
        let refused = view
            .call("callee.team-a".into(), request(&[]), options())
            .await;
        assert!(
            matches!(&refused, Ok(Err(wit::Error::NotFound(m))) if m.contains("may not invoke functions of namespace `team-a`")),
            "{refused:?}"
        );
        assert!(
            callee.seen.lock().unwrap().is_empty(),
            "no request was made"
        );
        ctx.scope = from_team_b(vec!["*.team-c".into(), "callee.team-a".into()]);
        let mut view = InvokeView { ctx: &mut ctx };
        let allowed = view
            .call("callee.team-a".into(), request(&[]), options())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(allowed.status, 200);
        let seen = callee.seen.lock().unwrap();
        assert_eq!(seen[0].get(CALLER_HEADER).unwrap(), "caller.team-b");
    }

    #[tokio::test]
    async fn a_chain_at_its_depth_limit_and_an_unknown_name_are_refused_without_a_call() {
        let (mut ctx, callee) = ctx(Answer::EchoHeaders, InvokeSettings::default(), 8);
        let mut view = InvokeView { ctx: &mut ctx };
        let deep = view
            .call("callee".into(), request(&[]), options())
            .await
            .unwrap();
        assert!(
            matches!(deep, Err(wit::Error::DepthExceeded(_))),
            "{deep:?}"
        );
        view.ctx.request.depth = 0;
        let unknown = view
            .call("nobody".into(), request(&[]), options())
            .await
            .unwrap();
        assert!(
            matches!(unknown, Err(wit::Error::NotFound(_))),
            "{unknown:?}"
        );
        assert!(callee.seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_callee_failure_maps_from_its_kind() {
        for (kind, expected) in [
            (ErrorKind::Deadline, "timeout"),
            (ErrorKind::Overloaded, "unavailable"),
            (ErrorKind::Trap, "callee-trapped"),
        ] {
            let (mut ctx, _) = ctx(Answer::Fail(kind), InvokeSettings::default(), 0);
            let mut view = InvokeView { ctx: &mut ctx };
            let error = view
                .call("callee".into(), request(&[]), options())
                .await
                .unwrap()
                .unwrap_err();
            let name = match error {
                wit::Error::Timeout(_) => "timeout",
                wit::Error::Unavailable(_) => "unavailable",
                wit::Error::CalleeTrapped(_) => "callee-trapped",
                other => panic!("{other:?}"),
            };
            assert_eq!(name, expected, "{kind:?}");
        }
        assert!(matches!(
            error_from_kind(None, "x".into()),
            wit::Error::CalleeTrapped(_)
        ));
    }

    #[tokio::test]
    async fn an_unavailable_callee_opens_its_breaker() {
        let settings = InvokeSettings {
            breaker_failures: 2,
            ..Default::default()
        };
        let (mut ctx, callee) = ctx(Answer::Fail(ErrorKind::Overloaded), settings, 0);
        let mut view = InvokeView { ctx: &mut ctx };
        for _ in 0..2 {
            view.call("callee".into(), request(&[]), options())
                .await
                .unwrap()
                .unwrap_err();
        }
        let refused = view
            .call("callee".into(), request(&[]), options())
            .await
            .unwrap();
        let Err(wit::Error::Unavailable(message)) = refused else {
            panic!("{refused:?}");
        };
        assert!(message.contains("circuit breaker"), "{message}");
        assert_eq!(
            callee.seen.lock().unwrap().len(),
            2,
            "the open breaker made no call"
        );
    }

    #[test]
    fn remote_targets_come_from_config_then_the_cluster_domain() {
        let mut settings = InvokeSettings {
            targets: BTreeMap::from([
                ("billing".to_string(), "http://10.0.0.7:8080".to_string()),
                (
                    "ledger.team-b".to_string(),
                    "http://10.0.0.8:8080".to_string(),
                ),
            ]),
            ..Default::default()
        };
        let url = |s: &InvokeSettings, t: &str, ns: &str| {
            remote_url(s, &InvokeTarget::parse(t, ns).unwrap()).map(|u| u.to_string())
        };
        assert_eq!(
            url(&settings, "billing", "default").as_deref(),
            Some("http://10.0.0.7:8080/")
        );
        assert_eq!(
            url(&settings, "billing", "team-b"),
            None,
            "a plain key is the default namespace's"
        );
        assert_eq!(
            url(&settings, "ledger", "team-b").as_deref(),
            Some("http://10.0.0.8:8080/")
        );
        assert_eq!(
            url(&settings, "orders", "shop"),
            None,
            "no domain: not found"
        );
        settings.cluster_domain = Some("cluster.local".into());
        assert_eq!(
            url(&settings, "orders", "shop").as_deref(),
            Some("http://orders.shop.svc.cluster.local/")
        );
        assert_eq!(
            url(&settings, "orders.team-b", "shop").as_deref(),
            Some("http://orders.team-b.svc.cluster.local/")
        );
        assert_eq!(url(&settings, "Not A Service", "shop"), None);
        assert!(InvokeTarget::parse("evil.com/x", "shop").is_none());
    }

    #[tokio::test]
    async fn a_callers_own_short_timeout_never_opens_the_breaker() {
        let settings = InvokeSettings {
            breaker_failures: 2,
            ..Default::default()
        };
        let (mut ctx, callee) = ctx(Answer::Fail(ErrorKind::Deadline), settings, 0);
        let mut view = InvokeView { ctx: &mut ctx };
        let impatient = wit::Options {
            timeout_ms: Some(1),
            idempotent: false,
        };
        for _ in 0..5 {
            let result = view
                .call("callee".into(), request(&[]), impatient)
                .await
                .unwrap();
            assert!(matches!(result, Err(wit::Error::Timeout(_))), "{result:?}");
        }
        assert_eq!(callee.seen.lock().unwrap().len(), 5, "every call was made");
        let patient = wit::Options {
            timeout_ms: None,
            idempotent: false,
        };
        for _ in 0..2 {
            view.call("callee".into(), request(&[]), patient)
                .await
                .unwrap()
                .unwrap_err();
        }
        let refused = view
            .call("callee".into(), request(&[]), impatient)
            .await
            .unwrap();
        assert!(
            matches!(&refused, Err(wit::Error::Unavailable(m)) if m.contains("circuit breaker")),
            "timeouts within the node's default do count: {refused:?}"
        );
    }

    #[test]
    fn the_breaker_map_stays_bounded_when_every_target_fails() {
        let settings = InvokeSettings {
            breaker_failures: 1,
            ..Default::default()
        };
        let breakers = Breakers::default();
        for n in 0..MAX_BREAKERS + 100 {
            let target = format!("t{n}.ns");
            breakers.admit(&target).unwrap();
            breakers.record(&target, true, &settings);
        }
        assert_eq!(breakers.0.lock().unwrap().len(), MAX_BREAKERS);
        assert!(
            breakers.admit("t0.ns").is_err(),
            "tracked circuits stay open"
        );
        assert!(
            breakers.admit("new.ns").is_ok(),
            "a new target is called untracked"
        );
    }

    #[test]
    fn the_breaker_opens_after_consecutive_failures_and_closes_after_a_good_probe() {
        let settings = InvokeSettings {
            breaker_failures: 3,
            breaker_open: Duration::from_millis(50),
            ..Default::default()
        };
        let breakers = Breakers::default();
        for _ in 0..2 {
            breakers.admit("b").unwrap();
            breakers.record("b", true, &settings);
        }
        breakers.admit("b").unwrap();
        breakers.record("b", false, &settings);
        for _ in 0..3 {
            breakers.admit("b").unwrap();
            breakers.record("b", true, &settings);
        }
        let open = breakers.admit("b").unwrap_err();
        assert!(open.contains("open after 3 consecutive failures"), "{open}");
        assert!(breakers.admit("other").is_ok(), "per target");
        std::thread::sleep(Duration::from_millis(80));
        breakers.admit("b").unwrap();
        assert!(
            breakers.admit("b").is_err(),
            "only one probe while half-open"
        );
        breakers.record("b", false, &settings);
        breakers.admit("b").unwrap();
    }
}
