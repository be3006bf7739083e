//! The container runtime mode: `helm install` of this repository's chart
//! into a fresh 3-node lab, whose pods the lab's kubelet runs from the real
//! image under podman + runc. Healthy with no findings; every container
//! confined as the chart says (read from podman's inspect); `helm test`
//! passes; a privileged pod is refused; a fault is named and healed; a
//! pod-spec change (the agents' ICMP sysctl dropped with `kubectl patch`,
//! an unknown host-agent flag added with `helm upgrade --set`) fails the way it
//! would on a cluster; `helm uninstall` removes every pod and container.
//!
//! Needs root, podman, runc, helm, kubectl (`scripts/setup-test`) and the
//! image (`docker/build-image`; `scripts/test` builds it).

mod common;

use std::time::{Duration, Instant};

use netmatrix_api::FindingKind;
use netmatrix_lab::lab::RELEASE;
use netmatrix_lab::net::topology::NAMESPACE;
use netmatrix_lab::view::{all_host_cells_ok, all_pod_cells_ok, finding_naming};
use netmatrix_lab::{ContainerConfig, Fault, Lab, LabConfig, Runtime, Snapshot};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

fn healthy(s: &Snapshot) -> bool {
    all_pod_cells_ok(&s.matrix, 3)
        && all_host_cells_ok(&s.matrix, 3)
        && s.findings.findings.is_empty()
}

