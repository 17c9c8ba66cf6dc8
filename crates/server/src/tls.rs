//! TLS for the server's own listeners: loading the configured certificate and key, and an
//! accept loop that completes handshakes concurrently, so a slow or silent client never holds
//! up the others.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds a TLS server configuration from PEM files: the certificate chain and its private key.
pub fn server_config(cert: &Path, key: &Path, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("tls.cert: {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("tls.cert: {}: no certificate found", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("tls.key: {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls.key: does not match tls.cert or is unusable: {e}"))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A listener that yields connections whose TLS handshake has completed.
#[derive(Debug)]
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let Some((stream, peer)) = gatehouse_core::admission::accept_until(&tcp, tx.closed()).await else {
                    break;
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept task only ends once this listener is gone; wait for shutdown.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Where the generated certificate authority and server certificate live in the data directory.
pub const GENERATED_DIR: &str = "tls";
const CA_NAME: &str = "Gatehouse local CA";
/// A generated server certificate is renewed when it has less than this left.
const RENEW_BEFORE: time::Duration = time::Duration::days(30);

fn ca_params() -> Result<rcgen::CertificateParams, String> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, CA_NAME);
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "Gatehouse");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    Ok(params)
}

fn this_host() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()).filter(|h| !h.is_empty())
}

fn write_new(path: &Path, contents: &str, private: bool) -> Result<(), String> {
    let _ = std::fs::remove_file(path);
    if private { gatehouse_keys::write_private(path, contents.as_bytes()) } else { std::fs::write(path, contents) }
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The certificate the PostgreSQL and MySQL listeners offer when `[tls]` is not configured: a
/// server certificate for this host (localhost, 127.0.0.1, ::1 and the host name) signed by a
/// CA generated into `<data_dir>/tls/` on first use. Callers pin the CA (`gatehouse tls ca`).
/// The CA is kept; the server certificate is renewed when it nears expiry.
pub fn generated(data_dir: &Path) -> Result<(Arc<ServerConfig>, String), String> {
    let dir = data_dir.join(GENERATED_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (ca_crt, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let (srv_crt, srv_key) = (dir.join("server.crt"), dir.join("server.key"));
    let ca_keypair = match std::fs::read_to_string(&ca_key) {
        Ok(pem) if ca_crt.exists() => {
            rcgen::KeyPair::from_pem(&pem).map_err(|e| format!("{}: {e}", ca_key.display()))?
        }
        _ => {
            let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
            let mut params = ca_params()?;
            params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
            let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
            write_new(&ca_key, &key.serialize_pem(), true)?;
            write_new(&ca_crt, &cert.pem(), false)?;
            let _ = std::fs::remove_file(&srv_crt);
            tracing::info!(path = %ca_crt.display(), "generated a certificate authority for the database listeners");
            key
        }
    };
    let fresh = std::fs::metadata(&srv_crt)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < std::time::Duration::from_secs(365 * 86400) - RENEW_BEFORE.unsigned_abs());
    if !(fresh && srv_key.exists()) {
        let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
        names.extend(this_host());
        let mut params = rcgen::CertificateParams::new(names).map_err(|e| e.to_string())?;
        params.distinguished_name.push(rcgen::DnType::CommonName, "gatehouse");
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(365);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let issuer = rcgen::Issuer::new(ca_params()?, &ca_keypair);
        let cert = params.signed_by(&key, &issuer).map_err(|e| e.to_string())?;
        write_new(&srv_key, &key.serialize_pem(), true)?;
        write_new(&srv_crt, &format!("{}{}", cert.pem(), std::fs::read_to_string(&ca_crt).unwrap_or_default()), false)?;
    }
    let ca_pem = std::fs::read_to_string(&ca_crt).map_err(|e| format!("{}: {e}", ca_crt.display()))?;
    Ok((server_config(&srv_crt, &srv_key, &[])?, ca_pem))
}
