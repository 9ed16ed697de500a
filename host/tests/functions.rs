//! In-process tests: each example function served by the HTTP trigger or run
//! as a job, and every bad-input case the host must survive.

mod common;

use bytes::Bytes;
use common::serve_on;
use hearth_host::{
    EngineSettings, Function, FunctionEnv, FunctionKind, FunctionLoadError, Host, Limits,
};
use hearth_prewarm::LoadError;
use hearth_testkit::http::{get, post_chunked, send};
use http::{Method, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Every function in functions/ must have a test below named after it.
macro_rules! require_test {
    ($name:ident) => {
        const _: fn() = $name;
    };
}
hearth_testkit::foreach_function!(require_test);

fn small_limits() -> Limits {
    Limits {
        request_timeout_ms: 5_000,
        max_memory_mib: 32,
        max_request_body_bytes: 64 * 1024,
        max_concurrent_instances: 4,
        ..Limits::default()
    }
}

async fn load(path: &str, env: FunctionEnv) -> Result<Arc<Function>, FunctionLoadError> {
    let host = Host::new(&EngineSettings::for_limits([&env.limits])).unwrap();
    host.load(env, hearth_testkit::wasm_bytes(path)).await
}

fn env_for(name: &str, limits: Limits, vars: &[(&str, &str)]) -> FunctionEnv {
    let mut env = FunctionEnv::new(name);
    env.limits = limits;
    env.env = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env
}

/// Serves `path` in a host of its own on a free loopback port until the
/// test ends.
async fn serve(path: &str, env: FunctionEnv) -> SocketAddr {
    let host = Host::new(&EngineSettings::for_limits([&env.limits])).unwrap();
    serve_on(&host, path, env).await
}

#[tokio::test]
async fn hello() {
    let addr = serve(
        hearth_testkit::HELLO,
        env_for("hello", small_limits(), &[("GREETING", "Howdy")]),
    )
    .await;
    let reply = get(addr, "/").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "Howdy from Hearth!\n");

    let addr = serve(hearth_testkit::HELLO, env_for("hello", small_limits(), &[])).await;
    assert_eq!(get(addr, "/").await.unwrap().text(), "Hello from Hearth!\n");
}

#[tokio::test]
async fn settings() {
    let configmap = tempfile::tempdir().unwrap();
    std::fs::write(configmap.path().join("colour"), "green").unwrap();
    std::fs::write(configmap.path().join("SHARED"), "from the file").unwrap();
    let mut env = env_for(
        "settings",
        small_limits(),
        &[("TOKEN", "s3cret"), ("SHARED", "from the env")],
    );
    env.grants.config_dirs = vec![configmap.path().to_owned()];
    let addr = serve(hearth_testkit::SETTINGS, env).await;
    let text = |path: &'static str| async move {
        let reply = get(addr, path).await.unwrap();
        (reply.status, reply.text())
    };
    assert_eq!(text("/env/TOKEN").await, (StatusCode::OK, "s3cret".into()));
    assert_eq!(
        text("/config/TOKEN").await,
        (StatusCode::OK, "s3cret".into())
    );
    assert_eq!(
        text("/config/colour").await,
        (StatusCode::OK, "green".into())
    );
    assert_eq!(
        text("/config/SHARED").await,
        (StatusCode::OK, "from the file".into())
    );
    assert_eq!(text("/env/colour").await.0, StatusCode::NOT_FOUND);
    assert_eq!(text("/nothing").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn echo() {
    let addr = serve(hearth_testkit::ECHO, env_for("echo", small_limits(), &[])).await;
    let body = Bytes::from_static(b"the body \x00\xff survives");
    let reply = send(
        addr,
        Method::PUT,
        "/some/path?q=1",
        &[("x-custom", "value-1")],
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, body);
    assert_eq!(reply.header("x-echo-method"), Some("PUT"));
    assert_eq!(reply.header("x-echo-path"), Some("/some/path?q=1"));
    assert_eq!(reply.header("x-echo-x-custom"), Some("value-1"));
    assert_eq!(
        reply.header("x-echo-content-length"),
        Some(&*body.len().to_string())
    );
}

#[tokio::test]
async fn lifecycle() {
    let addr = serve(
        hearth_testkit::LIFECYCLE,
        env_for("lifecycle", small_limits(), &[]),
    )
    .await;
    // A fresh instance per request: init ran exactly once before each.
    for _ in 0..3 {
        let reply = get(addr, "/").await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.text(), "init_calls=1\n");
    }
}

#[tokio::test]
async fn lifecycle_init_failure_is_503_and_named() {
    let env = env_for("lifecycle", small_limits(), &[("FAIL_INIT", "no database")]);
    let addr = serve(hearth_testkit::LIFECYCLE, env).await;
    let reply = get(addr, "/").await.unwrap();
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.header("x-hearth-error"), Some("init-failed"));
    assert!(
        reply.text().contains("init refused: no database"),
        "{}",
        reply.text()
    );
}

#[tokio::test]
async fn job_exit() {
    let cases = [
        (None, 0),
        (Some("ok"), 0),
        (Some("fail"), 1),
        (Some("code:42"), 42),
        (Some("code:255"), 255),
    ];
    for (mode, expected) in cases {
        let vars: Vec<(&str, &str)> = mode.map(|m| ("MODE", m)).into_iter().collect();
        let function = load(
            hearth_testkit::JOB_EXIT,
            env_for("job-exit", small_limits(), &vars),
        )
        .await
        .unwrap();
        assert!(!function.is_service());
        let code = hearth_host::job::run_job(&function, None).await.unwrap();
        assert_eq!(code, expected, "MODE={mode:?}");
    }
}

