//! Request bodies in Kubernetes' protobuf encoding, for the kinds clients
//! send that way to the lab: client-go's typed clients write
//! `application/vnd.kubernetes.protobuf` (helm's release storage: Secrets;
//! `kubectl create configmap`, `kubectl create namespace`).
//!
//! The wire format is the API server's: the magic `k8s\0`, then a
//! `runtime.Unknown` carrying the object's `apiVersion` and `kind` and the
//! object's own message (`k8s.io/api/core/v1/generated.proto`). Only the
//! messages below are decoded, field for field (managed fields aside, which
//! the server owns); any other kind is refused with `415`, never half read.

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::{Value, json};

/// The first bytes of every protobuf-encoded Kubernetes object.
const MAGIC: &[u8] = b"k8s\0";

#[derive(Clone, PartialEq, prost::Message)]
struct Unknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", optional, tag = "2")]
    raw: Option<Vec<u8>>,
    #[prost(string, optional, tag = "3")]
    content_encoding: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TypeMeta {
    #[prost(string, optional, tag = "1")]
    api_version: Option<String>,
    #[prost(string, optional, tag = "2")]
    kind: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Secret {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(btree_map = "string, bytes", tag = "2")]
    data: BTreeMap<String, Vec<u8>>,
    #[prost(string, optional, tag = "3")]
    type_: Option<String>,
    #[prost(btree_map = "string, string", tag = "4")]
    string_data: BTreeMap<String, String>,
    #[prost(bool, optional, tag = "5")]
    immutable: Option<bool>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ConfigMap {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(btree_map = "string, string", tag = "2")]
    data: BTreeMap<String, String>,
    #[prost(btree_map = "string, bytes", tag = "3")]
    binary_data: BTreeMap<String, Vec<u8>>,
    #[prost(bool, optional, tag = "4")]
    immutable: Option<bool>,
}

