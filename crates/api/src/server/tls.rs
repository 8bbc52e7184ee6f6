//! TLS for the gRPC port, and the CA whose client certificates introspection requires.

use std::path::PathBuf;

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use super::ServeError;

/// PEM files for TLS, and optionally the CA whose client certificates introspection requires.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

pub(super) fn tls_config(files: &TlsFiles) -> Result<ServerTlsConfig, ServeError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|e| ServeError::Tls(format!("{}: {e}", path.display())))
    };
    let mut config =
        ServerTlsConfig::new().identity(Identity::from_pem(read(&files.cert)?, read(&files.key)?));
    if let Some(ca) = &files.client_ca {
        // Optional at the handshake so that admin callers (JWT) need no certificate; a
        // certificate that is presented must chain to this CA. Introspection insists on one.
        config = config
            .client_ca_root(Certificate::from_pem(read(ca)?))
            .client_auth_optional(true);
    }
    Ok(config)
}
