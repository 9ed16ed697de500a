//! `hearth`: run, push and pull functions.
//!
//! ```text
//! hearth run hello.wasm                         # a service: serves 127.0.0.1:$PORT (8080)
//! hearth run job.wasm --env MODE=fail           # a job: exits with the job's status
//! hearth push hello.wasm 127.0.0.1:5000/hello:1 # the OCI image form (--artifact: CNCF artifact)
//! hearth pull 127.0.0.1:5000/hello:1            # into the caches, compiled and ready
//! hearth run 127.0.0.1:5000/hello:1             # straight from a registry reference
//! hearth cache ls | hearth cache gc
//! hearth status                                 # what the node's hearthd runs
//! ```
//!
//! Every command shares the caches under `--cache-dir` (see
//! `hearth_host::distribution` for the default).

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use hearth_host::capabilities::HostCapabilities;
use hearth_host::distribution::{CacheSettings, DEFAULT_ARTIFACT_CACHE_BYTES, default_cache_dir};
use hearth_host::function_env::{FunctionSpec, NodeDefaults};
use hearth_host::guest_output::GuestStdio;
use hearth_host::limits::LimitsOverride;
use hearth_host::{EngineSettings, FunctionEnv, FunctionSource, Host, Limits, PullPolicy};
use hearth_prewarm::image::{self, ImageForm};
use hearth_prewarm::registry::{
    BlobProgress, ProgressSink, RegistryClient, RegistrySettings, TransferProgress, parse_reference,
};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "hearth",
    version,
    about = "Run WebAssembly component functions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a component (a file or an image reference): serve it if it is a
    /// service, run it to completion if it is a job.
    Run(RunArgs),
    /// Push a component to a registry as an OCI image (or artifact).
    Push(PushArgs),
    /// Pull a reference into the artifact cache and precompile it.
    Pull(PullArgs),
    /// List the functions the node's hearthd runs (over its control socket).
    Status(StatusArgs),
    /// Inspect or clean the caches.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// Start a function project from a template (`hearth new --list`).
    New(NewArgs),
    /// Build the function project in a directory with its language's
    /// toolchain (cargo, componentize-py, componentize-js).
    Build(BuildArgs),
    /// Build and run the function project in a directory (`--watch`:
    /// rebuild and restart on every change).
    Up(UpArgs),
    /// Print Kubernetes manifests for a pushed function (Deployment with
    /// `runtimeClassName: hearth`, Service, probes, `hearth.dev/*`
    /// annotations), or apply them with `--apply` (`kubectl apply -f -`).
    Deploy(DeployArgs),
    /// Install Hearth on this node's containerd (or take it out): the shim
    /// binary, and the `hearth` runtime in containerd's config (containerd
    /// 1.6/1.7/2.x, k3s, RKE2), restarting containerd only if that changed.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Run Hearth's benchmarks (`hearth bench cold-start --bin-dir DIR`):
    /// runs the `hearth-bench` binary next to this one with these arguments.
    #[command(disable_help_flag = true)]
    Bench {
        /// Arguments for hearth-bench, e.g. `cold-start --help`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Parser)]
struct NewArgs {
    /// The template (`rust-http`, `python-job`, ...; see --list).
    #[arg(required_unless_present = "list")]
    template: Option<String>,
    /// The function's name; the project goes into ./NAME.
    #[arg(required_unless_present = "list")]
    name: Option<String>,
    /// List the templates.
    #[arg(long)]
    list: bool,
    /// Where the project goes [default: ./NAME].
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Parser)]
struct BuildArgs {
    /// The project directory.
    #[arg(default_value = ".")]
    dir: PathBuf,
}

#[derive(Parser)]
struct UpArgs {
    /// The project directory.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Rebuild and restart when a source file changes.
    #[arg(long)]
    watch: bool,
    /// Arguments for `hearth run` (`--listen`, `--env`, ...), after `--`.
    #[arg(last = true)]
    run_args: Vec<String>,
}

