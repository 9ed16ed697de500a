//! The shim under a real containerd, driven with `ctr`: images pushed by
//! `hearth push` to a local `docker-registry`, pulled by containerd, run with
//! `--runtime io.containerd.hearth.v1`, their functions run by a private
//! hearthd.

use hearth_testkit::containerd::{Containerd, mounts_under, processes_matching};
use hearth_testkit::http::get;
use hearth_testkit::node::{Node, start_hearthd, wait_until};
use hearth_testkit::registry::{free_port, skopeo_push};
use hearth_testkit::{JOB_EXIT, MISBEHAVE};
use std::process::{Command, Output};
use std::time::Duration;

/// `ctr run MODE` (`--rm` or `-d`) of `image` as task `id` with the Hearth
/// runtime on the host network, with `env` (KEY=VALUE); ctr's output.
fn ctr_run(containerd: &Containerd, mode: &str, env: &[&str], image: &str, id: &str) -> Output {
    let mut args = vec![
        "run",
        mode,
        "--runtime",
        "io.containerd.hearth.v1",
        "--platform",
        "wasip2/wasm",
        "--net-host",
    ];
    for variable in env {
        args.extend(["--env", variable]);
    }
    args.extend([image, id]);
    containerd.ctr_output(&args)
}

/// Runs `image` as a detached host-network service task `id` on a free
/// port; its address.
fn run_service(node: &Node, image: &str, id: &str) -> std::net::SocketAddr {
    let port = free_port();
    let output = ctr_run(
        &node.containerd,
        "-d",
        &[&format!("PORT={port}")],
        image,
        id,
    );
    assert!(
        output.status.success(),
        "ctr run -d {id} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    format!("127.0.0.1:{port}").parse().unwrap()
}

/// The status `ctr tasks ls` shows for task `id`, or `MISSING`.
fn task_status(node: &Node, id: &str) -> String {
    let tasks = node.containerd.ctr(&["tasks", "ls"]);
    tasks
        .lines()
        .find(|line| line.split_whitespace().next() == Some(id))
        .and_then(|line| line.split_whitespace().nth(2))
        .unwrap_or("MISSING")
        .to_string()
}

#[test]
fn a_job_runs_under_ctr_with_its_exit_code_and_stdout() {
    let node = Node::start();
    let image = node.image(JOB_EXIT, "job-exit");
    let output = ctr_run(&node.containerd, "--rm", &["MODE=code:7"], &image, "job-7");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(7),
        "stdout: {stdout}\nstderr: {stderr}\nhearthd:\n{}\ncontainerd:\n{}",
        node.hearthd.log_text(),
        node.containerd.log_text()
    );
    assert!(
        stdout.contains("job-exit: running with MODE=code:7"),
        "stdout: {stdout}\nstderr: {stderr}"
    );

    // `--rm` deleted the task and container: nothing is left anywhere.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    wait_until("the shim exited", || node.shims().is_empty());
    assert_eq!(runtime.block_on(node.hearthd_functions()), 0);
    assert!(
        mounts_under(&node.containerd.state_dir()).is_empty(),
        "mounts left: {:?}",
        mounts_under(&node.containerd.state_dir())
    );
}

#[test]
fn a_service_under_ctr_serves_and_drains_on_sigterm() {
    let node = Node::start();
    let image = node.image(MISBEHAVE, "misbehave");
    let addr = run_service(&node, &image, "svc");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let reply = runtime.block_on(get(addr, "/ok")).unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "ok\n");
    let tasks = node.containerd.ctr(&["tasks", "ls"]);
    assert!(
        tasks.contains("svc") && tasks.contains("RUNNING"),
        "{tasks}"
    );

    // A request in flight when SIGTERM arrives still completes.
    let in_flight = runtime.spawn(get(addr, "/sleep?ms=1500"));
    std::thread::sleep(Duration::from_millis(300));
    node.containerd.ctr(&["tasks", "kill", "svc"]);
    let reply = runtime.block_on(in_flight).unwrap().unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "slept\n");
    wait_until("the task stopped", || {
        node.containerd.ctr(&["tasks", "ls"]).contains("STOPPED")
    });
    assert!(
        runtime.block_on(get(addr, "/ok")).is_err(),
        "still serving after drain"
    );
    node.hearthd.wait_for_line("reason=\"drained\"");

    node.containerd.ctr(&["tasks", "delete", "svc"]);
    node.containerd.ctr(&["containers", "delete", "svc"]);
    wait_until("the shim exited", || node.shims().is_empty());
    assert_eq!(runtime.block_on(node.hearthd_functions()), 0);
    assert!(mounts_under(&node.containerd.state_dir()).is_empty());
}

