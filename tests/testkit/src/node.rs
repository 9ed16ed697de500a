//! A node as the shim's tests and the Pod benchmark see it: a private
//! hearthd, a local `docker-registry` holding a pause image, and a private
//! containerd whose CRI uses that pause image and whose shims use that
//! hearthd.
//!
//! The pause image is built here as an OCI layout (linux/amd64, one small
//! layer, entrypoint `/pause`) and pushed with skopeo, so no Docker and no
//! network are needed. The Hearth shim never executes it: it holds the Pod's
//! namespaces in a process of its own, which is what the image stands for.
//!
//! Dropping a [`Node`] stops everything (containerd first, so its tasks are
//! killed and its mounts undone); when the test is panicking, the hearthd and
//! containerd logs are printed first.

use crate::containerd::{Containerd, processes_matching, require_containerd, workspace_binary};
use crate::process::{Running, run_to_end};
use crate::registry::{Registry, skopeo_push};
use hearth_prewarm::image::{self, BuiltImage};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long [`wait_until`] waits.
pub const WAIT: Duration = Duration::from_secs(60);

/// A hearthd, a registry with a pause image, and a containerd.
pub struct Node {
    /// The private containerd.
    pub containerd: Containerd,
    /// The private hearthd.
    pub hearthd: Running,
    /// hearthd's control socket.
    pub socket: PathBuf,
    /// The local registry.
    pub registry: Registry,
    /// The pause image reference in `registry` (the CRI's `sandbox_image`).
    pub pause_image: String,
    /// A temp dir holding hearthd's socket and caches.
    pub dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // hearthd's log last, so a report that keeps only the end of
            // the output keeps it; containerd's without its plugin list.
            let containerd: Vec<String> = self
                .containerd
                .log_text()
                .lines()
                .filter(|line| !line.contains("loading plugin"))
                .map(str::to_string)
                .collect();
            eprintln!(
                "--- containerd log:\n{}\n--- hearthd log:\n{}\n--- (the test's panic message is above these logs)",
                containerd.join("\n"),
                self.hearthd.log_text(),
            );
        }
    }
}

/// Starts hearthd as the node daemon on `socket`, its caches in `dir`,
/// its admin endpoint on a free loopback port, and its config from
/// `dir/hearth.toml` when that file exists.
pub fn start_hearthd(dir: &Path, socket: &Path) -> Running {
    let mut command = Command::new(workspace_binary("hearthd"));
    command
        .env("HEARTH_SOCKET", socket)
        .env("HEARTH_CACHE_DIR", dir.join("cache"))
        .args(["--admin", "127.0.0.1:0"]);
    let config = dir.join("hearth.toml");
    if config.exists() {
        command.arg("--config").arg(config);
    }
    let hearthd = Running::start(&mut command);
    hearthd.wait_for_line("hearthd ready");
    hearthd
}

/// What [`Node::start_with`] varies.
#[derive(Default)]
pub struct NodeOptions {
    /// The CRI sandbox image; default [`pause_image_build`] (never run by
    /// Hearth, but runc Pods need one that runs, e.g. [`busybox_pause_image`]).
    pub pause_image: Option<BuiltImage>,
    /// More CRI runtime handlers: `(name, shim binary)`.
    pub extra_runtimes: Vec<(String, PathBuf)>,
}

/// A pause image for runc Pods: the static busybox (`busybox-static`)
/// sleeping forever.
pub fn busybox_pause_image() -> BuiltImage {
    let busybox = std::fs::read(BUSYBOX).unwrap_or_else(|e| {
        panic!("{BUSYBOX}: {e}; install it with `apt-get install busybox-static`")
    });
    linux_image(
        &[("bin/busybox", &busybox, 0o755)],
        &["/bin/busybox", "sleep", "2147483647"],
    )
}

/// Where Debian's `busybox-static` puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";

impl Node {
    /// Starts hearthd, the registry (with the pause image) and containerd.
    pub fn start() -> Self {
        Self::start_with(NodeOptions::default())
    }

    /// [`Node::start`] with `options`.
    pub fn start_with(options: NodeOptions) -> Self {
        require_containerd();
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run/hearthd.sock");
        let hearthd = start_hearthd(dir.path(), &socket);
        let registry = Registry::start();
        let pause_image = registry.reference("pause", "3");
        let pause_build = options.pause_image.unwrap_or_else(pause_image_build);
        skopeo_push(&pause_build, &pause_image, false);
        let registry_host = pause_image.split('/').next().unwrap().to_string();
        let containerd = Containerd::start_with_runtimes(
            &socket,
            &pause_image,
            Some(&registry_host),
            &options.extra_runtimes,
        );
        Node {
            containerd,
            hearthd,
            socket,
            registry,
            pause_image,
            dir,
        }
    }

    /// Kills hearthd as a crash would, and starts a new one on the same
    /// socket and caches.
    pub fn restart_hearthd(&mut self) {
        self.hearthd.kill();
        self.hearthd = start_hearthd(self.dir.path(), &self.socket);
    }

    /// Restarts hearthd with `toml` as its config file (same socket and
    /// caches). Do it before any Pod runs: shims reattach, but a test that
    /// reconfigures wants a clean start.
    pub fn configure_hearthd(&mut self, toml: &str) {
        std::fs::write(self.dir.path().join("hearth.toml"), toml).unwrap();
        self.hearthd.terminate();
        self.hearthd = start_hearthd(self.dir.path(), &self.socket);
    }

