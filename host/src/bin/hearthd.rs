//! `hearthd`: the node daemon. Serves every `[[function]]` in its config
//! file, each on its own listener, until SIGTERM or SIGINT, then drains.
//!
//! ```text
//! hearthd --config hearth.toml
//! ```

use anyhow::{Context, Result};
use clap::Parser;
use hearth_host::config::HearthConfig;
use hearth_host::{EngineSettings, Host};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "hearthd", version, about = "Hearth node daemon")]
struct Args {
    /// The configuration file. Without one, hearthd serves nothing until
    /// functions are handed to it.
    #[arg(long, env = "HEARTH_CONFIG")]
    config: Option<PathBuf>,
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
    let host = Host::new(&EngineSettings::for_limits(&limits))?;

    // Load everything before serving anything, so a bad function stops start-up.
    let mut servers = Vec::new();
    for function_config in &config.function {
        let env = function_config.function_env(config.limits);
        let function = host.load_file(env, &function_config.path).await?;
        if !function.is_service() {
            anyhow::bail!(
                "function `{}` ({}) is a job; [[function]] entries are served over HTTP. Run jobs with `hearth run`",
                function_config.name,
                function_config.path.display()
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
