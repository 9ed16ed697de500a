//! Hearth under a real kubelet and API server, through `kubectl`.
//!
//! One cluster (see `hearth_kube_tests::Cluster`) serves every scenario in
//! turn; this binary is its own harness: it runs each scenario, prints
//! `ok` or `FAILED` with the reason, cleans the `default` namespace between
//! scenarios, tears the cluster down and exits non-zero if any failed.
//! Arguments filter scenarios by substring.
//!
//! ```text
//! scripts/test-kube.sh            # builds Kubernetes once, then this
//! cargo test -p hearth-kube-tests --features kube --test kube -- restart
//! ```

use hearth_kube_tests::Cluster;
use hearth_testkit::containerd::mounts_under;
use hearth_testkit::node::start_hearthd;
use hearth_testkit::{JOB_EXIT, MISBEHAVE, SETTINGS};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a Deployment may take to become ready.
const READY: Duration = Duration::from_secs(180);

type Scenario = (&'static str, fn(&mut Cluster, &Images));

/// The function images pushed to the node's registry.
struct Images {
    misbehave: String,
    job: String,
    settings: String,
}

fn main() {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    let scenarios: &[Scenario] = &[
        (
            "deployment_with_probes_serves_on_every_pod_ip_and_its_service",
            deployment_with_probes_serves_on_every_pod_ip_and_its_service,
        ),
        (
            "hearth_deploy_applied_with_kubectl_serves_through_its_service",
            hearth_deploy_applied_with_kubectl_serves_through_its_service,
        ),
        (
            "logs_and_logs_follow_show_stdout_and_stderr",
            logs_and_logs_follow_show_stdout_and_stderr,
        ),
        (
            "rollout_restart_and_scale_3_10_0_3",
            rollout_restart_and_scale_3_10_0_3,
        ),
        (
            "deleting_a_pod_drains_in_flight_requests_and_kills_after_the_grace_period",
            deleting_a_pod_drains_in_flight_requests_and_kills_after_the_grace_period,
        ),
        (
            "a_function_failing_its_liveness_probe_is_restarted",
            a_function_failing_its_liveness_probe_is_restarted,
        ),
        (
            "a_job_exiting_non_zero_under_restart_always_crash_loops",
            a_job_exiting_non_zero_under_restart_always_crash_loops,
        ),
        (
            "kubernetes_jobs_complete_or_report_their_exit_code",
            kubernetes_jobs_complete_or_report_their_exit_code,
        ),
        (
            "a_configmap_volume_and_a_secret_env_var_reach_the_function",
            a_configmap_volume_and_a_secret_env_var_reach_the_function,
        ),
        ("the_memory_limit_is_enforced", the_memory_limit_is_enforced),
        (
            "the_kubelet_summary_has_real_cpu_and_memory",
            the_kubelet_summary_has_real_cpu_and_memory,
        ),
        (
            "kubectl_exec_says_why_it_cannot",
            kubectl_exec_says_why_it_cannot,
        ),
        (
            "hearthd_restarts_under_load_lose_no_pod_and_no_request",
            hearthd_restarts_under_load_lose_no_pod_and_no_request,
        ),
        (
            "a_containerd_restart_keeps_the_pods",
            a_containerd_restart_keeps_the_pods,
        ),
        (
            "churning_30_pods_twice_leaves_nothing_behind",
            churning_30_pods_twice_leaves_nothing_behind,
        ),
        (
            "the_daemonset_runs_hearthd_and_its_rolling_update_loses_nothing",
            the_daemonset_runs_hearthd_and_its_rolling_update_loses_nothing,
        ),
    ];
    let chosen: Vec<&Scenario> = scenarios
        .iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();
    println!("running {} kube scenarios", chosen.len());
    let mut cluster = Cluster::start();
    let images = Images {
        misbehave: cluster.node.push(MISBEHAVE, "misbehave"),
        job: cluster.node.push(JOB_EXIT, "job-exit"),
        settings: cluster.node.push(SETTINGS, "settings"),
    };
    let mut failed = Vec::new();
    for (name, scenario) in chosen {
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            scenario(&mut cluster, &images)
        }));
        match outcome {
            Ok(()) => println!(
                "test {name} ... ok ({:.1} s)",
                started.elapsed().as_secs_f64()
            ),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                println!("test {name} ... FAILED\n{message}");
                failed.push(*name);
            }
        }
        clean(&cluster);
    }
    if !failed.is_empty() {
        eprintln!(
            "--- hearthd log (tail):\n{}",
            tail(&cluster.node.hearthd.log_text(), 80)
        );
    }
    drop(cluster);
    if failed.is_empty() {
        println!("test result: ok");
    } else {
        println!("test result: FAILED: {}", failed.join(", "));
        std::process::exit(1);
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Deletes what a scenario left in `default` and waits until hearthd
/// holds nothing.
fn clean(cluster: &Cluster) {
    let _ = cluster.kubectl_output(&[
        "delete",
        "deployments,jobs,services,configmaps,secrets,pods",
        "--all",
        "--grace-period=1",
        "--wait=true",
        "--timeout=120s",
    ]);
    let patience = Instant::now() + Duration::from_secs(60);
    while cluster.hearthd_functions() != 0 && Instant::now() < patience {
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// An HTTP/1.0 GET (so the body is not chunked) on a connection of its
/// own: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(90)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP reply: {reply:?}")))?;
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn serves_ok(addr: SocketAddr) -> bool {
    matches!(http_get(addr, "/ok"), Ok((200, _)))
}

/// A Deployment of `replicas` Hearth Pods of `image`, with an HTTP
/// readiness probe on `/ok`, and `extra` appended to the container.
fn deployment(name: &str, image: &str, replicas: u32, extra: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      runtimeClassName: hearth
      terminationGracePeriodSeconds: 5
      containers:
      - name: web
        image: {image}
        ports: [{{containerPort: 8080}}]
        readinessProbe:
          httpGet: {{path: /ok, port: 8080}}
          periodSeconds: 1
{extra}"#
    )
}

fn wait_rollout(cluster: &Cluster, name: &str) {
    cluster.kubectl(&[
        "rollout",
        "status",
        &format!("deployment/{name}"),
        &format!("--timeout={}s", READY.as_secs()),
    ]);
}

/// The IPs of the ready Pods labelled `app=NAME`.
fn ready_pod_ips(cluster: &Cluster, name: &str) -> Vec<SocketAddr> {
    cluster
        .pods(&format!("app={name}"))
        .iter()
        .filter(|pod| pod["metadata"]["deletionTimestamp"].is_null())
        .filter(|pod| {
            pod["status"]["conditions"]
                .as_array()
                .is_some_and(|conditions| {
                    conditions
                        .iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
        })
        .filter_map(|pod| pod["status"]["podIP"].as_str()?.parse().ok())
        .map(|ip| SocketAddr::new(ip, 8080))
        .collect()
}

fn pod_names(cluster: &Cluster, selector: &str) -> Vec<String> {
    cluster
        .pods(selector)
        .iter()
        .filter_map(|pod| pod["metadata"]["name"].as_str().map(str::to_string))
        .collect()
}

fn restart_count(pod: &serde_json::Value) -> u64 {
    pod["status"]["containerStatuses"][0]["restartCount"]
        .as_u64()
        .unwrap_or(0)
}

fn deployment_with_probes_serves_on_every_pod_ip_and_its_service(
    cluster: &mut Cluster,
    images: &Images,
) {
    cluster.apply(&deployment(
        "web",
        &images.misbehave,
        3,
        "        livenessProbe:\n          httpGet: {path: /ok, port: 8080}\n          periodSeconds: 2\n",
    ));
    wait_rollout(cluster, "web");
    let ips = ready_pod_ips(cluster, "web");
    assert_eq!(ips.len(), 3, "three ready Pods: {ips:?}");
    for addr in &ips {
        assert_eq!(
            http_get(*addr, "/ok").unwrap(),
            (200, "ok\n".to_string()),
            "{addr}"
        );
    }
    assert_eq!(cluster.hearthd_functions(), 3);
    // A ClusterIP Service, through kube-proxy's iptables rules.
    cluster.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n",
    );
    let cluster_ip = cluster
        .kubectl(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"])
        .trim()
        .to_string();
    let service: SocketAddr = format!("{cluster_ip}:80").parse().unwrap();
    let answered = (0..240).any(|_| {
        std::thread::sleep(Duration::from_millis(250));
        serves_ok(service)
    });
    if !answered {
        let rules = std::process::Command::new("iptables-save")
            .args(["-t", "nat"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        panic!(
            "the Service {service} never answered\n--- kube-proxy log:\n{}\n--- nat rules:\n{}\n--- endpoints:\n{}",
            tail(&cluster.log("kube-proxy"), 30),
            rules
                .lines()
                .filter(|l| l.contains("KUBE"))
                .take(40)
                .collect::<Vec<_>>()
                .join("\n"),
            cluster.kubectl_text(&["get", "endpoints", "web", "-o", "yaml"])
        );
    }
    for _ in 0..10 {
        assert_eq!(http_get(service, "/ok").unwrap().0, 200);
    }
    // The probes ran against the functions: no restarts.
    for pod in cluster.pods("app=web") {
        assert_eq!(restart_count(&pod), 0, "{pod}");
    }
}

/// What a first-day user does: `hearth deploy IMAGE | kubectl apply -f -`
/// (here with `--apply`, which pipes to kubectl itself), then calls the
/// function through its Service.
/// The README's path, command by command: `hearth new rust-http`, `hearth
/// build`, `hearth push`, `hearth deploy ... --apply` (kubectl), and the
/// function answers through its Service.
fn hearth_deploy_applied_with_kubectl_serves_through_its_service(
    cluster: &mut Cluster,
    _images: &Images,
) {
    let hearth = hearth_testkit::containerd::workspace_binary("hearth");
    let work = tempfile::tempdir().unwrap();
    // Tools and template builds shared with host/tests/authoring.rs.
    let target = hearth_testkit::containerd::target_dir()
        .parent()
        .unwrap()
        .to_path_buf();
    let run = |dir: &std::path::Path, args: &[&str]| {
        let output = std::process::Command::new(&hearth)
            .args(args)
            .current_dir(dir)
            .env("HEARTH_CACHE_DIR", work.path().join("cache"))
            .env("HEARTH_TOOLS_DIR", target.join("guest-tools"))
            .env("CARGO_TARGET_DIR", target.join("template-builds"))
            .env("KUBECONFIG", cluster.work.join("kubeconfig"))
            .output()
            .unwrap();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "hearth {args:?}: {printed}");
        printed
    };
    run(work.path(), &["new", "rust-http", "first"]);
    let project = work.path().join("first");
    let built = run(&project, &["build"]);
    let component = built
        .strip_prefix("built ")
        .and_then(|rest| rest.split(" (").next())
        .unwrap_or_else(|| panic!("no `built PATH` in {built}"))
        .to_string();
    let reference = cluster.node.push(&component, "fn/first");
    let kubectl = cluster.kubectl.display().to_string();
    let printed = run(
        &project,
        &[
            "deploy",
            &reference,
            "--replicas",
            "2",
            "--min-idle",
            "1",
            "--apply",
            "--kubectl",
            &kubectl,
        ],
    );
    assert!(
        printed.contains("deployment.apps/first created"),
        "{printed}"
    );
    assert!(printed.contains("service/first created"), "{printed}");
    wait_rollout(cluster, "first");
    assert_eq!(ready_pod_ips(cluster, "first").len(), 2);
    let cluster_ip = cluster
        .kubectl(&[
            "get",
            "service",
            "first",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .trim()
        .to_string();
    let service: SocketAddr = format!("{cluster_ip}:80").parse().unwrap();
    let mut last = None;
    let answered = (0..240).any(|_| {
        std::thread::sleep(Duration::from_millis(250));
        let reply = http_get(service, "/lamps");
        let ok = matches!(&reply, Ok((200, body)) if body == "Hello from first at /lamps\n");
        last = Some(reply);
        ok
    });
    assert!(answered, "the Service {service} never answered: {last:?}");
    for pod in cluster.pods("app=first") {
        assert_eq!(restart_count(&pod), 0, "the probes pass: {pod}");
        assert_eq!(pod["spec"]["runtimeClassName"], "hearth");
    }
}

fn logs_and_logs_follow_show_stdout_and_stderr(cluster: &mut Cluster, images: &Images) {
    cluster.apply(&deployment("talk", &images.misbehave, 1, ""));
    wait_rollout(cluster, "talk");
    let addr = ready_pod_ips(cluster, "talk")[0];
    let pod = pod_names(cluster, "app=talk").remove(0);
    let mut follow = cluster
        .kubectl_command(&["logs", "-f", &pod])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let followed = Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let followed = followed.clone();
        let mut stdout = follow.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut buffer = [0; 4096];
            while let Ok(n) = stdout.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                followed
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        })
    };
    // Let `logs -f` attach before the function prints.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(http_get(addr, "/print").unwrap().0, 200);
    cluster.wait_for(
        "kubectl logs -f shows both lines",
        Duration::from_secs(30),
        || {
            let text = followed.lock().unwrap();
            text.contains("misbehave: to stdout") && text.contains("misbehave: to stderr")
        },
    );
    let _ = follow.kill();
    let _ = follow.wait();
    let _ = reader.join();
    let logs = cluster.kubectl(&["logs", &pod]);
    assert!(logs.contains("misbehave: to stdout"), "{logs}");
    assert!(logs.contains("misbehave: to stderr"), "{logs}");
}

fn rollout_restart_and_scale_3_10_0_3(cluster: &mut Cluster, images: &Images) {
    cluster.apply(&deployment("scale", &images.misbehave, 3, ""));
    wait_rollout(cluster, "scale");
    let before = pod_names(cluster, "app=scale");
    cluster.kubectl(&["rollout", "restart", "deployment/scale"]);
    wait_rollout(cluster, "scale");
    cluster.wait_for("only the new Pods remain", READY, || {
        let now = pod_names(cluster, "app=scale");
        now.len() == 3 && now.iter().all(|name| !before.contains(name))
    });
    for replicas in [10, 0, 3] {
        cluster.kubectl(&[
            "scale",
            "deployment/scale",
            &format!("--replicas={replicas}"),
        ]);
        wait_rollout(cluster, "scale");
        cluster.wait_for(&format!("{replicas} Pods serve"), READY, || {
            pod_names(cluster, "app=scale").len() == replicas
                && ready_pod_ips(cluster, "scale").len() == replicas
        });
        for addr in ready_pod_ips(cluster, "scale") {
            assert!(serves_ok(addr), "{addr}");
        }
        cluster.wait_for(
            "hearthd holds one function per Pod",
            Duration::from_secs(60),
            || cluster.hearthd_functions() == replicas,
        );
    }
}

fn deleting_a_pod_drains_in_flight_requests_and_kills_after_the_grace_period(
    cluster: &mut Cluster,
    images: &Images,
) {
    cluster.apply(&deployment("drain", &images.misbehave, 2, ""));
    wait_rollout(cluster, "drain");
    let pods = cluster.pods("app=drain");
    let name_and_addr = |pod: &serde_json::Value| {
        (
            pod["metadata"]["name"].as_str().unwrap().to_string(),
            SocketAddr::new(
                pod["status"]["podIP"].as_str().unwrap().parse().unwrap(),
                8080,
            ),
        )
    };
    // A request shorter than the grace period (5 s) finishes.
    let (patient, patient_addr) = name_and_addr(&pods[0]);
    let in_flight = std::thread::spawn(move || http_get(patient_addr, "/sleep?ms=2000"));
    std::thread::sleep(Duration::from_millis(500));
    cluster.kubectl(&["delete", "pod", &patient, "--wait=false"]);
    assert_eq!(
        in_flight.join().unwrap().unwrap(),
        (200, "slept\n".to_string()),
        "the in-flight request finished during the drain"
    );
    // A request that outlives the grace period is cut off at its end.
    let (stubborn, stubborn_addr) = name_and_addr(&pods[1]);
    let cut = std::thread::spawn(move || {
        let started = Instant::now();
        (
            http_get(stubborn_addr, "/sleep?ms=60000"),
            started.elapsed(),
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    let deleting = Instant::now();
    cluster.kubectl(&["delete", "pod", &stubborn, "--wait=true", "--timeout=50s"]);
    let gone_after = deleting.elapsed();
    let (reply, lasted) = cut.join().unwrap();
    assert!(
        !matches!(reply, Ok((200, _))),
        "the request outlived the grace period: {reply:?}"
    );
    assert!(
        lasted < Duration::from_secs(50) && gone_after < Duration::from_secs(50),
        "killed at the end of the grace period, not when the request ended: request {lasted:?}, delete {gone_after:?}"
    );
    let killed = cluster.node.hearthd.log_text();
    assert!(killed.contains("signal=9"), "SIGKILL reached hearthd");
}

fn a_function_failing_its_liveness_probe_is_restarted(cluster: &mut Cluster, images: &Images) {
    // Its liveness path traps on every request.
    cluster.apply(&deployment(
        "trapper",
        &images.misbehave,
        1,
        "        livenessProbe:\n          httpGet: {path: /trap, port: 8080}\n          periodSeconds: 1\n          failureThreshold: 1\n",
    ));
    cluster.wait_for("the kubelet restarted it twice", READY, || {
        cluster
            .pods("app=trapper")
            .first()
            .is_some_and(|pod| restart_count(pod) >= 2)
    });
    let kubelet = cluster.log("kubelet");
    assert!(
        kubelet.contains("failed liveness probe"),
        "the kubelet says why it restarted"
    );
    // One function per running container: the killed ones are gone.
    assert!(cluster.hearthd_functions() <= 1);
}

fn a_job_exiting_non_zero_under_restart_always_crash_loops(cluster: &mut Cluster, images: &Images) {
    cluster.apply(&format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: crasher}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: crasher}}}}
  template:
    metadata: {{labels: {{app: crasher}}}}
    spec:
      runtimeClassName: hearth
      containers:
      - name: job
        image: {}
        env: [{{name: MODE, value: "code:3"}}]
"#,
        images.job
    ));
    cluster.wait_for("CrashLoopBackOff with restarts", READY, || {
        cluster.pods("app=crasher").first().is_some_and(|pod| {
            let status = &pod["status"]["containerStatuses"][0];
            restart_count(pod) >= 2
                && (status["state"]["waiting"]["reason"] == "CrashLoopBackOff"
                    || status["lastState"]["terminated"]["exitCode"] == 3)
        })
    });
    let pod = &cluster.pods("app=crasher")[0];
    assert_eq!(
        pod["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"], 3,
        "{pod}"
    );
    // Between restarts hearthd holds nothing for it.
    cluster.wait_for(
        "hearthd holds nothing while it backs off",
        Duration::from_secs(60),
        || cluster.hearthd_functions() == 0,
    );
}

fn kubernetes_jobs_complete_or_report_their_exit_code(cluster: &mut Cluster, images: &Images) {
    let job = |name: &str, mode: &str| {
        format!(
            r#"apiVersion: batch/v1
kind: Job
metadata: {{name: {name}}}
spec:
  backoffLimit: 0
  template:
    spec:
      runtimeClassName: hearth
      restartPolicy: Never
      containers:
      - name: job
        image: {}
        env: [{{name: MODE, value: "{mode}"}}]
"#,
            images.job
        )
    };
    cluster.apply(&job("works", "ok"));
    cluster.apply(&job("fails", "code:7"));
    cluster.kubectl(&[
        "wait",
        "--for=condition=complete",
        "job/works",
        "--timeout=120s",
    ]);
    cluster.kubectl(&[
        "wait",
        "--for=condition=failed",
        "job/fails",
        "--timeout=120s",
    ]);
    let logs = cluster.kubectl(&["logs", "job/works"]);
    assert!(logs.contains("job-exit: running with MODE=ok"), "{logs}");
    let failed = &cluster.pods("job-name=fails")[0];
    assert_eq!(
        failed["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"], 7,
        "{failed}"
    );
}

fn a_configmap_volume_and_a_secret_env_var_reach_the_function(
    cluster: &mut Cluster,
    images: &Images,
) {
    cluster.apply(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: shop}\ndata: {currency: EUR, greeting: hello}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: keys}\nstringData: {token: s3cret}\n",
    );
    cluster.apply(&format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: configured}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: configured}}}}
  template:
    metadata: {{labels: {{app: configured}}}}
    spec:
      runtimeClassName: hearth
      volumes: [{{name: shop, configMap: {{name: shop}}}}]
      containers:
      - name: web
        image: {}
        env: [{{name: API_TOKEN, valueFrom: {{secretKeyRef: {{name: keys, key: token}}}}}}]
        volumeMounts: [{{name: shop, mountPath: /etc/shop}}]
