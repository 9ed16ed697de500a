//! The shim under a real containerd's CRI, with a Rust CRI client playing
//! kubelet: Pods run with `runtime_handler = "hearth"`, host-network and
//! Pod-network (CNI `ptp`), CRI log files, container status, drain on
//! StopContainer, bad input, churn with every leak counted, and a Pod start
//! after `[prewarm]` that hits the compiled cache and the instance pool,
//! and a Pod annotated `hearth.dev/subscribe` handling messages another Pod
//! publishes.

use hearth_testkit::containerd::{Containerd, mounts_under, workspace_binary};
use hearth_testkit::cri::{ContainerSpec, ContainerState, Cri, Network, Pod, PodOptions};
use hearth_testkit::http::get;
use hearth_testkit::node::{Node, linux_image, symlinked_function_image, wait_until};
use hearth_testkit::process::run_to_end;
use hearth_testkit::registry::{free_port, skopeo_push};
use hearth_testkit::{CAPS_P3, ECHO_P3, HELLO, JOB_EXIT, JOB_P3, MISBEHAVE, SLOW_P3, metric};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use tokio::runtime::Runtime;

/// A node and a CRI client to it.
struct Kubelet {
    node: Node,
    cri: Cri,
    runtime: Runtime,
    logs: PathBuf,
}

impl Kubelet {
    fn start() -> Self {
        let node = Node::start();
        let runtime = Runtime::new().unwrap();
        let cri = runtime.block_on(Cri::connect(&node.containerd));
        let logs = node.dir.path().join("pods");
        Kubelet {
            node,
            cri,
            runtime,
            logs,
        }
    }

    fn run_pod(&self, name: &str, network: Network) -> Pod {
        self.runtime
            .block_on(self.cri.run_pod(name, network, &self.logs))
            .unwrap_or_else(|status| panic!("RunPodSandbox {name}: {status}"))
    }

    fn run_container(&self, pod: &Pod, spec: &ContainerSpec) -> String {
        self.runtime
            .block_on(self.cri.run_container(pod, spec))
            .unwrap_or_else(|status| panic!("container {}: {status}", spec.name))
    }

    fn state(&self, id: &str) -> (ContainerState, i32) {
        let status = self
            .runtime
            .block_on(self.cri.container_status(id))
            .unwrap();
        (status.state(), status.exit_code)
    }

    fn serves_ok(&self, addr: SocketAddr) -> bool {
        self.runtime
            .block_on(get(addr, "/ok"))
            .is_ok_and(|reply| reply.status == 200 && reply.text() == "ok\n")
    }

    /// Removes `pod` and checks nothing of it is left: no shim, no mount,
    /// no shim socket, nothing in hearthd, no sandbox in the CRI.
    fn remove_pod_and_check_nothing_is_left(&self, pod: &Pod) {
        let sockets = shim_sockets(&self.node.containerd);
        assert!(!sockets.is_empty(), "a running Pod has a shim socket");
        self.runtime
            .block_on(self.cri.remove_pod(pod))
            .unwrap_or_else(|status| panic!("removing the Pod: {status}"));
        wait_until("the Pod's shim exited", || self.node.shims().is_empty());
        assert_eq!(
            mounts_under(self.node.containerd.root()),
            Vec::<String>::new(),
            "mounts left behind"
        );
        // The socket file goes a moment after the shim process: wait for
        // it as for the process (CI saw the window).
        for socket in sockets {
            wait_until(&format!("{} is removed", socket.display()), || {
                !socket.exists()
            });
        }
        wait_until("hearthd holds none of the Pod's functions", || {
            self.runtime.block_on(self.node.hearthd_functions()) == 0
        });
        assert_eq!(
            self.runtime.block_on(self.cri.sandbox_ids()).unwrap(),
            Vec::<String>::new()
        );
    }
}

/// The shim sockets of the tasks containerd runs now (each bundle's
/// `address` file names its shim's socket).
fn shim_sockets(containerd: &Containerd) -> Vec<PathBuf> {
    let tasks = containerd.state_dir().join("io.containerd.runtime.v2.task");
    let mut sockets = Vec::new();
    for namespace in std::fs::read_dir(tasks).into_iter().flatten().flatten() {
        for bundle in std::fs::read_dir(namespace.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(address) = std::fs::read_to_string(bundle.path().join("address")) {
                let path = address.trim().trim_start_matches("unix://");
                sockets.push(PathBuf::from(path));
            }
        }
    }
    sockets.sort();
    sockets.dedup();
    sockets
}

/// Waits until the CRI log file holds `needle`; its text.
fn wait_for_log(pod: &Pod, container: &str, needle: &str) -> String {
    let file = pod.log_file(container);
    let mut text = String::new();
    wait_until(&format!("{} holds {needle:?}", file.display()), || {
        text = std::fs::read_to_string(&file).unwrap_or_default();
        text.contains(needle)
    });
    text
}

