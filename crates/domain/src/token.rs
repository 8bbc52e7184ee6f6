//! Bearer tokens: `emb_sa_` + 37 random characters + a 6-character CRC32 checksum, all from the
//! URL-safe base64 alphabet (50 characters in all). Only the SHA-256 of the whole token is ever
//! stored; the checksum lets us reject typos and random strings without touching storage, and
//! lets secret scanners match tokens with almost no false positives.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::TryRngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::Arc;
use subtle::ConstantTimeEq;

use std::net::IpAddr;

use crate::ids::{OrgId, ServiceAccountId, TokenId, UserId};
use crate::network::AllowedCidrs;
use crate::scope::Scopes;
use crate::service_account::{AppAccess, AppId, DisplayName};
use crate::time::Timestamp;

pub const PREFIX: &str = "emb_sa_";
pub const LENGTH: usize = 50;
const RANDOM_CHARS: usize = 37; // 37 × 6 = 222 bits of randomness
const CHECKSUM_CHARS: usize = 6; // 4 CRC32 bytes, unpadded base64
const BODY_LENGTH: usize = PREFIX.len() + RANDOM_CHARS;
const _: () = assert!(BODY_LENGTH + CHECKSUM_CHARS == LENGTH);
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// `ALPHABET` as a lookup table: one load per character instead of a scan of 64.
static IN_ALPHABET: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = true;
        i += 1;
    }
    table
};

/// A token's plaintext. Its `Debug` is redacted so it cannot leak through `{:?}` in a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSecret(String);

impl TokenSecret {
    /// A new token from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut random = [0u8; RANDOM_CHARS];
        // The OS RNG failing is not recoverable and must never degrade to a weaker source.
        OsRng
            .try_fill_bytes(&mut random)
            .expect("the operating system's random number generator failed");
        let mut token = String::with_capacity(LENGTH);
        token.push_str(PREFIX);
        // 64 symbols: masking a uniform byte to 6 bits keeps each character uniform.
        token.extend(random.iter().map(|b| ALPHABET[(b & 0x3f) as usize] as char));
        token.push_str(&checksum(&token));
        Self(token)
    }

    /// Checks the format and checksum. Cheap, and never touches storage.
    pub fn parse(candidate: &str) -> Result<Self, MalformedToken> {
        Self::check(candidate)?;
        Ok(Self(candidate.to_owned()))
    }

    /// The hash of a well-formed token, without copying it.
    pub fn parse_hash(candidate: &str) -> Result<TokenHash, MalformedToken> {
        Self::check(candidate)?;
        Ok(TokenHash(Sha256::digest(candidate.as_bytes()).into()))
    }

    /// The hash of what has a token's length and prefix, its alphabet and checksum unchecked: for
    /// a cache that holds only well-formed tokens, where a hit is one. On a miss, check it with
    /// [`TokenSecret::is_well_formed`].
    pub fn hash_for_lookup(candidate: &str) -> Result<TokenHash, MalformedToken> {
        if candidate.len() != LENGTH || !candidate.starts_with(PREFIX) {
            return Err(MalformedToken);
        }
        Ok(TokenHash(Sha256::digest(candidate.as_bytes()).into()))
    }

    pub fn is_well_formed(candidate: &str) -> bool {
        Self::check(candidate).is_ok()
    }

    fn check(candidate: &str) -> Result<(), MalformedToken> {
        if candidate.len() != LENGTH || !candidate.starts_with(PREFIX) {
            return Err(MalformedToken);
        }
        let rest = &candidate.as_bytes()[PREFIX.len()..];
        if !rest.iter().all(|&b| IN_ALPHABET[b as usize]) {
            return Err(MalformedToken);
        }
        let (body, tail) = candidate.split_at(BODY_LENGTH);
        let mut expected = [0u8; CHECKSUM_CHARS];
        let crc = crc32fast::hash(body.as_bytes()).to_be_bytes();
        if URL_SAFE_NO_PAD.encode_slice(crc, &mut expected) != Ok(CHECKSUM_CHARS)
            || expected != tail.as_bytes()
        {
            return Err(MalformedToken);
        }
        Ok(())
    }

    /// The plaintext, for the one response that returns it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.0.as_bytes()).into())
    }

    /// A non-secret hint: the prefix and the checksum tail, e.g. `emb_sa_…Xy12Ab`.
    pub fn hint(&self) -> String {
        format!("{PREFIX}…{}", &self.0[BODY_LENGTH..])
    }
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSecret(<redacted>)")
    }
}

fn checksum(body: &str) -> String {
    URL_SAFE_NO_PAD.encode(crc32fast::hash(body.as_bytes()).to_be_bytes())
}

/// Not a service-account token (wrong prefix, length, alphabet or checksum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedToken;

