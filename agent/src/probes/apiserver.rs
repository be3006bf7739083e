//! The API server check: TCP connect, TLS handshake, `GET /livez`.
//!
//! Each stage fails differently in the field: TCP is the service path
//! (`dial tcp 10.96.0.1:443: connect: network is unreachable` is the classic
//! flannel/calico symptom), TLS is a CA or middlebox problem, HTTP is the API
//! server itself. The result records the last stage that succeeded.
//!
//! The request is written by hand over HTTP/1.1 with `Connection: close`: one
//! request per round does not need a client with a connection pool, and a
//! pooled connection would hide exactly the connect failures we look for.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netmatrix_api::{ErrorKind, ProbeError, ServiceKind, ServiceResult, ServiceStage};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsConnector;

use super::{millis, tcp};

/// Path probed: cheap, unauthenticated in default RBAC, and a real health
/// signal of the API server.
const LIVEZ: &str = "/livez";
/// How much of the answer is read: enough for the status line, headers and the
/// start of an error body.
const MAX_RESPONSE: usize = 16 * 1024;
/// Name in [`ServiceResult::name`].
pub const SERVICE_NAME: &str = "kubernetes";

/// Where the CA that signed the API server certificate comes from.
#[derive(Debug, Clone)]
pub enum CaSource {
    /// A PEM file (`--apiserver-ca`).
    PemFile(PathBuf),
    /// DER certificates, from the kube client configuration.
    Der(Vec<Vec<u8>>),
    /// Nothing known: the handshake completes, the certificate is not verified.
    Unverified,
}

/// The API server probe could not be set up (start-up, not a probe failure).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot read the API server CA from {path}: {source}; check --apiserver-ca")]
    ReadCa {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error(
        "{origin} holds no usable CA certificate ({detail}); check --apiserver-ca or the kubeconfig's certificate-authority"
    )]
    NoCa { origin: String, detail: String },
    #[error("cannot build the TLS client configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Produces the `Authorization` header value for the request, if any.
#[derive(Clone)]
pub enum Credentials {
    None,
    /// A fixed header value, e.g. `Bearer <token>`.
    Static(String),
    /// Whatever the kube client would send: static token, token file (re-read
    /// as kube does, so rotated service-account tokens keep working), exec
    /// plugins.
    Kube(Arc<kube::client::middleware::AuthLayer>),
}

impl Credentials {
    async fn authorization(&self) -> Option<String> {
        match self {
            Credentials::None => None,
            Credentials::Static(v) => Some(v.clone()),
            Credentials::Kube(layer) => kube_authorization(layer).await,
        }
    }
}

/// Runs kube's own auth middleware on an empty request and keeps the header
/// it set, so the probe authenticates exactly like the watch does.
async fn kube_authorization(layer: &kube::client::middleware::AuthLayer) -> Option<String> {
    use tower::{Layer, ServiceExt};
    // AddAuthorization wants an HTTP response: the header travels in its body.
    let capture = tower::service_fn(|req: http::Request<kube::client::Body>| async move {
        let header = req.headers().get(http::header::AUTHORIZATION).cloned();
        Ok::<_, tower::BoxError>(http::Response::new(header))
    });
    match layer
        .layer(capture)
        .oneshot(http::Request::new(kube::client::Body::empty()))
        .await
    {
        Ok(response) => response
            .into_body()
            .and_then(|v| v.to_str().ok().map(str::to_owned)),
        Err(err) => {
            tracing::warn!(error = %err, "cannot obtain a token for the API server check; sending none");
            None
        }
    }
}

/// Checks one API server address.
pub struct ApiserverProbe {
    addr: SocketAddr,
    connector: TlsConnector,
    verified: bool,
    credentials: Credentials,
    timeout: Duration,
}

impl ApiserverProbe {
    /// `timeout` applies to each stage (connect, handshake, HTTP exchange).
    pub fn new(
        addr: SocketAddr,
        ca: CaSource,
        credentials: Credentials,
        timeout: Duration,
    ) -> Result<Self, SetupError> {
        let verified = !matches!(ca, CaSource::Unverified);
        if !verified {
            tracing::warn!(%addr, "no API server CA known: the TLS check completes the handshake but does not verify the certificate; pass --apiserver-ca");
        }
        Ok(Self {
            addr,
            connector: TlsConnector::from(Arc::new(client_config(ca)?)),
            verified,
            credentials,
            timeout,
        })
    }

    pub async fn check(&self) -> ServiceResult {
        let started = Instant::now();
        let (reached, error) = self.stages().await;
        ServiceResult {
            kind: ServiceKind::Apiserver,
            name: SERVICE_NAME.to_owned(),
            target: self.addr.to_string(),
            ok: error.is_none(),
            reached,
            latency_ms: error.is_none().then(|| millis(started.elapsed())),
            error: error.map(|mut e| {
                // Only stages past TCP saw a certificate.
                if !self.verified && reached.is_some() {
                    e.message
                        .push_str(" (certificate not verified: no CA configured)");
                }
                e
            }),
        }
    }

