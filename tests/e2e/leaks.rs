//! Reporting leaked tokens: possession is the authority, each revocation is audited in the
//! token's org, and the unauthenticated endpoint is rate-limited per caller.

use service_accounts_api::pb;
use service_accounts_api::pb::leak_reporting_client::LeakReportingClient;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(
    leaked_tokens_are_revoked_by_whoever_holds_them,
    bad_reports_are_refused_and_change_nothing,
);

async fn reporter(app: &TestApp) -> LeakReportingClient<Channel> {
    LeakReportingClient::new(app.channel().await)
}

async fn report(
    app: &TestApp,
    tokens: Vec<String>,
    source: &str,
) -> Result<Vec<pb::LeakedTokenResult>, tonic::Status> {
    reporter(app)
        .await
        .report_leaked_tokens(pb::ReportLeakedTokensRequest {
            tokens,
            source: source.into(),
        })
        .await
        .map(|r| r.into_inner().results)
}

async fn leaked_tokens_are_revoked_by_whoever_holds_them(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let id = create_account(&app, &jwt, "Bot", None)
        .await
        .service_account_id;
    let (live, live_secret) = create_token(&app, &jwt, &id, &["mcp:tools:call"]).await;
    let (revoked, revoked_secret) = create_token(&app, &jwt, &id, &["mcp:tools:call"]).await;
    revoke(&app, &jwt, &id, &revoked.token_id).await;
    // A disabled account's token would work again once enabled: it is revoked too.
    let other_jwt = app.admin_jwt("org-b");
    let disabled_id = create_account(&app, &other_jwt, "Paused", None)
        .await
        .service_account_id;
    let (_, paused_secret) =
        create_token(&app, &other_jwt, &disabled_id, &["mcp:tools:call"]).await;
    app.admin()
        .await
        .disable_service_account(authed(
            pb::DisableServiceAccountRequest {
                validate_only: false,
                service_account_id: disabled_id.clone(),
            },
            &other_jwt,
        ))
        .await
        .unwrap();
    // Cached before the report: the revocation must reach the cache.
    for _ in 0..3 {
        assert!(introspect(&app, &live_secret, "", "", &[]).await.active);
    }
    // A token nobody reports keeps working.
    let (_, bystander) = create_token(&app, &jwt, &id, &["mcp:tools:call"]).await;
    // Well-formed (a valid checksum) but never issued.
    let unknown = service_accounts_domain::token::TokenSecret::generate()
        .expose()
        .to_owned();
    let results = report(
        &app,
        vec![
            live_secret.clone(),
            revoked_secret.clone(),
            paused_secret.clone(),
            unknown.clone(),
            "emb_sa_not-a-token".into(),
            live_secret.clone(),
        ],
        "https://github.com/acme/app/blob/main/.env",
    )
    .await
    .unwrap();
    let outcomes: Vec<pb::LeakOutcome> = results.iter().map(|r| r.outcome()).collect();
    assert_eq!(
        outcomes,
        [
            pb::LeakOutcome::Revoked,
            pb::LeakOutcome::AlreadyInactive,
            pb::LeakOutcome::Revoked,
            pb::LeakOutcome::Unknown,
            pb::LeakOutcome::Malformed,
            pb::LeakOutcome::AlreadyInactive,
        ]
    );
    assert_eq!(results[0].hint, live.hint);
    assert_eq!(results[3].hint, format!("emb_sa_…{}", &unknown[44..]));
    assert!(results[4].hint.is_empty());

    let answer = introspect(&app, &live_secret, "", "", &[]).await;
    assert_eq!(answer.inactive_reason(), pb::InactiveReason::Revoked);
    assert!(introspect(&app, &bystander, "", "", &[]).await.active);
    let listed = tokens_of(&app, &jwt, &id).await;
    let leaked = listed.iter().find(|t| t.token_id == live.token_id).unwrap();
    assert_eq!(leaked.revoke_reason(), pb::token::RevokeReason::Leaked);
    assert_eq!(leaked.revoked_by, "leak-report");
    let first = listed
        .iter()
        .find(|t| t.token_id == revoked.token_id)
        .unwrap();
    assert_eq!(first.revoke_reason(), pb::token::RevokeReason::Admin);

    // Audited in each token's own org, with the source.
    for (org_jwt, count) in [(&jwt, 1), (&other_jwt, 1)] {
        let events = audit_events(&app, org_jwt).await;
        let leaks: Vec<&pb::AuditEvent> = events
            .iter()
            .filter(|e| e.action == "token.leak_revoke")
            .collect();
        assert_eq!(leaks.len(), count);
        assert_eq!(leaks[0].actor, "leak-report");
        assert!(
            leaks[0].details.contains("github.com/acme/app"),
            "{leaks:?}"
        );
    }
}

async fn bad_reports_are_refused_and_change_nothing(backend: Backend) {
    let Some(mut app) = unstarted(Setup::new(backend)).await else {
        return;
    };
    app.options.leak_report_tokens_per_minute = 5.try_into().unwrap();
    app.start().await;
    let jwt = app.admin_jwt("org-a");
    let id = create_account(&app, &jwt, "Bot", None)
        .await
        .service_account_id;
    let (_, secret) = create_token(&app, &jwt, &id, &["mcp:tools:call"]).await;

    assert_invalid(report(&app, vec![], "").await, &["tokens"]);
    assert_invalid(
        report(&app, vec![secret.clone(); 1001], "").await,
        &["tokens"],
    );
    assert_invalid(
        report(&app, vec![secret.clone()], &"x".repeat(2049)).await,
        &["source"],
    );
    assert!(introspect(&app, &secret, "", "", &[]).await.active);
    assert_eq!(audit_actions(&app, &jwt).await.len(), 2);

    // A full report is admitted even above the per-minute rate; the next one is not.
    let junk: Vec<String> = (0..1000).map(|i| format!("junk-{i}")).collect();
    let results = report(&app, junk, "scanner").await.unwrap();
    assert!(
        results
            .iter()
            .all(|r| r.outcome() == pb::LeakOutcome::Malformed)
    );
    let status = assert_code(
        report(&app, vec![secret.clone()], "").await,
        Code::ResourceExhausted,
    );
    let quota = status.get_details_quota_failure().expect("QuotaFailure");
    assert!(quota.violations[0].subject.starts_with("leak_reports:"));
    assert!(introspect(&app, &secret, "", "", &[]).await.active);
}
