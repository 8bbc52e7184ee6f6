//! Accounts and their app access.

use std::collections::BTreeSet;

use serde_json::json;

use super::{Admin, AdminService};
use crate::audit::{AuditAction, Target};
use crate::error::{Conflict, Error, StoreError};
use crate::ids::ServiceAccountId;
use crate::labels::Labels;
use crate::listing::AccountListing;
use crate::page::{Listing, Page};
use crate::query::{AccountQuery, After};
use crate::service_account::{
    AccountState, AppAccess, AppId, Description, DisplayName, ServiceAccount,
};
use crate::store::{AdminStore, Created};
use crate::time;
use crate::token::{Revocation, RevokeReason};

/// A validated `CreateServiceAccount`.
#[derive(Debug, Clone)]
pub struct NewServiceAccount {
    pub display_name: DisplayName,
    pub description: Description,
    pub app_access: AppAccess,
    pub labels: Labels,
}

/// A validated `UpdateServiceAccount`: `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ServiceAccountPatch {
    pub display_name: Option<DisplayName>,
    pub description: Option<Description>,
    /// Replaces the whole map.
    pub labels: Option<Labels>,
    /// Apply only to this version of the account (its etag).
    pub etag: Option<String>,
}

/// Concurrent edits of one account are retried this many times before giving up with ABORTED.
const MAX_ATTEMPTS: usize = 5;

impl<S: AdminStore> AdminService<S> {
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
            state: AccountState::Active,
            labels: new.labels,
            last_used_time: None,
            revision: 1,
        };
        let event = admin.event(
            AuditAction::ServiceAccountCreate,
            Target::ServiceAccount(account.id),
            json!({
                "display_name": account.display_name.as_str(),
                "app_access": app_access_json(&account.app_access),
                "labels": account.labels.to_json(),
            }),
        );
        let limit = self.quotas.service_accounts_per_org;
        match self
            .store
            .create_service_account(&account, limit, &event)
            .await
            .map_err(name_taken)?
        {
            Created::Created => Ok(account),
            Created::OverQuota => Err(Error::ResourceExhausted {
                subject: format!("org:{}/service_accounts", admin.org_id),
                description: format!("an org may have at most {limit} service accounts"),
            }),
            Created::NoParent => Err(Error::NotFound { kind: "org" }),
        }
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
        listing: AccountListing,
    ) -> Result<Page<ServiceAccount>, Error> {
        let query = AccountQuery {
            org: admin.org_id.clone(),
            filter: listing.filter,
            after: listing
                .page
                .after
                .map(|a| ServiceAccountId::from_uuid(a.id)),
            limit: listing.page.size.get() + 1,
        };
        let rows = self.store.list_service_accounts(&query).await?;
        // In id order: the key is the id alone.
        Ok(Page::from_query_rows(
            Listing::ServiceAccounts,
            rows,
            listing.page,
            |a| After {
                time: None,
                id: a.id.as_uuid(),
            },
        ))
    }

    pub async fn update_service_account(
        &self,
        admin: &Admin,
        id: ServiceAccountId,
        patch: ServiceAccountPatch,
    ) -> Result<ServiceAccount, Error> {
        self.modify(admin, id, AuditAction::ServiceAccountUpdate, |account| {
            if let Some(etag) = &patch.etag
                && *etag != account.etag()
            {
                return Err(Error::StaleEtag);
            }
            let mut details = serde_json::Map::new();
            if let Some(name) = &patch.display_name {
                account.display_name = name.clone();
                details.insert("display_name".into(), name.as_str().into());
            }
            if let Some(description) = &patch.description {
                account.description = description.clone();
                details.insert("description".into(), description.as_str().into());
            }
            if let Some(labels) = &patch.labels {
                account.labels = labels.clone();
                details.insert("labels".into(), labels.to_json());
            }
            Ok(Some(details.into()))
        })
        .await
    }

    /// Idempotent: disabling a disabled account returns it unchanged and records nothing.
    pub async fn set_service_account_state(
        &self,
        admin: &Admin,
        id: ServiceAccountId,
        state: AccountState,
    ) -> Result<ServiceAccount, Error> {
        let action = match state {
            AccountState::Active => AuditAction::ServiceAccountEnable,
            AccountState::Disabled => AuditAction::ServiceAccountDisable,
        };
        self.modify(admin, id, action, |account| {
            if account.state == state {
                return Ok(None);
            }
            account.state = state;
            Ok(Some(json!({})))
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
        let revocation = Revocation {
            at: event.create_time,
            by: admin.user_id.clone(),
            reason: RevokeReason::AccountDeleted,
        };
        if self
            .store
            .delete_service_account(&admin.org_id, id, &revocation, &event)
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
            Ok(Some(json!({ "app_access": app_access_json(&access) })))
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
            Ok(Some(json!({ "app_ids": ids_json(&apps) })))
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
            Ok(Some(json!({ "app_ids": ids_json(&apps) })))
        })
        .await
    }

    /// Read, change, write with optimistic locking, retrying when another writer got there
    /// first. `change` returns the audit details, or `None` when there is nothing to change
    /// (then nothing is written and the account is returned as read).
    async fn modify(
        &self,
        admin: &Admin,
        id: ServiceAccountId,
        action: AuditAction,
        change: impl Fn(&mut ServiceAccount) -> Result<Option<serde_json::Value>, Error>,
    ) -> Result<ServiceAccount, Error> {
        for _ in 0..MAX_ATTEMPTS {
            let mut account = self.get_service_account(admin, id).await?;
            let before = account.clone();
            let expected_revision = account.revision;
            // A change that changes nothing (a grant already held, the same name) is not one:
            // no write, no audit event, the same etag.
            let Some(details) = change(&mut account)?.filter(|_| account != before) else {
                return Ok(before);
            };
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
        AppAccess::Apps(apps) => Ok(apps.to_set()),
        AppAccess::AllApps => Err(Error::FailedPrecondition(
            "the service account has access to all apps; use SetAppAccess to switch it to an explicit list".into(),
        )),
    }
}

fn ids_json<'a>(apps: impl IntoIterator<Item = &'a AppId>) -> Vec<&'a str> {
    apps.into_iter().map(AppId::as_str).collect()
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

    #[test]
    fn grants_on_an_all_apps_account_are_a_failed_precondition() {
        assert!(matches!(
            explicit_apps(&AppAccess::AllApps),
            Err(Error::FailedPrecondition(_))
        ));
        assert!(explicit_apps(&AppAccess::none()).unwrap().is_empty());
    }
}