#[test]
fn a_host_network_pod_serves_logs_and_drains_on_stop_container() {
    let kubelet = Kubelet::start();
    let image = kubelet.node.push(MISBEHAVE, "misbehave");
    let pod = kubelet.run_pod("web", Network::Host);
    let port = free_port();
    let port_text = port.to_string();
    let id = kubelet.run_container(
        &pod,
        &ContainerSpec {
            name: "misbehave",
            image: &image,
            env: &[("PORT", &port_text)],
            command: &[],
            ..ContainerSpec::default()
        },
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        kubelet.serves_ok(addr),
        "the host-network Pod serves on the node"
    );
    assert_eq!(kubelet.state(&id).0, ContainerState::ContainerRunning);
    assert_eq!(
        kubelet.node.shims().len(),
        1,
        "one shim for the Pod, which is its sandbox task too: no holder process"
    );
    // An operator sees it with `hearth status`.
    let (status, listing) = run_to_end(
        Command::new(workspace_binary("hearth"))
            .arg("status")
            .env("HEARTH_SOCKET", &kubelet.node.socket),
    );
    assert!(status.success(), "{listing}");
    let row = listing
        .lines()
        .find(|line| line.starts_with(&id[..16]))
        .unwrap_or_else(|| panic!("{id} not listed:\n{listing}"));
    assert!(
        row.contains("service") && row.contains("running") && row.contains(&pod.sandbox_id[..16]),
        "{listing}"
    );

    // The function's stdout and stderr reach the CRI log file.
    let printed = kubelet.runtime.block_on(get(addr, "/print")).unwrap();
    assert_eq!(printed.status, 200);
    // Each stream has its own FIFO and copier: wait for both lines, in
    // either order.
    let log = wait_for_log(&pod, "misbehave", "misbehave: to stderr");
    assert!(
        log.lines()
            .any(|line| line.contains(" stderr F misbehave: to stderr")),
        "{log}"
    );
    let log = wait_for_log(&pod, "misbehave", "misbehave: to stdout");
    assert!(
        log.lines()
            .any(|line| line.contains(" stdout F misbehave: to stdout")),
        "{log}"
    );

    // StopContainer drains: a request in flight finishes, new ones are
    // refused, the container exits 0.
    let in_flight = kubelet.runtime.spawn(get(addr, "/sleep?ms=1500"));
    std::thread::sleep(Duration::from_millis(300));
    kubelet
        .runtime
        .block_on(kubelet.cri.stop_container(&id, 30))
        .unwrap();
    let reply = kubelet.runtime.block_on(in_flight).unwrap().unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "slept\n");
    assert_eq!(kubelet.state(&id), (ContainerState::ContainerExited, 0));
    assert!(
        !kubelet.serves_ok(addr),
        "still serving after StopContainer"
    );
    kubelet.node.hearthd.wait_for_line("reason=\"drained\"");

    kubelet.remove_pod_and_check_nothing_is_left(&pod);
}

#[test]
fn a_pod_network_pod_is_reachable_at_its_ip_and_a_job_reports_its_exit_code() {
    let kubelet = Kubelet::start();
    let service = kubelet.node.push(MISBEHAVE, "misbehave");
    let job = kubelet.node.push(JOB_EXIT, "job-exit");
    let pod = kubelet.run_pod("pod-net", Network::Pod);
    let ip = pod.ip.expect("CNI gave the Pod an IP");
    let web = kubelet.run_container(
        &pod,
        &ContainerSpec {
            name: "web",
            image: &service,
            env: &[],
            command: &[],
            ..ContainerSpec::default()
        },
    );
    // No $PORT: the default, 8080, inside the Pod's network namespace.
    let addr = SocketAddr::new(ip, 8080);
    wait_until("the Pod serves at podIP:8080", || kubelet.serves_ok(addr));
    assert_eq!(kubelet.state(&web).0, ContainerState::ContainerRunning);

    // The shim is the sandbox task: the Pod's network is the CRI's pinned
    // namespace (the service answers at the Pod IP, not on the node), and
    // no holder process runs for it.
    assert!(
        !kubelet.serves_ok(SocketAddr::from(([127, 0, 0, 1], 8080))),
        "the Pod's service listens in the Pod's network, not the node's"
    );
    let shims = kubelet.node.shims();
    assert_eq!(
        shims.len(),
        1,
        "one shim for the Pod, which is its sandbox task too: no holder process"
    );
    // A job in the same Pod: same shim, its exit code in ContainerStatus,
    // its stdout in the CRI log.
    let job_id = kubelet.run_container(
        &pod,
        &ContainerSpec {
            name: "job",
            image: &job,
            env: &[("MODE", "code:3")],
            command: &[],
            ..ContainerSpec::default()
        },
    );
    wait_until("the job exited", || {
        kubelet.state(&job_id).0 == ContainerState::ContainerExited
    });
    assert_eq!(kubelet.state(&job_id), (ContainerState::ContainerExited, 3));
    assert_eq!(
        kubelet.node.shims(),
        shims,
        "the Pod's containers share one shim"
    );
    let log = wait_for_log(&pod, "job", "job-exit: running with MODE=code:3");
    assert!(log.contains(" stdout "), "{log}");
    assert!(
        kubelet.serves_ok(addr),
        "the service is untouched by the job"
    );

    kubelet.remove_pod_and_check_nothing_is_left(&pod);
    assert!(!kubelet.serves_ok(addr));
}

