//! `wasi:logging@0.1.0-draft`: log lines with a level and a context, the
//! interface wasmCloud's components (and many others) import.
//!
//! # Contract
//!
//! * **Where a line goes.** Every `log` call becomes one event in hearthd's
//!   structured log, at target `guest`, at the call's level (`critical` is
//!   `ERROR` with `critical=true`), with the function's identity as fields:
//!   `function`, `namespace`, `app`, and the call's `context`. `HEARTH_LOG`
//!   filters them like any event (`guest=debug` admits a guest's debug
//!   lines). When the function writes to a Pod's log files (a containerd
//!   task's stdio, see [`crate::guest_output`]), the line is also written to
//!   the Pod's stderr file, whatever its level, as `LEVEL context: message`
//!   (`LEVEL message` when the context is empty), so `kubectl logs` shows it.
//! * **One call, one line.** Control characters in the context and message
//!   (newlines included) are written escaped (`\n`, `\u{1b}`), so a guest
//!   cannot forge lines in hearthd's log or its Pod's. A context is cut at
//!   [`MAX_CONTEXT_BYTES`] and a message at [`MAX_MESSAGE_BYTES`], at a
//!   character boundary, saying how much was cut.
//! * **Bounded.** A function's lines into hearthd's log are rate limited,
//!   per function, to [`LINES_PER_SECOND`] with a burst of as many: past it
//!   lines are dropped and counted
//!   ([`LoggingScope::dropped_lines`], `/metrics`
//!   `hearth_guest_log_dropped_lines_total`), with one warning per second
//!   of dropping. A guest logging in a loop therefore cannot flood the log
//!   every tenant on the node shares; the Pod's own file has its own bound
//!   (its writer's queue). `log` never fails and never blocks the guest.
//!
//! # Host side
//!
//! The function's [`LoggingScope`] (identity and rate limit) is resolved
//! once at load; each instance's [`LoggingCtx`] points at it and at the
//! Pod's files, and the host function runs on a [`LoggingView`].
//! [`add_to_linker`] adds the interface, versioned as published and also
//! unversioned (`wasi:logging/logging`), which components built by
//! wasmCloud's tooling from an unversioned copy of the WIT import.

use super::bindings::wasi::logging::logging::{self as wit, Level};
use crate::guest_output::{GuestOutputFiles, GuestStream};
use crate::tenancy::Identity;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use wasmtime::component::{HasData, Linker};

/// Longest context kept, in bytes.
pub const MAX_CONTEXT_BYTES: usize = 256;

/// Longest message kept, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;

/// Lines per second (and burst) one function may put into hearthd's log.
pub const LINES_PER_SECOND: u32 = 1000;

/// Who logs, and how much it may: one per function.
#[derive(Debug)]
pub struct LoggingScope {
    function: Arc<str>,
    identity: Identity,
    bucket: Mutex<Bucket>,
    lines: AtomicU64,
    dropped: AtomicU64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    /// When dropping was last reported.
    warned: Option<Instant>,
}

