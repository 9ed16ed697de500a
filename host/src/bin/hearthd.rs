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
//! it. Before opening anything it takes the node lock beside the socket
//! (see `hearth_host::node_lock`): a second hearthd waits for the first to
//! exit, saying so, instead of failing on its stores.
//!
//! On SIGTERM (an upgrade, a restart) hearthd hands the shims' functions
//! over to the next hearthd (see `hearth_host::control::Handover`): control calls
//! are refused, each Pod's listener stops accepting (the shim keeps the
//! socket, so new connections wait in its backlog for the next hearthd),
//! in-flight requests finish within 10 s; its `[[function]]` entries drain;
//! then it exits, releasing the lock and its stores.
//!
//! `[[function.subscribe]]` entries start message subscriptions (see
//! `hearth_host::messages`) once everything is loaded. Each function is
//! served through `hearth_host::serving::Serving`, as the control API's
//! Pods are: on SIGTERM its listener and subscriptions drain together (stop
//! accepting and pulling, let in-flight requests and handlers finish, give
//! back the messages still running after 10 s).
//!
//! With an OTLP endpoint (`[telemetry] endpoint`, or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT`) hearthd exports its spans there (see
//! `hearth_host::telemetry`), and flushes them when it exits.
//!
//! With `--admin ADDR` (or `[admin] listen`) hearthd serves `/metrics`,
//! `/healthz` and `/readyz` there (see `hearth_host::admin`) and logs
//! "admin endpoint on http://ADDR"; without it there is no admin endpoint.
//!
//! ```text
//! hearthd --config hearth.toml --admin 127.0.0.1:9464
//! ```

use anyhow::{Context, Result};
use clap::Parser;
use hearth_host::admin::Admin;
use hearth_host::config::HearthConfig;
use hearth_host::control::Prewarmed;
use hearth_host::serving::Serving;
use hearth_host::{FunctionEnv, FunctionSource, Host, PullPolicy};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
    /// Serve /metrics, /healthz and /readyz on this address [default: `[admin] listen`].
    #[arg(long)]
    admin: Option<std::net::SocketAddr>,
}

#[tokio::main]
async fn main() {
    hearth_host::logging::init();
    raise_open_file_limit();
    if let Err(error) = run(Args::parse()).await {
        tracing::error!("{error:#}");
        eprintln!("error: {error:#}");
        std::process::exit(2);
    }
    // Exit now rather than wait for blocking work (a guest still running in
    // a blocking thread) that nobody will use.
    tracing::info!("hearthd exited");
    std::process::exit(0);
}

/// Raises the soft limit of open files to the hard one: every connection
/// to every function on the node is a file descriptor of this one process
/// (each function's share is bounded by `max_connections`).
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("cannot raise the open-file limit from {soft} to {hard}: {error}");
            }
        }
        Ok(_) => {}
        Err(error) => tracing::warn!("cannot read the open-file limit: {error}"),
    }
}

fn config_name(args: &Args) -> String {
    args.config
        .as_ref()
        .map_or_else(|| "hearthd".to_string(), |file| file.display().to_string())
}