/// SHA-256 of a whole token: what storage keeps and looks tokens up by.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// Constant-time equality, for comparing a presented token's hash with a stored one.
    pub fn ct_eq(&self, other: &TokenHash) -> bool {
        // Four words rather than 32 bytes: `subtle` guards each element it compares.
        let words = |h: &[u8; 32]| -> [u64; 4] {
            let (chunks, _) = h.as_chunks::<8>();
            std::array::from_fn(|i| u64::from_ne_bytes(chunks[i]))
        };
        words(&self.0)[..].ct_eq(&words(&other.0)[..]).into()
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(<redacted>)")
    }
}

/// Why a token was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeReason {
    /// `RevokeToken`.
    Admin,
    /// Replaced by `RotateToken` without a grace period.
    Rotated,
    /// Reported leaked.
    Leaked,
    /// Its account was deleted.
    AccountDeleted,
}

impl RevokeReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RevokeReason::Admin => "admin",
            RevokeReason::Rotated => "rotated",
            RevokeReason::Leaked => "leaked",
            RevokeReason::AccountDeleted => "account_deleted",
        }
    }

    pub fn from_stored(s: &str) -> Option<Self> {
        [
            RevokeReason::Admin,
            RevokeReason::Rotated,
            RevokeReason::Leaked,
            RevokeReason::AccountDeleted,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// A revocation: when, by whom, why.
#[derive(Debug, Clone, PartialEq)]
pub struct Revocation {
    pub at: Timestamp,
    pub by: UserId,
    pub reason: RevokeReason,
}

/// A token's metadata, as admins see it. Never holds the secret or its hash.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub id: TokenId,
    pub service_account_id: ServiceAccountId,
    pub display_name: DisplayName,
    pub scopes: Scopes,
    pub create_time: Timestamp,
    pub created_by: UserId,
    pub expire_time: Option<Timestamp>,
    pub revoke_time: Option<Timestamp>,
    pub revoked_by: Option<UserId>,
    /// Set with `revoke_time`. Tokens revoked before reasons were recorded read as `Admin`.
    pub revoke_reason: Option<RevokeReason>,
    pub last_used_time: Option<Timestamp>,
    pub last_used_app_id: Option<AppId>,
    pub last_used_client_ip: Option<IpAddr>,
    pub hint: String,
    /// The token this one replaced (`RotateToken`).
    pub previous_token_id: Option<TokenId>,
    pub allowed_cidrs: AllowedCidrs,
}

impl Token {
    /// Whether the token still works at `now` (its account's state aside).
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.state(now) == TokenState::Active
    }

    /// The token's state at `now`: revoked wins over expired.
    pub fn state(&self, now: Timestamp) -> TokenState {
        if self.revoke_time.is_some() {
            TokenState::Revoked
        } else if self.expire_time.is_some_and(|expiry| expiry <= now) {
            TokenState::Expired
        } else {
            TokenState::Active
        }
    }
}

/// Whether a token works (its account's state aside), as of a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    Active,
    Expired,
    Revoked,
}

/// A stored token joined with what introspection reports about its account: what one
/// storage lookup returns and what the introspection cache holds. The account part is shared
/// by every cached token of the account, not copied into each.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    pub token_id: TokenId,
    pub token_hash: TokenHash,
    pub scopes: Scopes,
    /// When the token was issued (RFC 7662's `iat`).
    pub create_time: Timestamp,
    pub expire_time: Option<Timestamp>,
    pub revoke_time: Option<Timestamp>,
    pub allowed_cidrs: AllowedCidrs,
    pub account: Arc<AccountRecord>,
}

/// What introspection reports about a token's service account.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountRecord {
    pub org_id: OrgId,
    pub service_account_id: ServiceAccountId,
    /// A `Box<str>`: every cached token's account holds one.
    pub display_name: Box<str>,
    pub app_access: AppAccess,
    pub disabled: bool,
}