fn serves_ok(runtime: &tokio::runtime::Runtime, addr: std::net::SocketAddr) -> bool {
    runtime
        .block_on(get(addr, "/ok"))
        .is_ok_and(|reply| reply.status == 200)
}

#[test]
fn stats_and_pids_report_the_function() {
    let node = Node::start();
    let image = node.image(MISBEHAVE, "misbehave");
    let addr = run_service(&node, &image, "stats");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // A request in flight holds an instance, and so linear memory.
    let in_flight = runtime.spawn(get(addr, "/sleep?ms=2000"));
    std::thread::sleep(Duration::from_millis(500));
    let metrics = node.containerd.ctr(&["tasks", "metrics", "stats"]);
    let usage_line = metrics
        .lines()
        .find(|line| line.contains("memory.usage_in_bytes") || line.contains("memory.usage"))
        .unwrap_or_else(|| panic!("no memory usage in:\n{metrics}"));
    let usage: u64 = usage_line
        .split_whitespace()
        .last()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("unreadable: {usage_line}"));
    assert!(
        usage >= 64 * 1024,
        "a live instance holds linear memory: {metrics}"
    );
    assert_eq!(runtime.block_on(in_flight).unwrap().unwrap().status, 200);
    let pids = node.containerd.ctr(&["tasks", "ps", "stats"]);
    let shim = node.shims();
    assert_eq!(shim.len(), 1);
    assert!(
        pids.contains(&shim[0].to_string()),
        "task pid is the shim's: {pids}"
    );
}

#[test]
fn a_hearthd_restart_reloads_running_functions() {
    let mut node = Node::start();
    let image = node.image(MISBEHAVE, "misbehave");
    let addr = run_service(&node, &image, "survivor");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    assert!(serves_ok(&runtime, addr));

    node.restart_hearthd();
    wait_until("the function serves again from the new hearthd", || {
        serves_ok(&runtime, addr)
    });
    assert_eq!(task_status(&node, "survivor"), "RUNNING");
    node.hearthd.wait_for_line("function created");
    assert_eq!(runtime.block_on(node.hearthd_functions()), 1);

    node.containerd.ctr(&["tasks", "kill", "survivor"]);
    wait_until("the task stopped", || {
        task_status(&node, "survivor") == "STOPPED"
    });
}

#[test]
fn a_function_hearthd_cannot_reload_is_reported_exited_with_the_reason() {
    let mut node = Node::start();
    let image = node.image(MISBEHAVE, "misbehave");
    let addr = run_service(&node, &image, "lost");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    assert!(serves_ok(&runtime, addr));
    // While hearthd is down, the component disappears from the task's
    // rootfs, so the restarted hearthd cannot load it again.
    node.hearthd.kill();
    let task_dir = node
        .containerd
        .state_dir()
        .join("io.containerd.runtime.v2.task");
    let component = std::fs::read_dir(&task_dir)
        .unwrap()
        .flatten()
        .map(|namespace| namespace.path().join("lost/rootfs/function.wasm"))
        .find(|path| path.exists())
        .unwrap_or_else(|| panic!("no lost/rootfs/function.wasm under {}", task_dir.display()));
    std::fs::remove_file(&component).unwrap();
    node.hearthd = start_hearthd(node.dir.path(), &node.socket);
    wait_until("the task is reported stopped", || {
        task_status(&node, "lost") == "STOPPED"
    });
    let tasks = node.containerd.ctr(&["tasks", "ls"]);
    let status = node.containerd.ctr_output(&["tasks", "delete", "lost"]);
    let printed = String::from_utf8_lossy(&status.stdout).to_string()
        + &String::from_utf8_lossy(&status.stderr);
    assert!(
        printed.contains("255"),
        "exit status 255 expected: {printed}\n{tasks}"
    );
    assert_eq!(runtime.block_on(node.hearthd_functions()), 0);
}

#[test]
fn a_shim_that_dies_leaves_nothing_running_in_hearthd() {
    let node = Node::start();
    let image = node.image(MISBEHAVE, "misbehave");
    let addr = run_service(&node, &image, "orphan");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    assert!(serves_ok(&runtime, addr));
    let shims = node.shims();
    assert_eq!(shims.len(), 1);
    Command::new("kill")
        .args(["-KILL", &shims[0].to_string()])
        .status()
        .unwrap();
    wait_until("hearthd forgot the function", || {
        runtime.block_on(node.hearthd_functions()) == 0
    });
    assert!(
        !serves_ok(&runtime, addr),
        "still serving after its shim died"
    );
    // Whichever comes first stops it: containerd's `shim delete` cleanup, or
    // hearthd's owner sweep (tested on its own in host/tests/control.rs).
    let log = node.hearthd.log_text();
    assert!(
        log.contains("owner process is gone") || log.contains("signal=9"),
        "{log}"
    );
    // containerd notices the dead shim and cleans up the bundle's mounts.
    wait_until("the task is gone or stopped", || {
        task_status(&node, "orphan") != "RUNNING"
    });
    let _ = node.containerd.ctr_output(&["tasks", "delete", "orphan"]);
    let _ = node
        .containerd
        .ctr_output(&["containers", "delete", "orphan"]);
    wait_until("no mounts are left", || {
        mounts_under(&node.containerd.state_dir()).is_empty()
    });
}

