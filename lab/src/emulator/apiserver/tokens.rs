//! EMULATED: the API server's bound ServiceAccount tokens and the
//! TokenReview API (`POST /apis/authentication.k8s.io/v1/tokenreviews`),
//! the subset netmatrix uses; not Kubernetes' implementation.
//!
//! [`TokenAuthority::issue`] mints what the kubelet mounts for a projected
//! `serviceAccountToken` volume: a JWT signed by the API server's key (ES256
//! here; clusters usually sign with RS256) with the real claims: `iss`,
//! `sub` (`system:serviceaccount:NS:NAME`), `aud`, `exp`, `iat`, `nbf`,
//! `jti`, and `kubernetes.io` with the namespace, the pod, its node and the
//! ServiceAccount (names and UIDs). [`TokenAuthority::review`] checks a token
//! the way the API server's ServiceAccount authenticator does: signature,
//! expiry, audiences (the answer carries the audiences the token is valid
//! for among those asked), and that the pod and node it is bound to still
//! exist with the same UIDs (a token outlives nothing it is bound to). The
//! answer's `user` has the username, the ServiceAccount's UID, the groups,
//! and `extra` with `authentication.kubernetes.io/pod-name`, `pod-uid`,
//! `node-name`, `node-uid` and `credential-id`, as Kubernetes 1.30 and later
//! answer.
//!
//! Deviations, on purpose: expirations shorter than the real minimum of 10
//! minutes are allowed (tests rotate tokens in seconds), and ServiceAccount
//! objects are not stored (the ServiceAccount claims are trusted as issued;
//! its UID is derived from its name).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use serde_json::{Value, json};

use crate::emulator::cluster::{ClusterState, Kind, new_uid, uuid_v4};

/// The issuer of the lab's tokens (kube-apiserver's `--service-account-issuer`
/// on kubeadm clusters).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Why [`TokenAuthority::new`] failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot generate the API server's token signing key: {0}")]
pub struct KeyError(String);

/// The API server's token signing key.
pub struct TokenAuthority {
    key: EcdsaKeyPair,
    /// TokenReviews answered (tests check that forgeries cost none).
    reviews: AtomicU64,
    /// `kid` of the JWT header: which key signed (here, the only one).
    key_id: String,
    rng: SystemRandom,
}

/// What a token is bound to, as the kubelet asks for it (TokenRequest with a
/// bound object reference to the pod).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub namespace: String,
    pub service_account: String,
    pub pod: String,
    pub pod_uid: String,
    pub node: String,
    pub node_uid: String,
}

impl Binding {
    /// The binding of the pod `name` in `namespace` as the cluster has it
    /// now (its UID, its node and the node's UID, its ServiceAccount).
    pub fn of_pod(state: &ClusterState, namespace: &str, name: &str) -> Option<Binding> {
        let pod = state.get(Kind::Pod, namespace, name)?;
        let node = pod["spec"]["nodeName"].as_str()?.to_owned();
        let node_object = state.get(Kind::Node, "", &node)?;
        Some(Binding {
            namespace: namespace.to_owned(),
            service_account: pod["spec"]["serviceAccountName"]
                .as_str()
                .unwrap_or("default")
                .to_owned(),
            pod: name.to_owned(),
            pod_uid: pod["metadata"]["uid"].as_str()?.to_owned(),
            node,
            node_uid: node_object["metadata"]["uid"].as_str()?.to_owned(),
        })
    }
}

/// ServiceAccounts are not stored: a stable UID from the name stands in.
fn service_account_uid(namespace: &str, name: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{namespace}/{name}").as_bytes(),
    );
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    uuid_v4(bytes)
}

