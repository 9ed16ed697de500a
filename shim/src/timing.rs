//! Where a Pod start spends its time in the shim, as one log line per task
//! call.
//!
//! # Contract
//!
//! * Each line reads `timing WHAT ID: total=T.TTms STEP=T.TTms ...`, logged
//!   at info level into containerd's shim log when the call returns. `WHAT`
//!   is `serving` (the shim process is ready for containerd; `total` since
//!   the `start` process containerd ran began, steps `start`: from there to
//!   this server process's `main`, and `init`: from that `main` to ready),
//!   `create-sandbox`, `create-function`, `start-sandbox` or
//!   `start-function`; the steps are the call's own parts in order.
//! * The line's time stamp (the shim logger's RFC 3339 `time=`) is when the
//!   call returned, so a reader with the same clock (the cold-start bench)
//!   can place every step on a Pod start's timeline.
//! * Measuring costs two clock reads per step; nothing waits on it.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// When this process started running its `main`.
static PROCESS_START: std::sync::OnceLock<(Instant, SystemTime)> = std::sync::OnceLock::new();

/// The environment variable through which the `start` process tells the
/// server process it spawns when it began (Unix nanoseconds).
pub const START_ACTION_AT: &str = "HEARTH_SHIM_START_AT_NS";

/// Marks the process start; called first thing in `main`.
pub fn mark_process_start() {
    process_start();
}

/// The process start (marked now if `main` did not).
fn process_start() -> (Instant, SystemTime) {
    *PROCESS_START.get_or_init(|| (Instant::now(), SystemTime::now()))
}

/// When this process's `main` began, in Unix nanoseconds.
pub fn process_start_unix_nanos() -> u128 {
    let (_, wall) = process_start();
    wall.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

/// Logs the `serving` line (see the module docs).
pub fn log_serving(id: &str) {
    let (began, wall) = process_start();
    let init = began.elapsed();
    let start = std::env::var(START_ACTION_AT)
        .ok()
        .and_then(|nanos| nanos.parse::<u64>().ok())
        .map(|nanos| UNIX_EPOCH + Duration::from_nanos(nanos))
        .and_then(|at| wall.duration_since(at).ok())
        .unwrap_or_default();
    log_line(
        "serving",
        id,
        start + init,
        &[("start", start), ("init", init)],
    );
}

/// The steps of one task call.
pub struct Stopwatch {
    began: Instant,
    last: Instant,
    steps: Vec<(&'static str, Duration)>,
}

impl Stopwatch {
    /// Starts timing a call.
    pub fn start() -> Self {
        let now = Instant::now();
        Stopwatch {
            began: now,
            last: now,
            steps: Vec::with_capacity(4),
        }
    }

    /// Ends the step `name` now.
    pub fn lap(&mut self, name: &'static str) {
        let now = Instant::now();
        self.steps.push((name, now - self.last));
        self.last = now;
    }

    /// Logs the line for `what` of `id` (see the module docs).
    pub fn log(&self, what: &str, id: &str) {
        log_line(what, id, self.began.elapsed(), &self.steps);
    }
}

/// Logs one timing line (see the module docs).
pub fn log_line(what: &str, id: &str, total: Duration, steps: &[(&'static str, Duration)]) {
    let mut line = format!("timing {what} {id}: total={}", millis(total));
    for (name, took) in steps {
        line += &format!(" {name}={}", millis(*took));
    }
    log::info!("{line}");
}

fn millis(duration: Duration) -> String {
    format!("{:.2}ms", duration.as_secs_f64() * 1e3)
}
