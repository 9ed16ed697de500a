//! What the shim reads from a bundle's OCI runtime spec (`config.json`).
//!
//! # Contract
//!
//! * A container is the Pod's **sandbox** when its
//!   `io.kubernetes.cri.container-type` annotation is `sandbox`; every other
//!   container is a **function**.
//! * The shim **grouping** (one shim process per group) is the
//!   `io.kubernetes.cri.sandbox-id` annotation, else the container id. Ids
//!   used this way must be plain names ([`check_id`]): no `/`, no `..`.
//! * A function's component is `process.args[0]` resolved inside the
//!   mounted rootfs ([`find_entrypoint`]): a path that escapes the rootfs,
//!   through `..` or a symlink, is refused, never followed; a file that is
//!   not WebAssembly is refused. Only when the rootfs is empty (an artifact
//!   containerd does not unpack) is the component pulled by the
//!   `io.kubernetes.cri.image-name` reference instead (the artifact form);
//!   an ordinary image without a component fails, naming the image.
//! * The function listens on `0.0.0.0:$PORT` from the process env, default
//!   [`DEFAULT_PORT`], in the network namespace the spec names (a path); no
//!   network namespace entry means the host's network.

use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

/// Annotation holding the Pod sandbox's id.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
/// Annotation saying whether a container is the sandbox.
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";
/// Annotation holding the image reference CRI pulled.
pub const IMAGE_NAME_ANNOTATION: &str = "io.kubernetes.cri.image-name";
/// Annotation holding the container's name in the Pod.
pub const CONTAINER_NAME_ANNOTATION: &str = "io.kubernetes.cri.container-name";
/// Annotation holding the Pod's Kubernetes namespace (set by containerd's
/// CRI plugin; a Pod cannot set it, as only `hearth.dev/*` Pod annotations
/// are passed through).
pub const SANDBOX_NAMESPACE_ANNOTATION: &str = "io.kubernetes.cri.sandbox-namespace";
/// Pod annotation: the function's app (default: the container's name).
pub const APP_ANNOTATION: &str = "hearth.dev/app";
/// Pod annotation: outbound hosts, narrowing the namespace's policy.
pub const OUTBOUND_HOSTS_ANNOTATION: &str = "hearth.dev/outbound-hosts";
/// Pod annotation: shared stores, narrowing the namespace's policy.
pub const SHARED_STORES_ANNOTATION: &str = "hearth.dev/shared-stores";
/// Pod annotation: topics it may publish to, narrowing the policy.
pub const PUBLISH_TOPICS_ANNOTATION: &str = "hearth.dev/publish-topics";
/// Pod annotation: idle instances hearthd keeps ready for the function.
pub const MIN_IDLE_ANNOTATION: &str = "hearth.dev/min-idle";
/// Pod annotation: calls an instance serves before it retires.
pub const MAX_INVOCATIONS_ANNOTATION: &str = "hearth.dev/max-invocations";
/// Pod annotation: message subscriptions, `topic[@group][,...]`.
pub const SUBSCRIBE_ANNOTATION: &str = "hearth.dev/subscribe";
/// Requests one WASI 0.3 instance takes at once.
pub const INSTANCE_CONCURRENCY_ANNOTATION: &str = "hearth.dev/instance-concurrency";
/// Where `hearth push` puts the component in an image (the default
/// entrypoint), as `hearth_prewarm::image::IMAGE_WASM_PATH` defines it; the
/// shim does not link the OCI code, so the path is repeated here.
pub const IMAGE_WASM_PATH: &str = "/function.wasm";
/// Port a function listens on when `$PORT` is not set.
pub const DEFAULT_PORT: u16 = 8080;

/// The parts of `config.json` the shim uses.
#[derive(Debug, Default, Deserialize)]
pub struct BundleSpec {
    /// Annotations.
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// The process to run.
    #[serde(default)]
    pub process: Option<Process>,
    /// The root filesystem.
    #[serde(default)]
    pub root: Option<Root>,
    /// The hostname for a new UTS namespace.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Linux specifics.
    #[serde(default)]
    pub linux: Option<Linux>,
    /// Mounts (the kubelet's volumes among them).
    #[serde(default)]
    pub mounts: Vec<Mount>,
}