#[test]
fn bad_input_through_the_cri_fails_with_a_named_error_and_leaves_nothing() {
    let kubelet = Kubelet::start();
    let pod = kubelet.run_pod("bad", Network::Host);
    let start = |name: &str, image: &str, command: &[&str]| -> String {
        let spec = ContainerSpec {
            name,
            image,
            env: &[],
            command,
            ..ContainerSpec::default()
        };
        let error = kubelet
            .runtime
            .block_on(kubelet.cri.run_container(&pod, &spec))
            .expect_err("the container must not start");
        error.message().to_string()
    };

    // An ordinary image with no wasm in it. containerd's CRI creates the
    // task (the shim's Create) at StartContainer, so that is where it fails.
    let plain = kubelet.node.registry.reference("not-wasm", "1");
    skopeo_push(
        &linux_image(
            &[("bin/server", b"\x7fELF not really", 0o755)],
            &["/bin/server"],
        ),
        &plain,
        false,
    );
    let message = start("plain", &plain, &[]);
    assert!(
        message.contains("holds no WebAssembly component") && message.contains(&plain),
        "the error names the image: {message}"
    );

    // A command that climbs out of the rootfs.
    let image = kubelet.node.push(MISBEHAVE, "misbehave");
    let message = start("climber", &image, &["/../../../../etc/passwd"]);
    assert!(
        message.contains("escapes the container's rootfs"),
        "{message}"
    );

    // An image whose component is a symlink to a host file.
    let symlinked = kubelet.node.registry.reference("symlinked", "1");
    skopeo_push(&symlinked_function_image("/etc/passwd"), &symlinked, false);
    let message = start("symlinked", &symlinked, &[]);
    assert!(
        message.contains("escapes the container's rootfs"),
        "{message}"
    );

    // A core module instead of a component.
    let core = kubelet.node.registry.reference("core-module", "1");
    skopeo_push(
        &hearth_prewarm::image::build(hearth_prewarm::image::ImageForm::Image, b"\0asm\x01\0\0\0"),
        &core,
        false,
    );
    let message = start("core", &core, &[]);
    assert!(message.contains("core WebAssembly module"), "{message}");

    // Each failure is in the shim's or hearthd's log, nothing runs, and the
    // Pod still works.
    kubelet.node.hearthd.wait_for_line("create failed");
    assert_eq!(
        kubelet.runtime.block_on(kubelet.node.hearthd_functions()),
        0
    );
    let port = free_port();
    let port_text = port.to_string();
    kubelet.run_container(
        &pod,
        &ContainerSpec {
            name: "good",
            image: &image,
            env: &[("PORT", &port_text)],
            command: &[],
            ..ContainerSpec::default()
        },
    );
    assert!(kubelet.serves_ok(format!("127.0.0.1:{port}").parse().unwrap()));
    kubelet.remove_pod_and_check_nothing_is_left(&pod);
}

#[test]
fn a_hearthd_restart_with_pods_running_reloads_them() {
    let mut kubelet = Kubelet::start();
    let image = kubelet.node.push(MISBEHAVE, "misbehave");
    let pods: Vec<(Pod, String)> = (0..3)
        .map(|index| {
            let pod = kubelet.run_pod(&format!("survivor-{index}"), Network::Pod);
            let id = kubelet.run_container(
                &pod,
                &ContainerSpec {
                    name: "web",
                    image: &image,
                    env: &[],
                    command: &[],
                    ..ContainerSpec::default()
                },
            );
            (pod, id)
        })
        .collect();
    let addrs: Vec<SocketAddr> = pods
        .iter()
        .map(|(pod, _)| SocketAddr::new(pod.ip.unwrap(), 8080))
        .collect();
    for addr in &addrs {
        wait_until("the Pod serves", || kubelet.serves_ok(*addr));
    }

    kubelet.node.restart_hearthd();
    for addr in &addrs {
        wait_until("the Pod serves again from the new hearthd", || {
            kubelet.serves_ok(*addr)
        });
    }
    for (_, id) in &pods {
        assert_eq!(kubelet.state(id).0, ContainerState::ContainerRunning);
    }
    assert_eq!(
        kubelet.runtime.block_on(kubelet.node.hearthd_functions()),
        3
    );
    for (pod, _) in &pods {
        kubelet
            .runtime
            .block_on(kubelet.cri.remove_pod(pod))
            .unwrap();
    }
    wait_until("every shim exited", || kubelet.node.shims().is_empty());
    assert_eq!(
        kubelet.runtime.block_on(kubelet.node.hearthd_functions()),
        0
    );
    assert_eq!(
        mounts_under(kubelet.node.containerd.root()),
        Vec::<String>::new()
    );
}

