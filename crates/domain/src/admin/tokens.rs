//! Tokens: issued (the secret shown once), rotated, listed, changed and revoked.

use chrono::TimeDelta;
use serde_json::json;

use super::{Admin, AdminService};
use crate::audit::{AuditAction, Target};
use crate::error::Error;
use crate::ids::{ServiceAccountId, TokenId};
use crate::listing::TokenListing;
use crate::network::AllowedCidrs;
use crate::page::{Listing, Page, TimedPageRequest};
use crate::query::{After, Cmp, Cond, Order, TokenPredicate, TokenQuery, TokenTime};
use crate::scope::Scopes;
use crate::service_account::DisplayName;
use crate::store::{AdminStore, Created, Ending, Issue, Rotated};
use crate::time::{self, SECONDS_PER_DAY, Timestamp};
use crate::token::{Revocation, RevokeReason, Token, TokenSecret, TokenState};

/// A rotation's grace period is at most this long.
pub const MAX_GRACE_SECONDS: i64 = 30 * SECONDS_PER_DAY;
/// `ListExpiringTokens` looks at most this far ahead.
pub const MAX_EXPIRING_WITHIN_SECONDS: i64 = 365 * SECONDS_PER_DAY;

/// A validated `CreateToken` (the expiry is checked against the clock and the org's policy by
/// the use case).
#[derive(Debug, Clone)]
pub struct NewToken {
    pub display_name: DisplayName,
    pub scopes: Scopes,
    pub expire_time: Option<Timestamp>,
    pub allowed_cidrs: AllowedCidrs,
}

/// A validated `RotateToken`.
#[derive(Debug, Clone)]
pub struct Rotation {
    /// Zero: the old token is revoked at once.
    pub grace_period: TimeDelta,
    /// The new token's expiry; `None` follows the org's policy.
    pub expire_time: Option<Timestamp>,
}

/// A validated `UpdateToken`: `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct TokenPatch {
    pub display_name: Option<DisplayName>,
    pub allowed_cidrs: Option<AllowedCidrs>,
}

fn not_found() -> Error {
    Error::NotFound { kind: "token" }
}

fn over_quota(account_id: ServiceAccountId, limit: u32) -> Error {
    Error::ResourceExhausted {
        subject: format!("service_account:{account_id}/tokens"),
        description: format!(
            "a service account may have at most {limit} tokens that are neither revoked nor \
             expired; revoke one first"
        ),
    }
}

