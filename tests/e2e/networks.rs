//! Where a token may be used from (`allowed_cidrs`, `client_ip`), changing a token, and where it
//! was last used.

use std::time::Duration;

use service_accounts_api::pb;
use tonic::Code;

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(
    a_token_restricted_to_networks_is_allowed_only_from_inside_them,
    bad_networks_and_token_updates_are_refused_and_change_nothing,
    where_a_token_was_last_used_is_shown_after_a_flush,
);

async fn from(app: &TestApp, secret: &str, client_ip: &str) -> pb::IntrospectResponse {
    app.introspection()
        .await
        .introspect(pb::IntrospectRequest {
            token: secret.into(),
            org_id: "org-a".into(),
            app_id: "app-1".into(),
            client_ip: client_ip.into(),
            ..Default::default()
        })
        .await
        .expect("introspect")
        .into_inner()
}

async fn restricted_token(
    app: &TestApp,
    jwt: &str,
    account: &str,
    cidrs: &[&str],
) -> Result<pb::CreateTokenResponse, tonic::Status> {
    app.admin()
        .await
        .create_token(authed(
            pb::CreateTokenRequest {
                validate_only: false,
                service_account_id: account.into(),
                display_name: "deploy".into(),
                scopes: vec!["mcp:tools:call".into()],
                expire_time: None,
                allowed_cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
            },
            jwt,
        ))
        .await
        .map(|r| r.into_inner())
}

async fn update_token(
    app: &TestApp,
    jwt: &str,
    token: pb::Token,
    mask: &[&str],
) -> Result<pb::Token, tonic::Status> {
    app.admin()
        .await
        .update_token(authed(
            pb::UpdateTokenRequest {
                validate_only: false,
                token: Some(token),
                update_mask: Some(prost_types::FieldMask {
                    paths: mask.iter().map(|p| p.to_string()).collect(),
                }),
            },
            jwt,
        ))
        .await
        .map(|r| r.into_inner().token.expect("token"))
}

async fn a_token_restricted_to_networks_is_allowed_only_from_inside_them(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let id = create_account(&app, &jwt, "Bot", Some(&["app-1"]))
        .await
        .service_account_id;
    let created = restricted_token(&app, &jwt, &id, &["10.1.2.3/8", "2001:DB8::1"])
        .await
        .unwrap();
    let token = created.token.unwrap();
    let secret = created.secret;
    assert_eq!(token.allowed_cidrs, ["10.0.0.0/8", "2001:db8::1/128"]);

    assert!(from(&app, &secret, "10.200.0.9").await.allowed);
    assert!(from(&app, &secret, "::ffff:10.0.0.1").await.allowed);
    assert!(from(&app, &secret, "2001:db8::1").await.allowed);
    for outside in ["192.0.2.1", "2001:db8::2", ""] {
        let answer = from(&app, &secret, outside).await;
        assert!(answer.active && !answer.allowed, "{outside:?}: {answer:?}");
        assert_eq!(
            answer.denial_reason(),
            pb::DenialReason::ClientIpNotAllowed,
            "{outside:?}"
        );
        assert_eq!(answer.service_account_id, id, "identity is still reported");
    }
    let status = app
        .introspection()
        .await
        .introspect(pb::IntrospectRequest {
            token: secret.clone(),
            client_ip: "10.0.0.0/8".into(),
            ..Default::default()
        })
        .await;
    assert_invalid(status, &["client_ip"]);

    // Lifting the restriction applies to the next introspection.
    let lifted = update_token(
        &app,
        &jwt,
        pb::Token {
            service_account_id: id.clone(),
            token_id: token.token_id.clone(),
            ..Default::default()
        },
        &["allowed_cidrs"],
    )
    .await
    .unwrap();
    assert!(lifted.allowed_cidrs.is_empty());
    assert_eq!(
        lifted.display_name, "deploy",
        "fields outside the mask stay"
    );
    assert!(from(&app, &secret, "").await.allowed);
    // And a rename leaves the networks alone.
    update_token(
        &app,
        &jwt,
        pb::Token {
            service_account_id: id.clone(),
            token_id: token.token_id.clone(),
            allowed_cidrs: vec!["192.0.2.0/24".into()],
            ..Default::default()
        },
        &["allowed_cidrs"],
    )
    .await
    .unwrap();
    let renamed = update_token(
        &app,
        &jwt,
        pb::Token {
            service_account_id: id.clone(),
            token_id: token.token_id.clone(),
            display_name: "deploy, prod".into(),
            ..Default::default()
        },
        &["display_name"],
    )
    .await
    .unwrap();
    assert_eq!(renamed.display_name, "deploy, prod");
    assert_eq!(renamed.allowed_cidrs, ["192.0.2.0/24"]);
    assert!(from(&app, &secret, "192.0.2.200").await.allowed);
    assert!(!from(&app, &secret, "10.0.0.1").await.allowed);
    let actions = audit_actions(&app, &jwt).await;
    assert_eq!(
        actions.iter().filter(|a| *a == "token.update").count(),
        3,
        "{actions:?}"
    );
}

