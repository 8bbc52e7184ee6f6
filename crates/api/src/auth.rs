//! Admin caller authentication: `authorization: Bearer <JWT>` verified against trusted public
//! keys. The algorithm is pinned to each key's type, so `alg: none` or an HMAC token "signed"
//! with a public key can never verify.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use service_accounts_domain::admin::Principal;
use service_accounts_domain::ids::{OrgId, UserId};
use std::sync::{Arc, RwLock};

use tonic::metadata::MetadataMap;

/// Clock skew tolerated on `exp`, `nbf` and `iat`.
const LEEWAY_SECONDS: u64 = 30;
/// The longest an admin JWT may live (`exp - iat`): a stolen one is useful only briefly.
pub const MAX_LIFETIME_SECONDS: u64 = 3600;
/// RSA keys shorter than this are refused.
const MIN_RSA_BITS: usize = 2048;

struct TrustedKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

/// Verifies admin JWTs. Holds any number of keys, each with the issuer and audience it signs for:
/// fixed ones (a JWKS file, the development key) and ones from a JWKS that is refreshed while the
/// server runs.
#[derive(Default)]
pub struct AdminAuthenticator {
    fixed: Vec<TrustedKey>,
    refreshed: RwLock<Arc<Vec<TrustedKey>>>,
}

/// A JWKS that cannot be trusted as configured.
#[derive(Debug, thiserror::Error)]
pub enum KeyConfigError {
    #[error("the JWKS has no keys")]
    Empty,
    #[error("key {kid:?}: {reason}")]
    Unsupported { kid: Option<String>, reason: String },
}

/// Why a caller is not authenticated. The message is safe to return: it never echoes the token.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing `authorization: Bearer <token>` metadata")]
    Missing,
    #[error("the authorization metadata is not a bearer JWT")]
    Malformed,
    #[error("the credential is not signed by a trusted key")]
    UntrustedKey,
    /// Signed with a key id none of the trusted keys has: perhaps a key the identity side has
    /// just started to use.
    #[error("the credential is not signed by a trusted key")]
    UnknownKey,
    #[error("the credential is not valid: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    org_id: String,
    #[serde(default)]
    roles: Vec<String>,
    exp: u64,
    iat: Option<u64>,
}

impl AdminAuthenticator {
    /// Trusts every key of `jwks` for tokens with this issuer and audience.
    pub fn trust(
        &mut self,
        jwks: &JwkSet,
        issuer: &str,
        audience: &str,
    ) -> Result<(), KeyConfigError> {
        if jwks.keys.is_empty() {
            return Err(KeyConfigError::Empty);
        }
        for jwk in &jwks.keys {
            self.fixed.push(trusted_key(jwk, issuer, audience)?);
        }
        Ok(())
    }

    /// Replaces the refreshed keys with `jwks`'s. Keys this service cannot use (another key
    /// type, an encryption key) are skipped and returned; with no usable key at all nothing
    /// changes and the call fails, so a bad refresh never locks admins out.
    pub fn replace_refreshed(
        &self,
        jwks: &JwkSet,
        issuer: &str,
        audience: &str,
    ) -> Result<Vec<KeyConfigError>, KeyConfigError> {
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for jwk in &jwks.keys {
            match trusted_key(jwk, issuer, audience) {
                Ok(key) => keys.push(key),
                Err(unusable) => skipped.push(unusable),
            }
        }
        if keys.is_empty() {
            return Err(skipped.into_iter().next().unwrap_or(KeyConfigError::Empty));
        }
        *self.refreshed.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        Ok(skipped)
    }

    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Principal, AuthError> {
        let value = metadata.get("authorization").ok_or(AuthError::Missing)?;
        let value = value.to_str().map_err(|_| AuthError::Malformed)?;
        let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed);
        }
        let token = token.trim();
        let header = decode_header(token).map_err(|_| AuthError::Malformed)?;
        let refreshed = self
            .refreshed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut last_error = match header.kid {
            Some(_) => AuthError::UnknownKey,
            None => AuthError::UntrustedKey,
        };
        let candidates = self.fixed.iter().chain(refreshed.iter()).filter(|key| {
            key.algorithm == header.alg && (header.kid.is_none() || header.kid == key.kid)
        });
        for key in candidates {
            match decode::<Claims>(token, &key.key, &key.validation) {
                Ok(data) => return principal(data.claims),
                Err(error) => last_error = invalid(error),
            }
        }
        Err(last_error)
    }
}

fn invalid(error: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind;
    let reason = match error.kind() {
        ErrorKind::InvalidSignature => return AuthError::UntrustedKey,
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::ImmatureSignature => "not valid yet",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::MissingRequiredClaim(_) => "a required claim is missing",
        ErrorKind::Json(_) => "claims are malformed",
        _ => "rejected",
    };
    AuthError::Invalid(reason.into())
}

fn principal(claims: Claims) -> Result<Principal, AuthError> {
    let Some(iat) = claims.iat else {
        return Err(AuthError::Invalid(
            "a required claim is missing: iat".into(),
        ));
    };
    if claims.exp.saturating_sub(iat) > MAX_LIFETIME_SECONDS {
        return Err(AuthError::Invalid(format!(
            "lives longer than {MAX_LIFETIME_SECONDS} seconds (exp - iat)"
        )));
    }
    if iat > jsonwebtoken::get_current_timestamp() + LEEWAY_SECONDS {
        return Err(AuthError::Invalid("issued in the future (iat)".into()));
    }
    let user_id =
        UserId::parse(&claims.sub).map_err(|e| AuthError::Invalid(format!("sub: {e}")))?;
    let org_id =
        OrgId::parse(&claims.org_id).map_err(|e| AuthError::Invalid(format!("org_id: {e}")))?;
    Ok(Principal {
        user_id,
        org_id,
        roles: claims.roles,
    })
}

