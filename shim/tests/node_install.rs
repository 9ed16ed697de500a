//! `hearth node install` against the real containerd the tests run
//! (Debian's 1.6): taken out of containerd's config, the `hearth` runtime
//! handler is unknown to the CRI; put back by the installer (shim into a bin
//! dir of its own, the config edited in place), containerd restarted, a Pod
//! runs on the shim the installer put there and serves; a second install
//! changes nothing and restarts nothing. The sample configs of other
//! containerd versions, k3s and RKE2 are in `node-install/tests/`.

use hearth_testkit::HELLO;
use hearth_testkit::containerd::workspace_binary;
use hearth_testkit::cri::{ContainerSpec, Cri, Network};
use hearth_testkit::http::get;
use hearth_testkit::node::{Node, wait_until};
use hearth_testkit::process::run_to_end;
use hearth_testkit::registry::free_port;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use tokio::runtime::Runtime;

/// Runs `hearth node SUBCOMMAND` with `args`; its stdout, asserting success.
fn hearth_node(subcommand: &str, args: &[&str]) -> String {
    let (status, output) = run_to_end(
        Command::new(workspace_binary("hearth"))
            .args(["node", subcommand, "--host-root", "/"])
            .args(args),
    );
    assert!(
        status.success(),
        "hearth node {subcommand} {args:?}:\n{output}"
    );
    output
}

fn restarts(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

#[test]
fn the_installer_registers_the_runtime_in_a_real_containerd_1_6_and_a_pod_runs_on_its_shim() {
    let mut node = Node::start();
    let runtime = Runtime::new().unwrap();
    let logs = node.dir.path().join("pods");
    let config = node.containerd.config_path();
    let config_arg = config.to_str().unwrap().to_string();
    let restart_log = node.dir.path().join("restarts.log");
    let restart = format!("echo restart >> {}", restart_log.display());

    // Without the runtime, the CRI does not know the handler.
    let report = hearth_node(
        "uninstall",
        &[
            "--no-shim",
            "--config",
            &config_arg,
            "--restart-command",
            &restart,
        ],
    );
    assert!(report.contains("containerd restarted"), "{report}");
    assert_eq!(restarts(&restart_log), 1);
    node.containerd.restart();
    let cri = runtime.block_on(Cri::connect(&node.containerd));
    let refused = runtime
        .block_on(cri.run_pod("before", Network::Host, &logs))
        .expect_err("a Pod with an unknown runtime handler");
    assert!(refused.message().contains("hearth"), "{refused}");

    // The installer puts the shim in a bin dir of its own and the runtime
    // back, by its type (`io.containerd.hearth.v1`), as on a real node.
    let bin = tempfile::tempdir().unwrap();
    let bin_arg = bin.path().to_str().unwrap().to_string();
    let shim = workspace_binary("containerd-shim-hearth-v1");
    let install_args = [
        "--shim",
        shim.to_str().unwrap(),
        "--bin-dir",
        &bin_arg,
        "--config",
        &config_arg,
        "--restart-command",
        &restart,
    ];
    let report = hearth_node("install", &install_args);
    assert!(
        report.contains("node: containerd (containerd config version 2)"),
        "{report}"
    );
    assert!(report.contains("written (backup: "), "{report}");
    assert_eq!(restarts(&restart_log), 2);
    let edited = std::fs::read_to_string(&config).unwrap();
    assert!(
        edited.contains("runtime_type = \"io.containerd.hearth.v1\""),
        "{edited}"
    );
    let installed = bin.path().join("containerd-shim-hearth-v1");
    node.containerd.restart_with_path_first(bin.path());

    let cri = runtime.block_on(Cri::connect(&node.containerd));
    let image = node.push(HELLO, "hello");
    let pod = runtime
        .block_on(cri.run_pod("after", Network::Host, &logs))
        .unwrap_or_else(|status| panic!("RunPodSandbox after install: {status}"));
    let port = free_port();
    let port_text = port.to_string();
    runtime
        .block_on(cri.run_container(
            &pod,
            &ContainerSpec {
                name: "hello",
                image: &image,
                env: &[("PORT", &port_text)],
                command: &[],
                ..ContainerSpec::default()
            },
        ))
        .unwrap_or_else(|status| panic!("hello container: {status}"));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let reply = runtime.block_on(get(addr, "/")).unwrap();
    assert_eq!(reply.status, 200);
    assert!(reply.text().contains("Hello"), "{}", reply.text());
    let shims = node.shims();
    assert!(!shims.is_empty());
    for pid in shims {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert_eq!(
            exe, installed,
            "the shim containerd started is the installed one"
        );
    }

    // Installing again changes nothing and restarts nothing.
    let report = hearth_node("install", &install_args);
    assert!(report.contains(": unchanged\nshim"), "{report}");
    assert!(report.contains("its config did not change"), "{report}");
    assert_eq!(restarts(&restart_log), 2);
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);

    runtime.block_on(cri.remove_pod(&pod)).unwrap();
    wait_until("the Pod's shims exited", || node.shims().is_empty());
}
