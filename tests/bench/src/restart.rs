//! `restart`: what a hearthd restart costs the Pods it serves.
//!
//! A private hearthd, registry and containerd (as the shim tests use) run
//! three Pod-network Pods of `functions/hello` through the CRI. `wrk` loads
//! each Pod (keep-alive connections, as a real client pool) for `--seconds`;
//! a third of the way in, hearthd is restarted:
//!
//! * **SIGTERM** (an upgrade, a DaemonSet rolling update): hearthd hands its
//!   Pods over and exits; a new one starts once it is gone.
//! * **SIGKILL** (a crash): a new one starts at once.
//!
//! The table counts, per case, the requests wrk completed, the non-2xx
//! answers, and wrk's socket errors (connect, read, write, timeout), summed
//! over the three Pods, with the same run without a restart as the
//! baseline. Each wrk connection that hearthd closes after its in-flight
//! request (it must, to exit) is reopened by wrk; a request wrk had already
//! written on a connection hearthd closed at that moment is a read error,
//! which HTTP/1.1 keep-alive cannot avoid (the same request on a connection
//! of its own waits in the shim's backlog instead: `tests/kube`'s restart
//! scenario counts those, and finds none lost).

use anyhow::{Context, Result, bail};
use clap::Parser;
use hearth_testkit::cri::{ContainerSpec, Cri, Network};
use hearth_testkit::node::{Node, start_hearthd, wait_until};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

#[derive(Parser)]
pub struct RestartArgs {
    /// Directory holding builds of hearthd, hearth and
    /// containerd-shim-hearth-v1 (target/release).
    #[arg(long)]
    bin_dir: PathBuf,
    /// wrk duration per case, in seconds.
    #[arg(long, default_value_t = 12)]
    seconds: u64,
    /// wrk connections per Pod.
    #[arg(long, default_value_t = 4)]
    connections: u32,
}

/// What wrk reported against one Pod.
#[derive(Default, Clone, Copy)]
struct Counts {
    requests: u64,
    non_2xx: u64,
    connect: u64,
    read: u64,
    write: u64,
    timeout: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        self.requests += other.requests;
        self.non_2xx += other.non_2xx;
        self.connect += other.connect;
        self.read += other.read;
        self.write += other.write;
        self.timeout += other.timeout;
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Restart {
    None,
    Term,
    Kill,
}

/// Runs the benchmark and prints the table.
pub fn restart(args: RestartArgs) -> Result<()> {
    let bin_dir = std::fs::canonicalize(&args.bin_dir)
        .with_context(|| format!("--bin-dir {}", args.bin_dir.display()))?;
    hearth_testkit::containerd::use_prebuilt_binaries(bin_dir);
    let runtime = tokio::runtime::Runtime::new()?;
    let _in_runtime = runtime.enter();
    let mut node = Node::start();
    let cri = runtime.block_on(Cri::connect(&node.containerd));
    let logs = node.dir.path().join("pods");
    let image = node.push(hearth_testkit::HELLO, "bench/hello");
    let mut addrs = Vec::new();
    for index in 0..3 {
        let pod = runtime
            .block_on(cri.run_pod(&format!("steady-{index}"), Network::Pod, &logs))
            .context("RunPodSandbox")?;
        let spec = ContainerSpec {
            name: "hello",
            image: &image,
            ..ContainerSpec::default()
        };
        if !runtime.block_on(cri.image_present(&image))? {
            runtime.block_on(cri.pull(&image))?;
        }
        let container = runtime.block_on(cri.create_container(&pod, &spec))?;
        runtime.block_on(cri.start_container(&container))?;
        addrs.push(SocketAddr::new(pod.ip.context("the Pod has no IP")?, 8080));
    }
    for addr in &addrs {
        wait_until("the Pod serves", || {
            runtime
                .block_on(hearth_testkit::http::get(*addr, "/"))
                .is_ok_and(|reply| reply.status == 200)
        });
    }
    let mut rows = Vec::new();
    for (label, restart) in [
        ("no restart (baseline)", Restart::None),
        ("hearthd SIGTERM, then a new hearthd", Restart::Term),
        ("hearthd SIGKILL, then a new hearthd", Restart::Kill),
    ] {
        eprintln!("case: {label}");
        let counts = one_case(&mut node, &runtime, &addrs, restart, &args)?;
        rows.push((label, counts));
    }
    println!(
        "\n## hearthd restarted under load (3 Pods of functions/hello, wrk -t1 -c{} -d{}s per Pod, restart at {} s)\n",
        args.connections,
        args.seconds,
        args.seconds / 3
    );
    println!("| case | requests | non-2xx | socket errors: connect | read | write | timeout |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (label, c) in rows {
        println!(
            "| {label} | {} | {} | {} | {} | {} | {} |",
            c.requests, c.non_2xx, c.connect, c.read, c.write, c.timeout
        );
    }
    Ok(())
}

fn one_case(
    node: &mut Node,
    runtime: &tokio::runtime::Runtime,
    addrs: &[SocketAddr],
    restart: Restart,
    args: &RestartArgs,
) -> Result<Counts> {
    let loads: Vec<_> = addrs
        .iter()
        .map(|addr| {
            Command::new("wrk")
                .args(["-t1", "--timeout", "10s"])
                .arg(format!("-c{}", args.connections))
                .arg(format!("-d{}s", args.seconds))
                .arg(format!("http://{addr}/"))
                .stdout(std::process::Stdio::piped())
                .spawn()
                .context("cannot run wrk (apt-get install wrk)")
        })
        .collect::<Result<_>>()?;
    std::thread::sleep(Duration::from_secs(args.seconds / 3));
    let dir = node.dir.path().to_path_buf();
    let socket = node.socket.clone();
    match restart {
        Restart::None => {}
        Restart::Term => {
            let status = node.hearthd.terminate();
            if !status.success() {
                bail!("hearthd exited with {status} on SIGTERM");
            }
            node.hearthd = start_hearthd(&dir, &socket);
        }
        Restart::Kill => {
            node.hearthd.kill();
            node.hearthd = start_hearthd(&dir, &socket);
        }
    }
    let mut total = Counts::default();
    for load in loads {
        let output = load.wait_with_output()?;
        total += parse_wrk(&String::from_utf8_lossy(&output.stdout))?;
    }
    if restart != Restart::None {
        wait_until("every Pod is back in hearthd", || {
            runtime.block_on(node.hearthd_functions()) == addrs.len()
        });
    }
    Ok(total)
}

fn parse_wrk(text: &str) -> Result<Counts> {
    let mut counts = Counts::default();
    for line in text.lines().map(str::trim) {
        // "123456 requests in 12.00s, 10.00MB read"
        if let Some((requests, _)) = line.split_once(" requests in ") {
            counts.requests = requests.trim().parse().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            counts.non_2xx = rest.trim().parse().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 3, write 0, timeout 0"
            for part in rest.split(',') {
                let mut words = part.split_whitespace();
                let (Some(kind), Some(n)) = (words.next(), words.next()) else {
                    continue;
                };
                let n: u64 = n.parse().unwrap_or(0);
                match kind {
                    "connect" => counts.connect = n,
                    "read" => counts.read = n,
                    "write" => counts.write = n,
                    "timeout" => counts.timeout = n,
                    _ => {}
                }
            }
        }
    }
    if counts.requests == 0 {
        bail!("unexpected wrk output:\n{text}");
    }
    Ok(counts)
}
