//! `containerd-shim-hearth-v1`: the containerd runtime v2 shim (runtime type
//! `io.containerd.hearth.v1`) that runs Kubernetes Pods' functions in the
//! node's hearthd.
//!
//! # Contract
//!
//! * **One shim process per Pod.** containerd starts the binary with
//!   `start` for every container; containers with the same
//!   `io.kubernetes.cri.sandbox-id` annotation get the same shim socket, so
//!   the first start spawns the shim server and later ones reuse it. A
//!   container without that annotation (`ctr run`) gets a shim of its own.
//! * The task service ([`task`]) is the Pod's sandbox task itself (no
//!   pause process; a namespace holder, [`holder`], only where no CRI
//!   pinned the network namespace) and forwards function containers to
//!   hearthd over the control API; the shim holds no wasmtime.
//! * Each task call logs where its time went ([`timing`]).
//! * **hearthd is not started by the shim**: it is the node daemon. The
//!   socket is `$HEARTH_SOCKET`, else `/run/hearth/hearthd.sock`; the shim
//!   inherits containerd's environment, so setting `HEARTH_SOCKET` for
//!   containerd points its shims at a private hearthd.
//! * `delete` (containerd's cleanup after a shim died) unmounts the
//!   container's rootfs and asks hearthd to stop and forget the container;
//!   hearthd also forgets every function whose owning shim is gone.
//! * The shim logs through containerd's shim log (the bundle's `log` FIFO).

pub mod error;
pub mod events;
pub mod hearthd;
pub mod holder;
pub mod rootfs;
pub mod spec;
pub mod task;
pub mod timing;

use containerd_shim::asynchronous::{ExitSignal, Shim, spawn};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, Error as ShimError, Flags, StartOpts};
use std::path::Path;
use std::sync::Arc;

/// containerd's name for this runtime.
pub const RUNTIME_ID: &str = "io.containerd.hearth.v1";

/// The shim binary's entry point.
pub fn main() {
    timing::mark_process_start();
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(holder::PAUSE_ARG) {
        holder::run(&args[2..]);
    }
    // One thread serves every call of the Pod: the shim waits on containerd
    // and hearthd, and a worker thread per Pod would only cost memory.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(4)
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime");
    let config = Config {
        // Children (sandbox holders) are reaped by tokio's child handling;
        // the crate's reaper would take their exit statuses first.
        no_reaper: true,
        ..Config::default()
    };
    runtime.block_on(containerd_shim::asynchronous::run::<HearthShim>(
        RUNTIME_ID,
        Some(config),
    ));
}

/// The shim process; see the crate docs.
pub struct HearthShim {
    exit: Arc<ExitSignal>,
    namespace: String,
    id: String,
}

#[async_trait::async_trait]
impl Shim for HearthShim {
    type T = task::HearthTask;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        HearthShim {
            exit: Arc::default(),
            namespace: args.namespace.clone(),
            id: args.id.clone(),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let bundle = std::env::current_dir().map_err(|e| ShimError::Other(e.to_string()))?;
        let spec = spec::BundleSpec::load(&bundle)
            .map_err(|e| ShimError::InvalidArgument(e.to_string()))?;
        let grouping = spec
            .grouping(&opts.id)
            .map_err(|e| ShimError::InvalidArgument(e.to_string()))?;
        let address = containerd_shim::socket_address(&opts.address, &opts.namespace, &grouping);
        if already_serving(&address).await {
            // The Pod's shim runs: hand containerd its address rather than
            // start a process that would only find the socket taken.
            containerd_shim::asynchronous::util::write_str_to_file("address", &address).await?;
            return Ok(address);
        }
        let started_at = timing::process_start_unix_nanos().to_string();
        let vars = vec![(timing::START_ACTION_AT, started_at.as_str())];
        let address = spawn(opts, &grouping, vars).await?;
        containerd_shim::asynchronous::util::write_str_to_file("address", &address).await?;
        Ok(address)
    }

    async fn delete_shim(
        &mut self,
    ) -> containerd_shim::Result<containerd_shim::api::DeleteResponse> {
        let bundle = std::env::current_dir().map_err(|e| ShimError::Other(e.to_string()))?;
        cleanup_after_dead_shim(&bundle, &self.id).await;
        Ok(containerd_shim::api::DeleteResponse {
            exit_status: 128 + 9,
            exited_at: Some(
                containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp::now(),
            )
            .into(),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let service = task::HearthTask::new(&self.namespace, publisher, self.exit.clone());
        timing::log_serving(&self.id);
        service
    }
}

/// Whether a shim accepts connections at `address` (`unix://PATH`).
async fn already_serving(address: &str) -> bool {
    let path = address.strip_prefix("unix://").unwrap_or(address);
    tokio::net::UnixStream::connect(path).await.is_ok()
}

/// What `delete` does for a container whose shim is gone: unmount its
/// rootfs and make sure hearthd no longer runs it.
async fn cleanup_after_dead_shim(bundle: &Path, id: &str) {
    if let Ok(spec) = spec::BundleSpec::load(bundle) {
        let rootfs = spec.rootfs(bundle).to_string_lossy().into_owned();
        let detach = nix::mount::MntFlags::MNT_DETACH.bits();
        if let Err(error) = containerd_shim::mount::umount_recursive(Some(&rootfs), detach) {
            log::warn!("cannot unmount {rootfs}: {error}");
        }
    }
    if let Ok(mut client) = hearth_control::connect(&hearth_control::socket_path()).await {
        use hearth_control::v1::{DeleteRequest, KillRequest};
        let _ = client
            .kill(KillRequest {
                id: id.to_string(),
                signal: 9,
            })
            .await;
        let _ = client.delete(DeleteRequest { id: id.to_string() }).await;
    }
}