impl<S: AdminStore> AdminService<S> {
    /// The expiry a new token gets at `now`: the requested one if it lies ahead and the org's
    /// policy allows it, else what the policy gives.
    async fn new_expiry(
        &self,
        admin: &Admin,
        requested: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Option<Timestamp>, Error> {
        if requested.is_some_and(|expiry| expiry <= now) {
            return Err(Error::invalid("expire_time", "must be in the future"));
        }
        let policy = self.store.get_token_policy(&admin.org_id).await?.policy;
        policy.expiry(requested, now)
    }

    fn new_token(
        admin: &Admin,
        account_id: ServiceAccountId,
        secret: &TokenSecret,
        now: Timestamp,
        expire_time: Option<Timestamp>,
    ) -> impl FnOnce(DisplayName, Scopes, AllowedCidrs) -> Token {
        let created_by = admin.user_id.clone();
        let hint = secret.hint();
        move |display_name, scopes, allowed_cidrs| Token {
            id: TokenId::generate(),
            service_account_id: account_id,
            display_name,
            scopes,
            create_time: now,
            created_by,
            expire_time,
            revoke_time: None,
            revoked_by: None,
            revoke_reason: None,
            last_used_time: None,
            last_used_app_id: None,
            last_used_client_ip: None,
            hint,
            previous_token_id: None,
            allowed_cidrs,
        }
    }

    pub async fn create_token(
        &self,
        admin: &Admin,
        account_id: ServiceAccountId,
        new: NewToken,
    ) -> Result<(Token, TokenSecret), Error> {
        let now = time::now();
        let expire_time = self.new_expiry(admin, new.expire_time, now).await?;
        let secret = TokenSecret::generate();
        let token = Self::new_token(admin, account_id, &secret, now, expire_time)(
            new.display_name,
            new.scopes,
            new.allowed_cidrs,
        );
        let event = admin.event(
            AuditAction::TokenCreate,
            Target::Token {
                service_account_id: account_id,
                token_id: token.id,
            },
            json!({
                "service_account_id": account_id.to_string(),
                "display_name": token.display_name.as_str(),
                "scopes": token.scopes.names().collect::<Vec<_>>(),
                "expire_time": token.expire_time.map(|t| t.to_rfc3339()),
                "allowed_cidrs": cidrs_json(&token.allowed_cidrs),
            }),
        );
        let limit = self.quotas.live_tokens_per_service_account;
        match self
            .store
            .create_token(&admin.org_id, &token, &secret.hash(), limit, &event)
            .await?
        {
            Created::Created => Ok((token, secret)),
            Created::NoParent => Err(Error::NotFound {
                kind: "service account",
            }),
            Created::OverQuota => Err(over_quota(account_id, limit)),
        }
    }

    /// Issues a replacement for a live token and ends the old one: it keeps working for the
    /// grace period at most, or is revoked at once when there is none. Returns the new token,
    /// its secret, and the old token after the change.
    pub async fn rotate_token(
        &self,
        admin: &Admin,
        account_id: ServiceAccountId,
        token_id: TokenId,
        rotation: Rotation,
    ) -> Result<(Token, TokenSecret, Token), Error> {
        let old = self.token(admin, account_id, token_id).await?;
        let now = time::now();
        if !old.is_live(now) {
            return Err(Error::FailedPrecondition(
                "the token is revoked or expired: create a new token instead of rotating it".into(),
            ));
        }
        let expire_time = self.new_expiry(admin, rotation.expire_time, now).await?;
        let secret = TokenSecret::generate();
        let mut new = Self::new_token(admin, account_id, &secret, now, expire_time)(
            old.display_name.clone(),
            old.scopes,
            old.allowed_cidrs.clone(),
        );
        new.previous_token_id = Some(old.id);
        let ending = if rotation.grace_period.is_zero() {
            Ending::Revoke(Revocation {
                at: now,
                by: admin.user_id.clone(),
                reason: RevokeReason::Rotated,
            })
        } else {
            Ending::ExpireBy(now + rotation.grace_period)
        };
        let event = admin.event(
            AuditAction::TokenRotate,
            Target::Token {
                service_account_id: account_id,
                token_id,
            },
            json!({
                "service_account_id": account_id.to_string(),
                "new_token_id": new.id.to_string(),
                "grace_period_seconds": rotation.grace_period.num_seconds(),
                "expire_time": new.expire_time.map(|t| t.to_rfc3339()),
            }),
        );
        let limit = self.quotas.live_tokens_per_service_account;
        match self
            .store
            .rotate_token(
                &admin.org_id,
                token_id,
                &ending,
                Issue {
                    token: &new,
                    hash: &secret.hash(),
                    max_live: limit,
                },
                &event,
            )
            .await?
        {
            Rotated::Rotated => {}
            Rotated::OldTokenEnded => {
                return Err(Error::FailedPrecondition(
                    "the token is revoked or expired: create a new token instead of rotating it"
                        .into(),
                ));
            }
            Rotated::OverQuota => return Err(over_quota(account_id, limit)),
        }
        let previous = if admin.validate_only() {
            ended(old, &ending)
        } else {
            self.token(admin, account_id, token_id).await?
        };
        Ok((new, secret, previous))
    }

    /// One account's tokens, or the org's, as the listing asks.
    pub async fn list_tokens(
        &self,
        admin: &Admin,
        listing: TokenListing,
    ) -> Result<Page<Token>, Error> {
        if let Some(account) = listing.account {
            self.get_service_account(admin, account).await?;
        }
        let query = TokenQuery {
            org: admin.org_id.clone(),
            account: listing.account,
            filter: listing.filter,
            order: listing.order,
            after: listing.page.after.map(|after| After {
                time: after.time,
                id: TokenId::from_uuid(after.id),
            }),
            limit: listing.page.size.get() + 1,
            now: time::now(),
        };
        let rows = self.store.list_tokens(&query).await?;
        let tokens = rows.into_iter().map(|listed| listed.token).collect();
        Ok(Page::from_query_rows(
            Listing::Tokens,
            tokens,
            listing.page,
            |token| {
                let key = query.key(token);
                After {
                    time: key.time,
                    id: key.id.as_uuid(),
                }
            },
        ))
    }

    /// The org's unrevoked tokens expiring between now and `within` from now, soonest first.
    pub async fn list_expiring_tokens(
        &self,
        admin: &Admin,
        within: TimeDelta,
        page: TimedPageRequest,
    ) -> Result<Page<Token>, Error> {
        let now = time::now();
        let expire = |cmp, at| Cond::Is(TokenPredicate::Time(TokenTime::Expire, cmp, at));
        let query = TokenQuery {
            org: admin.org_id.clone(),
            account: None,
            filter: Some(Cond::All(vec![
                Cond::Not(Box::new(Cond::Is(TokenPredicate::State(
                    TokenState::Revoked,
                )))),
                expire(Cmp::Ge, now),
                expire(Cmp::Le, now + within),
            ])),
            order: Order {
                by: TokenTime::Expire,
                descending: false,
            },
            after: page.after.map(|(time, id)| After {
                time: Some(time),
                id: TokenId::from_uuid(id),
            }),
            limit: page.size.get() + 1,
            now,
        };
        let rows = self.store.list_tokens(&query).await?;
        let tokens = rows.into_iter().map(|listed| listed.token).collect();
        Ok(Page::from_timed_rows(
            Listing::ExpiringTokens,
            tokens,
            page.size,
            |t| (t.expire_time.unwrap_or(now), t.id.as_uuid()),
        ))
    }

    /// Changes a token's display name and/or allowed networks.
    pub async fn update_token(
        &self,
        admin: &Admin,
        account_id: ServiceAccountId,
        token_id: TokenId,
        patch: TokenPatch,
    ) -> Result<Token, Error> {
        let mut token = self.token(admin, account_id, token_id).await?;
        let mut details = serde_json::Map::new();
        details.insert("service_account_id".into(), account_id.to_string().into());
        if let Some(name) = patch.display_name {
            details.insert("display_name".into(), name.as_str().into());
            token.display_name = name;
        }
        if let Some(cidrs) = patch.allowed_cidrs {
            details.insert("allowed_cidrs".into(), cidrs_json(&cidrs).into());
            token.allowed_cidrs = cidrs;
        }
        let event = admin.event(
            AuditAction::TokenUpdate,
            Target::Token {
                service_account_id: account_id,
                token_id,
            },
            details.into(),
        );
        self.store
            .update_token(&admin.org_id, &token, &event)
            .await?;
        if admin.validate_only() {
            return Ok(token);
        }
        self.token(admin, account_id, token_id).await
    }

    /// Idempotent: revoking a revoked token returns it unchanged and records nothing.
    pub async fn revoke_token(
        &self,
        admin: &Admin,
        account_id: ServiceAccountId,
        token_id: TokenId,
    ) -> Result<Token, Error> {
        let token = self.token(admin, account_id, token_id).await?;
        if token.revoke_time.is_none() {
            let event = admin.event(
                AuditAction::TokenRevoke,
                Target::Token {
                    service_account_id: account_id,
                    token_id,
                },
                json!({ "service_account_id": account_id.to_string() }),
            );
            let revocation = Revocation {
                at: event.create_time,
                by: admin.user_id.clone(),
                reason: RevokeReason::Admin,
            };
            self.store
                .revoke_token(&admin.org_id, account_id, token_id, &revocation, &event)
                .await?;
            if admin.validate_only() {
                return Ok(ended(token, &Ending::Revoke(revocation)));
            }
        }
        self.token(admin, account_id, token_id).await
    }

    /// A token of an existing account of the admin's org.
    async fn token(
        &self,
        admin: &Admin,
        account_id: ServiceAccountId,
        token_id: TokenId,
    ) -> Result<Token, Error> {
        // A deleted account's tokens are kept for introspection, not for admins.
        self.get_service_account(admin, account_id)
            .await
            .map_err(|e| match e {
                Error::NotFound { .. } => not_found(),
                other => other,
            })?;
        self.store
            .get_token(&admin.org_id, account_id, token_id)
            .await?
            .ok_or_else(not_found)
    }
}

/// A live token as `ending` leaves it: what the store writes, for a change only validated.
fn ended(mut token: Token, ending: &Ending) -> Token {
    match ending {
        Ending::ExpireBy(at) => {
            token.expire_time = Some(token.expire_time.map_or(*at, |t| t.min(*at)));
        }
        Ending::Revoke(revocation) => {
            token.revoke_time = Some(revocation.at);
            token.revoked_by = Some(revocation.by.clone());
            token.revoke_reason = Some(revocation.reason);
        }
    }
    token
}

fn cidrs_json(cidrs: &AllowedCidrs) -> Vec<String> {
    cidrs.iter().map(ToString::to_string).collect()
}