/// One entry of `mounts`.
#[derive(Debug, Default, Deserialize)]
pub struct Mount {
    /// Where it appears in the container.
    #[serde(default)]
    pub destination: String,
    /// What is mounted (a host path for a bind mount).
    #[serde(default)]
    pub source: String,
}

/// The path segment of a kubelet ConfigMap volume:
/// `<kubelet root>/pods/<uid>/volumes/kubernetes.io~configmap/<volume>`.
const CONFIGMAP_VOLUME: &str = "/volumes/kubernetes.io~configmap/";

/// `process`.
#[derive(Debug, Default, Deserialize)]
pub struct Process {
    /// argv.
    #[serde(default)]
    pub args: Vec<String>,
    /// `KEY=value` pairs.
    #[serde(default)]
    pub env: Vec<String>,
}

/// `root`.
#[derive(Debug, Default, Deserialize)]
pub struct Root {
    /// Relative to the bundle, or absolute.
    pub path: String,
}

/// `linux`.
#[derive(Debug, Default, Deserialize)]
pub struct Linux {
    /// Namespaces to join (with a path) or create (without).
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    /// The container's resource limits.
    #[serde(default)]
    pub resources: Option<Resources>,
}

/// `linux.resources` (the parts hearthd turns into limits).
#[derive(Debug, Default, Deserialize)]
pub struct Resources {
    /// `memory`.
    #[serde(default)]
    pub memory: Option<MemoryResources>,
    /// `cpu`.
    #[serde(default)]
    pub cpu: Option<CpuResources>,
}

/// `linux.resources.memory`.
#[derive(Debug, Default, Deserialize)]
pub struct MemoryResources {
    /// The limit in bytes (absent, 0 or negative: none).
    #[serde(default)]
    pub limit: Option<i64>,
}

/// `linux.resources.cpu`.
#[derive(Debug, Default, Deserialize)]
pub struct CpuResources {
    /// CPU time per period, µs (absent, 0 or negative: no limit).
    #[serde(default)]
    pub quota: Option<i64>,
    /// The period, µs.
    #[serde(default)]
    pub period: Option<u64>,
}

/// One `linux.namespaces` entry.
#[derive(Debug, Default, Deserialize)]
pub struct Namespace {
    /// `network`, `ipc`, `uts`, `pid`, `mount`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// Join this namespace; absent: create a new one.
    #[serde(default)]
    pub path: Option<String>,
}

/// A spec that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// `config.json` is missing or unreadable.
    #[error("cannot read {path}: {cause}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// `config.json` is not a runtime spec.
    #[error("{path} is not a valid OCI runtime spec: {cause}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: serde_json::Error,
    },
    /// An id or annotation that could escape a directory.
    #[error("{what} `{value}` is not a plain name (letters, digits, `-`, `_`, `.`; no `..`)")]
    UnsafeName {
        /// Which value.
        what: &'static str,
        /// The value.
        value: String,
    },
}

/// The namespace changes a process holding a container's namespaces makes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NamespacePlan {
    /// Join this network namespace.
    pub join_network: Option<String>,
    /// Create a new network namespace.
    pub new_network: bool,
    /// Create a new IPC namespace.
    pub new_ipc: bool,
    /// Create a new UTS namespace (and set this hostname in it).
    pub new_uts: Option<String>,
}

impl BundleSpec {
    /// Reads `<bundle>/config.json`.
    pub fn load(bundle: &Path) -> Result<Self, SpecError> {
        let path = bundle.join("config.json");
        let text = std::fs::read(&path).map_err(|cause| SpecError::Unreadable {
            path: path.clone(),
            cause,
        })?;
        serde_json::from_slice(&text).map_err(|cause| SpecError::Malformed { path, cause })
    }

    /// Whether this is the Pod's sandbox container.
    pub fn is_sandbox(&self) -> bool {
        self.annotation(CONTAINER_TYPE_ANNOTATION) == Some("sandbox")
    }

