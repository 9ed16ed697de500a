//! The installer on sample nodes: a fake host root per test holding the
//! config a containerd 1.6 / 1.7 / 2.x, k3s or RKE2 node has, and a restart
//! command that records each restart. The run against the real containerd
//! the tests start is in `host/tests/node_install.rs`.

use std::path::{Path, PathBuf};

use hearth_node_install::{
    Change, Flavor, InstallError, Options, Restart, config_with_runtime, install, uninstall,
};

/// A fake node: `root` is its `/`.
struct Node {
    root: tempfile::TempDir,
    restarts: PathBuf,
}

impl Node {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let restarts = root.path().join("restarts.log");
        Node { root, restarts }
    }

    fn with_file(self, host_path: &str, content: &str) -> Self {
        let path = self.path(host_path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
        self
    }

    fn path(&self, host_path: &str) -> PathBuf {
        self.root.path().join(host_path.trim_start_matches('/'))
    }

    fn options(&self) -> Options {
        let mut options = Options::new(self.root.path());
        options.restart =
            Restart::Command(format!("echo restarted >> {}", self.restarts.display()));
        options
    }

    fn restarts(&self) -> usize {
        std::fs::read_to_string(&self.restarts)
            .map(|text| text.lines().count())
            .unwrap_or(0)
    }

    fn read(&self, host_path: &str) -> String {
        std::fs::read_to_string(self.path(host_path)).unwrap()
    }

    fn backups(&self, host_path: &str) -> Vec<PathBuf> {
        let path = self.path(host_path);
        let prefix = format!("{}.bak.", path.file_name().unwrap().to_string_lossy());
        let mut backups: Vec<PathBuf> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&prefix)
            })
            .collect();
        backups.sort();
        backups
    }
}

fn sample(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/configs")
            .join(name),
    )
    .unwrap()
}

/// The hearth runtime table of a parsed config, by the path containerd reads.
fn hearth_runtime(config: &toml::Table, cri: &str) -> toml::Table {
    let mut table = config;
    for key in ["plugins", cri, "containerd", "runtimes", "hearth"] {
        table = table
            .get(key)
            .and_then(toml::Value::as_table)
            .unwrap_or_else(|| {
                panic!("no `{key}` on the way to the hearth runtime in:\n{config:#?}")
            });
    }
    table.clone()
}

fn assert_registered(config_text: &str, cri: &str) {
    let config: toml::Table = toml::from_str(config_text)
        .unwrap_or_else(|error| panic!("not TOML ({error}):\n{config_text}"));
    let runtime = hearth_runtime(&config, cri);
    assert_eq!(
        runtime.get("runtime_type").and_then(|v| v.as_str()),
        Some("io.containerd.hearth.v1"),
        "{config_text}"
    );
    let annotations = runtime["pod_annotations"].as_array().unwrap();
    assert!(
        annotations
            .iter()
            .any(|a| a.as_str() == Some("hearth.dev/*")),
        "{config_text}"
    );
}

/// Every non-blank line of `before` is still in `after`, in order: the
/// operator's settings and comments survive.
fn assert_kept(before: &str, after: &str) {
    let mut rest = after.lines();
    for line in before.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            rest.any(|l| l == line),
            "line `{line}` of the original is gone or moved:\n{after}"
        );
    }
}

#[test]
fn containerd_1_6_default_config_gets_the_runtime_once_with_a_backup_and_one_restart() {
    let original = sample("containerd-1.6-default.toml");
    let node = Node::new().with_file("/etc/containerd/config.toml", &original);

    let report = install(&node.options()).unwrap();
    assert_eq!(report.target.flavor, Flavor::Containerd);
    assert_eq!(report.target.config_version, 2);
    assert!(!report.target.template);
    let after = node.read("/etc/containerd/config.toml");
    assert_registered(&after, "io.containerd.grpc.v1.cri");
    assert_kept(&original, &after);
    let backups = node.backups("/etc/containerd/config.toml");
    assert_eq!(backups.len(), 1);
    assert_eq!(std::fs::read_to_string(&backups[0]).unwrap(), original);
    assert!(matches!(report.config, Change::Written { backup: Some(ref b) } if *b == backups[0]));
    assert_eq!(node.restarts(), 1);

    // Again: nothing to do, nothing written, no restart, no new backup.
    let again = install(&node.options()).unwrap();
    assert_eq!(again.config, Change::Unchanged);
    assert_eq!(node.read("/etc/containerd/config.toml"), after);
    assert_eq!(node.restarts(), 1);
    assert_eq!(node.backups("/etc/containerd/config.toml").len(), 1);
    assert!(
        again.to_string().contains("its config did not change"),
        "{again}"
    );
}