#[derive(Parser)]
struct DeployArgs {
    /// The function's image, as pushed (`hearth push fn.wasm REF`).
    image: String,
    /// Name of the Deployment, Service and container [default: the image's repository name].
    #[arg(long)]
    name: Option<String>,
    /// Namespace to write into the manifests [default: kubectl's current one].
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Pods.
    #[arg(long, default_value_t = 1)]
    replicas: u32,
    /// The port the function listens on ($PORT) [default: 8080; none with --subscribe].
    #[arg(long)]
    port: Option<u16>,
    /// The Service's port.
    #[arg(long, default_value_t = 80)]
    service_port: u16,
    /// Probe readiness and liveness with GET PATH instead of a TCP connect.
    #[arg(long, value_name = "PATH")]
    probe_path: Option<String>,
    /// Environment for the function (KEY=VALUE). May repeat.
    #[arg(long = "env", short = 'e', value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Memory limit (e.g. 128Mi): caps the function's memory.
    #[arg(long)]
    memory: Option<String>,
    /// CPU limit (e.g. 500m).
    #[arg(long)]
    cpu: Option<String>,
    /// The RuntimeClass.
    #[arg(long, default_value = "hearth")]
    runtime_class: String,
    /// hearth.dev/min-idle: instances kept ready.
    #[arg(long)]
    min_idle: Option<u32>,
    /// hearth.dev/max-invocations: requests per instance (1: fresh per request).
    #[arg(long)]
    max_invocations: Option<u32>,
    /// hearth.dev/instance-concurrency (WASI 0.3).
    #[arg(long)]
    instance_concurrency: Option<u32>,
    /// hearth.dev/subscribe: topics a message handler consumes (`topic[@group],...`).
    #[arg(long)]
    subscribe: Option<String>,
    /// Any other hearth.dev annotation (KEY=VALUE, KEY without the prefix). May repeat.
    #[arg(long = "annotation", value_parser = parse_env)]
    annotations: Vec<(String, String)>,
    /// Apply them with `kubectl apply -f -` instead of printing them.
    #[arg(long)]
    apply: bool,
    /// The kubectl to apply with.
    #[arg(long, default_value = "kubectl")]
    kubectl: PathBuf,
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Put the shim on the node and register the runtime (idempotent).
    Install(NodeArgs),
    /// Take the runtime out of containerd's config and remove the shim.
    Uninstall(NodeArgs),
}

#[derive(Parser)]
struct NodeArgs {
    /// The node's root as seen from here (`/host` in the installer Pod).
    #[arg(long, default_value = "/")]
    host_root: PathBuf,
    /// The shim binary to install [default: containerd-shim-hearth-v1 next to this binary].
    #[arg(long)]
    shim: Option<PathBuf>,
    /// Leave the shim binary alone; only edit containerd's config.
    #[arg(long, conflicts_with = "shim")]
    no_shim: bool,
    /// Where on the node the shim goes; must be on containerd's PATH.
    #[arg(long, default_value = "/usr/local/bin")]
    bin_dir: PathBuf,
    /// containerd's config file (node path) [default: detected: k3s, RKE2, else /etc/containerd/config.toml].
    #[arg(long)]
    config: Option<PathBuf>,
    /// containerd's version, when there is no config to read the format from
    /// and no containerd binary to ask (e.g. `1.7.22`, `2.0.0`).
    #[arg(long)]
    containerd_version: Option<String>,
    /// Restart containerd after a config change: `auto` (systemctl restart
    /// of its unit, through nsenter when --host-root is not /) or `never`.
    #[arg(long, value_parser = ["auto", "never"], default_value = "auto")]
    restart: String,
    /// Restart containerd with this shell command instead.
    #[arg(long, conflicts_with = "restart")]
    restart_command: Option<String>,
}

#[derive(Subcommand)]
enum CacheCommand {
    /// List cached references and compiled entries.
    Ls(CacheArgs),
    /// Remove incomplete entries, unreferenced blobs and crash leftovers,
    /// evict to the size bound, and drop compiled code of other engines.
    Gc(CacheArgs),
}

#[derive(Parser)]
struct StatusArgs {
    /// hearthd's control socket [default: $HEARTH_SOCKET, else /run/hearth/hearthd.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
}

