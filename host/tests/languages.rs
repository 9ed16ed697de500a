//! One table of requests and expected responses, run against the same
//! function written in Rust (`functions/*`), Python (`functions/python/*`,
//! componentize-py) and JavaScript (`functions/js/*`, componentize-js), each
//! served by `hearth run` as a user runs it. The Python and JavaScript
//! components are built by tests/testkit's build step
//! (`scripts/build-guests.sh`).

use bytes::Bytes;
use hearth_testkit::http::send;
use hearth_testkit::process::Running;
use http::{Method, StatusCode};
use std::path::PathBuf;
use std::process::Command;

const HEARTH: &str = env!("CARGO_BIN_EXE_hearth");

/// One request and what must come back.
struct Case {
    method: Method,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: &'static str,
    status: StatusCode,
    /// The exact body, or a prefix of it when it ends in `…`.
    expect_body: &'static str,
    expect_headers: &'static [(&'static str, &'static str)],
}

const fn case(method: Method, path: &'static str, status: StatusCode, body: &'static str) -> Case {
    Case {
        method,
        path,
        headers: &[],
        body: "",
        status,
        expect_body: body,
        expect_headers: &[],
    }
}

/// The table: function → (environment, requests in order).
fn table() -> Vec<(&'static str, &'static [&'static str], Vec<Case>)> {
    vec![
        (
            "hello",
            &["GREETING=Howdy"],
            vec![case(
                Method::GET,
                "/",
                StatusCode::OK,
                "Howdy from Hearth!\n",
            )],
        ),
        (
            "echo",
            &[],
            vec![Case {
                method: Method::PUT,
                path: "/some/path?q=1",
                headers: &[("x-test", "yes")],
                body: "the body survives",
                status: StatusCode::OK,
                expect_body: "the body survives",
                expect_headers: &[
                    ("x-echo-method", "PUT"),
                    ("x-echo-path", "/some/path?q=1"),
                    ("x-echo-x-test", "yes"),
                ],
            }],
        ),
        (
            "cart",
            &[],
            vec![
                case(
                    Method::POST,
                    "/add?user=ann&sku=pear&qty=1",
                    StatusCode::OK,
                    "pear 1\n",
                ),
                case(
                    Method::POST,
                    "/add?user=ann&sku=apple&qty=2",
                    StatusCode::OK,
                    "apple 2\npear 1\n",
                ),
                case(
                    Method::GET,
                    "/cart?user=ann",
                    StatusCode::OK,
                    "apple 2\npear 1\n",
                ),
                case(
                    Method::POST,
                    "/checkout?user=ann",
                    StatusCode::OK,
                    "order:ann:…",
                ),
                case(
                    Method::GET,
                    "/cart?user=ann",
                    StatusCode::NOT_FOUND,
                    "no cart\n",
                ),
            ],
        ),
    ]
}

fn component(language: &str, function: &str) -> &'static str {
    if language == "rust" {
        return match function {
            "hello" => hearth_testkit::HELLO,
            "echo" => hearth_testkit::ECHO,
            "cart" => hearth_testkit::CART,
            other => panic!("no Rust function {other}"),
        };
    }
    hearth_testkit::GUEST_FUNCTIONS
        .iter()
        .find(|(lang, name, _)| *lang == language && *name == function)
        .map(|(_, _, path)| *path)
        .unwrap_or_else(|| panic!("no {language} version of {function}"))
}

