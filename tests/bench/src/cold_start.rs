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
//!    untimed warm-up run;
//! 0. with `--shim-before PATH`, first: `hearth before`, the pool hit
//!    through an earlier shim build (CRI handler `hearth-before`, the same
//!    hearthd).
//!
//! The scenarios that reset nothing (the hits, runwasi, runc) take turns
//! run by run; the others follow. For Hearth the run is also cut into the
//! phases its shim logs (`timing` lines, see `hearth_shim::timing`) and
//! drawn as stacked bars (`--phase-chart`).

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
    /// Where the SVG chart of the Pod-start phases is written.
    #[arg(long, default_value = "pod-start-phases.svg")]
    pub phase_chart: PathBuf,
    /// An earlier build of `containerd-shim-hearth-v1`: its pool hit runs
    /// as a scenario of its own in the same run (CRI handler
    /// `hearth-before`, the same hearthd), for a before/after comparison.
    #[arg(long)]
    pub shim_before: Option<PathBuf>,
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
    label: String,
    handler: &'static str,
    image: String,
    annotations: &'static [(&'static str, &'static str)],
    command: &'static [&'static str],
    reset: Reset,
    runs: Vec<Phases>,
    /// Hearth's shims log where their calls spend the time
    /// ([`ShimTiming`]); one per run.
    shim: Vec<ShimTiming>,
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
    if let Some(before) = &args.shim_before {
        let before = std::fs::canonicalize(before)
            .with_context(|| format!("--shim-before {}", before.display()))?;
        extra_runtimes.push(("hearth-before".to_string(), before));
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

    let mut scenarios = Vec::new();
    if let Some(before) = &args.shim_before {
        scenarios.push(Scenario {
            label: format!("hearth before ({}): pool hit", before.display()),
            handler: "hearth-before",
            image: wasm_image.clone(),
            annotations: &[("hearth.dev/min-idle", "1")],
            command: &[],
            reset: Reset::Nothing,
            runs: Vec::new(),
            shim: Vec::new(),
        });
    }
    scenarios.extend([
        Scenario {
            label: "hearth: pool hit (compiled + warm instance)".into(),
            handler: "hearth",
            image: wasm_image.clone(),
            annotations: &[("hearth.dev/min-idle", "1")],
            command: &[],
            reset: Reset::Nothing,
            runs: Vec::new(),
            shim: Vec::new(),
        },
        Scenario {
            label: "hearth: pool miss (wasm on disk, compile)".into(),
            handler: "hearth",
            image: wasm_image.clone(),
            annotations: &[],
            command: &[],
            reset: Reset::CompiledCaches,
            runs: Vec::new(),
            shim: Vec::new(),
        },
        Scenario {
            label: "hearth: nothing cached (pull + compile)".into(),
            handler: "hearth",
            image: wasm_image.clone(),
            annotations: &[],
            command: &[],
            reset: Reset::CompiledCachesAndImage,
            runs: Vec::new(),
            shim: Vec::new(),
        },
    ]);
    if args.runwasi.is_some() {
        scenarios.push(Scenario {
            label: "runwasi: containerd-shim-wasmtime-v1".into(),
            handler: "wasmtime",
            image: wasm_image.clone(),
            annotations: &[],
            command: &[],
            reset: Reset::Nothing,
            runs: Vec::new(),
            shim: Vec::new(),
        });
    } else {
        eprintln!("note: no --runwasi given; the runwasi scenario is skipped");
    }
    scenarios.push(Scenario {
        label: "runc: static busybox httpd (native)".into(),
        handler: "runc",
        image: native,
        annotations: &[],
        command: &[],
        reset: Reset::Nothing,
        runs: Vec::new(),
        shim: Vec::new(),
    });

    // Scenarios that reset nothing take turns, one run each, so that none
    // of them alone gets the node's first quiet runs or its busiest
    // stretch; the ones that restart hearthd follow, one after another.
    let (steady, resetting): (Vec<usize>, Vec<usize>) =
        (0..scenarios.len()).partition(|&i| scenarios[i].reset == Reset::Nothing);
    let rig = Rig {
        runtime: &runtime,
        cri: &cri,
        logs: &logs,
    };
    for &number in &steady {
        rig.warm_up(&scenarios[number], number)?;
    }
    for run in 0..args.runs {
        for &number in &steady {
            rig.timed_run(&node.containerd, &mut scenarios[number], number, run)?;
        }
    }
    for &number in &resetting {
        rig.warm_up(&scenarios[number], number)?;
        for run in 0..args.runs {
            let scenario = &scenarios[number];
            let cache = node.dir.path().join("cache");
            let _ = std::fs::remove_dir_all(cache.join("compiled"));
            if scenario.reset == Reset::CompiledCachesAndImage {
                runtime.block_on(cri.remove_image(&scenario.image))?;
                let _ = std::fs::remove_dir_all(&cache);
            }
            node.restart_hearthd();
            rig.timed_run(&node.containerd, &mut scenarios[number], number, run)?;
        }
    }
    print_table(&scenarios, args.runs);
    print_phase_tables(&scenarios);
    std::fs::write(&args.chart, chart_svg(&scenarios))
        .with_context(|| format!("writing {}", args.chart.display()))?;
    std::fs::write(&args.phase_chart, phase_chart_svg(&scenarios))
        .with_context(|| format!("writing {}", args.phase_chart.display()))?;
    println!(
        "\nCharts: `{}`, `{}`",
        args.chart.display(),
        args.phase_chart.display()
    );
    Ok(())
}

