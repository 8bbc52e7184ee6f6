//! The ports storage implements. Every mutating method takes the audit event that records it:
//! an implementation commits both in one transaction or neither, and, when the event's action
//! changes introspection answers, also tells other replicas (in that transaction) and this
//! replica's [`AccountChanges`] (after the commit).

use std::future::Future;

use crate::audit::{AuditEvent, AuditRecord};
use crate::error::StoreError;
use crate::ids::{OrgId, ServiceAccountId, TokenId, UserId};
use crate::service_account::ServiceAccount;
use crate::time::Timestamp;
use crate::token::{Token, TokenHash, TokenRecord};

pub type StoreResult<T> = Result<T, StoreError>;

/// What creating a row can come to besides a storage failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Created,
    /// The parent (the service account) does not exist in the org; nothing was written.
    NoParent,
    /// The quota was already used up; nothing was written.
    OverQuota,
}

/// Told after a committed change that can alter introspection answers for an account (the
/// introspection cache listens), and when another replica reports one.
pub trait AccountChanges: Send + Sync + 'static {
    fn account_changed(&self, account: ServiceAccountId);

    /// A token was issued (its hash's first 8 bytes, see [`crate::issued`]).
    fn token_issued(&self, _prefix: u64) {}
}

/// What the admin use cases need from storage. Every read is scoped to an org.
pub trait AdminStore: Send + Sync + 'static {
    /// Fails with `Conflict(ServiceAccountDisplayName)` when the org already has the name;
    /// `OverQuota` when the org already has `max_per_org` accounts (checked atomically with the
    /// insert: two concurrent creates cannot both pass at the limit).
    fn create_service_account(
        &self,
        account: &ServiceAccount,
        max_per_org: u32,
        event: &AuditEvent,
    ) -> impl Future<Output = StoreResult<Created>> + Send;

    fn get_service_account(
        &self,
        org: &OrgId,
        id: ServiceAccountId,
    ) -> impl Future<Output = StoreResult<Option<ServiceAccount>>> + Send;

    /// Up to `limit` accounts with ids greater than `after`, in id order.
    fn list_service_accounts(
        &self,
        org: &OrgId,
        after: Option<ServiceAccountId>,
        limit: u32,
    ) -> impl Future<Output = StoreResult<Vec<ServiceAccount>>> + Send;

    /// Stores `account` (name, description, app access, update time, revision) only if the
    /// stored revision is still `expected_revision`; otherwise `Stale`.
    fn update_service_account(
        &self,
        account: &ServiceAccount,
        expected_revision: i64,
        event: &AuditEvent,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Deletes the account with its grants and tokens. `false` if it did not exist (and then
    /// nothing, not even the event, is written).
    fn delete_service_account(
        &self,
        org: &OrgId,
        id: ServiceAccountId,
        event: &AuditEvent,
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    /// `NoParent` if the account does not exist (checked in the same transaction, so a token
    /// never outlives a concurrent delete); `OverQuota` if it already has `max_live` tokens
    /// that are neither revoked nor expired (checked atomically with the insert).
    fn create_token(
        &self,
        org: &OrgId,
        token: &Token,
        hash: &TokenHash,
        max_live: u32,
        event: &AuditEvent,
    ) -> impl Future<Output = StoreResult<Created>> + Send;

    fn get_token(
        &self,
        org: &OrgId,
        account: ServiceAccountId,
        id: TokenId,
    ) -> impl Future<Output = StoreResult<Option<Token>>> + Send;

    fn list_tokens(
        &self,
        org: &OrgId,
        account: ServiceAccountId,
        after: Option<TokenId>,
        limit: u32,
    ) -> impl Future<Output = StoreResult<Vec<Token>>> + Send;

    /// Marks the token revoked if it is not already. `false` if it was already revoked or does
    /// not exist (and then nothing is written).
    fn revoke_token(
        &self,
        org: &OrgId,
        account: ServiceAccountId,
        id: TokenId,
        at: Timestamp,
        by: &UserId,
        event: &AuditEvent,
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    fn list_audit_events(
        &self,
        org: &OrgId,
        after: Option<uuid::Uuid>,
        limit: u32,
    ) -> impl Future<Output = StoreResult<Vec<AuditRecord>>> + Send;
}

/// What introspection needs from storage.
pub trait TokenStore: Send + Sync + 'static {
    /// The token with this hash, with its account's identity and app access.
    fn find_token(
        &self,
        hash: &TokenHash,
    ) -> impl Future<Output = StoreResult<Option<TokenRecord>>> + Send;

    /// The first 8 bytes (see [`crate::issued::prefix`]) of every stored token's hash.
    fn issued_prefixes(&self) -> impl Future<Output = StoreResult<Vec<u64>>> + Send;

    /// Sets each token's last-used time, never moving it backwards.
    fn record_last_used(
        &self,
        uses: &[(TokenId, Timestamp)],
    ) -> impl Future<Output = StoreResult<()>> + Send;
}
