//! Who may sign admin JWTs: a configured JWKS, and the local development key when allowed.

use std::path::Path;

use jsonwebtoken::jwk::JwkSet;

use super::ServeError;
use crate::auth::{AdminAuthenticator, KeyConfigError};
use crate::config::{AdminTrust, JwksSource, JwksTrust};
use crate::dev_key::{self, DevKey};

/// Builds the admin JWT verifier. The development key is trusted only when asked for
/// (`trust_dev_key`), or by default for the local embedded setup (SQLite on a loopback address)
/// when no JWKS is configured: a production deployment never trusts it by accident.
pub fn authenticator(
    trust: &AdminTrust,
    data_dir: &Path,
    local_embedded: bool,
) -> Result<AdminAuthenticator, ServeError> {
    let mut auth = AdminAuthenticator::default();
    if let Some(JwksTrust {
        source: JwksSource::File(path),
        issuer,
        audience,
    }) = &trust.jwks
    {
        let fail = |reason: String| ServeError::Jwks {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let set: JwkSet = serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
        auth.trust(&set, issuer, audience)
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

/// The refresher of a JWKS URL, if one is configured; the first fetch happens here. A server
/// whose identity side is down at start still starts (introspection does not need it): admin
/// calls fail until a refresh succeeds.
pub async fn jwks_endpoint(
    trust: &AdminTrust,
    extra_ca: Option<&Path>,
    refresh_interval: std::time::Duration,
    auth: &std::sync::Arc<AdminAuthenticator>,
) -> Result<Option<std::sync::Arc<crate::jwks::JwksEndpoint>>, ServeError> {
    let Some(JwksTrust {
        source: source @ JwksSource::Url(url),
        issuer,
        audience,
    }) = &trust.jwks
    else {
        return Ok(None);
    };
    let min_gap = refresh_interval
        .min(std::time::Duration::from_secs(30))
        .max(std::time::Duration::from_secs(1));
    let endpoint =
        crate::jwks::JwksEndpoint::new(url, extra_ca, issuer, audience, auth.clone(), min_gap)
            .map_err(|reason| ServeError::Jwks {
                path: source.describe(),
                reason,
            })?;
    let _ = endpoint.refresh().await;
    Ok(Some(std::sync::Arc::new(endpoint)))
}
