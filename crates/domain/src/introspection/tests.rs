use chrono::TimeDelta;

use super::*;
use crate::fixtures::record;
use crate::ids::TokenId;
use crate::service_account::AppAccess;
use crate::store::StoreResult;
use crate::token::TokenHash;

fn checks(org: &str, app: &str, scopes: &[&str]) -> Checks {
    Checks::parse(
        org,
        app,
        &scopes.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        "",
    )
    .unwrap()
}

fn denials(result: Introspection) -> Denials {
    match result {
        Introspection::Active { denials, .. } => denials,
        other => panic!("expected active, got {other:?}"),
    }
}

#[test]
fn active_and_allowed_when_every_check_passes() {
    let result = evaluate(record(), &checks("org", "app1", &["mcp:read"]), time::now());
    assert!(denials(result).allowed());
}

#[test]
fn revoked_wins_over_everything() {
    let mut g = record();
    let g_mut = Arc::make_mut(&mut g);
    g_mut.revoke_time = Some(time::now());
    g_mut.expire_time = Some(time::now() - TimeDelta::hours(1));
    assert!(matches!(
        evaluate(g, &Checks::default(), time::now()),
        Introspection::Ended {
            reason: Ended::Revoked,
            ..
        }
    ));
}

#[test]
fn expired_at_the_exact_expiry_instant() {
    let now = time::now();
    let mut g = record();
    Arc::make_mut(&mut g).expire_time = Some(now);
    assert!(matches!(
        evaluate(g.clone(), &Checks::default(), now),
        Introspection::Ended {
            reason: Ended::Expired,
            ..
        }
    ));
    let before = now - TimeDelta::microseconds(1);
    assert!(matches!(
        evaluate(g, &Checks::default(), before),
        Introspection::Active { .. }
    ));
}

#[test]
fn denials_name_the_failed_check() {
    let now = time::now();
    let result = denials(evaluate(record(), &checks("org", "other", &[]), now));
    assert_eq!(result.reasons, [Denial::AppNotGranted]);
    let result = denials(evaluate(
        record(),
        &checks("org", "app1", &["mcp:write", "mcp:read"]),
        now,
    ));
    assert_eq!(result.reasons, [Denial::ScopeMissing]);
    assert_eq!(result.missing_scopes, [Scope::parse("mcp:write").unwrap()]);
}

#[test]
fn another_orgs_app_is_never_granted_even_to_an_all_apps_account() {
    let mut g = record();
    Arc::make_mut(&mut Arc::make_mut(&mut g).account).app_access = AppAccess::AllApps;
    let now = time::now();
    assert!(denials(evaluate(g.clone(), &checks("org", "any-app", &[]), now)).allowed());
    let result = denials(evaluate(
        g.clone(),
        &checks("other-org", "any-app", &[]),
        now,
    ));
    assert_eq!(result.reasons, [Denial::OrgMismatch, Denial::AppNotGranted]);
    // The org alone is a check too.
    let result = denials(evaluate(g, &checks("other-org", "", &[]), now));
    assert_eq!(result.reasons, [Denial::OrgMismatch]);
}

#[test]
fn every_failed_check_is_reported_in_order_with_missing_scopes() {
    let result = denials(evaluate(
        record(),
        &checks("other-org", "app1", &["mcp:write", "mcp:tools:call"]),
        time::now(),
    ));
    assert_eq!(
        result.reasons,
        [
            Denial::OrgMismatch,
            Denial::AppNotGranted,
            Denial::ScopeMissing
        ]
    );
    assert_eq!(result.first(), Some(Denial::OrgMismatch));
    assert_eq!(result.missing_scopes, [Scope::parse("mcp:write").unwrap()]);
}

#[test]
fn a_disabled_accounts_token_is_inactive_but_revoked_and_expired_are_reported_first() {
    let mut g = record();
    Arc::make_mut(&mut Arc::make_mut(&mut g).account).disabled = true;
    assert!(matches!(
        evaluate(g.clone(), &Checks::default(), time::now()),
        Introspection::Ended {
            reason: Ended::AccountDisabled,
            ..
        }
    ));
    Arc::make_mut(&mut g).revoke_time = Some(time::now());
    assert!(matches!(
        evaluate(g, &Checks::default(), time::now()),
        Introspection::Ended {
            reason: Ended::Revoked,
            ..
        }
    ));
}

