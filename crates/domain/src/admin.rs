//! The admin use cases: what an org admin may do, and the rules that apply.

use std::collections::BTreeSet;

use serde_json::json;

use crate::audit::{AuditAction, AuditEvent, AuditRecord, Target};
use crate::error::{Conflict, Error, StoreError};
use crate::ids::{AuditEventId, OrgId, ServiceAccountId, TokenId, UserId};
use crate::page::{Listing, Page, PageRequest};
use crate::scope::Scopes;
use crate::service_account::{AppAccess, AppId, Description, DisplayName, ServiceAccount};
use crate::store::AdminStore;
use crate::time::{self, Timestamp};
use crate::token::{Token, TokenSecret};

/// The role a caller needs for any admin operation.
pub const ORG_ADMIN_ROLE: &str = "org_admin";

/// An authenticated caller, as the transport's credential check established it.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: UserId,
    pub org_id: OrgId,
    pub roles: Vec<String>,
}

/// An authorised org admin. Only [`Admin::authorize`] makes one, so every use case taking an
/// `&Admin` is guarded by construction.
#[derive(Debug, Clone)]
pub struct Admin {
    user_id: UserId,
    org_id: OrgId,
    request_id: String,
}

impl Admin {
    pub fn authorize(principal: Principal, request_id: String) -> Result<Self, Error> {
        if !principal.roles.iter().any(|role| role == ORG_ADMIN_ROLE) {
            return Err(Error::PermissionDenied(format!(
                "the {ORG_ADMIN_ROLE} role is required"
            )));
        }
        Ok(Self {
            user_id: principal.user_id,
            org_id: principal.org_id,
            request_id,
        })
    }

    pub fn user_id(&self) -> &UserId {
        &self.user_id
    }

    pub fn org_id(&self) -> &OrgId {
        &self.org_id
    }

    fn event(&self, action: AuditAction, target: Target, details: serde_json::Value) -> AuditEvent {
        AuditEvent {
            id: AuditEventId::generate(),
            org_id: self.org_id.clone(),
            actor: self.user_id.clone(),
            action,
            target,
            request_id: self.request_id.clone(),
            create_time: time::now(),
            details: details.to_string(),
        }
    }
}

/// A validated `CreateServiceAccount`.
#[derive(Debug, Clone)]
pub struct NewServiceAccount {
    pub display_name: DisplayName,
    pub description: Description,
    pub app_access: AppAccess,
}

/// A validated `UpdateServiceAccount`: `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ServiceAccountPatch {
    pub display_name: Option<DisplayName>,
    pub description: Option<Description>,
}

/// A validated `CreateToken` (the expiry is checked against the clock by the use case).
#[derive(Debug, Clone)]
pub struct NewToken {
    pub display_name: DisplayName,
    pub scopes: Scopes,
    pub expire_time: Option<Timestamp>,
}

/// Concurrent edits of one account are retried this many times before giving up with ABORTED.
const MAX_ATTEMPTS: usize = 5;

/// The admin use cases. Cache coherence is not their concern: the store commits each change
/// with its audit event and publishes it to every replica's cache (see [`crate::audit`]).
pub struct AdminService<S> {
    store: S,
}

impl<S: AdminStore> AdminService<S> {
    pub fn new(store: S) -> Self {
        Self { store }
    }

    pub async fn create_service_account(
        &self,
        admin: &Admin,
        new: NewServiceAccount,
    ) -> Result<ServiceAccount, Error> {
        let now = time::now();
        let account = ServiceAccount {
            id: ServiceAccountId::generate(),
            org_id: admin.org_id.clone(),
            display_name: new.display_name,
            description: new.description,
            app_access: new.app_access,
            create_time: now,
            update_time: now,
            created_by: admin.user_id.clone(),
            revision: 1,
        };
        let event = admin.event(
            AuditAction::ServiceAccountCreate,
            Target::ServiceAccount(account.id),
            json!({
                "display_name": account.display_name.as_str(),
                "app_access": app_access_json(&account.app_access),
            }),
        );
        self.store
            .create_service_account(&account, &event)
            .await
            .map_err(name_taken)?;
        Ok(account)
    }

    pub async fn get_service_account(
        &self,
        admin: &Admin,
        id: ServiceAccountId,
    ) -> Result<ServiceAccount, Error> {
        self.store
            .get_service_account(&admin.org_id, id)
            .await?
            .ok_or(Error::NotFound {
                kind: "service account",
            })
    }

    pub async fn list_service_accounts(
        &self,
        admin: &Admin,
        page: PageRequest,
    ) -> Result<Page<ServiceAccount>, Error> {
        let after = page.after.map(ServiceAccountId::from_uuid);
        let rows = self
            .store
            .list_service_accounts(&admin.org_id, after, page.size.get() + 1)
            .await?;
        Ok(Page::from_rows(
            Listing::ServiceAccounts,
            rows,
            page.size,
            |a| a.id.as_uuid(),
        ))
    }

    pub async fn update_service_account(
        &self,
        admin: &Admin,
        id: ServiceAccountId,
        patch: ServiceAccountPatch,
    ) -> Result<ServiceAccount, Error> {
        self.modify(admin, id, AuditAction::ServiceAccountUpdate, |account| {
            let mut details = serde_json::Map::new();
            if let Some(name) = &patch.display_name {
                account.display_name = name.clone();
                details.insert("display_name".into(), name.as_str().into());
            }
            if let Some(description) = &patch.description {
                account.description = description.clone();
                details.insert("description".into(), description.as_str().into());
            }
            Ok(details.into())
        })
        .await
    }