#[tokio::test]
async fn misbehave() {
    let addr = serve(
        hearth_testkit::MISBEHAVE,
        env_for("misbehave", small_limits(), &[]),
    )
    .await;
    assert_eq!(get(addr, "/ok").await.unwrap().text(), "ok\n");
    assert_eq!(get(addr, "/print").await.unwrap().text(), "printed\n");
    assert_eq!(
        get(addr, "/nope").await.unwrap().status,
        StatusCode::NOT_FOUND
    );
}

/// A pooled slot keeps the pages its last instance wrote resident, reset
/// in place (`EngineSettings::keep_resident_bytes`): each request still
/// starts from the component's initial memory, both within what a slot
/// keeps and beyond it, one request after another and several at once.
#[tokio::test]
async fn a_slot_kept_resident_starts_every_instance_from_its_initial_memory() {
    assert!(
        hearth_host::engine::kernel_scans_pagemaps(),
        "this test shows slots reused with their pages resident, which needs Linux 6.7 or later (PAGEMAP_SCAN); this kernel is {}",
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default()
    );
    let limits = Limits {
        max_memory_mib: 128,
        max_concurrent_instances: 8,
        ..small_limits()
    };
    let settings = EngineSettings::for_limits([&limits]);
    assert!(settings.keep_resident_bytes >= 16 << 20);
    let host = Host::new(&settings).unwrap();
    let mut env = env_for("misbehave", limits, &[]);
    env.pool.min_idle = 1;
    let addr = serve_on(&host, hearth_testkit::MISBEHAVE, env).await;
    let fresh = "mark=0x5eed nonzero=0\n";
    // 4 MiB stays within what a slot keeps; 48 MiB goes past it.
    for mib in [4, 4, 48, 4, 48, 48, 4, 16, 4, 48] {
        let reply = get(addr, &format!("/remember?mib={mib}")).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.text(), fresh, "{mib} MiB");
    }
    let at_once: Vec<_> = ["/remember?mib=4", "/remember?mib=24"]
        .repeat(2)
        .into_iter()
        .map(|path| tokio::spawn(get(addr, path)))
        .collect();
    for reply in at_once {
        let reply = reply.await.unwrap().unwrap();
        assert_eq!(reply.text(), fresh);
    }
}

#[tokio::test]
async fn trap_is_500_with_message_and_serving_continues() {
    let addr = serve(
        hearth_testkit::MISBEHAVE,
        env_for("misbehave", small_limits(), &[]),
    )
    .await;
    let reply = get(addr, "/trap").await.unwrap();
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.header("x-hearth-error"), Some("trap"));
    assert!(reply.text().contains("unreachable"), "{}", reply.text());
    for _ in 0..3 {
        assert_eq!(get(addr, "/ok").await.unwrap().status, StatusCode::OK);
    }
}

