//! OpenTelemetry: hearthd and `hearth run` export spans over OTLP/HTTP to
//! a receiver (the testkit's, built on the collector's own protobuf types),
//! configured by `[telemetry]` in hearth.toml or by the standard `OTEL_*`
//! variables. One span per request, message and job; children for the
//! pool checkout and every capability call; `traceparent` links a request
//! to its caller, an `invoke` to its callee, a publish to its handler.

mod common;

use bytes::Bytes;
use hearth_testkit::http::{get, send};
use hearth_testkit::otlp::{OtlpReceiver, ReceivedSpan};
use hearth_testkit::process::{Running, run_to_end};
use hearth_testkit::services::free_port;
use http::Method;
use std::process::Command;

/// Export batches every 100 ms instead of every 5 s.
const QUICK_BATCHES: (&str, &str) = ("OTEL_BSP_SCHEDULE_DELAY", "100");

const TRACE_A: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_A: &str = "b7ad6b7169203331";
const TRACE_B: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_B: &str = "00f067aa0ba902b7";

fn traceparent(trace: &str, parent: &str) -> String {
    format!("00-{trace}-{parent}-01")
}

/// The one span `name` of `function` in `trace`; panics listing the spans
/// otherwise.
fn one<'a>(spans: &'a [ReceivedSpan], trace: &str, name: &str) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.trace_id == trace && s.name == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one `{name}` in trace {trace}; spans: {:#?}",
        spans
            .iter()
            .map(|s| (&s.trace_id, &s.name, &s.span_id, &s.parent_span_id))
            .collect::<Vec<_>>()
    );
    found[0]
}

