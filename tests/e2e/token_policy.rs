//! The org's token lifetime policy, and finding the tokens about to expire.

use service_accounts_api::pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::on_both_backends;
use crate::rotation::{in_seconds, seconds};
use crate::support::*;

on_both_backends!(
    a_lifetime_policy_gives_new_tokens_an_expiry_and_caps_requested_ones,
    bad_policies_are_refused_and_change_nothing,
    expiring_tokens_are_listed_soonest_first_across_the_orgs_accounts,
);

const DAY: i64 = 86_400;

async fn update_policy(
    app: &TestApp,
    jwt: &str,
    max: Option<i64>,
    default: Option<i64>,
    mask: &[&str],
) -> Result<pb::TokenPolicy, tonic::Status> {
    app.admin()
        .await
        .update_token_policy(authed(
            pb::UpdateTokenPolicyRequest {
                validate_only: false,
                token_policy: Some(pb::TokenPolicy {
                    max_lifetime: max.map(seconds),
                    default_lifetime: default.map(seconds),
                }),
                update_mask: (!mask.is_empty()).then(|| prost_types::FieldMask {
                    paths: mask.iter().map(|p| p.to_string()).collect(),
                }),
            },
            jwt,
        ))
        .await
        .map(|r| r.into_inner().token_policy.expect("policy"))
}

async fn get_policy(app: &TestApp, jwt: &str) -> pb::TokenPolicy {
    app.admin()
        .await
        .get_token_policy(authed(pb::GetTokenPolicyRequest {}, jwt))
        .await
        .unwrap()
        .into_inner()
        .token_policy
        .unwrap()
}

async fn new_token(
    app: &TestApp,
    jwt: &str,
    account: &str,
    expire_in: Option<i64>,
) -> Result<pb::Token, tonic::Status> {
    app.admin()
        .await
        .create_token(authed(
            pb::CreateTokenRequest {
                validate_only: false,
                service_account_id: account.into(),
                display_name: "deploy".into(),
                scopes: vec!["mcp:tools:call".into()],
                expire_time: expire_in.map(in_seconds),
                allowed_cidrs: vec![],
            },
            jwt,
        ))
        .await
        .map(|r| r.into_inner().token.expect("token"))
}

/// Seconds from now until the token expires.
fn lifetime(token: &pb::Token) -> i64 {
    instant(&token.expire_time).0 - chrono::Utc::now().timestamp()
}