    /// Runs the stages in order; returns the last one reached and the error
    /// that stopped the check, if any.
    async fn stages(&self) -> (Option<ServiceStage>, Option<ProbeError>) {
        let addr = self.addr;
        let tcp = match tcp::connect(addr, self.timeout).await {
            Ok(s) => s,
            Err(e) => return (None, Some(e)),
        };

        let server_name = ServerName::IpAddress(addr.ip().into());
        let mut tls = match tokio::time::timeout(
            self.timeout,
            self.connector.connect(server_name, tcp),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let msg = format!("TLS handshake with {addr}: {}", super::os_message(&e));
                return (
                    Some(ServiceStage::Tcp),
                    Some(ProbeError::new(ErrorKind::Tls, msg)),
                );
            }
            Err(_) => {
                let msg = format!(
                    "TLS handshake with {addr}: no answer within {:?}",
                    self.timeout
                );
                return (
                    Some(ServiceStage::Tcp),
                    Some(ProbeError::new(ErrorKind::Timeout, msg)),
                );
            }
        };

        let authorization = self.credentials.authorization().await;
        let mut response = Vec::new();
        let exchange = http_get(
            &mut tls,
            addr,
            LIVEZ,
            authorization.as_deref(),
            &mut response,
        );
        let outcome = tokio::time::timeout(self.timeout, exchange).await;
        let status = parse_status(&response);
        let error = match (outcome, status) {
            (_, Some((200, _))) => None,
            (_, Some((code, reason))) => Some(ProbeError::new(
                ErrorKind::Http,
                format!(
                    "GET {LIVEZ} on {addr}: HTTP {code} {reason}{}{}",
                    body_excerpt(&response),
                    status_hint(code)
                ),
            )),
            (Ok(Err(e)), None) => Some(ProbeError::new(
                ErrorKind::Http,
                format!("GET {LIVEZ} on {addr}: {}", super::os_message(&e)),
            )),
            (Ok(Ok(())), None) => Some(ProbeError::new(
                ErrorKind::Http,
                format!("GET {LIVEZ} on {addr}: not an HTTP/1.1 answer"),
            )),
            (Err(_), None) => Some(ProbeError::new(
                ErrorKind::Timeout,
                format!("GET {LIVEZ} on {addr}: no answer within {:?}", self.timeout),
            )),
        };
        let reached = if error.is_none() {
            ServiceStage::Http
        } else {
            ServiceStage::Tls
        };
        (Some(reached), error)
    }
}

