//! TLS for the gRPC port and the HTTP listener (one certificate for both), and the CA whose
//! client certificates introspection and forward-auth require.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

use super::ServeError;
use crate::config::TlsFiles;

/// The gRPC port's TLS (HTTP/2). The port does its own handshakes rather than tonic's, so that
/// the handshake deadline and the connection cap see each connection from its first byte.
pub(super) fn grpc_tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, ServeError> {
    acceptor(files, b"h2")
}

/// The same certificate (and client CA) for the HTTP listener, which speaks HTTP/1.1 only.
pub(super) fn http_tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, ServeError> {
    acceptor(files, b"http/1.1")
}

fn acceptor(files: &TlsFiles, alpn: &[u8]) -> Result<TlsAcceptor, ServeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error(&files.cert, e))?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| pem_error(&files.key, e))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| pem_error(ca, e))? {
                roots
                    .add(cert.map_err(|e| pem_error(ca, e))?)
                    .map_err(|e| ServeError::Tls(format!("{}: {e}", ca.display())))?;
            }
            // Optional at the handshake so that admin callers (JWT) need no certificate; a
            // certificate that is presented must chain to this CA. Introspection and
            // forward-auth insist on one.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| ServeError::Tls(format!("{}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| ServeError::Tls(format!("{}: {e}", files.cert.display())))?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn pem_error(path: &Path, error: rustls::pki_types::pem::Error) -> ServeError {
    ServeError::Tls(format!("{}: {error}", path.display()))
}
