use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use prost::Message;
use service_accounts_domain::ids::{OrgId, ServiceAccountId, TokenId};
use service_accounts_domain::introspection::{Denial, Denials, Ended, Introspection, Unrecognised};
use service_accounts_domain::network::AllowedCidrs;
use service_accounts_domain::scope::{Scope, Scopes};
use service_accounts_domain::service_account::{AppAccess, AppId};
use service_accounts_domain::token::{AccountRecord, TokenRecord, TokenSecret};

use super::{IntrospectReply, denial_reason};
use crate::{pb, render};

/// The reference: the same answer as the generated message, built field by field.
fn generated(result: &Introspection) -> pb::IntrospectResponse {
    let reply = IntrospectReply(result.clone());
    match result {
        Introspection::Unrecognised(_) | Introspection::Ended { .. } => pb::IntrospectResponse {
            inactive_reason: reply.inactive_reason() as i32,
            denial_reason: pb::DenialReason::TokenInactive as i32,
            denial_reasons: vec![pb::DenialReason::TokenInactive as i32],
            ..Default::default()
        },
        Introspection::Active { token, denials } => pb::IntrospectResponse {
            active: true,
            inactive_reason: pb::InactiveReason::Unspecified as i32,
            org_id: token.account.org_id.as_str().to_owned(),
            service_account_id: token.account.service_account_id.to_string(),
            service_account_display_name: token.account.display_name.to_string(),
            token_id: token.token_id.to_string(),
            scopes: token.scopes.names().map(str::to_owned).collect(),
            app_access: Some(render::app_access(&token.account.app_access)),
            expire_time: token.expire_time.map(render::timestamp),
            allowed: denials.allowed(),
            denial_reason: denials.first().map_or(0, |d| denial_reason(d) as i32),
            missing_scopes: denials
                .missing_scopes
                .iter()
                .map(|s| s.as_str().to_owned())
                .collect(),
            denial_reasons: denials
                .reasons
                .iter()
                .map(|d| denial_reason(*d) as i32)
                .collect(),
            allowed_cidrs: token.allowed_cidrs.iter().map(|c| c.to_string()).collect(),
        },
    }
}

fn record(display_name: &str, app_access: AppAccess, scopes: &[&str]) -> TokenRecord {
    TokenRecord {
        token_id: TokenId::generate(),
        token_hash: TokenSecret::generate().hash(),
        scopes: Scopes::parse(scopes.iter().copied()).unwrap(),
        create_time: chrono::Utc::now(),
        expire_time: None,
        revoke_time: None,
        allowed_cidrs: AllowedCidrs::none(),
        account: Arc::new(AccountRecord {
            org_id: OrgId::parse("org_2x7Kq").unwrap(),
            service_account_id: ServiceAccountId::generate(),
            display_name: display_name.into(),
            app_access,
            disabled: false,
        }),
    }
}

fn apps(ids: &[&str]) -> AppAccess {
    AppAccess::Apps(ids.iter().map(|id| AppId::parse(id).unwrap()).collect())
}

fn active(token: TokenRecord, reasons: Vec<Denial>, missing: &[&str]) -> Introspection {
    Introspection::Active {
        token: Arc::new(token),
        denials: Denials {
            reasons,
            missing_scopes: missing.iter().map(|s| Scope::parse(s).unwrap()).collect(),
        },
    }
}

