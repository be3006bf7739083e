//! Clients' writes, as the API server's generic registry makes them:
//! create, replace (PUT), patch and delete of any stored kind, with the
//! server's part of each (names from `generateName`, `uid`,
//! `creationTimestamp`, `generation`, resourceVersion conflicts, the
//! namespace checks) and its error for each refusal.
//!
//! What a real API server adds on top and the emulator does not:
//! admission (defaults, quotas, Pod Security), field validation beyond the
//! types' shapes, server-side apply, dry runs, and the garbage collector
//! (deleting an owner leaves its dependents); deleting a Namespace removes
//! what is in it at once, without the `Terminating` phase.

use serde::de::DeserializeOwned;
use serde_json::Value;

// Every stored type is named by `for_kind!`.
use super::{
    ClusterRole, ClusterRoleBinding, ClusterState, ConfigMap, DaemonSet, Deployment, Inner, Key,
    Kind, KubeEvent, Namespace, NetworkPolicy, Node, Pod, Role, RoleBinding, Secret, Service,
    ServiceAccount, Stored, json, key, merge, new_uid,
};

/// Why a write was refused, in the API server's terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// 404, with the resource's plural.
    #[error("{kind} \"{name}\" not found")]
    NotFound { kind: &'static str, name: String },
    /// 409 on create.
    #[error("{kind} \"{name}\" already exists")]
    AlreadyExists { kind: &'static str, name: String },
    /// 409 on update: the client's resourceVersion is not the stored one.
    #[error(
        "Operation cannot be fulfilled on {kind} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
    )]
    Conflict { kind: &'static str, name: String },
    /// 400: the body is not an object of the kind.
    #[error("{0}")]
    BadRequest(String),
    /// 422: an object of the kind, but not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// 403: the server never allows it (deleting `default`).
    #[error("{0}")]
    Forbidden(String),
    /// 405: the kind is not written through the API here.
    #[error("{0} cannot be written through the lab's API")]
    NotWritable(&'static str),
}

/// How a PATCH body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/strategic-merge-patch+json`: as a merge patch, except
    /// that some lists merge item by item on their key and the patch's
    /// directives are honoured (see [`super::merge`]).
    Strategic,
}

/// Kinds whose `status` is a subresource: a write of the object itself
/// keeps the stored status, as the real registry does.
fn has_status(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Node
            | Kind::Pod
            | Kind::Service
            | Kind::Namespace
            | Kind::DaemonSet
            | Kind::Deployment
    )
}

