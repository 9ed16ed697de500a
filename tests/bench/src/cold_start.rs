//! `hearth-bench cold-start`: Pod cold start through containerd's CRI, the
//! way kubelet starts a Pod, for Hearth in three cache states and for the
//! peers on the same node in the same run.
//!
//! Each run: RunPodSandbox (plus PodSandboxStatus for the IP), ImageStatus
//! and, if the image is absent, PullImage (kubelet's `IfNotPresent`),
//! CreateContainer, StartContainer, then TCP connects to podIP:8080 every
//! millisecond until one succeeds (listener ready), then GET / until a 200
//! (first response). The clock starts before RunPodSandbox. The Pod is then
//! removed, untimed. Scenarios:
//!
//! 1. `hearth hit`: the function compiled in hearthd's memory and the Pod
//!    annotated `hearth.dev/min-idle: 1`, so its first request takes an
//!    instance made ahead of time;
//! 2. `hearth miss`: the image in containerd, hearthd restarted with its
//!    compiled caches (memory and disk) empty before every run: a compile;
//! 3. `hearth nothing cached`: also the image removed from containerd: a
//!    registry pull plus a compile;
//! 4. `runwasi`: containerd-shim-wasmtime-v1 (the path given), same image,
//!    after one untimed warm-up run;
//! 5. `runc`: a static busybox `httpd` image (built here), after one
//!    untimed warm-up run.

use anyhow::{Context, Result, bail};
use hearth_testkit::cri::{ContainerSpec, Cri, Network, Pod, PodOptions};
use hearth_testkit::node::{BUSYBOX, Node, NodeOptions, busybox_pause_image, linux_image};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Arguments of `hearth-bench cold-start`.
#[derive(clap::Parser)]
pub struct ColdStartArgs {
    /// Directory holding release builds of hearthd, hearth and
    /// containerd-shim-hearth-v1.
    #[arg(long)]
    pub bin_dir: PathBuf,
    /// Runs per scenario.
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// runwasi's `containerd-shim-wasmtime-v1`, built from the public
    /// containerd/runwasi source outside this repository. Without it the
    /// runwasi scenario is skipped with a note.
    #[arg(long)]
    pub runwasi: Option<PathBuf>,
    /// Where the SVG chart is written.
    #[arg(long, default_value = "cold-start.svg")]
    pub chart: PathBuf,
}

/// The phases of one Pod start, each as time since the first CRI call.
#[derive(Debug, Clone, Copy)]
struct Phases {
    sandbox: Duration,
    image: Duration,
    created: Duration,
    started: Duration,
    listening: Duration,
    first_response: Duration,
}

const PHASE_NAMES: [&str; 6] = [
    "sandbox ready",
    "image ready",
    "created",
    "started",
    "listening",
    "first 200",
];

impl Phases {
    fn as_array(&self) -> [Duration; 6] {
        [
            self.sandbox,
            self.image,
            self.created,
            self.started,
            self.listening,
            self.first_response,
        ]
    }
}

/// What a scenario does before each run (untimed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reset {
    Nothing,
    CompiledCaches,
    CompiledCachesAndImage,
}

struct Scenario {
    label: &'static str,
    handler: &'static str,
    image: String,
    annotations: &'static [(&'static str, &'static str)],
    command: &'static [&'static str],
    reset: Reset,
    runs: Vec<Phases>,
}

