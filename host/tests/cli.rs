//! The `hearth` and `hearthd` binaries as a user runs them: exit codes, log
//! lines, signals and configuration errors.

use bytes::Bytes;
use hearth_testkit::http::{get, send};
use hearth_testkit::process::{Running, patience, run_to_end};
use hearth_testkit::registry::free_port;
use http::Method;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HEARTH: &str = env!("CARGO_BIN_EXE_hearth");
const HEARTHD: &str = env!("CARGO_BIN_EXE_hearthd");

/// Runs `hearth run ARGS` as a user at a terminal would (no `HEARTH_LOG`),
/// with `stdin` as its standard input; its status, stdout and stderr.
fn hearth_run_with_stdin(args: &[&str], stdin: &[u8]) -> (Option<i32>, Vec<u8>, Vec<u8>) {
    use std::io::Write;
    let cache = tempfile::tempdir().unwrap();
    let mut child = Command::new(HEARTH)
        .arg("run")
        .args(args)
        .env_remove("HEARTH_LOG")
        .env("HEARTH_CACHE_DIR", cache.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let output = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    (output.status.code(), output.stdout, output.stderr)
}

#[test]
fn hearth_run_job_exits_with_its_status_and_its_stdio_is_the_process_s_own() {
    for (mode, code) in [("ok", 0), ("fail", 1), ("code:9", 9)] {
        let env = format!("MODE={mode}");
        let (status, stdout, stderr) =
            hearth_run_with_stdin(&[hearth_testkit::JOB_EXIT, "--env", &env], b"");
        let stderr = String::from_utf8_lossy(&stderr);
        assert_eq!(status, Some(code), "MODE={mode}; stderr:\n{stderr}");
        assert_eq!(
            String::from_utf8_lossy(&stdout),
            format!("job-exit: running with MODE={mode}\n"),
            "stdout is the guest's, and only the guest's; stderr:\n{stderr}"
        );
    }

    // Byte for byte both ways: stdin in, stdout out (every byte value, no
    // trailing newline), and stderr is exactly what the guest wrote.
    let input: Vec<u8> = (0..300_000u32).map(|i| (i % 256) as u8).collect();
    let (status, stdout, stderr) =
        hearth_run_with_stdin(&[hearth_testkit::JOB_EXIT, "--env", "MODE=cat"], &input);
    let stderr = String::from_utf8_lossy(&stderr);
    assert_eq!(status, Some(0), "{stderr}");
    assert!(
        stdout == input,
        "stdout differs from stdin ({} bytes)",
        stdout.len()
    );
    assert_eq!(stderr, format!("job-exit: copied {} bytes", input.len()));
}

#[test]
fn hearth_run_shows_a_guest_s_wasi_logging_lines_on_stderr_with_their_level() {
    let (status, stdout, stderr) = hearth_run_with_stdin(&[hearth_testkit::WASI_LOGGING], b"");
    let stderr = String::from_utf8_lossy(&stderr);
    assert_eq!(status, Some(0), "{stderr}");
    assert!(stdout.is_empty());
    // Info and up by default, each with its level and the guest's identity.
    assert!(!stderr.contains("a line at debug"), "{stderr}");
    for (level, text) in [
        ("INFO", "a line at info"),
        ("WARN", "a line at warn"),
        ("ERROR", "a line at critical"),
    ] {
        let line = stderr
            .lines()
            .find(|l| l.contains(text))
            .unwrap_or_else(|| panic!("no {text:?} in:\n{stderr}"));
        assert!(line.contains(level), "{line}");
        assert!(line.contains("namespace=\"default\""), "{line}");
        assert!(line.contains("context=\"levels\""), "{line}");
    }
    // A newline in a message does not start a line.
    assert!(
        !stderr.lines().any(|l| l.starts_with("ERROR forged")),
        "{stderr}"
    );
}

#[test]
fn hearth_run_serves_runs_lifecycle_and_drains_on_sigterm() {
    let mut hearth = Running::start(Command::new(HEARTH).args([
        "run",
        hearth_testkit::LIFECYCLE,
        "--listen",
        "127.0.0.1:0",
    ]));
    let addr = hearth.serving_addr("lifecycle");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let reply = runtime.block_on(get(addr, "/")).unwrap();
    assert_eq!(reply.text(), "init_calls=1\n");
    // The guest's stdout is hearth's own stdout, as written.
    let line = hearth.wait_for_line("lifecycle: shutdown after init_calls=1");
    assert_eq!(line, "lifecycle: shutdown after init_calls=1");
    let status = hearth.terminate();
    assert_eq!(status.code(), Some(0), "log:\n{}", hearth.log_text());
    hearth.wait_for_line("draining in-flight requests");
}

#[test]
fn hearth_run_listens_on_port_env() {
    let port = free_port();
    let cache = tempfile::tempdir().unwrap();
    let mut command = Command::new(HEARTH);
    command.args(["run", hearth_testkit::HELLO, "--env", "GREETING=Port"]);
    let mut child = command
        .env("PORT", port.to_string())
        .env("HEARTH_CACHE_DIR", cache.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    let reply = loop {
        match runtime.block_on(get(addr, "/")) {
            Ok(reply) => break reply,
            Err(_) if started.elapsed() < patience() => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("nothing on $PORT {port}: {e}"),
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(reply.text(), "Port from Hearth!\n");
}

#[test]
fn hearth_run_logs_a_trap_with_its_backtrace_and_keeps_serving() {
    let hearth = Running::start(Command::new(HEARTH).args([
        "run",
        hearth_testkit::MISBEHAVE,
        "--listen",
        "127.0.0.1:0",
    ]));
    let addr = hearth.serving_addr("misbehave");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let reply = runtime.block_on(get(addr, "/trap")).unwrap();
    assert_eq!(reply.status, 500);
    let line = hearth.wait_for_line("the function trapped");
    assert!(
        line.contains("function=\"misbehave\"") || line.contains("function=misbehave"),
        "{line}"
    );
    hearth.wait_for_line("wasm backtrace");
    hearth.wait_for_line("misbehave: deliberate panic");
    assert_eq!(runtime.block_on(get(addr, "/ok")).unwrap().status, 200);
}

#[test]
fn hearth_run_refuses_a_file_that_is_not_wasm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.wasm");
    std::fs::write(&path, "just text").unwrap();
    let (status, log) = run_to_end(Command::new(HEARTH).arg("run").arg(&path));
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("not a WebAssembly binary"), "{log}");
}

#[test]
fn hearth_run_refuses_a_missing_file() {
    let (status, log) = run_to_end(Command::new(HEARTH).args(["run", "/nonexistent/fn.wasm"]));
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("/nonexistent/fn.wasm"), "{log}");
}

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("hearth.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn hearthd_serves_each_function_on_its_own_listener() {
    let dir = tempfile::tempdir().unwrap();
    let (hello_port, echo_port) = (free_port(), free_port());
    let config = write_config(
        dir.path(),
        &format!(
            r#"
[limits]
request_timeout_ms = 5000

[[function]]
name = "greeter"
path = "{hello}"
listen = "127.0.0.1:{hello_port}"
env = {{ GREETING = "Daemon" }}

[[function]]
name = "echo"
path = "{echo}"
listen = "127.0.0.1:{echo_port}"
"#,
            hello = hearth_testkit::HELLO,
            echo = hearth_testkit::ECHO,
        ),
    );
    let mut hearthd = Running::start(Command::new(HEARTHD).arg("--config").arg(&config));
    let greeter = hearthd.serving_addr("greeter");
    let echo = hearthd.serving_addr("echo");
    hearthd.wait_for_line("hearthd ready");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(
        runtime.block_on(get(greeter, "/")).unwrap().text(),
        "Daemon from Hearth!\n"
    );
    let reply = runtime.block_on(get(echo, "/x")).unwrap();
    assert_eq!(reply.header("x-echo-path"), Some("/x"));
    assert_eq!(
        hearthd.terminate().code(),
        Some(0),
        "{}",
        hearthd.log_text()
    );
}

#[test]
fn hearthd_config_errors_name_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[limits]\nrequest_timeout = 5\n", "request_timeout"),
        (
            "[[function]]\nname = \"a\"\npath = \"missing.wasm\"\nlisten = \"127.0.0.1:1\"\n",
            "function[0].path",
        ),
        (
            "[[function]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n",
            "function[0].path (function `a`): missing",
        ),
        (
            "[[function]]\nname = \"a\"\npath = \"a.wasm\"\n",
            "function[0].listen (function `a`): missing; give `listen`",
        ),
        ("[prewarm]\nimages = [\"Not A Ref\"]\n", "prewarm.images[0]"),
        (
            "[limits]\nmax_concurrent_instances = 0\n",
            "limits.max_concurrent_instances",
        ),
    ];
    for (text, key) in cases {
        let config = write_config(dir.path(), text);
        let (status, log) = run_to_end(Command::new(HEARTHD).arg("--config").arg(&config));
        assert_eq!(status.code(), Some(2), "{text}\n{log}");
        assert!(
            log.contains(&config.display().to_string()),
            "names the file:\n{log}"
        );
        assert!(log.contains(key), "names `{key}`:\n{log}");
    }
}

