//! A real single-node Kubernetes (1.20, from Debian's source package) in
//! front of the tests' private containerd, hearthd and registry, driven
//! through `kubectl` as an operator would.
//!
//! # Contract
//!
//! * [`Cluster::start`] starts a [`Node`] (hearthd, a registry, containerd
//!   with the Hearth shim as runtime `hearth`, runc for ordinary Pods and
//!   a busybox pause image), then `up.sh` starts etcd, the API server,
//!   scheduler, controller-manager, kubelet and kube-proxy against that
//!   containerd, and the RuntimeClass `hearth`. The Kubernetes binaries come
//!   from `build.sh`'s cache (`~/.cache/hearth-kube`); a missing binary,
//!   a missing Debian package or no root fails with what is missing.
//! * Dropping it runs `down.sh`: Pods deleted through the API, every
//!   process stopped by PID, sysctls, iptables chains, cgroups, mounts and
//!   Pod log directories restored or removed; then the node stops.
//! * Everything the cluster writes lives in a temp dir, except what
//!   kubelet 1.20 hard-codes (`/var/log/pods`, `/var/log/containers`),
//!   which `down.sh` cleans for the Pods it ran.

pub mod image;

use hearth_testkit::node::{Node, NodeOptions, busybox_pause_image, wait_until};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The directory of this crate (its scripts).
pub fn rig_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A running cluster; see the module docs.
pub struct Cluster {
    /// up.sh's work dir: logs, kubeconfig, pids.
    pub work: PathBuf,
    /// The kubectl binary.
    pub kubectl: PathBuf,
    /// The node under it (hearthd, registry, containerd).
    pub node: Node,
}

impl Cluster {
    /// Starts the node and the cluster (see the module docs).
    pub fn start() -> Cluster {
        assert!(
            is_root(),
            "the kube tests need root (containerd, the kubelet, iptables)"
        );
        let build = Command::new(rig_dir().join("build.sh"))
            .status()
            .expect("run tests/kube/build.sh");
        assert!(build.success(), "tests/kube/build.sh failed");
        let node = Node::start_with(NodeOptions {
            pause_image: Some(busybox_pause_image()),
            ..NodeOptions::default()
        });
        let work = node.dir.path().join("kube");
        let up = Command::new(rig_dir().join("up.sh"))
            .arg(node.containerd.address())
            .arg(&work)
            .stderr(Stdio::inherit())
            .output()
            .expect("run tests/kube/up.sh");
        let cluster = Cluster {
            kubectl: bin_dir().join("kubectl"),
            work,
            node,
        };
        assert!(
            up.status.success(),
            "tests/kube/up.sh failed; logs in {}",
            cluster.work.join("log").display()
        );
        wait_until("the node is Ready", || {
            cluster
                .kubectl_text(&[
                    "get",
                    "node",
                    "localhost",
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                ])
                .trim()
                == "True"
        });
        cluster
    }

    /// `kubectl ARGS` against this cluster.
    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.kubectl);
        command
            .arg("--kubeconfig")
            .arg(self.work.join("kubeconfig"))
            .args(args);
        command
    }

    /// Runs `kubectl ARGS` to the end.
    pub fn kubectl_output(&self, args: &[&str]) -> Output {
        self.kubectl_command(args).output().expect("run kubectl")
    }

    /// `kubectl ARGS`' stdout; panics with its stderr when it fails.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let output = self.kubectl_output(args);
        assert!(
            output.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `kubectl ARGS`' stdout, or "" when it fails (for polling).
    pub fn kubectl_text(&self, args: &[&str]) -> String {
        let output = self.kubectl_output(args);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `kubectl apply -f -` with `yaml`.
    pub fn apply(&self, yaml: &str) {
        use std::io::Write;
        let mut child = self
            .kubectl_command(&["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl apply");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "kubectl apply:\n{yaml}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// A JSON view of `kubectl get ARGS -o json`.
    pub fn get_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.kubectl(&all)).expect("kubectl printed JSON")
    }

    /// The Pods matching `selector`, as JSON objects.
    pub fn pods(&self, selector: &str) -> Vec<serde_json::Value> {
        self.get_json(&["pods", "-l", selector])["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits (up to `patience`) until `done`, saying what it waited for.
    pub fn wait_for(&self, what: &str, patience: Duration, mut done: impl FnMut() -> bool) {
        let started = std::time::Instant::now();
        while !done() {
            if started.elapsed() > patience {
                panic!(
                    "timed out after {patience:?} waiting until {what}\n--- pods:\n{}\n--- events:\n{}",
                    self.kubectl_text(&["get", "pods", "-o", "wide"]),
                    self.kubectl_text(&["get", "events", "--sort-by=.lastTimestamp"])
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The running functions hearthd holds.
    pub fn hearthd_functions(&self) -> usize {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(self.node.hearthd_functions())
    }

    /// A log file of the cluster (`kubelet`, `kube-apiserver`, ...).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.work.join("log").join(format!("{name}.log")))
            .unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let down = Command::new(rig_dir().join("down.sh"))
            .arg(&self.work)
            .status();
        if !matches!(down, Ok(status) if status.success()) {
            eprintln!(
                "tests/kube/down.sh {} failed: {down:?}",
                self.work.display()
            );
        }
    }
}

/// Where build.sh puts the binaries.
pub fn bin_dir() -> PathBuf {
    let cache = std::env::var_os("HEARTH_KUBE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(&std::env::var_os("HOME").expect("$HOME")).join(".cache/hearth-kube")
        });
    cache.join("bin")
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}
