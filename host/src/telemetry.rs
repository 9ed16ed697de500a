//! Traces: hearthd's spans, exported over OTLP/HTTP to a collector.
//!
//! # Contract
//!
//! * **Off unless asked for.** Nothing is traced (and tracing costs a
//!   `None` check per call) unless an OTLP endpoint is configured:
//!   `endpoint` in `[telemetry]` of `hearth.toml`, or the standard
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the full URL) or
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` (a base; `/v1/traces` is appended).
//!   `hearth.toml` wins over the variables, as a program's own setting does
//!   in every OpenTelemetry SDK. `OTEL_SDK_DISABLED=true` or
//!   `OTEL_TRACES_EXPORTER=none` turn it off whatever the file says.
//! * **OTLP over HTTP, protobuf** (a collector's port 4318). A
//!   `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL` asking for anything else, another
//!   `OTEL_TRACES_EXPORTER`, or an endpoint that is not a URL is an error at
//!   start ([`TelemetryError`]): a daemon that silently exports nothing is
//!   worse than one that does not start. `OTEL_EXPORTER_OTLP_HEADERS`,
//!   `_TIMEOUT`, `OTEL_TRACES_SAMPLER(_ARG)`, `OTEL_BSP_*`,
//!   `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` work as the SDK
//!   documents them; `service_name` and `sample_ratio` in `[telemetry]`
//!   override the last two's counterparts. The default service name is
//!   `hearthd` (`hearth` for `hearth run`). The default sampler follows
//!   the caller's decision (parent-based, always on for a new trace), so a
//!   client can have its own requests traced; `OTEL_TRACES_SAMPLER=
//!   traceidratio` ignores callers.
//! * **Spans.** One per request or message ([`start_request`], kind server
//!   or consumer), a child of the incoming `traceparent` when there is a
//!   valid one (a malformed one starts a new trace). Children of it: the
//!   pool checkout, and every capability call: state, invoke, publish and
//!   blob ([`TraceContext::start`]). An `invoke` sends its own span as the
//!   callee's `traceparent`, and a publish puts its span in the message's
//!   `traceparent` header (unless the guest set one), so a chain of calls
//!   and messages is one trace. Loading a function makes a `compile` span
//!   (and pulling one a `pull` span): a child of what asked for it (a
//!   control API call) or a trace of its own.
//! * **Bounded.** Spans wait for export in the SDK's batch queue
//!   (`OTEL_BSP_MAX_QUEUE_SIZE`, 2048 by default), exported from its own
//!   thread; a full queue drops spans, never blocks a request. A collector
//!   that is down costs failed exports, logged by the SDK (targets
//!   `opentelemetry_sdk` and `opentelemetry-otlp`), and the spans of those
//!   batches.
//! * Attributes never carry a request's or a message's payload, headers or
//!   keys: only names the operator chose (functions, namespaces, topics,
//!   stores), methods, paths and outcomes.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use std::borrow::Cow;
use std::fmt::Display;
use std::sync::OnceLock;

pub use opentelemetry::trace::SpanKind as Kind;

/// The tracer of this process, once [`init`] has installed one.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// `[telemetry]` of `hearth.toml` (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// The collector's OTLP/HTTP endpoint: a base URL
    /// (`http://otel-collector:4318`, traces go to `/v1/traces` under it)
    /// or the full URL, ending in `/v1/traces`.
    pub endpoint: Option<String>,
    /// `service.name` of the spans (default: `OTEL_SERVICE_NAME`, else
    /// `hearthd`).
    pub service_name: Option<String>,
    /// The fraction of new traces kept, 0.0–1.0; a request that comes with
    /// a `traceparent` follows its caller's decision.
    pub sample_ratio: Option<f64>,
}

/// Tracing cannot be set up as configured.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A setting is not one hearthd can follow.
    #[error("telemetry: {setting}: {detail}")]
    Setting {
        /// The key or variable.
        setting: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The exporter could not be built.
    #[error("telemetry: cannot build the OTLP exporter for {endpoint}: {detail}")]
    Exporter {
        /// Where it would export to.
        endpoint: String,
        /// Why it cannot.
        detail: String,
    },
}

/// The installed exporter: flush it with [`Exporting::shutdown`] before the
/// process exits, or the last batch is lost.
pub struct Exporting {
    provider: SdkTracerProvider,
    /// Where spans go.
    pub endpoint: String,
}

impl Exporting {
    /// Exports what is queued and stops the exporter.
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, endpoint = %self.endpoint, "telemetry: the last spans were not exported");
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|value| value.trim().to_string())
        .filter(|value| !value.is_empty())
}

/// The traces URL for an endpoint given as a base (a path prefix is kept,
/// as the OTLP spec says): `/v1/traces` appended, unless it ends so already.
fn traces_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

