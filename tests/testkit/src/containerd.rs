//! A private containerd for the shim's tests, and the workspace's binaries.
//!
//! [`Containerd::start`] writes a config into a temp dir (root, state, gRPC
//! and ttrpc sockets all inside it; `restrict_oom_score_adj = true`, which
//! these machines need; CNI from `/usr/lib/cni` with a `ptp` network; a
//! plain-HTTP `hosts.toml` for a local registry; network namespaces under
//! the state dir; the CRI runtime `hearth` naming the freshly built shim by
//! absolute path) and starts Debian's `containerd` with the shim's
//! directory first on `PATH`, so `ctr`'s `io.containerd.hearth.v1` resolves
//! to it too, and with
//! `HEARTH_SOCKET` set, so its shims talk to the test's hearthd. It is
//! stopped by PID when dropped, after its tasks are killed and its mounts
//! under the temp dir unmounted.
//!
//! Needs root and `containerd`/`ctr`: without them the test fails with a
//! message saying what is missing.

use crate::process::{Running, patience};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Debian's containerd.
pub const CONTAINERD_BINARY: &str = "/usr/bin/containerd";
/// Debian's ctr.
pub const CTR_BINARY: &str = "/usr/bin/ctr";
/// The containerd namespace the `ctr` tests use.
pub const NAMESPACE: &str = "hearth-test";
/// The containerd namespace of the CRI's containers.
pub const CRI_NAMESPACE: &str = "k8s.io";

static PREBUILT: OnceLock<PathBuf> = OnceLock::new();

/// The third octet of the next containerd's Pod subnet in this process.
static NEXT_SUBNET: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Makes [`workspace_binary`] take Hearth's binaries from `dir` from now on
/// instead of building them; the first call wins.
pub fn use_prebuilt_binaries(dir: PathBuf) {
    let _ = PREBUILT.set(dir);
}

/// The target directory holding this test's binaries (`target/debug`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("target dir").to_path_buf()
}

/// The path of the workspace binary `name` (hearthd, hearth, the shim,
/// hearth-store),
/// built first (once per test process) so it is never stale; or, after
/// [`use_prebuilt_binaries`] (the benchmarks call it with their release
/// binaries), the binary there, not rebuilt.
pub fn workspace_binary(name: &str) -> PathBuf {
    if let Some(dir) = PREBUILT.get() {
        let path = dir.join(name);
        assert!(
            path.exists(),
            "{} is missing from the prebuilt binaries",
            path.display()
        );
        return path;
    }
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "hearth-host",
                "-p",
                "hearth-shim",
                "-p",
                "hearth-store-node",
                "--bins",
            ])
            .status()
            .expect("run cargo build");
        assert!(
            status.success(),
            "cargo build of the workspace binaries failed"
        );
    });
    let path = target_dir().join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Fails the test, naming what is missing, unless it runs as root with
/// containerd and ctr installed.
pub fn require_containerd() {
    assert!(
        nix_is_root(),
        "the shim tests drive containerd and mount rootfs: run them as root"
    );
    for binary in [CONTAINERD_BINARY, CTR_BINARY, "/usr/sbin/runc"] {
        assert!(
            Path::new(binary).exists(),
            "{binary} is missing: install Debian's containerd and runc (scripts/setup.sh does)"
        );
    }
}

