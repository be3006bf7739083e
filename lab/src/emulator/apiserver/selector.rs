//! Label and field selectors, parsed and matched as the API server does
//! (`k8s.io/apimachinery/pkg/labels` and `.../fields`), on objects as JSON.
//!
//! Label selectors: `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`,
//! `k notin (a,b)`, comma-separated (all must hold); keys and values are
//! checked like label keys and values. Field selectors: `f=v`, `f==v`,
//! `f!=v` with `\,` `\=` `\\` escapes, on the fields the real API server
//! supports for the kind (those netmatrix may use). Anything else is an
//! error that the emulator answers with 400, never a panic.

use serde_json::Value;

use crate::emulator::cluster::Kind;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("unable to parse requirement: {0}")]
    Label(String),
    #[error("invalid field selector: {0}")]
    Field(String),
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
}

/// What one request asks for: a namespace (from the URL) and selectors.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    namespace: Option<String>,
    labels: Vec<LabelRequirement>,
    fields: Vec<FieldRequirement>,
    kind_fields: &'static [(&'static str, &'static str)],
}

impl Filter {
    pub fn new(
        kind: Kind,
        namespace: Option<String>,
        label_selector: Option<&str>,
        field_selector: Option<&str>,
    ) -> Result<Filter, SelectorError> {
        let kind_fields = field_labels(kind);
        let fields = parse_field_selector(field_selector.unwrap_or(""))?;
        if let Some(f) = fields
            .iter()
            .find(|f| !kind_fields.iter().any(|(name, _)| *name == f.field))
        {
            return Err(SelectorError::UnsupportedField(f.field.clone()));
        }
        Ok(Filter {
            namespace,
            labels: parse_label_selector(label_selector.unwrap_or(""))?,
            fields,
            kind_fields,
        })
    }

    /// Whether `object` (a k8s object as JSON) is selected.
    pub fn matches(&self, object: &Value) -> bool {
        let meta = &object["metadata"];
        if let Some(ns) = &self.namespace
            && meta["namespace"].as_str() != Some(ns)
        {
            return false;
        }
        let labels = &meta["labels"];
        self.labels.iter().all(|r| r.holds(labels[&r.key].as_str()))
            && self.fields.iter().all(|r| {
                let absent = self
                    .kind_fields
                    .iter()
                    .find(|(name, _)| *name == r.field)
                    .map_or("", |(_, default)| *default);
                r.holds(&field_value(object, field_path(&r.field), absent))
            })
    }
}

/// Field selectors the API server accepts per kind, with the value a field
/// has when absent from the object (booleans default to `false`).
fn field_labels(kind: Kind) -> &'static [(&'static str, &'static str)] {
    match kind {
        Kind::Node => &[("metadata.name", ""), ("spec.unschedulable", "false")],
        Kind::Pod => &[
            ("metadata.name", ""),
            ("metadata.namespace", ""),
            ("spec.nodeName", ""),
            ("spec.restartPolicy", ""),
            ("spec.schedulerName", ""),
            ("spec.serviceAccountName", ""),
            ("spec.hostNetwork", "false"),
            ("status.phase", ""),
            ("status.podIP", ""),
            ("status.nominatedNodeName", ""),
        ],
        Kind::Secret => &[
            ("metadata.name", ""),
            ("metadata.namespace", ""),
            ("type", ""),
        ],
        Kind::Service
        | Kind::NetworkPolicy
        | Kind::ServiceAccount
        | Kind::ConfigMap
        | Kind::DaemonSet
        | Kind::Deployment
        | Kind::ClusterRole
        | Kind::ClusterRoleBinding
        | Kind::Role
        | Kind::RoleBinding => &[("metadata.name", ""), ("metadata.namespace", "")],
        Kind::Namespace => &[("metadata.name", ""), ("status.phase", "")],
        // As the real registry's event strategy selects them.
        Kind::Event => &[
            ("metadata.name", ""),
            ("metadata.namespace", ""),
            ("involvedObject.kind", ""),
            ("involvedObject.namespace", ""),
            ("involvedObject.name", ""),
            ("involvedObject.uid", ""),
            ("involvedObject.apiVersion", ""),
            ("involvedObject.resourceVersion", ""),
            ("involvedObject.fieldPath", ""),
            ("reason", ""),
            ("reportingComponent", ""),
            ("source", ""),
            ("type", ""),
        ],
    }
}

