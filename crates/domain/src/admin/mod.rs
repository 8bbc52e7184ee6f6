//! The admin use cases: what an org admin may do, and the rules that apply. Accounts and
//! their app access are in `accounts`, tokens in `tokens`.

mod accounts;
mod policy;
mod report;
mod tokens;

use crate::audit::{AuditAction, AuditEvent, AuditRecord, Target};
use crate::error::Error;
use crate::ids::{AuditEventId, OrgId, UserId};
use crate::listing::AuditListing;
use crate::page::{Listing, Page};
use crate::query::{After, AuditQuery};
use crate::store::AdminStore;
use crate::time;

pub use accounts::{NewServiceAccount, ServiceAccountPatch};
pub use report::{CredentialReport, REPORT_COLUMNS};
pub use tokens::{MAX_EXPIRING_WITHIN_SECONDS, MAX_GRACE_SECONDS, NewToken, Rotation, TokenPatch};

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
    validate_only: bool,
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
            validate_only: false,
        })
    }

    /// The same admin, for a request that only validates (AIP-163): every change it makes is
    /// checked by the store and rolled back.
    pub fn validating(self, validate_only: bool) -> Self {
        Self {
            validate_only,
            ..self
        }
    }

    pub fn validate_only(&self) -> bool {
        self.validate_only
    }

    pub fn user_id(&self) -> &UserId {
        &self.user_id
    }

    pub fn org_id(&self) -> &OrgId {
        &self.org_id
    }

    pub(super) fn event(
        &self,
        action: AuditAction,
        target: Target,
        details: serde_json::Value,
    ) -> AuditEvent {
        AuditEvent {
            id: AuditEventId::generate(),
            org_id: self.org_id.clone(),
            actor: self.user_id.clone(),
            action,
            target,
            request_id: self.request_id.clone(),
            create_time: time::now(),
            details: details.to_string(),
            validate_only: self.validate_only,
        }
    }
}

/// The admin use cases. Cache coherence is not their concern: the store commits each change
/// with its audit event and publishes it to every replica's cache (see [`crate::audit`]).
pub struct AdminService<S> {
    pub(super) store: S,
    pub(super) quotas: Quotas,
}

/// Limits per tenant, so that one org cannot degrade the service for all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    pub service_accounts_per_org: u32,
    /// Tokens that are neither revoked nor expired, per service account.
    pub live_tokens_per_service_account: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            service_accounts_per_org: 1000,
            live_tokens_per_service_account: 100,
        }
    }
}

impl<S: AdminStore> AdminService<S> {
    pub fn new(store: S, quotas: Quotas) -> Self {
        Self { store, quotas }
    }

    pub async fn list_audit_events(
        &self,
        admin: &Admin,
        listing: AuditListing,
    ) -> Result<Page<AuditRecord>, Error> {
        let query = AuditQuery {
            org: admin.org_id.clone(),
            filter: listing.filter,
            order: listing.order,
            after: listing.page.after.map(|after| After {
                time: after.time,
                id: AuditEventId::from_uuid(after.id),
            }),
            limit: listing.page.size.get() + 1,
        };
        let rows = self.store.list_audit_events(&query).await?;
        Ok(Page::from_query_rows(
            Listing::AuditEvents,
            rows,
            listing.page,
            |event| After {
                time: Some(event.create_time),
                id: event.id.as_uuid(),
            },
        ))
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
}