#[test]
fn a_token_restricted_to_networks_is_allowed_only_from_inside_them() {
    let mut g = record();
    Arc::make_mut(&mut g).allowed_cidrs =
        crate::network::AllowedCidrs::parse(["10.0.0.0/8"].into_iter()).unwrap();
    let from = |ip: &str| Checks::parse("org", "app1", &[], ip).unwrap();
    assert!(denials(evaluate(g.clone(), &from("10.9.8.7"), time::now())).allowed());
    let outside = denials(evaluate(g.clone(), &from("192.0.2.1"), time::now()));
    assert_eq!(outside.reasons, [Denial::ClientIpNotAllowed]);
    let unknown = denials(evaluate(g.clone(), &from(""), time::now()));
    assert_eq!(unknown.reasons, [Denial::ClientIpNotAllowed]);
    // Listed after an org mismatch and before app and scope denials.
    let all = denials(evaluate(
        g,
        &checks("other-org", "app1", &["mcp:write", "mcp:tools:call"]),
        time::now(),
    ));
    assert_eq!(
        all.reasons,
        [
            Denial::OrgMismatch,
            Denial::ClientIpNotAllowed,
            Denial::AppNotGranted,
            Denial::ScopeMissing
        ]
    );
}

#[test]
fn bad_checks_are_invalid_arguments_naming_the_field() {
    let Err(Error::InvalidArgument(violations)) = Checks::parse(
        "org",
        "bad app",
        &["mcp:read".into(), "nope".into()],
        "300.1.2.3",
    ) else {
        panic!("expected invalid argument");
    };
    let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(fields, ["app_id", "required_scopes[1]", "client_ip"]);
}

#[test]
fn an_app_check_without_its_org_is_an_invalid_argument_on_org_id() {
    let Err(Error::InvalidArgument(violations)) = Checks::parse("", "app1", &[], "") else {
        panic!("expected invalid argument");
    };
    let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(fields, ["org_id"]);
    assert!(Checks::parse("org", "", &[], "").is_ok());
    assert!(Checks::parse("", "", &["mcp:read".into()], "").is_ok());
}

/// A store whose lookups take a while and which remembers how many ran at once.
#[derive(Default)]
struct SlowStore {
    running: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
}

impl TokenStore for Arc<SlowStore> {
    async fn find_tokens(
        &self,
        _: &[TokenHash],
    ) -> StoreResult<Vec<(TokenHash, StoreResult<TokenRecord>)>> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.running.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(now, SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        self.running.fetch_sub(1, SeqCst);
        Ok(Vec::new())
    }

    async fn issued_prefixes(&self) -> StoreResult<Vec<u64>> {
        Ok(Vec::new())
    }

    async fn record_last_used(&self, _: &[(TokenId, crate::token::Usage)]) -> StoreResult<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_flood_of_made_up_tokens_holds_at_most_the_lookup_bound_of_storage() {
    let store = Arc::new(SlowStore::default());
    let introspector = Arc::new(Introspector::new(
        store.clone(),
        Arc::new(IntrospectionCache::new(
            1000,
            1 << 20,
            std::time::Duration::from_secs(60),
        )),
        Arc::default(),
        3,
    ));
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let introspector = introspector.clone();
            tokio::spawn(async move {
                let made_up = crate::token::TokenSecret::generate();
                introspector
                    .introspect(made_up.expose(), &Checks::default())
                    .await
                    .unwrap()
            })
        })
        .collect();
    for task in tasks {
        assert!(matches!(
            task.await.unwrap(),
            Introspection::Unrecognised(Unrecognised::Unknown)
        ));
    }
    assert_eq!(store.most.load(std::sync::atomic::Ordering::SeqCst), 3);
}
