//! The real `helm` (and `kubectl` writes) against the lab's API emulator,
//! from the root namespace through the lab's kubeconfig: `helm install` of
//! this repository's chart stores every object of its manifest, `helm
//! upgrade` changes them (strategic merge, a new generation), `helm
//! rollback` and `helm uninstall` leave the cluster as it was. Nothing runs
//! the installed workloads here (a process-mode lab: its own processes are
//! its pods); `tests/container.rs` runs them from the image. Needs
//! root, helm and kubectl (`scripts/setup-test` installs them).

mod common;

use std::path::PathBuf;

use netmatrix_lab::Lab;
use serde_json::Value;

const RELEASE: &str = "demo";
const NAMESPACE: &str = "helmtest";

fn run(lab: &Lab, tool: &str, args: &[&str]) -> String {
    common::client(lab, tool, args)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

fn chart() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/netmatrix")
}

/// `(kind, name)` of every object of the release's manifest.
fn manifest_objects(lab: &Lab) -> Vec<(String, String)> {
    let manifest = run(lab, "helm", &["get", "manifest", RELEASE, "-n", NAMESPACE]);
    let mut objects = Vec::new();
    let (mut kind, mut name) = (None, None);
    for line in manifest.lines() {
        if line == "---" {
            kind = None;
            name = None;
        } else if let Some(k) = line.strip_prefix("kind: ") {
            kind = Some(k.trim().to_owned());
        } else if let Some(n) = line.strip_prefix("  name: ") {
            name.get_or_insert(n.trim().trim_matches('"').to_owned());
        }
        if let (Some(k), Some(n)) = (&kind, &name)
            && !objects.contains(&(k.clone(), n.clone()))
        {
            objects.push((k.clone(), n.clone()));
        }
    }
    objects
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_installs_upgrades_and_uninstalls_the_chart() {
    let lab = common::lab(false).await;
    let chart = chart();
    let chart = chart.to_str().unwrap_or_default();

    run(
        &lab,
        "helm",
        &[
            "install",
            RELEASE,
            chart,
            "-n",
            NAMESPACE,
            "--create-namespace",
        ],
    );
    let releases = json(&run(&lab, "helm", &["list", "-n", NAMESPACE, "-o", "json"]));
    assert_eq!(releases[0]["status"], "deployed", "{releases}");

    // Every object of the manifest is in the cluster.
    let objects = manifest_objects(&lab);
    assert!(objects.len() >= 20, "a short manifest: {objects:?}");
    for (kind, name) in &objects {
        let object = json(&run(
            &lab,
            "kubectl",
            &[
                "get",
                &kind.to_lowercase(),
                name,
                "-n",
                NAMESPACE,
                "-o",
                "json",
            ],
        ));
        assert_eq!(object["metadata"]["uid"].as_str().map(str::len), Some(36));
    }
    // The Service registry's part: addresses from the range, headless kept.
    let services = json(&run(
        &lab,
        "kubectl",
        &["get", "services", "-n", NAMESPACE, "-o", "json"],
    ));
    for service in services["items"].as_array().into_iter().flatten() {
        let ip = service["spec"]["clusterIP"].as_str().unwrap_or_default();
        let name = service["metadata"]["name"].as_str().unwrap_or_default();
        if name.ends_with("-agents") {
            assert_eq!(ip, "None", "the agents' Service is headless");
        } else {
            assert!(ip.starts_with("10.9"), "{name}: {ip}");
        }
    }

    // An upgrade merges the new env into the agents' DaemonSet.
    run(
        &lab,
        "helm",
        &[
            "upgrade",
            RELEASE,
            chart,
            "-n",
            NAMESPACE,
            "--set",
            "interval=7s",
        ],
    );
    let agent = json(&run(
        &lab,
        "kubectl",
        &[
            "get",
            "daemonset",
            "demo-netmatrix-agent",
            "-n",
            NAMESPACE,
            "-o",
            "json",
        ],
    ));
    assert_eq!(agent["metadata"]["generation"], 2, "{agent}");
    let env = &agent["spec"]["template"]["spec"]["containers"][0]["env"];
    let interval = env
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == "NETMATRIX_INTERVAL");
    assert_eq!(
        interval.map(|e| &e["value"]),
        Some(&Value::from("7s")),
        "{env}"
    );

    run(&lab, "helm", &["rollback", RELEASE, "1", "-n", NAMESPACE]);
    let history = json(&run(
        &lab,
        "helm",
        &["history", RELEASE, "-n", NAMESPACE, "-o", "json"],
    ));
    assert_eq!(history.as_array().map(Vec::len), Some(3), "{history}");

    run(&lab, "helm", &["uninstall", RELEASE, "-n", NAMESPACE]);
    let left = run(
        &lab,
        "kubectl",
        &[
            "get",
            "all,serviceaccounts,secrets,roles,rolebindings",
            "-n",
            NAMESPACE,
            "-o",
            "name",
        ],
    );
    assert_eq!(left.trim(), "", "left after uninstall: {left}");
    let cluster_wide = run(
        &lab,
        "kubectl",
        &["get", "clusterroles,clusterrolebindings", "-o", "name"],
    );
    assert!(
        !cluster_wide.contains(RELEASE),
        "left after uninstall: {cluster_wide}"
    );
    lab.down().await;
}