async fn a_lifetime_policy_gives_new_tokens_an_expiry_and_caps_requested_ones(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let id = create_account(&app, &jwt, "Bot", None)
        .await
        .service_account_id;
    assert_eq!(get_policy(&app, &jwt).await, pb::TokenPolicy::default());
    let forever = new_token(&app, &jwt, &id, None).await.unwrap();
    assert!(forever.expire_time.is_none());

    let policy = update_policy(&app, &jwt, Some(30 * DAY), Some(7 * DAY), &[])
        .await
        .unwrap();
    assert_eq!(policy.max_lifetime, Some(seconds(30 * DAY)));
    assert_eq!(get_policy(&app, &jwt).await, policy);
    let defaulted = new_token(&app, &jwt, &id, None).await.unwrap();
    assert!((7 * DAY - 10..=7 * DAY).contains(&lifetime(&defaulted)));
    let chosen = new_token(&app, &jwt, &id, Some(20 * DAY)).await.unwrap();
    assert!((20 * DAY - 10..=20 * DAY).contains(&lifetime(&chosen)));

    let status = assert_code(
        new_token(&app, &jwt, &id, Some(31 * DAY)).await,
        Code::FailedPrecondition,
    );
    let failure = status
        .get_details_precondition_failure()
        .expect("a PreconditionFailure");
    assert_eq!(failure.violations.len(), 1);
    assert_eq!(failure.violations[0].r#type, "TOKEN_POLICY");
    assert_eq!(failure.violations[0].subject, "max_lifetime");
    // Rotation follows the same policy.
    let rotated = app
        .admin()
        .await
        .rotate_token(authed(
            pb::RotateTokenRequest {
                validate_only: false,
                service_account_id: id.clone(),
                token_id: forever.token_id.clone(),
                grace_period: None,
                expire_time: Some(in_seconds(31 * DAY)),
            },
            &jwt,
        ))
        .await;
    assert_code(rotated, Code::FailedPrecondition);

    // Removing the default leaves the maximum as the lifetime of tokens without one.
    update_policy(&app, &jwt, None, None, &["default_lifetime"])
        .await
        .unwrap();
    let capped = new_token(&app, &jwt, &id, None).await.unwrap();
    assert!((30 * DAY - 10..=30 * DAY).contains(&lifetime(&capped)));
    // Tightening does not shorten existing tokens.
    update_policy(&app, &jwt, Some(DAY), None, &["max_lifetime"])
        .await
        .unwrap();
    let tokens = tokens_of(&app, &jwt, &id).await;
    assert!(tokens[0].expire_time.is_none());
    assert_eq!(tokens[2].expire_time, chosen.expire_time);

    // Policies are per org.
    assert_eq!(
        get_policy(&app, &app.admin_jwt("org-b")).await,
        pb::TokenPolicy::default()
    );
    let actions = audit_actions(&app, &jwt).await;
    assert_eq!(
        actions
            .iter()
            .filter(|a| *a == "token_policy.update")
            .count(),
        3,
        "{actions:?}"
    );
}

async fn bad_policies_are_refused_and_change_nothing(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    update_policy(&app, &jwt, Some(30 * DAY), Some(7 * DAY), &[])
        .await
        .unwrap();
    let before = get_policy(&app, &jwt).await;
    assert_invalid(
        update_policy(&app, &jwt, None, Some(31 * DAY), &["default_lifetime"]).await,
        &["token_policy.default_lifetime"],
    );
    assert_invalid(
        update_policy(&app, &jwt, Some(DAY), None, &["max_lifetime"]).await,
        &["token_policy.default_lifetime"],
    );
    assert_invalid(
        update_policy(&app, &jwt, Some(0), Some(-5), &["*"]).await,
        &["token_policy.max_lifetime", "token_policy.default_lifetime"],
    );
    assert_invalid(
        update_policy(&app, &jwt, Some(3651 * DAY), None, &["max_lifetime"]).await,
        &["token_policy.max_lifetime"],
    );
    let fractional = app
        .admin()
        .await
        .update_token_policy(authed(
            pb::UpdateTokenPolicyRequest {
                validate_only: false,
                token_policy: Some(pb::TokenPolicy {
                    max_lifetime: Some(prost_types::Duration {
                        seconds: DAY,
                        nanos: 500,
                    }),
                    default_lifetime: None,
                }),
                update_mask: None,
            },
            &jwt,
        ))
        .await;
    assert_invalid(fractional, &["token_policy.max_lifetime"]);
    assert_invalid(
        update_policy(&app, &jwt, Some(DAY), None, &["max_lifetime", "owner"]).await,
        &["update_mask.paths[1]"],
    );
    assert_invalid(
        update_policy(&app, &jwt, None, None, &[]).await,
        &["update_mask"],
    );
    assert_eq!(get_policy(&app, &jwt).await, before);
    let actions = audit_actions(&app, &jwt).await;
    assert_eq!(actions, ["token_policy.update"]);
}

async fn list_expiring(
    app: &TestApp,
    jwt: &str,
    within: Option<prost_types::Duration>,
    page_size: i32,
    page_token: &str,
) -> Result<pb::ListExpiringTokensResponse, tonic::Status> {
    app.admin()
        .await
        .list_expiring_tokens(authed(
            pb::ListExpiringTokensRequest {
                within,
                page_size,
                page_token: page_token.into(),
            },
            jwt,
        ))
        .await
        .map(|r| r.into_inner())
}

async fn expiring_tokens_are_listed_soonest_first_across_the_orgs_accounts(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let first = create_account(&app, &jwt, "First", None)
        .await
        .service_account_id;
    let second = create_account(&app, &jwt, "Second", None)
        .await
        .service_account_id;
    let in_3d = new_token(&app, &jwt, &first, Some(3 * DAY)).await.unwrap();
    let in_1h = new_token(&app, &jwt, &second, Some(3600)).await.unwrap();
    let in_2h = new_token(&app, &jwt, &first, Some(7200)).await.unwrap();
    new_token(&app, &jwt, &first, Some(40 * DAY)).await.unwrap();
    new_token(&app, &jwt, &second, None).await.unwrap();
    let revoked = new_token(&app, &jwt, &second, Some(1800)).await.unwrap();
    revoke(&app, &jwt, &second, &revoked.token_id).await;
    let other_jwt = app.admin_jwt("org-b");
    let other = create_account(&app, &other_jwt, "Other", None)
        .await
        .service_account_id;
    new_token(&app, &other_jwt, &other, Some(60)).await.unwrap();

    let page = list_expiring(&app, &jwt, Some(seconds(7 * DAY)), 2, "")
        .await
        .unwrap();
    let ids = |tokens: &[pb::Token]| -> Vec<String> {
        tokens.iter().map(|t| t.token_id.clone()).collect()
    };
    assert_eq!(
        ids(&page.tokens),
        [in_1h.token_id.clone(), in_2h.token_id.clone()]
    );
    assert!(!page.next_page_token.is_empty());
    let rest = list_expiring(&app, &jwt, Some(seconds(7 * DAY)), 2, &page.next_page_token)
        .await
        .unwrap();
    assert_eq!(ids(&rest.tokens), std::slice::from_ref(&in_3d.token_id));
    assert!(rest.next_page_token.is_empty());
    let soon = list_expiring(&app, &jwt, Some(seconds(5400)), 0, "")
        .await
        .unwrap();
    assert_eq!(ids(&soon.tokens), std::slice::from_ref(&in_1h.token_id));

    // `within` is required, positive, whole seconds, at most 365 days.
    for within in [
        None,
        Some(seconds(0)),
        Some(seconds(-60)),
        Some(seconds(366 * DAY)),
        Some(prost_types::Duration {
            seconds: 60,
            nanos: 1,
        }),
    ] {
        assert_invalid(list_expiring(&app, &jwt, within, 0, "").await, &["within"]);
    }
    assert_invalid(
        list_expiring(&app, &jwt, Some(seconds(DAY)), -1, "garbage").await,
        &["page_size", "page_token"],
    );
}