impl ClusterState {
    /// `POST` of `body`, an object of `kind`, into `namespace` (ignored for
    /// cluster-scoped kinds). Returns the object as stored.
    pub fn create(&self, kind: Kind, namespace: &str, body: Value) -> Result<Value, WriteError> {
        writable(kind)?;
        let mut object = checked_body(kind, body)?;
        let meta = object_meta(&mut object)?;
        if meta.get("resourceVersion").is_some_and(|rv| !rv.is_null()) {
            return Err(WriteError::Invalid(
                "resourceVersion should not be set on objects to be created".into(),
            ));
        }
        set_namespace(kind, namespace, meta)?;
        let name = match meta.get("name").and_then(Value::as_str) {
            Some(name) if !name.is_empty() => name.to_owned(),
            _ => match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => format!("{prefix}{}", &new_uid()[..5]),
                _ => {
                    return Err(WriteError::Invalid(format!(
                        "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                        kind.name()
                    )));
                }
            },
        };
        validate_name(kind, &name)?;
        meta.insert("name".into(), Value::String(name.clone()));
        // Server-assigned: whatever the client sent is dropped.
        for field in ["uid", "creationTimestamp", "deletionTimestamp"] {
            meta.remove(field);
        }
        meta.insert("generation".into(), Value::from(1));
        let mut inner = self.lock();
        match kind {
            Kind::Service => allocate_cluster_ip(&mut inner, &mut object)?,
            // The Pod strategy's part: a new pod is Pending, whatever the
            // client says of its status.
            Kind::Pod => object["status"] = serde_json::json!({ "phase": "Pending" }),
            Kind::Namespace => object["status"] = serde_json::json!({ "phase": "Active" }),
            Kind::Secret => fold_string_data(&mut object)?,
            _ => {}
        }
        if kind.namespaced() && !namespace_exists(&mut inner, namespace) {
            return Err(WriteError::NotFound {
                kind: "namespaces",
                name: namespace.to_owned(),
            });
        }
        let key = key(kind, namespace, &name);
        for_kind!(kind, T => {
            if T::table(&mut inner).contains_key(&key) {
                return Err(WriteError::AlreadyExists { kind: kind.plural(), name });
            }
            self.store::<T>(&mut inner, &key, object)
        })
    }

    /// `PUT` of `body` over the stored `namespace/name` of `kind`. A
    /// resourceVersion in the body must be the stored one (`409`
    /// otherwise); without one the write is unconditional, as the real
    /// server allows for most kinds.
    pub fn replace(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        body: Value,
    ) -> Result<Value, WriteError> {
        writable(kind)?;
        let mut object = checked_body(kind, body)?;
        let meta = object_meta(&mut object)?;
        set_namespace(kind, namespace, meta)?;
        match meta.get("name").and_then(Value::as_str) {
            Some(n) if n == name => {}
            Some(n) => {
                return Err(WriteError::BadRequest(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            None => {
                meta.insert("name".into(), Value::String(name.to_owned()));
            }
        }
        // An empty resourceVersion is no precondition, as with the server.
        let sent_rv = meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .filter(|rv| !rv.is_empty())
            .map(str::to_owned);
        let mut inner = self.lock();
        let key = key(kind, namespace, name);
        for_kind!(kind, T => {
            let stored = current::<T>(&mut inner, &key)?;
            if sent_rv.is_some_and(|rv| Some(rv.as_str()) != stored["metadata"]["resourceVersion"].as_str()) {
                return Err(WriteError::Conflict { kind: kind.plural(), name: name.to_owned() });
            }
            let object = updated(kind, &stored, object)?;
            self.store::<T>(&mut inner, &key, object)
        })
    }

    /// `PATCH` of the stored `namespace/name` of `kind` with `patch`.
    pub fn patch(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        patch: &Value,
        how: PatchKind,
    ) -> Result<Value, WriteError> {
        writable(kind)?;
        if !patch.is_object() {
            return Err(WriteError::BadRequest(
                "the patch is not a JSON object".into(),
            ));
        }
        let mut inner = self.lock();
        let key = key(kind, namespace, name);
        for_kind!(kind, T => {
            let stored = current::<T>(&mut inner, &key)?;
            let mut object = stored.clone();
            merge(&mut object, patch, how == PatchKind::Strategic);
            if !object.get("metadata").is_some_and(Value::is_object) {
                return Err(WriteError::BadRequest("the patch leaves no metadata object".into()));
            }
            if object["metadata"]["name"] != stored["metadata"]["name"]
                || object["metadata"]["namespace"] != stored["metadata"]["namespace"]
            {
                return Err(WriteError::BadRequest(
                    "a patch cannot change an object's name or namespace".into(),
                ));
            }
            let object = updated(kind, &stored, object)?;
            self.store::<T>(&mut inner, &key, object)
        })
    }

    /// `DELETE` of `namespace/name` of `kind`: gone at once (no graceful
    /// termination, no finalizers). A Namespace takes its objects with it.
    /// Returns the object as it was.
    pub fn remove(&self, kind: Kind, namespace: &str, name: &str) -> Result<Value, WriteError> {
        writable(kind)?;
        if kind == Kind::Namespace && PROTECTED_NAMESPACES.contains(&name) {
            return Err(WriteError::Forbidden(format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            )));
        }
        let object = self
            .get(kind, namespace, name)
            .ok_or_else(|| WriteError::NotFound {
                kind: kind.plural(),
                name: name.to_owned(),
            })?;
        if kind == Kind::Namespace {
            for inside in Kind::ALL.into_iter().filter(|k| k.namespaced()) {
                let (_, items) = self.list(inside);
                for item in items.iter().filter(|o| o["metadata"]["namespace"] == name) {
                    let item_name = item["metadata"]["name"].as_str().unwrap_or_default();
                    for_kind!(inside, T => { self.delete::<T>(name, item_name); });
                }
            }
        }
        for_kind!(kind, T => { self.delete::<T>(namespace, name); });
        Ok(object)
    }

    /// A write to the `status` subresource of `namespace/name`: only the
    /// status changes (what the lab's controllers and kubelet report).
    /// Unchanged status: nothing is written, no watch event is sent.
    pub fn write_status(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        status: Value,
    ) -> Result<(), WriteError> {
        let mut inner = self.lock();
        let key = key(kind, namespace, name);
        for_kind!(kind, T => {
            let Some(mut object) = T::table(&mut inner).get(&key).and_then(json) else {
                return Err(WriteError::NotFound { kind: kind.plural(), name: name.to_owned() });
            };
            if object["status"] == status {
                return Ok(());
            }
            object["status"] = status;
            self.store::<T>(&mut inner, &key, object).map(|_| ())
        })
    }

    /// Stores `object` (JSON of a `T`) under `key`, as a create or an
    /// update; returns it as stored.
    fn store<T: Stored + DeserializeOwned>(
        &self,
        inner: &mut Inner,
        key: &Key,
        object: Value,
    ) -> Result<Value, WriteError> {
        let typed: T = serde_json::from_value(object).map_err(|e| {
            WriteError::BadRequest(format!("the body is not a valid {}: {e}", T::STORED.name()))
        })?;
        self.apply_locked(inner, typed);
        T::table(inner)
            .get(key)
            .and_then(json)
            .ok_or_else(|| WriteError::Invalid("the object could not be stored".into()))
    }
}

/// The Service IP range the allocator hands addresses from, as the API
/// server's `--service-cluster-ip-range` (the lab's: `10.96.0.0/12`).
const SERVICE_RANGE: (std::net::Ipv4Addr, u32) = (std::net::Ipv4Addr::new(10, 96, 0, 0), 12);

/// The Service registry's part of a create: a ClusterIP Service without an
/// address gets the lowest free one of the range (the real allocator picks
/// at random); a requested address must be in the range and free; a
/// headless (`None`) or `ExternalName` Service gets none.
fn allocate_cluster_ip(inner: &mut Inner, service: &mut Value) -> Result<(), WriteError> {
    let spec = service_spec(service)?;
    if spec.get("type").and_then(Value::as_str) == Some("ExternalName") {
        return Ok(());
    }
    let taken: std::collections::BTreeSet<std::net::Ipv4Addr> = Service::table(inner)
        .values()
        .filter_map(|s| s.spec.as_ref()?.cluster_ip.as_deref()?.parse().ok())
        .collect();
    let (base, prefix) = SERVICE_RANGE;
    let base = u32::from(base);
    let size = 1u32 << (32 - prefix);
    let in_range = |ip: std::net::Ipv4Addr| u32::from(ip).wrapping_sub(base) < size;
    let ip = match spec.get("clusterIP").and_then(Value::as_str) {
        Some("None") => return Ok(()),
        Some(requested) if !requested.is_empty() => {
            let ip: std::net::Ipv4Addr = requested.parse().map_err(|_| {
                WriteError::Invalid(format!(
                    "spec.clusterIP: Invalid value: {requested:?}: must be a valid IP address"
                ))
            })?;
            if !in_range(ip) {
                return Err(WriteError::Invalid(format!(
                    "spec.clusterIP: Invalid value: \"{ip}\": provided IP is not in the valid range. The range of valid IPs is {}/{prefix}",
                    SERVICE_RANGE.0
                )));
            }
            if taken.contains(&ip) {
                return Err(WriteError::Invalid(format!(
                    "spec.clusterIP: Invalid value: \"{ip}\": provided IP is already allocated"
                )));
            }
            ip
        }
        _ => (1..size - 1)
            .map(|offset| std::net::Ipv4Addr::from(base + offset))
            .find(|ip| !taken.contains(ip))
            .ok_or_else(|| {
                WriteError::Invalid("Internal error: range is full (no ClusterIP left)".into())
            })?,
    };
    spec.insert("clusterIP".into(), Value::String(ip.to_string()));
    spec.insert("clusterIPs".into(), serde_json::json!([ip.to_string()]));
    Ok(())
}

/// The stored object at `key` as JSON, `404` when there is none.
fn current<T: Stored>(inner: &mut Inner, key: &Key) -> Result<Value, WriteError> {
    T::table(inner)
        .get(key)
        .and_then(json)
        .ok_or_else(|| WriteError::NotFound {
            kind: T::STORED.plural(),
            name: key.1.clone(),
        })
}

fn writable(kind: Kind) -> Result<(), WriteError> {
    if kind.writable() {
        Ok(())
    } else {
        Err(WriteError::NotWritable(kind.plural()))
    }
}

fn namespace_exists(inner: &mut Inner, namespace: &str) -> bool {
    Namespace::table(inner).contains_key(&(String::new(), namespace.to_owned()))
}

/// `body` as an object of `kind`: its `kind` and `apiVersion`, when
/// given, must be the kind's (filled in when absent).
fn checked_body(kind: Kind, body: Value) -> Result<Value, WriteError> {
    let Value::Object(mut object) = body else {
        return Err(WriteError::BadRequest(
            "the body is not a JSON object".into(),
        ));
    };
    for (field, want) in [("kind", kind.name()), ("apiVersion", kind.api_version())] {
        match object.get(field).and_then(Value::as_str) {
            None => {
                object.insert(field.into(), Value::String(want.to_owned()));
            }
            Some(got) if got == want => {}
            Some(got) => {
                return Err(WriteError::BadRequest(format!(
                    "the body's {field} is {got}, this URL takes a {} of {}",
                    kind.name(),
                    kind.api_version()
                )));
            }
        }
    }
    Ok(Value::Object(object))
}

fn object_meta(object: &mut Value) -> Result<&mut serde_json::Map<String, Value>, WriteError> {
    // Unlike `child`, a null `metadata` is refused, not taken as empty.
    fields(object)?
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()))
        .as_object_mut()
        .ok_or_else(|| WriteError::BadRequest("metadata is not an object".into()))
}