impl TokenAuthority {
    pub fn new() -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|e| KeyError(e.to_string()))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|e| KeyError(e.to_string()))?;
        let thumb = ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref());
        Ok(TokenAuthority {
            key,
            reviews: AtomicU64::new(0),
            key_id: URL_SAFE_NO_PAD.encode(&thumb.as_ref()[..16]),
            rng,
        })
    }

    /// TokenReviews answered so far.
    pub fn reviews(&self) -> u64 {
        self.reviews.load(Ordering::Relaxed)
    }

    /// What the kubelet writes into a projected token volume: a token for
    /// pod `namespace/pod`, bound to it as `state` has it now (its node and
    /// uids), for `audience`, valid for `ttl` from now. Staged and renamed
    /// into `path`, so that a reader never sees half a token.
    pub fn mount_pod_token(
        &self,
        state: &ClusterState,
        (namespace, pod): (&str, &str),
        audience: &str,
        ttl: Duration,
        path: &std::path::Path,
    ) -> std::io::Result<()> {
        let binding = Binding::of_pod(state, namespace, pod).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("pod {namespace}/{pod} or its node is gone"),
            )
        })?;
        let token = self.issue(
            &binding,
            &[audience],
            ttl,
            netmatrix_runtime::now_unix_secs(),
        );
        // (A projected token's path may name a subdirectory of its volume.)
        crate::state::write_for_pods(path, token.as_bytes())
    }

    /// A token bound to `binding`, for `audiences`, valid for `ttl` from
    /// `now_unix` (seconds).
    pub fn issue(
        &self,
        binding: &Binding,
        audiences: &[&str],
        ttl: Duration,
        now_unix: u64,
    ) -> String {
        let header = json!({"alg": "ES256", "kid": self.key_id, "typ": "JWT"});
        let jti = new_uid();
        let claims = json!({
            "aud": audiences,
            "exp": now_unix + ttl.as_secs().max(1),
            "iat": now_unix,
            "nbf": now_unix,
            "iss": ISSUER,
            "jti": jti,
            "sub": format!("system:serviceaccount:{}:{}", binding.namespace, binding.service_account),
            "kubernetes.io": {
                "namespace": binding.namespace,
                "node": {"name": binding.node, "uid": binding.node_uid},
                "pod": {"name": binding.pod, "uid": binding.pod_uid},
                "serviceaccount": {
                    "name": binding.service_account,
                    "uid": service_account_uid(&binding.namespace, &binding.service_account),
                },
            },
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        // Signing with a freshly generated key cannot fail but on a broken
        // random source; an unsigned token is then refused by every review.
        let signature = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map(|s| URL_SAFE_NO_PAD.encode(s.as_ref()))
            .unwrap_or_default();
        format!("{signing_input}.{signature}")
    }

    /// The `status` of a TokenReview of `token` for `audiences` (empty: the
    /// API server's own audience, its issuer), as of `now_unix`.
    pub fn review(
        &self,
        state: &ClusterState,
        token: &str,
        audiences: &[String],
        now_unix: u64,
    ) -> Value {
        self.reviews.fetch_add(1, Ordering::Relaxed);
        match self.verify(state, token, audiences, now_unix) {
            Ok(status) => status,
            Err(why) => json!({
                "user": {},
                "error": format!("[invalid bearer token, {why}]"),
            }),
        }
    }

    /// Who a bearer token for the API server itself (its issuer as the
    /// audience) belongs to: the pod it is bound to. Not counted as a
    /// TokenReview.
    pub fn authenticate(
        &self,
        state: &ClusterState,
        token: &str,
        now_unix: u64,
    ) -> Option<super::clients::ClientId> {
        let status = self.verify(state, token, &[], now_unix).ok()?;
        let user = status["user"]["username"].as_str()?;
        let mut parts = user.strip_prefix("system:serviceaccount:")?.splitn(2, ':');
        let (namespace, account) = (parts.next()?, parts.next()?);
        let pod = status["user"]["extra"]["authentication.kubernetes.io/pod-name"][0].as_str()?;
        Some(super::clients::ClientId::pod(namespace, account, pod))
    }

    fn verify(
        &self,
        state: &ClusterState,
        token: &str,
        audiences: &[String],
        now_unix: u64,
    ) -> Result<Value, String> {
        let claims = self.signed_claims(token)?;
        let exp = claims["exp"].as_u64().ok_or("token has no expiry")?;
        if now_unix >= exp {
            return Err("service account token has expired".into());
        }
        if claims["nbf"]
            .as_u64()
            .is_some_and(|nbf| nbf > now_unix + 60)
        {
            return Err("service account token is not valid yet".into());
        }
        if claims["iss"] != ISSUER {
            return Err("token issuer is not trusted".into());
        }
        let token_audiences: Vec<&str> = match &claims["aud"] {
            Value::String(one) => vec![one.as_str()],
            Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let wanted: Vec<String> = if audiences.is_empty() {
            vec![ISSUER.to_owned()]
        } else {
            audiences.to_vec()
        };
        let valid_for: Vec<&String> = wanted
            .iter()
            .filter(|a| token_audiences.contains(&a.as_str()))
            .collect();
        if valid_for.is_empty() {
            return Err(format!(
                "token audiences {token_audiences:?} is invalid for the target audiences {wanted:?}"
            ));
        }
        let k8s = &claims["kubernetes.io"];
        let namespace = k8s["namespace"].as_str().ok_or("token has no namespace")?;
        let pod_name = k8s["pod"]["name"]
            .as_str()
            .ok_or("token is not bound to a pod")?;
        let pod_uid = k8s["pod"]["uid"].as_str().unwrap_or_default();
        let pod = state
            .get(Kind::Pod, namespace, pod_name)
            .ok_or_else(|| format!("pod \"{pod_name}\" not found"))?;
        if pod["metadata"]["uid"] != pod_uid {
            return Err(format!(
                "pod \"{pod_name}\" UID ({}) does not match claim ({pod_uid})",
                pod["metadata"]["uid"].as_str().unwrap_or_default()
            ));
        }
        if !pod["metadata"]["deletionTimestamp"].is_null() {
            return Err(format!("pod \"{pod_name}\" is being deleted"));
        }
        let node_name = k8s["node"]["name"].as_str().unwrap_or_default();
        let node_uid = k8s["node"]["uid"].as_str().unwrap_or_default();
        if !node_name.is_empty() {
            let node = state
                .get(Kind::Node, "", node_name)
                .ok_or_else(|| format!("node \"{node_name}\" not found"))?;
            if node["metadata"]["uid"] != node_uid {
                return Err(format!("node \"{node_name}\" UID does not match claim"));
            }
        }
        if k8s["serviceaccount"]["name"]
            .as_str()
            .is_none_or(str::is_empty)
        {
            return Err("token has no service account".into());
        }
        Ok(json!({
            "authenticated": true,
            "user": {
                "username": claims["sub"],
                "uid": k8s["serviceaccount"]["uid"],
                "groups": [
                    "system:serviceaccounts",
                    format!("system:serviceaccounts:{namespace}"),
                    "system:authenticated",
                ],
                "extra": {
                    "authentication.kubernetes.io/credential-id": [format!("JTI={}", claims["jti"].as_str().unwrap_or_default())],
                    "authentication.kubernetes.io/node-name": [node_name],
                    "authentication.kubernetes.io/node-uid": [node_uid],
                    "authentication.kubernetes.io/pod-name": [pod_name],
                    "authentication.kubernetes.io/pod-uid": [pod_uid],
                },
            },
            "audiences": valid_for,
        }))
    }

    /// The claims of a token this authority signed.
    fn signed_claims(&self, token: &str) -> Result<Value, String> {
        const INVALID: &str = "square/go-jose: error in cryptographic primitive";
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("token is not a JWT".into());
        };
        let header: Value = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or("token is not a JWT")?;
        if header["alg"] != "ES256" || header["kid"] != self.key_id.as_str() {
            return Err(INVALID.into());
        }
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| INVALID)?;
        let signing_input = &token[..header_len(token)];
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref())
            .verify(signing_input.as_bytes(), &signature)
            .map_err(|_| INVALID)?;
        URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|p| serde_json::from_slice(&p).ok())
            .ok_or_else(|| "token is not a JWT".into())
    }
}