fn trusted_key(jwk: &Jwk, issuer: &str, audience: &str) -> Result<TrustedKey, KeyConfigError> {
    let kid = jwk.common.key_id.clone();
    let unsupported = |reason: &str| KeyConfigError::Unsupported {
        kid: kid.clone(),
        reason: reason.to_owned(),
    };
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err(unsupported("is an encryption key (use: enc)"));
    }
    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            // The verifier slices 32 bytes out of `x`; refuse anything else up front.
            let x = URL_SAFE_NO_PAD
                .decode(&p.x)
                .map_err(|_| unsupported("x is not base64url"))?;
            if x.len() != 32 {
                return Err(unsupported("an Ed25519 key's x must be 32 bytes"));
            }
            Algorithm::EdDSA
        }
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::RSA(p) => {
            let modulus = URL_SAFE_NO_PAD
                .decode(&p.n)
                .map_err(|_| unsupported("n is not base64url"))?;
            let zero_bytes = modulus.iter().take_while(|b| **b == 0).count();
            let bits = modulus.get(zero_bytes).map_or(0, |first| {
                (modulus.len() - zero_bytes) * 8 - first.leading_zeros() as usize
            });
            if bits < MIN_RSA_BITS {
                return Err(unsupported("RSA keys must have at least 2048 bits"));
            }
            Algorithm::RS256
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err(unsupported("symmetric (HMAC) keys are not accepted"));
        }
        _ => {
            return Err(unsupported(
                "only Ed25519, P-256 (ES256) and RSA (RS256) keys are supported",
            ));
        }
    };
    if let Some(declared) = jwk.common.key_algorithm
        && format!("{declared:?}") != format!("{algorithm:?}")
    {
        return Err(unsupported(&format!(
            "declares alg {declared:?}, but its key type implies {algorithm:?}"
        )));
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| unsupported(&e.to_string()))?;
    let mut validation = Validation::new(algorithm);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.validate_nbf = true;
    validation.leeway = LEEWAY_SECONDS;
    Ok(TrustedKey {
        kid,
        algorithm,
        key,
        validation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Public keys from RFC 7517, appendix A.1.
    const RFC_EC: &str = r#"{"kty":"EC","crv":"P-256","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM","kid":"1"}"#;
    const RFC_RSA: &str = r#"{"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB","alg":"RS256","kid":"2011-04-29"}"#;

    fn key(json: &str) -> Result<TrustedKey, KeyConfigError> {
        trusted_key(&serde_json::from_str(json).unwrap(), "iss", "aud")
    }

    #[test]
    fn algorithms_are_pinned_to_the_key_type() {
        assert_eq!(key(RFC_EC).unwrap().algorithm, Algorithm::ES256);
        assert_eq!(key(RFC_RSA).unwrap().algorithm, Algorithm::RS256);
        let ed =
            r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
        assert_eq!(key(ed).unwrap().algorithm, Algorithm::EdDSA);
    }

    #[test]
    fn symmetric_encryption_mislabelled_and_truncated_keys_are_refused() {
        assert!(key(r#"{"kty":"oct","k":"c2VjcmV0"}"#).is_err());
        assert!(key(&RFC_EC.replace(r#""kid":"1""#, r#""kid":"1","use":"enc""#)).is_err());
        assert!(key(&RFC_RSA.replace("RS256", "HS256")).is_err());
        assert!(key(r#"{"kty":"OKP","crv":"Ed25519","x":"AAAA"}"#).is_err());
        assert!(matches!(
            AdminAuthenticator::default().trust(&JwkSet { keys: vec![] }, "i", "a"),
            Err(KeyConfigError::Empty)
        ));
    }

    #[test]
    fn rsa_keys_under_2048_bits_are_refused() {
        // The RFC's key is 2048 bits; the same key with its modulus cut to 1024 bits is not.
        let n = RFC_RSA
            .split(r#""n":""#)
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let short = URL_SAFE_NO_PAD.encode(&URL_SAFE_NO_PAD.decode(n).unwrap()[..128]);
        let error = key(&RFC_RSA.replace(n, &short)).err().expect("refused");
        assert!(error.to_string().contains("2048"), "{error}");
    }

    fn claims(exp: u64, iat: Option<u64>) -> Claims {
        Claims {
            sub: "alice".into(),
            org_id: "acme".into(),
            roles: vec!["org_admin".into()],
            exp,
            iat,
        }
    }

    #[test]
    fn admin_jwts_need_iat_and_live_at_most_an_hour() {
        let now = jsonwebtoken::get_current_timestamp();
        assert!(principal(claims(now + 3600, Some(now))).is_ok());
        let missing = principal(claims(now + 60, None)).expect_err("refused");
        assert!(missing.to_string().contains("iat"), "{missing}");
        let long = principal(claims(now + 3601, Some(now))).expect_err("refused");
        assert!(long.to_string().contains("3600"), "{long}");
        assert!(principal(claims(now + 7200, Some(now + 3600))).is_err());
    }

    #[test]
    fn metadata_without_a_bearer_jwt_is_unauthenticated() {
        let auth = AdminAuthenticator::default();
        let mut metadata = MetadataMap::new();
        assert!(matches!(
            auth.authenticate(&metadata),
            Err(AuthError::Missing)
        ));
        metadata.insert("authorization", "Bearer".parse().unwrap());
        assert!(matches!(
            auth.authenticate(&metadata),
            Err(AuthError::Malformed)
        ));
        metadata.insert("authorization", "Bearer a.b.c".parse().unwrap());
        assert!(matches!(
            auth.authenticate(&metadata),
            Err(AuthError::Malformed)
        ));
    }
}