/// The URL's namespace into the object; a different one in the body is
/// refused, as the real server refuses it.
fn set_namespace(
    kind: Kind,
    namespace: &str,
    meta: &mut serde_json::Map<String, Value>,
) -> Result<(), WriteError> {
    if !kind.namespaced() {
        meta.remove("namespace");
        return Ok(());
    }
    match meta.get("namespace").and_then(Value::as_str) {
        Some(ns) if !ns.is_empty() && ns != namespace => Err(WriteError::BadRequest(
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
        )),
        _ => {
            meta.insert("namespace".into(), Value::String(namespace.to_owned()));
            Ok(())
        }
    }
}

/// `object`, a new version of `stored`: the server's fields kept (uid,
/// creation time, status of kinds whose status is a subresource, a
/// Service's ClusterIPs, which cannot change), the generation bumped when
/// the spec changed.
/// The API server's name validation: RBAC objects take any path segment
/// (`system:node`), every other kind a lowercase RFC 1123 subdomain (names
/// end up in URLs, DNS, file and container names).
fn validate_name(kind: Kind, name: &str) -> Result<(), WriteError> {
    let rbac = matches!(
        kind,
        Kind::ClusterRole | Kind::ClusterRoleBinding | Kind::Role | Kind::RoleBinding
    );
    let valid = if rbac {
        !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '%'])
    } else {
        is_dns_subdomain(name)
    };
    if valid {
        return Ok(());
    }
    let rule = if rbac {
        "may not be '.' or '..' and may not contain '/' or '%'"
    } else {
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
    };
    Err(WriteError::Invalid(format!(
        "{} {name:?} is invalid: metadata.name: Invalid value: {name:?}: {rule}",
        kind.name()
    )))
}