/// Open socket descriptors of process `pid`.
fn socket_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|entry| {
                    std::fs::read_link(entry.path())
                        .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn churn_of_50_pods_3_rounds_leaks_nothing() {
    const PODS: usize = 50;
    const ROUNDS: usize = 3;
    let kubelet = Kubelet::start();
    let image = kubelet.node.push(MISBEHAVE, "misbehave");
    kubelet.runtime.block_on(kubelet.cri.pull(&image)).unwrap();
    let hearthd_sockets_before = socket_fds(kubelet.node.hearthd.pid());
    let _in_runtime = kubelet.runtime.enter();

    for round in 0..ROUNDS {
        // Create and start 50 Pods at once.
        let mut starting = tokio::task::JoinSet::new();
        for index in 0..PODS {
            let cri = kubelet.cri.clone();
            let logs = kubelet.logs.clone();
            let image = image.clone();
            starting.spawn(async move {
                let name = format!("churn-{round}-{index}");
                let pod = cri.run_pod(&name, Network::Pod, &logs).await?;
                let spec = ContainerSpec {
                    name: "web",
                    image: &image,
                    env: &[],
                    command: &[],
                    ..ContainerSpec::default()
                };
                let id = cri.create_container(&pod, &spec).await?;
                cri.start_container(&id).await?;
                Ok::<_, tonic::Status>(pod)
            });
        }
        let pods: Vec<Pod> = kubelet
            .runtime
            .block_on(starting.join_all())
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap_or_else(|status| panic!("round {round}: {status}"));
        for pod in &pods {
            let addr = SocketAddr::new(pod.ip.expect("a Pod IP"), 8080);
            wait_until("every Pod serves", || kubelet.serves_ok(addr));
        }
        assert_eq!(
            kubelet.runtime.block_on(kubelet.node.hearthd_functions()),
            PODS
        );
        let sockets = shim_sockets(&kubelet.node.containerd);
        assert_eq!(sockets.len(), PODS, "one shim socket per Pod");

        // Remove them all at once.
        kubelet
            .runtime
            .block_on(kubelet.cri.remove_pods(pods))
            .unwrap_or_else(|status| panic!("round {round}: {status}"));

        // Count every kind of leak.
        wait_until("every shim exited", || kubelet.node.shims().is_empty());
        let leaked_shims = kubelet.node.shims().len();
        let leaked_mounts = mounts_under(kubelet.node.containerd.root()).len();
        let leaked_sockets = sockets.iter().filter(|socket| socket.exists()).count();
        let leaked_functions = kubelet.runtime.block_on(kubelet.node.hearthd_functions());
        let leaked_sandboxes = kubelet
            .runtime
            .block_on(kubelet.cri.sandbox_ids())
            .unwrap()
            .len();
        wait_until("hearthd closed the Pods' sockets", || {
            socket_fds(kubelet.node.hearthd.pid()) <= hearthd_sockets_before
        });
        assert_eq!(
            (
                leaked_shims,
                leaked_mounts,
                leaked_sockets,
                leaked_functions,
                leaked_sandboxes
            ),
            (0, 0, 0, 0, 0),
            "round {round}: leaked (shims, mounts, shim sockets, hearthd functions, sandboxes)"
        );
    }
}

#[test]
fn a_pod_started_after_prewarm_hits_the_compiled_cache_and_its_annotation_fills_the_pool() {
    let mut kubelet = Kubelet::start();
    let image = kubelet.node.push(HELLO, "prewarmed");
    kubelet
        .node
        .configure_hearthd(&format!("[prewarm]\nimages = [\"{image}\"]\n"));
    kubelet.node.hearthd.wait_for_line("prewarmed");
    let before = kubelet.runtime.block_on(kubelet.node.metrics());
    assert_eq!(
        metric(&before, "hearth_compiles_total"),
        Some(1.0),
        "{before}"
    );

    let pod = kubelet
        .runtime
        .block_on(kubelet.cri.run_pod_with(
            "prewarmed",
            Network::Pod,
            &kubelet.logs,
            &PodOptions {
                annotations: &[("hearth.dev/min-idle", "2")],
                ..PodOptions::default()
            },
        ))
        .unwrap();
    let container = kubelet.run_container(
        &pod,
        &ContainerSpec {
            name: "hello",
            image: &image,
            env: &[],
            command: &[],
            ..ContainerSpec::default()
        },
    );
    let after = kubelet.runtime.block_on(kubelet.node.metrics());
    assert_eq!(
        metric(&after, "hearth_compiles_total"),
        Some(1.0),
        "the Pod start compiled nothing:\n{after}"
    );
    assert_eq!(
        metric(
            &after,
            "hearth_function_loads_total{compiled_from=\"memory\"}"
        ),
        Some(1.0),
        "the Pod's function was a compiled-cache hit:\n{after}"
    );
    let idle = format!(
        "hearth_pool_instances{{id=\"{container}\",namespace=\"default\",function=\"hello\",state=\"idle\"}}"
    );
    wait_until("the annotation's 2 idle instances", || {
        let text = kubelet.runtime.block_on(kubelet.node.metrics());
        metric(&text, &idle) == Some(2.0)
    });
    let addr = SocketAddr::new(pod.ip.expect("a Pod IP"), 8080);
    let reply = kubelet.runtime.block_on(get(addr, "/")).unwrap();
    assert_eq!(reply.status, 200);
    let served = kubelet.runtime.block_on(kubelet.node.metrics());
    let hits = format!("hearth_pool_hits_total{{id=\"{container}\"");
    let misses = format!("hearth_pool_misses_total{{id=\"{container}\"");
    assert_eq!(metric(&served, &hits), Some(1.0), "{served}");
    assert_eq!(metric(&served, &misses), Some(0.0));
    kubelet.remove_pod_and_check_nothing_is_left(&pod);
}

#[test]
fn a_pod_annotated_with_subscribe_handles_what_another_pod_publishes() {
    let kubelet = Kubelet::start();
    let producer_image = kubelet
        .node
        .push(hearth_testkit::ORDER_PRODUCER, "order-producer");
    let worker_image = kubelet
        .node
        .push(hearth_testkit::ORDER_WORKER, "order-worker");
    let shop = kubelet.run_pod("shop", Network::Host);
    let port = free_port();
    let port_text = port.to_string();
    kubelet.run_container(
        &shop,
        &ContainerSpec {
            name: "producer",
            image: &producer_image,
            env: &[("PORT", &port_text)],
            command: &[],
            ..ContainerSpec::default()
        },
    );
    let workers = kubelet
        .runtime
        .block_on(kubelet.cri.run_pod_with(
            "workers",
            Network::Pod,
            &kubelet.logs,
            &PodOptions {
                annotations: &[("hearth.dev/subscribe", "orders")],
                ..PodOptions::default()
            },
        ))
        .unwrap();
    kubelet.run_container(
        &workers,
        &ContainerSpec {
            name: "worker",
            image: &worker_image,
            env: &[],
            command: &[],
            ..ContainerSpec::default()
        },
    );
    let reply = kubelet
        .runtime
        .block_on(hearth_testkit::http::send(
            SocketAddr::from(([127, 0, 0, 1], port)),
            http::Method::POST,
            "/orders",
            &[],
            bytes::Bytes::from_static(b"one order"),
        ))
        .unwrap();
    assert_eq!(reply.status, 202, "{}", reply.text());
    // The group is the container's name, so every replica shares the work.
    let acked = "hearth_messages_total{namespace=\"default\",function=\"worker\",topic=\"default.orders\",group=\"default.worker\",outcome=\"acked\"}";
    wait_until("the worker Pod acked the order", || {
        let text = kubelet.runtime.block_on(kubelet.node.metrics());
        metric(&text, acked) == Some(1.0)
    });
    kubelet
        .runtime
        .block_on(kubelet.cri.remove_pod(&shop))
        .unwrap();
    kubelet.remove_pod_and_check_nothing_is_left(&workers);
}

/// A host-network Pod `name` in `namespace` running one container of
/// `image` on a free port; the Pod, its address and the container id.
struct Served {
    pod: Pod,
    addr: SocketAddr,
    container: String,
}

impl Kubelet {
    fn create_in(
        &self,
        namespace: &str,
        name: &str,
        container: &ContainerSpec,
        annotations: &[(&str, &str)],
    ) -> Result<Served, Box<(Pod, tonic::Status)>> {
        let pod = self
            .runtime
            .block_on(self.cri.run_pod_with(
                &format!("{namespace}-{name}"),
                Network::Host,
                &self.logs,
                &PodOptions {
                    annotations,
                    namespace,
                    ..PodOptions::default()
                },
            ))
            .unwrap_or_else(|status| panic!("RunPodSandbox {namespace}/{name}: {status}"));
        let port = free_port();
        let port_text = port.to_string();
        let mut env = vec![("PORT", port_text.as_str())];
        env.extend_from_slice(container.env);
        let spec = ContainerSpec {
            env: &env,
            ..container.clone()
        };
        match self.runtime.block_on(self.cri.run_container(&pod, &spec)) {
            Ok(container) => Ok(Served {
                pod,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                container,
            }),
            Err(status) => Err(Box::new((pod, status))),
        }
    }

    fn serve_in(
        &self,
        namespace: &str,
        name: &str,
        container: &ContainerSpec,
        annotations: &[(&str, &str)],
    ) -> Served {
        self.create_in(namespace, name, container, annotations)
            .unwrap_or_else(|refused| panic!("container of {namespace}/{name}: {}", refused.1))
    }

    fn request(&self, addr: SocketAddr, method: http::Method, path: &str) -> (u16, String) {
        self.request_with(addr, method, path, &[])
    }

    fn request_with(
        &self,
        addr: SocketAddr,
        method: http::Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, String) {
        let reply = self
            .runtime
            .block_on(hearth_testkit::http::send(
                addr,
                method,
                path,
                headers,
                bytes::Bytes::from_static(b"payload"),
            ))
            .unwrap_or_else(|error| panic!("{path} on {addr}: {error}"));
        (reply.status.as_u16(), reply.text())
    }
}

/// The policy the tenancy test runs under: `team-c` may open the shared
/// store `common`, consume `team-a`'s `orders` and invoke its `counter`;
/// nobody else reaches beyond their namespace.
const TENANCY_POLICY: &str = r#"
[state.stores.default]
type = "embedded"
[state.stores.common]
type = "embedded"

[tenancy.namespaces.team-c]
shared_stores = ["common"]
topics = ["team-a:orders"]
invoke = ["counter.team-a"]
"#;

#[test]
fn pods_of_two_namespaces_share_nothing_replicas_share_everything_and_only_policy_reaches_across() {
    use http::Method;
    let mut kubelet = Kubelet::start();
    kubelet.node.configure_hearthd(TENANCY_POLICY);
    let image = |wasm, repository| kubelet.node.push(wasm, repository);
    let counter_image = image(hearth_testkit::KV_COUNTER, "kv-counter");
    let blob_image = image(hearth_testkit::BLOB_ROUNDTRIP, "blob-roundtrip");
    let chain_image = image(hearth_testkit::INVOKE_CHAIN, "invoke-chain");
    let echo_image = image(hearth_testkit::ECHO, "echo");
    let producer_image = image(hearth_testkit::ORDER_PRODUCER, "order-producer");
    let worker_image = image(hearth_testkit::ORDER_WORKER, "order-worker");
    let counter = ContainerSpec {
        name: "counter",
        image: &counter_image,
        ..ContainerSpec::default()
    };

    // wasi:keyvalue: same container name, same image, three namespaces.
    let a1 = kubelet.serve_in("team-a", "counter-1", &counter, &[]);
    let b = kubelet.serve_in("team-b", "counter-1", &counter, &[]);
    let a2 = kubelet.serve_in("team-a", "counter-2", &counter, &[]);
    let c = kubelet.serve_in("team-c", "counter-1", &counter, &[]);
    for expected in ["1", "2", "3"] {
        let (status, body) = kubelet.request(a1.addr, Method::POST, "/increment");
        assert_eq!((status, body.trim()), (200, expected));
    }
    let (_, body) = kubelet.request(b.addr, Method::POST, "/increment");
    assert_eq!(body.trim(), "1", "team-b's counter is its own");
    let (_, body) = kubelet.request(a2.addr, Method::POST, "/increment");
    assert_eq!(body.trim(), "4", "a replica in team-a shares its state");
    // A shared store only where the policy grants it.
    let (status, body) = kubelet.request(a1.addr, Method::GET, "/open?store=common");
    assert_eq!(status, 503, "team-a has no grant: {body}");
    assert!(body.starts_with("access-denied"), "{body}");
    let (status, body) = kubelet.request(c.addr, Method::GET, "/open?store=common");
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    // wasi:blobstore.
    let blobs = ContainerSpec {
        name: "files",
        image: &blob_image,
        ..ContainerSpec::default()
    };
    let blob_a1 = kubelet.serve_in("team-a", "files-1", &blobs, &[]);
    let blob_b = kubelet.serve_in("team-b", "files-1", &blobs, &[]);
    let blob_a2 = kubelet.serve_in("team-a", "files-2", &blobs, &[]);
    let (status, _) = kubelet.request(blob_a1.addr, Method::PUT, "/objects/report");
    assert_eq!(status, 201);
    let (status, _) = kubelet.request(blob_b.addr, Method::GET, "/objects/report");
    assert_eq!(status, 404, "team-b cannot see team-a's container");
    let (status, body) = kubelet.request(blob_a2.addr, Method::GET, "/objects/report");
    assert_eq!((status, body.as_str()), (200, "payload"), "the replica can");

    // invoke: a plain name is the caller's namespace; another namespace's
    // function only as the policy allows.
    let chain = ContainerSpec {
        name: "chain",
        image: &chain_image,
        env: &[("NAME", "chain")],
        ..ContainerSpec::default()
    };
    let chain_a = kubelet.serve_in("team-a", "chain", &chain, &[]);
    let chain_b = kubelet.serve_in("team-b", "chain", &chain, &[]);
    let chain_c = kubelet.serve_in("team-c", "chain", &chain, &[]);
    let read_counter = "/call?target=counter&path=/";
    let (_, body) = kubelet.request(chain_a.addr, Method::GET, read_counter);
    assert_eq!(body.trim(), "4", "team-a's chain reaches team-a's counter");
    let (_, body) = kubelet.request(chain_b.addr, Method::GET, read_counter);
    assert_eq!(body.trim(), "1", "team-b's chain reaches team-b's counter");
    let across = "/call?target=counter.team-a&path=/";
    let (status, body) = kubelet.request(chain_b.addr, Method::GET, across);
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("may not invoke functions of namespace `team-a`"),
        "{body}"
    );
    let (status, body) = kubelet.request(chain_c.addr, Method::GET, across);
    assert_eq!(
        (status, body.trim()),
        (200, "4"),
        "team-c's policy allows it"
    );

    // Callers cannot be spoofed from outside.
    let echo = ContainerSpec {
        name: "echo",
        image: &echo_image,
        ..ContainerSpec::default()
    };
    let echo_a = kubelet.serve_in("team-a", "echo", &echo, &[]);
    let reply = kubelet
        .runtime
        .block_on(hearth_testkit::http::send(
            echo_a.addr,
            Method::GET,
            "/",
            &[
                ("x-hearth-caller", "payments.team-b"),
                ("x-hearth-invoke-depth", "4294967295"),
            ],
            bytes::Bytes::new(),
        ))
        .unwrap();
    assert_eq!(reply.status, 200);
    assert!(
        reply.headers.get("x-echo-x-hearth-caller").is_none(),
        "{:?}",
        reply.headers
    );
    assert!(
        reply
            .headers
            .get("x-echo-x-hearth-invoke-depth")
            .is_none_or(|depth| depth != "4294967295"),
        "{:?}",
        reply.headers
    );

    // Messaging and hearth:state: producer and worker of app `shop` in
    // team-a; a worker of the same app and group in team-b never sees
    // team-a's orders; team-c consumes them because the policy lets it.
    let shop = [("hearth.dev/app", "shop")];
    let producer = ContainerSpec {
        name: "producer",
        image: &producer_image,
        ..ContainerSpec::default()
    };
    let worker = ContainerSpec {
        name: "worker",
        image: &worker_image,
        ..ContainerSpec::default()
    };
    let subscribe =
        |topic: &'static str| [("hearth.dev/app", "shop"), ("hearth.dev/subscribe", topic)];
    let producer_a = kubelet.serve_in("team-a", "producer", &producer, &shop);
    let producer_b = kubelet.serve_in("team-b", "producer", &producer, &shop);
    let _worker_b = kubelet.serve_in("team-b", "worker", &worker, &subscribe("orders@workers"));
    let _worker_c = kubelet.serve_in(
        "team-c",
        "worker",
        &worker,
        &subscribe("team-a:orders@workers"),
    );
    let (_, refused) = *kubelet
        .create_in("team-b", "spy", &worker, &subscribe("team-a:orders"))
        .err()
        .expect("team-b may not subscribe to team-a's topic");
    assert!(
        refused
            .message()
            .contains("may not reach topic `team-a:orders`"),
        "{refused}"
    );
    let _worker_a = kubelet.serve_in("team-a", "worker", &worker, &subscribe("orders@workers"));
    let (status, body) = kubelet.request_with(
        producer_a.addr,
        Method::POST,
        "/orders",
        &[("x-order-id", "o-1")],
    );
    assert_eq!(status, 202, "{body}");
    let acked = |namespace: &str, topic: &str| {
        format!(
            "hearth_messages_total{{namespace=\"{namespace}\",function=\"worker\",topic=\"{topic}\",group=\"{namespace}.workers\",outcome=\"acked\"}}"
        )
    };
    wait_until("team-a's and team-c's workers acked the order", || {
        let text = kubelet.runtime.block_on(kubelet.node.metrics());
        metric(&text, &acked("team-a", "team-a.orders")) == Some(1.0)
            && metric(&text, &acked("team-c", "team-a.orders")) == Some(1.0)
    });
    let (status, body) = kubelet.request(producer_a.addr, Method::GET, "/state?key=order/o-1");
    assert_eq!(
        (status, body.as_str()),
        (200, "payload"),
        "team-a's app state"
    );
    let (status, _) = kubelet.request(producer_b.addr, Method::GET, "/state?key=order/o-1");
    assert_eq!(status, 404, "team-b's app `shop` has its own state");
    let text = kubelet.runtime.block_on(kubelet.node.metrics());
    assert_eq!(
        metric(&text, &acked("team-b", "team-b.orders")),
        Some(0.0),
        "team-b's worker got nothing: {text}"
    );
}

