//! The ports storage implements. Every mutating method takes the audit event that records it:
//! an implementation commits both in one transaction or neither, and, when the event's action
//! changes introspection answers, also tells other replicas (in that transaction) and this
//! replica's [`ChangeBus`](crate::changes::ChangeBus) (after the commit).

use std::future::Future;

use crate::audit::{AuditEvent, AuditRecord};
use crate::error::StoreError;
use crate::ids::{OrgId, ServiceAccountId, TokenId};
use crate::policy::{StoredPolicy, TokenPolicy};
use crate::query::{AccountQuery, AuditQuery, ListedToken, TokenQuery};
use crate::service_account::ServiceAccount;
use crate::time::Timestamp;
use crate::token::{Revocation, Token, TokenHash, TokenRecord, Usage};

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

/// What the admin use cases need from storage, one trait per resource. Every read is scoped to
/// an org.
pub trait AdminStore: AccountStore + TokenAdminStore + PolicyStore + AuditStore {}

impl<S: AccountStore + TokenAdminStore + PolicyStore + AuditStore> AdminStore for S {}

/// Service accounts and their app grants.
pub trait AccountStore: Send + Sync + 'static {
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

    /// The page of accounts `query` asks for (deleted ones never), in id order.
    fn list_service_accounts(
        &self,
        query: &AccountQuery,
    ) -> impl Future<Output = StoreResult<Vec<ServiceAccount>>> + Send;

    /// Stores `account` (name, description, app access, labels, state, update time, revision)
    /// only if the stored revision is still `expected_revision`; otherwise `Stale`.
    fn update_service_account(
        &self,
        account: &ServiceAccount,
        expected_revision: i64,
        event: &AuditEvent,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Deletes the account: from then on it is not found, and each of its tokens not yet
    /// revoked is revoked with `revocation`; the tokens are kept (so introspection can still say
    /// "revoked") until [`Self::purge_deleted`]. `false` if the account did not exist (and then
    /// nothing, not even the event, is written).
    fn delete_service_account(
        &self,
        org: &OrgId,
        id: ServiceAccountId,
        revocation: &Revocation,
        event: &AuditEvent,
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Forgets accounts deleted before `before`, with their grants and tokens (not their audit
    /// events), and publishes the change like a commit does (their tokens become unknown rather
    /// than revoked). Returns how many accounts were purged.
    fn purge_deleted(&self, before: Timestamp) -> impl Future<Output = StoreResult<u64>> + Send;
}

/// Tokens as admins manage them (introspection reads them through [`TokenStore`]).
pub trait TokenAdminStore: Send + Sync + 'static {
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

    /// The page of tokens `query` asks for, each with its account's name and state. Tokens of
    /// deleted accounts are never listed.
    fn list_tokens(
        &self,
        query: &TokenQuery,
    ) -> impl Future<Output = StoreResult<Vec<ListedToken>>> + Send;

    /// Marks the token revoked if it is not already. `false` if it was already revoked or does
    /// not exist (and then nothing is written).
    fn revoke_token(
        &self,
        org: &OrgId,
        account: ServiceAccountId,
        id: TokenId,
        revocation: &Revocation,
        event: &AuditEvent,
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Stores the token's display name and allowed networks.
    fn update_token(
        &self,
        org: &OrgId,
        token: &Token,
        event: &AuditEvent,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// In one transaction: ends `old` as `ending` says, provided it is still live at the new
    /// token's create time (else `OldTokenEnded`, nothing written), then issues the new token
    /// under the same quota rule as [`Self::create_token`].
    fn rotate_token(
        &self,
        org: &OrgId,
        old: TokenId,
        ending: &Ending,
        new: Issue<'_>,
        event: &AuditEvent,
    ) -> impl Future<Output = StoreResult<Rotated>> + Send;
}

/// The org's token policy.
pub trait PolicyStore: Send + Sync + 'static {
    fn get_token_policy(
        &self,
        org: &OrgId,
    ) -> impl Future<Output = StoreResult<StoredPolicy>> + Send;

    /// Stores the org's policy only if its revision is still `expected_revision` (0: none was
    /// ever stored); otherwise `Stale`.
    fn put_token_policy(
        &self,
        org: &OrgId,
        policy: &TokenPolicy,
        expected_revision: i64,
        event: &AuditEvent,
    ) -> impl Future<Output = StoreResult<()>> + Send;
}

/// The audit trail (written by every mutation, with it).
pub trait AuditStore: Send + Sync + 'static {
    /// The page of events `query` asks for.
    fn list_audit_events(
        &self,
        query: &AuditQuery,
    ) -> impl Future<Output = StoreResult<Vec<AuditRecord>>> + Send;
}

/// A token to issue, under the account's quota of live tokens.
#[derive(Debug, Clone, Copy)]
pub struct Issue<'a> {
    pub token: &'a Token,
    pub hash: &'a TokenHash,
    pub max_live: u32,
}

/// How a rotated token ends.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// It expires at this time (kept if it already expires earlier).
    ExpireBy(Timestamp),
    Revoke(Revocation),
}

/// What a rotation can come to besides a storage failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotated {
    Rotated,
    /// The old token is revoked or expired (or gone); nothing was written.
    OldTokenEnded,
    /// The account already has its quota of live tokens; nothing was written.
    OverQuota,
}

/// What introspection needs from storage.
pub trait TokenStore: Send + Sync + 'static {
    /// The tokens with these hashes (distinct; at most
    /// [`MAX_BATCH`](crate::introspection::MAX_BATCH)), each with its account's identity and app
    /// access, in any order, by hash. Hashes no token has are left out. A stored token that cannot
    /// be read is an error of its own, so that it fails only the lookups of that token.
    fn find_tokens(
        &self,
        hashes: &[TokenHash],
    ) -> impl Future<Output = StoreResult<Vec<(TokenHash, StoreResult<TokenRecord>)>>> + Send;

    /// The token with this hash.
    fn find_token(
        &self,
        hash: &TokenHash,
    ) -> impl Future<Output = StoreResult<Option<TokenRecord>>> + Send {
        async move {
            match self.find_tokens(std::slice::from_ref(hash)).await?.pop() {
                Some((_, record)) => record.map(Some),
                None => Ok(None),
            }
        }
    }

    /// The first 8 bytes (see [`crate::issued::prefix`]) of every stored token's hash.
    fn issued_prefixes(&self) -> impl Future<Output = StoreResult<Vec<u64>>> + Send;

    /// Records each token's latest use: its time never moves backwards, and the app and
    /// address are replaced only when the use carried them and is the latest.
    fn record_last_used(
        &self,
        uses: &[(TokenId, Usage)],
    ) -> impl Future<Output = StoreResult<()>> + Send;
}
