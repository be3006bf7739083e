//! Pod networking through the reference CNI plugins, called as a container
//! runtime calls them: the plugin binary run in the node's namespace (the
//! runtime's "host"), the CNI spec's environment (`CNI_COMMAND`,
//! `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_PATH`, `CNI_ARGS`)
//! and the network configuration on stdin. The configuration is the one
//! flannel's CNI config delegates to (`bridge` on the node's `cni0` with
//! `host-local` IPAM over the node's pod CIDR), without its default route
//! and hairpin mode, and `loopback`. Calico's own plugin is not packaged
//! here; its routing is (`net::bgp`).
//!
//! The lab still chooses each pod's address (`CNI_ARGS=IP=...`, which
//! host-local honours): its plan names the agent `.2` and the companion
//! `.3` of every node. The routes are explicit and there is no default
//! route: a lab pod must have no path out of the lab.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::net::netns::NetnsError;
use crate::net::topology::{NodePlan, POD_CIDR, POD_MTU, PodPlan, SERVICE_CIDR, UNDERLAY_CIDR};
use crate::process::LAB_PATH;

/// Where Debian's `containernetworking-plugins` installs the plugins.
pub const PLUGIN_DIR: &str = "/usr/lib/cni";
/// host-local's stores, one directory per node network
/// (`PREFIX-nK`), each file an allocated address.
pub const IPAM_DIR: &str = "/run/netmatrix-lab/cni";
/// The CNI version the lab speaks: 0.4.0, which every plugin release since
/// 0.8 accepts (older distributions' packages reject 1.0.0).
const CNI_VERSION: &str = "0.4.0";

/// The network name of `node` (host-local's store directory).
pub fn network_name(node: &NodePlan) -> String {
    node.netns.clone()
}

/// The store of `node`'s allocated addresses.
pub fn ipam_store(node: &NodePlan) -> PathBuf {
    Path::new(IPAM_DIR).join(network_name(node))
}

/// The bridge network of `node`, as flannel's CNI config delegates it.
pub fn bridge_config(node: &NodePlan) -> Value {
    let gateway = node.gateway.to_string();
    let octets = node.gateway.octets();
    let range_end = Ipv4Addr::new(octets[0], octets[1], octets[2], 254).to_string();
    json!({
        "cniVersion": CNI_VERSION,
        "name": network_name(node),
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "isDefaultGateway": false,
        "ipMasq": false,
        "hairpinMode": false,
        "mtu": POD_MTU,
        "ipam": {
            "type": "host-local",
            "dataDir": IPAM_DIR,
            "ranges": [[{
                "subnet": node.pod_cidr,
                "rangeStart": Ipv4Addr::new(octets[0], octets[1], octets[2], 2).to_string(),
                "rangeEnd": range_end,
                "gateway": gateway,
            }]],
            // No default route: nothing leaves the lab.
            "routes": [
                {"dst": POD_CIDR, "gw": gateway},
                {"dst": UNDERLAY_CIDR, "gw": gateway},
                {"dst": SERVICE_CIDR, "gw": gateway},
            ],
        },
    })
}

fn loopback_config() -> Value {
    json!({"cniVersion": CNI_VERSION, "name": "lo", "type": "loopback"})
}