#[test]
fn a_pods_memory_limit_bounds_its_instances_and_stats_show_what_it_uses() {
    let kubelet = Kubelet::start();
    let image = kubelet.node.push(MISBEHAVE, "misbehave");
    let limited = ContainerSpec {
        name: "misbehave",
        image: &image,
        memory_limit_bytes: 64 << 20,
        ..ContainerSpec::default()
    };
    let (eager, refused) = *kubelet
        .create_in(
            "team-a",
            "eager",
            &limited,
            &[("hearth.dev/min-idle", "1000")],
        )
        .err()
        .expect("min-idle 1000 in 64 MiB is refused");
    let message = refused.message();
    assert!(
        message.contains("min-idle 1000")
            && message.contains("1 instance slots")
            && message.contains("64 MiB"),
        "{message}"
    );
    let pod = kubelet.serve_in("team-a", "bounded", &limited, &[]);
    let reply = kubelet
        .runtime
        .block_on(get(pod.addr, "/grow?mib=100"))
        .unwrap();
    assert_eq!(
        reply
            .headers
            .get("x-hearth-error")
            .map(|v| v.to_str().unwrap()),
        Some("memory-limit-exceeded"),
        "{}",
        reply.text()
    );
    assert!(kubelet.serves_ok(pod.addr), "the Pod and hearthd live on");
    let stats = |id: &str| {
        kubelet
            .runtime
            .block_on(kubelet.cri.container_stats(id))
            .unwrap()
    };
    let (idle_memory, _) = stats(&pod.container);
    // A request blocked in a host call holds its instance: busy.
    let addr = pod.addr;
    let busy = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime
            .block_on(get(addr, "/sleep?ms=3000"))
            .unwrap()
            .status
    });
    let mut busy_memory = 0;
    wait_until("Stats shows the busy instance's memory", || {
        busy_memory = stats(&pod.container).0;
        busy_memory > idle_memory
    });
    busy.join().unwrap();
    for _ in 0..20 {
        assert!(kubelet.serves_ok(pod.addr));
    }
    let (_, cpu) = stats(&pod.container);
    assert!(cpu > 0, "guest CPU time is reported: {cpu} ns");
    assert!(busy_memory <= 64 << 20, "{busy_memory}");
    kubelet
        .runtime
        .block_on(kubelet.cri.remove_pod(&eager))
        .unwrap();
    kubelet.remove_pod_and_check_nothing_is_left(&pod.pod);
}

