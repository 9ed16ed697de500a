//! The namespace holder: the process that holds namespaces nobody else
//! pinned, behind a sandbox task that asks for a new network namespace
//! without a path (or a container outside any Pod that does), and how the
//! shim starts, signals, measures and stops it. A CRI Pod has none: the CRI
//! pins its network namespace, and the shim itself is the sandbox task
//! (see [`crate::task`]).
//!
//! # Contract
//!
//! * The shim runs it as its own binary with [`PAUSE_ARG`] first, so no
//!   image content is executed and the shim needs no `pause` image binary.
//! * It joins the network namespace given by path (CRI creates one for a
//!   Pod-network Pod), or creates the namespaces the spec lists without a
//!   path (network, IPC, UTS, setting the hostname in a new UTS namespace),
//!   then sleeps until a signal ends it. Its PID is the sandbox task's PID,
//!   so `/proc/<pid>/ns/*`, which app containers' specs name, stays valid as
//!   long as the task runs.
//! * A PID namespace is not created: function containers are not processes,
//!   and nothing runs in it.
//! * Its stdio is `/dev/null`; a failure to enter a namespace is written to
//!   stderr of the shim's log before exit code 1.
//! * It exits when its shim does (`--shim PID`: it checks twice a second
//!   that its parent is still that PID), so a shim that is killed leaves no
//!   holder behind.
//! * Its command line carries the shim's containerd address
//!   (`--containerd ADDR`) so `ps` shows which containerd it belongs to.

use crate::error::TaskError;
use crate::spec::NamespacePlan;
use nix::sched::CloneFlags;
use std::process::{Command, Stdio};

/// First argument that turns the shim binary into a namespace holder.
pub const PAUSE_ARG: &str = "--hearth-pause";

/// The arguments that ask a holder for `plan`.
pub fn command_for(plan: &NamespacePlan) -> std::io::Result<Command> {
    let mut command = Command::new(std::env::current_exe()?);
    command.arg(PAUSE_ARG);
    command.args(["--shim", &std::process::id().to_string()]);
    let shim_args: Vec<String> = std::env::args().collect();
    if let Some(address) = shim_args
        .windows(2)
        .find(|pair| pair[0] == "-address")
        .map(|pair| &pair[1])
    {
        command.args(["--containerd", address]);
    }
    if let Some(path) = &plan.join_network {
        command.args(["--join-net", path]);
    }
    if plan.new_network {
        command.arg("--new-net");
    }
    if plan.new_ipc {
        command.arg("--new-ipc");
    }
    if let Some(hostname) = &plan.new_uts {
        command.args(["--new-uts", hostname]);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Ok(command)
}

/// Runs as a holder with `args` (what followed [`PAUSE_ARG`]). Never returns.
pub fn run(args: &[String]) -> ! {
    let shim = args
        .windows(2)
        .find(|pair| pair[0] == "--shim")
        .and_then(|pair| pair[1].parse::<i32>().ok())
        .map(nix::unistd::Pid::from_raw)
        .unwrap_or_else(nix::unistd::getppid);
    if let Err(error) = enter_namespaces(args) {
        eprintln!("hearth pause: {error}");
        std::process::exit(1);
    }
    loop {
        std::thread::sleep(PARENT_CHECK);
        if nix::unistd::getppid() != shim {
            // The shim is gone (killed, or crashed): so is the Pod.
            std::process::exit(0);
        }
    }
}

/// How often a holder checks that its shim is alive.
const PARENT_CHECK: std::time::Duration = std::time::Duration::from_millis(500);

fn enter_namespaces(args: &[String]) -> Result<(), String> {
    let mut args = args.iter();
    let mut new = CloneFlags::empty();
    let mut hostname = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--join-net" => {
                let path = args.next().ok_or("--join-net needs a path")?;
                let file = std::fs::File::open(path)
                    .map_err(|e| format!("cannot open network namespace {path}: {e}"))?;
                nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("cannot join network namespace {path}: {e}"))?;
            }
            "--new-net" => new |= CloneFlags::CLONE_NEWNET,
            "--new-ipc" => new |= CloneFlags::CLONE_NEWIPC,
            "--containerd" | "--shim" => {
                args.next();
            }
            "--new-uts" => {
                new |= CloneFlags::CLONE_NEWUTS;
                hostname = args.next().filter(|name| !name.is_empty());
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if !new.is_empty() {
        nix::sched::unshare(new).map_err(|e| format!("cannot create namespaces {new:?}: {e}"))?;
    }
    if let Some(hostname) = hostname {
        nix::unistd::sethostname(hostname)
            .map_err(|e| format!("cannot set hostname {hostname}: {e}"))?;
    }
    Ok(())
}

/// A holder's exit as a task exit status (128 + signal when a signal
/// ended it).
pub fn exit_code(status: std::process::ExitStatus) -> u32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u32,
        (None, Some(signal)) => 128 + signal as u32,
        _ => crate::task::LOST_EXIT_STATUS,
    }
}

/// Starts a namespace holder for `plan`; returns its pid and a future of
/// its exit.
pub fn spawn(
    plan: &crate::spec::NamespacePlan,
) -> Result<
    (
        u32,
        impl std::future::Future<Output = std::io::Result<std::process::ExitStatus>> + use<>,
    ),
    TaskError,
> {
    let command = command_for(plan)
        .map_err(|e| TaskError::Internal(format!("cannot find the shim binary: {e}")))?;
    let mut child = tokio::process::Command::from(command)
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| TaskError::Internal(format!("cannot start the sandbox holder: {e}")))?;
    let pid = child.id().unwrap_or_default();
    Ok((pid, async move { child.wait().await }))
}

/// Stops the holder `pid` (SIGKILL).
pub fn stop(pid: u32) {
    let _ = signal(pid, 9);
}

/// Sends `signal` to `pid`; a process already gone is not an error.
pub fn signal(pid: u32, signal: u32) -> Result<(), TaskError> {
    let signal = nix::sys::signal::Signal::try_from(signal as i32)
        .map_err(|_| TaskError::InvalidArgument(format!("unknown signal {signal}")))?;
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(error) => Err(TaskError::Internal(format!("cannot signal {pid}: {error}"))),
    }
}

/// The resident memory of `pid` (0 if it is gone).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}
