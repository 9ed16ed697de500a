//! `languages`: time to the first response of the same `hello` written in
//! Rust (`functions/hello`), Python (`functions/python/hello`,
//! componentize-py) and JavaScript (`functions/js/hello`, componentize-js),
//! in-process, per start state:
//!
//! * **compile**: a fresh host with empty caches loads the component
//!   (compiling it) and serves; from the load call to the first 200;
//! * **compiled-cache hit**: the compiled code is in the host's cache, no
//!   idle instance (`min_idle = 0`): the first request instantiates;
//! * **pool hit**: compiled code cached and one idle instance ready
//!   (`min_idle = 1`): the first request takes it — what a Pod start through
//!   the prewarm pool costs. Measured twice in the same run: with the
//!   engine's default, where a slot keeps the pages its last instance wrote
//!   resident for the next one (`EngineSettings::keep_resident_bytes`), and
//!   with that off (every instance faults its pages in again);
//! * **steady state**: a second request in the instance that served the
//!   first (`max_invocations = 2`, which no default does): what the
//!   language's own handler costs once nothing is cold, the floor under a
//!   pool hit.
//!
//! Prints p50 and max per cell in milliseconds, and each component's size.
//!
//! A second table loads each component as a Pod does, by image reference
//! (pushed with `hearth push` to a `docker-registry` on loopback and
//! pulled once into a host with an artifact cache), with its compiled code
//! already in memory: from the load call to the first 200, the way loads
//! went before (read the 16–19 MB component back from the artifact cache,
//! verifying it, then hash it to find the compiled code) against
//! `Host::load_image` (the compiled cache looked up by the digest the pull
//! verified; the component is not read).

use anyhow::{Result, bail};
use bytes::Bytes;
use hearth_host::distribution::{CacheSettings, PullPolicy};
use hearth_host::{EngineSettings, FunctionEnv, Host, Limits};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `hearth-bench languages` arguments.
#[derive(clap::Parser)]
pub struct LanguagesArgs {
    /// Runs of the compile case per language (each compiles from scratch).
    #[arg(long, default_value_t = 3)]
    compiles: usize,
    /// Runs of the cached and pool-hit cases per language.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// The `hearth` binary that pushes the images.
    #[arg(long, default_value = "target/release/hearth")]
    hearth: std::path::PathBuf,
}

/// Runs the benchmark and prints its table.
pub fn languages(args: LanguagesArgs) -> Result<()> {
    crate::two_worker_runtime()?.block_on(run(args))
}

fn limits() -> Limits {
    Limits::default()
}

