//! Domain values to protobuf messages (the other direction is `requests`).

use chrono::TimeDelta;
use service_accounts_domain::audit::AuditRecord;
use service_accounts_domain::policy::TokenPolicy;
use service_accounts_domain::scope::CATALOGUE;
use service_accounts_domain::service_account::{AccountState, AppAccess, ServiceAccount};
use service_accounts_domain::time::{self, Timestamp};
use service_accounts_domain::token::{RevokeReason, Token, TokenState};

use crate::pb;

pub fn timestamp(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub fn app_access(access: &AppAccess) -> pb::AppAccess {
    match access {
        AppAccess::AllApps => pb::AppAccess {
            all_apps: true,
            app_ids: Vec::new(),
        },
        AppAccess::Apps(apps) => pb::AppAccess {
            all_apps: false,
            app_ids: apps.iter().map(|a| a.as_str().to_owned()).collect(),
        },
    }
}

pub fn service_account(account: &ServiceAccount) -> pb::ServiceAccount {
    pb::ServiceAccount {
        service_account_id: account.id.to_string(),
        org_id: account.org_id.to_string(),
        display_name: account.display_name.as_str().to_owned(),
        description: account.description.as_str().to_owned(),
        app_access: Some(app_access(&account.app_access)),
        create_time: Some(timestamp(account.create_time)),
        update_time: Some(timestamp(account.update_time)),
        created_by: account.created_by.to_string(),
        state: match account.state {
            AccountState::Active => pb::service_account::State::Active,
            AccountState::Disabled => pb::service_account::State::Disabled,
        } as i32,
        etag: account.etag(),
        last_used_time: account.last_used_time.map(timestamp),
        labels: account
            .labels
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    }
}

fn duration(d: TimeDelta) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.num_seconds(),
        nanos: 0,
    }
}

pub fn token_policy(policy: &TokenPolicy) -> pb::TokenPolicy {
    pb::TokenPolicy {
        max_lifetime: policy.max_lifetime.map(duration),
        default_lifetime: policy.default_lifetime.map(duration),
    }
}

pub fn token(token: &Token) -> pb::Token {
    pb::Token {
        token_id: token.id.to_string(),
        service_account_id: token.service_account_id.to_string(),
        display_name: token.display_name.as_str().to_owned(),
        scopes: token.scopes.names().map(str::to_owned).collect(),
        create_time: Some(timestamp(token.create_time)),
        created_by: token.created_by.to_string(),
        expire_time: token.expire_time.map(timestamp),
        revoke_time: token.revoke_time.map(timestamp),
        revoked_by: token
            .revoked_by
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        last_used_time: token.last_used_time.map(timestamp),
        hint: token.hint.clone(),
        state: match token.state(time::now()) {
            TokenState::Active => pb::token::State::Active,
            TokenState::Expired => pb::token::State::Expired,
            TokenState::Revoked => pb::token::State::Revoked,
        } as i32,
        revoke_reason: token
            .revoke_reason
            .map_or(pb::token::RevokeReason::Unspecified, |r| match r {
                RevokeReason::Admin => pb::token::RevokeReason::Admin,
                RevokeReason::Rotated => pb::token::RevokeReason::Rotated,
                RevokeReason::Leaked => pb::token::RevokeReason::Leaked,
                RevokeReason::AccountDeleted => pb::token::RevokeReason::AccountDeleted,
            }) as i32,
        previous_token_id: token
            .previous_token_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        allowed_cidrs: token
            .allowed_cidrs
            .iter()
            .map(ToString::to_string)
            .collect(),
        last_used_app_id: token
            .last_used_app_id
            .as_ref()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default(),
        last_used_client_ip: token
            .last_used_client_ip
            .map(|ip| ip.to_string())
            .unwrap_or_default(),
    }
}

pub fn audit_event(event: &AuditRecord) -> pb::AuditEvent {
    pb::AuditEvent {
        audit_event_id: event.id.to_string(),
        org_id: event.org_id.to_string(),
        actor: event.actor.to_string(),
        action: event.action.clone(),
        target_type: event.target_type.clone(),
        target_id: event.target_id.clone(),
        request_id: event.request_id.clone(),
        create_time: Some(timestamp(event.create_time)),
        details: event.details.clone(),
    }
}

pub fn scopes() -> Vec<pb::Scope> {
    CATALOGUE
        .iter()
        .map(|d| pb::Scope {
            name: d.name.to_owned(),
            description: d.description.to_owned(),
            requires: d.requires.iter().map(|r| (*r).to_owned()).collect(),
        })
        .collect()
}
