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
use hearth_testkit::{HELLO, JOB_EXIT, MISBEHAVE, metric};
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
        for socket in sockets {
            assert!(!socket.exists(), "shim socket left: {}", socket.display());
        }
        assert_eq!(self.runtime.block_on(self.node.hearthd_functions()), 0);
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
        2,
        "one shim for the Pod and its namespace holder"
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
    let log = wait_for_log(&pod, "misbehave", "misbehave: to stderr");
    assert!(
        log.lines()
            .any(|line| line.contains(" stdout F misbehave: to stdout")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|line| line.contains(" stderr F misbehave: to stderr")),
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
        },
    );
    // No $PORT: the default, 8080, inside the Pod's network namespace.
    let addr = SocketAddr::new(ip, 8080);
    wait_until("the Pod serves at podIP:8080", || kubelet.serves_ok(addr));
    assert_eq!(kubelet.state(&web).0, ContainerState::ContainerRunning);

    // A job in the same Pod: same shim, its exit code in ContainerStatus,
    // its stdout in the CRI log.
    let shims = kubelet.node.shims();
    let job_id = kubelet.run_container(
        &pod,
        &ContainerSpec {
            name: "job",
            image: &job,
            env: &[("MODE", "code:3")],
            command: &[],
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
    let idle =
        format!("hearth_pool_instances{{id=\"{container}\",function=\"hello\",state=\"idle\"}}");
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
    let acked = "hearth_messages_total{function=\"worker\",topic=\"orders\",group=\"worker\",outcome=\"acked\"}";
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
