//! Pods set up and removed through the reference CNI plugins (`bridge` with
//! `host-local` IPAM, `loopback`), as a container runtime calls them: every
//! planned pod gets its address from host-local's store, its routes and no
//! default route; a pod removed with CNI DEL leaves nothing behind (its
//! address released in the store, its veth gone), and a pod added later
//! gets the address it asks for. Needs root and the plugins
//! (`containernetworking-plugins`, installed by `scripts/setup`).

mod common;

use std::path::Path;

use netmatrix_lab::net::topology::{NodePlan, Topology};
use netmatrix_lab::net::{cni, netns, network};

/// The addresses host-local has allocated on `node` (its store's files).
fn allocated(node: &NodePlan) -> Vec<String> {
    let mut ips: Vec<String> = std::fs::read_dir(cni::ipam_store(node))
        .map(|dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("10.244."))
                .collect()
        })
        .unwrap_or_default();
    ips.sort();
    ips
}

/// The interfaces on `node`'s `cni0`.
fn bridge_ports(node: &NodePlan) -> usize {
    netns::ip(&node.netns, &["-o", "link", "show", "master", "cni0"])
        .map(|out| out.lines().count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_come_and_go_through_cni_add_and_del() {
    let lab = common::lab(false).await;
    let t = lab.topology();
    let (n1, n2) = (&t.nodes[0], &t.nodes[1]);
    assert_eq!(allocated(n1), ["10.244.1.10", "10.244.1.2", "10.244.1.3"]);
    assert_eq!(allocated(n2), ["10.244.2.2", "10.244.2.3"]);
    assert_eq!(bridge_ports(n2), 2);
    let routes = netns::ip(&n2.agent.netns, &["-4", "route"]).expect("routes");
    assert!(!routes.contains("default"), "{routes}");
    for dst in [
        "10.244.0.0/16 via 10.244.2.1",
        "198.18.0.0/15 via 10.244.2.1",
        "10.96.0.0/12 via 10.244.2.1",
    ] {
        assert!(routes.contains(dst), "{dst} missing:\n{routes}");
    }

    // DEL: the companion's veth and address go, and its namespace.
    network::remove_pod(n2, &n2.companion).expect("CNI DEL");
    assert_eq!(allocated(n2), ["10.244.2.2"]);
    assert_eq!(bridge_ports(n2), 1);
    assert!(!netns::exists(&n2.companion.netns));
    // DEL again is not an error (the spec requires it of DEL).
    network::remove_pod(n2, &n2.companion).expect("second DEL");

    // ADD of a pod created later: the address it asks for, reachable.
    let later = Topology::recreated_companion(n2, 1);
    network::add_pod(n2, &later).expect("CNI ADD");
    assert_eq!(allocated(n2), ["10.244.2.2", "10.244.2.20"]);
    assert_eq!(bridge_ports(n2), 2);
    assert!(common::ping(&n1.agent.netns, &later.ip.to_string()));
    network::remove_pod(n2, &later).expect("CNI DEL");
    assert_eq!(allocated(n2), ["10.244.2.2"]);

    // The lab's removal forgets the stores.
    let store = cni::ipam_store(n1);
    drop(lab);
    assert!(
        !Path::new(&store).exists(),
        "{} left behind",
        store.display()
    );
}
