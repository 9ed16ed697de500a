//! `hearth new`, `hearth build` and `hearth up` as a first-day user runs
//! them: every template (Rust, Python and JavaScript; HTTP service, state,
//! job, message handler) is made, built with its language's toolchain and
//! run doing what it says; a compile error shows the compiler's own
//! message; `hearth up --watch` serves the new code after an edit.
//!
//! Rust templates share one cargo target dir (`target/template-builds`);
//! Python and JavaScript use the tools the test build installed
//! (`target/guest-tools`, through `HEARTH_TOOLS_DIR`).

use bytes::Bytes;
use hearth_testkit::http::{get, send};
use hearth_testkit::process::{Running, patience, run_to_end};
use http::Method;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const HEARTH: &str = env!("CARGO_BIN_EXE_hearth");
const HEARTHD: &str = env!("CARGO_BIN_EXE_hearthd");

/// The workspace's target dir (`CARGO_TARGET_TMPDIR` is `<target>/tmp`).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `hearth ARGS` in `dir` with the shared tool and build dirs and `cache`.
fn hearth(dir: &Path, cache: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(HEARTH);
    command
        .args(args)
        .current_dir(dir)
        .env("HEARTH_CACHE_DIR", cache)
        .env("HEARTH_TOOLS_DIR", target_dir().join("guest-tools"))
        .env("CARGO_TARGET_DIR", target_dir().join("template-builds"));
    command
}

/// Makes and builds template `template` as function `name` under `root`;
/// the component and what `hearth build` printed.
fn new_and_build(root: &Path, cache: &Path, template: &str, name: &str) -> (PathBuf, String) {
    let (status, output) = run_to_end(&mut hearth(root, cache, &["new", template, name]));
    assert!(status.success(), "hearth new {template} {name}: {output}");
    assert!(
        output.contains(&format!("next: cd {name} && hearth up")),
        "{output}"
    );
    let project = root.join(name);
    let output = hearth(&project, cache, &["build"]).output().unwrap();
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "hearth build of {template}: {printed}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let path = printed
        .strip_prefix("built ")
        .and_then(|rest| rest.split(" (").next())
        .unwrap_or_else(|| panic!("no `built PATH` in {printed}"));
    let component = PathBuf::from(path);
    assert!(component.is_file(), "{printed}");
    assert!(printed.contains(" KiB): a "), "{printed}");
    (component, printed)
}

/// Serves `component` with `hearth run` on a free port; the process and
/// its address.
fn serve(component: &Path) -> (Running, std::net::SocketAddr) {
    // hearth run names it by its file (a Rust library's has `_` for `-`).
    let name = component
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let running = Running::start(
        Command::new(HEARTH)
            .arg("run")
            .arg(component)
            .args(["--listen", "127.0.0.1:0"]),
    );
    let addr = running.serving_addr(&name);
    (running, addr)
}

fn exercise_service(component: &Path, name: &str) {
    let (_running, addr) = serve(component);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let reply = runtime.block_on(get(addr, "/there")).unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), format!("Hello from {name} at /there\n"));
}

fn exercise_state(component: &Path, name: &str) {
    let (_running, addr) = serve(component);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for visit in 1..=2 {
        let reply = runtime.block_on(get(addr, "/")).unwrap();
        assert_eq!(reply.text(), format!("visits: {visit}\n"), "{name}");
    }
    assert_eq!(
        runtime.block_on(get(addr, "/reset")).unwrap().text(),
        "reset\n"
    );
    assert_eq!(
        runtime.block_on(get(addr, "/")).unwrap().text(),
        "visits: 1\n"
    );
}

fn exercise_job(component: &Path, name: &str) {
    use std::io::Write;
    let cache = tempfile::tempdir().unwrap();
    let mut child = Command::new(HEARTH)
        .arg("run")
        .arg(component)
        .args(["--env", "WHO=first-day user"])
        .env("HEARTH_CACHE_DIR", cache.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"four").unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.starts_with(&format!("Hello, first-day user, from {name}!")),
        "{stdout}"
    );
}

/// hearthd serving the handler subscribed to `greetings`, and
/// `order-producer` publishing to it.
fn exercise_message_handler(component: &Path, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hearth.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[function]]
name = "producer"
path = "{producer}"
listen = "127.0.0.1:0"

[[function]]
name = "{name}"
path = "{handler}"

[[function.subscribe]]
topic = "greetings"
# One at a time: the counts below follow the publish order.
concurrency = 1
"#,
            producer = hearth_testkit::ORDER_PRODUCER,
            handler = component.display(),
        ),
    )
    .unwrap();
    let hearthd = Running::start(
        Command::new(HEARTHD)
            .env("HEARTH_CACHE_DIR", dir.path().join("cache"))
            .env("HEARTH_SOCKET", dir.path().join("hearthd.sock"))
            .arg("--config")
            .arg(&config),
    );
    let producer = hearthd.serving_addr("producer");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for text in ["hello", "again"] {
        let reply = runtime
            .block_on(send(
                producer,
                Method::POST,
                "/publish?topic=greetings",
                &[],
                Bytes::from(text),
            ))
            .unwrap();
        assert_eq!(reply.status, 202, "{}", reply.text());
    }
    let first = hearthd.wait_for_line(": hello");
    assert!(
        first.contains("message 1 on") && first.contains(name),
        "{first}"
    );
    let second = hearthd.wait_for_line(": again");
    assert!(second.contains("message 2 on"), "{second}");
}