fn every_kind_of_answer() -> Vec<(&'static str, Introspection)> {
    let plain = record("CI Pipeline", AppAccess::AllApps, &["mcp:tools:call"]);
    let mut expiring = record(
        "Ünïcode name ✓",
        apps(&["app1", "app2"]),
        &["mcp:tools:call", "mcp:read"],
    );
    expiring.expire_time = Some(Utc.timestamp_opt(1_900_000_000, 123_456_789).unwrap());
    let mut whole_second = record("nightly", apps(&[]), &["mcp:tools:call"]);
    whole_second.expire_time = Some(Utc.timestamp_opt(1_800_000_000, 0).unwrap());
    let mut before_1970 = record("", AppAccess::AllApps, &["mcp:tools:call"]);
    before_1970.expire_time = Some(Utc.timestamp_opt(-5, 500).unwrap());
    let long_name = record(&"x".repeat(300), apps(&["a"]), &["mcp:tools:call"]);
    let mut restricted = record("office", apps(&["a"]), &["mcp:tools:call"]);
    restricted.allowed_cidrs =
        AllowedCidrs::parse(["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"].into_iter()).unwrap();
    let ended = Arc::new(record("old", AppAccess::AllApps, &["mcp:tools:call"]));
    vec![
        (
            "allowed, all apps, no expiry",
            active(plain.clone(), vec![], &[]),
        ),
        (
            "allowed, two apps, expiry with nanos",
            active(expiring.clone(), vec![], &[]),
        ),
        (
            "allowed, no apps yet, expiry on a second",
            active(whole_second, vec![], &[]),
        ),
        (
            "allowed, empty display name, expiry before 1970",
            active(before_1970, vec![], &[]),
        ),
        (
            "allowed, a name longer than a one-byte length",
            active(long_name, vec![], &[]),
        ),
        (
            "allowed, restricted to networks",
            active(restricted, vec![], &[]),
        ),
        (
            "org mismatch",
            active(plain.clone(), vec![Denial::OrgMismatch], &[]),
        ),
        (
            "every denial, with missing scopes",
            active(
                expiring,
                vec![
                    Denial::OrgMismatch,
                    Denial::ClientIpNotAllowed,
                    Denial::AppNotGranted,
                    Denial::ScopeMissing,
                ],
                &["mcp:read", "mcp:tools:call"],
            ),
        ),
        (
            "scope missing",
            active(plain, vec![Denial::ScopeMissing], &["mcp:read"]),
        ),
        (
            "malformed",
            Introspection::Unrecognised(Unrecognised::Malformed),
        ),
        (
            "unknown",
            Introspection::Unrecognised(Unrecognised::Unknown),
        ),
        (
            "revoked",
            Introspection::Ended {
                reason: Ended::Revoked,
                token: ended.clone(),
            },
        ),
        (
            "expired",
            Introspection::Ended {
                reason: Ended::Expired,
                token: ended.clone(),
            },
        ),
        (
            "account disabled",
            Introspection::Ended {
                reason: Ended::AccountDisabled,
                token: ended,
            },
        ),
    ]
}

#[test]
fn every_answer_encodes_to_the_bytes_of_the_generated_message() {
    for (case, result) in every_kind_of_answer() {
        let expected = generated(&result).encode_to_vec();
        let reply = IntrospectReply(result);
        assert_eq!(reply.encoded_len(), expected.len(), "{case}: length");
        assert_eq!(reply.encode_to_vec(), expected, "{case}: bytes");
    }
}

#[test]
fn every_answer_decodes_as_the_generated_message_clients_use() {
    for (case, result) in every_kind_of_answer() {
        let expected = generated(&result);
        let decoded = pb::IntrospectResponse::decode(&*IntrospectReply(result).encode_to_vec())
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(decoded, expected, "{case}");
    }
}

#[test]
fn an_inactive_answer_carries_no_identity() {
    let token = Arc::new(record("secretive", AppAccess::AllApps, &["mcp:tools:call"]));
    let reply = IntrospectReply(Introspection::Ended {
        reason: Ended::Revoked,
        token: token.clone(),
    });
    let decoded = pb::IntrospectResponse::decode(&*reply.encode_to_vec()).unwrap();
    assert!(!decoded.active && !decoded.allowed);
    assert_eq!(decoded.inactive_reason(), pb::InactiveReason::Revoked);
    assert_eq!(decoded.org_id, "");
    assert_eq!(decoded.token_id, "");
    assert_eq!(decoded.service_account_display_name, "");
    assert_eq!(decoded.app_access, None);
}

#[test]
fn outcomes_name_each_kind_of_answer() {
    let labels: BTreeSet<&str> = every_kind_of_answer()
        .into_iter()
        .map(|(_, result)| IntrospectReply(result).outcome())
        .collect();
    assert_eq!(
        labels,
        BTreeSet::from([
            "active",
            "malformed",
            "unknown",
            "revoked",
            "expired",
            "account_disabled"
        ])
    );
}