/// Where the caches are and how registries are reached.
#[derive(Args, Clone)]
struct CacheArgs {
    /// The cache root [default: $HEARTH_CACHE_DIR, /var/lib/hearth for root, else ~/.cache/hearth].
    #[arg(long, env = "HEARTH_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Bound of the artifact cache in bytes; least recently used references are evicted.
    #[arg(long, default_value_t = DEFAULT_ARTIFACT_CACHE_BYTES)]
    cache_max_bytes: u64,
    /// A registry (host[:port]) to reach over plain HTTP; loopback registries always are. May repeat.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    insecure_registries: Vec<String>,
    /// Largest layer accepted, in bytes.
    #[arg(long, default_value_t = RegistrySettings::default().max_layer_bytes)]
    max_layer_bytes: u64,
}

impl CacheArgs {
    fn settings(&self) -> CacheSettings {
        CacheSettings {
            dir: self.cache_dir.clone().unwrap_or_else(default_cache_dir),
            max_artifact_bytes: self.cache_max_bytes,
            registry: RegistrySettings {
                insecure_registries: self.insecure_registries.clone(),
                max_layer_bytes: self.max_layer_bytes,
                progress: std::io::stderr()
                    .is_terminal()
                    .then(|| ProgressSink(Arc::new(ProgressBars))),
                ..RegistrySettings::default()
            },
            max_compiled_memory_bytes: None,
            max_compiled_disk_bytes: None,
        }
    }
}

#[derive(Parser)]
struct RunArgs {
    /// The component: a .wasm file or an image reference (registry/repository:tag).
    function: String,
    /// When to contact the registry for a reference.
    #[arg(long, value_enum, default_value_t = PullPolicy::Missing)]
    pull: PullPolicy,
    #[command(flatten)]
    cache: CacheArgs,
    /// Address to serve on [default: 127.0.0.1:$PORT, or 127.0.0.1:8080].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// An environment variable for the guest, KEY=VALUE; may repeat.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// A host that outbound HTTP may reach (`*` for any); may repeat.
    #[arg(long = "allow-outbound", value_name = "HOST")]
    allow_outbound: Vec<String>,
    /// The function's namespace: its state, blobs, topics and invoke name
    /// are this namespace's.
    #[arg(long, default_value = hearth_host::tenancy::DEFAULT_NAMESPACE)]
    namespace: String,
    /// Wall-clock deadline per request (per run for a job), in milliseconds.
    /// Jobs have no deadline unless this is given.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Linear-memory limit per instance, in MiB.
    #[arg(long, default_value_t = Limits::default().max_memory_mib)]
    max_memory_mib: u64,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = Limits::default().max_request_body_bytes)]
    max_request_body_bytes: u64,
    /// Instances alive at once.
    #[arg(long, default_value_t = Limits::default().max_concurrent_instances)]
    max_concurrent_instances: u32,
    /// Requests one instance of a WASI 0.3 service serves at once.
    #[arg(long, default_value_t = Limits::default().instance_concurrency)]
    instance_concurrency: u32,
    /// Idle instances of a service kept ready (the prewarm pool).
    #[arg(long, default_value_t = 0)]
    min_idle: u32,
    /// Requests an instance serves before it is replaced; 1 gives every
    /// request a fresh instance.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    max_invocations: u32,
    /// Memory a free instance slot keeps resident, reset, for its next
    /// instance (Linux 6.7+; `[pool] keep_resident_bytes`); 0 turns it off.
    #[arg(long, default_value_t = hearth_host::engine::DEFAULT_KEEP_RESIDENT_BYTES)]
    keep_resident_bytes: usize,
    /// Arguments passed to a job after its name.
    #[arg(last = true)]
    args: Vec<String>,
}

#[derive(Parser)]
struct PushArgs {
    /// The component file.
    file: PathBuf,
    /// Where to push it: registry/repository:tag.
    reference: String,
    /// Push the CNCF Wasm OCI artifact form instead of a runnable image.
    /// containerd 1.6's CRI cannot unpack artifacts; Pods need the image form.
    #[arg(long)]
    artifact: bool,
    #[command(flatten)]
    cache: CacheArgs,
}

#[derive(Parser)]
struct PullArgs {
    /// The reference to pull.
    reference: String,
    /// Only fetch; do not precompile.
    #[arg(long)]
    no_compile: bool,
    #[command(flatten)]
    cache: CacheArgs,
}

/// Progress bars on stderr for registry transfers (a terminal only).
struct ProgressBars;