    /// An annotation's value, if set and not empty.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations
            .get(key)
            .map(String::as_str)
            .filter(|value| !value.is_empty())
    }

    /// The shim grouping for a container with id `id`: its sandbox id, else
    /// `id` itself.
    pub fn grouping(&self, id: &str) -> Result<String, SpecError> {
        match self.annotation(SANDBOX_ID_ANNOTATION) {
            Some(sandbox) => check_id("the sandbox-id annotation", sandbox).map(str::to_string),
            None => check_id("the container id", id).map(str::to_string),
        }
    }

    /// The rootfs directory: `root.path`, relative to `bundle` unless
    /// absolute; `rootfs` when the spec has none.
    pub fn rootfs(&self, bundle: &Path) -> PathBuf {
        let path = self.root.as_ref().map(|root| root.path.as_str());
        bundle.join(path.filter(|p| !p.is_empty()).unwrap_or("rootfs"))
    }

    /// argv.
    pub fn args(&self) -> &[String] {
        self.process
            .as_ref()
            .map(|p| p.args.as_slice())
            .unwrap_or(&[])
    }

    /// The process environment as pairs; entries without `=` are skipped.
    pub fn env(&self) -> Vec<(String, String)> {
        let entries = self
            .process
            .as_ref()
            .map(|p| p.env.as_slice())
            .unwrap_or(&[]);
        entries
            .iter()
            .filter_map(|entry| entry.split_once('='))
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    /// The Pod's memory limit in bytes and CPU limit in millicores (0: none).
    pub fn resource_limits(&self) -> (u64, u64) {
        let resources = self.linux.as_ref().and_then(|l| l.resources.as_ref());
        let memory = resources
            .and_then(|r| r.memory.as_ref())
            .and_then(|m| m.limit)
            .filter(|limit| *limit > 0)
            .map_or(0, |limit| limit as u64);
        let cpu = resources
            .and_then(|r| r.cpu.as_ref())
            .and_then(|c| match (c.quota, c.period) {
                (Some(quota), Some(period)) if quota > 0 && period > 0 => {
                    Some((quota as u64).saturating_mul(1000).div_ceil(period))
                }
                _ => None,
            })
            .unwrap_or(0);
        (memory, cpu)
    }

    /// A comma-separated list annotation: `None` when not set; set to `""`
    /// it is the empty list (narrowed to nothing).
    pub fn list_annotation(&self, key: &str) -> Option<Vec<String>> {
        let value = self.annotations.get(key)?;
        Some(
            value
                .split(',')
                .map(str::trim)
                .filter(|entry| !entry.is_empty())
                .map(str::to_string)
                .collect(),
        )
    }

    /// The pool settings the Pod asks for with the `hearth.dev/min-idle` and
    /// `hearth.dev/max-invocations` annotations (containerd passes Pod
    /// annotations matching the runtime's `pod_annotations` into every
    /// container's spec): `(min_idle, max_invocations)`, 0 where unset.
    pub fn pool_annotations(&self) -> Result<(u32, u32), String> {
        Ok((
            self.number_annotation(MIN_IDLE_ANNOTATION)?,
            self.number_annotation(MAX_INVOCATIONS_ANNOTATION)?,
        ))
    }

    /// `hearth.dev/instance-concurrency`: requests one WASI 0.3 instance
    /// takes at once; 0 where unset.
    pub fn instance_concurrency(&self) -> Result<u32, String> {
        self.number_annotation(INSTANCE_CONCURRENCY_ANNOTATION)
    }

    fn number_annotation(&self, key: &str) -> Result<u32, String> {
        match self.annotation(key) {
            None => Ok(0),
            Some(value) => value
                .trim()
                .parse::<u32>()
                .map_err(|_| format!("annotation {key} must be a whole number, got `{value}`")),
        }
    }

    /// Where a function service listens: `0.0.0.0:$PORT`.
    pub fn listen_address(&self) -> Result<String, String> {
        let port = match self.env().into_iter().find(|(key, _)| key == "PORT") {
            None => DEFAULT_PORT,
            Some((_, value)) => value
                .parse::<u16>()
                .ok()
                .filter(|port| *port != 0)
                .ok_or_else(|| format!("PORT must be a port number 1-65535, got `{value}`"))?,
        };
        Ok(format!("0.0.0.0:{port}"))
    }

    /// The host directories of the Pod's ConfigMap volumes mounted in this
    /// container, in mount order: a function has no filesystem, so their
    /// files become `wasi:config` values (see
    /// `hearth_host::capabilities::config`). Other volumes are not read.
    pub fn configmap_dirs(&self) -> Vec<String> {
        self.mounts
            .iter()
            .filter(|mount| {
                mount.source.starts_with('/')
                    && mount.source.contains(CONFIGMAP_VOLUME)
                    && !mount.source.split('/').any(|part| part == "..")
            })
            .map(|mount| mount.source.clone())
            .collect()
    }

    fn namespace(&self, kind: &str) -> Option<&Namespace> {
        self.linux
            .as_ref()?
            .namespaces
            .iter()
            .find(|namespace| namespace.kind == kind)
    }

    /// The network namespace to join by path, if the spec names one.
    pub fn network_namespace_path(&self) -> Option<&str> {
        self.namespace("network")?
            .path
            .as_deref()
            .filter(|path| !path.is_empty())
    }

    /// What a namespace-holding process for this container must do: join the
    /// network namespace named by path, or create the namespaces listed
    /// without one (network, IPC, UTS).
    pub fn namespace_plan(&self) -> NamespacePlan {
        let creates = |kind: &str| {
            self.namespace(kind)
                .is_some_and(|ns| ns.path.as_deref().unwrap_or_default().is_empty())
        };
        NamespacePlan {
            join_network: self.network_namespace_path().map(str::to_string),
            new_network: creates("network"),
            new_ipc: creates("ipc"),
            new_uts: creates("uts").then(|| self.hostname.clone().unwrap_or_default()),
        }
    }
}

