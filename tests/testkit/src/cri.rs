//! A CRI client that plays kubelet against a [`Containerd`]: pull, run a Pod
//! sandbox with the `hearth` runtime handler, create/start/stop containers,
//! read their status, and remove the Pod, the calls and fields kubelet uses.
//!
//! Every call returns the CRI's `tonic::Status` on failure so tests can
//! check error messages; the client is cheap to clone for concurrent Pods.

use crate::containerd::Containerd;
use k8s_cri::v1 as api;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use tonic::transport::Channel;

pub use k8s_cri::v1::ContainerState;

/// The RuntimeClass handler the tests' containerd config names `hearth`.
pub const HEARTH_HANDLER: &str = "hearth";

/// A CRI client over containerd's gRPC socket.
#[derive(Clone)]
pub struct Cri {
    runtime: api::runtime_service_client::RuntimeServiceClient<Channel>,
    images: api::image_service_client::ImageServiceClient<Channel>,
}

/// Where a Pod's network lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// `hostNetwork: true`: the node's network namespace.
    Host,
    /// Its own network namespace, set up by CNI (`ptp` in the tests).
    Pod,
}

/// How a Pod is run besides its name and network.
#[derive(Debug, Clone, Copy)]
pub struct PodOptions<'a> {
    /// The CRI runtime handler ([`HEARTH_HANDLER`], `runc`, a peer's).
    pub handler: &'a str,
    /// Pod annotations, e.g. `("hearth.dev/min-idle", "2")`.
    pub annotations: &'a [(&'a str, &'a str)],
    /// Its Kubernetes namespace.
    pub namespace: &'a str,
}

impl Default for PodOptions<'_> {
    fn default() -> Self {
        PodOptions {
            handler: HEARTH_HANDLER,
            annotations: &[],
            namespace: "default",
        }
    }
}

/// A running Pod sandbox.
#[derive(Debug, Clone)]
pub struct Pod {
    /// The sandbox id containerd assigned.
    pub sandbox_id: String,
    /// The config it was run with (CreateContainer needs it again).
    pub config: api::PodSandboxConfig,
    /// The Pod IP (CNI's), for Pod-network Pods.
    pub ip: Option<IpAddr>,
    /// The directory holding its containers' CRI log files.
    pub log_dir: PathBuf,
}

impl Pod {
    /// The CRI log file of container `name` (what `kubectl logs` reads).
    pub fn log_file(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}_0.log"))
    }
}

/// A container to create in a Pod.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec<'a> {
    /// Its name in the Pod.
    pub name: &'a str,
    /// The image reference (pulled first).
    pub image: &'a str,
    /// Environment variables.
    pub env: &'a [(&'a str, &'a str)],
    /// `command` (the OCI args); empty for the image's entrypoint.
    pub command: &'a [&'a str],
    /// `resources.limits.memory` in bytes; 0: none.
    pub memory_limit_bytes: i64,
}

impl Cri {
    /// Connects to `containerd`'s CRI.
    pub async fn connect(containerd: &Containerd) -> Self {
        let channel = hearth_control::unix_channel(&containerd.address())
            .await
            .unwrap_or_else(|error| panic!("cannot reach containerd's CRI: {error}"));
        Cri {
            runtime: api::runtime_service_client::RuntimeServiceClient::new(channel.clone()),
            images: api::image_service_client::ImageServiceClient::new(channel),
        }
    }

    /// PullImage; the image ref containerd resolved.
    pub async fn pull(&self, image: &str) -> Result<String, tonic::Status> {
        let reply = self
            .images
            .clone()
            .pull_image(api::PullImageRequest {
                image: Some(image_spec(image)),
                ..Default::default()
            })
            .await?;
        Ok(reply.into_inner().image_ref)
    }

    /// RunPodSandbox with the `hearth` handler; its log directory is made
    /// under `log_root`.
    pub async fn run_pod(
        &self,
        name: &str,
        network: Network,
        log_root: &Path,
    ) -> Result<Pod, tonic::Status> {
        self.run_pod_with(name, network, log_root, &PodOptions::default())
            .await
    }

