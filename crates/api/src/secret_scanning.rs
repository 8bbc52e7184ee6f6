//! GitHub's secret-scanning partner endpoint: GitHub posts the `emb_sa_` tokens it finds in
//! public code, signed with its ECDSA P-256 key; known tokens that still work are revoked as
//! leaked (with the URL where they were found as the source), and GitHub is told which ones were
//! ours.
//!
//! The transport (an HTTP route) hands over the two signature headers and the raw body; this
//! module verifies before it parses, so nothing unsigned is ever read as JSON.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde::{Deserialize, Serialize};
use service_accounts_domain::Error;
use service_accounts_domain::leaks::{
    LeakOutcome, LeakReport, LeakReporter, MAX_TOKENS_PER_REPORT,
};
use service_accounts_domain::store::{AdminStore, TokenStore};

/// The `token_type` we registered with GitHub, echoed in the feedback.
pub const TOKEN_TYPE: &str = "embrace_service_account_token";
/// Bodies larger than this are refused unread (1,000 alerts are well under it).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
pub const KEY_ID_HEADER: &str = "github-public-key-identifier";
pub const SIGNATURE_HEADER: &str = "github-public-key-signature";

/// GitHub's verification keys, by identifier, from a document shaped like the one GitHub
/// publishes: `{"public_keys": [{"key_identifier": …, "key": "<PEM>", "is_current": …}]}`.
/// Keys that are no longer current still verify: GitHub rotates with overlap.
pub struct GithubKeys(HashMap<String, VerifyingKey>);

#[derive(Deserialize)]
struct KeysDocument {
    public_keys: Vec<PublishedKey>,
}

#[derive(Deserialize)]
struct PublishedKey {
    key_identifier: String,
    key: String,
}

impl GithubKeys {
    pub fn from_json(json: &str) -> Result<Self, String> {
        let document: KeysDocument = serde_json::from_str(json)
            .map_err(|e| format!("not a GitHub public keys document: {e}"))?;
        let mut keys = HashMap::new();
        for key in document.public_keys {
            let verifying = VerifyingKey::from_public_key_pem(&key.key).map_err(|e| {
                format!(
                    "key {:?} is not a P-256 public key in PEM: {e}",
                    key.key_identifier
                )
            })?;
            keys.insert(key.key_identifier, verifying);
        }
        if keys.is_empty() {
            return Err("the document holds no public key".into());
        }
        Ok(Self(keys))
    }

    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let json = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::from_json(&json).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Checks a base64 DER ECDSA P-256/SHA-256 signature over the raw body.
    fn verify(&self, key_id: Option<&str>, signature: Option<&str>, body: &[u8]) -> bool {
        let (Some(key_id), Some(signature)) = (key_id, signature) else {
            return false;
        };
        let Some(key) = self.0.get(key_id.trim()) else {
            return false;
        };
        let Ok(der) = STANDARD.decode(signature.trim()) else {
            return false;
        };
        let Ok(signature) = Signature::from_der(&der) else {
            return false;
        };
        key.verify(body, &signature).is_ok()
    }
}

/// One match GitHub found.
#[derive(Deserialize)]
struct Alert {
    token: String,
    #[serde(default)]
    url: String,
}

/// What GitHub is told about one match.
#[derive(Serialize)]
struct Feedback<'a> {
    token_raw: &'a str,
    token_type: &'static str,
    label: &'static str,
}

/// The endpoint's answer: an HTTP status and a body (JSON for 200, text otherwise).
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    fn text(status: u16, body: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
        }
    }
}