/// Checks that `value` is a plain name safe to use in paths and socket names.
pub fn check_id<'a>(what: &'static str, value: &'a str) -> Result<&'a str, SpecError> {
    let plain = !value.is_empty()
        && value.len() <= 256
        && value != "."
        && value != ".."
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if plain {
        Ok(value)
    } else {
        Err(SpecError::UnsafeName {
            what,
            value: value.to_string(),
        })
    }
}

/// Where a function's component is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entrypoint {
    /// A file inside the mounted rootfs.
    File(PathBuf),
    /// The rootfs has no such file: pull this image reference.
    Image(String),
}

/// Why no component could be found.
#[derive(Debug, thiserror::Error)]
pub enum EntrypointError {
    /// `process.args[0]` points outside the rootfs.
    #[error("the entrypoint `{entry}` escapes the container's rootfs")]
    Escapes {
        /// The entrypoint.
        entry: String,
    },
    /// The rootfs holds files but no component at the entrypoint (an
    /// ordinary container image), or an empty rootfs has no image reference.
    #[error(
        "image {image} holds no WebAssembly component: {looked_for} is not in its rootfs; build the image with `hearth push` or give the component's path as the container's command"
    )]
    NoWasm {
        /// The image (or `(no image reference)`).
        image: String,
        /// What was looked for.
        looked_for: String,
    },
    /// The entrypoint is a file but not WebAssembly.
    #[error(
        "image {image} holds no WebAssembly component: its entrypoint {entry} is not a WebAssembly file"
    )]
    NotWasm {
        /// The image (or `(no image reference)`).
        image: String,
        /// The entrypoint.
        entry: String,
    },
}

/// Finds the function's component: `args[0]` (default `/function.wasm`)
/// inside `rootfs`. Every path is resolved inside `rootfs`; one that escapes
/// (by `..` or a symlink) fails, as does a file that is not WebAssembly.
/// Only an empty rootfs (containerd pulled an artifact it does not unpack)
/// falls back to the image reference, for hearthd to pull; a rootfs with
/// files but no component is an ordinary container image and fails, naming
/// the image.
pub fn find_entrypoint(spec: &BundleSpec, rootfs: &Path) -> Result<Entrypoint, EntrypointError> {
    let image = spec.annotation(IMAGE_NAME_ANNOTATION);
    let image_name = || image.unwrap_or("(no image reference)").to_string();
    let entry = match spec.args().first().map(String::as_str) {
        Some(entry) if !entry.is_empty() => entry,
        _ => IMAGE_WASM_PATH,
    };
    if let Some(found) = resolve_inside(rootfs, entry)? {
        let mut magic = [0u8; 4];
        let is_wasm = std::fs::File::open(&found)
            .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut magic))
            .is_ok()
            && magic == *b"\0asm";
        if !is_wasm {
            return Err(EntrypointError::NotWasm {
                image: image_name(),
                entry: entry.to_string(),
            });
        }
        return Ok(Entrypoint::File(found));
    }
    let rootfs_is_empty = std::fs::read_dir(rootfs)
        .map(|mut entries| entries.next().is_none())
        .unwrap_or(true);
    match image {
        Some(image) if rootfs_is_empty => Ok(Entrypoint::Image(image.to_string())),
        _ => Err(EntrypointError::NoWasm {
            image: image_name(),
            looked_for: entry.to_string(),
        }),
    }
}