#[test]
fn a_containerd_restart_reconnects_to_running_shims() {
    let mut node = Node::start();
    let image = node.image(MISBEHAVE, "misbehave");
    let addr = run_service(&node, &image, "steady");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let shims_before = node.shims();
    node.containerd.restart();
    assert_eq!(node.shims(), shims_before, "the shim survived containerd");
    assert_eq!(task_status(&node, "steady"), "RUNNING");
    assert!(serves_ok(&runtime, addr));
    node.containerd
        .ctr(&["tasks", "kill", "--signal", "SIGKILL", "steady"]);
    wait_until("the task stopped", || {
        task_status(&node, "steady") == "STOPPED"
    });
    node.containerd.ctr(&["tasks", "delete", "steady"]);
    wait_until("the shim exited", || node.shims().is_empty());
}

#[test]
fn sigkill_during_a_request_stops_at_once_with_137() {
    let node = Node::start();
    let image = node.image(MISBEHAVE, "misbehave");
    let addr = run_service(&node, &image, "victim");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let in_flight = runtime.spawn(get(addr, "/sleep?ms=20000"));
    std::thread::sleep(Duration::from_millis(300));
    node.containerd
        .ctr(&["tasks", "kill", "--signal", "SIGKILL", "victim"]);
    let cut = runtime.block_on(in_flight).unwrap();
    assert!(
        cut.is_err(),
        "the in-flight request was not cut: {:?}",
        cut.map(|r| r.status)
    );
    wait_until("the task stopped", || {
        task_status(&node, "victim") == "STOPPED"
    });
    let deleted = node.containerd.ctr_output(&["tasks", "delete", "victim"]);
    let printed = String::from_utf8_lossy(&deleted.stdout).to_string()
        + &String::from_utf8_lossy(&deleted.stderr);
    assert!(printed.contains("137"), "{printed}");
}

#[test]
fn bad_input_fails_create_with_a_named_error_and_leaves_nothing() {
    let node = Node::start();
    // A core module instead of a component.
    let dir = tempfile::tempdir().unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    // `hearth push` refuses core modules; push one the way other tools would.
    let image = node.registry.reference("core-module", "1");
    let built = hearth_prewarm::image::build(
        hearth_prewarm::image::ImageForm::Image,
        &std::fs::read(&core).unwrap(),
    );
    skopeo_push(&built, &image, false);
    node.pull_for_ctr(&image);
    let output = ctr_run(&node.containerd, "--rm", &[], &image, "core");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("core WebAssembly module"), "{stderr}");
    node.hearthd.wait_for_line("create failed");

    // hearthd unreachable: a containerd whose shims look elsewhere.
    let nowhere = dir.path().join("no-hearthd.sock");
    let lonely = Containerd::start(&nowhere, &node.pause_image, None);
    let job = node.image(JOB_EXIT, "job-exit");
    // The image is in the first containerd; import it into the second.
    let exported = dir.path().join("job.tar");
    node.containerd.ctr(&[
        "images",
        "export",
        "--platform",
        "wasip2/wasm",
        exported.to_str().unwrap(),
        &job,
    ]);
    lonely.ctr(&[
        "images",
        "import",
        "--platform",
        "wasip2/wasm",
        exported.to_str().unwrap(),
    ]);
    let output = ctr_run(&lonely, "--rm", &[], &job, "unreachable");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(nowhere.to_str().unwrap()) && stderr.contains("hearthd"),
        "the error names the socket: {stderr}"
    );

    // Nothing leaked: no shims, no mounts, nothing in hearthd.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    wait_until("no shims are left", || {
        node.shims().is_empty()
            && processes_matching(
                "containerd-shim-hearth-v1",
                &lonely.address().to_string_lossy(),
            )
            .is_empty()
    });
    assert!(mounts_under(&node.containerd.state_dir()).is_empty());
    assert!(mounts_under(&lonely.state_dir()).is_empty());
    assert_eq!(runtime.block_on(node.hearthd_functions()), 0);

    // Delete of an unknown id is a not-found error.
    let output = node
        .containerd
        .ctr_output(&["tasks", "delete", "no-such-task"]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("not found"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