    /// hearthd's admin endpoint.
    pub fn admin_addr(&self) -> std::net::SocketAddr {
        self.hearthd.admin_addr()
    }

    /// hearthd's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let reply = crate::http::get(self.admin_addr(), "/metrics")
            .await
            .expect("GET /metrics");
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.text()
    }

    /// Pushes `wasm` with `hearth push` as `repository:1`; the reference.
    pub fn push(&self, wasm: &str, repository: &str) -> String {
        let reference = self.registry.reference(repository, "1");
        let (status, log) =
            run_to_end(Command::new(workspace_binary("hearth")).args(["push", wasm, &reference]));
        assert!(status.success(), "hearth push failed:\n{log}");
        reference
    }

    /// Pushes `wasm` as an image and pulls it into containerd for `ctr`.
    pub fn image(&self, wasm: &str, repository: &str) -> String {
        let reference = self.push(wasm, repository);
        self.pull_for_ctr(&reference);
        reference
    }

    /// Pulls the wasip2/wasm image `reference` from the local registry into
    /// containerd's `ctr` namespace.
    pub fn pull_for_ctr(&self, reference: &str) {
        self.containerd.ctr(&[
            "images",
            "pull",
            "--plain-http",
            "--platform",
            "wasip2/wasm",
            reference,
        ]);
    }

    /// How many functions hearthd runs.
    pub async fn hearthd_functions(&self) -> usize {
        let mut client = hearth_control::connect(&self.socket).await.unwrap();
        let list = client
            .list(hearth_control::v1::ListRequest {})
            .await
            .unwrap()
            .into_inner();
        list.functions.len()
    }

    /// The pids of this containerd's Hearth shims (namespace holders
    /// included: they are the shim binary too).
    pub fn shims(&self) -> Vec<u32> {
        let address = self.containerd.address();
        processes_matching("containerd-shim-hearth-v1", &address.to_string_lossy())
    }
}

/// Polls `done` every 50 ms until it holds; fails the test after [`WAIT`].
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < WAIT, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pause image: linux/amd64, entrypoint `/pause`, one layer holding a
/// `/pause` file that says what it is.
pub fn pause_image_build() -> BuiltImage {
    let pause = b"#!/bin/sh\n# The Hearth shim holds the Pod's namespaces itself; this file is never run.\nexec sleep infinity\n";
    linux_image(&[("pause", pause.as_slice(), 0o755)], &["/pause"])
}

/// A linux/amd64 image (tar+gzip layer) with `files` (path, bytes, mode)
/// and `entrypoint`: an ordinary container image, not a function.
pub fn linux_image(files: &[(&str, &[u8], u32)], entrypoint: &[&str]) -> BuiltImage {
    let mut tar_bytes = Vec::new();
    {
        let mut builder = tar::Builder::new(&mut tar_bytes);
        for (path, bytes, mode) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(*mode);
            header.set_mtime(0);
            header.set_entry_type(tar::EntryType::Regular);
            builder.append_data(&mut header, path, *bytes).unwrap();
        }
        builder.finish().unwrap();
    }
    layered_image(tar_bytes, entrypoint, "linux", "amd64")
}

/// A function image (wasip2/wasm) whose `/function.wasm` is a symlink to
/// `target`: an image trying to make the shim read outside its rootfs.
pub fn symlinked_function_image(target: &str) -> BuiltImage {
    let mut tar_bytes = Vec::new();
    {
        let mut builder = tar::Builder::new(&mut tar_bytes);
        let mut header = tar::Header::new_gnu();
        header.set_size(0);
        header.set_mode(0o777);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Symlink);
        builder
            .append_link(&mut header, "function.wasm", target)
            .unwrap();
        builder.finish().unwrap();
    }
    layered_image(tar_bytes, &[image::IMAGE_WASM_PATH], "wasip2", "wasm")
}

/// An image whose one layer is `tar_bytes` (gzipped here).
pub fn layered_image(
    tar_bytes: Vec<u8>,
    entrypoint: &[&str],
    os: &str,
    architecture: &str,
) -> BuiltImage {
    let diff_id = image::sha256_digest(&tar_bytes);
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(&tar_bytes).unwrap();
    let layer = blob(image::OCI_LAYER_TAR_GZIP, encoder.finish().unwrap());
    let config = serde_json::json!({
        "architecture": architecture,
        "os": os,
        "config": { "Entrypoint": entrypoint },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
    });
    let config = blob(image::OCI_CONFIG, serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": image::OCI_MANIFEST,
        "config": config.descriptor,
        "layers": [layer.descriptor],
    });
    BuiltImage {
        manifest: serde_json::to_vec(&manifest).unwrap(),
        manifest_media_type: image::OCI_MANIFEST,
        config,
        layers: vec![layer],
    }
}

fn blob(media_type: &str, bytes: Vec<u8>) -> image::Blob {
    image::Blob {
        descriptor: image::Descriptor {
            media_type: media_type.to_string(),
            digest: image::sha256_digest(&bytes),
            size: bytes.len() as u64,
            platform: None,
        },
        bytes,
    }
}
