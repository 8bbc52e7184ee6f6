//! Rows to domain values and back. Stored data was validated on the way in; a row that no
//! longer parses is reported as a storage error rather than trusted.

use std::collections::BTreeSet;

use sea_orm::ActiveValue::Set;
use service_accounts_domain::StoreError;
use service_accounts_domain::audit::{AuditEvent, AuditRecord};
use service_accounts_domain::ids::{AuditEventId, OrgId, ServiceAccountId, TokenId, UserId};
use service_accounts_domain::labels::{LabelProblem, Labels};
use service_accounts_domain::network::AllowedCidrs;
use service_accounts_domain::query::ListedToken;
use service_accounts_domain::scope::Scopes;
use service_accounts_domain::service_account::{
    AccountState, AppAccess, AppId, Description, DisplayName, ServiceAccount,
};
use service_accounts_domain::time::Timestamp;
use service_accounts_domain::token::{RevokeReason, Token};

use crate::entity::{audit_event, service_account, token};

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Other(format!("stored {what} does not parse: {value:?}"))
}

pub(crate) fn account_id(s: &str) -> Result<ServiceAccountId, StoreError> {
    ServiceAccountId::parse(s).map_err(|_| corrupt("service account id", s))
}

pub(crate) fn org_id(s: &str) -> Result<OrgId, StoreError> {
    OrgId::parse(s).map_err(|_| corrupt("org id", s))
}

pub(crate) fn user_id(s: &str) -> Result<UserId, StoreError> {
    UserId::parse(s).map_err(|_| corrupt("user id", s))
}

pub(crate) fn token_id(s: &str) -> Result<TokenId, StoreError> {
    TokenId::parse(s).map_err(|_| corrupt("token id", s))
}

pub(crate) fn app_access(all_apps: bool, app_ids: Vec<String>) -> Result<AppAccess, StoreError> {
    if all_apps {
        return Ok(AppAccess::AllApps);
    }
    let apps = app_ids
        .iter()
        .map(|id| AppId::parse(id).map_err(|_| corrupt("app id", id)))
        .collect::<Result<BTreeSet<_>, _>>()?;
    Ok(AppAccess::Apps(apps.into()))
}

pub(crate) fn account_state(s: &str) -> Result<AccountState, StoreError> {
    AccountState::from_stored(s).ok_or_else(|| corrupt("account state", s))
}

pub(crate) fn allowed_cidrs(s: &str) -> Result<AllowedCidrs, StoreError> {
    AllowedCidrs::from_stored(s).ok_or_else(|| corrupt("allowed CIDRs", s))
}

/// Stored labels, as (key, value) rows.
pub(crate) fn labels(rows: &[(String, String)]) -> Result<Labels, StoreError> {
    Labels::parse(rows.iter().map(|(k, v)| (k.as_str(), v.as_str()))).map_err(|problems| {
        let what = match problems.first() {
            Some(LabelProblem::Entry { key, .. }) => key.as_str(),
            _ => "too many",
        };
        corrupt("label", what)
    })
}

pub(crate) fn service_account(
    row: service_account::Model,
    app_ids: Vec<String>,
    labels: &[(String, String)],
    last_used_time: Option<Timestamp>,
) -> Result<ServiceAccount, StoreError> {
    Ok(ServiceAccount {
        id: account_id(&row.id)?,
        org_id: org_id(&row.org_id)?,
        display_name: DisplayName::parse(&row.display_name)
            .map_err(|_| corrupt("display name", &row.display_name))?,
        description: Description::parse(&row.description)
            .map_err(|_| corrupt("description", &row.description))?,
        app_access: app_access(row.all_apps, app_ids)?,
        create_time: row.created_at,
        update_time: row.updated_at,
        created_by: user_id(&row.created_by)?,
        state: account_state(&row.state)?,
        labels: self::labels(labels)?,
        last_used_time,
        revision: row.revision,
    })
}