impl TransferProgress for ProgressBars {
    fn start(&self, digest: &str, size: u64) -> Box<dyn BlobProgress> {
        let bar = indicatif::ProgressBar::new(size);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:>20} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .expect("the template is valid")
            .progress_chars("=> "),
        );
        let short = digest.trim_start_matches("sha256:");
        bar.set_message(short[..short.len().min(12)].to_string());
        Box::new(Bar(bar))
    }
}

struct Bar(indicatif::ProgressBar);

impl BlobProgress for Bar {
    fn set_position(&self, bytes: u64) {
        self.0.set_position(bytes);
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got `{text}`")),
    }
}

fn default_listen() -> Result<SocketAddr> {
    let port = match std::env::var("PORT") {
        Ok(port) => port
            .parse::<u16>()
            .with_context(|| format!("PORT must be a port number, got `{port}`"))?,
        Err(_) => 8080,
    };
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(_) => {
            hearth_host::logging::init_with_default(hearth_host::logging::RUN_DEFAULT)
        }
        _ => hearth_host::logging::init(),
    }
    let code = match cli.command {
        Command::Run(args) => run(args).await,
        Command::Push(args) => push(args).await,
        Command::Pull(args) => pull(args).await,
        Command::Status(args) => status(args).await,
        Command::Bench { args } => bench(&args),
        Command::Node { command } => node(command),
        Command::Deploy(args) => deploy(args),
        Command::New(args) => new_project(args),
        Command::Build(args) => build_project(&args.dir).map(|built| {
            println!("{built}");
            0
        }),
        Command::Up(args) => up(args).await,
        Command::Cache {
            command: CacheCommand::Ls(args),
        } => cache_ls(args),
        Command::Cache {
            command: CacheCommand::Gc(args),
        } => cache_gc(args).await,
    };
    match code {
        Ok(code) => std::process::exit(code),
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("error: {error:#}");
            std::process::exit(2);
        }
    }
}

fn new_project(args: NewArgs) -> Result<i32> {
    use hearth_host::authoring;
    if args.list {
        for template in authoring::templates() {
            println!("{:<16} {}", template.name, template.description);
        }
        return Ok(0);
    }
    let (Some(template), Some(name)) = (args.template, args.name) else {
        bail!("usage: hearth new TEMPLATE NAME (hearth new --list shows the templates)");
    };
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&name));
    let files = authoring::new_project(&template, &name, &dir, &default_cache_dir())?;
    println!("created {} from {template}:", dir.display());
    for file in files {
        println!("  {}", file.display());
    }
    println!("next: cd {} && hearth up", dir.display());
    Ok(0)
}

fn build_project(dir: &Path) -> Result<hearth_host::authoring::Built> {
    Ok(hearth_host::authoring::build(dir, &default_cache_dir())?)
}