#[test]
fn hearthd_refuses_a_job_and_a_broken_function_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[[function]]\nname = \"j\"\npath = \"{}\"\nlisten = \"127.0.0.1:{}\"\n",
            hearth_testkit::JOB_EXIT,
            free_port()
        ),
    );
    let (status, log) = run_to_end(Command::new(HEARTHD).arg("--config").arg(&config));
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("is a job"), "{log}");

    let core = dir.path().join("core.wasm");
    std::fs::write(&core, wat::parse_str("(module)").unwrap()).unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[[function]]\nname = \"c\"\npath = \"core.wasm\"\nlisten = \"127.0.0.1:{}\"\n",
            free_port()
        ),
    );
    let (status, log) = run_to_end(Command::new(HEARTHD).arg("--config").arg(&config));
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("core WebAssembly module"), "{log}");
}

#[test]
fn hearth_run_of_a_file_works_without_a_usable_cache_dir() {
    // /proc does not allow creating directories, even for root.
    let (status, log) = run_to_end(
        Command::new(HEARTH)
            .env("HEARTH_CACHE_DIR", "/proc/hearth-no-cache-here")
            .args(["run", hearth_testkit::JOB_EXIT]),
    );
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("running without the on-disk caches"), "{log}");
}

/// Reads from `stream` until the server closes it (EOF or reset); whether
/// it did within `patience`.
fn closed_by_server(stream: &mut std::net::TcpStream, patience: Duration) -> bool {
    use std::io::Read;
    stream.set_read_timeout(Some(patience)).unwrap();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn idle_and_slow_connections_to_one_function_leave_another_answering() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let (a_port, b_port) = (free_port(), free_port());
    let config = write_config(
        dir.path(),
        &format!(
            r#"
[limits]
max_connections = 20
header_read_timeout_ms = 1000

[[function]]
name = "a"
path = "{hello}"
listen = "127.0.0.1:{a_port}"

[[function]]
name = "b"
path = "{hello}"
listen = "127.0.0.1:{b_port}"
"#,
            hello = hearth_testkit::HELLO,
        ),
    );
    let mut hearthd = Running::start(
        Command::new(HEARTHD)
            .env("HEARTH_CACHE_DIR", dir.path().join("cache"))
            .env("HEARTH_SOCKET", dir.path().join("hearthd.sock"))
            .arg("--config")
            .arg(&config)
            .args(["--admin", "127.0.0.1:0"]),
    );
    let (a, b) = (hearthd.serving_addr("a"), hearthd.serving_addr("b"));
    let admin = hearthd.admin_addr();
    hearthd.wait_for_line("hearthd ready");
    let runtime = tokio::runtime::Runtime::new().unwrap();

    // 300 connections held open against `a`, sending nothing.
    let mut idle: Vec<_> = (0..300)
        .map(|_| std::net::TcpStream::connect(a).unwrap())
        .collect();
    let reply = runtime.block_on(get(b, "/")).unwrap();
    assert_eq!(reply.status, 200, "`b` answers while `a` is flooded");
    // Past max_connections they are closed on accept; the others when
    // their headers do not come within header_read_timeout_ms.
    let closed = idle
        .iter_mut()
        .map(|stream| closed_by_server(stream, patience()))
        .filter(|closed| *closed)
        .count();
    assert_eq!(closed, 300, "every idle connection was closed by hearthd");

    // A client that sends half a header is cut off.
    let mut slow = std::net::TcpStream::connect(a).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n").unwrap();
    assert!(closed_by_server(&mut slow, patience()), "half a header");
    // So is a keep-alive connection that starts no new request.
    let mut kept = std::net::TcpStream::connect(a).unwrap();
    kept.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .unwrap();
    {
        use std::io::Read;
        let mut first = [0u8; 12];
        kept.read_exact(&mut first).unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
    }
    assert!(closed_by_server(&mut kept, patience()), "idle keep-alive");

    let reply = runtime.block_on(get(a, "/")).unwrap();
    assert_eq!(reply.status, 200, "`a` serves again");
    let metrics = runtime.block_on(get(admin, "/metrics")).unwrap().text();
    let refused = hearth_testkit::metric(
        &metrics,
        "hearth_http_connections_refused_total{id=\"a\",namespace=\"default\",function=\"a\"}",
    )
    .unwrap_or_else(|| panic!("{metrics}"));
    // At most 20 are served at once; slots freed by the header timeout take
    // a few more from the backlog before the rest is refused.
    assert!((200.0..=280.0).contains(&refused), "{refused}: {metrics}");
    assert!(
        hearthd
            .log_text()
            .contains("connections are open (max_connections)"),
        "the refusal is logged"
    );
    assert_eq!(
        hearthd.terminate().code(),
        Some(0),
        "{}",
        hearthd.log_text()
    );
}