#[tokio::test]
async fn infinite_loop_hits_the_deadline() {
    let limits = Limits {
        request_timeout_ms: 300,
        ..small_limits()
    };
    let addr = serve(hearth_testkit::MISBEHAVE, env_for("misbehave", limits, &[])).await;
    let started = Instant::now();
    let reply = get(addr, "/loop").await.unwrap();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.header("x-hearth-error"), Some("deadline-exceeded"));
    // Liveness, not speed: the request ended instead of spinning forever.
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(get(addr, "/ok").await.unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn guest_blocked_in_a_host_call_hits_the_deadline() {
    let limits = Limits {
        request_timeout_ms: 300,
        ..small_limits()
    };
    let addr = serve(hearth_testkit::MISBEHAVE, env_for("misbehave", limits, &[])).await;
    let reply = get(addr, "/sleep?ms=600000").await.unwrap();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.header("x-hearth-error"), Some("deadline-exceeded"));
    assert_eq!(get(addr, "/ok").await.unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn memory_bomb_fails_the_request_only() {
    let addr = serve(
        hearth_testkit::MISBEHAVE,
        env_for("misbehave", small_limits(), &[]),
    )
    .await;
    let reply = get(addr, "/grow?mib=256").await.unwrap();
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        reply.header("x-hearth-error"),
        Some("memory-limit-exceeded")
    );
    assert!(
        reply.text().contains("33554432"),
        "names the limit: {}",
        reply.text()
    );
    // Within the limit is fine, and other requests keep being served.
    assert_eq!(
        get(addr, "/grow?mib=8").await.unwrap().status,
        StatusCode::OK
    );
    assert_eq!(get(addr, "/ok").await.unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn oversized_body_is_413() {
    let addr = serve(
        hearth_testkit::MISBEHAVE,
        env_for("misbehave", small_limits(), &[]),
    )
    .await;
    let limit = small_limits().max_request_body_bytes as usize;

    let within = send(
        addr,
        Method::POST,
        "/body-len",
        &[],
        Bytes::from(vec![7u8; limit]),
    )
    .await
    .unwrap();
    assert_eq!(within.text(), format!("{limit}\n"));

    let declared = send(
        addr,
        Method::POST,
        "/body-len",
        &[],
        Bytes::from(vec![7u8; limit + 1]),
    )
    .await
    .unwrap();
    assert_eq!(declared.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(declared.header("x-hearth-error"), Some("body-too-large"));

    // No Content-Length: counted while streaming.
    let chunks = (0..4).map(|_| Bytes::from(vec![1u8; limit / 2])).collect();
    let streamed = post_chunked(addr, "/body-len", chunks).await.unwrap();
    assert_eq!(streamed.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(streamed.header("x-hearth-error"), Some("body-too-large"));

    assert_eq!(get(addr, "/ok").await.unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn concurrency_limit_answers_503_when_slots_stay_busy() {
    let limits = Limits {
        request_timeout_ms: 400,
        max_concurrent_instances: 1,
        ..small_limits()
    };
    let addr = serve(hearth_testkit::MISBEHAVE, env_for("misbehave", limits, &[])).await;
    let busy = tokio::spawn(async move { get(addr, "/sleep?ms=600000").await.unwrap() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let reply = get(addr, "/ok").await.unwrap();
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.header("x-hearth-error"), Some("overloaded"));
    assert_eq!(busy.await.unwrap().status, StatusCode::GATEWAY_TIMEOUT);
    // The slot is released with the instance.
    assert_eq!(get(addr, "/ok").await.unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn not_wasm_is_refused_at_load() {
    let host = Host::new(&EngineSettings::for_limits([&Limits::default()])).unwrap();
    let error = host
        .load(
            FunctionEnv::new("readme"),
            b"# Hearth\nnot a binary\n".to_vec(),
        )
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            &error,
            FunctionLoadError::Load {
                cause: LoadError::NotWasm { .. },
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("`readme`"), "{error}");
}

#[tokio::test]
async fn core_module_is_refused_with_how_to_make_a_component() {
    let host = Host::new(&EngineSettings::for_limits([&Limits::default()])).unwrap();
    let module = wat::parse_str(r#"(module (func (export "_start")))"#).unwrap();
    let error = host
        .load(FunctionEnv::new("core"), module)
        .await
        .err()
        .unwrap();
    let message = error.to_string();
    assert!(
        message.contains("core WebAssembly module, not a component"),
        "{message}"
    );
    assert!(message.contains("wasm-tools component new"), "{message}");
}

#[tokio::test]
async fn missing_import_is_named_at_load() {
    let host = Host::new(&EngineSettings::for_limits([&Limits::default()])).unwrap();
    let component = wat::parse_str(
        r#"(component
             (import "wasi:keyvalue/store@0.2.0-draft" (instance (export "open" (func))))
           )"#,
    )
    .unwrap();
    let error = host
        .load(FunctionEnv::new("kv"), component)
        .await
        .err()
        .unwrap();
    assert!(
        error
            .to_string()
            .contains("`wasi:keyvalue/store@0.2.0-draft`"),
        "{error}"
    );
}

#[tokio::test]
async fn component_without_an_entry_point_is_refused() {
    let host = Host::new(&EngineSettings::for_limits([&Limits::default()])).unwrap();
    let component = wat::parse_str("(component)").unwrap();
    let error = host
        .load(FunctionEnv::new("empty"), component)
        .await
        .err()
        .unwrap();
    let message = error.to_string();
    assert!(message.contains("wasi:http/incoming-handler"), "{message}");
    assert!(message.contains("wasi:cli/run"), "{message}");
}

#[tokio::test]
async fn loading_the_same_bytes_twice_compiles_once() {
    let host = Host::new(&EngineSettings::for_limits([&Limits::default()])).unwrap();
    let bytes = hearth_testkit::wasm_bytes(hearth_testkit::HELLO);
    host.load(FunctionEnv::new("a"), bytes.clone())
        .await
        .unwrap();
    host.load(FunctionEnv::new("b"), bytes).await.unwrap();
    let stats = host.compiled().stats();
    assert_eq!((stats.compiles, stats.hits, stats.entries), (1, 1, 1));
}

/// A host with one embedded state store in `dir` and default invoke settings.
fn host_with_embedded_state(dir: &std::path::Path, limits: &Limits) -> Arc<Host> {
    let host = Host::new(&EngineSettings::for_limits([limits])).unwrap();
    host.install_capabilities(
        hearth_host::capabilities::HostCapabilities::embedded_default(&dir.join("state.redb"))
            .unwrap()
            .with_invoker(hearth_host::http::LocalInvoker::for_host(&host)),
    )
    .unwrap();
    host
}

// kv-counter, cart and invoke-chain against every backend, and their
// failure cases: host/tests/capabilities.rs. Here: each on the default
// (embedded) store, as `hearth run` serves them.

#[tokio::test]
async fn kv_counter() {
    let dir = tempfile::tempdir().unwrap();
    let host = host_with_embedded_state(dir.path(), &small_limits());
    let addr = serve_on(
        &host,
        hearth_testkit::KV_COUNTER,
        env_for("kv-counter", small_limits(), &[]),
    )
    .await;
    for expected in 1..=3 {
        let reply = send(addr, Method::POST, "/increment", &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(reply.text(), format!("{expected}\n"));
    }
    assert_eq!(get(addr, "/").await.unwrap().text(), "3\n");
}

#[tokio::test]
async fn cart() {
    let dir = tempfile::tempdir().unwrap();
    let host = host_with_embedded_state(dir.path(), &small_limits());
    let addr = serve_on(
        &host,
        hearth_testkit::CART,
        env_for("cart", small_limits(), &[]),
    )
    .await;
    for sku in ["apple", "pear", "apple"] {
        let path = format!("/add?user=ann&sku={sku}&qty=1");
        let reply = send(addr, Method::POST, &path, &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    assert_eq!(
        get(addr, "/cart?user=ann").await.unwrap().text(),
        "apple 2\npear 1\n"
    );
    let reply = send(addr, Method::POST, "/checkout?user=ann", &[], Bytes::new())
        .await
        .unwrap();
    assert!(reply.text().starts_with("order:ann:"), "{}", reply.text());
    assert_eq!(
        get(addr, "/cart?user=ann").await.unwrap().status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn invoke_chain() {
    let dir = tempfile::tempdir().unwrap();
    let host = host_with_embedded_state(dir.path(), &small_limits());
    let mut first = None;
    for (name, next) in [
        ("chain-c", ""),
        ("chain-b", "chain-c"),
        ("chain-a", "chain-b"),
    ] {
        let mut env = env_for(name, small_limits(), &[]);
        env.grants.config = [("NAME", name), ("NEXT", next)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        first = Some(serve_on(&host, hearth_testkit::INVOKE_CHAIN, env).await);
    }
    let reply = get(first.unwrap(), "/").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(
        reply
            .text()
            .starts_with("chain-a -> chain-b -> chain-c depth=2 request-id="),
        "{}",
        reply.text()
    );
}

#[tokio::test]
async fn capability_bench() {
    let dir = tempfile::tempdir().unwrap();
    let host = host_with_embedded_state(dir.path(), &small_limits());
    serve_on(
        &host,
        hearth_testkit::ECHO,
        env_for("echo", small_limits(), &[]),
    )
    .await;
    let addr = serve_on(
        &host,
        hearth_testkit::CAPABILITY_BENCH,
        env_for("capability-bench", small_limits(), &[]),
    )
    .await;
    for (path, calls) in [
        ("/state?op=get&n=5", 5),
        ("/state?op=set&n=4", 4),
        ("/invoke?target=echo&n=3", 3),
    ] {
        let reply = send(addr, Method::POST, path, &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
        let timings: Vec<u64> = reply.text().lines().map(|l| l.parse().unwrap()).collect();
        assert_eq!(timings.len(), calls, "{path}");
    }
    let reply = send(addr, Method::POST, "/sidecar?op=get", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, "give addr\n")
    );
}

/// A component built for `wasi:keyvalue@0.2.0-draft` (wasmtime's and
/// wasmCloud's version) runs unchanged, on the same keys as draft2.
#[tokio::test]
async fn kv_draft() {
    let dir = tempfile::tempdir().unwrap();
    let host = host_with_embedded_state(dir.path(), &small_limits());
    let mut job = env_for("kv-draft", small_limits(), &[]);
    job.grants.app = Some("shared-app".into());
    let job = host
        .load(job, hearth_testkit::wasm_bytes(hearth_testkit::KV_DRAFT))
        .await
        .unwrap();
    let code = hearth_host::job::run_job(&job, Some(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(code, 0, "every draft call worked");
    let mut counter = env_for("kv-counter", small_limits(), &[]);
    counter.grants.app = Some("shared-app".into());
    let addr = serve_on(&host, hearth_testkit::KV_COUNTER, counter).await;
    assert_eq!(get(addr, "/?key=counter").await.unwrap().text(), "42\n");
}

/// A component built against `wasi:logging@0.1.0-draft` alone (as
/// wasmCloud's are) runs: every line reaches the Pod's log file with its
/// level, escaped so that it stays one line; hearthd's log takes them up to
/// the per-function rate and counts the rest.
#[tokio::test]
async fn wasi_logging() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = dir.path().join("stderr");
    std::fs::write(&stderr, "").unwrap();
    let flood = 20_000;
    let mut env = env_for(
        "wasi-logging",
        small_limits(),
        &[("FLOOD", &flood.to_string())],
    );
    env.stdio = hearth_host::guest_output::GuestStdio::Files(Arc::new(
        hearth_host::guest_output::GuestOutputFiles::new(
            "wasi-logging",
            None,
            Some(stderr.clone()),
        ),
    ));
    let job = load(hearth_testkit::WASI_LOGGING, env).await.unwrap();
    let code = hearth_host::job::run_job(&job, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(code, 0);

    let logged = 9 + flood;
    let scope = &job.capabilities().logging;
    assert_eq!(scope.lines() + scope.dropped_lines(), logged as u64);
    assert!(
        scope.lines() >= u64::from(hearth_host::capabilities::logging::LINES_PER_SECOND),
        "a burst's worth reached hearthd's log"
    );
    assert!(
        scope.dropped_lines() > 0,
        "{flood} lines at once are past the rate"
    );

    // The Pod's file has every line (its own writer thread writes them).
    let deadline = Instant::now() + hearth_testkit::process::patience();
    let text = loop {
        let text = std::fs::read_to_string(&stderr).unwrap();
        if text.lines().count() >= logged || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), logged, "one line per call");
    assert_eq!(
        lines[..8],
        [
            "TRACE levels: a line at trace",
            "DEBUG levels: a line at debug",
            "INFO levels: a line at info",
            "WARN levels: a line at warn",
            "ERROR levels: a line at error",
            "CRITICAL levels: a line at critical",
            "INFO no context",
            "WARN forgery: first\\nERROR forged: second\\u{1b}[2J",
        ]
    );
    let big = format!(
        "INFO big: {} [{} more bytes cut]",
        "x".repeat(hearth_host::capabilities::logging::MAX_MESSAGE_BYTES),
        20 * 1024 - hearth_host::capabilities::logging::MAX_MESSAGE_BYTES
    );
    assert_eq!(lines[8], big);
    assert_eq!(lines[9], "INFO flood: line 0");
    assert_eq!(lines[logged - 1], format!("INFO flood: line {}", flood - 1));
}

/// A component that imports `wasi:logging/logging` without a version (as
/// components built from an unversioned copy of the WIT do) links and logs.
#[tokio::test]
async fn unversioned_wasi_logging_links_and_logs() {
    let wasm = wat::parse_str(
        r#"(component
             (import "wasi:logging/logging" (instance $logging
               (type $level (enum "trace" "debug" "info" "warn" "error" "critical"))
               (export "level" (type $l (eq $level)))
               (export "log" (func (param "level" $l) (param "context" string) (param "message" string)))
             ))
             (alias export $logging "log" (func $log))
             (core module $libc (memory (export "memory") 1))
             (core instance $libc (instantiate $libc))
             (alias core export $libc "memory" (core memory $memory))
             (core func $log_lowered (canon lower (func $log) (memory $memory)))
             (core module $main
               (import "libc" "memory" (memory 1))
               (import "host" "log" (func $log (param i32 i32 i32 i32 i32)))
               (data (i32.const 0) "old")
               (data (i32.const 16) "from an unversioned import")
               (func (export "run") (result i32)
                 (call $log (i32.const 3) (i32.const 0) (i32.const 3) (i32.const 16) (i32.const 26))
                 (i32.const 0)))
             (core instance $main (instantiate $main
               (with "libc" (instance $libc))
               (with "host" (instance (export "log" (func $log_lowered))))))
             (func $run (result (result)) (canon lift (core func $main "run")))
             (instance $cli (export "run" (func $run)))
             (export "wasi:cli/run@0.2.12" (instance $cli))
           )"#,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stderr = dir.path().join("stderr");
    std::fs::write(&stderr, "").unwrap();
    let mut env = env_for("unversioned", small_limits(), &[]);
    env.stdio = hearth_host::guest_output::GuestStdio::Files(Arc::new(
        hearth_host::guest_output::GuestOutputFiles::new("unversioned", None, Some(stderr.clone())),
    ));
    let host = Host::new(&EngineSettings::for_limits([&env.limits])).unwrap();
    let job = host.load(env, wasm).await.unwrap();
    let code = hearth_host::job::run_job(&job, Some(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(code, 0);
    let deadline = Instant::now() + hearth_testkit::process::patience();
    while std::fs::read_to_string(&stderr).unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        std::fs::read_to_string(&stderr).unwrap(),
        "WARN old: from an unversioned import\n"
    );
    assert_eq!(job.capabilities().logging.lines(), 1);
}

/// A component built for another version of Hearth's world (or of a WASI
/// package) is refused at load with both versions named.
#[tokio::test]
async fn a_component_for_another_wit_version_is_refused_naming_both_versions() {
    for (import, built_for, provided) in [
        (
            "hearth:function/state@0.2.0",
            "hearth:function/state@0.2.0",
            "`hearth:function@0.1.0`",
        ),
        (
            "wasi:keyvalue/store@0.2.0-draft3",
            "wasi:keyvalue/store@0.2.0-draft3",
            "`wasi:keyvalue@0.2.0-draft` and `wasi:keyvalue@0.2.0-draft2`",
        ),
        (
            "wasi:http/types@0.4.0",
            "wasi:http/types@0.4.0",
            "`wasi:http@0.2.12` and `wasi:http@0.3.0`",
        ),
        // A WASI 0.3 release candidate (what components built before the
        // release import) is not 0.3.0.
        (
            "wasi:http/types@0.3.0-rc-2025-09-16",
            "wasi:http/types@0.3.0-rc-2025-09-16",
            "`wasi:http@0.2.12` and `wasi:http@0.3.0`",
        ),
    ] {
        // The import is lowered into a core instance, so it must link.
        let wasm = wat::parse_str(format!(
            r#"(component
                 (import "{import}" (instance $i (export "f" (func))))
                 (alias export $i "f" (func $f))
                 (core func $lowered (canon lower (func $f)))
                 (core module $m (import "x" "f" (func)))
                 (core instance (instantiate $m (with "x" (instance (export "f" (func $lowered))))))
               )"#
        ))
        .unwrap();
        let host = Host::new(&EngineSettings::for_limits([&small_limits()])).unwrap();
        let error = host
            .load(env_for("versioned", small_limits(), &[]), wasm)
            .await
            .err()
            .expect("refused");
        let message = error.to_string();
        assert!(
            matches!(error, FunctionLoadError::VersionMismatch { .. }),
            "{message}"
        );
        assert!(
            message.contains(&format!("built for `{built_for}`")),
            "{message}"
        );
        assert!(
            message.contains(&format!("this host provides {provided}")),
            "{message}"
        );
    }
}

// order-producer, order-worker and flaky-worker on both brokers, with every
// fault case: host/tests/messaging.rs. Here: each on the embedded default.

async fn receive_one(consumer: &dyn hearth_messaging::Consumer) -> hearth_messaging::Delivery {
    loop {
        let got = consumer.receive(1, Duration::from_secs(10)).await.unwrap();
        if let Some(delivery) = got.into_iter().next() {
            return delivery;
        }
    }
}

async fn shop_value(host: &Arc<Host>, key: &str) -> Option<String> {
    let store = &host.capabilities().stores["default"];
    // The app `shop` of the default namespace (see hearth_host::tenancy).
    let ns = hearth_state::Namespace::new("default.shop").unwrap();
    store
        .get(&ns, key)
        .await
        .unwrap()
        .map(|entry| String::from_utf8(entry.value).unwrap())
}

async fn wait_for_shop_value(host: &Arc<Host>, key: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = shop_value(host, key).await {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "`{key}` never written"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn shop_env(name: &str) -> FunctionEnv {
    let mut env = env_for(name, small_limits(), &[]);
    env.grants.app = Some("shop".into());
    env
}

#[tokio::test]
async fn order_producer() {
    let dir = tempfile::tempdir().unwrap();
    let host = host_with_embedded_state(dir.path(), &small_limits());
    let broker = host.capabilities().brokers["default"].clone();
    let consumer = broker
        .subscribe(&hearth_messaging::SubscriptionSpec {
            topic: "default.orders".into(),
            group: "check".into(),
            visibility: Duration::from_secs(30),
        })
        .await
        .unwrap();
    let addr = serve_on(
        &host,
        hearth_testkit::ORDER_PRODUCER,
        shop_env("order-producer"),
    )
    .await;
    let reply = hearth_testkit::http::send(
        addr,
        http::Method::POST,
        "/orders?key=customer-1&priority=7",
        &[("x-order-id", "o1"), ("content-type", "text/plain")],
        bytes::Bytes::from_static(b"2 apples"),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, http::StatusCode::ACCEPTED, "{}", reply.text());
    let got = receive_one(&*consumer).await;
    assert_eq!(got.id, reply.text().trim());
    assert_eq!(got.data, b"2 apples");
    assert_eq!(got.key.as_deref(), Some("customer-1"));
    assert_eq!(got.priority, 7);
    assert_eq!(got.content_type.as_deref(), Some("text/plain"));
    assert!(got.headers.contains(&("x-order-id".into(), "o1".into())));
}

#[tokio::test]
async fn order_worker() {
    let dir = tempfile::tempdir().unwrap();
    let host = host_with_embedded_state(dir.path(), &small_limits());
    let worker = host
        .load(
            shop_env("order-worker"),
            hearth_testkit::wasm_bytes(hearth_testkit::ORDER_WORKER),
        )
        .await
        .unwrap();
    assert!(matches!(worker.kind(), FunctionKind::MessageHandler { .. }));
    let broker = host.capabilities().brokers["default"].clone();
    let _subscription = hearth_host::messages::Subscription::start(
        worker,
        broker.clone(),
        hearth_host::messages::SubscriptionSettings::new("orders", "workers"),
    )
    .await
    .unwrap();
    broker
        .publish(&hearth_messaging::OutgoingMessage {
            topic: "default.orders".into(),
            data: b"3 pears".to_vec(),
            headers: vec![("x-order-id".into(), "o7".into())],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(wait_for_shop_value(&host, "order/o7").await, "3 pears");
    assert_eq!(wait_for_shop_value(&host, "processed").await, "1");
}

#[tokio::test]
async fn flaky_worker() {
    let dir = tempfile::tempdir().unwrap();
    let host = host_with_embedded_state(dir.path(), &small_limits());
    let flaky = host
        .load(
            shop_env("flaky-worker"),
            hearth_testkit::wasm_bytes(hearth_testkit::FLAKY_WORKER),
        )
        .await
        .unwrap();
    let broker = host.capabilities().brokers["default"].clone();
    let mut settings = hearth_host::messages::SubscriptionSettings::new("orders", "flaky");
    settings.backoff = Duration::from_millis(20);
    let _subscription = hearth_host::messages::Subscription::start(flaky, broker.clone(), settings)
        .await
        .unwrap();
    broker
        .publish(&hearth_messaging::OutgoingMessage {
            topic: "default.orders".into(),
            data: b"x".to_vec(),
            headers: vec![
                ("x-order-id".into(), "f1".into()),
                ("x-order-mode".into(), "fail-1".into()),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        wait_for_shop_value(&host, "flaky/f1").await,
        "2",
        "second try"
    );
    assert_eq!(wait_for_shop_value(&host, "flaky-attempts/f1").await, "2");
}

#[tokio::test]
async fn blob_roundtrip() {
    // The embedded default host has an fs blob store beside its state.
    let dir = tempfile::tempdir().unwrap();
    let host = host_with_embedded_state(dir.path(), &small_limits());
    let addr = serve_on(
        &host,
        hearth_testkit::BLOB_ROUNDTRIP,
        env_for("blob-roundtrip", small_limits(), &[]),
    )
    .await;
    let stored = send(
        addr,
        Method::PUT,
        "/objects/notes/today.txt",
        &[],
        Bytes::from_static(b"first light"),
    )
    .await
    .unwrap();
    assert_eq!(stored.status, StatusCode::CREATED, "{}", stored.text());
    let part = send(
        addr,
        Method::GET,
        "/objects/notes/today.txt",
        &[("range", "bytes=6-10")],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.text(), "light");
    assert_eq!(
        get(addr, "/objects").await.unwrap().text(),
        "notes/today.txt\n"
    );
}

#[tokio::test]
async fn blobstore_draft() {
    // Built against the upstream wasi:blobstore WIT with its wasi:io@0.2.2,
    // as wasmCloud's and Spin's components are: it links and runs as is.
    let dir = tempfile::tempdir().unwrap();
    let host = host_with_embedded_state(dir.path(), &small_limits());
    let job = host
        .load(
            env_for("blobstore-draft", small_limits(), &[]),
            hearth_testkit::wasm_bytes(hearth_testkit::BLOBSTORE_DRAFT),
        )
        .await
        .unwrap();
    let code = hearth_host::job::run_job(&job, Some(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(code, 0, "every wasi:blobstore call worked");
}

// WASI 0.3: async handlers, many requests on one instance.

fn p3_limits(instances: u32, concurrency: u32) -> Limits {
    Limits {
        request_timeout_ms: 20_000,
        max_concurrent_instances: instances,
        instance_concurrency: concurrency,
        ..small_limits()
    }
}

/// `slow-p3`'s answer: (instance id, its peak of requests in flight).
fn slow_reply(reply: &hearth_testkit::http::Reply) -> (String, u32) {
    let text = reply.text();
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|word| word.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {text:?}"))
            .to_string()
    };
    (field("instance="), field("peak=").parse().unwrap())
}

#[tokio::test]
async fn hello_p3() {
    let function = load(
        hearth_testkit::HELLO_P3,
        env_for("hello-p3", small_limits(), &[]),
    )
    .await
    .unwrap();
    assert_eq!(function.wasi(), hearth_host::function::Wasi::P3);
    assert!(function.is_service());
    let addr = serve(
        hearth_testkit::HELLO_P3,
        env_for("hello-p3", small_limits(), &[("GREETING", "Howdy")]),
    )
    .await;
    for _ in 0..3 {
        let reply = get(addr, "/").await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(
            reply.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(reply.text(), "Howdy from Hearth!\n");
    }
}

#[tokio::test]
async fn echo_p3() {
    let addr = serve(
        hearth_testkit::ECHO_P3,
        env_for("echo-p3", p3_limits(2, 4), &[]),
    )
    .await;
    // A streamed body with trailers comes back whole, trailers included.
    let chunks: Vec<Bytes> = (0..64u8).map(|i| Bytes::from(vec![i; 1024])).collect();
    let expected: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", "sum-of-64-chunks".parse().unwrap());
    let reply = hearth_testkit::http::post_with_trailers(addr, "/echo", chunks, trailers)
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.body.len(), expected.len());
    assert!(reply.body == expected, "the body came back changed");
    let trailers = reply
        .trailers
        .unwrap_or_else(|| panic!("the request's trailers come back: {:?}", reply.headers));
    assert_eq!(trailers.get("x-checksum").unwrap(), "sum-of-64-chunks");

    // A Content-Length body keeps its content-type.
    let reply = send(
        addr,
        Method::PUT,
        "/",
        &[("content-type", "application/x-thing")],
        Bytes::from_static(b"\x00\xffbytes"),
    )
    .await
    .unwrap();
    assert_eq!(reply.body, Bytes::from_static(b"\x00\xffbytes"));
    assert_eq!(reply.header("content-type"), Some("application/x-thing"));

    // Over the body limit with a Content-Length: 413 before any instance.
    let reply = send(
        addr,
        Method::POST,
        "/",
        &[],
        Bytes::from(vec![0u8; 96 * 1024]),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.header("x-hearth-error"), Some("body-too-large"));
    // Streamed past the limit: the echo had begun its answer, so the answer
    // is cut off where the body was refused (the status is already sent).
    let streamed = hearth_testkit::http::post_chunked(
        addr,
        "/",
        vec![
            Bytes::from(vec![0u8; 48 * 1024]),
            Bytes::from(vec![0u8; 48 * 1024]),
        ],
    )
    .await;
    match streamed {
        Err(cut_off) => assert!(
            format!("{cut_off:?}").contains("UnexpectedEof"),
            "{cut_off:?}"
        ),
        Ok(reply) => assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE),
    }
    // And the service goes on.
    let reply = send(addr, Method::PUT, "/", &[], Bytes::from_static(b"again"))
        .await
        .unwrap();
    assert_eq!(reply.body, Bytes::from_static(b"again"));
}

#[tokio::test]
async fn slow_p3() {
    // Fifty requests in flight at once on one instance.
    let addr = serve(
        hearth_testkit::SLOW_P3,
        env_for("slow-p3", p3_limits(1, 64), &[]),
    )
    .await;
    let replies = futures_util::future::join_all(
        (0..50).map(|_| async move { get(addr, "/?ms=3000").await.unwrap() }),
    )
    .await;
    let mut instances = std::collections::BTreeSet::new();
    let mut peak = 0;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let (instance, seen) = slow_reply(reply);
        instances.insert(instance);
        peak = peak.max(seen);
    }
    assert_eq!(instances.len(), 1, "one instance served them all");
    assert_eq!(peak, 50, "all fifty were in flight on it at once");

    // Past one instance's concurrency, more instances come from the pool,
    // never more than max_concurrent_instances, each within its concurrency.
    let addr = serve(
        hearth_testkit::SLOW_P3,
        env_for("slow-p3", p3_limits(4, 5), &[]),
    )
    .await;
    let replies = futures_util::future::join_all(
        (0..20).map(|_| async move { get(addr, "/?ms=3000").await.unwrap() }),
    )
    .await;
    let mut instances = std::collections::BTreeSet::new();
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let (instance, peak) = slow_reply(reply);
        assert!(
            peak <= 5,
            "an instance took more than its concurrency: {peak}"
        );
        instances.insert(instance);
    }
    assert_eq!(instances.len(), 4, "{instances:?}");
}

#[tokio::test]
async fn a_p3_trap_fails_the_requests_on_its_instance_only() {
    let addr = serve(
        hearth_testkit::SLOW_P3,
        env_for("slow-p3", p3_limits(2, 3), &[]),
    )
    .await;
    // Requests that wait go to an instance that waits: three long ones,
    // a moment apart, fill the first instance...
    let mut first = Vec::new();
    for _ in 0..3 {
        first.push(tokio::spawn(async move {
            get(addr, "/?ms=6000").await.unwrap()
        }));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // ...so these three go to a second one, where one of them traps.
    let mut second = Vec::new();
    for _ in 0..2 {
        second.push(tokio::spawn(async move {
            get(addr, "/?ms=6000").await.unwrap()
        }));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let trap = get(addr, "/trap?ms=1000").await.unwrap();
    assert_eq!(trap.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        trap.header("x-hearth-error"),
        Some("trap"),
        "{}",
        trap.text()
    );
    assert!(trap.text().contains("unreachable"), "{}", trap.text());
    for request in second {
        let reply = request.await.unwrap();
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            reply.header("x-hearth-error"),
            Some("trap"),
            "{}",
            reply.text()
        );
    }
    let mut instances = std::collections::BTreeSet::new();
    for request in first {
        let reply = request.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        instances.insert(slow_reply(&reply).0);
    }
    assert_eq!(instances.len(), 1);
    // The function goes on serving, on a fresh instance.
    let reply = get(addr, "/?ms=1").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

#[tokio::test]
async fn a_p3_request_past_its_deadline_fails_its_instance_by_name() {
    let limits = Limits {
        request_timeout_ms: 1_500,
        ..p3_limits(1, 4)
    };
    let addr = serve(hearth_testkit::SLOW_P3, env_for("slow-p3", limits, &[])).await;
    // A guest spinning in one task holds the instance: both fail, named.
    let waiting = tokio::spawn(async move { get(addr, "/?ms=1000").await.unwrap() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let spin = get(addr, "/spin").await.unwrap();
    assert_eq!(spin.status, StatusCode::GATEWAY_TIMEOUT, "{}", spin.text());
    assert_eq!(spin.header("x-hearth-error"), Some("deadline-exceeded"));
    let waiting = waiting.await.unwrap();
    assert_ne!(waiting.status, StatusCode::OK, "{}", waiting.text());
    assert!(waiting.header("x-hearth-error").is_some());
    let reply = get(addr, "/?ms=1").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

#[tokio::test]
async fn caps_p3() {
    let dir = tempfile::tempdir().unwrap();
    let host = host_with_embedded_state(dir.path(), &small_limits());
    // A p2 function in the namespace, for `invoke`.
    serve_on(
        &host,
        hearth_testkit::HELLO,
        env_for("hello", small_limits(), &[]),
    )
    .await;
    let mut env = env_for("caps-p3", p3_limits(2, 8), &[]);
    env.grants.config = [("colour".to_string(), "green".to_string())].into();
    let function = host
        .load(env, hearth_testkit::wasm_bytes(hearth_testkit::CAPS_P3))
        .await
        .unwrap();
    assert_eq!(function.wasi(), hearth_host::function::Wasi::P3);
    assert!(function.is_service());
    assert!(
        function.message_handler().is_some(),
        "it handles messages too"
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(hearth_host::http::serve(
        function.clone(),
        listener,
        std::future::pending(),
    ));
    let text = |path: String| async move {
        let reply = get(addr, &path).await.unwrap();
        (reply.status, reply.text())
    };

    // Key-value, also from concurrent requests on shared instances.
    for expected in 1..=3 {
        assert_eq!(
            text("/kv/visits".into()).await,
            (StatusCode::OK, format!("visits={expected}\n"))
        );
    }
    let replies = futures_util::future::join_all((0..20).map(|_| text("/kv/many".into()))).await;
    assert!(
        replies.iter().all(|(status, _)| *status == StatusCode::OK),
        "{replies:?}"
    );
    assert_eq!(text("/kv/many".into()).await.1, "many=21\n");
    // State, config, invoke, blobs.
    assert_eq!(
        text("/state-set?key=fruit&value=pear".into()).await.0,
        StatusCode::OK
    );
    assert_eq!(
        text("/state/fruit".into()).await,
        (StatusCode::OK, "pear".into())
    );
    assert_eq!(text("/state/none".into()).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        text("/config/colour".into()).await,
        (StatusCode::OK, "green".into())
    );
    assert_eq!(
        text("/invoke?target=hello".into()).await,
        (StatusCode::OK, "200 Hello from Hearth!\n".into())
    );
    assert_eq!(
        text("/blob?name=notes.txt&data=first-light".into()).await,
        (StatusCode::OK, "first-light".into())
    );
    // Messaging: a publish, and the component's own message handler.
    let broker = host.capabilities().brokers["default"].clone();
    let consumer = broker
        .subscribe(&hearth_messaging::SubscriptionSpec {
            topic: "default.p3-out".into(),
            group: "check".into(),
            visibility: Duration::from_secs(30),
        })
        .await
        .unwrap();
    let (status, id) = text("/publish?topic=p3-out&data=hello-p3".into()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{id}");
    let got = receive_one(&*consumer).await;
    assert_eq!(
        (got.id.as_str(), got.data.as_slice()),
        (id.trim(), &b"hello-p3"[..])
    );
    let _subscription = hearth_host::messages::Subscription::start(
        function,
        broker.clone(),
        hearth_host::messages::SubscriptionSettings::new("p3-in", "caps"),
    )
    .await
    .unwrap();
    broker
        .publish(&hearth_messaging::OutgoingMessage {
            topic: "default.p3-in".into(),
            data: b"ping".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while text("/state/message/ping".into()).await != (StatusCode::OK, "ping".into()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the message was never handled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(text("/state/handled".into()).await.1, "1");
}

#[tokio::test]
async fn job_p3() {
    for (vars, expected) in [
        (&[][..], 0),
        (&[("FAIL", "1")][..], 1),
        (&[("EXIT_CODE", "42")][..], 42),
    ] {
        let function = load(
            hearth_testkit::JOB_P3,
            env_for("job-p3", small_limits(), vars),
        )
        .await
        .unwrap();
        assert!(!function.is_service());
        assert_eq!(function.wasi(), hearth_host::function::Wasi::P3);
        let code = hearth_host::job::run_job(&function, None).await.unwrap();
        assert_eq!(code, expected, "{vars:?}");
    }
}

#[tokio::test]
async fn p2_and_p3_functions_share_one_host() {
    let limits = p3_limits(4, 4);
    let host = Host::new(&EngineSettings::for_limits([&limits, &limits])).unwrap();
    let p2 = serve_on(&host, hearth_testkit::HELLO, env_for("hello", limits, &[])).await;
    let p3 = serve_on(
        &host,
        hearth_testkit::HELLO_P3,
        env_for("hello-p3", limits, &[]),
    )
    .await;
    let replies = futures_util::future::join_all((0..20).map(|i| async move {
        let addr = if i % 2 == 0 { p2 } else { p3 };
        get(addr, "/").await.unwrap()
    }))
    .await;
    for reply in replies {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.text(), "Hello from Hearth!\n");
    }
}
