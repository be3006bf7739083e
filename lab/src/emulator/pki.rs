//! The lab's certificates and credentials: a CA, the API server emulator's
//! serving certificate (with the SANs a real API server certificate carries:
//! the `kubernetes` Service's ClusterIP 10.96.0.1 and DNS names, the
//! control-plane node's address), a random bearer token standing in for a
//! service-account token, and kubeconfigs for the lab's processes.
//!
//! Everything is generated per lab and lives in memory (and in the files the
//! lab writes for its processes): nothing here is a secret worth keeping.

use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot generate the lab's certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot read the lab's certificate or key: {0}")]
    Pem(#[from] rustls_pki_types::pem::Error),
    #[error("cannot build the TLS server configuration: {0}")]
    Tls(#[from] rustls::Error),
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
    /// A new CA, a server certificate for `ip_sans` and `dns_sans` signed by
    /// it, and a random token.
    pub fn generate(ip_sans: &[IpAddr], dns_sans: &[String]) -> Result<Self, PkiError> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "netmatrix-lab-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
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
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = params.signed_by(&server_key, &issuer)?;

        // 256 random bits, hex: as unguessable as a service-account token.
        let token: String = rand::random::<[u8; 32]>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(LabPki {
            ca_cert_pem: ca_cert.pem(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            token,
        })
    }

    /// rustls configuration of the API server emulator: the server
    /// certificate, HTTP/1.1 by ALPN. The ring provider is given explicitly,
    /// so this works whether or not a process-wide provider is installed.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let certs = CertificateDer::pem_slice_iter(self.server_cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes())?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// A kubeconfig for the lab's processes: the lab's CA, its token, and
    /// `server_url` (`https://10.96.0.1:443` for pods, the control-plane
    /// node's address for host-network processes). One cluster, user and
    /// context, all named `netmatrix-lab`; the context's namespace is
    /// `netmatrix`.
    pub fn kubeconfig(&self, server_url: &str) -> String {
        self.kubeconfig_with(server_url, &self.token)
    }

    /// The token of one client of the API emulator (`client`, e.g.
    /// `netmatrix/netmatrix-agent/netmatrix-agent-node-1`): hex SHA-256 of
    /// the lab's token and the client's name, so each process has a token
    /// of its own (the emulator counts per token) and nobody who does not
    /// know the lab's token can derive one.
    pub fn client_token(&self, client: &str) -> String {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        context.update(self.token.as_bytes());
        context.update(b"\0");
        context.update(client.as_bytes());
        context
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// [`LabPki::kubeconfig`] with `token` instead of the lab's.
    pub fn kubeconfig_with(&self, server_url: &str, token: &str) -> String {
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: netmatrix-lab\n\
             \x20 cluster:\n\
             \x20   server: {server_url}\n\
             \x20   certificate-authority-data: {ca}\n\
             users:\n\
             - name: netmatrix-lab\n\
             \x20 user:\n\
             \x20   token: {token}\n\
             contexts:\n\
             - name: netmatrix-lab\n\
             \x20 context:\n\
             \x20   cluster: netmatrix-lab\n\
             \x20   user: netmatrix-lab\n\
             \x20   namespace: netmatrix\n\
             current-context: netmatrix-lab\n",
            ca = base64(self.ca_cert_pem.as_bytes()),
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
        assert!(kc.contains("\n    server: https://10.96.0.1:443\n"), "{kc}");
        assert!(
            kc.contains(&format!("\n    token: {}\n", pki.token)),
            "{kc}"
        );
        assert!(kc.ends_with("current-context: netmatrix-lab\n"), "{kc}");
        let agent = pki.client_token("netmatrix/netmatrix-agent/a");
        assert_eq!(agent.len(), 64);
        assert_eq!(agent, pki.client_token("netmatrix/netmatrix-agent/a"));
        assert_ne!(agent, pki.client_token("netmatrix/netmatrix-agent/b"));
        assert_ne!(agent, pki.token);
        let kc = pki.kubeconfig_with("https://10.96.0.1:443", &agent);
        assert!(kc.contains(&format!("\n    token: {agent}\n")), "{kc}");
    }
}