async fn bad_networks_and_token_updates_are_refused_and_change_nothing(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let id = create_account(&app, &jwt, "Bot", None)
        .await
        .service_account_id;
    assert_invalid(
        restricted_token(
            &app,
            &jwt,
            &id,
            &["10.0.0.0/8", "10.0.0.0/33", "example.com"],
        )
        .await,
        &["allowed_cidrs[1]", "allowed_cidrs[2]"],
    );
    let many: Vec<String> = (0..33).map(|i| format!("10.0.{i}.0/24")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_invalid(
        restricted_token(&app, &jwt, &id, &many).await,
        &["allowed_cidrs"],
    );
    let (token, _) = create_token(&app, &jwt, &id, &["mcp:tools:call"]).await;
    let before = audit_actions(&app, &jwt).await;
    let target = pb::Token {
        service_account_id: id.clone(),
        token_id: token.token_id.clone(),
        display_name: String::new(),
        allowed_cidrs: vec!["not-a-cidr".into()],
        ..Default::default()
    };
    assert_invalid(
        update_token(&app, &jwt, target.clone(), &[]).await,
        &["update_mask"],
    );
    assert_invalid(
        update_token(&app, &jwt, target.clone(), &["*"]).await,
        &["token.display_name", "token.allowed_cidrs[0]"],
    );
    assert_invalid(
        update_token(&app, &jwt, target.clone(), &["scopes"]).await,
        &["update_mask.paths[0]"],
    );
    let other = app.admin_jwt("org-b");
    let renamed = pb::Token {
        display_name: "mine now".into(),
        ..target
    };
    assert_code(
        update_token(&app, &other, renamed, &["display_name"]).await,
        Code::NotFound,
    );
    assert_eq!(audit_actions(&app, &jwt).await, before);
}

async fn where_a_token_was_last_used_is_shown_after_a_flush(backend: Backend) {
    let Some(app) = Setup::new(backend)
        .last_used_flush_interval(Duration::from_millis(100))
        .start()
        .await
    else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let account = create_account(&app, &jwt, "Bot", Some(&["app-1"])).await;
    assert!(account.last_used_time.is_none());
    let id = account.service_account_id;
    let (token, secret) = create_token(&app, &jwt, &id, &["mcp:tools:call"]).await;
    assert!(from(&app, &secret, "2001:db8::7").await.allowed);
    // A later use without an address keeps the last address seen.
    assert!(introspect(&app, &secret, "", "", &[]).await.active);
    // Both uses may land in one flush or in two: wait until the account shows the token's
    // latest use.
    let (listed, account) = wait_until("the uses are flushed", async || {
        let mut admin = app.admin().await;
        let tokens = admin
            .list_tokens(authed(
                pb::ListTokensRequest {
                    service_account_id: id.clone(),
                    ..Default::default()
                },
                &jwt,
            ))
            .await
            .unwrap()
            .into_inner()
            .tokens;
        let account = admin
            .get_service_account(authed(
                pb::GetServiceAccountRequest {
                    service_account_id: id.clone(),
                },
                &jwt,
            ))
            .await
            .unwrap()
            .into_inner()
            .service_account
            .unwrap();
        tokens
            .into_iter()
            .find(|t| t.token_id == token.token_id && !t.last_used_client_ip.is_empty())
            .filter(|t| t.last_used_time.is_some() && t.last_used_time == account.last_used_time)
            .map(|t| (t, account))
    })
    .await;
    assert_eq!(listed.last_used_app_id, "app-1");
    assert_eq!(listed.last_used_client_ip, "2001:db8::7");
    assert_eq!(account.service_account_id, id);
}
