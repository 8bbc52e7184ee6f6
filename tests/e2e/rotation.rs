//! Rotating a token in one call: the new secret, the old token's grace period or immediate
//! revocation, and everything refused along the way.

use service_accounts_api::pb;
use tonic::Code;

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(
    rotation_with_a_grace_period_issues_a_copy_and_ends_the_old_token_later,
    rotation_without_a_grace_period_revokes_the_old_token_at_once,
    bad_rotations_are_refused_and_change_nothing,
);

pub fn seconds(s: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: s,
        nanos: 0,
    }
}

pub fn in_seconds(s: i64) -> prost_types::Timestamp {
    let t = chrono::Utc::now() + chrono::TimeDelta::seconds(s);
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    }
}

pub async fn rotate(
    app: &TestApp,
    jwt: &str,
    account: &str,
    token: &str,
    grace: Option<prost_types::Duration>,
) -> Result<pb::RotateTokenResponse, tonic::Status> {
    app.admin()
        .await
        .rotate_token(authed(
            pb::RotateTokenRequest {
                validate_only: false,
                service_account_id: account.into(),
                token_id: token.into(),
                grace_period: grace,
                expire_time: None,
            },
            jwt,
        ))
        .await
        .map(|r| r.into_inner())
}

async fn rotation_with_a_grace_period_issues_a_copy_and_ends_the_old_token_later(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let id = create_account(&app, &jwt, "Bot", None)
        .await
        .service_account_id;
    let created = app
        .admin()
        .await
        .create_token(authed(
            pb::CreateTokenRequest {
                validate_only: false,
                service_account_id: id.clone(),
                display_name: "GitHub Actions, prod".into(),
                scopes: vec!["mcp:tools:call".into(), "mcp:read".into()],
                expire_time: Some(in_seconds(30 * 86_400)),
                allowed_cidrs: vec!["10.0.0.0/8".into()],
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner();
    let old = created.token.unwrap();

    let rotated = rotate(&app, &jwt, &id, &old.token_id, Some(seconds(3600)))
        .await
        .unwrap();
    let new = rotated.token.unwrap();
    let previous = rotated.previous_token.unwrap();
    assert_ne!(rotated.secret, created.secret);
    assert!(rotated.secret.starts_with("emb_sa_") && rotated.secret.len() == 50);
    assert_eq!(new.previous_token_id, old.token_id);
    assert_eq!(new.display_name, old.display_name);
    assert_eq!(new.scopes, old.scopes);
    assert_eq!(new.allowed_cidrs, ["10.0.0.0/8"]);
    assert!(new.expire_time.is_none(), "no policy, no expire_time: none");
    // The old one now ends within the hour, and works until then.
    assert_eq!(previous.token_id, old.token_id);
    assert!(previous.revoke_time.is_none());
    let ends = instant(&previous.expire_time).0 - chrono::Utc::now().timestamp();
    assert!((3590..=3600).contains(&ends), "{ends}");
    for secret in [&created.secret, &rotated.secret] {
        let answer = app
            .introspection()
            .await
            .introspect(pb::IntrospectRequest {
                token: secret.clone(),
                client_ip: "10.1.2.3".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(answer.allowed, "{answer:?}");
    }
    // A grace period longer than the token's own remaining life keeps the earlier expiry.
    let again = rotate(&app, &jwt, &id, &new.token_id, Some(seconds(86_400)))
        .await
        .unwrap();
    let shortened = again.previous_token.unwrap();
    assert!(instant(&shortened.expire_time).0 - chrono::Utc::now().timestamp() > 86_000);
    let listed = tokens_of(&app, &jwt, &id).await;
    assert_eq!(listed.len(), 3);
    assert_eq!(
        instant(&listed[0].expire_time),
        instant(&previous.expire_time),
        "the rotation of the second token left the first alone"
    );
    let actions = audit_actions(&app, &jwt).await;
    assert_eq!(
        actions.iter().filter(|a| *a == "token.rotate").count(),
        2,
        "{actions:?}"
    );
}

async fn rotation_without_a_grace_period_revokes_the_old_token_at_once(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let id = create_account(&app, &jwt, "Bot", None)
        .await
        .service_account_id;
    let (old, old_secret) = create_token(&app, &jwt, &id, &["mcp:tools:call"]).await;
    for _ in 0..3 {
        assert!(introspect(&app, &old_secret, "", "", &[]).await.active);
    }
    for grace in [None, Some(seconds(0))] {
        let (old, old_secret) = if grace.is_none() {
            (old.clone(), old_secret.clone())
        } else {
            create_token(&app, &jwt, &id, &["mcp:tools:call"]).await
        };
        let rotated = rotate(&app, &jwt, &id, &old.token_id, grace).await.unwrap();
        let previous = rotated.previous_token.unwrap();
        assert!(previous.revoke_time.is_some());
        assert_eq!(previous.revoke_reason(), pb::token::RevokeReason::Rotated);
        assert_eq!(previous.revoked_by, "admin-of-org-a");
        let answer = introspect(&app, &old_secret, "", "", &[]).await;
        assert_eq!(answer.inactive_reason(), pb::InactiveReason::Revoked);
        assert!(introspect(&app, &rotated.secret, "", "", &[]).await.active);
        // Rotating it again is too late.
        let status = assert_code(
            rotate(&app, &jwt, &id, &old.token_id, None).await,
            Code::FailedPrecondition,
        );
        assert!(
            status.message().contains("revoked or expired"),
            "{status:?}"
        );
    }
}

async fn bad_rotations_are_refused_and_change_nothing(backend: Backend) {
    let Some(mut app) = unstarted(Setup::new(backend)).await else {
        return;
    };
    app.options.max_tokens_per_service_account = 2;
    app.start().await;
    let jwt = app.admin_jwt("org-a");
    let id = create_account(&app, &jwt, "Bot", None)
        .await
        .service_account_id;
    let (token, secret) = create_token(&app, &jwt, &id, &["mcp:tools:call"]).await;
    let before = audit_actions(&app, &jwt).await;

    // Field violations, all at once.
    let request = pb::RotateTokenRequest {
        validate_only: false,
        service_account_id: "nope".into(),
        token_id: "nope".into(),
        grace_period: Some(seconds(-1)),
        expire_time: Some(in_seconds(-60)),
    };
    let result = app.admin().await.rotate_token(authed(request, &jwt)).await;
    assert_invalid(
        result,
        &[
            "service_account_id",
            "token_id",
            "grace_period",
            "expire_time",
        ],
    );
    for grace in [
        seconds(30 * 86_400 + 1),
        prost_types::Duration {
            seconds: 60,
            nanos: 5,
        },
    ] {
        assert_invalid(
            rotate(&app, &jwt, &id, &token.token_id, Some(grace)).await,
            &["grace_period"],
        );
    }
    // Another org's token is not found; so is an unknown one.
    let other = app.admin_jwt("org-b");
    assert_code(
        rotate(&app, &other, &id, &token.token_id, None).await,
        Code::NotFound,
    );
    let unknown = uuid::Uuid::now_v7().to_string();
    assert_code(
        rotate(&app, &jwt, &id, &unknown, None).await,
        Code::NotFound,
    );
    // At the quota a rotation with a grace period would hold three live tokens.
    create_token(&app, &jwt, &id, &["mcp:tools:call"]).await;
    assert_code(
        rotate(&app, &jwt, &id, &token.token_id, Some(seconds(60))).await,
        Code::ResourceExhausted,
    );
    let listed = tokens_of(&app, &jwt, &id).await;
    assert_eq!(listed.len(), 2);
    assert!(
        listed[0].expire_time.is_none(),
        "the old token was not shortened"
    );
    assert!(introspect(&app, &secret, "", "", &[]).await.active);
    // Without a grace period the old token stops counting: allowed at the quota.
    rotate(&app, &jwt, &id, &token.token_id, None)
        .await
        .unwrap();
    let after = audit_actions(&app, &jwt).await;
    assert_eq!(after.len(), before.len() + 2, "{after:?}");
}
