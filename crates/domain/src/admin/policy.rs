//! The org's token lifetime policy.

use serde_json::json;

use super::{Admin, AdminService};
use crate::audit::{AuditAction, Target};
use crate::error::{Error, StoreError};
use crate::policy::{TokenPolicy, TokenPolicyPatch};
use crate::store::AdminStore;

/// Concurrent policy edits are retried this many times before giving up with ABORTED.
const MAX_ATTEMPTS: usize = 5;

impl<S: AdminStore> AdminService<S> {
    pub async fn get_token_policy(&self, admin: &Admin) -> Result<TokenPolicy, Error> {
        Ok(self.store.get_token_policy(&admin.org_id).await?.policy)
    }

    /// Existing tokens keep their expiry: the policy applies to tokens created afterwards.
    pub async fn update_token_policy(
        &self,
        admin: &Admin,
        patch: TokenPolicyPatch,
    ) -> Result<TokenPolicy, Error> {
        for _ in 0..MAX_ATTEMPTS {
            let stored = self.store.get_token_policy(&admin.org_id).await?;
            let policy = stored.policy.apply(patch)?;
            let event = admin.event(
                AuditAction::TokenPolicyUpdate,
                Target::TokenPolicy(admin.org_id.clone()),
                json!({
                    "max_lifetime_seconds": policy.max_lifetime.map(|d| d.num_seconds()),
                    "default_lifetime_seconds": policy.default_lifetime.map(|d| d.num_seconds()),
                }),
            );
            match self
                .store
                .put_token_policy(&admin.org_id, &policy, stored.revision, &event)
                .await
            {
                Ok(()) => return Ok(policy),
                Err(StoreError::Stale) => continue,
                Err(other) => return Err(other.into()),
            }
        }
        Err(Error::Aborted)
    }
}
