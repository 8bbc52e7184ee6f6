//! Who may sign admin JWTs: a configured JWKS, and the local development key when allowed.

use std::path::{Path, PathBuf};

use jsonwebtoken::jwk::JwkSet;

use super::ServeError;
use crate::auth::{AdminAuthenticator, KeyConfigError};
use crate::dev_key::{self, DevKey};

#[derive(Debug, Clone)]
pub struct AdminTrust {
    /// A JWKS file with the issuer and audience its keys sign for.
    pub jwks: Option<JwksTrust>,
    /// Trust the development key in the data dir even though a JWKS is configured.
    pub trust_dev_key: bool,
}

#[derive(Debug, Clone)]
pub struct JwksTrust {
    pub path: PathBuf,
    pub issuer: String,
    pub audience: String,
}

/// Builds the admin JWT verifier. The development key is trusted only when asked for
/// (`trust_dev_key`), or by default for the local embedded setup (SQLite on a loopback address)
/// when no JWKS is configured: a production deployment never trusts it by accident.
pub fn authenticator(
    trust: &AdminTrust,
    data_dir: &Path,
    local_embedded: bool,
) -> Result<AdminAuthenticator, ServeError> {
    let mut auth = AdminAuthenticator::default();
    if let Some(jwks) = &trust.jwks {
        let fail = |reason: String| ServeError::Jwks {
            path: jwks.path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&jwks.path).map_err(|e| fail(e.to_string()))?;
        let set: JwkSet = serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
        auth.trust(&set, &jwks.issuer, &jwks.audience)
            .map_err(|e: KeyConfigError| fail(e.to_string()))?;
    }
    let use_dev_key = trust.trust_dev_key || (trust.jwks.is_none() && local_embedded);
    if trust.jwks.is_none() && !use_dev_key {
        return Err(ServeError::NoAdminKeys);
    }
    if use_dev_key {
        let key = DevKey::load_or_create(data_dir)?;
        auth.trust(&key.jwks(), dev_key::ISSUER, dev_key::AUDIENCE)
            .map_err(|e| ServeError::Jwks {
                path: data_dir.to_owned(),
                reason: e.to_string(),
            })?;
        tracing::warn!(
            data_dir = %data_dir.display(),
            "trusting the local development admin key; configure --admin-jwks for production"
        );
    }
    Ok(auth)
}
