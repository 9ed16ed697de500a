//! `p3`: WASI 0.3 services in Hearth, against WASI 0.2 in Hearth and
//! against `wasmtime serve` (the peer) on the same component.
//!
//! 1. **Throughput**: `wrk` against `hello` (WASI 0.2, a fresh instance per
//!    request) and `hello-p3` (WASI 0.3) served by `hearth run`, and
//!    `hello-p3` served by `wasmtime serve` with its defaults for a WASI 0.3
//!    component, one server after the other.
//! 2. **Memory per request in flight**: `--in-flight` requests held open at
//!    once (each sends its headers and the first KiB of a 1 MiB body, then
//!    waits), against `echo` (WASI 0.2: an instance each) and `echo-p3`
//!    (WASI 0.3: up to `instance_concurrency` per instance). The RSS and PSS of the `hearth run`
//!    process with the requests in flight, less before, divided by their
//!    number.

use crate::{Server, free_port, process_memory};
use anyhow::{Context, Result, bail};
use clap::Parser;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

#[derive(Parser)]
pub struct P3Args {
    /// The `hearth` binary to measure (build it with --release).
    #[arg(long)]
    hearth: PathBuf,
    /// The peer: a `wasmtime` binary of the pinned version. Without it the
    /// peer row is skipped with a note.
    #[arg(long)]
    wasmtime: Option<PathBuf>,
    /// wrk duration per server, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// wrk connections.
    #[arg(long, default_value_t = 16)]
    connections: u32,
    /// Requests held in flight for the memory rows.
    #[arg(long, default_value_t = 128)]
    in_flight: usize,
}

pub fn p3(args: P3Args) -> Result<()> {
    println!(
        "## HTTP throughput of hello, WASI 0.2 and 0.3 (wrk -t2 -c{} -d{}s)\n",
        args.connections, args.seconds
    );
    println!("| server | component | instances | requests/s | p50 latency | p99 latency |");
    println!("|---|---|---|---:|---:|---:|");
    let hearth_row = |wasm: &str, extra: &[&str]| -> Result<String> {
        let port = free_port()?;
        let server = Server::start(
            Command::new(&args.hearth)
                .args(["run", wasm, "--listen"])
                .arg(format!("127.0.0.1:{port}"))
                .args(extra),
            port,
        )?;
        let row = crate::wrk_row(port, args.connections, args.seconds)?;
        drop(server);
        Ok(row)
    };
    let row = hearth_row(hearth_testkit::HELLO, &[])?;
    println!("| hearth run | hello (WASI 0.2) | fresh per request | {row} |");
    let row = hearth_row(hearth_testkit::HELLO_P3, &[])?;
    println!(
        "| hearth run | hello-p3 (WASI 0.3) | up to 16 requests at once, 16 in its life (defaults) | {row} |"
    );
    let row = hearth_row(hearth_testkit::HELLO_P3, &["--max-invocations", "128"])?;
    println!(
        "| hearth run --max-invocations 128 | hello-p3 (WASI 0.3) | up to 16 at once, 128 in its life | {row} |"
    );
    match &args.wasmtime {
        Some(wasmtime) => {
            let port = free_port()?;
            let peer = Server::start(
                Command::new(wasmtime)
                    .args(["serve", "-S", "cli", "--addr"])
                    .arg(format!("127.0.0.1:{port}"))
                    .arg(hearth_testkit::HELLO_P3),
                port,
            )?;
            let version = Command::new(wasmtime).arg("--version").output()?;
            let row = crate::wrk_row(port, args.connections, args.seconds)?;
            drop(peer);
            println!(
                "| {} serve -S cli | hello-p3 (WASI 0.3) | its defaults | {row} |",
                String::from_utf8_lossy(&version.stdout).trim()
            );
        }
        None => println!("\n(peer skipped: pass --wasmtime PATH to measure `wasmtime serve`)"),
    }

    println!(
        "\n## Memory per request in flight: {} requests held open at once, echo (WASI 0.2) and echo-p3 (WASI 0.3), `hearth run`\n",
        args.in_flight
    );
    println!(
        "| component | requests per instance at most | RSS before MiB | RSS with them MiB | RSS KiB/request | PSS KiB/request |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let p2 = in_flight_memory(&args, hearth_testkit::ECHO)?;
    println!("| echo (WASI 0.2) | 1 | {} |", p2.row(args.in_flight));
    let p3 = in_flight_memory(&args, hearth_testkit::ECHO_P3)?;
    println!("| echo-p3 (WASI 0.3) | 16 | {} |", p3.row(args.in_flight));
    println!(
        "\nWASI 0.2 uses {:.1}× the RSS and {:.1}× the PSS per request in flight of WASI 0.3.",
        p2.rss_per_request(args.in_flight) / p3.rss_per_request(args.in_flight).max(1.0),
        p2.pss_per_request(args.in_flight) / p3.pss_per_request(args.in_flight).max(1.0),
    );
    Ok(())
}

/// Memory of the server before and with the requests in flight, bytes.
struct Held {
    before: (u64, u64),
    with: (u64, u64),
}

impl Held {
    fn rss_per_request(&self, n: usize) -> f64 {
        self.with.0.saturating_sub(self.before.0) as f64 / n as f64
    }

    fn pss_per_request(&self, n: usize) -> f64 {
        self.with.1.saturating_sub(self.before.1) as f64 / n as f64
    }

    fn row(&self, n: usize) -> String {
        const MIB: f64 = 1024.0 * 1024.0;
        format!(
            "{:.1} | {:.1} | {:.0} | {:.0}",
            self.before.0 as f64 / MIB,
            self.with.0 as f64 / MIB,
            self.rss_per_request(n) / 1024.0,
            self.pss_per_request(n) / 1024.0
        )
    }
}

/// Serves `wasm` with `hearth run`, holds `--in-flight` requests open on
/// it, and measures its memory before and with them.
fn in_flight_memory(args: &P3Args, wasm: &str) -> Result<Held> {
    let port = free_port()?;
    let slots = (args.in_flight + 16).to_string();
    let server = Server::start(
        Command::new(&args.hearth)
            .args(["run", wasm, "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["--max-concurrent-instances", &slots])
            .args(["--max-request-body-bytes", "2097152"]),
        port,
    )?;
    // One whole request first, so the compiled code and the runtime are
    // resident in both measurements.
    let mut warm = start_request(port)?;
    warm.write_all(&vec![b'x'; (1 << 20) - 1024])?;
    let mut answer = Vec::new();
    warm.read_to_end(&mut answer)?;
    if !answer.starts_with(b"HTTP/1.1 200") {
        bail!(
            "{wasm}: warm-up request failed: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    let pid = server.pid();
    let before = process_memory(pid);
    let held: Vec<TcpStream> = (0..args.in_flight)
        .map(|_| start_request(port))
        .collect::<Result<_>>()?;
    // Every request has its instance (or its place on one) as soon as its
    // headers are in; the first KiB of its body is being echoed.
    std::thread::sleep(Duration::from_secs(3));
    let with = process_memory(pid);
    drop(held);
    drop(server);
    Ok(Held { before, with })
}

/// A request with a 1 MiB body of which only the first KiB is sent.
fn start_request(port: u16) -> Result<TcpStream> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).context("connect")?;
    stream.write_all(
        format!(
            "POST / HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            1 << 20
        )
        .as_bytes(),
    )?;
    stream.write_all(&[b'x'; 1024])?;
    Ok(stream)
}