/// A lowercase RFC 1123 subdomain: at most 253 characters, labels of
/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?` joined by dots.
pub fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label_chars)
}

/// A lowercase RFC 1123 label (at most 63 characters).
pub fn is_dns_label(name: &str) -> bool {
    name.len() <= 63 && is_dns_label_chars(name)
}

fn is_dns_label_chars(label: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    label.starts_with(alnum)
        && label.ends_with(alnum)
        && label.chars().all(|c| alnum(c) || c == '-')
}

fn updated(kind: Kind, stored: &Value, mut object: Value) -> Result<Value, WriteError> {
    let meta = object_meta(&mut object)?;
    for field in ["uid", "creationTimestamp", "deletionTimestamp"] {
        match stored["metadata"].get(field) {
            Some(value) => {
                meta.insert(field.into(), value.clone());
            }
            None => {
                meta.remove(field);
            }
        }
    }
    if has_status(kind) {
        let fields = fields(&mut object)?;
        match stored.get("status") {
            Some(status) => {
                fields.insert("status".into(), status.clone());
            }
            None => {
                fields.remove("status");
            }
        }
    }
    match kind {
        Kind::Service => keep_cluster_ips(stored, &mut object)?,
        Kind::Secret => fold_string_data(&mut object)?,
        _ => {}
    }
    let generation = stored["metadata"]["generation"].as_i64().unwrap_or(1);
    let changed = object.get("spec") != stored.get("spec");
    object_meta(&mut object)?.insert(
        "generation".into(),
        Value::from(generation.saturating_add(i64::from(changed))),
    );
    Ok(object)
}

/// Namespaces the server refuses to delete.
const PROTECTED_NAMESPACES: [&str; 3] = ["default", "kube-system", "kube-public"];

/// The fields of `value`, `400` when it is not a JSON object.
fn fields(value: &mut Value) -> Result<&mut serde_json::Map<String, Value>, WriteError> {
    value
        .as_object_mut()
        .ok_or_else(|| WriteError::BadRequest("the body is not a JSON object".into()))
}

/// The object under `key` in `fields`, created when absent or null (as the
/// API reads a null field); `400` when it is something else.
fn child<'a>(
    fields: &'a mut serde_json::Map<String, Value>,
    key: &str,
) -> Result<&'a mut serde_json::Map<String, Value>, WriteError> {
    let value = fields
        .entry(key)
        .or_insert_with(|| Value::Object(Default::default()));
    if value.is_null() {
        *value = Value::Object(Default::default());
    }
    value
        .as_object_mut()
        .ok_or_else(|| WriteError::BadRequest(format!("{key} is not an object")))
}

/// `spec` of a Service body as an object (created when absent).
fn service_spec(service: &mut Value) -> Result<&mut serde_json::Map<String, Value>, WriteError> {
    child(fields(service)?, "spec")
}

/// A Service's addresses are the registry's: absent from an update, they
/// are kept; changed, the update is refused.
fn keep_cluster_ips(stored: &Value, service: &mut Value) -> Result<(), WriteError> {
    let spec = service_spec(service)?;
    for field in ["clusterIP", "clusterIPs"] {
        let before = stored["spec"].get(field).filter(|v| !v.is_null());
        match (
            spec.get(field)
                .filter(|v| !v.is_null() && v.as_str() != Some("")),
            before,
        ) {
            (None, Some(before)) => {
                spec.insert(field.into(), before.clone());
            }
            (Some(now), Some(before)) if now != before => {
                return Err(WriteError::Invalid(format!(
                    "spec.{field}: Invalid value: {now}: field is immutable"
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The Secret strategy's part: `stringData` is folded into `data`
/// (base64) and not stored.
fn fold_string_data(secret: &mut Value) -> Result<(), WriteError> {
    use base64::Engine;
    let fields = fields(secret)?;
    let Some(string_data) = fields.remove("stringData") else {
        return Ok(());
    };
    let Value::Object(string_data) = string_data else {
        return Err(WriteError::BadRequest("stringData is not an object".into()));
    };
    let data = child(fields, "data")?;
    for (key, value) in string_data {
        let text = value
            .as_str()
            .ok_or_else(|| WriteError::BadRequest(format!("stringData.{key} is not a string")))?;
        let encoded = base64::engine::general_purpose::STANDARD.encode(text);
        data.insert(key, Value::String(encoded));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn cluster() -> ClusterState {
        let state = ClusterState::new();
        state
            .create(Kind::Namespace, "", json!({"metadata": {"name": "ns"}}))
            .expect("namespace");
        state
    }

    fn daemon_set(name: &str, image: &str) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": name},
            "spec": {
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [
                        {"name": "agent", "image": image, "env": [{"name": "A", "value": "1"}]},
                        {"name": "sidecar", "image": "s:1"}
                    ]}
                }
            }
        })
    }

    #[test]
    fn creates_fill_the_servers_fields_and_refuse_what_the_server_refuses() {
        let state = cluster();
        let created = state
            .create(Kind::DaemonSet, "ns", daemon_set("a", "img:1"))
            .expect("created");
        assert_eq!(created["metadata"]["namespace"], "ns");
        assert_eq!(created["metadata"]["generation"], 1);
        assert!(created["metadata"]["uid"].is_string());
        assert!(created["metadata"]["creationTimestamp"].is_string());

        let again = state.create(Kind::DaemonSet, "ns", daemon_set("a", "img:1"));
        assert!(
            matches!(again, Err(WriteError::AlreadyExists { .. })),
            "{again:?}"
        );
        let nowhere = state.create(Kind::DaemonSet, "absent", daemon_set("b", "img:1"));
        assert!(
            matches!(
                &nowhere,
                Err(WriteError::NotFound {
                    kind: "namespaces",
                    ..
                })
            ),
            "{nowhere:?}"
        );
        let wrong_kind = state.create(Kind::Deployment, "ns", daemon_set("c", "img:1"));
        assert!(
            matches!(wrong_kind, Err(WriteError::BadRequest(_))),
            "{wrong_kind:?}"
        );
        let other_ns = json!({"metadata": {"name": "d", "namespace": "other"}});
        assert!(matches!(
            state.create(Kind::ConfigMap, "ns", other_ns),
            Err(WriteError::BadRequest(_))
        ));
        let not_a_secret = json!({"metadata": {"name": "e"}, "data": {"k": 5}});
        assert!(matches!(
            state.create(Kind::Secret, "ns", not_a_secret),
            Err(WriteError::BadRequest(_))
        ));
        let generated = state
            .create(
                Kind::ConfigMap,
                "ns",
                json!({"metadata": {"generateName": "cm-"}}),
            )
            .expect("generated");
        assert!(
            generated["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("cm-"))
        );
        assert!(matches!(
            state.create(Kind::Node, "", json!({"metadata": {"name": "n"}})),
            Err(WriteError::NotWritable(_))
        ));
        // Names become file and container names: the server's validation.
        for bad in ["../../etc", "Upper", "a_b", "-a", ""] {
            let body = json!({"metadata": {"name": bad}});
            let refused = state.create(Kind::ConfigMap, "ns", body);
            assert!(
                matches!(&refused, Err(WriteError::Invalid(_))),
                "{bad}: {refused:?}"
            );
        }
        let role = json!({"metadata": {"name": "system:lab"}});
        assert!(state.create(Kind::ClusterRole, "", role).is_ok());
    }

    #[test]
    fn updates_conflict_on_a_stale_version_and_patches_merge_by_key() {
        let state = cluster();
        let created = state
            .create(Kind::DaemonSet, "ns", daemon_set("a", "img:1"))
            .expect("created");
        let rv = created["metadata"]["resourceVersion"].clone();

        let mut update = daemon_set("a", "img:2");
        update["metadata"]["resourceVersion"] = rv.clone();
        let replaced = state
            .replace(Kind::DaemonSet, "ns", "a", update.clone())
            .expect("replaced");
        assert_eq!(replaced["metadata"]["generation"], 2);
        assert_eq!(replaced["metadata"]["uid"], created["metadata"]["uid"]);
        // The same write again is from a version that is gone.
        let stale = state.replace(Kind::DaemonSet, "ns", "a", update);
        assert!(
            matches!(stale, Err(WriteError::Conflict { .. })),
            "{stale:?}"
        );

        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "agent", "env": [{"name": "B", "value": "2"}]}
        ]}}}});
        let patched = state
            .patch(Kind::DaemonSet, "ns", "a", &patch, PatchKind::Strategic)
            .expect("patched");
        let containers = &patched["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers.as_array().map(Vec::len), Some(2), "{containers}");
        assert_eq!(containers[0]["image"], "img:2");
        assert_eq!(containers[0]["env"].as_array().map(Vec::len), Some(2));
        assert_eq!(patched["metadata"]["generation"], 3);
        // A merge patch replaces lists whole.
        let merged = state
            .patch(Kind::DaemonSet, "ns", "a", &patch, PatchKind::Merge)
            .expect("merged");
        let containers = &merged["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers.as_array().map(Vec::len), Some(1));
        assert!(matches!(
            state.patch(Kind::DaemonSet, "ns", "zz", &patch, PatchKind::Merge),
            Err(WriteError::NotFound { .. })
        ));
    }

    #[test]
    fn a_write_of_the_object_keeps_its_status() {
        let state = cluster();
        state
            .create(
                Kind::Pod,
                "ns",
                json!({"metadata": {"name": "p"}, "spec": {"containers": []}}),
            )
            .expect("created");
        state.set_pod_phase("ns", "p", "Running");
        let replaced = state
            .replace(
                Kind::Pod,
                "ns",
                "p",
                json!({"metadata": {"name": "p"}, "spec": {"containers": []}, "status": {"phase": "Failed"}}),
            )
            .expect("replaced");
        assert_eq!(replaced["status"]["phase"], "Running");
    }

    #[test]
    fn services_get_a_cluster_ip_from_the_range() {
        let state = cluster();
        let svc = |name: &str, ip: Option<&str>| {
            let mut body = json!({"metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}});
            if let Some(ip) = ip {
                body["spec"]["clusterIP"] = json!(ip);
            }
            state.create(Kind::Service, "ns", body)
        };
        assert_eq!(
            svc("a", Some("10.96.0.1")).expect("a")["spec"]["clusterIP"],
            "10.96.0.1"
        );
        assert_eq!(svc("b", None).expect("b")["spec"]["clusterIP"], "10.96.0.2");
        assert_eq!(
            svc("c", Some("None")).expect("c")["spec"]["clusterIP"],
            "None"
        );
        assert!(matches!(
            svc("d", Some("10.96.0.2")),
            Err(WriteError::Invalid(_))
        ));
        assert!(matches!(
            svc("e", Some("192.168.1.1")),
            Err(WriteError::Invalid(_))
        ));
    }

    #[test]
    fn a_services_addresses_outlive_updates_and_cannot_change() {
        let state = cluster();
        let body = json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}});
        let created = state
            .create(Kind::Service, "ns", body.clone())
            .expect("created");
        let ip = created["spec"]["clusterIP"].clone();
        // A PUT without the address keeps it, with an empty resourceVersion
        // as no precondition.
        let mut put = body.clone();
        put["metadata"]["resourceVersion"] = json!("");
        let replaced = state
            .replace(Kind::Service, "ns", "s", put)
            .expect("replaced");
        assert_eq!(replaced["spec"]["clusterIP"], ip);
        let mut moved = body;
        moved["spec"]["clusterIP"] = json!("10.96.9.9");
        assert!(matches!(
            state.replace(Kind::Service, "ns", "s", moved),
            Err(WriteError::Invalid(_))
        ));
        // Bodies whose parts are not objects are refused, not a panic.
        for bad in [
            json!({"metadata": {"name": "t"}, "spec": 5}),
            json!({"metadata": 5}),
        ] {
            assert!(matches!(
                state.create(Kind::Service, "ns", bad),
                Err(WriteError::BadRequest(_))
            ));
        }
        let patch = json!({"metadata": 5});
        assert!(matches!(
            state.patch(Kind::Service, "ns", "s", &patch, PatchKind::Merge),
            Err(WriteError::BadRequest(_))
        ));
    }

    #[test]
    fn secrets_fold_string_data_and_namespaces_are_labelled_and_guarded() {
        let state = cluster();
        let secret = state
            .create(
                Kind::Secret,
                "ns",
                json!({"metadata": {"name": "s"}, "stringData": {"p": "q"}}),
            )
            .expect("created");
        assert_eq!(secret["data"], json!({"p": "cQ=="}));
        assert!(secret.get("stringData").is_none());
        let ns = state.get(Kind::Namespace, "", "ns").expect("namespace");
        assert_eq!(
            ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
            "ns"
        );
        assert_eq!(ns["status"]["phase"], "Active");
        state
            .create(
                Kind::Namespace,
                "",
                json!({"metadata": {"name": "default"}}),
            )
            .expect("default");
        assert!(matches!(
            state.remove(Kind::Namespace, "", "default"),
            Err(WriteError::Forbidden(_))
        ));
    }

    #[test]
    fn deleting_a_namespace_deletes_what_is_in_it() {
        let state = cluster();
        state
            .create(Kind::ConfigMap, "ns", json!({"metadata": {"name": "cm"}}))
            .expect("created");
        let gone = state.remove(Kind::Namespace, "", "ns").expect("deleted");
        assert_eq!(gone["metadata"]["name"], "ns");
        assert!(state.get(Kind::ConfigMap, "ns", "cm").is_none());
        assert!(matches!(
            state.remove(Kind::Namespace, "", "ns"),
            Err(WriteError::NotFound { .. })
        ));
    }
}