/// Where to export to, and from which setting, per the module docs; `None`:
/// tracing is off.
fn resolve_endpoint(
    settings: &TelemetrySettings,
) -> Result<Option<(String, &'static str)>, TelemetryError> {
    let setting = |setting: &str, detail: String| TelemetryError::Setting {
        setting: setting.to_string(),
        detail,
    };
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    match env("OTEL_TRACES_EXPORTER").as_deref() {
        None | Some("otlp") => {}
        Some("none") => return Ok(None),
        Some(other) => {
            return Err(setting(
                "OTEL_TRACES_EXPORTER",
                format!("`{other}` is not supported; hearthd exports `otlp` (or `none`)"),
            ));
        }
    }
    for variable in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(protocol) = env(variable) {
            if protocol != "http/protobuf" {
                return Err(setting(
                    variable,
                    format!(
                        "`{protocol}` is not supported; hearthd exports OTLP over HTTP with protobuf \
                         (`http/protobuf`, a collector's port 4318)"
                    ),
                ));
            }
            break;
        }
    }
    let endpoint = match settings.endpoint.as_deref().filter(|e| !e.is_empty()) {
        Some(base) => Some((traces_url(base), "[telemetry] endpoint")),
        None => match env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some(url) => Some((url, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")),
            None => env("OTEL_EXPORTER_OTLP_ENDPOINT")
                .map(|base| (traces_url(&base), "OTEL_EXPORTER_OTLP_ENDPOINT")),
        },
    };
    if let Some((url, from)) = &endpoint {
        let parsed: Result<http::Uri, _> = url.parse();
        if !parsed.is_ok_and(|uri| {
            matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some()
        }) {
            return Err(setting(
                from,
                format!("`{url}` is not an http:// or https:// URL"),
            ));
        }
    }
    if let Some(ratio) = settings.sample_ratio
        && !(0.0..=1.0).contains(&ratio)
    {
        return Err(setting(
            "[telemetry] sample_ratio",
            format!("{ratio} is not between 0.0 and 1.0"),
        ));
    }
    Ok(endpoint)
}

/// Installs the exporter `settings` and the `OTEL_*` variables describe,
/// if they name an endpoint (see the module docs), with `service` as the
/// service name unless they name one. Call it once, from within a tokio
/// runtime or not; a second call changes nothing.
pub fn init(
    settings: &TelemetrySettings,
    service: &str,
) -> Result<Option<Exporting>, TelemetryError> {
    let Some((endpoint, from)) = resolve_endpoint(settings)? else {
        return Ok(None);
    };
    if TRACER.get().is_some() {
        return Ok(None);
    }
    let exporter_error = |detail: String| TelemetryError::Exporter {
        endpoint: endpoint.clone(),
        detail,
    };
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(endpoint.clone())
        .build()
        .map_err(|e| exporter_error(e.to_string()))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if let Some(name) = &settings.service_name {
        resource = resource.with_service_name(name.clone());
    } else if env("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_string());
    }
    if let Ok(host) = nix::unistd::gethostname()
        && let Some(host) = host.to_str()
    {
        resource = resource.with_attribute(KeyValue::new("host.name", host.to_string()));
    }
    let mut provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build());
    if let Some(ratio) = settings.sample_ratio {
        provider = provider.with_sampler(Sampler::ParentBased(Box::new(
            Sampler::TraceIdRatioBased(ratio),
        )));
    }
    let provider = provider.build();
    let _ = TRACER.set(provider.tracer("hearth"));
    tracing::info!(%endpoint, from, "exporting traces over OTLP/HTTP");
    Ok(Some(Exporting { provider, endpoint }))
}

/// Whether spans are being made (an exporter is installed).
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// The span some work runs under, to start children of; empty when nothing
/// is traced. Cheap to clone.
#[derive(Clone, Default)]
pub struct TraceContext(Option<Context>);

impl std::fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(context) => write!(f, "TraceContext({:?})", context.span().span_context()),
            None => f.write_str("TraceContext(none)"),
        }
    }
}

impl TraceContext {
    /// The span the calling task runs under (one that a caller entered
    /// with [`TraceContext::scope`]), if any.
    pub fn current() -> Self {
        if !enabled() {
            return TraceContext(None);
        }
        let context = Context::current();
        TraceContext(context.has_active_span().then_some(context))
    }

    /// Runs `work` with this as the [current](TraceContext::current) span.
    pub fn scope<F: Future>(&self, work: F) -> impl Future<Output = F::Output> {
        let context = self.0.clone().unwrap_or_default();
        opentelemetry::trace::FutureExt::with_context(work, context)
    }

    /// Whether there is a span.
    pub fn is_traced(&self) -> bool {
        self.0.is_some()
    }

    /// A child span `name` of kind `kind`; nothing when this is empty.
    pub fn start(&self, name: &'static str, kind: SpanKind) -> Span {
        self.start_with(|| name.into(), kind)
    }