    pub async fn delete_service_account(
        &self,
        admin: &Admin,
        id: ServiceAccountId,
    ) -> Result<(), Error> {
        let event = admin.event(
            AuditAction::ServiceAccountDelete,
            Target::ServiceAccount(id),
            json!({}),
        );
        if self
            .store
            .delete_service_account(&admin.org_id, id, &event)
            .await?
        {
            Ok(())
        } else {
            Err(Error::NotFound {
                kind: "service account",
            })
        }
    }

    pub async fn set_app_access(
        &self,
        admin: &Admin,
        id: ServiceAccountId,
        access: AppAccess,
    ) -> Result<ServiceAccount, Error> {
        self.modify(admin, id, AuditAction::AppAccessSet, |account| {
            account.app_access = access.clone();
            Ok(json!({ "app_access": app_access_json(&access) }))
        })
        .await
    }

    pub async fn grant_app_access(
        &self,
        admin: &Admin,
        id: ServiceAccountId,
        apps: BTreeSet<AppId>,
    ) -> Result<ServiceAccount, Error> {
        self.modify(admin, id, AuditAction::AppAccessGrant, |account| {
            let current = explicit_apps(&account.app_access)?;
            let merged = current.union(&apps).cloned().collect();
            account.app_access =
                AppAccess::explicit(merged).map_err(|e| Error::invalid("app_ids", e.0))?;
            Ok(json!({ "app_ids": ids_json(&apps) }))
        })
        .await
    }

    pub async fn revoke_app_access(
        &self,
        admin: &Admin,
        id: ServiceAccountId,
        apps: BTreeSet<AppId>,
    ) -> Result<ServiceAccount, Error> {
        self.modify(admin, id, AuditAction::AppAccessRevoke, |account| {
            let current = explicit_apps(&account.app_access)?;
            account.app_access = AppAccess::Apps(current.difference(&apps).cloned().collect());
            Ok(json!({ "app_ids": ids_json(&apps) }))
        })
        .await
    }

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
        if self
            .store
            .create_token(&admin.org_id, &token, &secret.hash(), &event)
            .await?
        {
            Ok((token, secret))
        } else {
            Err(Error::NotFound {
                kind: "service account",
            })
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

    pub async fn list_audit_events(
        &self,
        admin: &Admin,
        page: PageRequest,
    ) -> Result<Page<AuditRecord>, Error> {
        let rows = self
            .store
            .list_audit_events(&admin.org_id, page.after, page.size.get() + 1)
            .await?;
        Ok(Page::from_rows(
            Listing::AuditEvents,
            rows,
            page.size,
            |e| e.id.as_uuid(),
        ))
    }

    /// Read, change, write with optimistic locking, retrying when another writer got there
    /// first. `change` returns the audit details.
    async fn modify(
        &self,
        admin: &Admin,
        id: ServiceAccountId,
        action: AuditAction,
        change: impl Fn(&mut ServiceAccount) -> Result<serde_json::Value, Error>,
    ) -> Result<ServiceAccount, Error> {
        for _ in 0..MAX_ATTEMPTS {
            let mut account = self.get_service_account(admin, id).await?;
            let expected_revision = account.revision;
            let details = change(&mut account)?;
            account.revision += 1;
            account.update_time = time::now();
            let event = admin.event(action, Target::ServiceAccount(id), details);
            match self
                .store
                .update_service_account(&account, expected_revision, &event)
                .await
            {
                Ok(()) => return Ok(account),
                Err(StoreError::Stale) => continue,
                Err(other) => return Err(name_taken(other)),
            }
        }
        Err(Error::Aborted)
    }
}

fn name_taken(error: StoreError) -> Error {
    match error {
        StoreError::Conflict(Conflict::ServiceAccountDisplayName) => Error::AlreadyExists {
            field: "display_name",
            message: "a service account with this display name already exists in the org".into(),
        },
        other => other.into(),
    }
}

fn explicit_apps(access: &AppAccess) -> Result<BTreeSet<AppId>, Error> {
    match access {
        AppAccess::Apps(apps) => Ok(apps.clone()),
        AppAccess::AllApps => Err(Error::FailedPrecondition(
            "the service account has access to all apps; use SetAppAccess to switch it to an explicit list".into(),
        )),
    }
}

fn ids_json(apps: &BTreeSet<AppId>) -> Vec<&str> {
    apps.iter().map(AppId::as_str).collect()
}

fn app_access_json(access: &AppAccess) -> serde_json::Value {
    match access {
        AppAccess::AllApps => json!({ "all_apps": true }),
        AppAccess::Apps(apps) => json!({ "all_apps": false, "app_ids": ids_json(apps) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(roles: &[&str]) -> Principal {
        Principal {
            user_id: UserId::parse("u1").unwrap(),
            org_id: OrgId::parse("o1").unwrap(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn only_org_admins_are_authorised() {
        assert!(Admin::authorize(principal(&["viewer", "org_admin"]), "r".into()).is_ok());
        assert!(matches!(
            Admin::authorize(principal(&["viewer"]), "r".into()),
            Err(Error::PermissionDenied(_))
        ));
        assert!(Admin::authorize(principal(&[]), "r".into()).is_err());
        assert!(Admin::authorize(principal(&["ORG_ADMIN"]), "r".into()).is_err());
    }

    #[test]
    fn grants_on_an_all_apps_account_are_a_failed_precondition() {
        assert!(matches!(
            explicit_apps(&AppAccess::AllApps),
            Err(Error::FailedPrecondition(_))
        ));
        assert!(explicit_apps(&AppAccess::none()).unwrap().is_empty());
    }
}
