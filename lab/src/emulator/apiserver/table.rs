//! Server-side printing: lists and objects as `meta.k8s.io/v1` `Table`s,
//! which `kubectl get` asks for (`Accept: application/json;as=Table;...`)
//! and prints as they come. The columns, their priorities (`1`: shown with
//! `-o wide` only) and the cells' wording are the real API server's
//! printers' for these kinds, so the lab reads like a cluster.
//!
//! Rows carry the object's metadata (`PartialObjectMetadata`, the server's
//! default `includeObject`), which kubectl uses for `--show-labels` and the
//! namespace column of `-A`.

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use crate::emulator::cluster::Kind;

/// Whether an `Accept` header asks for a Table (kubectl sends
/// `application/json;as=Table;v=v1;g=meta.k8s.io,...,application/json`).
pub fn wanted(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| {
        accept.split(',').any(|media| {
            let params: Vec<&str> = media.split(';').map(str::trim).collect();
            params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io")
        })
    })
}

/// The `Content-Type` of a Table response.
pub const CONTENT_TYPE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

/// A column: name, type, priority.
type Column = (&'static str, &'static str, u8);

fn columns(kind: Kind) -> &'static [Column] {
    match kind {
        Kind::Node => &[
            ("Name", "string", 0),
            ("Status", "string", 0),
            ("Roles", "string", 0),
            ("Age", "string", 0),
            ("Version", "string", 0),
            ("Internal-IP", "string", 1),
            ("External-IP", "string", 1),
            ("OS-Image", "string", 1),
            ("Kernel-Version", "string", 1),
            ("Container-Runtime", "string", 1),
        ],
        Kind::Pod => &[
            ("Name", "string", 0),
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            ("Age", "string", 0),
            ("IP", "string", 1),
            ("Node", "string", 1),
            ("Nominated Node", "string", 1),
            ("Readiness Gates", "string", 1),
        ],
        Kind::Service => &[
            ("Name", "string", 0),
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            ("Age", "string", 0),
            ("Selector", "string", 1),
        ],
        Kind::Event => &[
            ("Last Seen", "string", 0),
            ("Type", "string", 0),
            ("Reason", "string", 0),
            ("Object", "string", 0),
            ("Subobject", "string", 1),
            ("Source", "string", 1),
            ("Message", "string", 0),
            ("First Seen", "string", 1),
            ("Count", "string", 1),
            ("Name", "string", 1),
        ],
        Kind::Namespace => &[
            ("Name", "string", 0),
            ("Status", "string", 0),
            ("Age", "string", 0),
        ],
        Kind::NetworkPolicy => &[
            ("Name", "string", 0),
            ("Pod-Selector", "string", 0),
            ("Age", "string", 0),
        ],
        Kind::ServiceAccount => &[
            ("Name", "string", 0),
            ("Secrets", "integer", 0),
            ("Age", "string", 0),
        ],
        Kind::Secret => &[
            ("Name", "string", 0),
            ("Type", "string", 0),
            ("Data", "string", 0),
            ("Age", "string", 0),
        ],
        Kind::ConfigMap => &[
            ("Name", "string", 0),
            ("Data", "string", 0),
            ("Age", "string", 0),
        ],
        Kind::DaemonSet => &[
            ("Name", "string", 0),
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Node Selector", "string", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        Kind::Deployment => &[
            ("Name", "string", 0),
            ("Ready", "string", 0),
            ("Up-to-date", "string", 0),
            ("Available", "string", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        Kind::ClusterRole | Kind::Role => &[("Name", "string", 0), ("Created At", "date", 0)],
        Kind::ClusterRoleBinding | Kind::RoleBinding => &[
            ("Name", "string", 0),
            ("Role", "string", 0),
            ("Age", "string", 0),
            ("Users", "string", 1),
            ("Groups", "string", 1),
            ("ServiceAccounts", "string", 1),
        ],
    }
}

/// `objects` of `kind` as a Table at resourceVersion `rv`, ages counted to
/// `now`.
pub fn table(kind: Kind, rv: Option<u64>, objects: &[Value], now: Timestamp) -> Value {
    let definitions: Vec<Value> = columns(kind)
        .iter()
        .map(|(name, type_, priority)| {
            json!({
                "name": name,
                "type": type_,
                "format": if *name == "Name" { "name" } else { "" },
                "description": "",
                "priority": priority,
            })
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            json!({
                "cells": cells(kind, object, now),
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": object["metadata"],
                },
            })
        })
        .collect();
    let mut metadata = json!({});
    if let Some(rv) = rv {
        metadata["resourceVersion"] = json!(rv.to_string());
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

fn text<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

fn or_none(value: Option<&str>) -> String {
    value.unwrap_or("<none>").to_owned()
}

fn cells(kind: Kind, o: &Value, now: Timestamp) -> Vec<Value> {
    let name = or_none(text(o, "/metadata/name"));
    let created = age(text(o, "/metadata/creationTimestamp"), now);
    let cells: Vec<String> = match kind {
        Kind::Node => vec![
            name,
            node_status(o),
            node_roles(o),
            created.clone(),
            or_none(text(o, "/status/nodeInfo/kubeletVersion")),
            node_address(o, "InternalIP"),
            node_address(o, "ExternalIP"),
            or_none(text(o, "/status/nodeInfo/osImage")),
            or_none(text(o, "/status/nodeInfo/kernelVersion")),
            or_none(text(o, "/status/nodeInfo/containerRuntimeVersion")),
        ],
        Kind::Pod => {
            let statuses = o
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array);
            let containers = o
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let ready = statuses
                .into_iter()
                .flatten()
                .filter(|s| s["ready"] == true)
                .count();
            let restarts: u64 = statuses
                .into_iter()
                .flatten()
                .filter_map(|s| s["restartCount"].as_u64())
                .sum();
            vec![
                name,
                format!("{ready}/{containers}"),
                pod_status(o),
                restarts.to_string(),
                created.clone(),
                or_none(text(o, "/status/podIP")),
                or_none(text(o, "/spec/nodeName")),
                or_none(text(o, "/status/nominatedNodeName")),
                "<none>".to_owned(),
            ]
        }
        Kind::Service => vec![
            name,
            text(o, "/spec/type").unwrap_or("ClusterIP").to_owned(),
            or_none(text(o, "/spec/clusterIP")),
            "<none>".to_owned(),
            service_ports(o),
            created.clone(),
            selector(o.pointer("/spec/selector")),
        ],
        Kind::Event => {
            let last = text(o, "/lastTimestamp").or_else(|| text(o, "/eventTime"));
            let first = text(o, "/firstTimestamp").or(last);
            let object = format!(
                "{}/{}",
                text(o, "/involvedObject/kind").unwrap_or("").to_lowercase(),
                text(o, "/involvedObject/name").unwrap_or("")
            );
            let source = [text(o, "/source/component"), text(o, "/source/host")]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(", ");
            vec![
                age(last, now),
                text(o, "/type").unwrap_or("").to_owned(),
                text(o, "/reason").unwrap_or("").to_owned(),
                object,
                text(o, "/involvedObject/fieldPath")
                    .unwrap_or("")
                    .to_owned(),
                source,
                text(o, "/message").unwrap_or("").trim().to_owned(),
                age(first, now),
                o["count"].as_u64().unwrap_or(1).to_string(),
                name,
            ]
        }
        Kind::Namespace => vec![
            name,
            text(o, "/status/phase").unwrap_or("Active").to_owned(),
            created.clone(),
        ],
        Kind::NetworkPolicy => vec![name, pod_selector(o), created],
        Kind::ServiceAccount => vec![name, count(o.get("secrets")), created],
        Kind::Secret => vec![
            name,
            text(o, "/type").unwrap_or("Opaque").to_owned(),
            count(o.get("data")),
            created,
        ],
        Kind::ConfigMap => {
            let data = ["data", "binaryData"]
                .iter()
                .filter_map(|k| o.get(*k).and_then(Value::as_object))
                .map(serde_json::Map::len)
                .sum::<usize>();
            vec![name, data.to_string(), created]
        }
        Kind::DaemonSet => {
            let status = |field: &str| number(o, &format!("/status/{field}"));
            let (containers, images) = containers(o);
            vec![
                name,
                status("desiredNumberScheduled"),
                status("currentNumberScheduled"),
                status("numberReady"),
                status("updatedNumberScheduled"),
                status("numberAvailable"),
                selector(o.pointer("/spec/template/spec/nodeSelector")),
                created,
                containers,
                images,
                selector(o.pointer("/spec/selector/matchLabels")),
            ]
        }
        Kind::Deployment => {
            let (containers, images) = containers(o);
            vec![
                name,
                format!(
                    "{}/{}",
                    number(o, "/status/readyReplicas"),
                    o.pointer("/spec/replicas")
                        .and_then(Value::as_u64)
                        .unwrap_or(1)
                ),
                number(o, "/status/updatedReplicas"),
                number(o, "/status/availableReplicas"),
                created,
                containers,
                images,
                selector(o.pointer("/spec/selector/matchLabels")),
            ]
        }
        Kind::ClusterRole | Kind::Role => vec![
            name,
            text(o, "/metadata/creationTimestamp")
                .unwrap_or("<unknown>")
                .to_owned(),
        ],
        Kind::ClusterRoleBinding | Kind::RoleBinding => {
            let subjects = |kind: &str| {
                let names: Vec<String> = o
                    .get("subjects")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|s| s["kind"] == kind)
                    .map(|s| match s["namespace"].as_str() {
                        Some(ns) => format!("{ns}/{}", s["name"].as_str().unwrap_or("")),
                        None => s["name"].as_str().unwrap_or("").to_owned(),
                    })
                    .collect();
                names.join(", ")
            };
            vec![
                name,
                format!(
                    "{}/{}",
                    text(o, "/roleRef/kind").unwrap_or(""),
                    text(o, "/roleRef/name").unwrap_or("")
                ),
                created,
                subjects("User"),
                subjects("Group"),
                subjects("ServiceAccount"),
            ]
        }
    };
    cells.into_iter().map(Value::String).collect()
}

