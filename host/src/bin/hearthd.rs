//! `hearthd`: the node daemon. Pulls and precompiles `[prewarm] images`,
//! then serves every `[[function]]` in its config file (from a file or an
//! image), each on its own listener, until SIGTERM or SIGINT, then drains.
//!
//! A prewarm image that cannot be pulled or compiled is logged as an error
//! and skipped: the node keeps serving the rest. A `[[function]]` that cannot
//! be loaded stops start-up.
//!
//! hearthd always serves the control API (see `hearth_host::control`) on
//! `--socket` (default `$HEARTH_SOCKET`, else `/run/hearth/hearthd.sock`):
//! with an empty config it is the node daemon, serving only what shims hand
//! it. On SIGTERM it stops accepting control calls and drains its
//! `[[function]]` listeners.
//!
//! ```text
//! hearthd --config hearth.toml
//! ```

use anyhow::{Context, Result};
use clap::Parser;
use hearth_host::config::HearthConfig;
use hearth_host::{EngineSettings, FunctionEnv, FunctionSource, Host, PullPolicy};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "hearthd", version, about = "Hearth node daemon")]
struct Args {
    /// The configuration file. Without one, hearthd serves nothing until
    /// functions are handed to it.
    #[arg(long, env = "HEARTH_CONFIG")]
    config: Option<PathBuf>,
    /// The control socket [default: $HEARTH_SOCKET, else /run/hearth/hearthd.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
}

#[tokio::main]
async fn main() {
    hearth_host::logging::init();
    if let Err(error) = run(Args::parse()).await {
        tracing::error!("{error:#}");
        eprintln!("error: {error:#}");
        std::process::exit(2);
    }
}

async fn run(args: Args) -> Result<()> {
    let config = match &args.config {
        Some(file) => HearthConfig::load(file)?,
        None => HearthConfig::default(),
    };
    let limits = config.all_limits();
    let caches = config.cache_settings();
    let host = Host::with_caches(&EngineSettings::for_limits(&limits), &caches)?;
    tracing::info!(cache = %caches.dir.display(), "caches opened");

    for reference in &config.prewarm.images {
        let name = FunctionSource::Image(reference.clone()).default_name();
        match host
            .load_image(FunctionEnv::new(&name), reference, PullPolicy::Missing)
            .await
        {
            Ok(function) => tracing::info!(
                %reference,
                digest = %function.compiled().digest,
                "prewarmed {reference}"
            ),
            Err(error) => tracing::error!(%reference, "prewarm of {reference} failed: {error}"),
        }
    }

    // Load everything before serving anything, so a bad function stops start-up.
    let mut servers = Vec::new();
    for function_config in &config.function {
        let env = function_config.function_env(config.limits);
        let (function, origin) = match (&function_config.path, &function_config.image) {
            (Some(path), _) => (host.load_file(env, path).await?, path.display().to_string()),
            (None, Some(image)) => (
                host.load_image(env, image, PullPolicy::Missing).await?,
                image.clone(),
            ),
            (None, None) => unreachable!("validated: every function has a path or an image"),
        };
        if !function.is_service() {
            anyhow::bail!(
                "function `{}` ({origin}) is a job; [[function]] entries are served over HTTP. Run jobs with `hearth run`",
                function_config.name,
            );
        }
        let listener = tokio::net::TcpListener::bind(function_config.listen)
            .await
            .with_context(|| {
                format!(
                    "function `{}`: cannot listen on {}",
                    function_config.name, function_config.listen
                )
            })?;
        servers.push((function, listener));
    }

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(hearth_control::socket_path);
    let control = hearth_host::control::ControlService::new(host.clone(), config.limits);
    let control_listener = hearth_host::control::bind_socket(&socket).await?;
    {
        let mut stopped = stopped.clone();
        tasks.spawn(hearth_host::control::serve(
            control,
            control_listener,
            socket,
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            },
        ));
    }
    for (function, listener) in servers {
        let name = function.name().to_string();
        tracing::info!(function = %name, "serving function `{name}` on http://{}", listener.local_addr()?);
        let mut stopped = stopped.clone();
        tasks.spawn(hearth_host::http::serve(function, listener, async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }));
    }
    tracing::info!(functions = config.function.len(), "hearthd ready");
    hearth_host::shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop.send(true);
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(())
}