#[test]
fn a_full_topic_refuses_publishes_by_name_and_the_rest_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(
        dir.path(),
        &format!(
            r#"
[messaging.brokers.default]
type = "embedded"
max_topic_messages = 2

[[function]]
name = "producer"
path = "{producer}"
listen = "127.0.0.1:{port}"
"#,
            producer = hearth_testkit::ORDER_PRODUCER,
        ),
    );
    let hearthd = Running::start(
        Command::new(HEARTHD)
            .env("HEARTH_CACHE_DIR", dir.path().join("cache"))
            .env("HEARTH_SOCKET", dir.path().join("hearthd.sock"))
            .arg("--config")
            .arg(&config)
            .args(["--admin", "127.0.0.1:0"]),
    );
    let producer = hearthd.serving_addr("producer");
    let admin = hearthd.admin_addr();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let post = |path: &str| {
        runtime
            .block_on(send(
                producer,
                Method::POST,
                path,
                &[],
                Bytes::from_static(b"order"),
            ))
            .unwrap()
    };
    for _ in 0..2 {
        let reply = post("/orders");
        assert_eq!(reply.status, 202, "{}", reply.text());
    }
    let refused = post("/orders");
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(
        refused
            .text()
            .starts_with("topic-full: topic `default.orders` is full: it holds 2 messages"),
        "{}",
        refused.text()
    );
    // Another topic of the same broker, and the function itself, carry on.
    let other = post("/publish?topic=audit");
    assert_eq!(other.status, 202, "{}", other.text());
    let metrics = runtime.block_on(get(admin, "/metrics")).unwrap().text();
    let series = |name: &str| {
        hearth_testkit::metric(
            &metrics,
            &format!("{name}{{broker=\"default\",topic=\"default.orders\"}}"),
        )
    };
    assert_eq!(
        series("hearth_broker_publishes_refused_total"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        series("hearth_broker_topic_messages"),
        Some(2.0),
        "{metrics}"
    );
}