    /// [`TraceContext::start`] with a name made only if there is a span.
    pub fn start_with(&self, name: impl FnOnce() -> Cow<'static, str>, kind: SpanKind) -> Span {
        match (&self.0, TRACER.get()) {
            (Some(parent), Some(tracer)) => Span::started(tracer, name(), kind, parent),
            _ => Span::none(),
        }
    }

    /// The W3C `traceparent` naming this span, for the next hop.
    pub fn traceparent(&self) -> Option<String> {
        let context = self.0.as_ref()?;
        let span = context.span();
        let span = span.span_context();
        span.is_valid().then(|| {
            format!(
                "00-{}-{}-{:02x}",
                span.trace_id(),
                span.span_id(),
                span.trace_flags().to_u8()
            )
        })
    }
}

/// A span in progress; it ends when [`Span::end`] is called or when it is
/// dropped (work cancelled half-way still ends its span). Empty (every
/// method a no-op) when nothing is traced.
pub struct Span(TraceContext);

impl Span {
    fn none() -> Self {
        Span(TraceContext(None))
    }

    fn started(
        tracer: &SdkTracer,
        name: Cow<'static, str>,
        kind: SpanKind,
        parent: &Context,
    ) -> Self {
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .start_with_context(tracer, parent);
        Span(TraceContext(Some(parent.with_span(span))))
    }

    /// Its context, for children and for the next hop.
    pub fn context(&self) -> TraceContext {
        self.0.clone()
    }

    /// Whether it is recorded (traced and sampled): worth building
    /// attributes for.
    pub fn is_recording(&self) -> bool {
        self.0.0.as_ref().is_some_and(|c| c.span().is_recording())
    }

    /// Sets an attribute, if the span is recorded; `value` is built only
    /// then.
    pub fn set<V: Into<opentelemetry::Value>>(&self, key: &'static str, value: impl FnOnce() -> V) {
        if let Some(context) = &self.0.0 {
            let span = context.span();
            if span.is_recording() {
                span.set_attribute(KeyValue::new(key, value().into()));
            }
        }
    }

    /// Marks it failed: `kind` (the error's name) as `error.type`, and
    /// `message` as the status.
    pub fn fail(&self, kind: &str, message: impl Display) {
        if let Some(context) = &self.0.0 {
            let span = context.span();
            if span.is_recording() {
                span.set_attribute(KeyValue::new("error.type", kind.to_string()));
                span.set_status(Status::error(message.to_string()));
            }
        }
    }

    /// Ends it with `result`: failed with the error if it is one.
    pub fn end_with<T, E: Display>(self, result: &Result<T, E>) {
        if let Err(error) = result {
            self.fail("error", error);
        }
    }

    /// Ends it now.
    pub fn end(self) {}
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(context) = &self.0.0 {
            context.span().end();
        }
    }
}

/// A request's `traceparent`, as the propagator reads it.
struct Incoming<'a>(Option<&'a str>);

impl Extractor for Incoming<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        if key == "traceparent" { self.0 } else { None }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

/// Starts the span of one request or message: `name` (made only if there
/// is a span) of `kind`, a child of
/// `traceparent` when that is a valid W3C parent, else the root of a new
/// trace. Empty when nothing is traced.
pub fn start_request(
    name: impl FnOnce() -> Cow<'static, str>,
    kind: SpanKind,
    traceparent: Option<&str>,
) -> Span {
    let Some(tracer) = TRACER.get() else {
        return Span::none();
    };
    let parent =
        TraceContextPropagator::new().extract_with_context(&Context::new(), &Incoming(traceparent));
    Span::started(tracer, name(), kind, &parent)
}

/// Starts a span `name` under the [current](TraceContext::current) one, or
/// the root of a new trace when there is none (work nobody asked for on a
/// request's behalf: loading the functions of `hearth.toml`). Empty when
/// nothing is traced.
pub fn start_in_current(name: &'static str) -> Span {
    let Some(tracer) = TRACER.get() else {
        return Span::none();
    };
    Span::started(tracer, name.into(), SpanKind::Internal, &Context::current())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_endpoint_gets_the_traces_path_and_a_full_one_is_kept() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("https://c.example/otlp"),
            "https://c.example/otlp/v1/traces"
        );
        assert_eq!(
            traces_url("https://c.example/otlp/v1/traces"),
            "https://c.example/otlp/v1/traces"
        );
    }

    #[test]
    fn without_an_exporter_spans_are_empty_and_cost_nothing() {
        let span = start_request(|| "GET".into(), SpanKind::Server, None);
        assert!(!span.context().is_traced());
        assert!(!span.is_recording());
        assert_eq!(span.context().traceparent(), None);
        assert!(
            !span
                .context()
                .start("state get", SpanKind::Internal)
                .is_recording()
        );
    }
}
