//! `hearth`: run a function locally.
//!
//! ```text
//! hearth run hello.wasm                    # a service: serves 127.0.0.1:$PORT (8080)
//! hearth run job.wasm --env MODE=fail      # a job: exits with the job's status
//! ```

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use hearth_host::{EngineSettings, FunctionEnv, Host, Limits};
use std::net::SocketAddr;
use std::path::PathBuf;
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
    /// Run a component: serve it if it is a service, run it to completion if it is a job.
    Run(RunArgs),
}

#[derive(Parser)]
struct RunArgs {
    /// The component file (.wasm).
    file: PathBuf,
    /// Address to serve on [default: 127.0.0.1:$PORT, or 127.0.0.1:8080].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// An environment variable for the guest, KEY=VALUE; may repeat.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// A host that outbound HTTP may reach (`*` for any); may repeat.
    #[arg(long = "allow-outbound", value_name = "HOST")]
    allow_outbound: Vec<String>,
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
    /// Arguments passed to a job after its name.
    #[arg(last = true)]
    args: Vec<String>,
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
    hearth_host::logging::init();
    let code = match Cli::parse().command {
        Command::Run(args) => run(args).await,
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

async fn run(args: RunArgs) -> Result<i32> {
    let limits = Limits {
        request_timeout_ms: args
            .timeout_ms
            .unwrap_or(Limits::default().request_timeout_ms),
        max_memory_mib: args.max_memory_mib,
        max_request_body_bytes: args.max_request_body_bytes,
        max_concurrent_instances: args.max_concurrent_instances,
    };
    if let Err(message) = limits.validate() {
        bail!("invalid limit: {message}");
    }
    let name = args
        .file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "function".into());
    let mut guest_args = vec![name.clone()];
    guest_args.extend(args.args);
    let env = FunctionEnv {
        name: name.as_str().into(),
        env: args.env,
        args: guest_args,
        allowed_outbound_hosts: Arc::from(args.allow_outbound),
        limits,
    };
    let host = Host::new(&EngineSettings::for_limits([&limits]))?;
    let function = host.load_file(env, &args.file).await?;
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
        function = %name,
        "serving function `{name}` on http://{}",
        listener.local_addr()?
    );
    hearth_host::http::serve(function, listener, hearth_host::shutdown_signal()).await?;
    Ok(0)
}