impl LoggingScope {
    /// The scope of `function`, of `identity`.
    pub fn new(function: Arc<str>, identity: Identity) -> Self {
        LoggingScope {
            function,
            identity,
            bucket: Mutex::new(Bucket {
                tokens: f64::from(LINES_PER_SECOND),
                refilled: Instant::now(),
                warned: None,
            }),
            lines: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Lines put into hearthd's log.
    pub fn lines(&self) -> u64 {
        self.lines.load(Ordering::Relaxed)
    }

    /// Lines dropped because the function logged faster than
    /// [`LINES_PER_SECOND`].
    pub fn dropped_lines(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Takes one line's token at `now`; `Err(warn)` when there is none,
    /// `warn` saying whether to report the dropping now.
    fn admit(&self, now: Instant) -> Result<(), bool> {
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        let rate = f64::from(LINES_PER_SECOND);
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let warn = bucket
            .warned
            .is_none_or(|at| now.saturating_duration_since(at).as_secs() >= 1);
        if warn {
            bucket.warned = Some(now);
        }
        Err(warn)
    }
}

/// One instance's `wasi:logging` context.
#[derive(Debug, Clone)]
pub struct LoggingCtx {
    /// The function's scope.
    pub scope: Arc<LoggingScope>,
    /// Its Pod's log files, if it writes to them.
    pub files: Option<Arc<GuestOutputFiles>>,
}

/// What `wasi:logging` host functions run on.
pub struct LoggingView<'a> {
    /// The context.
    pub ctx: &'a LoggingCtx,
}

/// The [`HasData`] marker of `wasi:logging`.
pub struct Logging;

impl HasData for Logging {
    type Data<'a> = LoggingView<'a>;
}

/// The interface's unversioned name, also provided.
const UNVERSIONED: &str = "wasi:logging/logging";

/// Adds `wasi:logging/logging@0.1.0-draft` (and the unversioned name) to
/// `linker`, reaching the view through `get`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> LoggingView<'_>,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, Logging>(linker, get)?;
    linker.instance(UNVERSIONED)?.func_wrap(
        "log",
        move |mut store: wasmtime::StoreContextMut<'_, T>,
              (level, context, message): (Level, String, String)| {
            get(store.data_mut()).emit(level, &context, &message);
            Ok(())
        },
    )
}

impl wit::Host for LoggingView<'_> {
    async fn log(
        &mut self,
        level: Level,
        context: String,
        message: String,
    ) -> wasmtime::Result<()> {
        self.emit(level, &context, &message);
        Ok(())
    }
}

impl LoggingView<'_> {
    /// Writes one `log` call where the module docs say.
    pub fn emit(&self, level: Level, context: &str, message: &str) {
        let context = escaped(context, MAX_CONTEXT_BYTES);
        let message = escaped(message, MAX_MESSAGE_BYTES);
        let scope = &self.ctx.scope;
        if let Some(files) = &self.ctx.files {
            let mut line = String::with_capacity(context.len() + message.len() + 12);
            line.push_str(level_name(level));
            line.push(' ');
            if !context.is_empty() {
                line.push_str(&context);
                line.push_str(": ");
            }
            line.push_str(&message);
            line.push('\n');
            // A Pod whose file writer is gone still has hearthd's log.
            let _ = files.write_line(GuestStream::Stderr, line.into_bytes());
        }
        match scope.admit(Instant::now()) {
            Ok(()) => {
                scope.lines.fetch_add(1, Ordering::Relaxed);
                event(scope, level, &context, &message);
            }
            Err(warn) => {
                let dropped = scope.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if warn {
                    tracing::warn!(
                        function = %scope.function,
                        namespace = scope.identity.namespace(),
                        app = scope.identity.app(),
                        dropped,
                        "a function logs faster than {LINES_PER_SECOND} lines/s; its wasi:logging lines past that are dropped from hearthd's log"
                    );
                }
            }
        }
    }
}

fn event(scope: &LoggingScope, level: Level, context: &str, message: &str) {
    let function = &*scope.function;
    let namespace = scope.identity.namespace();
    let app = scope.identity.app();
    macro_rules! at {
        ($level:expr $(, $extra:ident = $value:expr)?) => {
            tracing::event!(
                target: "guest",
                $level,
                function,
                namespace,
                app,
                context,
                $($extra = $value,)?
                "{message}"
            )
        };
    }
    match level {
        Level::Trace => at!(tracing::Level::TRACE),
        Level::Debug => at!(tracing::Level::DEBUG),
        Level::Info => at!(tracing::Level::INFO),
        Level::Warn => at!(tracing::Level::WARN),
        Level::Error => at!(tracing::Level::ERROR),
        Level::Critical => at!(tracing::Level::ERROR, critical = true),
    }
}

