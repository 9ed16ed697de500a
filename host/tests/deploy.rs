//! `hearth deploy` as a user runs it: the manifests it prints parse as the
//! Kubernetes objects `kubectl apply -f -` would create, with the runtime
//! class, probes, Service and `hearth.dev/*` annotations the flags asked
//! for; bad names and annotations are refused before anything is printed.
//! Applying them to a real API server and kubelet is the kube scenario
//! `hearth_deploy_applied_with_kubectl_serves_through_its_service`
//! (`scripts/test-kube.sh`).

use hearth_testkit::process::run_to_end;
use serde_json::Value;
use std::process::Command;

const HEARTH: &str = env!("CARGO_BIN_EXE_hearth");

/// `hearth deploy ARGS`: its exit status and the documents it printed.
fn deploy(args: &[&str]) -> Vec<Value> {
    let output = Command::new(HEARTH)
        .arg("deploy")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "hearth deploy {args:?}: {}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_yaml::Deserializer::from_str(&stdout)
        .map(|document| {
            let value: Value = serde::Deserialize::deserialize(document)
                .unwrap_or_else(|error| panic!("not YAML ({error}):\n{stdout}"));
            value
        })
        .collect()
}

#[test]
fn a_service_gets_a_deployment_on_the_hearth_runtime_class_a_service_and_probes() {
    let documents = deploy(&[
        "registry.example.com/team/hello:1",
        "--replicas",
        "3",
        "--env",
        "GREETING=Hi there: friend",
        "--memory",
        "64Mi",
        "--min-idle",
        "2",
        "--max-invocations",
        "1",
        "--probe-path",
        "/healthz",
        "-n",
        "team-a",
    ]);
    assert_eq!(documents.len(), 2, "{documents:#?}");
    let deployment = &documents[0];
    assert_eq!(deployment["kind"], "Deployment");
    assert_eq!(deployment["apiVersion"], "apps/v1");
    assert_eq!(deployment["metadata"]["name"], "hello");
    assert_eq!(deployment["metadata"]["namespace"], "team-a");
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"]["app"],
        "hello"
    );
    let pod = &deployment["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["app"], "hello");
    assert_eq!(pod["metadata"]["annotations"]["hearth.dev/min-idle"], "2");
    assert_eq!(
        pod["metadata"]["annotations"]["hearth.dev/max-invocations"],
        "1"
    );
    assert_eq!(pod["spec"]["runtimeClassName"], "hearth");
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.example.com/team/hello:1");
    assert_eq!(container["ports"][0]["containerPort"], 8080);
    let env = container["env"].as_array().unwrap();
    assert!(env.contains(&serde_json::json!({"name": "PORT", "value": "8080"})));
    assert!(env.contains(&serde_json::json!({"name": "GREETING", "value": "Hi there: friend"})));
    assert_eq!(container["resources"]["limits"]["memory"], "64Mi");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], 8080);

    let service = &documents[1];
    assert_eq!(service["kind"], "Service");
    assert_eq!(service["metadata"]["namespace"], "team-a");
    assert_eq!(service["spec"]["selector"]["app"], "hello");
    assert_eq!(service["spec"]["ports"][0]["port"], 80);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], 8080);
}

#[test]
fn without_a_probe_path_readiness_is_a_tcp_connect_and_there_is_no_liveness_probe() {
    let documents = deploy(&["127.0.0.1:5000/hello:1", "--port", "9000", "--name", "web"]);
    let container = &documents[0]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["readinessProbe"]["tcpSocket"]["port"], 9000);
    assert!(container["livenessProbe"].is_null());
    assert!(documents[0]["metadata"]["namespace"].is_null());
    assert!(documents[0]["spec"]["template"]["metadata"]["annotations"].is_null());
    assert_eq!(documents[1]["metadata"]["name"], "web");
}

#[test]
fn a_message_handler_gets_its_subscription_and_no_port_probe_or_service() {
    let documents = deploy(&[
        "127.0.0.1:5000/order-worker:1",
        "--subscribe",
        "orders,refunds@billing",
        "--annotation",
        "app=orders",
    ]);
    assert_eq!(documents.len(), 1, "{documents:#?}");
    let pod = &documents[0]["spec"]["template"];
    assert_eq!(
        pod["metadata"]["annotations"]["hearth.dev/subscribe"],
        "orders,refunds@billing"
    );
    assert_eq!(pod["metadata"]["annotations"]["hearth.dev/app"], "orders");
    let container = &pod["spec"]["containers"][0];
    assert!(container["ports"].is_null() && container["readinessProbe"].is_null());
}

#[test]
fn a_bad_name_or_an_unknown_annotation_is_refused_before_printing() {
    for (args, needle) in [
        (
            vec!["127.0.0.1:5000/Hello_World:1", "--name", "Hello_World"],
            "is not a valid name",
        ),
        (
            vec!["127.0.0.1:5000/hello:1", "--annotation", "min-idel=2"],
            "`min-idel` is not a hearth.dev annotation",
        ),
    ] {
        let (status, output) = run_to_end(Command::new(HEARTH).arg("deploy").args(&args));
        assert_eq!(status.code(), Some(2), "{output}");
        assert!(output.contains(needle), "{output}");
        assert!(!output.contains("apiVersion"), "{output}");
    }
}
