//! `hearth-bench`: Hearth's benchmarks. Each prints a markdown table.
//!
//! ```text
//! scripts/bench-host.sh            # installs the peer and wrk, then runs:
//! hearth-bench host --hearth target/release/hearth --wasmtime PATH/TO/wasmtime
//! scripts/bench-oci.sh             # hearth-bench oci --hearth target/release/hearth
//! scripts/bench-pods.sh            # hearth-bench pods --bin-dir target/release [--runwasi PATH]
//! scripts/bench-cold-start.sh      # hearth-bench cold-start --bin-dir target/release --chart benchmarks/cold-start.svg [--runwasi PATH]
//! scripts/bench-capabilities.sh    # hearth-bench capabilities [--redis-url URL]
//! scripts/bench-languages.sh       # hearth-bench languages
//! scripts/bench-restart.sh         # hearth-bench restart --bin-dir target/release
//! scripts/bench-p3.sh              # hearth-bench p3 --hearth target/release/hearth --wasmtime PATH/TO/wasmtime
//! ```
//!
//! `p3`: WASI 0.3 services against WASI 0.2 in Hearth and against
//! `wasmtime serve`: throughput, and memory per request in flight. See
//! [`p3`].
//!
//! `restart` (needs root, containerd, docker-registry, skopeo, wrk):
//! requests lost when hearthd restarts under load. See [`restart`].
//!
//! `languages`: time to the first response of the same `hello` in Rust,
//! Python and JavaScript, from a compile, a compiled-cache hit and a pool
//! hit. See [`languages`].
//!
//! `capabilities` (needs redis-server): a state get/set as a host call vs
//! through a Dapr-style sidecar, on the embedded backend and Redis; invoke
//! local fast path vs HTTP. See [`capabilities`].
//!
//! `cold-start` (needs root, containerd, docker-registry, skopeo,
//! busybox-static): see [`cold_start`].
//!
//! `pods` (needs root, containerd, docker-registry, skopeo, busybox-static
//! for the pause image runwasi runs) starts a private
//! hearthd, registry and containerd as the shim tests do, runs N idle
//! Pod-network Pods of `functions/hello` through the CRI with the `hearth`
//! handler (and, with `--runwasi PATH`, runwasi's `wasmtime` handler on a
//! fresh node), and reports memory per Pod (the RSS and PSS of every process
//! running the runtime's shim binary, plus, for Hearth, hearthd's RSS growth
//! over the baseline, divided by N) and Pods started per second.
//!
//! `oci` measures the time from starting `hearth run <reference>` to the
//! first HTTP 200 of `hello`, served from a real `docker-registry` on
//! loopback, in three cache states: both caches empty (pull + compile),
//! artifact cached but compiled cache empty, and both cached.
//!
//! `host` measures, in one run:
//! 1. instantiation: time from `InstancePre` to a ready instance of
//!    `functions/hello`, pooling allocator against on-demand allocation,
//!    and a checkout from the prewarm pool (see [`pool_checkout`]);
//! 2. HTTP throughput of `hello` under `wrk`, for `hearth run` and for
//!    `wasmtime serve` (the peer) on the same component, one after the other,
//!    each with a fresh instance per request.