async fn run(args: Args) -> Result<()> {
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(hearth_control::socket_path);
    let _node_lock = hearth_host::node_lock::NodeLock::acquire(&socket).await?;
    let config = match &args.config {
        Some(file) => HearthConfig::load(file)?,
        None => HearthConfig::default(),
    };
    let exporting = hearth_host::telemetry::init(&config.telemetry, "hearthd")
        .map_err(|error| anyhow::anyhow!("{}: {error}", config_name(&args)))?;
    let caches = config.cache_settings();
    let engine_settings = config.engine_settings();
    let host = Host::with_caches(&engine_settings, &caches)?;
    let capabilities = config
        .host_capabilities()
        .await
        .map_err(|error| anyhow::anyhow!("{}: {error}", config_name(&args)))?;
    for (label, store) in &capabilities.stores {
        tracing::info!(store = %label, backend = store.kind(), "state store configured");
    }
    for (label, broker) in &capabilities.brokers {
        tracing::info!(broker = %label, backend = broker.kind(), "message broker configured");
    }
    for (label, store) in &capabilities.blob_stores {
        tracing::info!(store = %label, backend = store.kind(), "blob store configured");
    }
    host.install_capabilities(
        capabilities.with_invoker(hearth_host::http::LocalInvoker::for_host(&host)),
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    // Remote state backends are checked in the background: hearthd serves
    // while one is down and /readyz names it.
    let not_ready = Arc::new(std::sync::Mutex::new(Vec::new()));
    tokio::spawn(hearth_host::admin::watch_backends(
        host.capabilities().clone(),
        not_ready.clone(),
    ));
    tracing::info!(cache = %caches.dir.display(), instance_slots = engine_settings.total_instances, "caches opened");

    let ready = Arc::new(AtomicBool::new(false));
    let control = hearth_host::control::ControlService::new(host.clone(), config.node_defaults())
        .with_prewarmed(Prewarmed {
            images: config.prewarm.images.clone(),
            min_idle: config.prewarm.min_idle,
        });
    let mut admin_sources = vec![control.served_functions()];
    let admin_listener = match args.admin.or(config.admin.listen) {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("admin endpoint: cannot listen on {addr}"))?;
            tracing::info!("admin endpoint on http://{}", listener.local_addr()?);
            Some(listener)
        }
        None => {
            tracing::info!("no admin endpoint (give --admin ADDR for /metrics)");
            None
        }
    };

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
    let mut to_serve = Vec::new();
    for function_config in &config.function {
        let env = function_config
            .spec()
            .into_env(&config.node_defaults())
            .map_err(|error| {
                anyhow::anyhow!(
                    "{}: function `{}`: {error}",
                    config_name(&args),
                    function_config.name
                )
            })?;
        let (function, origin) = match (&function_config.path, &function_config.image) {
            (Some(path), _) => (host.load_file(env, path).await?, path.display().to_string()),
            (None, Some(image)) => (
                host.load_image(env, image, PullPolicy::Missing).await?,
                image.clone(),
            ),
            (None, None) => unreachable!("validated: every function has a path or an image"),
        };
        if matches!(function.kind(), hearth_host::FunctionKind::Job { .. }) {
            anyhow::bail!(
                "function `{}` ({origin}) is a job; [[function]] entries serve HTTP or handle messages. Run jobs with `hearth run`",
                function_config.name,
            );
        }
        if !function_config.subscribe.is_empty() && function.message_handler().is_none() {
            anyhow::bail!(
                "function `{}` ({origin}) has [[function.subscribe]] entries but does not export `{}`",
                function_config.name,
                hearth_host::function::MESSAGE_HANDLER,
            );
        }
        let subscriptions: Vec<_> = function_config
            .subscribe
            .iter()
            .map(|subscribe| subscribe.settings(&function_config.name))
            .collect();
        let listener = match function_config.listen {
            None => None,
            Some(_) if !function.is_service() => anyhow::bail!(
                "function `{}` ({origin}) has `listen` but exports neither `{}` nor `{}`",
                function_config.name,
                hearth_host::function::INCOMING_HANDLER,
                hearth_host::function::HANDLER_P3,
            ),
            Some(listen) => Some(tokio::net::TcpListener::bind(listen).await.with_context(
                || {
                    format!(
                        "function `{}`: cannot listen on {listen}",
                        function_config.name
                    )
                },
            )?),
        };
        to_serve.push((function, listener, subscriptions));
    }

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    admin_sources.push(Arc::new(
        to_serve
            .iter()
            .map(|(function, _, _)| (function.name().to_string(), function.clone()))
            .collect::<Vec<_>>(),
    ));
    if let Some(listener) = admin_listener {
        let admin = Arc::new(Admin {
            host: host.clone(),
            sources: admin_sources,
            ready: ready.clone(),
            not_ready: not_ready.clone(),
        });
        let mut stopped = stopped.clone();
        tasks.spawn(hearth_host::admin::serve(admin, listener, async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }));
    }
    let handover = control.handover();
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
    let mut drains = Vec::new();
    for (function, listener, subscriptions) in to_serve {
        let name = function.name().to_string();
        let serving = Serving::start(function, listener, &subscriptions).await?;
        if let Some(addr) = serving.local_addr() {
            tracing::info!(function = %name, "serving function `{name}` on http://{addr}");
        }
        drains.push(serving.drain_handle());
        tasks.spawn(serving.run());
    }
    ready.store(true, Ordering::Relaxed);
    tracing::info!(functions = config.function.len(), "hearthd ready");
    hearth_host::shutdown_signal().await;
    tracing::info!("shutting down: handing the node's functions over to the next hearthd");
    // Every function drains (no new requests or messages; in-flight ones
    // finish or are given back); the shims' functions are handed over
    // (control calls refused, listeners left to their shims); then the
    // control and admin endpoints stop.
    for drain in &drains {
        drain.drain();
    }
    let handed_over = handover.hand_over(hearth_host::serving::DRAIN_GRACE).await;
    let _ = stop.send(true);
    let joined = tokio::time::timeout(
        hearth_host::serving::DRAIN_GRACE + std::time::Duration::from_secs(5),
        async {
            while let Some(result) = tasks.join_next().await {
                result??;
            }
            anyhow::Ok(())
        },
    )
    .await;
    match joined {
        Ok(result) => result?,
        Err(_) => tracing::warn!("still draining after the grace period: exiting anyway"),
    }
    tracing::info!(
        handed_over,
        "shut down; {handed_over} running functions left for the next hearthd"
    );
    if let Some(exporting) = exporting {
        // Exports the last batch; it blocks on the exporter's thread.
        let _ = tokio::task::spawn_blocking(move || exporting.shutdown()).await;
    }
    Ok(())
}