/// How many entries a list or map has (`0` when absent).
fn count(value: Option<&Value>) -> String {
    match value {
        Some(Value::Array(a)) => a.len(),
        Some(Value::Object(m)) => m.len(),
        _ => 0,
    }
    .to_string()
}

/// A status counter, `0` when absent (as the printers show it).
fn number(o: &Value, pointer: &str) -> String {
    o.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or(0)
        .to_string()
}

/// A workload's container names and images, comma-separated.
fn containers(o: &Value) -> (String, String) {
    let containers = o
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let join = |field: &str| {
        containers
            .iter()
            .map(|c| c[field].as_str().unwrap_or(""))
            .collect::<Vec<_>>()
            .join(",")
    };
    (join("name"), join("image"))
}

/// `Ready`, `NotReady` or `Unknown`, with `,SchedulingDisabled` when
/// cordoned.
fn node_status(o: &Value) -> String {
    let ready = o
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .map(|c| match c["status"].as_str() {
            Some("True") => "Ready",
            Some("False") => "NotReady",
            _ => "Unknown",
        })
        .unwrap_or("Unknown");
    if o.pointer("/spec/unschedulable") == Some(&Value::Bool(true)) {
        format!("{ready},SchedulingDisabled")
    } else {
        ready.to_owned()
    }
}