mod blob;
mod capabilities;
mod cold_start;
mod languages;
mod messaging;
mod p3;
mod restart;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use hearth_host::{Allocation, EngineSettings, FunctionEnv, Host, Limits};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "hearth-bench", about = "Hearth benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Instantiation latency and HTTP throughput against `wasmtime serve`.
    Host(HostArgs),
    /// Time from `hearth run <reference>` to the first 200, per cache state.
    Oci(OciArgs),
    /// Memory per idle Pod through containerd's CRI.
    Pods(PodsArgs),
    /// Pod cold start through the CRI: Hearth per cache state, runwasi, runc.
    ColdStart(cold_start::ColdStartArgs),
    /// A capability call as a host call vs a sidecar hop; invoke local vs HTTP.
    Capabilities(capabilities::CapabilitiesArgs),
    /// Time to first response of `hello` in Rust, Python and JavaScript.
    Languages(languages::LanguagesArgs),
    /// Publish → handler start, throughput and redelivery, embedded and NATS.
    Messaging(messaging::MessagingArgs),
    /// Blob storage per backend and size; CPU per GB; copies per byte read.
    Blob(blob::BlobArgs),
    /// Requests lost when hearthd restarts under load (SIGTERM, SIGKILL).
    Restart(restart::RestartArgs),
    /// WASI 0.3 against 0.2 and `wasmtime serve`: throughput, memory per
    /// request in flight.
    P3(p3::P3Args),
}

#[derive(Parser)]
struct PodsArgs {
    /// Directory holding release builds of hearthd, hearth and
    /// containerd-shim-hearth-v1.
    #[arg(long)]
    bin_dir: PathBuf,
    /// Pod counts to measure, each from a fresh node.
    #[arg(long, value_delimiter = ',', default_values_t = [50, 100, 200])]
    pods: Vec<usize>,
    /// runwasi's `containerd-shim-wasmtime-v1` (built outside this
    /// repository), measured the same way; skipped with a note without it.
    #[arg(long)]
    runwasi: Option<PathBuf>,
    /// An earlier build of `containerd-shim-hearth-v1`, measured the same
    /// way (CRI handler `hearth-before`, the same hearthd) before the
    /// current one, for a before/after comparison in one run.
    #[arg(long)]
    shim_before: Option<PathBuf>,
}

#[derive(Parser)]
struct OciArgs {
    /// The `hearth` binary to measure (build it with --release).
    #[arg(long)]
    hearth: PathBuf,
    /// Runs per cache state.
    #[arg(long, default_value_t = 10)]
    runs: usize,
}

#[derive(Parser)]
struct HostArgs {
    /// The `hearth` binary to measure (build it with --release).
    #[arg(long)]
    hearth: PathBuf,
    /// The peer: a `wasmtime` binary of the pinned version. Without it the
    /// peer row is skipped with a note.
    #[arg(long)]
    wasmtime: Option<PathBuf>,
    /// Instantiations measured per allocator.
    #[arg(long, default_value_t = 20_000)]
    instances: usize,
    /// wrk duration per server, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// wrk connections.
    #[arg(long, default_value_t = 16)]
    connections: u32,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Bench::Host(args) => host(args),
        Bench::Oci(args) => oci(args),
        Bench::Pods(args) => pods(args),
        Bench::ColdStart(args) => cold_start::cold_start(args),
        Bench::Capabilities(args) => capabilities::capabilities(args),
        Bench::Languages(args) => languages::languages(args),
        Bench::Messaging(args) => messaging::messaging(args),
        Bench::Blob(args) => blob::blob(args),
        Bench::Restart(args) => restart::restart(args),
        Bench::P3(args) => p3::p3(args),
    }
}

/// A tokio runtime with two workers, as hearthd runs on a 2-core node.
fn two_worker_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// Memory of one process: (RSS, PSS) in bytes.
fn process_memory(pid: u32) -> (u64, u64) {
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
            .unwrap_or(0)
    };
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    (field(&rollup, "Rss:"), field(&rollup, "Pss:"))
}

/// The bench's one container per Pod: `functions/hello` from `image`.
fn hello_container(image: &str) -> hearth_testkit::cri::ContainerSpec<'_> {
    hearth_testkit::cri::ContainerSpec {
        name: "hello",
        image,
        ..Default::default()
    }
}

/// A runtime measured by `pods`: its CRI handler and how its Pod processes
/// are recognised (their command line names this binary).
struct PodRuntime {
    label: String,
    handler: &'static str,
    shim_binary: &'static str,
    extra_runtimes: Vec<(String, PathBuf)>,
}