#[test]
fn containerd_1_7_config_keeps_the_operator_s_runtimes_and_comments() {
    let original = sample("containerd-1.7-kubeadm.toml");
    let node = Node::new().with_file("/etc/containerd/config.toml", &original);
    install(&node.options()).unwrap();
    let after = node.read("/etc/containerd/config.toml");
    assert_registered(&after, "io.containerd.grpc.v1.cri");
    assert_kept(&original, &after);
    let config: toml::Table = toml::from_str(&after).unwrap();
    let runtimes = &config["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"];
    assert_eq!(
        runtimes["runc"]["options"]["SystemdCgroup"].as_bool(),
        Some(true)
    );
    assert_eq!(
        runtimes["runsc"]["runtime_type"].as_str(),
        Some("io.containerd.runsc.v1")
    );
    assert_eq!(
        config["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["default_runtime_name"]
            .as_str(),
        Some("runc"),
        "hearth is a RuntimeClass, never the default"
    );
}

#[test]
fn containerd_2_config_is_edited_in_the_version_3_layout() {
    let original = sample("containerd-2.0-default.toml");
    let node = Node::new().with_file("/etc/containerd/config.toml", &original);
    let report = install(&node.options()).unwrap();
    assert_eq!(report.target.config_version, 3);
    let after = node.read("/etc/containerd/config.toml");
    assert_registered(&after, "io.containerd.cri.v1.runtime");
    assert_kept(&original, &after);
    let config: toml::Table = toml::from_str(&after).unwrap();
    assert!(
        config["plugins"]["io.containerd.grpc.v1.cri"]
            .get("containerd")
            .is_none(),
        "v3 has no runtimes under the grpc CRI plugin:\n{after}"
    );
    install(&node.options()).unwrap();
    assert_eq!(node.restarts(), 1);
}

#[test]
fn an_unversioned_config_is_containerd_1_x_format_1() {
    let original = sample("containerd-1.x-v1.toml");
    let node = Node::new().with_file("/etc/containerd/config.toml", &original);
    let report = install(&node.options()).unwrap();
    assert_eq!(report.target.config_version, 1);
    let after = node.read("/etc/containerd/config.toml");
    assert_registered(&after, "cri");
    assert_kept(&original, &after);
}

#[test]
fn a_hand_installed_runtime_is_corrected_keeping_what_the_installer_does_not_own() {
    let original = sample("containerd-1.7-hand-installed.toml");
    let node = Node::new().with_file("/etc/containerd/config.toml", &original);
    install(&node.options()).unwrap();
    let after = node.read("/etc/containerd/config.toml");
    assert_registered(&after, "io.containerd.grpc.v1.cri");
    let config: toml::Table = toml::from_str(&after).unwrap();
    let runtime = hearth_runtime(&config, "io.containerd.grpc.v1.cri");
    assert_eq!(
        runtime["pod_annotations"].as_array().unwrap().len(),
        2,
        "example.com/trace is kept: {after}"
    );
    assert_eq!(
        runtime["privileged_without_host_devices"].as_bool(),
        Some(true)
    );
    assert!(
        after.contains("# a key the installer does not own"),
        "{after}"
    );
}

#[test]
fn no_config_at_all_writes_one_for_the_version_of_containerd_given() {
    for (version, cri, config_version) in [
        ("1.7.22", "io.containerd.grpc.v1.cri", 2),
        ("v2.0.0", "io.containerd.cri.v1.runtime", 3),
    ] {
        let node = Node::new();
        let mut options = node.options();
        options.containerd_version = Some(version.into());
        let report = install(&options).unwrap();
        assert_eq!(report.target.config_version, config_version);
        assert_eq!(report.config, Change::Written { backup: None });
        let after = node.read("/etc/containerd/config.toml");
        assert!(
            after.starts_with(&format!("version = {config_version}\n")),
            "{after}"
        );
        assert_registered(&after, cri);
    }
}

#[test]
fn no_config_and_no_containerd_binary_is_an_error_naming_the_flag() {
    let node = Node::new();
    let error = install(&node.options()).unwrap_err();
    assert!(matches!(error, InstallError::NoVersion(_)), "{error}");
    assert!(
        error.to_string().contains("--containerd-version"),
        "{error}"
    );
    assert!(!node.path("/etc/containerd/config.toml").exists());
}

#[test]
fn a_broken_config_is_refused_and_left_untouched_with_no_restart() {
    let original = sample("broken.toml");
    let node = Node::new().with_file("/etc/containerd/config.toml", &original);
    let error = install(&node.options()).unwrap_err();
    assert!(matches!(error, InstallError::Parse { .. }), "{error}");
    assert!(error.to_string().contains("left as it is"), "{error}");
    assert_eq!(node.read("/etc/containerd/config.toml"), original);
    assert!(node.backups("/etc/containerd/config.toml").is_empty());
    assert_eq!(node.restarts(), 0);
}

#[test]
fn a_key_on_the_way_that_is_not_a_table_is_refused() {
    let error = config_with_runtime(
        Path::new("config.toml"),
        "version = 2\n[plugins]\n\"io.containerd.grpc.v1.cri\" = 1\n",
        2,
    )
    .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("`plugins.io.containerd.grpc.v1.cri` is not a table"),
        "{error}"
    );
}