/// Runs the benchmark and prints the table.
pub fn cold_start(args: ColdStartArgs) -> Result<()> {
    let bin_dir = std::fs::canonicalize(&args.bin_dir)
        .with_context(|| format!("--bin-dir {}", args.bin_dir.display()))?;
    hearth_testkit::containerd::use_prebuilt_binaries(bin_dir);
    if !std::path::Path::new(BUSYBOX).exists() {
        bail!("{BUSYBOX} is missing: apt-get install busybox-static (the runc scenario's server)");
    }
    let mut extra_runtimes = Vec::new();
    if let Some(runwasi) = &args.runwasi {
        let runwasi = std::fs::canonicalize(runwasi)
            .with_context(|| format!("--runwasi {}", runwasi.display()))?;
        extra_runtimes.push(("wasmtime".to_string(), runwasi));
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let _in_runtime = runtime.enter();
    let mut node = Node::start_with(NodeOptions {
        pause_image: Some(busybox_pause_image()),
        extra_runtimes,
    });
    let cri = runtime.block_on(Cri::connect(&node.containerd));
    let logs = node.dir.path().join("pods");
    let wasm_image = node.push(hearth_testkit::HELLO, "bench/hello");
    let busybox = std::fs::read(BUSYBOX)?;
    let index = b"Hello from runc\n";
    let native = node.registry.reference("bench/httpd", "1");
    hearth_testkit::registry::skopeo_push(
        &linux_image(
            &[
                ("bin/busybox", &busybox, 0o755),
                ("www/index.html", index.as_slice(), 0o644),
            ],
            &["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
        ),
        &native,
        false,
    );

    let mut scenarios = vec![
        Scenario {
            label: "hearth: pool hit (compiled + warm instance)",
            handler: "hearth",
            image: wasm_image.clone(),
            annotations: &[("hearth.dev/min-idle", "1")],
            command: &[],
            reset: Reset::Nothing,
            runs: Vec::new(),
        },
        Scenario {
            label: "hearth: pool miss (wasm on disk, compile)",
            handler: "hearth",
            image: wasm_image.clone(),
            annotations: &[],
            command: &[],
            reset: Reset::CompiledCaches,
            runs: Vec::new(),
        },
        Scenario {
            label: "hearth: nothing cached (pull + compile)",
            handler: "hearth",
            image: wasm_image.clone(),
            annotations: &[],
            command: &[],
            reset: Reset::CompiledCachesAndImage,
            runs: Vec::new(),
        },
    ];
    if args.runwasi.is_some() {
        scenarios.push(Scenario {
            label: "runwasi: containerd-shim-wasmtime-v1",
            handler: "wasmtime",
            image: wasm_image.clone(),
            annotations: &[],
            command: &[],
            reset: Reset::Nothing,
            runs: Vec::new(),
        });
    } else {
        eprintln!("note: no --runwasi given; the runwasi scenario is skipped");
    }
    scenarios.push(Scenario {
        label: "runc: static busybox httpd (native)",
        handler: "runc",
        image: native,
        annotations: &[],
        command: &[],
        reset: Reset::Nothing,
        runs: Vec::new(),
    });

    for (number, scenario) in scenarios.iter_mut().enumerate() {
        eprintln!("scenario {}: {}", number + 1, scenario.label);
        // One untimed run warms what the scenario says is warm (and checks
        // the scenario works at all).
        one_run(&runtime, &cri, &logs, scenario, &format!("s{number}-warm"))
            .with_context(|| format!("{}: warm-up run", scenario.label))?;
        for run in 0..args.runs {
            match scenario.reset {
                Reset::Nothing => {}
                Reset::CompiledCaches | Reset::CompiledCachesAndImage => {
                    let cache = node.dir.path().join("cache");
                    let _ = std::fs::remove_dir_all(cache.join("compiled"));
                    if scenario.reset == Reset::CompiledCachesAndImage {
                        runtime.block_on(cri.remove_image(&scenario.image))?;
                        let _ = std::fs::remove_dir_all(&cache);
                    }
                    node.restart_hearthd();
                }
            }
            let phases = one_run(&runtime, &cri, &logs, scenario, &format!("s{number}-{run}"))
                .with_context(|| format!("{}: run {run}", scenario.label))?;
            scenario.runs.push(phases);
        }
    }
    print_table(&scenarios, args.runs);
    std::fs::write(&args.chart, chart_svg(&scenarios))
        .with_context(|| format!("writing {}", args.chart.display()))?;
    println!("\nChart: `{}`", args.chart.display());
    Ok(())
}

fn one_run(
    runtime: &tokio::runtime::Runtime,
    cri: &Cri,
    logs: &std::path::Path,
    scenario: &Scenario,
    name: &str,
) -> Result<Phases> {
    runtime.block_on(async {
        let begin = Instant::now();
        let pod = cri
            .run_pod_with(
                name,
                Network::Pod,
                logs,
                &PodOptions {
                    handler: scenario.handler,
                    annotations: scenario.annotations,
                    ..PodOptions::default()
                },
            )
            .await?;
        let sandbox = begin.elapsed();
        let result = start_and_reach(cri, &pod, scenario, begin, sandbox).await;
        cri.remove_pod(&pod).await?;
        result
    })
}

async fn start_and_reach(
    cri: &Cri,
    pod: &Pod,
    scenario: &Scenario,
    begin: Instant,
    sandbox: Duration,
) -> Result<Phases> {
    if !cri.image_present(&scenario.image).await? {
        cri.pull(&scenario.image).await?;
    }
    let image = begin.elapsed();
    let spec = ContainerSpec {
        name: "hello",
        image: &scenario.image,
        env: &[],
        command: scenario.command,
        ..ContainerSpec::default()
    };
    let container = cri.create_container(pod, &spec).await?;
    let created = begin.elapsed();
    cri.start_container(&container).await?;
    let started = begin.elapsed();
    let addr = SocketAddr::new(pod.ip.context("the Pod has no IP")?, 8080);
    let patience = Duration::from_secs(60);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        if begin.elapsed() > patience {
            bail!("{addr} never accepted a connection");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let listening = begin.elapsed();
    loop {
        match hearth_testkit::http::get(addr, "/").await {
            Ok(reply) if reply.status == 200 => break,
            _ if begin.elapsed() > patience => bail!("{addr} never answered 200"),
            _ => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
    Ok(Phases {
        sandbox,
        image,
        created,
        started,
        listening,
        first_response: begin.elapsed(),
    })
}

fn quantile(samples: &[Duration], q: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index].as_secs_f64() * 1e3
}

fn print_table(scenarios: &[Scenario], runs: usize) {
    println!(
        "## Pod cold start through the CRI: first CRI call to first HTTP 200 ({runs} runs per scenario)\n"
    );
    println!(
        "Phases are the median time since the first CRI call at which each step was done; total is the first 200.\n"
    );
    println!(
        "| scenario | total p50 ms | total p90 ms | total max ms | {} |",
        PHASE_NAMES.map(|p| format!("{p} p50 ms")).join(" | ")
    );
    println!("|---|---:|---:|---:|{}", "---:|".repeat(PHASE_NAMES.len()));
    for scenario in scenarios {
        let totals: Vec<_> = scenario.runs.iter().map(|r| r.first_response).collect();
        let phases: Vec<String> = (0..PHASE_NAMES.len())
            .map(|i| {
                let samples: Vec<_> = scenario.runs.iter().map(|r| r.as_array()[i]).collect();
                format!("{:.1}", quantile(&samples, 0.5))
            })
            .collect();
        println!(
            "| {} | **{:.1}** | {:.1} | {:.1} | {} |",
            scenario.label,
            quantile(&totals, 0.5),
            quantile(&totals, 0.9),
            quantile(&totals, 1.0),
            phases.join(" | ")
        );
    }
}

/// A strip chart: one row per scenario, one dot per run at its total time,
/// with the median marked; log-scaled milliseconds.
fn chart_svg(scenarios: &[Scenario]) -> String {
    let (width, row, left, top) = (900.0, 40.0, 330.0, 40.0);
    let all: Vec<f64> = scenarios
        .iter()
        .flat_map(|s| s.runs.iter().map(|r| r.first_response.as_secs_f64() * 1e3))
        .collect();
    let low = all.iter().cloned().fold(f64::INFINITY, f64::min).max(0.1);
    let high = all.iter().cloned().fold(0.0, f64::max).max(low * 2.0);
    let (low_log, high_log) = (low.log10().floor(), high.log10().ceil());
    let x = |ms: f64| {
        left + (ms.max(0.1).log10() - low_log) / (high_log - low_log) * (width - left - 20.0)
    };
    let height = top + row * scenarios.len() as f64 + 40.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"20\" font-size=\"14\">Pod cold start through the CRI: first CRI call to first HTTP 200 (ms, log scale; bar = median)</text>\n"
    );
    let mut decade = low_log;
    while decade <= high_log {
        let ms = 10f64.powf(decade);
        let px = x(ms);
        svg += &format!(
            "<line x1=\"{px:.1}\" y1=\"{top}\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"#ccc\"/>\n<text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{ms}</text>\n",
            height - 30.0,
            height - 15.0
        );
        decade += 1.0;
    }
    for (index, scenario) in scenarios.iter().enumerate() {
        let y = top + row * index as f64 + row / 2.0;
        svg += &format!(
            "<text x=\"10\" y=\"{:.1}\">{}</text>\n",
            y + 4.0,
            scenario.label.replace('&', "&amp;").replace('<', "&lt;")
        );
        for run in &scenario.runs {
            svg += &format!(
                "<circle cx=\"{:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"#1f77b4\" fill-opacity=\"0.6\"/>\n",
                x(run.first_response.as_secs_f64() * 1e3)
            );
        }
        let totals: Vec<_> = scenario.runs.iter().map(|r| r.first_response).collect();
        if !totals.is_empty() {
            let median = x(quantile(&totals, 0.5));
            svg += &format!(
                "<line x1=\"{median:.1}\" y1=\"{:.1}\" x2=\"{median:.1}\" y2=\"{:.1}\" stroke=\"#d62728\" stroke-width=\"2\"/>\n",
                y - 10.0,
                y + 10.0
            );
        }
    }
    svg += "</svg>\n";
    svg
}