/// What every run of the bench goes through: the runtime that drives the
/// CRI client, the client, and the Pods' log directory.
struct Rig<'a> {
    runtime: &'a tokio::runtime::Runtime,
    cri: &'a Cri,
    logs: &'a std::path::Path,
}

impl Rig<'_> {
    /// One untimed run: it warms what the scenario says is warm (and
    /// checks the scenario works at all).
    fn warm_up(&self, scenario: &Scenario, number: usize) -> Result<()> {
        eprintln!("scenario {}: {}", number + 1, scenario.label);
        self.one_run(scenario, &format!("s{number}-warm"))
            .with_context(|| format!("{}: warm-up run", scenario.label))?;
        Ok(())
    }

    /// One timed run of `scenario`, recorded in it (with its shim's timing,
    /// read from `containerd`'s log, for Hearth).
    fn timed_run(
        &self,
        containerd: &hearth_testkit::containerd::Containerd,
        scenario: &mut Scenario,
        number: usize,
        run: usize,
    ) -> Result<()> {
        let started = std::time::SystemTime::now();
        let (phases, ids) = self
            .one_run(scenario, &format!("s{number}-{run}"))
            .with_context(|| format!("{}: run {run}", scenario.label))?;
        scenario.runs.push(phases);
        if scenario.handler.starts_with("hearth") {
            let timing = ShimTiming::read(containerd, &ids, started)
                .with_context(|| format!("{}: run {run}: the shim's timing", scenario.label))?;
            scenario.shim.push(timing);
        }
        Ok(())
    }

    /// Starts a Pod for `scenario` under `name`, reaches it, removes it.
    fn one_run(&self, scenario: &Scenario, name: &str) -> Result<(Phases, RunIds)> {
        let (cri, logs) = (self.cri, self.logs);
        self.runtime.block_on(async {
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
            let (phases, container) = result?;
            let ids = RunIds {
                sandbox: pod.sandbox_id.clone(),
                container,
            };
            Ok((phases, ids))
        })
    }
}

/// The sandbox and container ids of one run.
struct RunIds {
    sandbox: String,
    container: String,
}