async fn wait(lab: &Lab, what: &str, predicate: impl FnMut(&Snapshot) -> bool) -> Snapshot {
    lab.wait_for(what, WAIT, predicate)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Podman's view of every container of the lab: `(name, inspect)`.
fn containers(lab: &Lab) -> Vec<(String, Value)> {
    let ps = std::process::Command::new("podman")
        .args(["ps", "--quiet", "--filter"])
        .arg(format!("label=io.netmatrix.lab={}", lab.prefix()))
        .output()
        .expect("podman ps");
    let ids: Vec<String> = String::from_utf8_lossy(&ps.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    if ids.is_empty() {
        return Vec::new();
    }
    let inspect = std::process::Command::new("podman")
        .arg("inspect")
        .args(&ids)
        .output()
        .expect("podman inspect");
    let all: Vec<Value> = serde_json::from_slice(&inspect.stdout).expect("inspect is JSON");
    all.into_iter()
        .map(|c| (c["Name"].as_str().unwrap_or_default().to_owned(), c))
        .collect()
}

fn pods(lab: &Lab) -> Vec<Value> {
    let text = common::client(
        lab,
        "kubectl",
        &["get", "pods", "-n", NAMESPACE, "-o", "json"],
    );
    let list: Value = serde_json::from_str(&text).expect("kubectl prints JSON");
    list["items"].as_array().cloned().unwrap_or_default()
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_runs_from_the_image_under_a_container_runtime() {
    common::require_root();
    common::init_tracing();
    let lab = Lab::up(LabConfig {
        runtime: Runtime::Container(ContainerConfig::from_repository()),
        ..LabConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("lab up: {e}"));
    eprintln!(
        "lab {} up in {:.2?} (helm install included)",
        lab.prefix(),
        lab.up_took()
    );
    wait(&lab, "the chart's pods healthy", healthy).await;

    // Every container as the chart confines it, as the runtime reports it:
    // uid 65532, read-only root, no capabilities, no privilege escalation;
    // the host agents are the documented exception (uid 0, NET_RAW only).
    let running = containers(&lab);
    assert_eq!(
        running.len(),
        10,
        "3 agents, 3 companions, 3 host agents, the aggregator"
    );
    for (name, c) in &running {
        let user = c["Config"]["User"].as_str().unwrap_or_default();
        let caps: Vec<&str> = c["EffectiveCaps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let (want_user, want_caps): (&str, &[&str]) = if name.contains("_host-agent") {
            ("0:0", &["CAP_NET_RAW"])
        } else {
            ("65532:65532", &[])
        };
        assert_eq!(user, want_user, "{name}");
        assert_eq!(caps, want_caps, "{name}");
        assert_eq!(c["HostConfig"]["ReadonlyRootfs"], true, "{name}");
        let opts = c["HostConfig"]["SecurityOpt"].to_string();
        assert!(opts.contains("no-new-privileges"), "{name}: {opts}");
    }

    // `helm test`: the chart's validate pod, run like the others.
    let tested = lab
        .helm(&["test", RELEASE, "-n", NAMESPACE, "--timeout", "60s"].map(String::from))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(tested.contains("Phase:          Succeeded"), "{tested}");

    // What the lab's kubelet will not run (it runs as root) is refused in
    // the pod's status and Events, never started.
    let privileged = lab.state_dir().file("privileged-pod.json");
    std::fs::write(
        &privileged,
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "privileged", "namespace": NAMESPACE},
            "spec": {"containers": [{
                "name": "c", "image": netmatrix_lab::lab::DEFAULT_IMAGE,
                "securityContext": {"privileged": true},
            }]},
        })
        .to_string(),
    )
    .expect("pod file");
    common::client(
        &lab,
        "kubectl",
        &["create", "-f", &privileged.display().to_string()],
    );
    let refused = |p: &Value| {
        p["metadata"]["name"] == "privileged"
            && p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                == "CreateContainerConfigError"
    };
    until("the privileged pod refused", || {
        pods(&lab).iter().any(refused)
    })
    .await;
    assert!(
        !containers(&lab)
            .iter()
            .any(|(name, _)| name.contains("_privileged_"))
    );
    common::client(
        &lab,
        "kubectl",
        &["delete", "pod", "-n", NAMESPACE, "privileged"],
    );

    // A fault injected with the kernel's tools is named, and clears.
    lab.fault(Fault::one_way("node-2", "node-3"))
        .expect("fault");
    wait(&lab, "asymmetric-path node-2 -> node-3", |s| {
        finding_naming(&s.findings, FindingKind::AsymmetricPath, "node-2").is_some()
    })
    .await;
    lab.heal().expect("heal");
    wait(&lab, "healthy after heal", healthy).await;

    // One pod-spec value changed: the agents lose their ICMP sysctl. The
    // DaemonSet replaces its pods, whose new sandboxes keep the kernel's
    // default (no group may open ICMP sockets), and the agents exit as on a
    // cluster: CrashLoopBackOff, with the reason in their log.
    common::client(
        &lab,
        "kubectl",
        &[
            "patch",
            "daemonset",
            &format!("{RELEASE}-agent"),
            "-n",
            NAMESPACE,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"template":{"spec":{"securityContext":{"sysctls":null}}}}}"#,
        ],
    );
    let crashing = |p: &Value| {
        p["metadata"]["labels"]["app.kubernetes.io/component"] == "agent"
            && p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                == "CrashLoopBackOff"
    };
    until("the agents in CrashLoopBackOff", || {
        pods(&lab).iter().filter(|p| crashing(p)).count() == 3
    })
    .await;
    let agent = pods(&lab)
        .into_iter()
        .find(|p| crashing(p))
        .expect("a crashing agent");
    let name = agent["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let log = common::client(&lab, "kubectl", &["logs", "-n", NAMESPACE, &name]);
    assert!(log.contains("cannot open an ICMP socket"), "{log}");
    assert!(agent["spec"]["securityContext"]["sysctls"].is_null());

    // The same through the chart's values: `helm upgrade --set` of an
    // extra flag the host agents do not know. The DaemonSet's new pods run
    // it and exit, as they would on a cluster: the chart's args reach the
    // container as written.
    let chart = ContainerConfig::from_repository().chart;
    lab.helm(
        &[
            "upgrade",
            RELEASE,
            &chart.display().to_string(),
            "-n",
            NAMESPACE,
            "--reuse-values",
            "--set",
            "hostAgent.extraArgs[0]=--no-such-flag",
        ]
        .map(String::from),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let host_agent_crashing = |p: &Value| {
        p["metadata"]["labels"]["app.kubernetes.io/component"] == "host-agent"
            && p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                == "CrashLoopBackOff"
    };
    until("the host agents in CrashLoopBackOff", || {
        pods(&lab).iter().filter(|p| host_agent_crashing(p)).count() == 3
    })
    .await;
    let host_agent = pods(&lab)
        .into_iter()
        .find(|p| host_agent_crashing(p))
        .expect("a host agent");
    let name = host_agent["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let log = common::client(&lab, "kubectl", &["logs", "-n", NAMESPACE, &name]);
    assert!(
        log.contains("unexpected argument '--no-such-flag'"),
        "{log}"
    );

    // helm uninstall: the workloads' pods go, and so do their containers.
    // The test pod is a hook, not part of the release's manifest: it stays
    // (Completed) until deleted, as on a cluster.
    lab.helm(&["uninstall", RELEASE, "-n", NAMESPACE].map(String::from))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let test_pod = format!("{RELEASE}-test");
    until("only the test pod, and no containers", || {
        let left: Vec<String> = pods(&lab)
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
            .collect();
        left == [test_pod.clone()] && containers(&lab).is_empty()
    })
    .await;
    common::client(
        &lab,
        "kubectl",
        &["delete", "pod", "-n", NAMESPACE, &test_pod],
    );
    assert!(pods(&lab).is_empty());
}