fn every_template_of(language: &str) {
    let root = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    for kind in ["http", "state", "job", "message"] {
        let template = format!("{language}-{kind}");
        let name = format!("{language}-{kind}-fn");
        let (component, printed) = new_and_build(root.path(), cache.path(), &template, &name);
        let (what, export) = match kind {
            "http" | "state" => ("service", "wasi:http/incoming-handler@0.2"),
            "job" => ("job", "wasi:cli/run@0.2"),
            _ => (
                "message handler",
                "wasi:messaging/incoming-handler@0.2.0-draft",
            ),
        };
        assert!(printed.contains(&format!(" {what}\n")), "{printed}");
        assert!(printed.contains(export), "{printed}");
        match kind {
            "http" => exercise_service(&component, &name),
            "state" => exercise_state(&component, &name),
            "job" => exercise_job(&component, &name),
            _ => exercise_message_handler(&component, &name),
        }
    }
}

#[test]
fn every_rust_template_builds_and_does_what_it_says() {
    every_template_of("rust");
}

#[test]
fn every_python_template_builds_and_does_what_it_says() {
    every_template_of("python");
}

#[test]
fn every_js_template_builds_and_does_what_it_says() {
    every_template_of("js");
}

#[test]
fn hearth_new_lists_templates_and_refuses_what_it_cannot_make() {
    let root = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let output = hearth(root.path(), cache.path(), &["new", "--list"])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&output.stdout);
    assert_eq!(list.lines().count(), 12, "{list}");
    assert!(
        list.contains("python-message   Python: a message handler"),
        "{list}"
    );

    for (args, needle) in [
        (
            vec!["new", "go-http", "x"],
            "there is no template `go-http`",
        ),
        (
            vec!["new", "rust-http", "Bad_Name"],
            "is not a usable function name",
        ),
    ] {
        let (status, output) = run_to_end(&mut hearth(root.path(), cache.path(), &args));
        assert_eq!(status.code(), Some(2), "{output}");
        assert!(output.contains(needle), "{output}");
    }
    std::fs::create_dir(root.path().join("taken")).unwrap();
    std::fs::write(root.path().join("taken/keep.txt"), "mine").unwrap();
    let (status, output) = run_to_end(&mut hearth(
        root.path(),
        cache.path(),
        &["new", "rust-http", "taken"],
    ));
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(
        output.contains("already exists and is not empty"),
        "{output}"
    );
    assert_eq!(
        std::fs::read_to_string(root.path().join("taken/keep.txt")).unwrap(),
        "mine"
    );

    let (status, output) = run_to_end(&mut hearth(root.path(), cache.path(), &["build"]));
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(output.contains("not a function project"), "{output}");
}

#[test]
fn a_build_error_shows_the_compiler_s_own_message() {
    let root = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let (status, _) = run_to_end(&mut hearth(
        root.path(),
        cache.path(),
        &["new", "rust-http", "broken"],
    ));
    assert!(status.success());
    let source = root.path().join("broken/src/lib.rs");
    let text = std::fs::read_to_string(&source).unwrap();
    std::fs::write(&source, text.replace("struct Function;", "struct Function")).unwrap();
    // Not `run_to_end`: a cold build of the template's dependencies, or
    // waiting on the shared target dir's lock while another test builds
    // them, outlasts its patience on a 2-core CI machine.
    let built = hearth(&root.path().join("broken"), cache.path(), &["build"])
        .output()
        .unwrap();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    assert_eq!(built.status.code(), Some(2), "{output}");
    assert!(output.contains("cargo failed"), "{output}");
    assert!(
        output.contains("error: expected"),
        "rustc's own words: {output}"
    );
}

#[test]
fn hearth_up_watch_serves_the_new_code_after_an_edit() {
    use std::os::unix::process::CommandExt;
    let root = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    // Built once first, without a deadline, so that `hearth up`'s own build
    // is warm and its serving line comes within the patience.
    new_and_build(root.path(), cache.path(), "rust-http", "live");
    let project = root.path().join("live");
    let port = hearth_testkit::registry::free_port();
    let listen = format!("127.0.0.1:{port}");
    // Its own process group: `hearth up` and the `hearth run` it starts go
    // together, as at a terminal's ^C.
    let up = Running::start(
        hearth(
            &project,
            cache.path(),
            &["up", "--watch", "--", "--listen", &listen],
        )
        .process_group(0),
    );
    let group = nix::unistd::Pid::from_raw(-(up.pid() as i32));
    let addr = up.serving_addr("live");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(
        runtime.block_on(get(addr, "/")).unwrap().text(),
        "Hello from live at /\n"
    );
    let source = project.join("src/lib.rs");
    let text = std::fs::read_to_string(&source).unwrap();
    std::fs::write(
        &source,
        text.replace("{greeting} from", "{greeting} (edited) from"),
    )
    .unwrap();
    let started = Instant::now();
    loop {
        let reply = runtime.block_on(get(addr, "/"));
        if reply.is_ok_and(|reply| reply.text() == "Hello (edited) from live at /\n") {
            break;
        }
        assert!(
            started.elapsed() < patience() * 3,
            "the edit was never served; log:\n{}",
            up.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(up.log_text().contains("a source changed; rebuilding"));
    // A SIGTERM to `hearth up` alone (a supervisor's, not a terminal's)
    // stops its `hearth run` too, whose status it exits with.
    let mut up = up;
    let status = up.terminate();
    let stopped = runtime.block_on(get(addr, "/")).is_err();
    let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
    assert_eq!(status.code(), Some(0), "{}", up.log_text());
    assert!(
        stopped,
        "hearth run outlived hearth up; log:\n{}",
        up.log_text()
    );
}