/// `entry` inside `rootfs`, if it is a regular file there.
fn resolve_inside(rootfs: &Path, entry: &str) -> Result<Option<PathBuf>, EntrypointError> {
    let escapes = || EntrypointError::Escapes {
        entry: entry.to_string(),
    };
    let relative = Path::new(entry.trim_start_matches('/'));
    if relative
        .components()
        .any(|component| !matches!(component, Component::Normal(_)))
    {
        return Err(escapes());
    }
    let joined = rootfs.join(relative);
    let Ok(resolved) = joined.canonicalize() else {
        return Ok(None);
    };
    let root = rootfs.canonicalize().map_err(|_| escapes())?;
    if !resolved.starts_with(&root) {
        return Err(escapes());
    }
    Ok(resolved.is_file().then_some(resolved))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `config.json` files containerd 1.6's CRI wrote for a sandbox and a
    /// wasm container, kept in the repository so a fresh clone has them.
    fn fixture(name: &str) -> BundleSpec {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/cri")
            .join(name);
        let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_slice(&text).unwrap()
    }

    #[test]
    fn reads_the_cri_sandbox_and_container_fixtures() {
        let sandbox = fixture("sandbox-config.json");
        assert!(sandbox.is_sandbox());
        assert_eq!(
            sandbox.grouping("ignored").unwrap(),
            "0db6e8302ce75d4d0f4b0cf83b98feea6f478ce5ba64abd2bb3c41d89ffef4ec"
        );
        // A host-network sandbox: no network namespace; new IPC namespace.
        let plan = sandbox.namespace_plan();
        assert_eq!(plan.join_network, None);
        assert!(!plan.new_network);
        assert!(plan.new_ipc);

        let container = fixture("container-config.json");
        assert!(!container.is_sandbox());
        assert_eq!(
            container.grouping("ignored").unwrap(),
            "14361ccc91122a12d42c938844f93546a8703d96e918df73c019e8cf4ce87f85"
        );
        assert_eq!(
            container.network_namespace_path(),
            Some("/proc/18509/ns/net")
        );
        assert_eq!(container.listen_address().unwrap(), "0.0.0.0:8080");
        assert!(container.env().contains(&("FOO".into(), "bar".into())));
    }

    #[test]
    fn a_container_without_a_sandbox_groups_by_its_own_id() {
        let spec = BundleSpec::default();
        assert_eq!(spec.grouping("job-1").unwrap(), "job-1");
    }

    #[test]
    fn ids_that_could_escape_are_refused() {
        for bad in ["../x", "a/b", "..", "", "a b", "x\0"] {
            assert!(check_id("id", bad).is_err(), "{bad:?} accepted");
        }
        let mut spec = BundleSpec::default();
        spec.annotations
            .insert(SANDBOX_ID_ANNOTATION.into(), "../../etc".into());
        let error = spec.grouping("ok").unwrap_err().to_string();
        assert!(error.contains("sandbox-id"), "{error}");
    }

    #[test]
    fn port_comes_from_the_env() {
        let mut spec = BundleSpec {
            process: Some(Process {
                args: vec![],
                env: vec!["PORT=9090".into()],
            }),
            ..BundleSpec::default()
        };
        assert_eq!(spec.listen_address().unwrap(), "0.0.0.0:9090");
        spec.process.as_mut().unwrap().env = vec!["PORT=http".into()];
        assert!(spec.listen_address().unwrap_err().contains("PORT"));
    }

    #[test]
    fn only_configmap_volumes_become_config_dirs() {
        let mount = |destination: &str, source: &str| Mount {
            destination: destination.into(),
            source: source.into(),
        };
        let pod = "/var/lib/kubelet/pods/0f4c";
        let spec = BundleSpec {
            mounts: vec![
                mount("/etc/hosts", &format!("{pod}/etc-hosts")),
                mount(
                    "/etc/cm",
                    &format!("{pod}/volumes/kubernetes.io~configmap/cm"),
                ),
                mount(
                    "/var/run/secrets/kubernetes.io/serviceaccount",
                    &format!("{pod}/volumes/kubernetes.io~secret/token"),
                ),
                mount("/data", "/srv/data"),
                mount(
                    "/etc/other",
                    &format!("{pod}/volumes/kubernetes.io~configmap/other"),
                ),
                mount(
                    "/x",
                    &format!("{pod}/volumes/kubernetes.io~configmap/../../../../etc"),
                ),
            ],
            ..BundleSpec::default()
        };
        assert_eq!(
            spec.configmap_dirs(),
            vec![
                format!("{pod}/volumes/kubernetes.io~configmap/cm"),
                format!("{pod}/volumes/kubernetes.io~configmap/other"),
            ]
        );
    }

    #[test]
    fn entrypoint_is_found_inside_the_rootfs_and_never_outside() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        std::fs::write(rootfs.join("function.wasm"), b"\0asm").unwrap();
        std::fs::write(dir.path().join("secret.wasm"), b"\0asm").unwrap();
        std::os::unix::fs::symlink("../secret.wasm", rootfs.join("link.wasm")).unwrap();
        let with_entry = |entry: &str, image: Option<&str>| {
            let mut spec = BundleSpec {
                process: Some(Process {
                    args: vec![entry.into()],
                    env: vec![],
                }),
                ..BundleSpec::default()
            };
            if let Some(image) = image {
                spec.annotations
                    .insert(IMAGE_NAME_ANNOTATION.into(), image.into());
            }
            spec
        };

        let found = find_entrypoint(&with_entry("/function.wasm", None), &rootfs).unwrap();
        assert_eq!(
            found,
            Entrypoint::File(rootfs.canonicalize().unwrap().join("function.wasm"))
        );
        for escaping in ["/../secret.wasm", "/link.wasm"] {
            let error = find_entrypoint(&with_entry(escaping, None), &rootfs).unwrap_err();
            assert!(
                matches!(error, EntrypointError::Escapes { .. }),
                "{escaping}"
            );
        }
        // An ordinary image: files, but no component. The error names it.
        let error =
            find_entrypoint(&with_entry("/missing.wasm", Some("reg/fn:1")), &rootfs).unwrap_err();
        assert!(
            matches!(error, EntrypointError::NoWasm { .. })
                && error.to_string().contains("reg/fn:1")
                && error.to_string().contains("/missing.wasm"),
            "{error}"
        );
        std::fs::write(rootfs.join("pause"), b"#!/bin/sh\n").unwrap();
        let error =
            find_entrypoint(&with_entry("/pause", Some("reg/pause:3")), &rootfs).unwrap_err();
        assert!(
            matches!(error, EntrypointError::NotWasm { .. })
                && error.to_string().contains("reg/pause:3"),
            "{error}"
        );
        // An empty rootfs (an artifact containerd does not unpack) is pulled
        // by reference.
        let empty = dir.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let pulled = find_entrypoint(&with_entry("/function.wasm", Some("reg/fn:1")), &empty);
        assert_eq!(pulled.unwrap(), Entrypoint::Image("reg/fn:1".into()));
        let error = find_entrypoint(&with_entry("/function.wasm", None), &empty).unwrap_err();
        assert!(error.to_string().contains("/function.wasm"), "{error}");
    }

    #[test]
    fn pool_annotations_are_read_and_malformed_ones_named() {
        let mut spec = BundleSpec::default();
        assert_eq!(spec.pool_annotations(), Ok((0, 0)));
        spec.annotations
            .insert(MIN_IDLE_ANNOTATION.into(), "3".into());
        spec.annotations
            .insert(MAX_INVOCATIONS_ANNOTATION.into(), "10".into());
        assert_eq!(spec.pool_annotations(), Ok((3, 10)));
        spec.annotations
            .insert(MIN_IDLE_ANNOTATION.into(), "lots".into());
        let error = spec.pool_annotations().unwrap_err();
        assert!(
            error.contains("hearth.dev/min-idle") && error.contains("lots"),
            "{error}"
        );
    }
}