fn pods(args: PodsArgs) -> Result<()> {
    use hearth_testkit::containerd::processes_matching;
    use hearth_testkit::cri::{Cri, Network, PodOptions};
    let bin_dir = std::fs::canonicalize(&args.bin_dir)
        .with_context(|| format!("--bin-dir {}", args.bin_dir.display()))?;
    hearth_testkit::containerd::use_prebuilt_binaries(bin_dir);
    let mut runtimes = Vec::new();
    if let Some(before) = &args.shim_before {
        let before = std::fs::canonicalize(before)
            .with_context(|| format!("--shim-before {}", before.display()))?;
        runtimes.push(PodRuntime {
            label: format!("hearth before ({})", before.display()),
            handler: "hearth-before",
            shim_binary: "containerd-shim-hearth-v1",
            extra_runtimes: vec![("hearth-before".into(), before)],
        });
    }
    runtimes.push(PodRuntime {
        label: "hearth".into(),
        handler: hearth_testkit::cri::HEARTH_HANDLER,
        shim_binary: "containerd-shim-hearth-v1",
        extra_runtimes: Vec::new(),
    });
    match &args.runwasi {
        Some(runwasi) => runtimes.push(PodRuntime {
            label: "runwasi (containerd-shim-wasmtime-v1)".into(),
            handler: "wasmtime",
            shim_binary: "containerd-shim-wasmtime-v1",
            extra_runtimes: vec![(
                "wasmtime".into(),
                std::fs::canonicalize(runwasi)
                    .with_context(|| format!("--runwasi {}", runwasi.display()))?,
            )],
        }),
        None => eprintln!("note: no --runwasi given; runwasi is skipped"),
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let _in_runtime = runtime.enter();
    let mib = |bytes: f64| bytes / (1024.0 * 1024.0);
    let mut rows = Vec::new();
    for pod_runtime in &runtimes {
        for &count in &args.pods {
            eprintln!("{}: {count} Pods", pod_runtime.label);
            // runwasi runs the sandbox's pause process itself, so the
            // pause image must run: busybox sleeping (Hearth's shim holds
            // the namespaces itself and never runs it).
            let node = hearth_testkit::node::Node::start_with(hearth_testkit::node::NodeOptions {
                pause_image: Some(hearth_testkit::node::busybox_pause_image()),
                extra_runtimes: pod_runtime.extra_runtimes.clone(),
            });
            let cri = runtime.block_on(Cri::connect(&node.containerd));
            let image = node.push(hearth_testkit::HELLO, "bench/hello");
            let logs = node.dir.path().join("pods");
            runtime.block_on(cri.pull(&image))?;
            let options = PodOptions {
                handler: pod_runtime.handler,
                ..PodOptions::default()
            };
            // A warm-up Pod loads and compiles the component once: a
            // per-node cost, not a per-Pod one, so it is in the baseline.
            let warm =
                runtime.block_on(cri.run_pod_with("warm-up", Network::Pod, &logs, &options))?;
            runtime.block_on(cri.run_container(&warm, &hello_container(&image)))?;
            runtime.block_on(cri.remove_pod(&warm))?;
            std::thread::sleep(Duration::from_secs(2));
            let (hearthd_before, _) = process_memory(node.hearthd.pid());

            let started = Instant::now();
            let mut starting = tokio::task::JoinSet::new();
            let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
            for index in 0..count {
                let (cri, logs, image, gate) =
                    (cri.clone(), logs.clone(), image.clone(), gate.clone());
                let handler = pod_runtime.handler;
                starting.spawn(async move {
                    let _permit = gate.acquire().await;
                    let options = PodOptions {
                        handler,
                        ..PodOptions::default()
                    };
                    let pod = cri
                        .run_pod_with(&format!("idle-{index}"), Network::Pod, &logs, &options)
                        .await?;
                    cri.run_container(&pod, &hello_container(&image)).await?;
                    Ok::<_, tonic::Status>(pod)
                });
            }
            let pods = runtime
                .block_on(starting.join_all())
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?;
            let start_seconds = started.elapsed().as_secs_f64();
            for pod in &pods {
                let addr = std::net::SocketAddr::new(pod.ip.context("a Pod IP")?, 8080);
                let mut answered = None;
                for _ in 0..200 {
                    match runtime.block_on(hearth_testkit::http::get(addr, "/")) {
                        Ok(reply) => {
                            answered = Some(reply.status.as_u16());
                            break;
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
                if answered != Some(200) {
                    bail!("Pod at {addr} answered {answered:?}");
                }
            }
            // Idle: every Pod has served once; let allocators settle.
            std::thread::sleep(Duration::from_secs(3));
            let (hearthd_after, _) = process_memory(node.hearthd.pid());
            let address = node.containerd.address();
            let pod_processes =
                processes_matching(pod_runtime.shim_binary, &address.to_string_lossy());
            let (rss, pss) = pod_processes
                .iter()
                .map(|pid| process_memory(*pid))
                .fold((0, 0), |(rss, pss), (r, p)| (rss + r, pss + p));
            let per_pod = |bytes: u64| mib(bytes as f64 / count as f64);
            // Only Hearth's Pods live partly in hearthd.
            let daemon_delta = if pod_runtime.handler.starts_with("hearth") {
                hearthd_after.saturating_sub(hearthd_before)
            } else {
                0
            };
            rows.push(format!(
                "| {} | {count} | {} | {:.2} / {:.2} | {:.2} | **{:.2}** | **{:.2}** | {:.1} |",
                pod_runtime.label,
                pod_processes.len(),
                per_pod(rss),
                per_pod(pss),
                per_pod(daemon_delta),
                per_pod(rss + daemon_delta),
                per_pod(pss + daemon_delta),
                count as f64 / start_seconds,
            ));
            runtime.block_on(cri.remove_pods(pods))?;
        }
    }
    println!(
        "## Memory per idle Pod and Pods started per second (functions/hello, Pod network, CRI)\n"
    );
    println!(
        "Per Pod = (RSS of the Pod's processes: every process running the runtime's shim binary, for Hearth its shim (which is the sandbox task too; builds before issue 26 also ran a namespace holder) + hearthd's RSS growth over a node with no Pods) / Pods. PSS splits pages shared between processes (same binary) among them. Pods are started 16 at a time.\n"
    );
    println!(
        "| runtime | Pods | Pod processes | Pod processes RSS / PSS MiB/Pod | daemon RSS delta MiB/Pod | total RSS MiB/Pod | total PSS MiB/Pod | Pods started/s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        println!("{row}");
    }
    Ok(())
}

fn host(args: HostArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "## Instantiation of functions/hello from InstancePre ({} each)\n",
        args.instances
    );
    println!("| allocator | p50 µs | p99 µs | mean µs |");
    println!("|---|---:|---:|---:|");
    for allocation in [Allocation::Pooling, Allocation::OnDemand] {
        let samples = runtime.block_on(instantiation(allocation, args.instances))?;
        let (p50, p99, mean) = summarize(samples);
        println!("| {allocation:?} | {p50:.1} | {p99:.1} | {mean:.1} |");
    }
    let (samples, misses) = runtime.block_on(pool_checkout(args.instances, None))?;
    let (p50, p99, mean) = summarize(samples);
    println!(
        "| Pooling, from the prewarm pool (checkout in bursts of 48 against a warm pool; {misses} misses) | {p50:.1} | {p99:.1} | {mean:.1} |"
    );
    let isolated = (args.instances / 10).max(100);
    let (samples, misses) =
        runtime.block_on(pool_checkout(isolated, Some(Duration::from_millis(1))))?;
    let (p50, p99, mean) = summarize(samples);
    println!(
        "| Pooling, from the prewarm pool (isolated: each checkout after a 1 ms pause, {isolated} samples; {misses} misses) | {p50:.1} | {p99:.1} | {mean:.1} |"
    );

    println!(
        "\n## HTTP throughput of functions/hello (wrk -t2 -c{} -d{}s, fresh instance per request)\n",
        args.connections, args.seconds
    );
    println!("| server | requests/s | p50 latency | p99 latency |");
    println!("|---|---:|---:|---:|");
    let hello = hearth_testkit::HELLO;
    // The slot reset as before (pages handed back to the kernel) and as it
    // is by default (written pages kept resident for the next instance).
    for (label, keep_resident) in [
        ("hearth run --keep-resident-bytes 0", Some("0")),
        ("hearth run", None),
    ] {
        let port = free_port()?;
        let mut command = Command::new(&args.hearth);
        command
            .args(["run", hello, "--listen"])
            .arg(format!("127.0.0.1:{port}"));
        if let Some(bytes) = keep_resident {
            command.args(["--keep-resident-bytes", bytes]);
        }
        let hearth = Server::start(&mut command, port)?;
        let row = wrk(port, &args)?;
        drop(hearth);
        println!("| {label} | {row} |");
    }
    match &args.wasmtime {
        Some(wasmtime) => {
            let version = Command::new(wasmtime).arg("--version").output()?;
            let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
            // As it comes, and tuned as Hearth's engine is by default.
            let tuned = format!(
                "pooling-allocator=y,pooling-memory-keep-resident={keep},pooling-table-keep-resident={table},pooling-pagemap-scan=auto",
                keep = hearth_host::engine::DEFAULT_KEEP_RESIDENT_BYTES,
                table = hearth_host::engine::table_keep_resident_bytes(
                    hearth_host::engine::DEFAULT_KEEP_RESIDENT_BYTES
                )
            );
            for optimize in [None, Some(tuned.as_str())] {
                let port = free_port()?;
                let mut command = Command::new(wasmtime);
                command.args(["serve", "-S", "cli", "--max-instance-reuse-count", "1"]);
                if let Some(options) = optimize {
                    command.args(["-O", options]);
                }
                command
                    .arg("--addr")
                    .arg(format!("127.0.0.1:{port}"))
                    .arg(hello);
                let peer = Server::start(&mut command, port)?;
                let row = wrk(port, &args)?;
                drop(peer);
                match optimize {
                    None => println!("| {version} serve | {row} |"),
                    Some(options) => println!("| {version} serve -O {options} | {row} |"),
                }
            }
        }
        None => println!("\n(peer skipped: pass --wasmtime PATH to measure `wasmtime serve`)"),
    }
    Ok(())
}

/// The three cache states of the `oci` bench.
#[derive(Clone, Copy, Debug)]
enum CacheState {
    Empty,
    ArtifactOnly,
    Both,
}

fn oci(args: OciArgs) -> Result<()> {
    let registry = hearth_testkit::registry::Registry::start();
    let reference = registry.reference("bench/hello", "1");
    let scratch = tempfile::tempdir()?;
    let docker_config = scratch.path().join("docker");
    std::fs::create_dir_all(&docker_config)?;
    let hearth = |cache: &std::path::Path| {
        let mut command = Command::new(&args.hearth);
        command
            .env("HEARTH_CACHE_DIR", cache)
            .env("DOCKER_CONFIG", &docker_config)
            .env("HEARTH_LOG", "warn");
        command
    };
    let pushed = hearth(&scratch.path().join("push"))
        .args(["push", hearth_testkit::HELLO, &reference])
        .output()?;
    if !pushed.status.success() {
        bail!("push failed: {}", String::from_utf8_lossy(&pushed.stderr));
    }
    println!(
        "## `hearth run <reference>` to first HTTP 200 of functions/hello ({} runs per state)\n",
        args.runs
    );
    println!("Registry: docker-registry on loopback. Each run is a new `hearth` process.\n");
    println!("| cache state | listening: median ms | first 200: median ms | first 200: max ms |");
    println!("|---|---:|---:|---:|");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for state in [
        CacheState::Empty,
        CacheState::ArtifactOnly,
        CacheState::Both,
    ] {
        let mut samples = Vec::new();
        let mut listening = Vec::new();
        let warm_cache = scratch.path().join(format!("{state:?}"));
        if !matches!(state, CacheState::Empty) {
            // Fill the caches once; each run below starts from this state.
            let output = hearth(&warm_cache).args(["pull", &reference]).output()?;
            if !output.status.success() {
                bail!(
                    "pre-pull failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
        for run in 0..args.runs {
            let cache = match state {
                CacheState::Empty => scratch.path().join(format!("empty-{run}")),
                CacheState::ArtifactOnly => {
                    let compiled = warm_cache.join("compiled");
                    if compiled.exists() {
                        std::fs::remove_dir_all(&compiled)?;
                    }
                    warm_cache.clone()
                }
                CacheState::Both => warm_cache.clone(),
            };
            let port = free_port()?;
            let started = Instant::now();
            let mut child = hearth(&cache)
                .args(["run", &reference, "--listen"])
                .arg(format!("127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let outcome = runtime.block_on(async {
                let mut listening_at = None;
                loop {
                    if listening_at.is_none() && tokio::net::TcpStream::connect(addr).await.is_ok()
                    {
                        listening_at = Some(started.elapsed());
                    }
                    if let Ok(reply) = hearth_testkit::http::get(addr, "/").await
                        && reply.status == 200
                    {
                        let done = started.elapsed();
                        return Ok((listening_at.unwrap_or(done), done));
                    }
                    if started.elapsed() > Duration::from_secs(60) {
                        bail!("no 200 within 60 s");
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            });
            let _ = child.kill();
            let _ = child.wait();
            let (listen_time, first_ok) = outcome?;
            listening.push(listen_time);
            samples.push(first_ok);
        }
        samples.sort();
        listening.sort();
        let listening_median = listening[listening.len() / 2].as_secs_f64() * 1e3;
        let median = samples[samples.len() / 2].as_secs_f64() * 1e3;
        let max = samples[samples.len() - 1].as_secs_f64() * 1e3;
        let label = match state {
            CacheState::Empty => "both empty (pull + compile)",
            CacheState::ArtifactOnly => "artifact cached, compiled empty (compile)",
            CacheState::Both => "both cached",
        };
        println!("| {label} | {listening_median:.1} | {median:.1} | {max:.1} |");
    }
    Ok(())
}

async fn instantiation(allocation: Allocation, count: usize) -> Result<Vec<Duration>> {
    let limits = Limits::default();
    let mut settings = EngineSettings::for_limits([&limits]);
    settings.allocation = allocation;
    let host = Host::new(&settings)?;
    let function = host
        .load(
            FunctionEnv::new("hello"),
            hearth_testkit::wasm_bytes(hearth_testkit::HELLO),
        )
        .await?;
    let pre = &function.compiled().instance_pre;
    let mut samples = Vec::with_capacity(count);
    for i in 0..count + count / 10 {
        let mut store = function.new_store(Some(limits.request_timeout()));
        let started = Instant::now();
        let instance = pre.instantiate_async(&mut store).await?;
        let elapsed = started.elapsed();
        std::hint::black_box(instance);
        drop(store);
        // The first tenth warms caches and the pool's slots.
        if i >= count / 10 {
            samples.push(elapsed);
        }
    }
    Ok(samples)
}

/// Time to get an instance ready to serve out of a warm pool:
/// `Function::begin`, which takes a concurrency slot, pops an idle
/// instance, arms its deadline and sets the request context (the start of
/// every trigger's invocation). Refills happen untimed between samples.
/// Instance ready from the prewarm pool, as a request handler sees it:
/// bursts of back-to-back checkouts (each served and finished, so retired
/// and refilled in the background as in hearthd) against a pool holding
/// `POOL_BURST` idle instances, refilled between bursts. The first burst is
/// a warm-up. With `pause`, each checkout follows a sleep of that long
/// (the worker parked, its caches cold: what a request arriving at an idle
/// node sees). Returns the samples and the pool's misses (a burst that
/// outruns the refill pays a miss; these are in the samples).
async fn pool_checkout(count: usize, pause: Option<Duration>) -> Result<(Vec<Duration>, u64)> {
    const POOL_BURST: usize = 48;
    let limits = Limits::default();
    let host = Host::new(&EngineSettings::for_limits([&limits]))?;
    let mut env = FunctionEnv::new("hello");
    env.pool.min_idle = POOL_BURST as u32;
    let function = host
        .load(env, hearth_testkit::wasm_bytes(hearth_testkit::HELLO))
        .await?;
    let pool = function.pool().context("hello is a service")?;
    let mut samples = Vec::with_capacity(count);
    let mut misses_in_warm_up = 0;
    for burst in 0..=count.div_ceil(POOL_BURST) {
        pool.wait_warm().await;
        for _ in 0..POOL_BURST {
            if let Some(pause) = pause {
                tokio::time::sleep(pause).await;
            }
            let started = Instant::now();
            let invocation = function
                .begin(Some(limits.request_timeout()), Default::default())
                .await?;
            let elapsed = started.elapsed();
            invocation.finish(Ok(())).await?;
            if burst > 0 && samples.len() < count {
                samples.push(elapsed);
            }
        }
        if burst == 0 {
            misses_in_warm_up = pool.stats().misses;
        }
    }
    Ok((samples, pool.stats().misses - misses_in_warm_up))
}

/// This process's or `pid`'s user+system CPU time.
pub(crate) fn cpu_time(pid: Option<u32>) -> Result<Duration> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".into(),
    };
    let stat = std::fs::read_to_string(&path).with_context(|| path.clone())?;
    let after_name = &stat[stat.rfind(')').context("stat format")? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), counted from the state (field 3).
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    let hz = 100.0; // USER_HZ on Linux
    Ok(Duration::from_secs_f64(ticks as f64 / hz))
}

fn summarize(mut samples: Vec<Duration>) -> (f64, f64, f64) {
    samples.sort();
    let at =
        |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e6;
    let mean = samples.iter().map(|d| d.as_secs_f64()).sum::<f64>() / samples.len() as f64 * 1e6;
    (at(0.50), at(0.99), mean)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A server process, killed when dropped.
struct Server(Child);

impl Server {
    fn start(command: &mut Command, port: u16) -> Result<Self> {
        let child = command
            .env("HEARTH_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {command:?}"))?;
        let server = Server(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > Duration::from_secs(60) {
                bail!("{command:?} did not listen on port {port}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }
}

impl Server {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs wrk against `port` with the `host` bench's settings.
fn wrk(port: u16, args: &HostArgs) -> Result<String> {
    wrk_row(port, args.connections, args.seconds)
}

/// Runs wrk against `port`; returns "requests/s | p50 | p99".
fn wrk_row(port: u16, connections: u32, seconds: u32) -> Result<String> {
    let output = Command::new("wrk")
        .args(["-t2", "--latency"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .context("cannot run wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_string()))
    };
    let rps = field("Requests/sec:").with_context(|| format!("unexpected wrk output:\n{text}"))?;
    if let Some(errors) = field("Non-2xx or 3xx responses:") {
        bail!("{errors} non-2xx responses on port {port}:\n{text}");
    }
    Ok(format!(
        "{rps} | {} | {}",
        field("50%").unwrap_or_default(),
        field("99%").unwrap_or_default()
    ))
}