"#,
        images.settings
    ));
    wait_rollout(cluster, "configured");
    let addr = ready_pod_ips(cluster, "configured")[0];
    for (path, want) in [
        ("/env/API_TOKEN", "s3cret"),
        ("/config/API_TOKEN", "s3cret"),
        ("/config/currency", "EUR"),
        ("/config/greeting", "hello"),
    ] {
        assert_eq!(
            http_get(addr, path).unwrap(),
            (200, want.to_string()),
            "{path}"
        );
    }
    // Only the ConfigMap's keys, not the volume's internals or the
    // service-account token.
    assert_eq!(http_get(addr, "/config/..data").unwrap().0, 404);
    assert_eq!(http_get(addr, "/config/token").unwrap().0, 404);
}

fn the_memory_limit_is_enforced(cluster: &mut Cluster, images: &Images) {
    cluster.apply(&deployment(
        "small",
        &images.misbehave,
        1,
        "        resources: {limits: {memory: 64Mi}}\n",
    ));
    wait_rollout(cluster, "small");
    let addr = ready_pod_ips(cluster, "small")[0];
    assert_eq!(http_get(addr, "/grow?mib=16").unwrap().0, 200);
    let (status, body) = http_get(addr, "/grow?mib=128").unwrap();
    assert!(
        status >= 500,
        "128 MiB under a 64 MiB limit: {status} {body}"
    );
    assert!(serves_ok(addr), "it keeps serving after the refusal");
}