/// What k3s does with a template: the base is the config it would generate.
fn render_k3s_template(template: &str, generated: &str) -> String {
    template.replace("{{ template \"base\" . }}", generated)
}

#[test]
fn k3s_gets_a_template_extending_its_base_and_it_renders_to_a_valid_config() {
    let dir = "/var/lib/rancher/k3s/agent/etc/containerd";
    let generated = sample("k3s-v2-generated.toml");
    let node = Node::new()
        .with_file(&format!("{dir}/config.toml"), &generated)
        .with_file("/etc/systemd/system/k3s-agent.service", "[Unit]\n")
        .with_file(
            "/etc/systemd/system/multi-user.target.wants/k3s-agent.service",
            "",
        );
    let report = install(&node.options()).unwrap();
    assert_eq!(report.target.flavor, Flavor::K3s);
    assert!(report.target.template);
    assert_eq!(report.target.unit.as_deref(), Some("k3s-agent"));
    assert_eq!(
        report.target.file,
        node.path(&format!("{dir}/config.toml.tmpl"))
    );
    let template = node.read(&format!("{dir}/config.toml.tmpl"));
    assert!(
        template.starts_with("{{ template \"base\" . }}\n"),
        "{template}"
    );
    let rendered = render_k3s_template(&template, &generated);
    assert_registered(&rendered, "io.containerd.grpc.v1.cri");
    assert_eq!(
        node.read(&format!("{dir}/config.toml")),
        generated,
        "k3s's own file is k3s's"
    );

    install(&node.options()).unwrap();
    assert_eq!(node.read(&format!("{dir}/config.toml.tmpl")), template);
    assert_eq!(node.restarts(), 1);
}

#[test]
fn k3s_on_containerd_2_gets_the_v3_template() {
    let dir = "/var/lib/rancher/k3s/agent/etc/containerd";
    let generated = sample("k3s-v3-generated.toml");
    let node = Node::new().with_file(&format!("{dir}/config.toml"), &generated);
    let report = install(&node.options()).unwrap();
    assert_eq!(report.target.config_version, 3);
    let template = node.read(&format!("{dir}/config-v3.toml.tmpl"));
    assert_registered(
        &render_k3s_template(&template, &generated),
        "io.containerd.cri.v1.runtime",
    );
    assert!(!node.path(&format!("{dir}/config.toml.tmpl")).exists());
}

