//! Tokens: issued (the secret shown once), listed and revoked.

use serde_json::json;

use super::{Admin, AdminService};
use crate::audit::{AuditAction, Target};
use crate::error::Error;
use crate::ids::{ServiceAccountId, TokenId};
use crate::page::{Listing, Page, PageRequest};
use crate::scope::Scopes;
use crate::service_account::DisplayName;
use crate::store::{AdminStore, Created};
use crate::time::{self, Timestamp};
use crate::token::{Token, TokenSecret};

/// A validated `CreateToken` (the expiry is checked against the clock by the use case).
#[derive(Debug, Clone)]
pub struct NewToken {
    pub display_name: DisplayName,
    pub scopes: Scopes,
    pub expire_time: Option<Timestamp>,
}

impl<S: AdminStore> AdminService<S> {
    pub async fn create_token(
        &self,
        admin: &Admin,
        account_id: ServiceAccountId,
        new: NewToken,
    ) -> Result<(Token, TokenSecret), Error> {
        let now = time::now();
        if new.expire_time.is_some_and(|expiry| expiry <= now) {
            return Err(Error::invalid("expire_time", "must be in the future"));
        }
        let secret = TokenSecret::generate();
        let token = Token {
            id: TokenId::generate(),
            service_account_id: account_id,
            display_name: new.display_name,
            scopes: new.scopes,
            create_time: now,
            created_by: admin.user_id.clone(),
            expire_time: new.expire_time,
            revoke_time: None,
            revoked_by: None,
            last_used_time: None,
            hint: secret.hint(),
        };
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
            Created::OverQuota => Err(Error::ResourceExhausted {
                subject: format!("service_account:{account_id}/tokens"),
                description: format!(
                    "a service account may have at most {limit} tokens that are neither revoked \
                     nor expired; revoke one first"
                ),
            }),
        }
    }

    pub async fn list_tokens(
        &self,
        admin: &Admin,
        account_id: ServiceAccountId,
        page: PageRequest,
    ) -> Result<Page<Token>, Error> {
        self.get_service_account(admin, account_id).await?;
        let after = page.after.map(TokenId::from_uuid);
        let rows = self
            .store
            .list_tokens(&admin.org_id, account_id, after, page.size.get() + 1)
            .await?;
        Ok(Page::from_rows(Listing::Tokens, rows, page.size, |t| {
            t.id.as_uuid()
        }))
    }

    /// Idempotent: revoking a revoked token returns it unchanged and records nothing.
    pub async fn revoke_token(
        &self,
        admin: &Admin,
        account_id: ServiceAccountId,
        token_id: TokenId,
    ) -> Result<Token, Error> {
        let not_found = || Error::NotFound { kind: "token" };
        let token = self
            .store
            .get_token(&admin.org_id, account_id, token_id)
            .await?
            .ok_or_else(not_found)?;
        if token.revoke_time.is_none() {
            let event = admin.event(
                AuditAction::TokenRevoke,
                Target::Token {
                    service_account_id: account_id,
                    token_id,
                },
                json!({ "service_account_id": account_id.to_string() }),
            );
            self.store
                .revoke_token(
                    &admin.org_id,
                    account_id,
                    token_id,
                    time::now(),
                    &admin.user_id,
                    &event,
                )
                .await?;
        }
        self.store
            .get_token(&admin.org_id, account_id, token_id)
            .await?
            .ok_or_else(not_found)
    }
}