#[test]
fn one_callers_impatience_never_opens_a_circuit_for_another_caller() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let config = write_config(
        dir.path(),
        &format!(
            r#"
[[function]]
name = "slow"
path = "{misbehave}"
listen = "127.0.0.1:{slow}"

[[function]]
name = "impatient"
path = "{chain}"
listen = "127.0.0.1:{impatient}"
[function.config]
NAME = "impatient"

[[function]]
name = "patient"
path = "{chain}"
listen = "127.0.0.1:{patient}"
[function.config]
NAME = "patient"
"#,
            misbehave = hearth_testkit::MISBEHAVE,
            chain = hearth_testkit::INVOKE_CHAIN,
            slow = ports[0],
            impatient = ports[1],
            patient = ports[2],
        ),
    );
    let hearthd = Running::start(
        Command::new(HEARTHD)
            .env("HEARTH_CACHE_DIR", dir.path().join("cache"))
            .env("HEARTH_SOCKET", dir.path().join("hearthd.sock"))
            .arg("--config")
            .arg(&config),
    );
    let impatient = hearthd.serving_addr("impatient");
    let patient = hearthd.serving_addr("patient");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Ten calls that give the callee 1 ms: each times out, by the caller's
    // own choice (the default breaker opens after 5 failures).
    for _ in 0..10 {
        let reply = runtime
            .block_on(get(impatient, "/call?target=slow&path=/sleep&timeout_ms=1"))
            .unwrap();
        assert_eq!(reply.status, 504, "{}", reply.text());
        assert!(reply.text().contains("timeout"), "{}", reply.text());
    }
    // Another caller still reaches the callee.
    let reply = runtime
        .block_on(get(patient, "/call?target=slow&path=/ok"))
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "ok\n");
}