impl AccountRecord {
    /// Roughly the heap and inline bytes this record holds, for the cache's byte bound.
    pub fn approximate_bytes(&self) -> usize {
        let apps = match &self.app_access {
            AppAccess::AllApps => 0,
            // The string header in the set's slice, and its bytes rounded up by the allocator.
            AppAccess::Apps(apps) => apps.iter().map(|a| a.as_str().len() + 32).sum(),
        };
        std::mem::size_of::<Self>() + self.org_id.as_str().len() + self.display_name.len() + apps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_revoked_once_revoked_else_expired_from_its_expiry_on_else_active() {
        let now = crate::time::now();
        let second = chrono::TimeDelta::seconds(1);
        let token = |expire_time: Option<Timestamp>, revoke_time: Option<Timestamp>| Token {
            id: TokenId::generate(),
            service_account_id: ServiceAccountId::generate(),
            display_name: DisplayName::parse("t").unwrap(),
            scopes: Scopes::parse(["mcp:tools:call"]).unwrap(),
            create_time: now - second * 10,
            created_by: UserId::parse("u").unwrap(),
            expire_time,
            revoke_time,
            revoked_by: None,
            revoke_reason: None,
            last_used_time: None,
            last_used_app_id: None,
            last_used_client_ip: None,
            hint: String::new(),
            previous_token_id: None,
            allowed_cidrs: AllowedCidrs::none(),
        };
        assert_eq!(token(None, None).state(now), TokenState::Active);
        assert_eq!(
            token(Some(now + second), None).state(now),
            TokenState::Active
        );
        assert_eq!(token(Some(now), None).state(now), TokenState::Expired);
        assert_eq!(
            token(Some(now - second), None).state(now),
            TokenState::Expired
        );
        assert_eq!(token(None, Some(now)).state(now), TokenState::Revoked);
        assert_eq!(
            token(Some(now - second), Some(now - second * 2)).state(now),
            TokenState::Revoked
        );
        assert!(token(None, None).is_live(now) && !token(Some(now), None).is_live(now));
    }

    #[test]
    fn generated_tokens_have_the_documented_shape() {
        for _ in 0..1000 {
            let token = TokenSecret::generate();
            let s = token.expose();
            assert_eq!(s.len(), 50);
            assert!(s.starts_with("emb_sa_"));
            assert!(
                s[7..]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
            assert_eq!(TokenSecret::parse(s), Ok(token.clone()));
        }
    }

    #[test]
    fn checksum_is_crc32_of_the_first_44_characters_in_unpadded_base64() {
        let token = TokenSecret::generate();
        let s = token.expose();
        let crc = crc32fast::hash(&s.as_bytes()[..44]).to_be_bytes();
        assert_eq!(URL_SAFE_NO_PAD.decode(&s[44..]).unwrap(), crc);
    }

    #[test]
    fn tokens_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(TokenSecret::generate().expose().to_owned()));
        }
    }

    #[test]
    fn every_single_character_change_is_rejected() {
        let token = TokenSecret::generate();
        let s = token.expose().as_bytes().to_vec();
        for i in 0..s.len() {
            for &replacement in ALPHABET.iter().chain(b"emb_sa!. ".iter()) {
                if replacement == s[i] {
                    continue;
                }
                let mut changed = s.clone();
                changed[i] = replacement;
                let changed = String::from_utf8(changed).unwrap();
                assert_eq!(
                    TokenSecret::parse(&changed),
                    Err(MalformedToken),
                    "position {i}"
                );
            }
        }
    }

    #[test]
    fn wrong_lengths_prefixes_and_non_ascii_are_rejected() {
        let token = TokenSecret::generate();
        let s = token.expose();
        assert!(TokenSecret::parse("").is_err());
        assert!(TokenSecret::parse(&s[..49]).is_err());
        assert!(TokenSecret::parse(&format!("{s}A")).is_err());
        assert!(TokenSecret::parse(&s.replace("emb_sa_", "emb_xx_")).is_err());
        assert!(TokenSecret::parse(&format!("émb_sa_{}", &s[8..])).is_err());
        // The product page's example is illustrative: its checksum does not verify.
        assert!(TokenSecret::parse("emb_sa_AbCdEf0123456789-_XyZ9876543210abcdef1234567").is_err());
    }

    #[test]
    fn hash_is_sha256_of_the_whole_token_and_compares_in_constant_time() {
        let token = TokenSecret::generate();
        let expected: [u8; 32] = Sha256::digest(token.expose().as_bytes()).into();
        assert_eq!(token.hash().as_bytes(), &expected);
        assert!(token.hash().ct_eq(&token.hash()));
        assert!(!token.hash().ct_eq(&TokenSecret::generate().hash()));
    }

    #[test]
    fn hint_and_debug_reveal_no_random_characters() {
        let token = TokenSecret::generate();
        let hint = token.hint();
        assert_eq!(hint, format!("emb_sa_…{}", &token.expose()[44..]));
        assert!(!hint.contains(&token.expose()[7..44]));
        assert!(!format!("{token:?}").contains(&token.expose()[7..]));
        assert_eq!(format!("{:?}", token.hash()), "TokenHash(<redacted>)");
    }
}

/// A token's latest use. `app_id` and `client_ip` come from the latest use that carried them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub at: Timestamp,
    pub app_id: Option<AppId>,
    pub client_ip: Option<IpAddr>,
}

impl Usage {
    pub(crate) fn merge(&mut self, other: &Usage) {
        self.merge_parts(other.at, other.app_id.as_ref(), other.client_ip);
    }

    /// Copies the app id only when it differs, so a token used for the same app request after
    /// request allocates nothing.
    pub(crate) fn merge_parts(
        &mut self,
        at: Timestamp,
        app_id: Option<&AppId>,
        client_ip: Option<IpAddr>,
    ) {
        let later = at >= self.at;
        if later {
            self.at = at;
        }
        // An older use only fills what the newer ones never carried.
        if let Some(app) = app_id
            && (later || self.app_id.is_none())
            && self.app_id.as_ref() != Some(app)
        {
            self.app_id = Some(app.clone());
        }
        if client_ip.is_some() && (later || self.client_ip.is_none()) {
            self.client_ip = client_ip;
        }
    }
}