#[test]
fn an_operator_s_own_k3s_template_keeps_its_content_and_the_block_is_replaced_not_repeated() {
    let dir = "/var/lib/rancher/rke2/agent/etc/containerd";
    let generated = sample("rke2-v2-generated.toml");
    let own = "{{ template \"base\" . }}\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.\"nvidia\"]\n  runtime_type = \"io.containerd.runc.v2\"\n";
    let node = Node::new()
        .with_file(&format!("{dir}/config.toml"), &generated)
        .with_file(&format!("{dir}/config.toml.tmpl"), own)
        .with_file(
            "/usr/local/lib/systemd/system/rke2-server.service",
            "[Unit]\n",
        )
        .with_file(
            "/usr/local/lib/systemd/system/rke2-agent.service",
            "[Unit]\n",
        )
        .with_file(
            "/etc/systemd/system/multi-user.target.wants/rke2-agent.service",
            "",
        );
    let report = install(&node.options()).unwrap();
    assert_eq!(report.target.flavor, Flavor::Rke2);
    assert_eq!(
        report.target.unit.as_deref(),
        Some("rke2-agent"),
        "the enabled one"
    );
    let template = node.read(&format!("{dir}/config.toml.tmpl"));
    assert!(template.starts_with(own), "{template}");
    let backups = node.backups(&format!("{dir}/config.toml.tmpl"));
    assert_eq!(std::fs::read_to_string(&backups[0]).unwrap(), own);
    let rendered: toml::Table =
        toml::from_str(&render_k3s_template(&template, &generated)).unwrap();
    assert!(
        rendered["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
            .get("nvidia")
            .is_some()
    );
    assert_eq!(template.matches("# hearth: BEGIN").count(), 1);
    install(&node.options()).unwrap();
    assert_eq!(node.read(&format!("{dir}/config.toml.tmpl")), template);
}

#[test]
fn k3s_that_has_not_started_yet_is_an_error_saying_so() {
    let node = Node::new().with_file("/var/lib/rancher/k3s/agent/etc/containerd/.keep", "");
    let error = install(&node.options()).unwrap_err();
    assert!(
        matches!(
            error,
            InstallError::NotGenerated {
                flavor: Flavor::K3s,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn the_shim_is_copied_once_and_replaced_when_it_changes() {
    let node = Node::new().with_file(
        "/etc/containerd/config.toml",
        &sample("containerd-1.6-default.toml"),
    );
    let build = tempfile::tempdir().unwrap();
    let shim = build.path().join("containerd-shim-hearth-v1");
    std::fs::write(&shim, b"shim v1").unwrap();
    let mut options = node.options();
    options.shim = Some(shim.clone());
    let installed = node.path("/usr/local/bin/containerd-shim-hearth-v1");

    let report = install(&options).unwrap();
    assert_eq!(
        report.shim,
        Some((installed.clone(), Change::Written { backup: None }))
    );
    assert_eq!(std::fs::read(&installed).unwrap(), b"shim v1");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert_eq!(
        install(&options).unwrap().shim,
        Some((installed.clone(), Change::Unchanged))
    );

    std::fs::write(&shim, b"shim v2").unwrap();
    let report = install(&options).unwrap();
    assert_eq!(
        report.shim,
        Some((installed.clone(), Change::Written { backup: None }))
    );
    assert_eq!(std::fs::read(&installed).unwrap(), b"shim v2");
    assert_eq!(node.restarts(), 1, "a new shim needs no containerd restart");
}

#[test]
fn uninstall_takes_out_exactly_what_install_put_in() {
    let original = sample("containerd-1.7-kubeadm.toml");
    let node = Node::new().with_file("/etc/containerd/config.toml", &original);
    install(&node.options()).unwrap();
    uninstall(&node.options()).unwrap();
    let after: toml::Table = toml::from_str(&node.read("/etc/containerd/config.toml")).unwrap();
    assert_eq!(after, toml::from_str::<toml::Table>(&original).unwrap());
    assert_eq!(node.restarts(), 2);
    assert_eq!(
        uninstall(&node.options()).unwrap().config,
        Change::Unchanged
    );
    assert_eq!(node.restarts(), 2);

    let dir = "/var/lib/rancher/k3s/agent/etc/containerd";
    let node = Node::new().with_file(
        &format!("{dir}/config.toml"),
        &sample("k3s-v2-generated.toml"),
    );
    install(&node.options()).unwrap();
    let report = uninstall(&node.options()).unwrap();
    assert!(matches!(report.config, Change::Removed { .. }), "{report}");
    assert!(!node.path(&format!("{dir}/config.toml.tmpl")).exists());
}

#[test]
fn a_failing_restart_is_an_error_with_the_command_s_output() {
    let node = Node::new().with_file(
        "/etc/containerd/config.toml",
        &sample("containerd-1.6-default.toml"),
    );
    let mut options = node.options();
    options.restart =
        Restart::Command("echo 'Unit containerd.service not found.' >&2; exit 5".into());
    let error = install(&options).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("the config was written"), "{message}");
    assert!(
        message.contains("Unit containerd.service not found."),
        "{message}"
    );
}

#[test]
fn restart_never_reports_that_a_restart_is_needed() {
    let node = Node::new().with_file(
        "/etc/containerd/config.toml",
        &sample("containerd-1.6-default.toml"),
    );
    let mut options = node.options();
    options.restart = Restart::Never;
    let report = install(&options).unwrap();
    assert!(report.restart_needed);
    assert!(report.to_string().contains("NOT restarted"), "{report}");
    assert_eq!(node.restarts(), 0);
}

#[test]
fn restart_auto_without_a_unit_says_what_to_pass() {
    let node = Node::new().with_file(
        "/etc/containerd/config.toml",
        &sample("containerd-1.6-default.toml"),
    );
    let mut options = node.options();
    options.restart = Restart::Auto;
    let error = install(&options).unwrap_err();
    assert!(error.to_string().contains("--restart-command"), "{error}");
}