/// Whether this process runs as root (effective uid 0).
pub(crate) fn nix_is_root() -> bool {
    // SAFETY-free check: /proc/self/status holds the effective uid.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

/// A private containerd; see the module docs.
pub struct Containerd {
    process: Option<Running>,
    dir: tempfile::TempDir,
    hearth_socket: PathBuf,
    /// A directory put before the workspace's shim on containerd's `PATH`.
    path_first: Option<PathBuf>,
}

impl Containerd {
    /// Starts containerd whose shims use the hearthd at `hearth_socket`, with
    /// the CRI's sandbox image `sandbox_image` and plain HTTP to `registry`
    /// (host:port) if given.
    pub fn start(hearth_socket: &Path, sandbox_image: &str, registry: Option<&str>) -> Self {
        Self::start_with_runtimes(hearth_socket, sandbox_image, registry, &[])
    }

    /// [`Containerd::start`], with more CRI runtime handlers: `(name, shim
    /// binary)` pairs, e.g. a peer's shim for a benchmark.
    pub fn start_with_runtimes(
        hearth_socket: &Path,
        sandbox_image: &str,
        registry: Option<&str>,
        extra_runtimes: &[(String, PathBuf)],
    ) -> Self {
        require_containerd();
        let dir = tempfile::Builder::new()
            .prefix("hearth-containerd-")
            .tempdir()
            .expect("temp dir");
        let root = dir.path();
        let shim = workspace_binary("containerd-shim-hearth-v1");
        for sub in ["root", "state", "cni/conf", "cni/state", "certs.d"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        if let Some(registry) = registry {
            let hosts = root.join("certs.d").join(registry);
            std::fs::create_dir_all(&hosts).unwrap();
            std::fs::write(
                hosts.join("hosts.toml"),
                format!(
                    "server = \"http://{registry}\"\n\n[host.\"http://{registry}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n"
                ),
            )
            .unwrap();
        }
        std::fs::write(
            root.join("cni/conf/10-hearth-test.conflist"),
            format!(
                r#"{{
  "cniVersion": "1.0.0",
  "name": "hearth-test",
  "plugins": [
    {{"type": "ptp", "ipMasq": false, "ipam": {{"type": "host-local", "subnet": "10.{}.{}.0/24", "routes": [{{"dst": "0.0.0.0/0"}}], "dataDir": "{}"}}}},
    {{"type": "loopback"}}
  ]
}}"#,
                // A subnet of its own per containerd: tests run side by side.
                100 + std::process::id() % 100,
                NEXT_SUBNET.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 256,
                root.join("cni/state").display()
            ),
        )
        .unwrap();
        let config = format!(
            r#"version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{root}/containerd.sock"

[ttrpc]
  address = "{root}/containerd.sock.ttrpc"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.hearth]
      runtime_type = "{shim}"
      pod_annotations = ["hearth.dev/*"]
{extra}  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{root}/cni/conf"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{root}/certs.d"
"#,
            root = root.display(),
            shim = shim.display(),
            extra = extra_runtimes
                .iter()
                .map(|(name, shim)| format!(
                    "    [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{name}]\n      runtime_type = \"{}\"\n      pod_annotations = [\"hearth.dev/*\"]\n",
                    shim.display()
                ))
                .collect::<String>(),
        );
        std::fs::write(root.join("config.toml"), config).unwrap();
        let containerd = Containerd {
            process: Some(spawn_containerd(root, hearth_socket, None)),
            dir,
            hearth_socket: hearth_socket.to_path_buf(),
            path_first: None,
        };
        containerd.wait_until_serving();
        containerd
    }

    fn wait_until_serving(&self) {
        let started = Instant::now();
        loop {
            let output = self.ctr_output(&["version"]);
            if output.status.success() {
                return;
            }
            assert!(
                started.elapsed() < patience(),
                "containerd did not start; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The gRPC socket (CRI and ctr).
    pub fn address(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// The hearthd socket its shims use.
    pub fn hearth_socket(&self) -> &Path {
        &self.hearth_socket
    }

    /// The temp dir holding everything of this containerd (root, state,
    /// sockets, CNI state): what leak checks look under.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// containerd's state directory (bundles live under it).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The containerd log so far.
    pub fn log_text(&self) -> String {
        self.process
            .as_ref()
            .map(Running::log_text)
            .unwrap_or_default()
    }

    /// containerd's pid.
    pub fn pid(&self) -> u32 {
        self.process.as_ref().map(Running::pid).unwrap_or_default()
    }

    /// Runs `ctr` against this containerd in [`NAMESPACE`].
    pub fn ctr_output(&self, args: &[&str]) -> Output {
        self.ctr_in(NAMESPACE, args).expect("run ctr")
    }

    /// Runs `ctr` against this containerd in `namespace`.
    fn ctr_in(&self, namespace: &str, args: &[&str]) -> std::io::Result<Output> {
        Command::new(CTR_BINARY)
            .arg("--address")
            .arg(self.address())
            .args(["--namespace", namespace])
            .args(args)
            .output()
    }

    /// Runs `ctr`, asserting success; its stdout.
    pub fn ctr(&self, args: &[&str]) -> String {
        let output = self.ctr_output(args);
        assert!(
            output.status.success(),
            "ctr {args:?} failed: {}{}\ncontainerd log:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log_text()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Kills containerd (as a crash would) and starts it again on the same
    /// state; running shims stay up and are reconnected.
    pub fn restart(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
        self.process = Some(spawn_containerd(
            self.dir.path(),
            &self.hearth_socket,
            self.path_first.as_deref(),
        ));
        self.wait_until_serving();
    }

    /// [`Containerd::restart`], from now on with `dir` first on containerd's
    /// `PATH` (where an installer put a shim).
    pub fn restart_with_path_first(&mut self, dir: &Path) {
        self.path_first = Some(dir.to_path_buf());
        self.restart();
    }

    /// containerd's config file (read again on each restart).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }
}

/// Starts containerd on `dir/config.toml`, `path_first` and then the shim's
/// directory first on `PATH`, and `HEARTH_SOCKET` set for its shims.
fn spawn_containerd(dir: &Path, hearth_socket: &Path, path_first: Option<&Path>) -> Running {
    let shim = workspace_binary("containerd-shim-hearth-v1");
    let path = format!(
        "{}{}:{}",
        path_first
            .map(|dir| format!("{}:", dir.display()))
            .unwrap_or_default(),
        shim.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Running::start(
        Command::new(CONTAINERD_BINARY)
            .arg("--config")
            .arg(dir.join("config.toml"))
            .env("PATH", path)
            .env("HEARTH_SOCKET", hearth_socket),
    )
}

/// Processes whose command line mentions both `binary` and `needle`.
pub fn processes_matching(binary: &str, needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            text.contains(binary) && text.contains(needle)
        })
        .collect()
}

/// Mount points under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4).map(str::to_string))
        .filter(|mount_point| mount_point.starts_with(&prefix))
        .collect()
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Kill what is left of the tests' tasks (ctr's and the CRI's) so
        // their shims exit.
        for namespace in [NAMESPACE, CRI_NAMESPACE] {
            let Ok(tasks) = self.ctr_in(namespace, &["tasks", "ls", "-q"]) else {
                continue;
            };
            for id in String::from_utf8_lossy(&tasks.stdout).lines() {
                let _ = self.ctr_in(namespace, &["tasks", "kill", "-s", "SIGKILL", id]);
                let _ = self.ctr_in(namespace, &["tasks", "delete", "-f", id]);
            }
        }
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
        let root = self.dir.path().to_string_lossy().into_owned();
        for pid in processes_matching("containerd-shim", &root) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let mut mounts = mounts_under(self.dir.path());
        mounts.sort_by_key(|mount| std::cmp::Reverse(mount.len()));
        for mount in mounts {
            let _ = Command::new("umount").args(["-l", &mount]).status();
        }
    }
}
