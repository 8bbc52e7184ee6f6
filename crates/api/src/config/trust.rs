//! What the flags say about trust: who signs admin JWTs, and the TLS files. Plain values; the
//! server turns them into verifiers and TLS configurations.

use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct AdminTrust {
    /// A JWKS file with the issuer and audience its keys sign for.
    pub jwks: Option<JwksTrust>,
    /// Trust the development key in the data dir even though a JWKS is configured.
    pub trust_dev_key: bool,
}

#[derive(Debug, Clone)]
pub struct JwksTrust {
    pub source: JwksSource,
    pub issuer: String,
    pub audience: String,
}

/// Where the admin JWKS comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// Read at start.
    File(PathBuf),
    /// Fetched at start and refreshed while the server runs.
    Url(String),
}

impl JwksSource {
    pub fn parse(text: &str) -> Self {
        if text.starts_with("https://") || text.starts_with("http://") {
            JwksSource::Url(text.to_owned())
        } else {
            JwksSource::File(PathBuf::from(text))
        }
    }

    pub(crate) fn describe(&self) -> PathBuf {
        match self {
            JwksSource::File(path) => path.clone(),
            JwksSource::Url(url) => PathBuf::from(url),
        }
    }
}

/// PEM files for TLS, and optionally the CA whose client certificates introspection requires.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}
