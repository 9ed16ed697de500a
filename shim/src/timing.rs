//! Where a Pod start spends its time in the shim, as one log line per task
//! call.
//!
//! # Contract
//!
//! * Each line reads `timing WHAT ID: total=T.TTms STEP=T.TTms ...`, logged
//!   at info level into containerd's shim log when the call returns. `WHAT`
//!   is `serving` (the shim process is ready for containerd, `total` since
//!   its exec), `create-sandbox`, `create-function`, `start-sandbox` or
//!   `start-function`; the steps are the call's own parts in order.
//! * The line's time stamp (the shim logger's RFC 3339 `time=`) is when the
//!   call returned, so a reader with the same clock (the cold-start bench)
//!   can place every step on a Pod start's timeline.
//! * Measuring costs two clock reads per step; nothing waits on it.

use std::time::{Duration, Instant};

/// When this process started running its `main`: the start of `serving`.
static PROCESS_START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Marks the process start; called first thing in `main`.
pub fn mark_process_start() {
    PROCESS_START.get_or_init(Instant::now);
}

/// Time since [`mark_process_start`] (zero if it was never called).
pub fn since_process_start() -> Duration {
    PROCESS_START.get().map(Instant::elapsed).unwrap_or_default()
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