/// A Namespace as clients create it: its status is the server's.
#[derive(Clone, PartialEq, prost::Message)]
struct Namespace {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    spec: Option<NamespaceSpec>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct NamespaceSpec {
    #[prost(string, repeated, tag = "1")]
    finalizers: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ObjectMeta {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    generate_name: Option<String>,
    #[prost(string, optional, tag = "3")]
    namespace: Option<String>,
    #[prost(string, optional, tag = "5")]
    uid: Option<String>,
    #[prost(string, optional, tag = "6")]
    resource_version: Option<String>,
    #[prost(int64, optional, tag = "7")]
    generation: Option<i64>,
    #[prost(btree_map = "string, string", tag = "11")]
    labels: BTreeMap<String, String>,
    #[prost(btree_map = "string, string", tag = "12")]
    annotations: BTreeMap<String, String>,
    #[prost(message, repeated, tag = "13")]
    owner_references: Vec<OwnerReference>,
    #[prost(string, repeated, tag = "14")]
    finalizers: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct OwnerReference {
    #[prost(string, optional, tag = "1")]
    kind: Option<String>,
    #[prost(string, optional, tag = "3")]
    name: Option<String>,
    #[prost(string, optional, tag = "4")]
    uid: Option<String>,
    #[prost(string, optional, tag = "5")]
    api_version: Option<String>,
    #[prost(bool, optional, tag = "6")]
    controller: Option<bool>,
    #[prost(bool, optional, tag = "7")]
    block_owner_deletion: Option<bool>,
}

/// Why a protobuf body was not read.
#[derive(Debug, thiserror::Error)]
pub enum ProtobufError {
    #[error("the body is not a Kubernetes protobuf object: {0}")]
    Malformed(String),
    /// A kind the emulator does not decode from protobuf (`v1 Pod`).
    #[error("a {0} in protobuf")]
    Unsupported(String),
}

/// `body` (`application/vnd.kubernetes.protobuf`) as the object's JSON.
pub fn to_json(body: &[u8]) -> Result<Value, ProtobufError> {
    use prost::Message;
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| ProtobufError::Malformed("no k8s magic".into()))?;
    let unknown = Unknown::decode(envelope).map_err(|e| ProtobufError::Malformed(e.to_string()))?;
    if unknown
        .content_encoding
        .as_deref()
        .is_some_and(|e| !e.is_empty())
    {
        return Err(ProtobufError::Malformed(
            "an encoded (compressed) object".into(),
        ));
    }
    let type_meta = unknown.type_meta.unwrap_or_default();
    let api_version = type_meta.api_version.unwrap_or_default();
    let kind = type_meta.kind.unwrap_or_default();
    let raw = unknown.raw.unwrap_or_default();
    let malformed = |e: prost::DecodeError| ProtobufError::Malformed(e.to_string());
    let base64 = base64::engine::general_purpose::STANDARD;
    let bytes = |map: BTreeMap<String, Vec<u8>>| -> Value {
        map.into_iter()
            .map(|(k, v)| (k, Value::String(base64.encode(v))))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let mut object = json!({ "apiVersion": api_version, "kind": kind });
    let mut set = |key: &str, value: Value| {
        object[key] = value;
    };
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Secret") => {
            let secret = Secret::decode(raw.as_slice()).map_err(malformed)?;
            set("metadata", metadata(secret.metadata.unwrap_or_default()));
            if !secret.data.is_empty() {
                set("data", bytes(secret.data));
            }
            if !secret.string_data.is_empty() {
                set("stringData", json!(secret.string_data));
            }
            if let Some(type_) = secret.type_ {
                set("type", json!(type_));
            }
            if let Some(immutable) = secret.immutable {
                set("immutable", json!(immutable));
            }
        }
        ("v1", "ConfigMap") => {
            let map = ConfigMap::decode(raw.as_slice()).map_err(malformed)?;
            set("metadata", metadata(map.metadata.unwrap_or_default()));
            if !map.data.is_empty() {
                set("data", json!(map.data));
            }
            if !map.binary_data.is_empty() {
                set("binaryData", bytes(map.binary_data));
            }
            if let Some(immutable) = map.immutable {
                set("immutable", json!(immutable));
            }
        }
        ("v1", "Namespace") => {
            let namespace = Namespace::decode(raw.as_slice()).map_err(malformed)?;
            set("metadata", metadata(namespace.metadata.unwrap_or_default()));
            if let Some(spec) = namespace.spec.filter(|s| !s.finalizers.is_empty()) {
                set("spec", json!({ "finalizers": spec.finalizers }));
            }
        }
        _ => return Err(ProtobufError::Unsupported(format!("{api_version} {kind}"))),
    }
    Ok(object)
}

fn metadata(meta: ObjectMeta) -> Value {
    let mut out = serde_json::Map::new();
    let mut put = |key: &str, value: Value| {
        out.insert(key.to_owned(), value);
    };
    for (key, value) in [
        ("name", meta.name),
        ("generateName", meta.generate_name),
        ("namespace", meta.namespace),
        ("uid", meta.uid),
        ("resourceVersion", meta.resource_version),
    ] {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            put(key, Value::String(value));
        }
    }
    if let Some(generation) = meta.generation {
        put("generation", json!(generation));
    }
    if !meta.labels.is_empty() {
        put("labels", json!(meta.labels));
    }
    if !meta.annotations.is_empty() {
        put("annotations", json!(meta.annotations));
    }
    if !meta.owner_references.is_empty() {
        let owners: Vec<Value> = meta
            .owner_references
            .into_iter()
            .map(|o| {
                json!({
                    "apiVersion": o.api_version.unwrap_or_default(),
                    "kind": o.kind.unwrap_or_default(),
                    "name": o.name.unwrap_or_default(),
                    "uid": o.uid.unwrap_or_default(),
                    "controller": o.controller,
                    "blockOwnerDeletion": o.block_owner_deletion,
                })
            })
            .collect();
        put("ownerReferences", Value::Array(owners));
    }
    if !meta.finalizers.is_empty() {
        put("finalizers", json!(meta.finalizers));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let mut body = MAGIC.to_vec();
        Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: None,
        }
        .encode(&mut body)
        .expect("a Vec grows");
        body
    }

    #[test]
    fn a_helm_release_secret_reads_as_its_json() {
        let secret = Secret {
            metadata: Some(ObjectMeta {
                name: Some("sh.helm.release.v1.demo.v1".into()),
                namespace: Some("helmtest".into()),
                labels: [("owner".to_owned(), "helm".to_owned())].into(),
                ..Default::default()
            }),
            data: [("release".to_owned(), b"H4sI".to_vec())].into(),
            type_: Some("helm.sh/release.v1".into()),
            ..Default::default()
        };
        let object = to_json(&envelope("v1", "Secret", secret.encode_to_vec())).expect("decoded");
        assert_eq!(
            object,
            json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": "sh.helm.release.v1.demo.v1",
                    "namespace": "helmtest",
                    "labels": {"owner": "helm"},
                },
                "data": {"release": "SDRzSQ=="},
                "type": "helm.sh/release.v1",
            })
        );
    }

    #[test]
    fn other_kinds_and_garbage_are_refused() {
        let pod = envelope("v1", "Pod", Vec::new());
        assert!(matches!(to_json(&pod), Err(ProtobufError::Unsupported(k)) if k == "v1 Pod"));
        let map = ConfigMap {
            metadata: Some(ObjectMeta {
                name: Some("x".into()),
                ..Default::default()
            }),
            data: [("a".to_owned(), "b".to_owned())].into(),
            ..Default::default()
        };
        let map = to_json(&envelope("v1", "ConfigMap", map.encode_to_vec())).expect("decoded");
        assert_eq!(map["data"], json!({"a": "b"}));
        assert!(matches!(to_json(b"{}"), Err(ProtobufError::Malformed(_))));
        let mut truncated = envelope("v1", "Secret", vec![0x0a, 0x05, b'x']);
        truncated.truncate(truncated.len() - 1);
        assert!(to_json(&truncated).is_err());
    }
}