/// Where a selectable field lives in the object: its name, except for an
/// Event's `source`, which is `source.component`.
fn field_path(field: &str) -> &str {
    match field {
        "source" => "source.component",
        other => other,
    }
}

fn field_value(object: &Value, path: &str, absent: &str) -> String {
    match path.split('.').fold(object, |v, part| &v[part]) {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        _ => absent.to_owned(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelOp {
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct LabelRequirement {
    key: String,
    op: LabelOp,
}

impl LabelRequirement {
    /// As in apimachinery: `!=` and `notin` also select objects without
    /// the label.
    fn holds(&self, value: Option<&str>) -> bool {
        match &self.op {
            LabelOp::Equals(v) => value == Some(v),
            LabelOp::NotEquals(v) => value != Some(v),
            LabelOp::In(vs) => value.is_some_and(|got| vs.iter().any(|v| v == got)),
            LabelOp::NotIn(vs) => value.is_none_or(|got| vs.iter().all(|v| v != got)),
            LabelOp::Exists => value.is_some(),
            LabelOp::DoesNotExist => value.is_none(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Open,
    Close,
    Comma,
    Bang,
    Eq,
    NotEq,
}

fn lex(s: &str) -> Result<Vec<Token>, SelectorError> {
    let mut tokens = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        let token = match c {
            c if c.is_whitespace() => continue,
            '(' => Token::Open,
            ')' => Token::Close,
            ',' => Token::Comma,
            '!' if chars.next_if_eq(&'=').is_some() => Token::NotEq,
            '!' => Token::Bang,
            '=' => {
                chars.next_if_eq(&'=');
                Token::Eq
            }
            '<' | '>' => {
                return Err(SelectorError::Label(format!(
                    "{s:?}: the operator {c:?} is not supported by this emulator"
                )));
            }
            c => {
                let mut word = String::from(c);
                while let Some(c) = chars.next_if(|c| !c.is_whitespace() && !"()!,=<>".contains(*c))
                {
                    word.push(c);
                }
                Token::Word(word)
            }
        };
        tokens.push(token);
    }
    Ok(tokens)
}

fn parse_label_selector(s: &str) -> Result<Vec<LabelRequirement>, SelectorError> {
    let bad = |why: &str| SelectorError::Label(format!("{s:?}: {why}"));
    let mut tokens = lex(s)?.into_iter().peekable();
    let mut out = Vec::new();
    while tokens.peek().is_some() {
        let negated = tokens.next_if_eq(&Token::Bang).is_some();
        let Some(Token::Word(key)) = tokens.next() else {
            return Err(bad("expected a label key"));
        };
        check_key(&key).map_err(|why| bad(&why))?;
        let op = if negated {
            LabelOp::DoesNotExist
        } else {
            match tokens.next_if(|t| *t != Token::Comma) {
                None => LabelOp::Exists,
                Some(Token::Eq) => LabelOp::Equals(value(&mut tokens).map_err(|w| bad(&w))?),
                Some(Token::NotEq) => LabelOp::NotEquals(value(&mut tokens).map_err(|w| bad(&w))?),
                Some(Token::Word(w)) if w == "in" => {
                    LabelOp::In(set(&mut tokens).map_err(|w| bad(&w))?)
                }
                Some(Token::Word(w)) if w == "notin" => {
                    LabelOp::NotIn(set(&mut tokens).map_err(|w| bad(&w))?)
                }
                Some(t) => return Err(bad(&format!("unexpected {t:?} after {key:?}"))),
            }
        };
        out.push(LabelRequirement { key, op });
        match tokens.next() {
            None => break,
            Some(Token::Comma) if tokens.peek().is_some() => {}
            Some(t) => return Err(bad(&format!("unexpected {t:?}"))),
        }
    }
    Ok(out)
}

type Tokens = std::iter::Peekable<std::vec::IntoIter<Token>>;

/// A label value after `=`/`!=`; it may be empty (`k=` selects `k: ""`).
fn value(tokens: &mut Tokens) -> Result<String, String> {
    let value = match tokens.next_if(|t| matches!(t, Token::Word(_))) {
        Some(Token::Word(v)) => v,
        _ => String::new(),
    };
    check_value(&value)?;
    Ok(value)
}

/// `( v1, v2 )` after `in`/`notin`: at least one value.
fn set(tokens: &mut Tokens) -> Result<Vec<String>, String> {
    if tokens.next() != Some(Token::Open) {
        return Err("expected '(' after in/notin".into());
    }
    let mut values = Vec::new();
    loop {
        let v = match tokens.next() {
            Some(Token::Word(v)) => v,
            Some(Token::Close) if values.is_empty() => {
                return Err("for 'in', 'notin' operators, values set can't be empty".into());
            }
            _ => return Err("expected a value in the set".into()),
        };
        check_value(&v)?;
        values.push(v);
        match tokens.next() {
            Some(Token::Comma) => {}
            Some(Token::Close) => return Ok(values),
            _ => return Err("expected ',' or ')' in the set".into()),
        }
    }
}

/// A label key: `[prefix/]name`, the prefix a DNS subdomain.
fn check_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let ok = !prefix.is_empty()
            && prefix.len() <= 253
            && prefix.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !ok {
            return Err(format!("invalid label key prefix {prefix:?}"));
        }
    }
    if name.is_empty() || !is_name(name) {
        return Err(format!("invalid label key {key:?}"));
    }
    Ok(())
}

fn check_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_name(value) {
        Ok(())
    } else {
        Err(format!("invalid label value {value:?}"))
    }
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters.
fn is_name(s: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    s.len() <= 63
        && edge(s.chars().next())
        && edge(s.chars().last())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldRequirement {
    field: String,
    value: String,
    equal: bool,
}

impl FieldRequirement {
    fn holds(&self, value: &str) -> bool {
        (value == self.value) == self.equal
    }
}

fn parse_field_selector(s: &str) -> Result<Vec<FieldRequirement>, SelectorError> {
    let mut out = Vec::new();
    for term in split_unescaped(s, ',') {
        if term.trim().is_empty() {
            continue;
        }
        let bad =
            || SelectorError::Field(format!("{term:?}: expected field=value or field!=value"));
        let (field, value, equal) = if let Some((f, v)) = term.split_once("!=") {
            (f, v, false)
        } else if let Some((f, v)) = term.split_once("==") {
            (f, v, true)
        } else if let Some((f, v)) = term.split_once('=') {
            (f, v, true)
        } else {
            return Err(bad());
        };
        let field = field.trim();
        if field.is_empty() {
            return Err(bad());
        }
        out.push(FieldRequirement {
            field: field.to_owned(),
            value: unescape(value).ok_or_else(bad)?,
            equal,
        });
    }
    Ok(out)
}

/// Splits on `sep` where it is not escaped with a backslash.
fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut escaped) = (0, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            c if c == sep => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// Undoes `\\`, `\,` and `\=`; any other escape is invalid.
fn unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(e @ ('\\' | ',' | '=')) => out.push(e),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(key: &str, op: LabelOp) -> LabelRequirement {
        LabelRequirement {
            key: key.into(),
            op,
        }
    }

    #[test]
    fn parses_every_label_selector_form() {
        let r = parse_label_selector(
            "a=b, c==d,e!=f,g,!h,i in (x, y),j notin (z),app.kubernetes.io/name=netmatrix,k=",
        )
        .unwrap();
        assert_eq!(
            r,
            [
                req("a", LabelOp::Equals("b".into())),
                req("c", LabelOp::Equals("d".into())),
                req("e", LabelOp::NotEquals("f".into())),
                req("g", LabelOp::Exists),
                req("h", LabelOp::DoesNotExist),
                req("i", LabelOp::In(vec!["x".into(), "y".into()])),
                req("j", LabelOp::NotIn(vec!["z".into()])),
                req(
                    "app.kubernetes.io/name",
                    LabelOp::Equals("netmatrix".into())
                ),
                req("k", LabelOp::Equals(String::new())),
            ]
        );
        assert!(parse_label_selector("").unwrap().is_empty());
        assert!(parse_label_selector("  ").unwrap().is_empty());
    }

    #[test]
    fn rejects_malformed_label_selectors() {
        for bad in [
            "a in x", "a in ()", "a in (x", "a=b=c", "a,", ",a", "!", "a b", "a=(b)", "-a=b",
            "a=b c", "a>1", "Foo_/x=y", "a=\u{e9}",
        ] {
            assert!(parse_label_selector(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn parses_field_selectors_with_escapes() {
        let r =
            parse_field_selector("spec.nodeName=node-1,status.phase!=Failed,metadata.name==a\\,b")
                .unwrap();
        assert_eq!(r.len(), 3);
        assert!(!r[1].equal);
        assert_eq!(r[2].value, "a,b");
        assert!(parse_field_selector("nonsense").is_err());
        assert!(parse_field_selector("a=\\x").is_err());
    }

    #[test]
    fn filters_by_namespace_labels_and_fields() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns", "labels": {"app": "x", "tier": "web"}},
                         "spec": {"nodeName": "node-1"}, "status": {"phase": "Running"}});
        let f = |ns: Option<&str>, l: &str, fs: &str| {
            Filter::new(Kind::Pod, ns.map(Into::into), Some(l), Some(fs))
                .unwrap()
                .matches(&pod)
        };
        assert!(f(Some("ns"), "app=x", "spec.nodeName=node-1"));
        assert!(f(
            None,
            "app in (x,y),tier,!missing",
            "status.phase!=Failed"
        ));
        assert!(f(
            None,
            "missing!=1,missing notin (a)",
            "spec.hostNetwork=false"
        ));
        assert!(!f(Some("other"), "app=x", ""));
        assert!(!f(None, "app!=x", ""));
        assert!(!f(None, "app notin (x)", ""));
        assert!(!f(None, "missing in (a)", ""));
        assert!(!f(None, "", "spec.nodeName=node-2"));
        assert_eq!(
            Filter::new(Kind::Pod, None, None, Some("spec.unknown=1")).unwrap_err(),
            SelectorError::UnsupportedField("spec.unknown".into())
        );
        assert!(Filter::new(Kind::Node, None, None, Some("spec.nodeName=a")).is_err());
        let events = Filter::new(
            Kind::Event,
            None,
            None,
            Some("involvedObject.kind=Pod,source=kubelet"),
        )
        .unwrap();
        let event = serde_json::json!({
            "metadata": {"name": "a.1", "namespace": "ns"},
            "involvedObject": {"kind": "Pod", "name": "a"},
            "source": {"component": "kubelet", "host": "node-1"}
        });
        assert!(events.matches(&event));
        let mut other = event.clone();
        other["involvedObject"]["kind"] = "Node".into();
        assert!(!events.matches(&other));
        let node = json!({"metadata": {"name": "n"}, "spec": {}});
        let cordoned =
            Filter::new(Kind::Node, None, None, Some("spec.unschedulable=false")).unwrap();
        assert!(cordoned.matches(&node));
    }
}