/// Writes the request and reads the answer into `response` until the server
/// closes, [`MAX_RESPONSE`] bytes, or an error. The caller bounds it in time
/// and looks at whatever arrived.
async fn http_get<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    addr: SocketAddr,
    path: &str,
    authorization: Option<&str>,
    response: &mut Vec<u8>,
) -> std::io::Result<()> {
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: netmatrix-agent/{}\r\nAccept: */*\r\nConnection: close\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(value) = authorization {
        request.push_str("Authorization: ");
        request.push_str(value);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;

    let mut buf = [0u8; 4096];
    while response.len() < MAX_RESPONSE {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
            // Servers often close without TLS close_notify; what arrived is fine.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Status code and reason phrase of an HTTP/1.x answer.
fn parse_status(response: &[u8]) -> Option<(u16, String)> {
    let end = response.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&response[..end]).ok()?;
    let mut parts = line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?.parse().ok()?;
    Some((code, parts.next().unwrap_or("").trim().to_owned()))
}

/// The first line of the body, printable characters only, for the message.
fn body_excerpt(response: &[u8]) -> String {
    let Some(start) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        return String::new();
    };
    let body = String::from_utf8_lossy(&response[start + 4..]);
    let excerpt: String = body
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    if excerpt.is_empty() {
        excerpt
    } else {
        format!(": {excerpt}")
    }
}

fn status_hint(code: u16) -> &'static str {
    match code {
        401 => " (token rejected: check the agent's service account token)",
        403 => " (forbidden: check RBAC for nonResourceURLs /livez)",
        _ => "",
    }
}

/// A client configuration with one provider (ring, see
/// `docs/architecture.md`), HTTP/1.1 ALPN, and roots from `ca`.
fn client_config(ca: CaSource) -> Result<ClientConfig, SetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut config = match ca {
        CaSource::Unverified => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate { provider }))
            .with_no_client_auth(),
        CaSource::PemFile(path) => {
            let certs = read_pem_certs(&path)?;
            builder
                .with_root_certificates(root_store(certs, &path.display().to_string())?)
                .with_no_client_auth()
        }
        CaSource::Der(ders) => {
            let certs = ders.into_iter().map(CertificateDer::from).collect();
            builder
                .with_root_certificates(root_store(certs, "the kube client configuration")?)
                .with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, SetupError> {
    CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| SetupError::ReadCa {
            path: path.to_owned(),
            source,
        })
}

fn root_store(
    certs: Vec<CertificateDer<'static>>,
    origin: &str,
) -> Result<RootCertStore, SetupError> {
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(SetupError::NoCa {
            origin: origin.to_owned(),
            detail: format!("{ignored} certificate(s) could not be parsed"),
        });
    }
    Ok(roots)
}

/// Used only when no CA is known at all: accepts any certificate but still
/// checks the handshake signatures, so the TLS stage means "a TLS server
/// answered and completed a handshake".
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::PrivateKeyDer;
    use tokio::net::TcpListener;

    const CA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/probes/testdata/ca.pem");
    const OTHER_CA: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/probes/testdata/other-ca.pem"
    );
    const CERT: &[u8] = include_bytes!("testdata/server.pem");
    const KEY: &[u8] = include_bytes!("testdata/server.key");

    /// A loopback TLS server answering every connection with `answer`, after
    /// checking the request carries `Bearer secret`.
    async fn tls_server(answer: &'static str) -> SocketAddr {
        let certs = CertificateDer::pem_slice_iter(CERT)
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(KEY).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let req = String::from_utf8_lossy(&req);
                    let answer = if req.starts_with("GET /livez HTTP/1.1\r\n")
                        && req.contains("\r\nAuthorization: Bearer secret\r\n")
                    {
                        answer
                    } else {
                        "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"
                    };
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        addr
    }

    fn probe(addr: SocketAddr, ca: CaSource) -> ApiserverProbe {
        ApiserverProbe::new(
            addr,
            ca,
            Credentials::Static("Bearer secret".into()),
            Duration::from_secs(2),
        )
        .unwrap()
    }

    const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    #[tokio::test]
    async fn healthy_server_passes_every_stage() {
        let addr = tls_server(OK).await;
        let r = probe(addr, CaSource::PemFile(CA.into())).check().await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.reached, Some(ServiceStage::Http));
        assert_eq!(r.kind, ServiceKind::Apiserver);
        assert!(r.latency_ms.is_some());
    }

    #[tokio::test]
    async fn without_a_ca_the_handshake_still_completes() {
        let addr = tls_server(OK).await;
        let r = probe(addr, CaSource::Unverified).check().await;
        assert!(r.ok, "{r:?}");
    }

    #[tokio::test]
    async fn non_200_is_an_http_failure_with_the_body() {
        let addr = tls_server(
            "HTTP/1.1 500 Internal Server Error\r\n\r\n[-]etcd failed: reason withheld\n",
        )
        .await;
        let r = probe(addr, CaSource::PemFile(CA.into())).check().await;
        assert!(!r.ok);
        assert_eq!(r.reached, Some(ServiceStage::Tls));
        let e = r.error.unwrap();
        assert_eq!(e.kind, ErrorKind::Http);
        assert!(
            e.message
                .contains("HTTP 500 Internal Server Error: [-]etcd failed"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn missing_token_reads_as_rejected() {
        let addr = tls_server(OK).await;
        let r = ApiserverProbe::new(
            addr,
            CaSource::PemFile(CA.into()),
            Credentials::None,
            Duration::from_secs(2),
        )
        .unwrap()
        .check()
        .await;
        let e = r.error.unwrap();
        assert_eq!(e.kind, ErrorKind::Http);
        assert!(e.message.contains("401"), "{e}");
    }

    #[tokio::test]
    async fn certificate_from_another_ca_is_a_tls_failure() {
        let addr = tls_server(OK).await;
        let r = probe(addr, CaSource::PemFile(OTHER_CA.into()))
            .check()
            .await;
        assert_eq!(r.reached, Some(ServiceStage::Tcp));
        let e = r.error.unwrap();
        assert_eq!(e.kind, ErrorKind::Tls);
        assert!(e.message.contains("certificate"), "{e}");
    }

    #[tokio::test]
    async fn plain_tcp_server_is_a_tls_failure() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let _ = tcp.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            }
        });
        let r = probe(addr, CaSource::PemFile(CA.into())).check().await;
        assert_eq!(r.reached, Some(ServiceStage::Tcp));
        assert_eq!(r.error.unwrap().kind, ErrorKind::Tls);
    }

    #[tokio::test]
    async fn closed_port_is_refused_before_tcp() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let r = probe(addr, CaSource::PemFile(CA.into())).check().await;
        assert_eq!(r.reached, None);
        assert_eq!(r.error.unwrap().kind, ErrorKind::Refused);
    }

    #[test]
    fn unreadable_or_empty_ca_is_a_setup_error() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let err = ApiserverProbe::new(
            addr,
            CaSource::PemFile("/nonexistent/ca.pem".into()),
            Credentials::None,
            Duration::from_secs(1),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("--apiserver-ca"), "{err}");
        let err = ApiserverProbe::new(
            addr,
            CaSource::Der(vec![b"junk".to_vec()]),
            Credentials::None,
            Duration::from_secs(1),
        )
        .err()
        .unwrap();
        assert!(matches!(err, SetupError::NoCa { .. }), "{err}");
    }

    #[test]
    fn status_lines_are_parsed_defensively() {
        assert_eq!(
            parse_status(b"HTTP/1.1 200 OK\r\n"),
            Some((200, "OK".into()))
        );
        assert_eq!(
            parse_status(b"HTTP/1.0 503\r\n"),
            Some((503, String::new()))
        );
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b"HTTP/1.1 200 OK"), None);
        assert_eq!(parse_status(&[0xff, 0xfe, b'\r', b'\n']), None);
    }
}
