//! A small OTLP/HTTP trace receiver, the part of an OpenTelemetry
//! collector a tracing test needs: `POST /v1/traces` with an
//! `ExportTraceServiceRequest` in protobuf (decoded with the
//! `opentelemetry-proto` types), answered as a collector answers. Every
//! span received is kept, flattened into a [`ReceivedSpan`].
//!
//! Anything else (another path, JSON, a body that does not decode) gets the
//! status a collector gives it, and is counted in
//! [`OtlpReceiver::rejected`], so a test sees an exporter speaking the
//! wrong dialect instead of waiting for spans that never come.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One span as received, with its resource's attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// The trace id, lowercase hex (32 digits).
    pub trace_id: String,
    /// The span id, lowercase hex (16 digits).
    pub span_id: String,
    /// The parent's span id, hex; empty for a root span.
    pub parent_span_id: String,
    /// Its name.
    pub name: String,
    /// `server`, `client`, `producer`, `consumer` or `internal`.
    pub kind: &'static str,
    /// Its attributes, values as text.
    pub attributes: BTreeMap<String, String>,
    /// The status message of a failed span (`None`: not failed).
    pub error: Option<String>,
    /// Its resource's attributes (`service.name`...).
    pub resource: BTreeMap<String, String>,
    /// Start and end, nanoseconds since the epoch.
    pub start_ns: u64,
    /// End, nanoseconds since the epoch.
    pub end_ns: u64,
}

impl ReceivedSpan {
    /// An attribute's value, if set.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// A running receiver on a free loopback port; it stops when dropped.
pub struct OtlpReceiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    rejected: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(list: &[KeyValue]) -> BTreeMap<String, String> {
    list.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = attributes(
            resource_spans
                .resource
                .as_ref()
                .map_or(&[][..], |r| &r.attributes[..]),
        );
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(ReceivedSpan {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name.clone(),
                    kind: match span.kind {
                        1 => "internal",
                        2 => "server",
                        3 => "client",
                        4 => "producer",
                        5 => "consumer",
                        _ => "unspecified",
                    },
                    attributes: attributes(&span.attributes),
                    // Code 2 is STATUS_CODE_ERROR.
                    error: span
                        .status
                        .as_ref()
                        .filter(|status| status.code == 2)
                        .map(|status| status.message.clone()),
                    resource: resource.clone(),
                    start_ns: span.start_time_unix_nano,
                    end_ns: span.end_time_unix_nano,
                });
            }
        }
    }
    out
}

async fn answer(
    request: Request<Incoming>,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    rejected: Arc<AtomicU64>,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: Bytes| {
        Response::builder()
            .status(status)
            .header("content-type", "application/x-protobuf")
            .body(Full::new(body))
            .expect("valid response")
    };
    let protobuf = request
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/x-protobuf"));
    if request.uri().path() != "/v1/traces" || request.method() != hyper::Method::POST {
        rejected.fetch_add(1, Ordering::Relaxed);
        return reply(StatusCode::NOT_FOUND, Bytes::new());
    }
    if !protobuf {
        rejected.fetch_add(1, Ordering::Relaxed);
        return reply(StatusCode::UNSUPPORTED_MEDIA_TYPE, Bytes::new());
    }
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            rejected.fetch_add(1, Ordering::Relaxed);
            return reply(StatusCode::BAD_REQUEST, Bytes::new());
        }
    };
    match ExportTraceServiceRequest::decode(body) {
        Ok(export) => {
            spans
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(flatten(export));
            let response = ExportTraceServiceResponse {
                partial_success: None,
            };
            reply(StatusCode::OK, response.encode_to_vec().into())
        }
        Err(_) => {
            rejected.fetch_add(1, Ordering::Relaxed);
            reply(StatusCode::BAD_REQUEST, Bytes::new())
        }
    }
}

impl OtlpReceiver {
    /// Starts one on a free loopback port (inside a tokio runtime).
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let rejected = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (spans, rejected) = (spans.clone(), rejected.clone());
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (spans, rejected) = (spans.clone(), rejected.clone());
                    let service = hyper::service::service_fn(move |request| {
                        let (spans, rejected) = (spans.clone(), rejected.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                answer(request, spans, rejected).await,
                            )
                        }
                    });
                    tokio::spawn(
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service),
                    );
                }
            }
        });
        OtlpReceiver {
            addr,
            spans,
            rejected,
            task,
        }
    }

    /// Its base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` takes it.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Requests refused (wrong path, method, media type or body).
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Waits (up to [`crate::process::patience`], at least 30 s) until
    /// `done` holds for the spans received, and returns them; panics
    /// naming `what` and listing what came otherwise.
    pub async fn wait_for(
        &self,
        what: &str,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline =
            tokio::time::Instant::now() + crate::process::patience().max(Duration::from_secs(30));
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            if tokio::time::Instant::now() > deadline {
                let seen: Vec<String> = spans
                    .iter()
                    .map(|s| format!("{} ({}) {:?}", s.name, s.kind, s.attributes))
                    .collect();
                panic!(
                    "waited for {what}; the receiver got {} spans ({} requests rejected):\n{}",
                    spans.len(),
                    self.rejected(),
                    seen.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