fn the_kubelet_summary_has_real_cpu_and_memory(cluster: &mut Cluster, images: &Images) {
    cluster.apply(&deployment(
        "measured",
        &images.misbehave,
        1,
        "        env: [{name: HEARTH_UNUSED, value: x}]\n",
    ));
    wait_rollout(cluster, "measured");
    let addr = ready_pod_ips(cluster, "measured")[0];
    let pod = pod_names(cluster, "app=measured").remove(0);
    // Work that shows in both: CPU in the guest, and instances holding
    // memory while requests are in flight (a function's memory is that of
    // its live instances: none when it is idle with no pool).
    for _ in 0..20 {
        assert_eq!(http_get(addr, "/grow?mib=8").unwrap().0, 200);
    }
    let in_flight: Vec<_> = (0..3)
        .map(|_| std::thread::spawn(move || http_get(addr, "/sleep?ms=20000")))
        .collect();
    let mut seen = serde_json::Value::Null;
    let found = (0..120).any(|_| {
        std::thread::sleep(Duration::from_millis(500));
        let summary: serde_json::Value = serde_json::from_str(&cluster.kubectl_text(&[
            "get",
            "--raw",
            "/api/v1/nodes/localhost/proxy/stats/summary",
        ]))
        .unwrap_or_default();
        let Some(container) = summary["pods"].as_array().and_then(|pods| {
            pods.iter()
                .find(|p| p["podRef"]["name"] == pod.as_str())
                .and_then(|p| p["containers"].as_array()?.first().cloned())
        }) else {
            return false;
        };
        seen = container.clone();
        container["cpu"]["usageCoreNanoSeconds"]
            .as_u64()
            .unwrap_or(0)
            > 0
            && container["memory"]["workingSetBytes"].as_u64().unwrap_or(0) > 0
    });
    assert!(
        found,
        "no CPU and memory for {pod} in the summary; last seen: {seen:#}"
    );
    for request in in_flight {
        assert_eq!(request.join().unwrap().unwrap().0, 200);
    }
    println!(
        "  summary for {pod}: cpu {} memory {}",
        seen["cpu"], seen["memory"]
    );
}

