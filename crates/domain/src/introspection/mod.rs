//! Introspection: bearer token in, identity and a decision out. The hot path of the platform.

use std::net::IpAddr;
use std::sync::Arc;

use crate::cache::{IntrospectionCache, Lookup};
use crate::error::{Error, Violations};
use crate::ids::OrgId;
use crate::issued::IssuedTokens;
use crate::last_used::{LastUsed, UsageCell};
use crate::network::parse_client_ip;
use crate::scope::Scope;
use crate::service_account::AppId;
use crate::store::TokenStore;
use crate::time::{self, Timestamp};
use crate::token::{TokenRecord, TokenSecret};
use lookups::Lookups;

/// The optional checks a caller asks for along with introspection.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Checks {
    /// The org the caller acts in. App ids mean something only within an org, so an app check
    /// always comes with one.
    pub org_id: Option<OrgId>,
    pub app_id: Option<AppId>,
    pub required_scopes: Vec<Scope>,
    /// The end client's address, for tokens restricted to networks.
    pub client_ip: Option<IpAddr>,
}

impl Checks {
    /// Empty strings mean "no such check". Unknown scopes are a caller bug, not a denial.
    pub fn parse(
        org_id: &str,
        app_id: &str,
        required_scopes: &[String],
        client_ip: &str,
    ) -> Result<Self, Error> {
        let mut violations = Violations::new();
        let org_id = if org_id.is_empty() {
            if !app_id.is_empty() {
                violations.add(
                    "org_id",
                    "required when app_id is set: the org that owns the app",
                );
            }
            None
        } else {
            violations.check("org_id", OrgId::parse(org_id))
        };
        let app_id = if app_id.is_empty() {
            None
        } else {
            violations.check("app_id", AppId::parse(app_id))
        };
        let required_scopes = required_scopes
            .iter()
            .enumerate()
            // The field name is only built for a violation: this runs on every request.
            .filter_map(|(i, name)| match Scope::parse(name) {
                Ok(scope) => Some(scope),
                Err(invalid) => violations.check(format!("required_scopes[{i}]"), Err(invalid)),
            })
            .collect();
        let client_ip = if client_ip.is_empty() {
            None
        } else {
            violations.check("client_ip", parse_client_ip(client_ip))
        };
        violations.finish()?;
        Ok(Self {
            org_id,
            app_id,
            required_scopes,
            client_ip,
        })
    }
}

/// Why a presented string is not a token this service knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrecognised {
    /// Wrong prefix, length, alphabet or checksum: rejected without touching storage.
    Malformed,
    /// Well-formed, but no token has this hash.
    Unknown,
}

/// Why a known token no longer works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Revoked,
    Expired,
    /// The token is fine but its account is disabled.
    AccountDisabled,
}

/// A failed check, listed in the order the API reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Denial {
    OrgMismatch,
    /// The token is restricted to networks and the client's address is missing or outside them.
    ClientIpNotAllowed,
    AppNotGranted,
    ScopeMissing,
}

/// Every check an active token failed. Empty means allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Denials {
    /// In report order; the first is the headline reason.
    pub reasons: Vec<Denial>,
    /// Filled whenever scopes are missing, whatever else failed.
    pub missing_scopes: Vec<Scope>,
}

impl Denials {
    pub fn allowed(&self) -> bool {
        self.reasons.is_empty()
    }

