//! Running Hearth's binaries in tests: spawn, collect the log line by line,
//! wait for a line, signal, and reap. A process still running when its
//! [`Running`] is dropped is killed.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a test waits for a process to log a line or to exit: 60 s,
/// or `HEARTH_TEST_PATIENCE_SECS` (tests/rdma-vm/run sets 600: everything
/// CPU-bound runs 10 to 50 times slower under QEMU's TCG).
pub fn patience() -> Duration {
    static PATIENCE: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *PATIENCE.get_or_init(|| {
        let seconds = std::env::var("HEARTH_TEST_PATIENCE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60);
        Duration::from_secs(seconds)
    })
}

/// A running binary whose stderr (the log) is collected line by line.
pub struct Running {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    _cache_dir: Option<tempfile::TempDir>,
}

impl Running {
    /// Spawns `command` with `HEARTH_LOG=info`, no `PORT`, and (unless the
    /// command sets one) a private `HEARTH_CACHE_DIR` removed on drop.
    pub fn start(command: &mut Command) -> Self {
        let sets_cache = command.get_envs().any(|(key, _)| key == "HEARTH_CACHE_DIR");
        let cache_dir = (!sets_cache).then(|| tempfile::tempdir().expect("temp cache dir"));
        if let Some(dir) = &cache_dir {
            command.env("HEARTH_CACHE_DIR", dir.path());
        }
        let mut child = command
            .env("HEARTH_LOG", "info")
            .env_remove("PORT")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let log = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
        }
        Running {
            child,
            log,
            _cache_dir: cache_dir,
        }
    }

    /// Waits for a log line containing `needle` and returns it.
    pub fn wait_for_line(&self, needle: &str) -> String {
        let started = Instant::now();
        loop {
            if let Some(line) = self.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            assert!(
                started.elapsed() < patience(),
                "no log line containing {needle:?}; log so far:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGKILL, as a crash would end it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// hearthd's admin endpoint, from its "admin endpoint on http://ADDR" line.
    pub fn admin_addr(&self) -> SocketAddr {
        self.addr_after("admin endpoint on http://")
    }

    /// The address from a "serving function `NAME` on http://ADDR" line.
    pub fn serving_addr(&self, name: &str) -> SocketAddr {
        self.addr_after(&format!("serving function `{name}` on http://"))
    }

    /// The address that follows `needle` in the first log line holding it
    /// (waiting for that line), up to a space or a `/`: `ADDR` of
    /// "listening on ADDR" or of "on http://ADDR/metrics".
    pub fn addr_after(&self, needle: &str) -> SocketAddr {
        let line = self.wait_for_line(needle);
        let rest = &line[line.find(needle).expect("the line holds it") + needle.len()..];
        let addr = rest
            .split(|c: char| c.is_whitespace() || c == '/')
            .next()
            .unwrap_or_default();
        addr.parse()
            .unwrap_or_else(|e| panic!("`{addr}` after `{needle}` in {line:?}: {e}"))
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        self.wait()
    }

    /// Waits for the exit (at most [`patience`]).
    pub fn wait(&mut self) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader threads drain the pipes.
                std::thread::sleep(Duration::from_millis(50));
                return status;
            }
            if started.elapsed() > patience() {
                let _ = self.child.kill();
                panic!("process did not exit; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `command` to its end; its status and log.
pub fn run_to_end(command: &mut Command) -> (ExitStatus, String) {
    let mut running = Running::start(command);
    let status = running.wait();
    (status, running.log_text())
}

/// The environment variable that makes a test binary's test a child role.
const CHILD_ROLE: &str = "HEARTH_TEST_CHILD_ROLE";

/// The role this process was started in by [`rerun_as_child`], if any.
pub fn child_role() -> Option<String> {
    std::env::var(CHILD_ROLE).ok()
}

/// In a child started by [`rerun_as_child`]: one line to the parent on
/// stdout, flushed at once (a SIGKILL may come at any moment). The first
/// call also ends libtest's `test NAME ... ` line, so that every line told
/// is a line of its own.
pub fn tell_parent(line: &str) {
    use std::io::Write;
    static FIRST: std::sync::Once = std::sync::Once::new();
    let mut out = std::io::stdout().lock();
    FIRST.call_once(|| writeln!(out).unwrap());
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

/// A copy of this test binary running one test as a child, started by
/// [`rerun_as_child`].
pub struct ChildRun {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl ChildRun {
    /// Reads the child's lines until `enough` (given each line) says so,
    /// waiting at most [`patience`] for each, then kills it with SIGKILL;
    /// every line it told, those still in the pipe at the kill included.
    pub fn kill_when(mut self, mut enough: impl FnMut(&str) -> bool) -> Vec<String> {
        let mut told = Vec::new();
        loop {
            let line = self
                .lines
                .recv_timeout(patience())
                .expect("the child keeps telling");
            let done = enough(&line);
            told.push(line);
            if done {
                break;
            }
        }
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        told.extend(self.lines.iter());
        told
    }
}

/// A copy of this test binary running test `test` alone as a child in
/// `role` (see [`child_role`]), with `env`: for a test that must kill a
/// process (`kill -9` mid-write) and look at what it left. The child
/// reports with [`tell_parent`]; its stderr is inherited.
pub fn rerun_as_child(test: &str, role: &str, env: &[(&str, &std::ffi::OsStr)]) -> ChildRun {
    let mut command = Command::new(std::env::current_exe().expect("this test binary"));
    command
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ROLE, role)
        .stdout(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("rerun this test binary");
    let stdout = child.stdout.take().expect("piped");
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    ChildRun {
        child,
        lines: received,
    }
}