/// Builds, then runs `hearth run COMPONENT RUN_ARGS` as a child; with
/// `--watch`, polls the sources and rebuilds and restarts on a change (a
/// failed rebuild keeps the running one and says why).
/// `hearth up`: builds, runs `hearth run` on the component, and with
/// `--watch` rebuilds and restarts it on every change. A SIGTERM sent to
/// `hearth up` alone reaches its `hearth run` too (^C at a terminal reaches
/// both already: they share the process group), and `hearth up` exits with
/// its status.
async fn up(args: UpArgs) -> Result<i32> {
    use hearth_host::authoring::sources_fingerprint;
    let start = |component: &Path| -> Result<tokio::process::Child> {
        tokio::process::Command::new(std::env::current_exe()?)
            .arg("run")
            .arg(component)
            .args(&args.run_args)
            .spawn()
            .context("starting hearth run")
    };
    let terminate = |child: &tokio::process::Child| {
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let built = build_project(&args.dir)?;
    eprintln!("{built}");
    let mut child = start(&built.component)?;
    // With --watch, a `hearth run` that ended waits for the next change.
    let mut running = true;
    let mut seen = sources_fingerprint(&args.dir);
    loop {
        tokio::select! {
            status = child.wait(), if running => {
                let status = status?;
                if !args.watch {
                    return Ok(status.code().unwrap_or(1));
                }
                running = false;
                eprintln!("hearth up: hearth run ended ({status}); waiting for a change");
            }
            _ = term.recv() => {
                terminate(&child);
                let status = child.wait().await?;
                return Ok(status.code().unwrap_or(1));
            }
            () = tokio::time::sleep(std::time::Duration::from_millis(300)), if args.watch => {
                let now = sources_fingerprint(&args.dir);
                if now == seen {
                    continue;
                }
                seen = now;
                eprintln!("hearth up: a source changed; rebuilding");
                let dir = args.dir.clone();
                match tokio::task::spawn_blocking(move || build_project(&dir)).await? {
                    Err(error) => eprintln!(
                        "hearth up: the build failed, still running the last one:\n{error:#}"
                    ),
                    Ok(built) => {
                        eprintln!("{built}");
                        terminate(&child);
                        child.wait().await?;
                        child = start(&built.component)?;
                        running = true;
                    }
                }
            }
        }
    }
}

fn deploy(args: DeployArgs) -> Result<i32> {
    use hearth_host::manifests::{DeploySpec, manifests, name_from_image, to_yaml};
    let mut annotations = Vec::new();
    let numbers = [
        ("min-idle", args.min_idle),
        ("max-invocations", args.max_invocations),
        ("instance-concurrency", args.instance_concurrency),
    ];
    for (key, value) in numbers {
        if let Some(value) = value {
            annotations.push((key.to_string(), value.to_string()));
        }
    }
    if let Some(topics) = &args.subscribe {
        annotations.push(("subscribe".to_string(), topics.clone()));
    }
    annotations.extend(args.annotations);
    let port = match (args.port, &args.subscribe) {
        (Some(port), _) => Some(port),
        (None, Some(_)) => None,
        (None, None) => Some(8080),
    };
    let spec = DeploySpec {
        name: args.name.unwrap_or_else(|| name_from_image(&args.image)),
        image: args.image,
        namespace: args.namespace,
        replicas: args.replicas,
        port,
        service_port: args.service_port,
        probe_path: args.probe_path,
        env: args.env,
        memory: args.memory,
        cpu: args.cpu,
        runtime_class: args.runtime_class,
        annotations,
    };
    let yaml = to_yaml(&manifests(&spec)?);
    if !args.apply {
        print!("{yaml}");
        return Ok(0);
    }
    let mut kubectl = std::process::Command::new(&args.kubectl)
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", args.kubectl.display()))?;
    {
        use std::io::Write;
        let mut stdin = kubectl.stdin.take().expect("piped stdin");
        stdin
            .write_all(yaml.as_bytes())
            .context("writing the manifests to kubectl")?;
    }
    let status = kubectl.wait().context("waiting for kubectl")?;
    Ok(status.code().unwrap_or(1))
}

fn node(command: NodeCommand) -> Result<i32> {
    use hearth_node_install::{Options, Restart};
    let (args, install) = match command {
        NodeCommand::Install(args) => (args, true),
        NodeCommand::Uninstall(args) => (args, false),
    };
    let shim = match (args.no_shim, args.shim) {
        (true, _) => None,
        (false, Some(shim)) => Some(shim),
        // Uninstall removes the installed shim; it needs no source.
        (false, None) if !install => Some(PathBuf::new()),
        (false, None) => {
            let beside = std::env::current_exe()
                .context("locating this binary")?
                .with_file_name(hearth_node_install::SHIM_BINARY);
            if !beside.exists() {
                bail!(
                    "no {} next to this binary ({}); pass --shim PATH or --no-shim",
                    hearth_node_install::SHIM_BINARY,
                    beside.display()
                );
            }
            Some(beside)
        }
    };
    let options = Options {
        host_root: args.host_root,
        shim,
        bin_dir: args.bin_dir,
        config: args.config,
        containerd_version: args.containerd_version,
        restart: match (args.restart_command, args.restart.as_str()) {
            (Some(command), _) => Restart::Command(command),
            (None, "never") => Restart::Never,
            (None, _) => Restart::Auto,
        },
    };
    let report = if install {
        hearth_node_install::install(&options)?
    } else {
        hearth_node_install::uninstall(&options)?
    };
    print!("{report}");
    Ok(0)
}

async fn status(args: StatusArgs) -> Result<i32> {
    let socket = args.socket.unwrap_or_else(hearth_control::socket_path);
    let mut client = hearth_control::connect(&socket).await?;
    let functions = client
        .list(hearth_control::v1::ListRequest {})
        .await
        .context("hearthd refused to list its functions")?
        .into_inner()
        .functions;
    println!(
        "{:<16} {:<16} {:<8} {:<8} {:<8} {:>9} {:>10}  LISTENING / EXIT",
        "ID", "POD", "KIND", "WASI", "STATUS", "INSTANCES", "MEMORY KiB"
    );
    for function in &functions {
        let short = |id: &str| id.chars().take(16).collect::<String>();
        let detail = if function.status == "exited" {
            format!("{} ({})", function.exit_status, function.exit_reason)
        } else {
            function.listening.clone()
        };
        println!(
            "{:<16} {:<16} {:<8} {:<8} {:<8} {:>9} {:>10}  {detail}",
            short(&function.id),
            short(&function.sandbox_id),
            function.kind,
            function.wasi,
            function.status,
            function.instances,
            function.memory_bytes / 1024,
        );
    }
    Ok(0)
}

async fn push(args: PushArgs) -> Result<i32> {
    let wasm = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    hearth_prewarm::check_is_component(&wasm)
        .with_context(|| format!("refusing to push {}", args.file.display()))?;
    let reference = parse_reference(&args.reference)?;
    let form = if args.artifact {
        ImageForm::Artifact
    } else {
        ImageForm::Image
    };
    let built = image::build(form, &wasm);
    let client = RegistryClient::new(&reference, &args.cache.settings().registry);
    let digest = client.push(&built).await?;
    tracing::info!(reference = %reference.whole(), %digest, ?form, "pushed");
    println!("{}@{digest}", reference.whole());
    Ok(0)
}

async fn pull(args: PullArgs) -> Result<i32> {
    let caches = args.cache.settings();
    let host = Host::with_caches(&EngineSettings::default(), &caches)?;
    let name = FunctionSource::Image(args.reference.clone()).default_name();
    let (entry, bytes) = host
        .fetch_image(&name, &args.reference, PullPolicy::Always)
        .await?;
    if !args.no_compile {
        host.load(FunctionEnv::new(&name), bytes).await?;
    }
    println!(
        "{} {} wasm {} ({:?} form, {} bytes){}",
        entry.reference,
        entry.manifest_digest,
        entry.wasm_digest,
        entry.form,
        entry.size,
        if args.no_compile { "" } else { ", compiled" }
    );
    Ok(0)
}

fn cache_ls(args: CacheArgs) -> Result<i32> {
    let caches = args.settings();
    let host = Host::with_caches(&EngineSettings::default(), &caches)?;
    let artifacts = host.artifacts().expect("built with caches");
    println!("cache: {}", caches.dir.display());
    println!("REFERENCE\tFORM\tWASM\tBYTES\tLAST USED\tSTATE");
    for entry in artifacts.list()? {
        let age = entry
            .last_used
            .and_then(|t| t.elapsed().ok())
            .map(|d| format!("{}s ago", d.as_secs()))
            .unwrap_or_else(|| "-".into());
        println!(
            "{}\t{:?}\t{}\t{}\t{}\t{}",
            entry.reference,
            entry.form,
            &entry.wasm_digest[..entry.wasm_digest.len().min(19)],
            entry.size,
            age,
            if artifacts.is_entry_complete(&entry) {
                "complete"
            } else {
                "incomplete"
            }
        );
    }
    println!(
        "artifacts: {} of {} bytes",
        artifacts.total_bytes()?,
        artifacts.max_bytes()
    );
    if let Some(store) = host.compiled().store() {
        let (entries, bytes) = store.usage()?;
        println!(
            "compiled: {entries} entries, {bytes} bytes (engine {})",
            store.fingerprint()
        );
    }
    Ok(0)
}

async fn cache_gc(args: CacheArgs) -> Result<i32> {
    let caches = args.settings();
    let host = Host::with_caches(&EngineSettings::default(), &caches)?;
    let report = host.artifacts().expect("built with caches").gc().await?;
    let other_engines = host
        .compiled()
        .store()
        .map(|store| store.remove_other_engines())
        .transpose()?
        .unwrap_or(0);
    println!(
        "evicted {} reference(s), dropped {} incomplete, removed {} unreferenced blob(s) and {} staging file(s), freed {} bytes; removed compiled code of {other_engines} other engine(s)",
        report.evicted.len(),
        report.incomplete.len(),
        report.orphan_blobs,
        report.stale_staging,
        report.freed_bytes
    );
    Ok(0)
}

/// Runs `hearth-bench` from this binary's directory.
fn bench(args: &[String]) -> Result<i32> {
    let here = std::env::current_exe().context("locating the hearth binary")?;
    let bench = here.with_file_name("hearth-bench");
    if !bench.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p hearth-bench` (the scripts/bench-*.sh scripts do)",
            bench.display()
        );
    }
    let status = std::process::Command::new(&bench)
        .args(args)
        .status()
        .with_context(|| format!("running {}", bench.display()))?;
    Ok(status.code().unwrap_or(1))
}

/// `hearth run`, exporting its spans when `OTEL_EXPORTER_OTLP_ENDPOINT`
/// (or another standard variable) names a collector.
async fn run(args: RunArgs) -> Result<i32> {
    let exporting = hearth_host::telemetry::init(&Default::default(), "hearth")?;
    let result = run_function(args).await;
    if let Some(exporting) = exporting {
        let _ = tokio::task::spawn_blocking(move || exporting.shutdown()).await;
    }
    result
}

async fn run_function(args: RunArgs) -> Result<i32> {
    let source = FunctionSource::parse(&args.function);
    let name = source.default_name();
    let spec = FunctionSpec {
        name: name.clone(),
        namespace: Some(args.namespace),
        env: args.env,
        args: args.args,
        allowed_outbound_hosts: args.allow_outbound,
        limits: LimitsOverride {
            request_timeout_ms: args.timeout_ms,
            max_memory_mib: Some(args.max_memory_mib),
            max_request_body_bytes: Some(args.max_request_body_bytes),
            max_concurrent_instances: Some(args.max_concurrent_instances),
            instance_concurrency: Some(args.instance_concurrency),
            ..LimitsOverride::default()
        },
        min_idle: Some(args.min_idle),
        max_invocations: Some(args.max_invocations),
        // The terminal's stdio, byte for byte, as `wasmtime run` gives it.
        stdio: GuestStdio::Inherit,
        ..FunctionSpec::default()
    };
    let env = match spec.into_env(&NodeDefaults::default()) {
        Ok(env) => env,
        Err(error) => bail!("{error}"),
    };
    let limits = env.limits;
    let mut settings = EngineSettings::for_limits([&limits]);
    settings.total_instances = settings
        .total_instances
        .max(args.min_idle + limits.max_concurrent_instances);
    settings.keep_resident_bytes = args.keep_resident_bytes;
    let host = match (
        Host::with_caches(&settings, &args.cache.settings()),
        &source,
    ) {
        (Ok(host), _) => host,
        // A file still runs without caches (e.g. a read-only home): it just
        // compiles every time.
        (Err(error), FunctionSource::File(_)) => {
            tracing::warn!("running without the on-disk caches: {error}");
            Host::new(&settings)?
        }
        (Err(error), FunctionSource::Image(_)) => return Err(error.into()),
    };
    // State lives in one embedded store under the cache dir; a second
    // `hearth run` at once finds it locked and runs without state.
    let state_file = args.cache.settings().dir.join("state").join("default.redb");
    match HostCapabilities::embedded_default(&state_file) {
        Ok(capabilities) => {
            host.install_capabilities(
                capabilities.with_invoker(hearth_host::http::LocalInvoker::for_host(&host)),
            )
            .map_err(|e| anyhow::anyhow!(e))?;
        }
        Err(error) => tracing::warn!("running without a state store: {error}"),
    }
    let function = match &source {
        FunctionSource::File(path) => host.load_file(env, path).await?,
        FunctionSource::Image(reference) => host.load_image(env, reference, args.pull).await?,
    };
    if !function.is_service() {
        let timeout = args.timeout_ms.map(Duration::from_millis);
        return Ok(match hearth_host::job::run_job(&function, timeout).await {
            Ok(code) => code,
            Err(error) => {
                eprintln!("error: {}: {error}", error.name());
                error.exit_code()
            }
        });
    }
    let listen = match args.listen {
        Some(listen) => listen,
        None => default_listen()?,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(
        target: "hearth::run",
        function = %name,
        wasi = %function.wasi(),
        "serving function `{name}` on http://{}",
        listener.local_addr()?
    );
    hearth_host::http::serve(function, listener, hearth_host::shutdown_signal()).await?;
    Ok(0)
}
