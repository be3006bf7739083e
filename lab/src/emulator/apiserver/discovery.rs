//! API discovery, as `kubectl` and `helm` read it before any other request:
//! `GET /api` (the core group's versions), `/apis` (the other groups),
//! `/api/v1` and `/apis/{group}/{version}` (each version's resources, with
//! their verbs and short names).
//!
//! Only the legacy (unaggregated) documents are served: clients that ask
//! for aggregated discovery (`as=APIGroupDiscoveryList`) also accept plain
//! JSON and fall back to these, as they do with older API servers.
//!
//! The lists name what this emulator serves, nothing more: a client that
//! finds a resource here can use the verbs listed for it.

use serde_json::{Value, json};

use crate::emulator::cluster::Kind;

/// A resource or subresource of a group version, as listed in an
/// `APIResourceList`.
struct Resource {
    /// `pods`, or `pods/log` for a subresource.
    name: &'static str,
    kind: &'static str,
    namespaced: bool,
    verbs: &'static [&'static str],
    short_names: &'static [&'static str],
    /// `all` for the kinds `kubectl get all` shows.
    categories: &'static [&'static str],
}

const READ: &[&str] = &["get", "list", "watch"];
const READ_WRITE: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// kubectl's short names (`kubectl get po`).
fn short_names(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Event => &["ev"],
        Kind::Namespace => &["ns"],
        Kind::Node => &["no"],
        Kind::Pod => &["po"],
        Kind::Service => &["svc"],
        Kind::NetworkPolicy => &["netpol"],
        Kind::ServiceAccount => &["sa"],
        Kind::ConfigMap => &["cm"],
        Kind::DaemonSet => &["ds"],
        Kind::Deployment => &["deploy"],
        Kind::Secret
        | Kind::ClusterRole
        | Kind::ClusterRoleBinding
        | Kind::Role
        | Kind::RoleBinding => &[],
    }
}

/// The resources of `group_version` (`v1` for the core group), `None` for
/// a group version not served.
fn resources(group_version: &str) -> Option<Vec<Resource>> {
    let mut resources: Vec<Resource> = Kind::ALL
        .into_iter()
        .filter(|kind| kind.api_version() == group_version)
        .map(|kind| Resource {
            name: kind.plural(),
            kind: kind.name(),
            namespaced: kind.namespaced(),
            verbs: if kind.writable() { READ_WRITE } else { READ },
            short_names: short_names(kind),
            // What `kubectl get all` shows.
            categories: match kind {
                Kind::Pod | Kind::Service | Kind::DaemonSet | Kind::Deployment => &["all"],
                _ => &[],
            },
        })
        .collect();
    let sub = |name, kind: Kind, verbs| Resource {
        name,
        kind: kind.name(),
        namespaced: kind.namespaced(),
        verbs,
        short_names: &[],
        categories: &[],
    };
    match group_version {
        "v1" => {
            resources.push(sub("nodes/status", Kind::Node, &["patch"]));
            resources.push(sub("pods/log", Kind::Pod, &["get"]));
        }
        "authentication.k8s.io/v1" => resources.push(Resource {
            name: "tokenreviews",
            kind: "TokenReview",
            namespaced: false,
            verbs: &["create"],
            short_names: &[],
            categories: &[],
        }),
        _ if resources.is_empty() => return None,
        _ => {}
    }
    resources.sort_by_key(|r| r.name);
    Some(resources)
}

/// The named groups served (the core group is `/api`'s), each with its one
/// version.
const GROUPS: &[(&str, &str)] = &[
    ("apps", "v1"),
    ("authentication.k8s.io", "v1"),
    ("networking.k8s.io", "v1"),
    ("rbac.authorization.k8s.io", "v1"),
];

/// `GET /openapi/v2`: an OpenAPI document without definitions, in the
/// protobuf encoding clients ask for (an empty message is a valid, empty
/// `openapi_v2.Document`). The emulator publishes no schemas: kubectl's
/// and helm's client-side validation then finds none for any kind and
/// skips, as it does for kinds a server has no schema for. The emulator
/// still refuses a body that is not of its URL's kind (the types'
/// deserializers check every field's shape).
pub async fn openapi_v2() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
        )],
        Vec::<u8>::new(),
    )
        .into_response()
}

/// `GET /api`.
pub fn core_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [],
    })
}

fn group(name: &str, version: &str) -> Value {
    let group_version = json!({
        "groupVersion": format!("{name}/{version}"),
        "version": version,
    });
    json!({
        "name": name,
        "versions": [group_version.clone()],
        "preferredVersion": group_version,
    })
}

/// `GET /apis`.
pub fn group_list() -> Value {
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": GROUPS.iter().map(|(name, version)| group(name, version)).collect::<Vec<_>>(),
    })
}

/// `GET /apis/{group}`, `None` for a group not served.
pub fn api_group(name: &str) -> Option<Value> {
    let (name, version) = GROUPS.iter().find(|(g, _)| *g == name)?;
    let mut group = group(name, version);
    group["kind"] = json!("APIGroup");
    group["apiVersion"] = json!("v1");
    Some(group)
}

/// `GET /api/v1` (`group_version` `v1`) or `/apis/{group}/{version}`,
/// `None` for a group version not served.
pub fn resource_list(group_version: &str) -> Option<Value> {
    let resources: Vec<Value> = resources(group_version)?
        .into_iter()
        .map(|r| {
            let singular = if r.name.contains('/') {
                String::new()
            } else {
                r.kind.to_lowercase()
            };
            let mut resource = json!({
                "name": r.name,
                "singularName": singular,
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": r.verbs,
            });
            if !r.short_names.is_empty() {
                resource["shortNames"] = json!(r.short_names);
            }
            if !r.categories.is_empty() {
                resource["categories"] = json!(r.categories);
            }
            resource
        })
        .collect();
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stored_kind_is_discoverable_where_it_is_served() {
        for kind in Kind::ALL {
            let list = resource_list(kind.api_version()).expect("served group version");
            let found = list["resources"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["name"] == kind.plural())
                .unwrap_or_else(|| panic!("{} missing", kind.plural()));
            assert_eq!(found["kind"], kind.name());
            assert_eq!(found["namespaced"], kind.namespaced());
        }
    }

    #[test]
    fn every_listed_group_has_its_resources() {
        for group in group_list()["groups"].as_array().into_iter().flatten() {
            let gv = group["preferredVersion"]["groupVersion"]
                .as_str()
                .unwrap_or("");
            assert!(resource_list(gv).is_some(), "{gv}");
            assert!(api_group(group["name"].as_str().unwrap_or("")).is_some());
        }
        assert!(resource_list("batch/v1").is_none());
        assert!(api_group("batch").is_none());
    }
}
