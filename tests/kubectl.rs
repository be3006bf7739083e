//! The real `kubectl` against the lab, from the root namespace through the
//! kubeconfig `netmatrix-lab up` writes (the API emulator behind its
//! 127.0.0.1 forwarder): discovery, `get -o wide` (server-side tables),
//! `describe`, `logs` and `get events`, on a healthy lab and with an agent
//! pod stuck pulling its image. Needs root and kubectl
//! (`scripts/setup-test` installs it).

mod common;

use netmatrix_lab::{Fault, Lab};

fn kubectl(lab: &Lab, args: &[&str]) -> String {
    common::client(lab, "kubectl", args)
}

/// The line of `output` whose first column is `name`.
fn row<'a>(output: &'a str, name: &str) -> Vec<&'a str> {
    output
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.first() == Some(&name))
        .unwrap_or_else(|| panic!("no row {name} in:\n{output}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_reads_the_lab_like_a_cluster() {
    let lab = common::lab(true).await;
    // The agents' logs have their first round in them.
    lab.wait_for("a first matrix", common::WAIT, |s| s.matrix.rows.len() == 3)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let version = kubectl(&lab, &["version"]);
    assert!(version.contains("Server Version: v1.33.0"), "{version}");

    let wide = kubectl(&lab, &["get", "nodes,pods", "-o", "wide"]);
    let topo = lab.topology();
    for node in &topo.nodes {
        let cols = row(&wide, &format!("node/{}", node.name));
        assert_eq!(cols[1], "Ready", "{wide}");
        assert!(cols.contains(&node.ip.to_string().as_str()), "{wide}");
        let agent = row(&wide, &format!("pod/{}", node.agent.name));
        // NAME READY STATUS RESTARTS AGE IP NODE ...
        assert_eq!(&agent[1..4], ["1/1", "Running", "0"], "{wide}");
        assert_eq!(agent[5], node.agent.ip.to_string(), "{wide}");
        assert_eq!(agent[6], node.name, "{wide}");
    }
    assert!(
        wide.contains("NOMINATED NODE"),
        "not the wide columns:\n{wide}"
    );

    let services = kubectl(&lab, &["get", "svc", "-A"]);
    assert_eq!(
        row(&services, "kube-system")[1..4],
        ["kube-dns", "ClusterIP", "10.96.0.10"]
    );

    let node2 = &topo.nodes[1];
    let describe = kubectl(&lab, &["describe", "pod", &node2.agent.name]);
    for expected in [
        "Service Account:  netmatrix-agent",
        &format!("Node:             {}/{}", node2.name, node2.ip),
        "Status:           Running",
        &format!("IP:               {}", node2.agent.ip),
    ] {
        assert!(
            describe.contains(expected),
            "{expected:?} missing:\n{describe}"
        );
    }

    let log = kubectl(&lab, &["logs", &node2.agent.name]);
    assert!(
        log.contains("netmatrix_agent"),
        "not the agent's log:\n{log}"
    );
    let tail = kubectl(&lab, &["logs", &node2.agent.name, "--tail", "2"]);
    assert_eq!(tail.lines().count(), 2, "{tail}");
    assert!(
        tail.lines().all(|l| l.starts_with("20")),
        "not log lines:\n{tail}"
    );

    // An agent pod that cannot pull its image: the pod's status, its
    // Events, and describe's Events section, as a cluster shows them.
    let node3 = &topo.nodes[2];
    lab.fault(Fault::agent_image_pull(&node3.name))
        .unwrap_or_else(|e| panic!("{e}"));
    let pods = kubectl(&lab, &["get", "pods", "-o", "wide"]);
    assert_eq!(
        row(&pods, &node3.agent.name)[1..3],
        ["0/1", "ImagePullBackOff"],
        "{pods}"
    );
    let events = kubectl(
        &lab,
        &["get", "events", "--field-selector", "reason=Failed"],
    );
    assert!(
        events.contains(&format!("pod/{}", node3.agent.name))
            && events.contains("Failed to pull image"),
        "{events}"
    );
    let describe = kubectl(&lab, &["describe", "pod", &node3.agent.name]);
    let events_section = describe
        .split_once("\nEvents:")
        .map(|(_, e)| e)
        .unwrap_or_default();
    assert!(
        events_section.contains("kubelet") && events_section.contains("ErrImagePull"),
        "describe shows no Events:\n{describe}"
    );

    lab.heal().unwrap_or_else(|e| panic!("{e}"));
    let pods = kubectl(&lab, &["get", "pod", &node3.agent.name]);
    assert_eq!(
        row(&pods, &node3.agent.name)[1..3],
        ["1/1", "Running"],
        "{pods}"
    );

    // Writes as kubectl makes them: `create` through client-go's typed
    // clients (protobuf bodies), `apply` (a create, then a strategic merge
    // patch), `label`, `delete`.
    kubectl(&lab, &["create", "namespace", "scratch"]);
    kubectl(
        &lab,
        &[
            "create",
            "configmap",
            "settings",
            "-n",
            "scratch",
            "--from-literal=mode=a",
        ],
    );
    let applied = |mode: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"applied","namespace":"scratch"}},"data":{{"mode":"{mode}"}}}}"#
        )
    };
    for mode in ["a", "b"] {
        let file = lab.state_dir().file("applied.json");
        std::fs::write(&file, applied(mode)).unwrap_or_else(|e| panic!("{e}"));
        kubectl(&lab, &["apply", "-f", file.to_str().unwrap_or_default()]);
    }
    kubectl(
        &lab,
        &[
            "label",
            "configmap",
            "settings",
            "-n",
            "scratch",
            "tier=lab",
        ],
    );
    let maps = kubectl(
        &lab,
        &["get", "configmaps", "-n", "scratch", "--show-labels"],
    );
    assert!(row(&maps, "settings").contains(&"tier=lab"), "{maps}");
    let mode = kubectl(
        &lab,
        &[
            "get",
            "configmap",
            "applied",
            "-n",
            "scratch",
            "-o",
            "jsonpath={.data.mode}",
        ],
    );
    assert_eq!(mode, "b", "apply did not patch");
    kubectl(&lab, &["delete", "namespace", "scratch"]);
    let left = kubectl(&lab, &["get", "configmaps", "-n", "scratch", "-o", "name"]);
    assert_eq!(left.trim(), "", "the namespace took its objects: {left}");
    lab.down().await;
}