#[test]
fn wasi_p2_and_p3_functions_share_a_pod_and_a_p3_job_reports_its_exit_code() {
    let kubelet = Kubelet::start();
    let p2 = kubelet.node.push(HELLO, "hello");
    let p3 = kubelet.node.push(SLOW_P3, "slow-p3");
    let echo = kubelet.node.push(ECHO_P3, "echo-p3");
    let caps = kubelet.node.push(CAPS_P3, "caps-p3");
    let job = kubelet.node.push(JOB_P3, "job-p3");
    let pod = kubelet
        .runtime
        .block_on(kubelet.cri.run_pod_with(
            "mixed",
            Network::Pod,
            &kubelet.logs,
            &PodOptions {
                // Reuse past 40 requests, so the probes below count for
                // nothing against the instance's life.
                annotations: &[
                    ("hearth.dev/instance-concurrency", "40"),
                    ("hearth.dev/max-invocations", "1000"),
                ],
                ..PodOptions::default()
            },
        ))
        .unwrap();
    let ip = pod.ip.expect("a Pod IP");
    let spec = |name, image, env| ContainerSpec {
        name,
        image,
        env,
        command: &[],
        ..ContainerSpec::default()
    };
    let hello = kubelet.run_container(&pod, &spec("hello", &p2, &[("PORT", "8080")]));
    // A 128 MiB memory limit holds one instance of up to 128 MiB: the 40
    // requests below must share it.
    let slow = kubelet.run_container(
        &pod,
        &ContainerSpec {
            memory_limit_bytes: 128 << 20,
            ..spec("slow", &p3, &[("PORT", "8081")])
        },
    );
    kubelet.run_container(&pod, &spec("echo", &echo, &[("PORT", "8082")]));
    kubelet.run_container(&pod, &spec("caps", &caps, &[("PORT", "8083")]));
    let (p2_addr, p3_addr) = (SocketAddr::new(ip, 8080), SocketAddr::new(ip, 8081));
    let (echo_addr, caps_addr) = (SocketAddr::new(ip, 8082), SocketAddr::new(ip, 8083));
    wait_until("the p2 service answers", || {
        kubelet
            .runtime
            .block_on(get(p2_addr, "/"))
            .is_ok_and(|reply| reply.text() == "Hello from Hearth!\n")
    });
    wait_until("the p3 service answers", || {
        kubelet
            .runtime
            .block_on(get(p3_addr, "/?ms=1"))
            .is_ok_and(|reply| reply.status == 200)
    });

    // echo-p3: a streamed body and its trailers, through the Pod's network.
    wait_until("echo-p3 answers", || {
        kubelet.runtime.block_on(get(echo_addr, "/")).is_ok()
    });
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-digest", "abc".parse().unwrap());
    let chunks = vec![
        bytes::Bytes::from_static(b"through "),
        bytes::Bytes::from_static(b"the CRI"),
    ];
    let reply = kubelet
        .runtime
        .block_on(hearth_testkit::http::post_with_trailers(
            echo_addr, "/", chunks, trailers,
        ))
        .unwrap();
    assert_eq!(reply.text(), "through the CRI");
    assert_eq!(reply.trailers.unwrap().get("x-digest").unwrap(), "abc");
    // caps-p3: hearthd's key-value store and state from async handlers.
    wait_until("caps-p3 answers", || {
        kubelet
            .runtime
            .block_on(get(caps_addr, "/kv/probe"))
            .is_ok()
    });
    let text = |path: &str| {
        kubelet
            .runtime
            .block_on(get(caps_addr, path))
            .unwrap()
            .text()
    };
    assert_eq!(text("/kv/visits"), "visits=1\n");
    assert_eq!(text("/kv/visits"), "visits=2\n");
    assert_eq!(text("/state-set?key=pod&value=mixed"), "stored\n");
    assert_eq!(text("/state/pod"), "mixed");

    // The annotation's 40 requests in flight on one instance.
    let replies = kubelet.runtime.block_on(futures_util::future::join_all(
        (0..40).map(|_| get(p3_addr, "/?ms=3000")),
    ));
    let mut instances = std::collections::BTreeSet::new();
    let mut peak = 0u32;
    for reply in replies {
        let reply = reply.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        let text = reply.text();
        for word in text.split_whitespace() {
            if let Some(id) = word.strip_prefix("instance=") {
                instances.insert(id.to_string());
            }
            if let Some(seen) = word.strip_prefix("peak=") {
                peak = peak.max(seen.parse().unwrap());
            }
        }
    }
    assert_eq!(instances.len(), 1, "{instances:?}");
    assert_eq!(peak, 40);

    // `hearth status` and /metrics say which WASI each targets.
    let (status, listing) = run_to_end(
        Command::new(workspace_binary("hearth"))
            .arg("status")
            .env("HEARTH_SOCKET", &kubelet.node.socket),
    );
    assert!(status.success(), "{listing}");
    for (id, wasi) in [(&hello, "wasi-0.2"), (&slow, "wasi-0.3")] {
        let row = listing
            .lines()
            .find(|line| line.starts_with(&id[..16]))
            .unwrap_or_else(|| panic!("{id} not listed:\n{listing}"));
        assert!(row.contains(&format!("service  {wasi}")), "{listing}");
    }
    let metrics = kubelet.runtime.block_on(kubelet.node.metrics());
    for (id, name, wasi) in [(&hello, "hello", "wasi-0.2"), (&slow, "slow", "wasi-0.3")] {
        let series = format!(
            "hearth_function_info{{id=\"{id}\",namespace=\"default\",function=\"{name}\",kind=\"service\",wasi=\"{wasi}\"}}"
        );
        assert_eq!(metric(&metrics, &series), Some(1.0), "{series}\n{metrics}");
    }

    let job_id = kubelet.run_container(&pod, &spec("job", &job, &[("EXIT_CODE", "5")]));
    wait_until("the p3 job exited", || {
        kubelet.state(&job_id).0 == ContainerState::ContainerExited
    });
    assert_eq!(kubelet.state(&job_id), (ContainerState::ContainerExited, 5));
    wait_for_log(&pod, "job", "job-p3 ran");
    kubelet.remove_pod_and_check_nothing_is_left(&pod);
}