async fn start_and_reach(
    cri: &Cri,
    pod: &Pod,
    scenario: &Scenario,
    begin: Instant,
    sandbox: Duration,
) -> Result<(Phases, String)> {
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
    let phases = Phases {
        sandbox,
        image,
        created,
        started,
        listening,
        first_response: begin.elapsed(),
    };
    Ok((phases, container))
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
            escape(&scenario.label)
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

/// One `timing` line of a Hearth shim (see `hearth_shim::timing`): when
/// the call returned (since the run began) and how long it and its steps
/// took.
#[derive(Debug, Clone, Default)]
struct ShimCall {
    returned: Duration,
    total: Duration,
    steps: Vec<(String, Duration)>,
}

/// Where a Hearth shim spent one Pod start, from its log lines.
#[derive(Debug, Clone, Default)]
struct ShimTiming {
    serving: ShimCall,
    create_sandbox: ShimCall,
    start_sandbox: ShimCall,
    create_function: ShimCall,
    start_function: ShimCall,
}

impl ShimTiming {
    /// Reads the shim's lines for `ids` out of containerd's log (the
    /// shim's log reaches it through a FIFO: wait for the last one).
    fn read(
        containerd: &hearth_testkit::containerd::Containerd,
        ids: &RunIds,
        began: std::time::SystemTime,
    ) -> Result<ShimTiming> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = containerd.log_text();
            let find = |what: &str, id: &str| {
                log.lines()
                    .find(|line| line.contains(&format!("timing {what} {id}:")))
                    .map(|line| parse_timing_line(line, began))
            };
            let calls = [
                find("serving", &ids.sandbox),
                find("create-sandbox", &ids.sandbox),
                find("start-sandbox", &ids.sandbox),
                find("create-function", &ids.container),
                find("start-function", &ids.container),
            ];
            if calls.iter().all(Option::is_some) {
                let [
                    serving,
                    create_sandbox,
                    start_sandbox,
                    create_function,
                    start_function,
                ] = calls.map(|call| call.expect("all found"));
                return Ok(ShimTiming {
                    serving: serving?,
                    create_sandbox: create_sandbox?,
                    start_sandbox: start_sandbox?,
                    create_function: create_function?,
                    start_function: start_function?,
                });
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd's log lacks the shim's timing lines for sandbox {} / container {} (found: {:?})",
                    ids.sandbox,
                    ids.container,
                    calls.iter().map(Option::is_some).collect::<Vec<_>>()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `time="2026-12-07T03:01:02.123456789Z" level=info msg="timing WHAT ID:
/// total=1.23ms step=0.40ms ..."`.
fn parse_timing_line(line: &str, began: std::time::SystemTime) -> Result<ShimCall> {
    let stamp = line
        .split("time=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .with_context(|| format!("no time stamp in {line:?}"))?;
    let at = parse_rfc3339(stamp).with_context(|| format!("time stamp {stamp:?}"))?;
    let returned = at.duration_since(began).unwrap_or_default();
    let fields = line
        .split(": ")
        .nth(1)
        .with_context(|| format!("no fields in {line:?}"))?
        .trim_end_matches('"');
    let mut call = ShimCall {
        returned,
        ..ShimCall::default()
    };
    for field in fields.split_whitespace() {
        let (name, value) = field
            .split_once('=')
            .with_context(|| format!("field {field:?}"))?;
        let ms: f64 = value
            .trim_end_matches("ms")
            .parse()
            .with_context(|| format!("field {field:?}"))?;
        let took = Duration::from_secs_f64(ms / 1e3);
        if name == "total" {
            call.total = took;
        } else {
            call.steps.push((name.to_string(), took));
        }
    }
    Ok(call)
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (UTC, as the shim's logger writes it).
fn parse_rfc3339(stamp: &str) -> Result<std::time::SystemTime> {
    let stamp = stamp.strip_suffix('Z').context("not UTC (no trailing Z)")?;
    let (date, time) = stamp.split_once('T').context("no T")?;
    let mut date = date.split('-').map(str::parse::<i64>);
    let (Some(Ok(year)), Some(Ok(month)), Some(Ok(day))) = (date.next(), date.next(), date.next())
    else {
        bail!("bad date");
    };
    let (clock, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut clock = clock.split(':').map(str::parse::<i64>);
    let (Some(Ok(hour)), Some(Ok(minute)), Some(Ok(second))) =
        (clock.next(), clock.next(), clock.next())
    else {
        bail!("bad time");
    };
    let nanos: u32 = format!("{fraction:0<9}")[..9].parse()?;
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let seconds = days * 86400 + hour * 3600 + minute * 60 + second;
    Ok(std::time::UNIX_EPOCH + Duration::new(u64::try_from(seconds)?, nanos))
}

/// One Pod start cut into consecutive segments that add up to its first
/// 200: where the shim logged its calls, those are segments of their own.
fn segments(phases: &Phases, shim: Option<&ShimTiming>) -> Vec<(&'static str, Duration)> {
    let Some(shim) = shim else {
        return vec![
            ("RunPodSandbox", phases.sandbox),
            (
                "CreateContainer",
                phases.created.saturating_sub(phases.sandbox),
            ),
            (
                "StartContainer",
                phases.started.saturating_sub(phases.created),
            ),
            (
                "to first 200",
                phases.first_response.saturating_sub(phases.started),
            ),
        ];
    };
    // From the `start` process's main (the first moment of the shim) on.
    let shim_begins = shim.serving.returned.saturating_sub(shim.serving.total);
    let step = |name: &str| {
        shim.serving
            .steps
            .iter()
            .find(|(step, _)| step == name)
            .map(|(_, took)| *took)
            .unwrap_or_default()
    };
    let sandbox_task = shim.create_sandbox.total + shim.start_sandbox.total;
    let in_shim_start = shim.create_function.total + shim.start_function.total;
    let start = phases.started.saturating_sub(phases.created);
    vec![
        ("netns, CNI (to the shim's start)", shim_begins),
        ("shim start: exec of the server process", step("start")),
        ("shim server init (main to serving)", step("init")),
        ("sandbox Create + Start in the shim", sandbox_task),
        (
            "RunPodSandbox, rest (containerd)",
            phases
                .sandbox
                .saturating_sub(shim_begins + shim.serving.total + sandbox_task),
        ),
        (
            "CreateContainer (containerd)",
            phases.created.saturating_sub(phases.sandbox),
        ),
        ("StartContainer: shim Create", shim.create_function.total),
        ("StartContainer: shim Start", shim.start_function.total),
        (
            "StartContainer, rest (containerd)",
            start.saturating_sub(in_shim_start),
        ),
        (
            "to first 200",
            phases.first_response.saturating_sub(phases.started),
        ),
    ]
}

/// The median of each segment over a scenario's runs.
fn median_segments(scenario: &Scenario) -> Vec<(&'static str, f64)> {
    let per_run: Vec<_> = scenario
        .runs
        .iter()
        .enumerate()
        .map(|(index, phases)| segments(phases, scenario.shim.get(index)))
        .collect();
    let Some(first) = per_run.first() else {
        return Vec::new();
    };
    (0..first.len())
        .map(|i| {
            let samples: Vec<_> = per_run.iter().map(|run| run[i].1).collect();
            (first[i].0, quantile(&samples, 0.5))
        })
        .collect()
}

fn print_phase_tables(scenarios: &[Scenario]) {
    println!("\n## Where a Pod start goes: phases (median ms of each segment)\n");
    println!(
        "Hearth's segments come from its shim's `timing` log lines; the peers' from the CRI calls alone. Medians of segments do not add up exactly to the median total.\n"
    );
    for scenario in scenarios {
        let medians = median_segments(scenario);
        let median = |phase: fn(&Phases) -> Duration| {
            quantile(&scenario.runs.iter().map(phase).collect::<Vec<_>>(), 0.5)
        };
        let (total, sandbox) = (median(|r| r.first_response), median(|r| r.sandbox));
        println!(
            "- **{}** (first 200 p50 {total:.1} ms, RunPodSandbox p50 {sandbox:.1} ms, ratio {:.2}): {}",
            scenario.label,
            total / sandbox,
            medians
                .iter()
                .map(|(name, ms)| format!("{name} {ms:.1}"))
                .collect::<Vec<_>>()
                .join(" · ")
        );
    }
    println!("\n### Inside the shim's calls (median ms)\n");
    println!("| scenario | call | total | steps |");
    println!("|---|---|---:|---|");
    for scenario in scenarios.iter().filter(|s| !s.shim.is_empty()) {
        type Pick = fn(&ShimTiming) -> &ShimCall;
        let calls: [(&str, Pick); 5] = [
            ("serving", |t| &t.serving),
            ("create sandbox", |t| &t.create_sandbox),
            ("start sandbox", |t| &t.start_sandbox),
            ("create function", |t| &t.create_function),
            ("start function", |t| &t.start_function),
        ];
        for (name, pick) in calls {
            let totals: Vec<_> = scenario.shim.iter().map(|t| pick(t).total).collect();
            let first = pick(&scenario.shim[0]);
            let steps: Vec<String> = (0..first.steps.len())
                .map(|i| {
                    let samples: Vec<_> = scenario
                        .shim
                        .iter()
                        .filter_map(|t| pick(t).steps.get(i).map(|s| s.1))
                        .collect();
                    format!("{} {:.2}", first.steps[i].0, quantile(&samples, 0.5))
                })
                .collect();
            println!(
                "| {} | {name} | {:.2} | {} |",
                scenario.label,
                quantile(&totals, 0.5),
                steps.join(", ")
            );
        }
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;")
}

/// Stacked bars: one row per scenario, its median segments left to right
/// on a linear millisecond scale, with a legend.
fn phase_chart_svg(scenarios: &[Scenario]) -> String {
    const COLORS: [&str; 10] = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
        "#bcbd22", "#17becf",
    ];
    let rows: Vec<_> = scenarios
        .iter()
        .map(|s| (s.label.clone(), median_segments(s)))
        .collect();
    let mut names: Vec<&str> = Vec::new();
    for (_, segments) in &rows {
        for (name, _) in segments {
            if !names.contains(name) {
                names.push(name);
            }
        }
    }
    let color =
        |name: &str| COLORS[names.iter().position(|n| *n == name).unwrap_or(0) % COLORS.len()];
    let longest = rows
        .iter()
        .map(|(_, s)| s.iter().map(|(_, ms)| ms).sum::<f64>())
        .fold(1.0, f64::max);
    let scale_max = (longest / 25.0).ceil() * 25.0;
    let (width, row, left, top) = (1000.0, 34.0, 420.0, 40.0);
    let x = |ms: f64| left + ms / scale_max * (width - left - 20.0);
    let legend_top = top + row * rows.len() as f64 + 40.0;
    let height = legend_top + 18.0 * names.len() as f64 + 10.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"20\" font-size=\"14\">Where a Pod start goes: median ms of each phase, first CRI call to first HTTP 200</text>\n"
    );
    let mut tick = 0.0;
    while tick <= scale_max {
        let px = x(tick);
        svg += &format!(
            "<line x1=\"{px:.1}\" y1=\"{top}\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\n<text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{tick}</text>\n",
            legend_top - 30.0,
            legend_top - 15.0
        );
        tick += 25.0;
    }
    for (index, (label, segments)) in rows.iter().enumerate() {
        let y = top + row * index as f64;
        svg += &format!(
            "<text x=\"10\" y=\"{:.1}\">{}</text>\n",
            y + row / 2.0 + 4.0,
            escape(label)
        );
        let mut at = 0.0;
        for (name, ms) in segments {
            svg += &format!(
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{}: {ms:.1} ms</title></rect>\n",
                x(at),
                y + 6.0,
                (x(at + ms) - x(at)).max(0.0),
                row - 12.0,
                color(name),
                escape(name)
            );
            at += ms;
        }
        svg += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\">{at:.1}</text>\n",
            x(at) + 4.0,
            y + row / 2.0 + 4.0
        );
    }
    for (index, name) in names.iter().enumerate() {
        let y = legend_top + 18.0 * index as f64;
        svg += &format!(
            "<rect x=\"{left}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{}\"/>\n<text x=\"{:.1}\" y=\"{:.1}\">{}</text>\n",
            y,
            color(name),
            left + 18.0,
            y + 10.0,
            escape(name)
        );
    }
    svg += "</svg>\n";
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_stamps_as_the_shim_logger_writes_them() {
        let at = |stamp| {
            parse_rfc3339(stamp)
                .unwrap()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
        };
        assert_eq!(
            at("1970-01-01T00:00:00.000000001Z"),
            Duration::from_nanos(1)
        );
        assert_eq!(at("2000-01-01T00:00:00Z"), Duration::from_secs(946_684_800));
        assert_eq!(
            at("2026-12-07T03:01:02.5Z"),
            Duration::from_secs(1_796_612_462) + Duration::from_millis(500)
        );
        assert!(parse_rfc3339("2026-12-07T03:01:02+01:00").is_err());
    }

    #[test]
    fn a_timing_line_gives_its_return_time_total_and_steps() {
        let began = std::time::UNIX_EPOCH + Duration::from_secs(946_684_800);
        let line = r#"time="2000-01-01T00:00:00.010Z" level=info msg="timing create-function abc: total=2.51ms rootfs=0.68ms hearthd=1.30ms""#;
        let call = parse_timing_line(line, began).unwrap();
        assert_eq!(call.returned, Duration::from_millis(10));
        assert_eq!(call.total, Duration::from_secs_f64(2.51e-3));
        let steps: Vec<_> = call.steps.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(steps, ["rootfs", "hearthd"]);
        assert_eq!(call.steps[1].1, Duration::from_secs_f64(1.30e-3));
    }
}
