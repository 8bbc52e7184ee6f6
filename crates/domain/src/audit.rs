//! Audit events: one per admin mutation, committed in the same transaction as the change.

use crate::ids::{AuditEventId, OrgId, UserId};
use crate::time::Timestamp;

/// The mutations that are audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    ServiceAccountCreate,
    ServiceAccountUpdate,
    ServiceAccountDelete,
    AppAccessSet,
    AppAccessGrant,
    AppAccessRevoke,
    TokenCreate,
    TokenRevoke,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::ServiceAccountCreate => "service_account.create",
            AuditAction::ServiceAccountUpdate => "service_account.update",
            AuditAction::ServiceAccountDelete => "service_account.delete",
            AuditAction::AppAccessSet => "service_account.app_access.set",
            AuditAction::AppAccessGrant => "service_account.app_access.grant",
            AuditAction::AppAccessRevoke => "service_account.app_access.revoke",
            AuditAction::TokenCreate => "token.create",
            AuditAction::TokenRevoke => "token.revoke",
        }
    }

    pub fn target_type(self) -> &'static str {
        match self {
            AuditAction::TokenCreate | AuditAction::TokenRevoke => "token",
            _ => "service_account",
        }
    }
}

/// A recorded mutation. Read back as stored, so `action` and `target_type` are plain strings.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub id: AuditEventId,
    pub org_id: OrgId,
    pub actor: UserId,
    pub action: String,
    pub target_type: String,
    pub target_id: String,
    pub request_id: String,
    pub create_time: Timestamp,
    /// A JSON object describing the change. Never contains secrets.
    pub details: String,
}
