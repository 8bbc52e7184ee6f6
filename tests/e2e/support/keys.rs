//! Ed25519 keys that sign admin JWTs, as an identity side would.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;

pub struct Signer {
    key: SigningKey,
    pub kid: &'static str,
}

impl Signer {
    pub fn new(seed: u8, kid: &'static str) -> Self {
        Self {
            key: SigningKey::from_bytes(&[seed; 32]),
            kid,
        }
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> serde_json::Value {
        json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "kid": self.kid,
            "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(self.key.verifying_key().as_bytes()),
        })
    }

    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let der = self.key.to_pkcs8_der().unwrap();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.into());
        encode(&header, claims, &EncodingKey::from_ed_der(der.as_bytes())).unwrap()
    }
}