/// A cache dir of its own per language and function, kept across runs so
/// the large Python and JavaScript components compile once; its state
/// store is emptied so every run starts from no keys.
fn cache_dir(language: &str, function: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("language-caches")
        .join(format!("{language}-{function}"));
    let _ = std::fs::remove_dir_all(dir.join("state"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn serve(language: &str, function: &str, env: &[&str]) -> (Running, std::net::SocketAddr) {
    let wasm = component(language, function);
    let mut command = Command::new(HEARTH);
    command
        .env("HEARTH_CACHE_DIR", cache_dir(language, function))
        .args(["run", wasm, "--listen", "127.0.0.1:0"]);
    for var in env {
        command.args(["--env", var]);
    }
    let hearth = Running::start(&mut command);
    let name = std::path::Path::new(wasm)
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let addr = hearth.serving_addr(&name);
    (hearth, addr)
}

fn run_table(language: &str) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for (function, env, cases) in table() {
        let (hearth, addr) = serve(language, function, env);
        for case in cases {
            let reply = runtime
                .block_on(send(
                    addr,
                    case.method.clone(),
                    case.path,
                    case.headers,
                    Bytes::from_static(case.body.as_bytes()),
                ))
                .unwrap();
            let what = format!("{language} {function}: {} {}", case.method, case.path);
            assert_eq!(
                reply.status,
                case.status,
                "{what}: {}\nlog:\n{}",
                reply.text(),
                hearth.log_text()
            );
            match case.expect_body.strip_suffix('…') {
                Some(prefix) => {
                    assert!(reply.text().starts_with(prefix), "{what}: {}", reply.text())
                }
                None => assert_eq!(reply.text(), case.expect_body, "{what}"),
            }
            for (name, value) in case.expect_headers {
                assert_eq!(reply.header(name), Some(*value), "{what}: header {name}");
            }
        }
    }
}

#[test]
fn rust_functions_answer_the_table() {
    run_table("rust");
}

#[test]
fn python_functions_answer_the_table() {
    run_table("python");
}

#[test]
fn js_functions_answer_the_table() {
    run_table("js");
}

/// An exception in a Python or JavaScript handler: the caller gets a 500
/// with the exception's type and message, the log has it, and the next
/// request is served.
#[test]
fn an_exception_is_a_500_with_its_message_and_the_host_keeps_serving() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for (language, expected) in [
        ("python", "ValueError: echo was asked to fail\n"),
        ("js", "TypeError: echo was asked to fail\n"),
    ] {
        let (hearth, addr) = serve(language, "echo", &[]);
        let reply = runtime
            .block_on(send(addr, Method::GET, "/raise", &[], Bytes::new()))
            .unwrap();
        assert_eq!(
            reply.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{language}"
        );
        assert_eq!(reply.text(), expected, "{language}");
        hearth.wait_for_line("echo was asked to fail");
        let next = runtime
            .block_on(send(
                addr,
                Method::POST,
                "/",
                &[],
                Bytes::from_static(b"still here"),
            ))
            .unwrap();
        assert_eq!(
            (next.status, next.text().as_str()),
            (StatusCode::OK, "still here"),
            "{language}"
        );
    }
}

/// The templates the guides start from build and serve.
#[test]
fn the_guides_templates_serve() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for language in ["python", "js"] {
        let (_hearth, addr) = serve(language, "template", &[]);
        let reply = runtime
            .block_on(send(addr, Method::GET, "/here", &[], Bytes::new()))
            .unwrap();
        assert_eq!(
            reply.text(),
            "Hello from a new Hearth function at /here\n",
            "{language}"
        );
    }
}

/// componentize-py builds WASI 0.3 components (`functions/python/hello-p3`,
/// for `hearth:p3/service`): an async Python handler, served many
/// requests at once by one instance.
#[test]
fn a_python_wasi_p3_service_serves_concurrent_requests() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (hearth, addr) = serve("python", "hello-p3", &["GREETING=Hiss"]);
    let line = hearth.wait_for_line("serving function `py-hello-p3`");
    assert!(line.contains("wasi=wasi-0.3"), "{line}");
    let replies = runtime.block_on(futures_util::future::join_all(
        (0..20).map(|_| send(addr, Method::GET, "/", &[], Bytes::new())),
    ));
    for reply in replies {
        let reply = reply.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", hearth.log_text());
        assert_eq!(reply.text(), "Hiss from Hearth!\n");
    }
}
