//! Values shared by the domain's unit tests.

use std::sync::Arc;

use crate::ids::{OrgId, ServiceAccountId, TokenId};
use crate::network::AllowedCidrs;
use crate::scope::Scopes;
use crate::service_account::{AppAccess, AppId};
use crate::token::{AccountRecord, TokenRecord, TokenSecret};

/// An active token of org `org` with `mcp:tools:call` and `mcp:read`, allowed app `app1`.
pub fn record() -> Arc<TokenRecord> {
    record_of(ServiceAccountId::generate())
}

/// Like [`record`], for a given account.
pub fn record_of(account: ServiceAccountId) -> Arc<TokenRecord> {
    Arc::new(issued(account).1)
}

/// A token of `account` as issued: its secret and its record.
pub fn issued(account: ServiceAccountId) -> (TokenSecret, TokenRecord) {
    let secret = TokenSecret::generate();
    let record = TokenRecord {
        token_id: TokenId::generate(),
        token_hash: secret.hash(),
        scopes: Scopes::parse(["mcp:tools:call", "mcp:read"]).unwrap(),
        create_time: chrono::Utc::now(),
        expire_time: None,
        revoke_time: None,
        allowed_cidrs: AllowedCidrs::none(),
        account: Arc::new(AccountRecord {
            org_id: OrgId::parse("org").unwrap(),
            service_account_id: account,
            display_name: "CI".into(),
            app_access: AppAccess::explicit([AppId::parse("app1").unwrap()].into()).unwrap(),
            disabled: false,
        }),
    };
    (secret, record)
}

/// An active account of org `org` named `name`, without labels.
pub fn account_named(name: &str) -> crate::service_account::ServiceAccount {
    let now = chrono::Utc::now();
    crate::service_account::ServiceAccount {
        id: ServiceAccountId::generate(),
        org_id: OrgId::parse("org").unwrap(),
        display_name: crate::service_account::DisplayName::parse(name).unwrap(),
        description: Default::default(),
        app_access: AppAccess::AllApps,
        create_time: now,
        update_time: now,
        created_by: crate::ids::UserId::parse("admin").unwrap(),
        state: Default::default(),
        labels: Default::default(),
        last_used_time: None,
        revision: 1,
    }
}
