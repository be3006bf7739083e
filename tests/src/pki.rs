//! The lab's certificates and credentials: a CA, the API server emulator's
//! serving certificate (with the IP SANs real API server certificates carry,
//! 10.96.0.1 among them), a bearer token, and kubeconfigs for the lab's
//! processes.

use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot generate the lab's certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot build the TLS server configuration: {0}")]
    Tls(String),
}

/// CA, server certificate and token of one lab.
#[derive(Debug, Clone)]
pub struct LabPki {
    pub ca_cert_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub token: String,
}

impl LabPki {
    pub fn generate(ip_sans: &[IpAddr], dns_sans: &[String]) -> Result<Self, PkiError> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "netmatrix-lab-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(dns_sans.to_vec())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        params
            .subject_alt_names
            .extend(ip_sans.iter().map(|ip| SanType::IpAddress(*ip)));
        let server_cert = params.signed_by(&server_key, &issuer)?;

        let token: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        Ok(LabPki {
            ca_cert_pem: ca_cert.pem(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            token,
        })
    }

    /// rustls configuration of the API server emulator.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let tls = |e: &dyn std::fmt::Display| PkiError::Tls(e.to_string());
        let certs = CertificateDer::pem_slice_iter(self.server_cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls(&e))?;
        let key =
            PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes()).map_err(|e| tls(&e))?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls(&e))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// A kubeconfig for the lab's processes: the lab's CA, its token, and
    /// `server_url` (`https://10.96.0.1:443` for pods, the node address for
    /// host-network processes).
    pub fn kubeconfig(&self, server_url: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {server_url}\n    certificate-authority-data: {ca}\nusers:\n- name: lab\n  user:\n    token: {token}\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab\n    namespace: netmatrix\ncurrent-context: lab\n",
            ca = base64(self.ca_cert_pem.as_bytes()),
            token = self.token,
        )
    }
}

/// Standard base64 with padding (RFC 4648), for `certificate-authority-data`.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }

    #[test]
    fn generates_a_usable_server_config_and_kubeconfig() {
        let pki =
            LabPki::generate(&["10.96.0.1".parse().unwrap()], &["kubernetes".into()]).unwrap();
        assert!(pki.ca_cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(pki.token.len(), 64);
        pki.server_config().unwrap();
        let kc = pki.kubeconfig("https://10.96.0.1:443");
        assert!(kc.contains("server: https://10.96.0.1:443"));
        assert!(kc.contains(&pki.token));
    }
}
