//! Per-tenant quotas: one org cannot grow without bound, and the limit holds under concurrency.

use service_accounts_api::pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(
    quotas_refuse_with_a_quota_failure_and_free_up_on_revocation,
    concurrent_creates_cannot_pass_the_token_quota_together,
);

async fn app_with_quotas(backend: Backend, accounts: u32, tokens: u32) -> Option<TestApp> {
    let mut app = unstarted(Setup::new(backend)).await?;
    app.options.max_service_accounts_per_org = accounts;
    app.options.max_tokens_per_service_account = tokens;
    app.start().await;
    Some(app)
}

fn create_token_request(account: &str) -> pb::CreateTokenRequest {
    pb::CreateTokenRequest {
        validate_only: false,
        allowed_cidrs: Vec::new(),
        service_account_id: account.into(),
        display_name: "t".into(),
        scopes: vec!["mcp:tools:call".into()],
        expire_time: None,
    }
}

#[track_caller]
fn assert_quota(status: tonic::Status, subject: &str) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let failure = status.get_details_quota_failure().expect("a QuotaFailure");
    assert_eq!(failure.violations.len(), 1);
    assert_eq!(failure.violations[0].subject, subject);
}

async fn quotas_refuse_with_a_quota_failure_and_free_up_on_revocation(backend: Backend) {
    let Some(app) = app_with_quotas(backend, 2, 2).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let mut admin = app.admin().await;
    let first = create_account(&app, &jwt, "One", None).await;
    create_account(&app, &jwt, "Two", None).await;
    let refused = admin
        .create_service_account(authed(
            pb::CreateServiceAccountRequest {
                display_name: "Three".into(),
                ..Default::default()
            },
            &jwt,
        ))
        .await
        .expect_err("over quota");
    assert_quota(refused, "org:org-a/service_accounts");
    // Another org has its own quota.
    create_account(&app, &app.admin_jwt("org-b"), "Three", None).await;

    let id = first.service_account_id;
    let (token, _) = create_token(&app, &jwt, &id, &["mcp:tools:call"]).await;
    create_token(&app, &jwt, &id, &["mcp:tools:call"]).await;
    let refused = admin
        .create_token(authed(create_token_request(&id), &jwt))
        .await
        .expect_err("over quota");
    assert_quota(refused, &format!("service_account:{id}/tokens"));
    // Revoked tokens do not count.
    revoke(&app, &jwt, &id, &token.token_id).await;
    create_token(&app, &jwt, &id, &["mcp:tools:call"]).await;

    let actions = audit_actions(&app, &jwt).await;
    let created = |action: &str| actions.iter().filter(|a| *a == action).count();
    assert_eq!(created("service_account.create"), 2, "{actions:?}");
    assert_eq!(created("token.create"), 3, "{actions:?}");
}

async fn concurrent_creates_cannot_pass_the_token_quota_together(backend: Backend) {
    let Some(app) = app_with_quotas(backend, 10, 5).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let id = create_account(&app, &jwt, "Busy", None)
        .await
        .service_account_id;
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let (mut admin, jwt, id) = (app.admin().await, jwt.clone(), id.clone());
        attempts.spawn(async move {
            admin
                .create_token(authed(create_token_request(&id), &jwt))
                .await
        });
    }
    let results = attempts.join_all().await;
    let created = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(created, 5, "{results:?}");
    for refused in results.into_iter().filter_map(Result::err) {
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    }
}