    pub fn first(&self) -> Option<Denial> {
        self.reasons.first().copied()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Introspection {
    Unrecognised(Unrecognised),
    /// A known token that is revoked, expired or of a disabled account. The record is for the operator's log (a leaked
    /// old token being tried is worth a warning); it is never returned to the caller.
    Ended {
        reason: Ended,
        token: Arc<TokenRecord>,
    },
    Active {
        /// Shared, so a cache can hand out the same record without copying it.
        token: Arc<TokenRecord>,
        denials: Denials,
    },
}

/// Decides what a stored token means at `now` for `checks`. Pure, so it is tested directly.
///
/// Every check is evaluated, not just the first failing one, so that callers can log all of
/// them. An app is granted only within the account's own org: "all apps" means all apps *of
/// that org*, and an app id of another org never matches an explicit grant.
pub fn evaluate(token: Arc<TokenRecord>, checks: &Checks, now: Timestamp) -> Introspection {
    evaluate_from(token, checks, checks.client_ip, now)
}

/// [`evaluate`] for a request from `client_ip` rather than `checks.client_ip`: a caller that
/// decides many requests with one [`Checks`] (a route's requirement) need not copy it for each
/// client address.
pub fn evaluate_from(
    token: Arc<TokenRecord>,
    checks: &Checks,
    client_ip: Option<IpAddr>,
    now: Timestamp,
) -> Introspection {
    if token.revoke_time.is_some() {
        return Introspection::Ended {
            reason: Ended::Revoked,
            token,
        };
    }
    if token.expire_time.is_some_and(|expiry| expiry <= now) {
        return Introspection::Ended {
            reason: Ended::Expired,
            token,
        };
    }
    // After revocation and expiry: enabling the account brings back only the other tokens.
    if token.account.disabled {
        return Introspection::Ended {
            reason: Ended::AccountDisabled,
            token,
        };
    }
    let mut denials = Denials::default();
    let org_matches = checks
        .org_id
        .as_ref()
        .is_none_or(|org| *org == token.account.org_id);
    if !org_matches {
        denials.reasons.push(Denial::OrgMismatch);
    }
    if !token.allowed_cidrs.allows(client_ip) {
        denials.reasons.push(Denial::ClientIpNotAllowed);
    }
    if let Some(app) = &checks.app_id
        && !(org_matches && token.account.app_access.allows(app))
    {
        denials.reasons.push(Denial::AppNotGranted);
    }
    denials.missing_scopes = checks
        .required_scopes
        .iter()
        .copied()
        .filter(|scope| !token.scopes.contains(*scope))
        .collect();
    if !denials.missing_scopes.is_empty() {
        denials.reasons.push(Denial::ScopeMissing);
    }
    Introspection::Active { token, denials }
}

/// The introspection use case: cache first, storage on a miss.
pub struct Introspector<S> {
    store: S,
    cache: Arc<IntrospectionCache>,
    /// Which tokens were issued (kept even when caching is off): orders storage lookups.
    issued: Arc<IssuedTokens>,
    last_used: LastUsed,
    /// Storage lookups, in two lanes. Anyone can make up well-formed tokens: lookups of issued
    /// tokens never queue behind made-up ones, and both lanes' queries together stay below the
    /// pool size, so admin changes and last-used writes keep their connections.
    issued_lane: Lookups,
    other_lane: Lookups,
}

impl<S: TokenStore> Introspector<S> {
    /// Up to `max_lookups` (at least 1) queries for issued tokens run at once, and a quarter as
    /// many (at least 1) for tokens not known to be issued; other misses queue in their lane
    /// and are looked up in batches (see [`lookups`]).
    pub fn new(
        store: S,
        cache: Arc<IntrospectionCache>,
        issued: Arc<IssuedTokens>,
        max_lookups: usize,
    ) -> Self {
        Self {
            store,
            cache,
            issued,
            last_used: LastUsed::default(),
            issued_lane: Lookups::new(max_lookups),
            other_lane: Lookups::new(max_lookups / 4),
        }
    }

    /// Reads which tokens storage holds, so that lookups can be ordered; see [`crate::issued`].
    pub async fn load_issued(&self) -> Result<usize, crate::StoreError> {
        let prefixes = self.store.issued_prefixes().await?;
        Ok(self.issued.load(prefixes))
    }

    /// Malformed tokens are answered without touching the cache or storage. A storage failure
    /// is an error (the caller must not guess "active").
    pub async fn introspect(&self, token: &str, checks: &Checks) -> Result<Introspection, Error> {
        let Ok(hash) = TokenSecret::parse_hash(token) else {
            return Ok(Introspection::Unrecognised(Unrecognised::Malformed));
        };
        let (record, usage) = match self.cache.get(&hash) {
            Lookup::Known { record, usage } => (Some(record), Some(usage)),
            Lookup::Unknown => (None, None),
            // Boxed: the storage lookup's future is kilobytes, and every call (hits, malformed
            // tokens) would otherwise carry and copy it.
            Lookup::Miss => (Box::pin(self.fill(hash)).await?, None),
        };
        let Some(record) = record else {
            return Ok(Introspection::Unrecognised(Unrecognised::Unknown));
        };
        // The lookup was by hash; confirm the match in constant time anyway.
        if !record.token_hash.ct_eq(&hash) {
            return Ok(Introspection::Unrecognised(Unrecognised::Unknown));
        }
        let now = time::now();
        let result = evaluate(record, checks, now);
        // A use is an allowed introspection: a refused one (another network, a missing scope) is
        // not where or when the token was last used.
        if let Introspection::Active { token, denials } = &result
            && denials.allowed()
        {
            let cell = usage.unwrap_or_else(|| Arc::new(UsageCell::default()));
            self.last_used.record(
                token.token_id,
                &cell,
                now,
                checks.app_id.as_ref(),
                checks.client_ip,
            );
        }
        Ok(result)
    }

    async fn fill(&self, hash: crate::token::TokenHash) -> Result<Option<Arc<TokenRecord>>, Error> {
        let lane = if self.issued.contains(&hash) {
            &self.issued_lane
        } else {
            &self.other_lane
        };
        // Before the lookup is queued, so before the query that answers it is sent.
        let fill = self.cache.begin_fill();
        let record = lane.find(&self.store, hash).await?;
        if record.is_some() {
            self.issued.add(crate::issued::prefix(&hash));
        }
        Ok(match fill {
            Some(fill) => self.cache.insert(hash, record, fill),
            None => record.map(Arc::new),
        })
    }

    /// Writes coalesced last-used times; see [`LastUsed::flush`].
    pub async fn flush_last_used(&self) -> Result<usize, crate::StoreError> {
        self.last_used.flush(&self.store).await
    }

    pub fn cache(&self) -> &Arc<IntrospectionCache> {
        &self.cache
    }

    pub fn store(&self) -> &S {
        &self.store
    }
}

mod lookups;

pub use lookups::MAX_BATCH;

#[cfg(test)]
mod tests;