/// Length of `header.payload` in a JWT (what the signature covers).
fn header_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(token.len())
}

/// The answer to `POST .../tokenreviews`: the request's `spec` echoed, the
/// `status` filled in, as the API server answers (HTTP 201).
pub fn review_response(request: &Value, status: Value) -> Value {
    json!({
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": request["spec"],
        "status": status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::cluster::{node, pod};

    fn cluster() -> ClusterState {
        let state = ClusterState::new();
        state.apply_node(node("node-1", "198.18.0.1", "10.244.1.0/24"));
        let mut agent = pod("netmatrix", "agent-1", "node-1", "10.244.1.2", &[], false);
        agent.spec.as_mut().unwrap().service_account_name = Some("netmatrix-agent".into());
        state.apply_pod(agent);
        state
    }

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn a_bound_token_reviews_as_its_pod() {
        let state = cluster();
        let authority = TokenAuthority::new().unwrap();
        let binding = Binding::of_pod(&state, "netmatrix", "agent-1").unwrap();
        let token = authority.issue(&binding, &["netmatrix"], Duration::from_secs(600), NOW);
        let status = authority.review(&state, &token, &["netmatrix".into()], NOW + 10);
        assert_eq!(status["authenticated"], true, "{status}");
        assert_eq!(status["audiences"], json!(["netmatrix"]));
        let user = &status["user"];
        assert_eq!(
            user["username"],
            "system:serviceaccount:netmatrix:netmatrix-agent"
        );
        let extra = &user["extra"];
        assert_eq!(
            extra["authentication.kubernetes.io/pod-name"],
            json!(["agent-1"])
        );
        assert_eq!(
            extra["authentication.kubernetes.io/pod-uid"],
            json!([binding.pod_uid])
        );
        assert_eq!(
            extra["authentication.kubernetes.io/node-name"],
            json!(["node-1"])
        );
    }

    #[test]
    fn expired_foreign_tampered_and_orphaned_tokens_are_refused() {
        let state = cluster();
        let authority = TokenAuthority::new().unwrap();
        let binding = Binding::of_pod(&state, "netmatrix", "agent-1").unwrap();
        let ttl = Duration::from_secs(600);
        let token = authority.issue(&binding, &["netmatrix"], ttl, NOW);
        let refused = |status: Value, why: &str| {
            assert!(status["authenticated"].is_null(), "{status}");
            let error = status["error"].as_str().unwrap();
            assert!(error.contains(why), "{error} does not say {why}");
        };
        refused(
            authority.review(&state, &token, &["netmatrix".into()], NOW + 600),
            "expired",
        );
        refused(
            authority.review(&state, &token, &[], NOW),
            "is invalid for the target audiences",
        );
        let other = TokenAuthority::new().unwrap();
        refused(
            other.review(&state, &token, &["netmatrix".into()], NOW),
            "cryptographic",
        );
        // The payload swapped for another pod's: the signature no longer holds.
        let mut forged = binding.clone();
        forged.pod = "agent-2".into();
        let forged_token = authority.issue(&forged, &["netmatrix"], ttl, NOW);
        let spliced = format!(
            "{}.{}.{}",
            token.split('.').next().unwrap(),
            forged_token.split('.').nth(1).unwrap(),
            token.split('.').nth(2).unwrap()
        );
        refused(
            authority.review(&state, &spliced, &["netmatrix".into()], NOW),
            "cryptographic",
        );
        // The pod re-created under the same name: the old token is dead.
        state.delete_pod("netmatrix", "agent-1");
        refused(
            authority.review(&state, &token, &["netmatrix".into()], NOW),
            "not found",
        );
        let mut again = pod("netmatrix", "agent-1", "node-1", "10.244.1.2", &[], false);
        again.spec.as_mut().unwrap().service_account_name = Some("netmatrix-agent".into());
        state.apply_pod(again);
        refused(
            authority.review(&state, &token, &["netmatrix".into()], NOW),
            "does not match",
        );
    }
}