/// The level as the Pod's log file shows it.
fn level_name(level: Level) -> &'static str {
    match level {
        Level::Trace => "TRACE",
        Level::Debug => "DEBUG",
        Level::Info => "INFO",
        Level::Warn => "WARN",
        Level::Error => "ERROR",
        Level::Critical => "CRITICAL",
    }
}

/// `text` with control characters escaped, cut to `max` bytes (before
/// escaping) at a character boundary, saying how much was cut.
fn escaped(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let kept = &text[..end];
    let mut out = String::with_capacity(kept.len());
    for c in kept.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    if end < text.len() {
        let _ = write!(out, " [{} more bytes cut]", text.len() - end);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn scope() -> Arc<LoggingScope> {
        Arc::new(LoggingScope::new(
            "logger".into(),
            Identity::new("team-a", "shop").unwrap(),
        ))
    }

    #[test]
    fn control_characters_cannot_start_a_new_line() {
        assert_eq!(
            escaped("one\ntwo\r\u{1b}[31mred\tx", 100),
            "one\\ntwo\\r\\u{1b}[31mred\\tx"
        );
        assert_eq!(escaped("plain text ✓", 100), "plain text ✓");
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary_saying_so() {
        let text = "é".repeat(10); // 20 bytes
        assert_eq!(escaped(&text, 5), "éé [16 more bytes cut]");
        assert_eq!(escaped(&text, 20), text);
    }

    #[test]
    fn the_pod_file_gets_every_line_escaped_with_its_level() {
        let dir = tempfile::tempdir().unwrap();
        let stderr = dir.path().join("stderr");
        std::fs::write(&stderr, "").unwrap();
        let files = Arc::new(GuestOutputFiles::new("logger", None, Some(stderr.clone())));
        let ctx = LoggingCtx {
            scope: scope(),
            files: Some(files.clone()),
        };
        {
            let view = LoggingView { ctx: &ctx };
            view.emit(Level::Info, "orders", "placed 3\nINFO forged: line");
            view.emit(Level::Trace, "", "detail");
            view.emit(Level::Critical, "db", "gone");
        }
        drop((ctx, files));
        // The writer thread ends, flushing, once every sender is gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        let text = loop {
            let text = std::fs::read_to_string(&stderr).unwrap();
            if text.lines().count() == 3 || Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(
            text,
            "INFO orders: placed 3\\nINFO forged: line\nTRACE detail\nCRITICAL db: gone\n"
        );
    }

    #[test]
    fn lines_past_the_rate_are_dropped_and_counted_and_refill_with_time() {
        let scope = scope();
        let start = Instant::now();
        for _ in 0..LINES_PER_SECOND {
            assert_eq!(scope.admit(start), Ok(()));
        }
        assert_eq!(scope.admit(start), Err(true), "the first drop warns");
        assert_eq!(scope.admit(start), Err(false), "and not every drop");
        let later = start + Duration::from_millis(10);
        assert_eq!(scope.admit(later), Ok(()), "10 ms refill 10 lines");
        let much_later = start + Duration::from_secs(5);
        for _ in 0..LINES_PER_SECOND {
            assert_eq!(scope.admit(much_later), Ok(()));
        }
        assert_eq!(
            scope.admit(much_later),
            Err(true),
            "the burst is capped at one second's lines, and a second later it warns again"
        );
    }

    #[tokio::test]
    async fn the_host_function_counts_what_reaches_the_log() {
        let ctx = LoggingCtx {
            scope: scope(),
            files: None,
        };
        let mut view = LoggingView { ctx: &ctx };
        use wit::Host as _;
        for _ in 0..LINES_PER_SECOND + 5 {
            view.log(Level::Info, "c".into(), "m".into()).await.unwrap();
        }
        // How many were dropped depends on how fast the calls ran (the
        // rate refills meanwhile); each is one or the other.
        let counted = ctx.scope.lines() + ctx.scope.dropped_lines();
        assert_eq!(counted, u64::from(LINES_PER_SECOND) + 5);
        assert!(ctx.scope.lines() >= u64::from(LINES_PER_SECOND));
    }
}
