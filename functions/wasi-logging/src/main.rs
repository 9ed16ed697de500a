//! `wasi-logging`: a job built against `wasi:logging@0.1.0-draft` alone
//! (`wit/deps/logging`, the upstream package as wasmCloud's components
//! import it), not Hearth's SDK. It logs one line at each level, one whose
//! message holds a newline and an escape sequence (which must not start a
//! line of its own anywhere), and one 20 KiB message (cut by the host).
//! With `FLOOD=N` it then logs N more lines as fast as it can. Exit 0.

wit_bindgen::generate!({
    path: "../../wit/deps/logging",
    world: "wasi:logging/imports@0.1.0-draft",
    generate_all,
});

use wasi::logging::logging::{Level, log};

fn main() {
    for (level, name) in [
        (Level::Trace, "trace"),
        (Level::Debug, "debug"),
        (Level::Info, "info"),
        (Level::Warn, "warn"),
        (Level::Error, "error"),
        (Level::Critical, "critical"),
    ] {
        log(level, "levels", &format!("a line at {name}"));
    }
    log(Level::Info, "", "no context");
    log(
        Level::Warn,
        "forgery",
        "first\nERROR forged: second\u{1b}[2J",
    );
    log(Level::Info, "big", &"x".repeat(20 * 1024));
    let flood: u32 = std::env::var("FLOOD")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    for i in 0..flood {
        log(Level::Info, "flood", &format!("line {i}"));
    }
}
