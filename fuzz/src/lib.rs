//! What the fuzz targets and the seed generator share: the request table, the fixed admin key
//! and the JWT signing helper. See docs/fuzzing.md.

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use service_accounts_api::auth::AdminAuthenticator;
use service_accounts_api::dev_key::{AUDIENCE, DevKey, ISSUER};
use service_accounts_api::pb;
use service_accounts_api::requests::Parse;
use service_accounts_domain::Error;

/// A fixed Ed25519 key, for fuzzing only: inputs that verify under it (the seed corpus's JWTs,
/// any crash they lead to) reproduce in every run. Never trusted outside these targets.
pub const FUZZ_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEINoD3g8R1U0PCtMo114vcTRw5aFHh3JozOkQm6TuXIxF
-----END PRIVATE KEY-----
";

/// The admin-auth set-up the `admin_jwt` target runs against: the service's own
/// [`AdminAuthenticator`] trusting the [`DevKey`] loaded from [`FUZZ_KEY_PEM`].
pub struct JwtFixture {
    pub authenticator: AdminAuthenticator,
    pub dev_key: DevKey,
    signing: SigningKey,
}

impl JwtFixture {
    pub fn get() -> &'static JwtFixture {
        static FIXTURE: OnceLock<JwtFixture> = OnceLock::new();
        FIXTURE.get_or_init(|| {
            // DevKey loads only a private (0600) file, so stage the fixed key in one.
            let dir = std::env::temp_dir().join(format!(
                "service-accounts-fuzz-{}-{}",
                std::process::id(),
                uuid::Uuid::now_v7().simple()
            ));
            std::fs::create_dir_all(&dir).expect("temporary directory");
            let path = dir.join("admin-dev-key.pem");
            {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .expect("key file");
                file.write_all(FUZZ_KEY_PEM.as_bytes())
                    .expect("key written");
            }
            let dev_key = DevKey::load_or_create(&dir).expect("the fixed key loads");
            let _ = std::fs::remove_dir_all(&dir);
            let mut authenticator = AdminAuthenticator::default();
            authenticator
                .trust(&dev_key.jwks(), ISSUER, AUDIENCE)
                .expect("the dev key is trusted");
            let signing = SigningKey::from_pkcs8_pem(FUZZ_KEY_PEM).expect("the fixed key parses");
            JwtFixture {
                authenticator,
                dev_key,
                signing,
            }
        })
    }

    /// `base64url(header).base64url(payload).signature` signed with the trusted key: whatever
    /// the header and claims say, the signature verifies, so the claim checks get fuzzed.
    pub fn sign(&self, header: &[u8], payload: &[u8]) -> String {
        use ed25519_dalek::Signer;
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let signature = self.signing.sign(message.as_bytes());
        format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }
}

/// The header [`JwtFixture::sign`] uses when the input does not give one.
pub const DEFAULT_JWT_HEADER: &[u8] = br#"{"alg":"EdDSA","typ":"JWT","kid":"dev"}"#;

/// Replaces `$NOW` with the current Unix time and `$LATER` with ten minutes on, so that a
/// stored input stays within the validity window whenever it is replayed.
pub fn with_current_time(payload: &[u8]) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut out = Vec::with_capacity(payload.len() + 16);
    let mut rest = payload;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix(b"$NOW") {
            out.extend_from_slice(now.to_string().as_bytes());
            rest = after;
        } else if let Some(after) = rest.strip_prefix(b"$LATER") {
            out.extend_from_slice((now + 600).to_string().as_bytes());
            rest = after;
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}

/// Every request message the API parses, in the order of the `requests` target's first byte.
pub const REQUEST_KINDS: &[&str] = &[
    "CreateServiceAccountRequest",
    "GetServiceAccountRequest",
    "ListServiceAccountsRequest",
    "UpdateServiceAccountRequest",
    "DeleteServiceAccountRequest",
    "SetAppAccessRequest",
    "GrantAppAccessRequest",
    "RevokeAppAccessRequest",
    "CreateTokenRequest",
    "ListTokensRequest",
    "RevokeTokenRequest",
    "ListScopesRequest",
    "ListAuditEventsRequest",
    "IntrospectRequest",
    "DisableServiceAccountRequest",
    "EnableServiceAccountRequest",
    "RotateTokenRequest",
    "UpdateTokenRequest",
    "ListExpiringTokensRequest",
    "GetTokenPolicyRequest",
    "UpdateTokenPolicyRequest",
];

fn decode_and_parse<M: prost::Message + Default + Parse>(
    bytes: &[u8],
) -> Option<Result<(), Error>> {
    let message = M::decode(bytes).ok()?;
    Some(message.parse().map(|_| ()))
}

/// Decodes `bytes` as request kind `kind` (modulo [`REQUEST_KINDS`]) and parses it as the server
/// does. `None` when the bytes are not that message.
pub fn decode_and_parse_request(kind: u8, bytes: &[u8]) -> Option<Result<(), Error>> {
    match kind as usize % REQUEST_KINDS.len() {
        0 => decode_and_parse::<pb::CreateServiceAccountRequest>(bytes),
        1 => decode_and_parse::<pb::GetServiceAccountRequest>(bytes),
        2 => decode_and_parse::<pb::ListServiceAccountsRequest>(bytes),
        3 => decode_and_parse::<pb::UpdateServiceAccountRequest>(bytes),
        4 => decode_and_parse::<pb::DeleteServiceAccountRequest>(bytes),
        5 => decode_and_parse::<pb::SetAppAccessRequest>(bytes),
        6 => decode_and_parse::<pb::GrantAppAccessRequest>(bytes),
        7 => decode_and_parse::<pb::RevokeAppAccessRequest>(bytes),
        8 => decode_and_parse::<pb::CreateTokenRequest>(bytes),
        9 => decode_and_parse::<pb::ListTokensRequest>(bytes),
        10 => decode_and_parse::<pb::RevokeTokenRequest>(bytes),
        11 => decode_and_parse::<pb::ListScopesRequest>(bytes),
        12 => decode_and_parse::<pb::ListAuditEventsRequest>(bytes),
        13 => decode_and_parse::<pb::IntrospectRequest>(bytes),
        14 => decode_and_parse::<pb::DisableServiceAccountRequest>(bytes),
        15 => decode_and_parse::<pb::EnableServiceAccountRequest>(bytes),
        16 => decode_and_parse::<pb::RotateTokenRequest>(bytes),
        17 => decode_and_parse::<pb::UpdateTokenRequest>(bytes),
        18 => decode_and_parse::<pb::ListExpiringTokensRequest>(bytes),
        19 => decode_and_parse::<pb::GetTokenPolicyRequest>(bytes),
        20 => decode_and_parse::<pb::UpdateTokenPolicyRequest>(bytes),
        _ => unreachable!("kind is reduced modulo the table's length"),
    }
}

/// The largest `InvalidArgument` the parsers may answer with: 20 violations and one saying how
/// many more there were.
pub const MAX_VIOLATIONS: usize = 21;
/// The longest violation description: a fixed sentence plus at most 64 bytes of quoted input
/// (counted after escaping; finding 2 in docs/fuzzing.md).
pub const MAX_DESCRIPTION_BYTES: usize = 300;
