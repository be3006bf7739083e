//! `--overlay bgp`: Calico's default routing, with Calico's own routing
//! daemon. Every node runs BIRD 2 in its namespace, in an iBGP full mesh
//! over the underlay (Calico's node-to-node mesh, AS 64512): each node
//! exports its pod CIDR (from a static route for its block, which Calico
//! makes a blackhole; here `unreachable`, kept out of the kernel by the
//! export filter) and installs what it learns in the kernel, next hop the
//! peer's underlay address (`direct`, `gateway direct`: the peers share a
//! link, or the learned routes would stay unreachable).
//!
//! Timers are short so that tests are fast, and stated here because they
//! set how long a broken session takes to withdraw its routes: keepalive
//! 3 s and hold 9 s (BGP's usual 1:3; shorter, a few lost keepalives under
//! the `underlay-loss` fault would end sessions), a new session tried 1 s
//! after start (BIRD's default connect delay is 5 s) and every 1 s, and
//! 1 to 5 s before retrying one that failed (BIRD's default: 60 s); the
//! kernel table is scanned every 2 s.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::net::netns::{self, NetnsError};
use crate::net::topology::{NodePlan, Topology};
use crate::process::{LAB_PATH, ProcessSpec};

/// Calico's default AS number.
pub const AS_NUMBER: u32 = 64512;
/// BIRD's binary (Debian's `bird2`).
pub const BIRD: &str = "bird";
/// A session's hold time: how long a peer that went silent keeps its routes.
pub const HOLD_TIME: Duration = Duration::from_secs(9);
/// How long a mesh change may take to reach every kernel: below the lab's
/// node grace, during which a joining node is not judged.
pub const CONVERGENCE: Duration = Duration::from_secs(10);

/// The BIRD process name (and log file) of `node`.
pub fn process(node: &NodePlan) -> String {
    format!("bird-{}", node.name)
}

/// BIRD's name for the session with `peer`, as Calico names its mesh.
fn session(peer: &NodePlan) -> String {
    format!("Mesh_{}", peer.ip.to_string().replace('.', "_"))
}

/// `node`'s BIRD configuration in `t`'s mesh, each node peering from the
/// address `address` gives it (Calico's per-node BGP address, autodetected
/// from the node's interfaces; normally its underlay address).
pub fn config(t: &Topology, node: &NodePlan, address: &dyn Fn(&NodePlan) -> Ipv4Addr) -> String {
    let mut c = format!(
        "# BIRD 2 of {name} (netmatrix lab, --overlay bgp): Calico's node-to-node mesh.\n\
         log stderr all;\n\
         router id {router};\n\
         protocol device {{ scan time 2; }}\n\
         # This node's block, announced to the peers (Calico: a blackhole route).\n\
         protocol static pod_block {{\n  ipv4;\n  route {cidr} unreachable;\n}}\n\
         # What the peers announce goes to the kernel; nothing else.\n\
         protocol kernel {{\n  scan time 2;\n  ipv4 {{ import none; export where source = RTS_BGP; }};\n}}\n\
         template bgp mesh {{\n  local {local} as {AS_NUMBER};\n  direct;\n  \
         keepalive time {keepalive};\n  hold time {hold};\n  connect delay time 1;\n  \
         connect retry time 1;\n  error wait time 1, 5;\n  \
         ipv4 {{\n    import all;\n    export where proto = \"pod_block\";\n    \
         next hop self;\n    gateway direct;\n  }};\n}}\n",
        name = node.name,
        router = address(node),
        cidr = node.pod_cidr,
        local = address(node),
        hold = HOLD_TIME.as_secs(),
        keepalive = HOLD_TIME.as_secs() / 3,
    );
    for peer in t.nodes.iter().filter(|p| p.index != node.index) {
        c.push_str(&format!(
            "protocol bgp {} from mesh {{ neighbor {} as {AS_NUMBER}; }}\n",
            session(peer),
            address(peer)
        ));
    }
    c
}