/// `CNI_COMMAND=command` of plugin `config.type` for `pod` on `node`;
/// returns the plugin's result (ADD) or nothing (DEL).
fn call(
    command: &str,
    node: &NodePlan,
    pod: &PodPlan,
    ifname: &str,
    config: &Value,
) -> Result<Value, NetnsError> {
    let plugin = config["type"].as_str().unwrap_or_default();
    let path = Path::new(PLUGIN_DIR).join(plugin);
    let what = format!("CNI {command} {plugin} for {} ({})", pod.netns, pod.ip);
    let err = |stderr: String| NetnsError::Failed {
        command: what.clone(),
        status: "the plugin failed".into(),
        stderr,
    };
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node.netns])
        .arg(&path)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &pod.netns)
        .env("CNI_NETNS", format!("/run/netns/{}", pod.netns))
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", PLUGIN_DIR)
        .env("CNI_ARGS", format!("IgnoreUnknown=1;IP={}", pod.ip))
        .env("PATH", LAB_PATH)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            err(format!(
                "cannot run {}: {e} (apt-get install containernetworking-plugins)",
                path.display()
            ))
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(config.to_string().as_bytes())
            .map_err(|e| err(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // The spec's error object: {"code": N, "msg": "...", "details": "..."}.
        let error: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        let message = match error["msg"].as_str() {
            Some(msg) => format!("{msg} {}", error["details"].as_str().unwrap_or_default()),
            None => format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
        };
        return Err(err(message.trim().to_owned()));
    }
    if command == "DEL" || stdout.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&stdout).map_err(|e| err(format!("result is not JSON: {e}")))
}

/// CNI ADD of `pod` (its namespace exists) on `node`: `lo` up, `eth0` on
/// `cni0` with the pod's address and routes. Checks the result's address.
/// A failed ADD is cleaned up with DEL, as a runtime does.
pub fn add(node: &NodePlan, pod: &PodPlan) -> Result<(), NetnsError> {
    let added = add_once(node, pod);
    if added.is_err() {
        let _ = del(node, pod);
    }
    added
}

fn add_once(node: &NodePlan, pod: &PodPlan) -> Result<(), NetnsError> {
    call("ADD", node, pod, "lo", &loopback_config())?;
    let result = call("ADD", node, pod, "eth0", &bridge_config(node))?;
    let got = result["ips"][0]["address"].as_str().unwrap_or_default();
    let prefix = node.pod_cidr.rsplit('/').next().unwrap_or("24");
    if got != format!("{}/{prefix}", pod.ip) {
        return Err(NetnsError::Failed {
            command: format!("CNI ADD bridge for {}", pod.netns),
            status: "unexpected result".into(),
            stderr: format!("asked for {}, the plugin gave {got:?}", pod.ip),
        });
    }
    Ok(())
}

/// CNI DEL of `pod` on `node`: its interface goes and host-local releases
/// its address. Idempotent, as the spec requires of DEL; with the
/// namespace already gone the plugins release the address and succeed.
pub fn del(node: &NodePlan, pod: &PodPlan) -> Result<(), NetnsError> {
    let bridge = call("DEL", node, pod, "eth0", &bridge_config(node));
    let lo = call("DEL", node, pod, "lo", &loopback_config());
    bridge.and(lo).map(|_| ())
}

/// Removes the address stores of lab `prefix` (its namespaces are gone).
pub fn forget(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(IPAM_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if crate::net::topology::prefix_of(&name) == Some(prefix) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::topology::{Overlay, Topology};

    #[test]
    fn the_bridge_config_is_flannels_delegate_without_a_default_route() {
        let t = Topology::plan("nmabcd", 2, Overlay::Vxlan).unwrap();
        let c = bridge_config(&t.nodes[1]);
        assert_eq!(c["type"], "bridge");
        assert_eq!(c["bridge"], "cni0");
        assert_eq!(c["mtu"], 1450);
        assert_eq!(c["name"], "nmabcd-n2");
        let ipam = &c["ipam"];
        assert_eq!(ipam["type"], "host-local");
        assert_eq!(ipam["ranges"][0][0]["subnet"], "10.244.2.0/24");
        assert_eq!(ipam["ranges"][0][0]["gateway"], "10.244.2.1");
        let routes: Vec<&str> = ipam["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["dst"].as_str().unwrap())
            .collect();
        assert_eq!(routes, ["10.244.0.0/16", "198.18.0.0/15", "10.96.0.0/12"]);
        assert!(!routes.contains(&"0.0.0.0/0"));
        assert_eq!(
            ipam_store(&t.nodes[1]),
            Path::new("/run/netmatrix-lab/cni/nmabcd-n2")
        );
    }
}
