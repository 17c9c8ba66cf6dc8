//! rustls client configurations (ring provider only) for the [`TlsMode`]s, and the
//! `tls-server-end-point` channel-binding hash of a server certificate.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;

use crate::upstream::{TlsMode, UpstreamError};

/// ALPN protocol PostgreSQL 17+ checks for (older servers ignore it).
const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// The client configuration for `mode`, or `None` for [`TlsMode::Disable`].
///
/// - [`TlsMode::Require`]: any certificate is accepted ([`AcceptAnyCertificate`]), so the link
///   is encrypted but the server is not authenticated.
/// - [`TlsMode::VerifyFull`]: the chain must lead to a certificate in `ca_file` (PEM, every
///   certificate in it is trusted) or, without one, to the system's trusted roots
///   (rustls-native-certs); the host name is checked by rustls against the certificate.
pub(crate) fn client_config(mode: TlsMode, ca_file: Option<&Path>) -> Result<Option<Arc<ClientConfig>>, UpstreamError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamError::Config(format!("TLS setup: {e}")))?;
    let mut config = match mode {
        TlsMode::Disable => return Ok(None),
        TlsMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate::new(&provider)))
            .with_no_client_auth(),
        TlsMode::VerifyFull => builder.with_root_certificates(root_store(ca_file)?).with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Some(Arc::new(config)))
}

fn root_store(ca_file: Option<&Path>) -> Result<RootCertStore, UpstreamError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| UpstreamError::Config(format!("reading CA file {}: {e}", path.display())))?;
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    UpstreamError::Config(format!("CA file {}: unusable certificate: {e}", path.display()))
                })?;
            }
            if roots.is_empty() {
                return Err(UpstreamError::Config(format!("CA file {} holds no certificate", path.display())));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::warn!(%error, "skipping unreadable system root certificates");
            }
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(UpstreamError::Config(
                    "TLS mode verify-full without a CA file, and no system root certificates were found".into(),
                ));
            }
        }
    }
    Ok(roots)
}

/// The verifier of [`TlsMode::Require`]: accepts any certificate chain for any name (like
/// libpq's `sslmode=require`), but still checks the handshake signatures against the
/// presented certificate's key, so the server must hold the private key of the certificate it
/// shows. This protects against passive eavesdropping only, not against an active
/// man-in-the-middle who presents a certificate of its own; use [`TlsMode::VerifyFull`] for that.
#[derive(Debug)]
pub(crate) struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AcceptAnyCertificate {
    pub(crate) fn new(provider: &CryptoProvider) -> AcceptAnyCertificate {
        AcceptAnyCertificate { algorithms: provider.signature_verification_algorithms }
    }
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The `tls-server-end-point` channel-binding data (RFC 5929) of a DER certificate: its hash
/// with the hash function of its signature algorithm, SHA-256 when that is MD5 or SHA-1.
/// `None` when the algorithm is not one of RSA PKCS#1 or ECDSA with SHA-1/256/384/512 (for
/// example Ed25519 or RSA-PSS, for which PostgreSQL offers no binding either).
pub(crate) fn server_end_point_hash(cert: &[u8]) -> Option<Vec<u8>> {
    use ring::digest::{SHA256, SHA384, SHA512, digest};

    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];

    let oid = signature_algorithm_oid(cert)?;
    let algorithm = match oid.split_last()? {
        // md5WithRSAEncryption (4), sha1WithRSAEncryption (5), sha256WithRSAEncryption (11)
        (4 | 5 | 11, prefix) if prefix == RSA => &SHA256,
        (12, prefix) if prefix == RSA => &SHA384,
        (13, prefix) if prefix == RSA => &SHA512,
        _ if oid == ECDSA_SHA1 => &SHA256,
        (2, prefix) if prefix == ECDSA_SHA2 => &SHA256,
        (3, prefix) if prefix == ECDSA_SHA2 => &SHA384,
        (4, prefix) if prefix == ECDSA_SHA2 => &SHA512,
        _ => return None,
    };
    Some(digest(algorithm, cert).as_ref().to_vec())
}

/// The content of the `signatureAlgorithm` OID of a DER `Certificate`
/// (`SEQUENCE { tbsCertificate, signatureAlgorithm SEQUENCE { OID, … }, signature }`).
fn signature_algorithm_oid(cert: &[u8]) -> Option<&[u8]> {
    let (certificate, _) = der_element(cert, 0x30)?;
    let (_tbs, rest) = der_element(certificate, 0x30)?;
    let (algorithm, _) = der_element(rest, 0x30)?;
    let (oid, _) = der_element(algorithm, 0x06)?;
    Some(oid)
}

/// Splits a DER element with tag `tag` off `input`: `(content, rest)`.
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, rest) = input.split_first()?;
    if found != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some(rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_walk_finds_the_signature_algorithm() {
        // SEQUENCE { SEQUENCE { INTEGER 1 }, SEQUENCE { OID sha256WithRSA, NULL }, BIT STRING }
        let oid = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
        let mut alg = vec![0x30, 0x0d, 0x06, 0x09];
        alg.extend_from_slice(&oid);
        alg.extend_from_slice(&[0x05, 0x00]);
        let mut inner = vec![0x30, 0x03, 0x02, 0x01, 0x01];
        inner.extend_from_slice(&alg);
        inner.extend_from_slice(&[0x03, 0x01, 0x00]);
        let mut cert = vec![0x30, inner.len() as u8];
        cert.extend_from_slice(&inner);
        assert_eq!(signature_algorithm_oid(&cert), Some(&oid[..]));
        assert_eq!(server_end_point_hash(&cert).map(|h| h.len()), Some(32));
        // Truncated or wrongly tagged input is refused, not panicked on.
        for cut in 0..cert.len() {
            assert_eq!(signature_algorithm_oid(&cert[..cut]), None, "cut at {cut}");
        }
        assert_eq!(server_end_point_hash(b"\x31\x00"), None);
        // A long-form length is understood.
        assert_eq!(der_element(&[0x04, 0x81, 0x02, 0xaa, 0xbb, 0xcc], 0x04), Some((&[0xaa, 0xbb][..], &[0xcc][..])));
    }

    #[test]
    fn configs_build_for_each_mode() {
        assert!(client_config(TlsMode::Disable, None).unwrap().is_none());
        assert!(client_config(TlsMode::Require, None).unwrap().is_some());
        let missing = client_config(TlsMode::VerifyFull, Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/ca.pem"), "{missing}");
        let empty = tempfile::NamedTempFile::new().unwrap();
        let err = client_config(TlsMode::VerifyFull, Some(empty.path())).unwrap_err();
        assert!(err.to_string().contains("no certificate"), "{err}");
    }
}