    /// [`Cri::run_pod`] with a runtime handler and Pod annotations.
    pub async fn run_pod_with(
        &self,
        name: &str,
        network: Network,
        log_root: &Path,
        options: &PodOptions<'_>,
    ) -> Result<Pod, tonic::Status> {
        let log_dir = log_root.join(name);
        std::fs::create_dir_all(&log_dir).expect("pod log dir");
        let config = api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: name.to_string(),
                uid: format!("{}-{name}-{}", options.namespace, std::process::id()),
                namespace: options.namespace.to_string(),
                attempt: 0,
            }),
            hostname: match network {
                Network::Host => String::new(),
                Network::Pod => name.to_string(),
            },
            log_directory: log_dir.to_string_lossy().into_owned(),
            annotations: options
                .annotations
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            linux: Some(api::LinuxPodSandboxConfig {
                security_context: Some(api::LinuxSandboxSecurityContext {
                    namespace_options: Some(namespace_options(network)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let sandbox_id = self
            .runtime
            .clone()
            .run_pod_sandbox(api::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: options.handler.to_string(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id;
        let status = self
            .runtime
            .clone()
            .pod_sandbox_status(api::PodSandboxStatusRequest {
                pod_sandbox_id: sandbox_id.clone(),
                verbose: false,
            })
            .await?
            .into_inner();
        let ip = status
            .status
            .and_then(|status| status.network)
            .and_then(|network| network.ip.parse().ok());
        Ok(Pod {
            sandbox_id,
            config,
            ip,
            log_dir,
        })
    }

    /// CreateContainer in `pod`; the container id.
    pub async fn create_container(
        &self,
        pod: &Pod,
        spec: &ContainerSpec<'_>,
    ) -> Result<String, tonic::Status> {
        let network = match pod
            .config
            .linux
            .as_ref()
            .and_then(|linux| linux.security_context.as_ref())
            .and_then(|context| context.namespace_options.as_ref())
        {
            Some(options) if options.network == api::NamespaceMode::Node as i32 => Network::Host,
            _ => Network::Pod,
        };
        let config = api::ContainerConfig {
            metadata: Some(api::ContainerMetadata {
                name: spec.name.to_string(),
                attempt: 0,
            }),
            image: Some(image_spec(spec.image)),
            command: spec.command.iter().map(|arg| arg.to_string()).collect(),
            envs: spec
                .env
                .iter()
                .map(|(key, value)| api::KeyValue {
                    key: key.to_string(),
                    value: value.to_string(),
                })
                .collect(),
            log_path: format!("{}_0.log", spec.name),
            linux: Some(api::LinuxContainerConfig {
                security_context: Some(api::LinuxContainerSecurityContext {
                    namespace_options: Some(namespace_options(network)),
                    ..Default::default()
                }),
                resources: (spec.memory_limit_bytes > 0).then(|| api::LinuxContainerResources {
                    memory_limit_in_bytes: spec.memory_limit_bytes,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        Ok(self
            .runtime
            .clone()
            .create_container(api::CreateContainerRequest {
                pod_sandbox_id: pod.sandbox_id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            })
            .await?
            .into_inner()
            .container_id)
    }

    /// Whether the image is in containerd's store (ImageStatus), as kubelet
    /// checks before pulling with `imagePullPolicy: IfNotPresent`.
    pub async fn image_present(&self, image: &str) -> Result<bool, tonic::Status> {
        Ok(self
            .images
            .clone()
            .image_status(api::ImageStatusRequest {
                image: Some(image_spec(image)),
                verbose: false,
            })
            .await?
            .into_inner()
            .image
            .is_some())
    }

    /// RemoveImage.
    pub async fn remove_image(&self, image: &str) -> Result<(), tonic::Status> {
        self.images
            .clone()
            .remove_image(api::RemoveImageRequest {
                image: Some(image_spec(image)),
            })
            .await?;
        Ok(())
    }

    /// StartContainer.
    pub async fn start_container(&self, id: &str) -> Result<(), tonic::Status> {
        self.runtime
            .clone()
            .start_container(api::StartContainerRequest {
                container_id: id.to_string(),
            })
            .await?;
        Ok(())
    }

    /// Pull, CreateContainer and StartContainer; the container id.
    pub async fn run_container(
        &self,
        pod: &Pod,
        spec: &ContainerSpec<'_>,
    ) -> Result<String, tonic::Status> {
        self.pull(spec.image).await?;
        let id = self.create_container(pod, spec).await?;
        self.start_container(&id).await?;
        Ok(id)
    }

    /// ContainerStats: what kubelet (and `kubectl top`) sees of a
    /// container's memory (working set, bytes) and CPU (cumulative ns).
    pub async fn container_stats(&self, id: &str) -> Result<(u64, u64), tonic::Status> {
        let stats = self
            .runtime
            .clone()
            .container_stats(api::ContainerStatsRequest {
                container_id: id.to_string(),
            })
            .await?
            .into_inner()
            .stats
            .unwrap_or_default();
        let memory = stats
            .memory
            .and_then(|m| m.working_set_bytes)
            .map_or(0, |v| v.value);
        let cpu = stats
            .cpu
            .and_then(|c| c.usage_core_nano_seconds)
            .map_or(0, |v| v.value);
        Ok((memory, cpu))
    }

    /// ContainerStatus.
    pub async fn container_status(&self, id: &str) -> Result<api::ContainerStatus, tonic::Status> {
        self.runtime
            .clone()
            .container_status(api::ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .ok_or_else(|| tonic::Status::not_found(format!("no status for {id}")))
    }

    /// StopContainer: SIGTERM, then SIGKILL after `timeout_seconds`.
    pub async fn stop_container(
        &self,
        id: &str,
        timeout_seconds: i64,
    ) -> Result<(), tonic::Status> {
        self.runtime
            .clone()
            .stop_container(api::StopContainerRequest {
                container_id: id.to_string(),
                timeout: timeout_seconds,
            })
            .await?;
        Ok(())
    }

    /// StopPodSandbox then RemovePodSandbox, as kubelet does when a Pod is
    /// deleted (its containers go with it).
    pub async fn remove_pod(&self, pod: &Pod) -> Result<(), tonic::Status> {
        self.runtime
            .clone()
            .stop_pod_sandbox(api::StopPodSandboxRequest {
                pod_sandbox_id: pod.sandbox_id.clone(),
            })
            .await?;
        self.runtime
            .clone()
            .remove_pod_sandbox(api::RemovePodSandboxRequest {
                pod_sandbox_id: pod.sandbox_id.clone(),
            })
            .await?;
        Ok(())
    }

    /// Removes all `pods` at once (as when a Deployment is deleted); the
    /// first failure, after every removal has been tried.
    pub async fn remove_pods(&self, pods: Vec<Pod>) -> Result<(), tonic::Status> {
        let mut removing = tokio::task::JoinSet::new();
        for pod in pods {
            let cri = self.clone();
            removing.spawn(async move { cri.remove_pod(&pod).await });
        }
        removing.join_all().await.into_iter().collect()
    }

    /// The ids of the Pod sandboxes containerd knows.
    pub async fn sandbox_ids(&self) -> Result<Vec<String>, tonic::Status> {
        Ok(self
            .runtime
            .clone()
            .list_pod_sandbox(api::ListPodSandboxRequest::default())
            .await?
            .into_inner()
            .items
            .into_iter()
            .map(|sandbox| sandbox.id)
            .collect())
    }
}

fn image_spec(image: &str) -> api::ImageSpec {
    api::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    }
}

fn namespace_options(network: Network) -> api::NamespaceOption {
    api::NamespaceOption {
        network: match network {
            Network::Host => api::NamespaceMode::Node,
            Network::Pod => api::NamespaceMode::Pod,
        } as i32,
        pid: api::NamespaceMode::Container as i32,
        ipc: api::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}