/// Verifies, parses, revokes, and answers. Nothing changes unless the signature verifies and
/// the whole body parses.
pub async fn handle<S: AdminStore + TokenStore>(
    keys: &GithubKeys,
    reporter: &LeakReporter<S>,
    key_id: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    request_id: &str,
) -> Reply {
    if !keys.verify(key_id, signature, body) {
        return Reply::text(401, "missing, unknown or invalid GitHub signature");
    }
    let alerts: Vec<Alert> = match serde_json::from_slice(body) {
        Ok(alerts) => alerts,
        Err(_) => {
            return Reply::text(
                400,
                "the body must be a JSON array of {token, type, url, source}",
            );
        }
    };
    if alerts.len() > MAX_TOKENS_PER_REPORT {
        return Reply::text(400, "at most 1000 matches per request");
    }
    let mut feedback = Vec::with_capacity(alerts.len());
    for alert in &alerts {
        // Each match has its own URL, recorded as the revocation's source.
        let source: String = alert
            .url
            .chars()
            .filter(|c| !c.is_control())
            .take(2048)
            .collect();
        let outcome = match LeakReport::parse(std::slice::from_ref(&alert.token), &source) {
            Ok(report) => match reporter.report(&report, request_id).await {
                Ok(results) => results.first().map(|r| r.outcome),
                Err(Error::Store(error)) => {
                    tracing::warn!(%error, "secret-scanning report: storage unavailable");
                    return Reply::text(503, "storage is unavailable; retry later");
                }
                Err(_) => None,
            },
            Err(_) => None,
        };
        let ours = matches!(
            outcome,
            Some(LeakOutcome::Revoked | LeakOutcome::AlreadyInactive)
        );
        feedback.push(Feedback {
            token_raw: &alert.token,
            token_type: TOKEN_TYPE,
            label: if ours {
                "true_positive"
            } else {
                "false_positive"
            },
        });
    }
    match serde_json::to_string(&feedback) {
        Ok(body) => Reply {
            status: 200,
            content_type: "application/json",
            body,
        },
        Err(_) => Reply::text(500, "could not encode the feedback"),
    }
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::Signer;
    use p256::pkcs8::{EncodePublicKey, LineEnding};
    use sha2::{Digest, Sha256};

    use super::*;

    fn signing_key(seed: &str) -> SigningKey {
        let bytes: [u8; 32] = Sha256::digest(seed.as_bytes()).into();
        SigningKey::from_bytes(&bytes.into()).unwrap()
    }

    fn keys(ids: &[(&str, &SigningKey)]) -> GithubKeys {
        let public_keys: Vec<serde_json::Value> = ids
            .iter()
            .map(|(id, key)| {
                serde_json::json!({
                    "key_identifier": id,
                    "key": key.verifying_key().to_public_key_pem(LineEnding::LF).unwrap(),
                    "is_current": true,
                })
            })
            .collect();
        GithubKeys::from_json(&serde_json::json!({ "public_keys": public_keys }).to_string())
            .unwrap()
    }

    fn sign(key: &SigningKey, body: &[u8]) -> String {
        let signature: Signature = key.sign(body);
        STANDARD.encode(signature.to_der().as_bytes())
    }

    #[test]
    fn only_a_signature_by_a_published_key_over_the_exact_body_verifies() {
        let github = signing_key("github");
        let old = signing_key("github, last year");
        let keys = keys(&[("k1", &github), ("k0", &old)]);
        let body = br#"[{"token":"emb_sa_x","type":"t","url":"u","source":"content"}]"#;
        let signature = sign(&github, body);
        assert!(keys.verify(Some("k1"), Some(&signature), body));
        assert!(keys.verify(Some("k0"), Some(&sign(&old, body)), body));
        assert!(
            !keys.verify(Some("k0"), Some(&signature), body),
            "another key"
        );
        assert!(
            !keys.verify(Some("k9"), Some(&signature), body),
            "unknown id"
        );
        assert!(!keys.verify(None, Some(&signature), body));
        assert!(!keys.verify(Some("k1"), None, body));
        assert!(!keys.verify(Some("k1"), Some("not base64!"), body));
        let mut tampered = body.to_vec();
        tampered[5] ^= 1;
        assert!(!keys.verify(Some("k1"), Some(&signature), &tampered));
        let forged = sign(&signing_key("attacker"), body);
        assert!(!keys.verify(Some("k1"), Some(&forged), body));
    }

    #[test]
    fn a_keys_document_must_hold_p256_keys_in_pem() {
        assert!(GithubKeys::from_json("{}").is_err());
        assert!(GithubKeys::from_json(r#"{"public_keys": []}"#).is_err());
        assert!(
            GithubKeys::from_json(
                r#"{"public_keys": [{"key_identifier": "k", "key": "nope", "is_current": true}]}"#
            )
            .is_err()
        );
    }
}