fn kubectl_exec_says_why_it_cannot(cluster: &mut Cluster, images: &Images) {
    cluster.apply(&deployment("noshell", &images.misbehave, 1, ""));
    wait_rollout(cluster, "noshell");
    let pod = pod_names(cluster, "app=noshell").remove(0);
    let output = cluster.kubectl_output(&["exec", &pod, "--", "sh", "-c", "true"]);
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        said.contains("a function has no processes to exec into"),
        "kubectl exec said: {said}"
    );
}

/// Requests, each on a new connection, against `addrs` until `stop`:
/// (sent, failed, the first failures).
fn load(
    addrs: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(usize, usize, Vec<String>)> {
    std::thread::spawn(move || {
        let sent = AtomicUsize::new(0);
        let mut failures = Vec::new();
        let mut failed = 0;
        while !stop.load(Ordering::Relaxed) {
            for addr in &addrs {
                sent.fetch_add(1, Ordering::Relaxed);
                match http_get(*addr, "/ok") {
                    Ok((200, _)) => {}
                    other => {
                        failed += 1;
                        if failures.len() < 5 {
                            failures.push(format!("{addr}: {other:?}"));
                        }
                    }
                }
            }
        }
        (sent.into_inner(), failed, failures)
    })
}

/// Stops the [`load`] threads and sums what they saw: (sent, failed, the
/// first failures).
fn stop_load(
    stop: &AtomicBool,
    loaders: Vec<std::thread::JoinHandle<(usize, usize, Vec<String>)>>,
) -> (usize, usize, Vec<String>) {
    stop.store(true, Ordering::Relaxed);
    let (mut sent, mut failed, mut failures) = (0, 0, Vec::new());
    for loader in loaders {
        let (s, f, mut first) = loader.join().unwrap();
        sent += s;
        failed += f;
        failures.append(&mut first);
    }
    (sent, failed, failures)
}

fn hearthd_restarts_under_load_lose_no_pod_and_no_request(cluster: &mut Cluster, images: &Images) {
    cluster.apply(&deployment("steady", &images.misbehave, 3, ""));
    wait_rollout(cluster, "steady");
    let addrs = ready_pod_ips(cluster, "steady");
    assert_eq!(addrs.len(), 3);
    for (how, crash) in [("SIGTERM", false), ("SIGKILL", true)] {
        let stop = Arc::new(AtomicBool::new(false));
        let loaders: Vec<_> = (0..2).map(|_| load(addrs.clone(), stop.clone())).collect();
        std::thread::sleep(Duration::from_secs(1));
        let dir = cluster.node.dir.path().to_path_buf();
        let socket = cluster.node.socket.clone();
        if crash {
            cluster.node.hearthd.kill();
        } else {
            let status = cluster.node.hearthd.terminate();
            assert!(status.success(), "hearthd exits 0 on SIGTERM: {status:?}");
        }
        cluster.node.hearthd = start_hearthd(&dir, &socket);
        cluster.wait_for(
            "every Pod is back in the new hearthd",
            Duration::from_secs(60),
            || cluster.hearthd_functions() == 3,
        );
        std::thread::sleep(Duration::from_secs(1));
        let (sent, failed, failures) = stop_load(&stop, loaders);
        println!("  hearthd {how} + restart under load: {sent} requests, {failed} failed");
        if crash {
            // A crash loses what the dead hearthd had accepted: at most the
            // one request each client had in flight. Nothing after it.
            assert!(
                failed <= 2,
                "requests failed across the {how} restart: {failures:?}"
            );
        } else {
            assert_eq!(
                failed, 0,
                "requests failed across the {how} restart: {failures:?}"
            );
        }
        for pod in cluster.pods("app=steady") {
            assert_eq!(restart_count(&pod), 0, "no container was restarted: {pod}");
        }
        assert_eq!(ready_pod_ips(cluster, "steady").len(), 3);
    }
}

fn a_containerd_restart_keeps_the_pods(cluster: &mut Cluster, images: &Images) {
    cluster.apply(&deployment("survive", &images.misbehave, 2, ""));
    wait_rollout(cluster, "survive");
    let addrs = ready_pod_ips(cluster, "survive");
    cluster.node.containerd.restart();
    for addr in &addrs {
        assert!(
            serves_ok(*addr),
            "{addr} serves through the containerd restart"
        );
    }
    cluster.wait_for("the kubelet sees both Pods ready again", READY, || {
        ready_pod_ips(cluster, "survive").len() == 2
    });
    for pod in cluster.pods("app=survive") {
        assert_eq!(restart_count(&pod), 0, "{pod}");
    }
    // And the kubelet can still stop them.
    cluster.kubectl(&["scale", "deployment/survive", "--replicas=0"]);
    cluster.wait_for("both Pods are gone", READY, || {
        pod_names(cluster, "app=survive").is_empty()
    });
    cluster.wait_for("hearthd holds nothing", Duration::from_secs(60), || {
        cluster.hearthd_functions() == 0
    });
}

fn churning_30_pods_twice_leaves_nothing_behind(cluster: &mut Cluster, images: &Images) {
    cluster.apply(&deployment("churn", &images.misbehave, 0, ""));
    for round in 1..=2 {
        cluster.kubectl(&["scale", "deployment/churn", "--replicas=30"]);
        cluster.wait_for(
            &format!("round {round}: 30 Pods ready"),
            Duration::from_secs(300),
            || ready_pod_ips(cluster, "churn").len() == 30,
        );
        cluster.kubectl(&["scale", "deployment/churn", "--replicas=0"]);
        cluster.wait_for(
            &format!("round {round}: every Pod gone"),
            Duration::from_secs(300),
            || pod_names(cluster, "app=churn").is_empty(),
        );
    }
    cluster.wait_for("no shim is left", Duration::from_secs(60), || {
        cluster.node.shims().is_empty()
    });
    assert_eq!(
        cluster.hearthd_functions(),
        0,
        "no function is left in hearthd"
    );
    let mounts = mounts_under(cluster.node.containerd.root());
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    let netns_dir = cluster.node.containerd.state_dir();
    let netns: Vec<String> = std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .filter(|line| line.contains("nsfs") && line.contains(&*netns_dir.to_string_lossy()))
        .map(str::to_string)
        .collect();
    assert!(netns.is_empty(), "network namespaces left: {netns:?}");
}

/// `deploy/daemonset.yaml` for this node: the image built here, and the
/// node's paths for the host directories it mounts (the control socket's
/// directory, the cache, where the shim is installed); everything else as
/// shipped.
fn daemonset_for_this_node(
    cluster: &Cluster,
    image: &str,
    install_dir: &str,
    admin_port: u16,
) -> String {
    let shipped =
        std::fs::read_to_string(hearth_kube_tests::rig_dir().join("../../deploy/daemonset.yaml"))
            .expect("deploy/daemonset.yaml");
    let socket_dir = cluster.node.socket.parent().unwrap().display().to_string();
    let cache_dir = cluster.node.dir.path().join("daemonset-cache");
    let replaced = [
        ("ghcr.io/hearth-dev/hearthd:0.1.0", image.to_string()),
        ("{path: /run/hearth,", format!("{{path: {socket_dir},")),
        (
            "{path: /var/lib/hearth,",
            format!("{{path: {},", cache_dir.display()),
        ),
        ("{path: /usr/local/bin,", format!("{{path: {install_dir},")),
        ("127.0.0.1:9464", format!("127.0.0.1:{admin_port}")),
    ];
    let mut manifest = shipped;
    for (from, to) in replaced {
        assert!(
            manifest.contains(from),
            "deploy/daemonset.yaml no longer has `{from}`"
        );
        manifest = manifest.replace(from, &to);
    }
    manifest
}

fn the_daemonset_runs_hearthd_and_its_rolling_update_loses_nothing(
    cluster: &mut Cluster,
    images: &Images,
) {
    let scratch = cluster.node.dir.path().join("daemonset");
    let install_dir = scratch.join("bin");
    std::fs::create_dir_all(&install_dir).unwrap();
    let built = hearth_kube_tests::image::hearthd_image(&scratch);
    let image = cluster.node.registry.reference("hearth/hearthd", "test");
    hearth_testkit::registry::skopeo_push(&built, &image, false);
    let admin_port = hearth_testkit::registry::free_port();
    // The operator guide: label the node, apply both manifests.
    cluster.kubectl(&[
        "label",
        "node",
        "localhost",
        "hearth.dev/runtime=true",
        "--overwrite",
    ]);
    cluster.apply(&daemonset_for_this_node(
        cluster,
        &image,
        &install_dir.display().to_string(),
        admin_port,
    ));
    cluster.kubectl(&[
        "apply",
        "-f",
        &hearth_kube_tests::rig_dir()
            .join("../../deploy/runtimeclass.yaml")
            .display()
            .to_string(),
    ]);
    let daemon_logs = |cluster: &Cluster| {
        cluster.kubectl_text(&[
            "logs",
            "-n",
            "kube-system",
            "daemonset/hearthd",
            "--tail=-1",
        ])
    };
    // The test's own hearthd still holds the node: the DaemonSet's waits.
    cluster.wait_for(
        "the DaemonSet's hearthd waits for the node lock",
        READY,
        || daemon_logs(cluster).contains("waiting for it to exit"),
    );
    assert!(
        install_dir.join("containerd-shim-hearth-v1").exists(),
        "the init container installed the shim"
    );
    let status = cluster.node.hearthd.terminate();
    assert!(status.success(), "{status:?}");
    cluster.wait_for("the DaemonSet's hearthd is ready", READY, || {
        daemon_logs(cluster).contains("hearthd ready")
    });
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cluster.apply(&deployment("upgraded", &images.misbehave, 3, ""));
        wait_rollout(cluster, "upgraded");
        let addrs = ready_pod_ips(cluster, "upgraded");
        assert_eq!(addrs.len(), 3);
        let stop = Arc::new(AtomicBool::new(false));
        let loaders: Vec<_> = (0..2).map(|_| load(addrs.clone(), stop.clone())).collect();
        std::thread::sleep(Duration::from_secs(1));
        let old_daemon = daemon_pods(cluster).remove(0);
        cluster.kubectl(&[
            "rollout",
            "restart",
            "-n",
            "kube-system",
            "daemonset/hearthd",
        ]);
        cluster.kubectl(&[
            "rollout",
            "status",
            "-n",
            "kube-system",
            "daemonset/hearthd",
            "--timeout=180s",
        ]);
        cluster.wait_for("the new hearthd Pod serves the Pods", READY, || {
            let names = daemon_pods(cluster);
            names.len() == 1 && names[0] != old_daemon && cluster.hearthd_functions() == 3
        });
        std::thread::sleep(Duration::from_secs(1));
        let (sent, failed, failures) = stop_load(&stop, loaders);
        println!("  DaemonSet rolling update under load: {sent} requests, {failed} failed");
        assert_eq!(
            failed, 0,
            "requests failed across the rolling update: {failures:?}"
        );
        for pod in cluster.pods("app=upgraded") {
            assert_eq!(restart_count(&pod), 0, "{pod}");
        }
        clean(cluster);
    }));
    // Give the node back to the test's hearthd.
    cluster.kubectl(&[
        "delete",
        "-n",
        "kube-system",
        "daemonset/hearthd",
        "--wait=true",
        "--timeout=120s",
    ]);
    cluster.wait_for("the DaemonSet's Pod is gone", READY, || {
        daemon_pods(cluster).is_empty()
    });
    let dir = cluster.node.dir.path().to_path_buf();
    let socket = cluster.node.socket.clone();
    cluster.node.hearthd = start_hearthd(&dir, &socket);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// The names of the hearthd DaemonSet's Pods.
fn daemon_pods(cluster: &Cluster) -> Vec<String> {
    cluster.get_json(&[
        "pods",
        "-n",
        "kube-system",
        "-l",
        "app.kubernetes.io/name=hearthd",
    ])["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|pod| pod["metadata"]["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