/// Where `node`'s BIRD keeps its configuration and control socket.
pub fn files(state: &std::path::Path, node: &NodePlan) -> (PathBuf, PathBuf) {
    (
        state.join(format!("bird-{}.conf", node.name)),
        state.join(format!("bird-{}.ctl", node.name)),
    )
}

/// The process that runs `node`'s BIRD in its namespace, in the
/// foreground (its log is the process log).
pub fn spec(state: &std::path::Path, node: &NodePlan) -> ProcessSpec {
    let (conf, ctl) = files(state, node);
    ProcessSpec {
        name: process(node),
        netns: node.netns.clone(),
        program: PathBuf::from(BIRD),
        args: vec![
            "-f".into(),
            "-c".into(),
            conf.display().to_string(),
            "-s".into(),
            ctl.display().to_string(),
        ],
        env: vec![("PATH".into(), LAB_PATH.into())],
    }
}

/// Checks a configuration file with `bird -p` (parse only), so that a
/// mistake is an error here, not a daemon that exits or ignores a reload.
pub fn check_config(conf: &std::path::Path) -> Result<(), NetnsError> {
    let conf = conf.display().to_string();
    netns::run(None, BIRD, &["-p", "-c", &conf]).map(|_| ())
}

/// The peers whose pod CIDR `node` has no BIRD route to in its kernel.
pub fn missing_routes<'a>(t: &'a Topology, node: &NodePlan) -> Vec<&'a NodePlan> {
    let routes =
        netns::ip(&node.netns, &["-4", "route", "show", "proto", "bird"]).unwrap_or_default();
    t.nodes
        .iter()
        .filter(|p| p.index != node.index)
        .filter(|p| !routes.lines().any(|l| l.starts_with(&p.pod_cidr)))
        .collect()
}

/// Waits until every node has learned every peer's pod CIDR.
pub fn wait_converged(t: &Topology, timeout: Duration) -> Result<(), NetnsError> {
    let deadline = Instant::now() + timeout;
    loop {
        let missing: Vec<String> = t
            .nodes
            .iter()
            .flat_map(|n| {
                missing_routes(t, n)
                    .into_iter()
                    .map(move |p| format!("{} -> {}", n.name, p.pod_cidr))
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(NetnsError::Failed {
                command: "BGP convergence".into(),
                status: format!("not converged after {timeout:?}"),
                stderr: format!("routes missing: {}", missing.join(", ")),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::topology::Overlay;

    #[test]
    fn the_mesh_config_is_calicos() {
        let t = Topology::plan("nmabcd", 3, Overlay::Bgp).unwrap();
        let n2 = &t.nodes[1];
        let c = config(&t, n2, &|n| n.ip);
        assert!(c.contains("router id 198.18.0.2;"));
        assert!(c.contains("route 10.244.2.0/24 unreachable;"));
        assert!(c.contains("local 198.18.0.2 as 64512;"));
        assert!(c.contains("gateway direct;"));
        assert!(c.contains("hold time 9;"));
        assert!(c.contains("keepalive time 3;"));
        assert!(c.contains("connect delay time 1;"));
        assert!(c.contains("error wait time 1, 5;"));
        assert!(
            c.contains("protocol bgp Mesh_198_18_0_1 from mesh { neighbor 198.18.0.1 as 64512; }")
        );
        assert!(
            c.contains("protocol bgp Mesh_198_18_0_3 from mesh { neighbor 198.18.0.3 as 64512; }")
        );
        assert!(!c.contains("Mesh_198_18_0_2"));
        // node-3's address autodetected wrong: node-2 peers with that.
        let wrong = config(&t, n2, &|n| if n.index == 3 { n.gateway } else { n.ip });
        assert!(
            wrong.contains(
                "protocol bgp Mesh_198_18_0_3 from mesh { neighbor 10.244.3.1 as 64512; }"
            )
        );
        // BIRD itself reads it (scripts/setup installs bird2).
        let file = std::env::temp_dir().join(format!("bird-test-{}.conf", std::process::id()));
        std::fs::write(&file, &c).unwrap();
        let parsed = check_config(&file);
        let _ = std::fs::remove_file(&file);
        parsed.expect("bird -p accepts the configuration (apt-get install bird2)");
    }
}
