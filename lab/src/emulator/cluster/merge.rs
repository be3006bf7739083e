//! Patches as the API server applies them: JSON merge patch (RFC 7386)
//! and the strategic merge patch of the built-in types.
//!
//! A strategic merge patch is a merge patch except that some lists merge
//! item by item on a key (`containers` by `name`, `volumeMounts` by
//! `mountPath`, `conditions` by `type`...: the `patchMergeKey`s of the
//! types, for the fields netmatrix's objects have), and it carries
//! directives: `$patch: delete` (remove a list item or a map), `$patch:
//! replace` (replace a map, or a list when given as an item),
//! `$retainKeys`, `$deleteFromPrimitiveList/<field>` and
//! `$setElementOrder/<field>` (ordering only: the emulator keeps the
//! stored order and appends new items). Lists without a merge key are
//! replaced whole, as the types' strategies have it (`args`, `command`,
//! `tolerations`, RoleBinding `subjects`...).

use serde_json::{Map, Value};

/// Applies `patch` to `target`.
pub(crate) fn merge(target: &mut Value, patch: &Value, strategic: bool) {
    match (&mut *target, patch) {
        (Value::Object(t), Value::Object(p)) => merge_map(t, p, strategic),
        _ => *target = without_directives(patch),
    }
}

fn is_directive(key: &str) -> bool {
    key.starts_with('$')
}

fn patch_directive(value: &Value) -> Option<&str> {
    value.get("$patch").and_then(Value::as_str)
}

fn merge_map(t: &mut Map<String, Value>, p: &Map<String, Value>, strategic: bool) {
    if strategic {
        if p.get("$patch").and_then(Value::as_str) == Some("replace") {
            if let Value::Object(replaced) = without_directives(&Value::Object(p.clone())) {
                *t = replaced;
            }
            return;
        }
        if let Some(Value::Array(keep)) = p.get("$retainKeys") {
            t.retain(|k, _| keep.iter().any(|kept| kept == k) || p.contains_key(k));
        }
    }
    for (key, value) in p {
        if strategic && is_directive(key) {
            if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/")
                && let (Some(Value::Array(have)), Value::Array(remove)) = (t.get_mut(field), value)
            {
                have.retain(|v| !remove.contains(v));
            }
            continue;
        }
        match (t.get_mut(key), value) {
            (_, Value::Null) => {
                t.remove(key);
            }
            (_, Value::Object(_)) if strategic && patch_directive(value) == Some("delete") => {
                t.remove(key);
            }
            (Some(Value::Array(have)), Value::Array(new)) if strategic => {
                merge_list(key, have, new);
            }
            (Some(old @ Value::Object(_)), Value::Object(_)) => merge(old, value, strategic),
            _ => {
                t.insert(key.clone(), without_directives(value));
            }
        }
    }
}

fn merge_list(field: &str, have: &mut Vec<Value>, new: &[Value]) {
    // `{"$patch": "replace"}` among the items: the list is the others.
    let replace = |item: &Value| {
        patch_directive(item) == Some("replace") && item.as_object().is_some_and(|o| o.len() == 1)
    };
    if new.iter().any(replace) {
        *have = new
            .iter()
            .filter(|i| !replace(i))
            .map(without_directives)
            .collect();
        return;
    }
    let Some(key) = merge_key(field, new) else {
        *have = new.iter().map(without_directives).collect();
        return;
    };
    for item in new {
        let same = |c: &Value| c.get(key) == item.get(key);
        if patch_directive(item) == Some("delete") {
            have.retain(|c| !same(c));
            continue;
        }
        match have.iter_mut().find(|c| same(c)) {
            Some(old) => merge(old, item, true),
            None => have.push(without_directives(item)),
        }
    }
}

/// The key list `field` merges on, when every item of the patch has it;
/// `None`: the list is replaced whole.
fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    let key = match field {
        "conditions" => "type",
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        "ownerReferences" => "uid",
        // A container's ports merge by `containerPort`, a Service's by
        // `port`.
        "ports" if items.iter().all(|i| i.get("containerPort").is_some()) => "containerPort",
        "ports" => "port",
        _ => return None,
    };
    items.iter().all(|i| i.get(key).is_some()).then_some(key)
}

/// `value` with every `$` directive removed, as stored.
fn without_directives(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !is_directive(k))
                .map(|(k, v)| (k.clone(), without_directives(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_directives).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn strategic(target: Value, patch: Value) -> Value {
        let mut target = target;
        merge(&mut target, &patch, true);
        target
    }

    #[test]
    fn lists_merge_on_their_key_and_directives_remove_and_replace() {
        let pod = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}],
             "ports": [{"containerPort": 80}], "args": ["--one"]},
            {"name": "b", "image": "b:1"}
        ]}});
        let patched = strategic(
            pod,
            json!({"spec": {
                "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
                "containers": [
                    {"name": "a", "image": "a:2",
                     "env": [{"name": "Y", "$patch": "delete"}, {"name": "Z", "value": "3"}],
                     "ports": [{"containerPort": 81}], "args": ["--two"]},
                    {"name": "b", "$patch": "delete"}
                ]
            }}),
        );
        assert_eq!(
            patched,
            json!({"spec": {"containers": [
                {"name": "a", "image": "a:2",
                 "env": [{"name": "X", "value": "1"}, {"name": "Z", "value": "3"}],
                 "ports": [{"containerPort": 80}, {"containerPort": 81}], "args": ["--two"]}
            ]}})
        );
    }

    #[test]
    fn maps_can_be_replaced_deleted_or_trimmed() {
        let object = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x", "y"]},
                            "spec": {"selector": {"a": "1"}, "strategy": {"type": "A", "a": {"n": 1}}}});
        let patched = strategic(
            object,
            json!({
                "metadata": {"labels": {"$patch": "replace", "c": "3"},
                             "$deleteFromPrimitiveList/finalizers": ["x"]},
                "spec": {"selector": {"$patch": "delete"},
                         "strategy": {"$retainKeys": ["type"], "type": "B"}}
            }),
        );
        assert_eq!(
            patched,
            json!({"metadata": {"labels": {"c": "3"}, "finalizers": ["y"]},
                   "spec": {"strategy": {"type": "B"}}})
        );
    }

    #[test]
    fn a_merge_patch_replaces_lists_and_null_deletes() {
        let mut target = json!({"a": [1, 2], "b": {"c": 1, "d": 2}});
        merge(&mut target, &json!({"a": [3], "b": {"c": null}}), false);
        assert_eq!(target, json!({"a": [3], "b": {"d": 2}}));
        // Conditions merge by type in a strategic patch (node status).
        let status = strategic(
            json!({"conditions": [{"type": "Ready", "status": "True"}, {"type": "X", "status": "False"}]}),
            json!({"conditions": [{"type": "X", "status": "True"}]}),
        );
        assert_eq!(status["conditions"][1]["status"], "True");
        assert_eq!(status["conditions"][0]["type"], "Ready");
    }
}