fn children<'a>(spans: &'a [ReceivedSpan], parent: &ReceivedSpan) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.trace_id == parent.trace_id && s.parent_span_id == parent.span_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_messages_and_capability_calls_are_spans_linked_by_traceparent() {
    let receiver = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let [producer_port, front_port, blobs_port] = [free_port(), free_port(), free_port()];
    let toml = format!(
        r#"
[telemetry]
endpoint = "{endpoint}"
service_name = "hearthd-under-test"

[state.stores.default]
type = "embedded"
path = "state.redb"

[messaging.brokers.default]
type = "embedded"

[blob.stores.default]
type = "fs"

[[function]]
name = "order-producer"
path = "{producer}"
listen = "127.0.0.1:{producer_port}"
app = "shop"

[[function]]
name = "order-worker"
path = "{worker}"
app = "shop"
[[function.subscribe]]
topic = "orders"
group = "workers"

[[function]]
name = "front"
path = "{chain}"
listen = "127.0.0.1:{front_port}"
[function.config]
NAME = "front"

[[function]]
name = "blobs"
path = "{blobs}"
listen = "127.0.0.1:{blobs_port}"
"#,
        endpoint = receiver.endpoint(),
        producer = hearth_testkit::ORDER_PRODUCER,
        worker = hearth_testkit::ORDER_WORKER,
        chain = hearth_testkit::INVOKE_CHAIN,
        blobs = hearth_testkit::BLOB_ROUNDTRIP,
    );
    let hearthd = common::start_hearthd_with(dir.path(), &toml, &[QUICK_BATCHES]);
    hearthd.wait_for_line("exporting traces over OTLP/HTTP");
    let producer = hearthd.serving_addr("order-producer");
    let front = hearthd.serving_addr("front");
    let blobs = hearthd.serving_addr("blobs");

    // A: an order, published to the worker.
    let parent_a = traceparent(TRACE_A, PARENT_A);
    let reply = send(
        producer,
        Method::POST,
        "/orders",
        &[("traceparent", &parent_a), ("x-order-id", "t1")],
        Bytes::from_static(b"two lamps"),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 202, "{}", reply.text());
    // The worker stores the order; wait for it (traces of their own), so
    // that trace B holds exactly one call.
    while get(producer, "/state?key=order%2Ft1").await.unwrap().status != 200 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // B: `front` invokes the producer, which reads the order from state.
    let parent_b = traceparent(TRACE_B, PARENT_B);
    let reply = send(
        front,
        Method::GET,
        "/call?target=order-producer&path=%2Fstate%3Fkey%3Dorder%2Ft1",
        &[("traceparent", &parent_b)],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "two lamps");
    // C: a blob written and read back, with no traceparent.
    let put = send(
        blobs,
        Method::PUT,
        "/objects/lamp",
        &[],
        Bytes::from_static(b"glow"),
    )
    .await
    .unwrap();
    assert_eq!(put.status, 201, "{}", put.text());
    let got = get(blobs, "/objects/lamp").await.unwrap();
    assert_eq!(got.text(), "glow");

    let spans = receiver
        .wait_for(
            "the order's handler, the invoke's callee and the blob read",
            |spans| {
                let has = |name: &str| spans.iter().any(|s| s.name == name);
                has("process default.orders")
                    && spans
                        .iter()
                        .filter(|s| s.trace_id == TRACE_B && s.name == "GET order-producer")
                        .count()
                        == 1
                    && has("blob get-data")
                    && spans
                        .iter()
                        .filter(|s| s.trace_id == TRACE_A && s.name.starts_with("state "))
                        .count()
                        >= 2
            },
        )
        .await;

    for span in &spans {
        assert_eq!(
            span.resource.get("service.name").map(String::as_str),
            Some("hearthd-under-test"),
            "{span:?}"
        );
        assert!(span.end_ns >= span.start_ns, "{span:?}");
    }

    // A: the request is a child of the caller's span.
    let request = one(&spans, TRACE_A, "POST order-producer");
    assert_eq!(request.kind, "server");
    assert_eq!(request.parent_span_id, PARENT_A);
    assert_eq!(request.attribute("http.request.method"), Some("POST"));
    assert_eq!(request.attribute("url.path"), Some("/orders"));
    assert_eq!(request.attribute("http.response.status_code"), Some("202"));
    assert_eq!(request.attribute("hearth.function"), Some("order-producer"));
    assert_eq!(request.attribute("k8s.namespace.name"), Some("default"));
    assert_eq!(request.error, None);
    let under_request = children(&spans, request);
    let checkout = under_request
        .iter()
        .find(|s| s.name == "pool checkout")
        .unwrap_or_else(|| panic!("a pool checkout under the request: {under_request:#?}"));
    assert!(
        ["true", "false"].contains(&checkout.attribute("hearth.pool.hit").unwrap_or("")),
        "{checkout:?}"
    );
    let publish = under_request
        .iter()
        .find(|s| s.name == "publish")
        .unwrap_or_else(|| panic!("a publish under the request: {under_request:#?}"));
    assert_eq!(publish.kind, "producer");
    // Topics and groups by the broker's names, as in the log and metrics.
    assert_eq!(
        publish.attribute("messaging.destination.name"),
        Some("default.orders")
    );
    assert_eq!(publish.attribute("messaging.system"), Some("embedded"));
    // The handler's span is the publish's child, in the caller's trace.
    let handled = one(&spans, TRACE_A, "process default.orders");
    assert_eq!(handled.kind, "consumer");
    assert_eq!(handled.parent_span_id, publish.span_id);
    assert_eq!(handled.attribute("hearth.function"), Some("order-worker"));
    assert_eq!(
        handled.attribute("messaging.consumer.group.name"),
        Some("default.workers")
    );
    let under_handler = children(&spans, handled);
    let state_calls: Vec<&str> = under_handler
        .iter()
        .filter(|s| s.name.starts_with("state "))
        .map(|s| s.name.as_str())
        .collect();
    assert!(
        state_calls.contains(&"state set"),
        "the worker stores the order: {under_handler:#?}"
    );
    for call in under_handler
        .iter()
        .filter(|s| s.name.starts_with("state "))
    {
        assert_eq!(call.kind, "client");
        assert_eq!(
            call.attribute("db.system.name"),
            Some("embedded"),
            "{call:?}"
        );
        assert_eq!(call.attribute("hearth.state.store"), Some("default"));
    }

    // B: front's request → its invoke → the callee's request → its state get.
    let front_request = one(&spans, TRACE_B, "GET front");
    assert_eq!(front_request.parent_span_id, PARENT_B);
    let invoke = one(&spans, TRACE_B, "invoke order-producer");
    assert_eq!(invoke.kind, "client");
    assert_eq!(invoke.parent_span_id, front_request.span_id);
    assert_eq!(invoke.attribute("http.response.status_code"), Some("200"));
    let callee = spans
        .iter()
        .filter(|s| s.trace_id == TRACE_B && s.name == "GET order-producer")
        .collect::<Vec<_>>();
    assert_eq!(callee.len(), 1, "{callee:#?}");
    assert_eq!(callee[0].parent_span_id, invoke.span_id);
    assert_eq!(callee[0].attribute("url.path"), Some("/state"));
    let read = children(&spans, callee[0]);
    assert!(
        read.iter()
            .any(|s| s.name == "state get" && s.error.is_none()),
        "{read:#?}"
    );

    // C: without a traceparent each request is a trace of its own, and its
    // blob calls are its children.
    let blob_requests: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.name == "PUT blobs" || s.name == "GET blobs")
        .collect();
    assert_eq!(blob_requests.len(), 2, "{blob_requests:#?}");
    for request in &blob_requests {
        assert_eq!(request.parent_span_id, "", "a root: {request:?}");
        assert!(![TRACE_A, TRACE_B].contains(&request.trace_id.as_str()));
    }
    assert_ne!(blob_requests[0].trace_id, blob_requests[1].trace_id);
    let blob_calls: Vec<String> = blob_requests
        .iter()
        .flat_map(|request| children(&spans, request))
        .filter(|s| s.name.starts_with("blob "))
        .map(|s| s.name.clone())
        .collect();
    for call in ["blob write-data", "blob finish", "blob get-data"] {
        assert!(
            blob_calls.iter().any(|c| c == call),
            "{call} in {blob_calls:?}"
        );
    }

    // Loading each function compiled it: a span of its own at start-up.
    for function in ["order-producer", "order-worker", "front", "blobs"] {
        let compiled = spans
            .iter()
            .find(|s| s.name == "compile" && s.attribute("hearth.function") == Some(function))
            .unwrap_or_else(|| panic!("a compile span for {function}"));
        assert!(
            ["compiled", "disk", "memory"]
                .contains(&compiled.attribute("hearth.compiled_from").unwrap_or("")),
            "{compiled:?}"
        );
    }
    // Nothing carried a payload or a state key.
    for span in &spans {
        let text = format!("{span:?}");
        assert!(
            !text.contains("two lamps") && !text.contains("order/t1"),
            "{span:?}"
        );
    }
    assert_eq!(receiver.rejected(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_capability_call_is_a_failed_span_under_its_request() {
    let receiver = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let toml = format!(
        r#"
[telemetry]
endpoint = "{endpoint}"

[[function]]
name = "front"
path = "{chain}"
listen = "127.0.0.1:{port}"
[function.config]
NAME = "front"
"#,
        endpoint = receiver.endpoint(),
        chain = hearth_testkit::INVOKE_CHAIN,
    );
    let hearthd = common::start_hearthd_with(dir.path(), &toml, &[QUICK_BATCHES]);
    let front = hearthd.serving_addr("front");
    let reply = get(front, "/call?target=nobody").await.unwrap();
    assert_eq!(reply.status, 404, "{}", reply.text());
    let spans = receiver
        .wait_for("the failed invoke", |spans| {
            spans.iter().any(|s| s.name == "invoke nobody")
        })
        .await;
    let invoke = spans.iter().find(|s| s.name == "invoke nobody").unwrap();
    assert_eq!(invoke.attribute("error.type"), Some("not-found"));
    assert!(
        invoke.error.as_deref().unwrap_or("").contains("nobody"),
        "{invoke:?}"
    );
    assert_eq!(
        invoke.resource.get("service.name").map(String::as_str),
        Some("hearthd")
    );
    let request = spans.iter().find(|s| s.name == "GET front").unwrap();
    assert_eq!(invoke.parent_span_id, request.span_id);
    // The guest answered (with its own 404): the request itself did not fail.
    assert_eq!(request.error, None);
    assert_eq!(request.attribute("http.response.status_code"), Some("404"));
}

#[test]
fn hearth_run_exports_a_job_s_spans_to_the_collector_the_standard_variables_name() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let receiver = runtime.block_on(OtlpReceiver::start());
    let cache = tempfile::tempdir().unwrap();
    // The job exits at once: its spans are flushed before the process ends.
    let (status, log) = run_to_end(
        Command::new(env!("CARGO_BIN_EXE_hearth"))
            .env("HEARTH_CACHE_DIR", cache.path())
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
            .env("OTEL_SERVICE_NAME", "nightly-report")
            .env("OTEL_RESOURCE_ATTRIBUTES", "k8s.node.name=node-7")
            .args(["run", hearth_testkit::JOB_EXIT, "--env", "MODE=code:3"]),
    );
    assert_eq!(status.code(), Some(3), "{log}");
    let spans = runtime.block_on(receiver.wait_for("the job's span", |spans| {
        spans.iter().any(|s| s.name == "run job-exit")
    }));
    let run = spans.iter().find(|s| s.name == "run job-exit").unwrap();
    assert_eq!(run.parent_span_id, "");
    assert_eq!(run.attribute("process.exit.code"), Some("3"));
    assert_eq!(
        run.resource.get("service.name").map(String::as_str),
        Some("nightly-report")
    );
    assert_eq!(
        run.resource.get("k8s.node.name").map(String::as_str),
        Some("node-7")
    );
    assert!(
        spans
            .iter()
            .any(|s| s.name == "instantiate" && s.parent_span_id == run.span_id),
        "{spans:#?}"
    );
    assert!(spans.iter().any(|s| s.name == "compile"), "{spans:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_spans_never_requests() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let closed = free_port();
    let toml = format!(
        r#"
[telemetry]
endpoint = "http://127.0.0.1:{closed}"

[[function]]
name = "hello"
path = "{hello}"
listen = "127.0.0.1:{port}"
"#,
        hello = hearth_testkit::HELLO,
    );
    let mut hearthd = common::start_hearthd_with(dir.path(), &toml, &[QUICK_BATCHES]);
    let hello = hearthd.serving_addr("hello");
    for _ in 0..20 {
        let reply = get(hello, "/").await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    // The failed export is logged, by the SDK, and hearthd serves on.
    let failed = hearthd.wait_for_line("BatchSpanProcessor.ExportError");
    assert!(failed.contains("HTTP export failed"), "{failed}");
    assert_eq!(get(hello, "/").await.unwrap().status, 200);
    // And it still stops promptly, the last batch undelivered.
    assert_eq!(
        hearthd.terminate().code(),
        Some(0),
        "{}",
        hearthd.log_text()
    );
}

#[test]
fn telemetry_settings_hearthd_cannot_follow_stop_it_at_start_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let hearthd = |toml: &str, env: &[(&str, &str)]| {
        let config = dir.path().join("hearth.toml");
        std::fs::write(&config, toml).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_hearthd"));
        command
            .envs(env.iter().copied())
            .env("HEARTH_SOCKET", dir.path().join("hearthd.sock"))
            .arg("--config")
            .arg(&config);
        command
    };
    for (toml, env, named) in [
        (
            "[telemetry]\nendpoint = \"http://127.0.0.1:4318\"\n",
            &[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")][..],
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        (
            "[telemetry]\nendpoint = \"collector:4318\"\n",
            &[][..],
            "[telemetry] endpoint",
        ),
        (
            "",
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url")][..],
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
        (
            "[telemetry]\nendpoint = \"http://127.0.0.1:4318\"\nsample_ratio = 2.0\n",
            &[][..],
            "sample_ratio",
        ),
        (
            "",
            &[("OTEL_TRACES_EXPORTER", "zipkin")][..],
            "OTEL_TRACES_EXPORTER",
        ),
        ("[telemetry]\nendpont = \"http://x\"\n", &[][..], "endpont"),
    ] {
        let (status, log) = run_to_end(&mut hearthd(toml, env));
        assert_eq!(status.code(), Some(2), "{toml} {env:?}: {log}");
        assert!(log.contains(named), "{named} in: {log}");
    }
    // Turned off, the same bad endpoint is never looked at.
    let mut running = Running::start(&mut hearthd(
        "[telemetry]\nendpoint = \"collector:4318\"\n",
        &[("OTEL_SDK_DISABLED", "true")],
    ));
    running.wait_for_line("hearthd ready");
    let (status, log) = (running.terminate(), running.log_text());
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(!log.contains("exporting traces"), "{log}");
}
