//! Admin authentication on arbitrary `authorization` metadata, against the service's own
//! `AdminAuthenticator` trusting a fixed dev key. Never panics; and whenever a credential that
//! the trusted key signed is accepted, its claims really satisfy the policy (issuer, audience,
//! lifetime, org and user ids).
//!
//! Input: byte 0 picks the mode (modulo 5), the rest is mode-specific:
//! 0. the whole metadata value;
//! 1. the token after `Bearer `;
//! 2. the claims (JSON, `$NOW` and `$LATER` replaced with the time), signed with the trusted
//!    key under the usual header;
//! 3. `header NUL claims`, both fuzzed, signed with the trusted key;
//! 4. `DevKey::mint` with fuzzed arguments: 2 bytes of lifetime in seconds, then
//!    `org NUL user NUL role NUL role …`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use service_accounts_api::auth::{AuthError, MAX_LIFETIME_SECONDS};
use service_accounts_api::dev_key::{AUDIENCE, ISSUER};
use service_accounts_domain::admin::Principal;
use service_accounts_domain::ids::{OrgId, UserId};
use service_accounts_fuzz::{DEFAULT_JWT_HEADER, JwtFixture, with_current_time};
use tonic::metadata::{MetadataMap, MetadataValue};

fn authenticate(value: &[u8]) -> Option<Result<Principal, AuthError>> {
    let value = MetadataValue::try_from(value).ok()?;
    let mut metadata = MetadataMap::new();
    metadata.insert("authorization", value);
    Some(JwtFixture::get().authenticator.authenticate(&metadata))
}

/// A signed credential was accepted: its header and claims must say what the policy requires.
fn check_accepted(header: &[u8], claims: &[u8], principal: &Principal) {
    // Finding 3 (docs/fuzzing.md): serde skips the values of unknown members without checking
    // their UTF-8, so a trusted signer's header or claims may hold invalid UTF-8 there and still
    // be accepted. The members that matter are checked, so read both leniently here.
    let header: serde_json::Value =
        serde_json::from_str(&String::from_utf8_lossy(header)).expect("accepted header is JSON");
    assert_eq!(header["alg"], "EdDSA", "{header}");
    // A `kid` of null is no kid: any trusted key of the algorithm may verify it.
    let kid = &header["kid"];
    assert!(kid.is_null() || kid == "dev", "{header}");
    let claims: serde_json::Value =
        serde_json::from_str(&String::from_utf8_lossy(claims)).expect("accepted claims are JSON");
    assert_eq!(claims["iss"], ISSUER, "{claims}");
    let aud = &claims["aud"];
    assert!(
        aud == AUDIENCE
            || aud
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == AUDIENCE)),
        "{claims}"
    );
    assert_eq!(
        claims["sub"].as_str(),
        Some(principal.user_id.as_str()),
        "{claims}"
    );
    assert_eq!(
        claims["org_id"].as_str(),
        Some(principal.org_id.as_str()),
        "{claims}"
    );
    let exp = claims["exp"].as_u64().expect("exp is a whole number");
    let iat = claims["iat"].as_u64().expect("iat is a whole number");
    assert!(exp.saturating_sub(iat) <= MAX_LIFETIME_SECONDS, "{claims}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(exp + 30 >= now && iat <= now + 30, "{claims}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let fixture = JwtFixture::get();
    match mode % 5 {
        0 => {
            authenticate(rest);
        }
        1 => {
            authenticate(&[b"Bearer ", rest].concat());
        }
        2 | 3 => {
            let (header, claims) = if mode % 5 == 2 {
                (DEFAULT_JWT_HEADER, rest)
            } else {
                match rest.iter().position(|b| *b == 0) {
                    Some(nul) => (&rest[..nul], &rest[nul + 1..]),
                    None => (rest, &b"{}"[..]),
                }
            };
            let claims = with_current_time(claims);
            let jwt = fixture.sign(header, &claims);
            let result =
                authenticate(format!("Bearer {jwt}").as_bytes()).expect("a JWT is valid metadata");
            if let Ok(principal) = result {
                check_accepted(header, &claims, &principal);
            }
        }
        _ => {
            let Some((ttl, rest)) = rest.split_first_chunk::<2>() else {
                return;
            };
            // The CLI bounds the lifetime to an hour; a little past it is enough to test it.
            let ttl = u64::from(u16::from_le_bytes(*ttl)) % 7200;
            let mut parts = rest.split(|b| *b == 0).map(String::from_utf8_lossy);
            let org = parts.next().unwrap_or_default().into_owned();
            let user = parts.next().unwrap_or_default().into_owned();
            let roles: Vec<String> = parts.map(|r| r.into_owned()).collect();
            let jwt = fixture
                .dev_key
                .mint(&org, &user, &roles, std::time::Duration::from_secs(ttl))
                .expect("minting never fails");
            let result =
                authenticate(format!("Bearer {jwt}").as_bytes()).expect("a JWT is valid metadata");
            let expected = UserId::parse(&user).is_ok()
                && OrgId::parse(&org).is_ok()
                && ttl <= MAX_LIFETIME_SECONDS;
            match result {
                Ok(principal) => {
                    assert!(expected, "accepted: org {org:?} user {user:?} ttl {ttl}");
                    assert_eq!(principal.user_id.as_str(), user);
                    assert_eq!(principal.org_id.as_str(), org);
                    assert_eq!(principal.roles, roles);
                }
                Err(error) => assert!(
                    !expected,
                    "refused: {error} (org {org:?} user {user:?} ttl {ttl})"
                ),
            }
        }
    }
});