/// A job component of three core modules: two each own a linear memory
/// and grow it by 48 pages (3 MiB) when `run` calls them.
const TWO_MEMORIES_JOB: &str = r#"
(component
  (core module $grower
    (memory 1)
    (func (export "grow") (result i32) (memory.grow (i32.const 48))))
  (core module $main
    (import "first" "grow" (func $first (result i32)))
    (import "second" "grow" (func $second (result i32)))
    (func (export "run") (result i32)
      (drop (call $first))
      (drop (call $second))
      (i32.const 0)))
  (core instance $first (instantiate $grower))
  (core instance $second (instantiate $grower))
  (core instance $main (instantiate $main
    (with "first" (instance $first))
    (with "second" (instance $second))))
  (func $run (result (result)) (canon lift (core func $main "run")))
  (instance $cli (export "run" (func $run)))
  (export "wasi:cli/run@0.2.12" (instance $cli)))
"#;

#[test]
fn the_memory_limit_counts_all_of_a_components_memories_together() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("two-memories.wasm");
    std::fs::write(&job, wat::parse_str(TWO_MEMORIES_JOB).unwrap()).unwrap();
    // Each memory ends at 49 pages (3.06 MiB), under 4 MiB alone; both
    // together are 6.1 MiB.
    let (status, log) = run_to_end(
        Command::new(HEARTH)
            .arg("run")
            .arg(&job)
            .args(["--max-memory-mib", "4"]),
    );
    assert_eq!(status.code(), Some(134), "{log}");
    assert!(log.contains("memory limit exceeded"), "{log}");
    let (status, log) = run_to_end(
        Command::new(HEARTH)
            .arg("run")
            .arg(&job)
            .args(["--max-memory-mib", "8"]),
    );
    assert_eq!(status.code(), Some(0), "{log}");
}

#[test]
fn hearth_run_serves_a_p3_service_and_runs_a_p3_job() {
    let mut hearth = Running::start(Command::new(HEARTH).args([
        "run",
        hearth_testkit::HELLO_P3,
        "--listen",
        "127.0.0.1:0",
        "--env",
        "GREETING=Async",
    ]));
    let addr = hearth.serving_addr("hello_p3");
    let line = hearth.wait_for_line("serving function `hello_p3`");
    assert!(line.contains("wasi=wasi-0.3"), "{line}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let reply = runtime.block_on(get(addr, "/")).unwrap();
    assert_eq!(reply.text(), "Async from Hearth!\n");
    let status = hearth.terminate();
    assert_eq!(status.code(), Some(0), "log:\n{}", hearth.log_text());

    let (status, log) = run_to_end(Command::new(HEARTH).args([
        "run",
        hearth_testkit::JOB_P3,
        "--env",
        "EXIT_CODE=7",
    ]));
    assert_eq!(status.code(), Some(7), "log:\n{log}");
    assert!(
        log.contains("job-p3 ran"),
        "guest stdout not in log:\n{log}"
    );
}
