//! Kubernetes manifests for a pushed function (`hearth deploy`): a
//! Deployment whose Pods run with `runtimeClassName: hearth`, a Service in
//! front of it, probes, and the `hearth.dev/*` Pod annotations the shim
//! reads.
//!
//! Contract:
//! - The output is YAML documents separated by `---`, ready for `kubectl
//!   apply -f -`; the same inputs give the same text.
//! - A service (the default) gets `containerPort` = `PORT` (the env var the
//!   function listens on), a readiness probe (a TCP connect, or `GET
//!   probe_path` when given, which also becomes the liveness probe), and a
//!   ClusterIP Service `NAME:service_port → PORT`.
//! - A message handler (`subscribe` given and no port) gets neither port,
//!   probes nor Service.
//! - Names and values are checked before anything is printed: a name that
//!   Kubernetes would refuse, or an annotation the shim would refuse, is an
//!   error naming it, not a manifest the API server rejects later.

use serde_json::{Map, Value, json};

/// What `hearth deploy` was asked for.
#[derive(Debug, Clone)]
pub struct DeploySpec {
    /// The function image (as pushed by `hearth push`).
    pub image: String,
    /// The Deployment, Service, container and `app` label name.
    pub name: String,
    /// The namespace, if one is to be written into the manifests.
    pub namespace: Option<String>,
    /// Pods of the Deployment.
    pub replicas: u32,
    /// The port the function listens on (`PORT`); `None`: not a service.
    pub port: Option<u16>,
    /// The Service's port.
    pub service_port: u16,
    /// `GET` this path for readiness and liveness instead of a TCP connect.
    pub probe_path: Option<String>,
    /// Environment (`wasi:cli` environment and `wasi:config` values).
    pub env: Vec<(String, String)>,
    /// `resources.limits.memory` (e.g. `128Mi`): caps the function's memory.
    pub memory: Option<String>,
    /// `resources.limits.cpu` (e.g. `500m`).
    pub cpu: Option<String>,
    /// The RuntimeClass name.
    pub runtime_class: String,
    /// `hearth.dev/*` Pod annotations (`min-idle`, `subscribe`, ...).
    pub annotations: Vec<(String, String)>,
}

/// Why manifests could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not a DNS-1035 label (what Service and container names must be).
    #[error(
        "`{0}` is not a valid name: lowercase letters, digits and `-`, starting with a letter, at most 63 characters (pass --name)"
    )]
    BadName(String),
    /// An annotation the shim does not read.
    #[error("`{0}` is not a hearth.dev annotation this version reads ({1})")]
    BadAnnotation(String, String),
}

/// The `hearth.dev/*` annotations the shim reads (see deploy/README.md).
pub const ANNOTATIONS: &[&str] = &[
    "min-idle",
    "max-invocations",
    "instance-concurrency",
    "subscribe",
    "app",
    "outbound-hosts",
    "shared-stores",
    "publish-topics",
];

/// A DNS-1035 label: what Kubernetes requires of Service names.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The name a function gets from its image reference: the last path segment
/// of the repository (`registry:5000/team/hello:1` → `hello`).
pub fn name_from_image(image: &str) -> String {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    let repository = last.split(':').next().unwrap_or(last);
    repository
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .trim_matches('-')
        .to_string()
}

/// The manifests, as JSON values (Deployment, then Service if any).
pub fn manifests(spec: &DeploySpec) -> Result<Vec<Value>, ManifestError> {
    if !valid_name(&spec.name) {
        return Err(ManifestError::BadName(spec.name.clone()));
    }
    let mut annotations = Map::new();
    for (key, value) in &spec.annotations {
        let short = key.strip_prefix("hearth.dev/").unwrap_or(key);
        if !ANNOTATIONS.contains(&short) {
            return Err(ManifestError::BadAnnotation(
                key.clone(),
                ANNOTATIONS.join(", "),
            ));
        }
        annotations.insert(format!("hearth.dev/{short}"), json!(value));
    }
    let metadata = |kind_labels: bool| {
        let mut metadata = Map::new();
        metadata.insert("name".into(), json!(spec.name));
        if let Some(namespace) = &spec.namespace {
            metadata.insert("namespace".into(), json!(namespace));
        }
        if kind_labels {
            metadata.insert(
                "labels".into(),
                json!({"app": spec.name, "app.kubernetes.io/managed-by": "hearth"}),
            );
        }
        Value::Object(metadata)
    };

    let mut env: Vec<Value> = Vec::new();
    if let Some(port) = spec.port
        && !spec.env.iter().any(|(key, _)| key == "PORT")
    {
        env.push(json!({"name": "PORT", "value": port.to_string()}));
    }
    for (key, value) in &spec.env {
        env.push(json!({"name": key, "value": value}));
    }
    let mut container = Map::new();
    container.insert("name".into(), json!(spec.name));
    container.insert("image".into(), json!(spec.image));
    if !env.is_empty() {
        container.insert("env".into(), Value::Array(env));
    }
    if let Some(port) = spec.port {
        container.insert(
            "ports".into(),
            json!([{"name": "http", "containerPort": port}]),
        );
        let probe = match &spec.probe_path {
            Some(path) => json!({"httpGet": {"path": path, "port": port}}),
            None => json!({"tcpSocket": {"port": port}}),
        };
        let mut readiness = probe.clone();
        readiness["periodSeconds"] = json!(2);
        container.insert("readinessProbe".into(), readiness);
        if spec.probe_path.is_some() {
            let mut liveness = probe;
            liveness["periodSeconds"] = json!(10);
            liveness["failureThreshold"] = json!(3);
            container.insert("livenessProbe".into(), liveness);
        }
    }
    let mut limits = Map::new();
    if let Some(memory) = &spec.memory {
        limits.insert("memory".into(), json!(memory));
    }
    if let Some(cpu) = &spec.cpu {
        limits.insert("cpu".into(), json!(cpu));
    }
    if !limits.is_empty() {
        container.insert("resources".into(), json!({"limits": limits}));
    }

    let mut pod_metadata = Map::new();
    pod_metadata.insert("labels".into(), json!({"app": spec.name}));
    if !annotations.is_empty() {
        pod_metadata.insert("annotations".into(), Value::Object(annotations));
    }
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(true),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": {"app": spec.name}},
            "template": {
                "metadata": pod_metadata,
                "spec": {
                    "runtimeClassName": spec.runtime_class,
                    "containers": [container],
                },
            },
        },
    });
    let mut documents = vec![deployment];
    if let Some(port) = spec.port {
        documents.push(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(true),
            "spec": {
                "selector": {"app": spec.name},
                "ports": [{"name": "http", "port": spec.service_port, "targetPort": port}],
            },
        }));
    }
    Ok(documents)
}

/// The manifests as YAML documents separated by `---`.
pub fn to_yaml(documents: &[Value]) -> String {
    documents
        .iter()
        .map(|document| serde_yaml::to_string(document).expect("JSON values are YAML"))
        .collect::<Vec<_>>()
        .join("---\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_repository() {
        assert_eq!(name_from_image("127.0.0.1:5000/team/hello:1"), "hello");
        assert_eq!(
            name_from_image("registry.example.com/Kv_Counter@sha256:ab"),
            "kv-counter"
        );
        assert!(valid_name("hello-2"));
        assert!(!valid_name("2hello"));
        assert!(!valid_name("Hello"));
        assert!(!valid_name(&"a".repeat(64)));
    }
}