/// How a `first_response` run loads its function.
enum Source<'a> {
    /// From bytes in memory (`Host::load`).
    Bytes(&'a [u8]),
    /// By image reference, the way loads went before `Host::load_image`
    /// looked the compiled code up by digest: the verified bytes read back
    /// from the artifact cache, then `Host::load` (which hashes them).
    ImageReadAndHash(&'a str),
    /// By image reference (`Host::load_image`).
    Image(&'a str),
}

async fn first_response(
    host: &Arc<Host>,
    name: &str,
    source: Source<'_>,
    min_idle: u32,
) -> Result<Duration> {
    Ok(responses(host, name, source, min_idle, false).await?.0)
}

/// [`first_response`]; with `second`, the instance serves a second request
/// too, and that request's time (sent to whole reply) is the second value.
async fn responses(
    host: &Arc<Host>,
    name: &str,
    source: Source<'_>,
    min_idle: u32,
    second: bool,
) -> Result<(Duration, Option<Duration>)> {
    let mut env = FunctionEnv::new(name);
    env.limits = limits();
    env.pool.min_idle = min_idle;
    if second {
        env.pool.max_invocations = 2;
    }
    let started = Instant::now();
    let function = match source {
        Source::Bytes(wasm) => host.load(env, wasm.to_vec()).await?,
        Source::ImageReadAndHash(reference) => {
            let (_, bytes) = host
                .fetch_image(name, reference, PullPolicy::Missing)
                .await?;
            host.load(env, bytes).await?
        }
        Source::Image(reference) => host.load_image(env, reference, PullPolicy::Missing).await?,
    };
    if min_idle > 0 {
        // The pool's refill runs in the background: a Pod start finds it
        // full because hearthd filled it before the Pod was scheduled.
        let pool = function.pool().expect("a service");
        while pool.stats().idle < min_idle {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(hearth_host::http::serve(function, listener, async {
        let _ = stopped.await;
    }));
    let request_started = Instant::now();
    let reply = hearth_testkit::http::send(addr, http::Method::GET, "/", &[], Bytes::new()).await?;
    let elapsed = if min_idle > 0 {
        request_started.elapsed()
    } else {
        started.elapsed()
    };
    if reply.status != http::StatusCode::OK || !reply.text().ends_with("from Hearth!\n") {
        bail!("{name}: {} {}", reply.status, reply.text());
    }
    let mut steady = None;
    if second {
        let started = Instant::now();
        let reply =
            hearth_testkit::http::send(addr, http::Method::GET, "/", &[], Bytes::new()).await?;
        steady = Some(started.elapsed());
        if reply.status != http::StatusCode::OK {
            bail!("{name}, second request: {} {}", reply.status, reply.text());
        }
    }
    let _ = stop.send(());
    let _ = server.await;
    Ok((elapsed, steady))
}

fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "{:.2} / {:.2}",
        ms(samples[samples.len() / 2]),
        ms(*samples.last().expect("samples"))
    )
}

async fn run(args: LanguagesArgs) -> Result<()> {
    let languages = [
        ("Rust", hearth_testkit::HELLO),
        ("Python", hearth_testkit::PY_HELLO),
        ("JavaScript", hearth_testkit::JS_HELLO),
    ];
    let settings = EngineSettings::for_limits([&limits()]);
    let not_resident = EngineSettings {
        keep_resident_bytes: 0,
        ..settings
    };
    println!(
        "| language | component | compile (ms, p50 / max) | compiled-cache hit, first request instantiates | pool hit, slots not kept resident | pool hit: idle instance ready | steady state: second request, same instance |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (language, path) in languages {
        let wasm = hearth_testkit::wasm_bytes(path);
        let mut compiles = Vec::new();
        for _ in 0..args.compiles {
            let host = Host::new(&settings)?;
            compiles.push(first_response(&host, "hello", Source::Bytes(&wasm), 0).await?);
        }
        let host = Host::new(&settings)?;
        first_response(&host, "warm-up", Source::Bytes(&wasm), 0).await?;
        let cold_host = Host::new(&not_resident)?;
        first_response(&cold_host, "warm-up", Source::Bytes(&wasm), 0).await?;
        let mut cached = Vec::new();
        let mut pooled = Vec::new();
        let mut pooled_cold = Vec::new();
        let mut steady = Vec::new();
        for i in 0..args.runs {
            cached.push(
                first_response(&host, &format!("cached-{i}"), Source::Bytes(&wasm), 0).await?,
            );
            pooled.push(
                first_response(&host, &format!("pooled-{i}"), Source::Bytes(&wasm), 1).await?,
            );
            pooled_cold.push(
                first_response(&cold_host, &format!("pooled-{i}"), Source::Bytes(&wasm), 1).await?,
            );
            let (_, second) =
                responses(&host, &format!("steady-{i}"), Source::Bytes(&wasm), 1, true).await?;
            steady.extend(second);
        }
        println!(
            "| {language} | {:.1} MB | {} | {} | {} | {} | {} |",
            wasm.len() as f64 / 1e6,
            summary(compiles),
            summary(cached),
            summary(pooled_cold),
            summary(pooled),
            summary(steady)
        );
    }
    println!();
    println!(
        "In-process; compile: {} runs, the others: {} runs each.",
        args.compiles, args.runs
    );
    image_loads(&args, &languages).await
}

/// The second table: loads by image reference with the compiled code in
/// memory, read-and-hash against lookup by digest.
async fn image_loads(args: &LanguagesArgs, languages: &[(&str, &str)]) -> Result<()> {
    let registry = hearth_testkit::registry::Registry::start();
    let scratch = tempfile::tempdir()?;
    let mut caches = CacheSettings::at_default_dir();
    caches.dir = scratch.path().join("cache");
    let host = Host::with_caches(&EngineSettings::for_limits([&limits()]), &caches)?;
    println!();
    println!(
        "| language | by image, compiled code in memory: read + verify + hash (before) | by image: compiled code found by the pulled digest (`load_image`) |"
    );
    println!("|---|---:|---:|");
    for (language, path) in languages {
        let reference = registry.reference(&format!("bench/{}", language.to_lowercase()), "1");
        let pushed = std::process::Command::new(&args.hearth)
            .args(["push", path, &reference])
            .env("HEARTH_CACHE_DIR", scratch.path().join("push"))
            .env("HEARTH_LOG", "warn")
            .output()?;
        if !pushed.status.success() {
            bail!(
                "{} push {path}: {}",
                args.hearth.display(),
                String::from_utf8_lossy(&pushed.stderr)
            );
        }
        // Pulled and compiled once: every run below finds both cached.
        first_response(&host, "pull", Source::Image(&reference), 0).await?;
        let mut before = Vec::new();
        let mut after = Vec::new();
        for i in 0..args.runs {
            before.push(
                first_response(
                    &host,
                    &format!("read-{i}"),
                    Source::ImageReadAndHash(&reference),
                    0,
                )
                .await?,
            );
            after.push(
                first_response(&host, &format!("image-{i}"), Source::Image(&reference), 0).await?,
            );
        }
        println!("| {language} | {} | {} |", summary(before), summary(after));
    }
    println!();
    println!(
        "From the load call to the first 200 (the first request instantiates: min_idle 0); {} runs each, p50 / max ms.",
        args.runs
    );
    Ok(())
}