/// Roles from `node-role.kubernetes.io/<role>` labels.
fn node_roles(o: &Value) -> String {
    let roles: Vec<&str> = o
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(key, _)| key.strip_prefix("node-role.kubernetes.io/"))
        .filter(|role| !role.is_empty())
        .collect();
    if roles.is_empty() {
        "<none>".to_owned()
    } else {
        roles.join(",")
    }
}

fn node_address(o: &Value, type_: &str) -> String {
    let address = o
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|a| a["type"] == type_)
        .and_then(|a| a["address"].as_str());
    or_none(address)
}

/// The pod's phase, or what holds its containers (`ContainerCreating`,
/// `ImagePullBackOff`, `CrashLoopBackOff`...), or `Terminating`.
fn pod_status(o: &Value) -> String {
    if o.pointer("/metadata/deletionTimestamp").is_some() {
        return "Terminating".to_owned();
    }
    let held = o
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find_map(|s| {
            text(s, "/state/waiting/reason").or_else(|| text(s, "/state/terminated/reason"))
        });
    held.or_else(|| text(o, "/status/reason"))
        .or_else(|| text(o, "/status/phase"))
        .unwrap_or("Unknown")
        .to_owned()
}

/// `53/UDP,53/TCP`.
fn service_ports(o: &Value) -> String {
    let ports: Vec<String> = o
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            format!(
                "{}/{}",
                p["port"].as_u64().unwrap_or(0),
                p["protocol"].as_str().unwrap_or("TCP")
            )
        })
        .collect();
    if ports.is_empty() {
        "<none>".to_owned()
    } else {
        ports.join(",")
    }
}

