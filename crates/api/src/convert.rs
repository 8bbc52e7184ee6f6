//! Protobuf messages to domain values (parsing, collecting every field violation) and back.

use std::collections::BTreeSet;

use chrono::DateTime;
use service_accounts_domain::Violations;
use service_accounts_domain::audit::AuditRecord;
use service_accounts_domain::error::Invalid;
use service_accounts_domain::page::{Listing, PageRequest};
use service_accounts_domain::scope::{CATALOGUE, Scopes};
use service_accounts_domain::service_account::{AppAccess, AppId, ServiceAccount};
use service_accounts_domain::time::{self, Timestamp};
use service_accounts_domain::token::Token;

use crate::pb;

pub fn timestamp(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub fn parse_timestamp(t: &prost_types::Timestamp) -> Result<Timestamp, Invalid> {
    u32::try_from(t.nanos)
        .ok()
        .and_then(|nanos| DateTime::from_timestamp(t.seconds, nanos))
        .map(time::truncate)
        .ok_or_else(|| Invalid::new("is not a valid timestamp"))
}

/// Parses an `AppAccess` message; `field` is its path in the request.
pub fn parse_app_access(
    violations: &mut Violations,
    field: &str,
    access: &pb::AppAccess,
) -> Option<AppAccess> {
    if access.all_apps {
        if !access.app_ids.is_empty() {
            violations.add(
                format!("{field}.app_ids"),
                "must be empty when all_apps is true",
            );
            return None;
        }
        return Some(AppAccess::AllApps);
    }
    let apps = parse_app_ids(violations, &format!("{field}.app_ids"), &access.app_ids)?;
    violations.check(format!("{field}.app_ids"), AppAccess::explicit(apps))
}

pub fn parse_app_ids(
    violations: &mut Violations,
    field: &str,
    ids: &[String],
) -> Option<BTreeSet<AppId>> {
    let mut apps = BTreeSet::new();
    let mut all_valid = true;
    for (i, id) in ids.iter().enumerate() {
        match AppId::parse(id) {
            Ok(app) => {
                apps.insert(app);
            }
            Err(invalid) => {
                all_valid = false;
                violations.add(format!("{field}[{i}]"), invalid.0);
            }
        }
    }
    all_valid.then_some(apps)
}

pub fn parse_scopes(violations: &mut Violations, field: &str, names: &[String]) -> Option<Scopes> {
    violations.check(field, Scopes::parse(names.iter().map(String::as_str)))
}

pub fn page_request(
    violations: &mut Violations,
    listing: Listing,
    page_size: i32,
    page_token: &str,
) -> Option<PageRequest> {
    match PageRequest::parse(listing, page_size, page_token) {
        Ok(page) => Some(page),
        Err(problems) => {
            for (field, invalid) in problems {
                violations.add(field, invalid.0);
            }
            None
        }
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