pub(crate) fn token(row: token::Model) -> Result<Token, StoreError> {
    Ok(Token {
        id: token_id(&row.id)?,
        service_account_id: account_id(&row.service_account_id)?,
        display_name: DisplayName::parse(&row.display_name)
            .map_err(|_| corrupt("display name", &row.display_name))?,
        scopes: Scopes::from_stored(&row.scopes),
        create_time: row.created_at,
        created_by: user_id(&row.created_by)?,
        expire_time: row.expire_at,
        revoke_time: row.revoked_at,
        revoked_by: row.revoked_by.as_deref().map(user_id).transpose()?,
        revoke_reason: match (&row.revoked_at, row.revoke_reason.as_deref()) {
            (None, _) => None,
            (Some(_), None) => Some(RevokeReason::Admin),
            (Some(_), Some(reason)) => Some(
                RevokeReason::from_stored(reason)
                    .ok_or_else(|| corrupt("revoke reason", reason))?,
            ),
        },
        last_used_time: row.last_used_at,
        last_used_app_id: row
            .last_used_app_id
            .as_deref()
            .map(|id| AppId::parse(id).map_err(|_| corrupt("app id", id)))
            .transpose()?,
        last_used_client_ip: row
            .last_used_client_ip
            .as_deref()
            .map(|ip| ip.parse().map_err(|_| corrupt("client address", ip)))
            .transpose()?,
        hint: row.hint,
        previous_token_id: row.previous_token_id.as_deref().map(token_id).transpose()?,
        allowed_cidrs: allowed_cidrs(&row.allowed_cidrs)?,
    })
}

/// A token with its account, as listings read them (the account is joined, so always there).
pub(crate) fn listed(
    (row, account): (token::Model, Option<service_account::Model>),
) -> Result<ListedToken, StoreError> {
    let account = account.ok_or_else(|| corrupt("token without an account", &row.id))?;
    Ok(ListedToken {
        account_name: DisplayName::parse(&account.display_name)
            .map_err(|_| corrupt("display name", &account.display_name))?,
        account_state: account_state(&account.state)?,
        token: token(row)?,
    })
}

pub(crate) fn audit_record(row: audit_event::Model) -> Result<AuditRecord, StoreError> {
    Ok(AuditRecord {
        id: AuditEventId::parse(&row.id).map_err(|_| corrupt("audit event id", &row.id))?,
        org_id: org_id(&row.org_id)?,
        actor: row.actor,
        action: row.action,
        target_type: row.target_type,
        target_id: row.target_id,
        request_id: row.request_id,
        create_time: row.created_at,
        details: row.details,
    })
}

pub(crate) fn audit_row(event: &AuditEvent) -> audit_event::ActiveModel {
    audit_event::ActiveModel {
        id: Set(event.id.to_string()),
        org_id: Set(event.org_id.to_string()),
        actor: Set(event.actor.to_string()),
        action: Set(event.action.as_str().to_owned()),
        target_type: Set(event.target.type_name().to_owned()),
        target_id: Set(event.target.id()),
        request_id: Set(event.request_id.clone()),
        created_at: Set(event.create_time),
        details: Set(event.details.clone()),
    }
}

pub(crate) fn account_row(account: &ServiceAccount) -> service_account::ActiveModel {
    service_account::ActiveModel {
        id: Set(account.id.to_string()),
        org_id: Set(account.org_id.to_string()),
        display_name: Set(account.display_name.as_str().to_owned()),
        display_name_key: Set(account.display_name.uniqueness_key()),
        description: Set(account.description.as_str().to_owned()),
        all_apps: Set(matches!(account.app_access, AppAccess::AllApps)),
        created_at: Set(account.create_time),
        updated_at: Set(account.update_time),
        created_by: Set(account.created_by.to_string()),
        revision: Set(account.revision),
        state: Set(account.state.as_str().to_owned()),
        deleted_at: Set(None),
    }
}

/// A new token's row (no use, not revoked).
pub(crate) fn token_row(
    org: &OrgId,
    token: &Token,
    hash: &service_accounts_domain::token::TokenHash,
) -> token::ActiveModel {
    token::ActiveModel {
        id: Set(token.id.to_string()),
        service_account_id: Set(token.service_account_id.to_string()),
        org_id: Set(org.to_string()),
        display_name: Set(token.display_name.as_str().to_owned()),
        token_hash: Set(hash.as_bytes().to_vec()),
        scopes: Set(token.scopes.to_stored()),
        hint: Set(token.hint.clone()),
        created_at: Set(token.create_time),
        created_by: Set(token.created_by.to_string()),
        expire_at: Set(token.expire_time),
        revoked_at: Set(None),
        revoked_by: Set(None),
        last_used_at: Set(None),
        revoke_reason: Set(None),
        previous_token_id: Set(token.previous_token_id.map(|id| id.to_string())),
        allowed_cidrs: Set(token.allowed_cidrs.to_stored()),
        last_used_app_id: Set(None),
        last_used_client_ip: Set(None),
    }
}