/// `a=b,c=d`, `<none>` when empty.
fn selector(labels: Option<&Value>) -> String {
    let pairs: Vec<String> = labels
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    if pairs.is_empty() {
        "<none>".to_owned()
    } else {
        pairs.join(",")
    }
}

/// A NetworkPolicy's pod selector; an empty one selects every pod of its
/// namespace, which the real printer writes as `<none>`.
fn pod_selector(o: &Value) -> String {
    selector(o.pointer("/spec/podSelector/matchLabels"))
}

fn parse(timestamp: Option<&str>) -> Option<Timestamp> {
    timestamp?.parse().ok()
}

/// Time since `created` (an object's creation, an Event's first or last
/// sighting): `<unknown>` without a time.
fn age(created: Option<&str>, now: Timestamp) -> String {
    parse(created).map_or_else(|| "<unknown>".to_owned(), |t| human_duration(t, now))
}

/// apimachinery's `duration.HumanDuration`: `45s`, `3m2s`, `4h10m`, `2d5h`.
fn human_duration(since: Timestamp, now: Timestamp) -> String {
    let seconds = now.as_second() - since.as_second();
    if seconds < -1 {
        return "<invalid>".to_owned();
    }
    let seconds = seconds.max(0);
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{days}d")
        } else {
            format!("{days}d{h}h")
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if hours < 24 * 365 * 8 {
        let d = days % 365;
        return if d == 0 {
            format!("{years}y")
        } else {
            format!("{years}y{d}d")
        };
    }
    format!("{years}y")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("in range")
    }

    #[test]
    fn durations_read_as_kubectl_prints_them() {
        let now = at(1_000_000_000);
        let d = |s: i64| human_duration(at(1_000_000_000 - s), now);
        assert_eq!(d(0), "0s");
        assert_eq!(d(119), "119s");
        assert_eq!(d(182), "3m2s");
        assert_eq!(d(600), "10m");
        assert_eq!(d(4 * 3600 + 600), "4h10m");
        assert_eq!(d(30 * 3600), "30h");
        assert_eq!(d(2 * 86_400 + 5 * 3600), "2d5h");
        assert_eq!(d(100 * 86_400), "100d");
        assert_eq!(human_duration(at(1_000_000_010), now), "<invalid>");
    }

    #[test]
    fn accept_headers_asking_for_tables() {
        assert!(wanted(Some(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        )));
        assert!(!wanted(Some("application/json")));
        assert!(!wanted(None));
    }

    #[test]
    fn a_waiting_pod_shows_why_and_a_cordoned_node_says_so() {
        let now = at(1_000_000_000);
        let pod = json!({
            "metadata": {"name": "p", "creationTimestamp": "2001-09-09T01:46:40Z"},
            "spec": {"containers": [{"name": "agent"}], "nodeName": "node-2"},
            "status": {"phase": "Pending", "containerStatuses": [
                {"name": "agent", "ready": false, "restartCount": 2,
                 "state": {"waiting": {"reason": "ImagePullBackOff"}}}
            ]}
        });
        let row = &table(Kind::Pod, Some(7), &[pod], now)["rows"][0]["cells"];
        assert_eq!(
            row,
            &json!([
                "p",
                "0/1",
                "ImagePullBackOff",
                "2",
                "0s",
                "<none>",
                "node-2",
                "<none>",
                "<none>"
            ])
        );
        let node = json!({
            "metadata": {"name": "node-1", "labels": {"node-role.kubernetes.io/control-plane": ""}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "addresses": [{"type": "InternalIP", "address": "198.18.0.1"}]}
        });
        let row = &table(Kind::Node, None, &[node], now)["rows"][0]["cells"];
        assert_eq!(row[1], "Ready,SchedulingDisabled");
        assert_eq!(row[2], "control-plane");
        assert_eq!(row[5], "198.18.0.1");
    }
}
