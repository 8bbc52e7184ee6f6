//! Disabling and enabling accounts, optimistic concurrency with etags, and what deleting an
//! account keeps (revoked tokens, audit events) and for how long.

use std::time::Duration;

use sea_orm::{ConnectionTrait, Database, Statement};
use service_accounts_api::pb;
use tonic::Code;

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(
    disabling_an_account_stops_its_tokens_at_once_and_enabling_restores_only_the_live_ones,
    a_stale_etag_is_aborted_and_the_current_one_applies,
    a_deleted_accounts_tokens_read_revoked_until_its_retention_ends,
);

async fn set_state(
    app: &TestApp,
    jwt: &str,
    id: &str,
    disabled: bool,
) -> Result<pb::ServiceAccount, tonic::Status> {
    let mut admin = app.admin().await;
    let account = if disabled {
        admin
            .disable_service_account(authed(
                pb::DisableServiceAccountRequest {
                    validate_only: false,
                    service_account_id: id.into(),
                },
                jwt,
            ))
            .await?
            .into_inner()
            .service_account
    } else {
        admin
            .enable_service_account(authed(
                pb::EnableServiceAccountRequest {
                    validate_only: false,
                    service_account_id: id.into(),
                },
                jwt,
            ))
            .await?
            .into_inner()
            .service_account
    };
    Ok(account.expect("account"))
}

async fn disabling_an_account_stops_its_tokens_at_once_and_enabling_restores_only_the_live_ones(
    backend: Backend,
) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let account = create_account(&app, &jwt, "Bot", Some(&["app-1"])).await;
    assert_eq!(account.state(), pb::service_account::State::Active);
    let id = account.service_account_id.clone();
    let (_, live) = create_token(&app, &jwt, &id, &["mcp:tools:call"]).await;
    let (revoked, revoked_secret) = create_token(&app, &jwt, &id, &["mcp:tools:call"]).await;
    revoke(&app, &jwt, &id, &revoked.token_id).await;
    // Served from the cache from here on: the disable must reach it.
    for _ in 0..3 {
        assert!(introspect(&app, &live, "org-a", "app-1", &[]).await.allowed);
    }

    let disabled = set_state(&app, &jwt, &id, true).await.unwrap();
    assert_eq!(disabled.state(), pb::service_account::State::Disabled);
    assert_ne!(disabled.etag, account.etag, "a state change is a change");
    let answer = introspect(&app, &live, "org-a", "app-1", &[]).await;
    assert!(!answer.active && !answer.allowed);
    assert_eq!(
        answer.inactive_reason(),
        pb::InactiveReason::AccountDisabled
    );
    assert!(answer.service_account_id.is_empty() && answer.scopes.is_empty());
    assert_eq!(
        introspect(&app, &revoked_secret, "", "", &[])
            .await
            .inactive_reason(),
        pb::InactiveReason::Revoked,
        "revocation is reported before the account's state"
    );

    // Idempotent: the same account back, nothing recorded.
    let again = set_state(&app, &jwt, &id, true).await.unwrap();
    assert_eq!(again.etag, disabled.etag);
    let enabled = set_state(&app, &jwt, &id, false).await.unwrap();
    assert_eq!(enabled.state(), pb::service_account::State::Active);
    set_state(&app, &jwt, &id, false).await.unwrap();
    assert!(introspect(&app, &live, "org-a", "app-1", &[]).await.allowed);
    assert_eq!(
        introspect(&app, &revoked_secret, "", "", &[])
            .await
            .inactive_reason(),
        pb::InactiveReason::Revoked
    );
    let actions = audit_actions(&app, &jwt).await;
    let count = |action: &str| actions.iter().filter(|a| *a == action).count();
    assert_eq!(count("service_account.disable"), 1, "{actions:?}");
    assert_eq!(count("service_account.enable"), 1, "{actions:?}");

    // Another org's admin sees nothing; a bad id is a field violation.
    let other = app.admin_jwt("org-b");
    assert_code(set_state(&app, &other, &id, true).await, Code::NotFound);
    assert!(introspect(&app, &live, "org-a", "app-1", &[]).await.allowed);
    assert_invalid(
        set_state(&app, &jwt, "not-an-id", true).await,
        &["service_account_id"],
    );
}

async fn update_name(
    app: &TestApp,
    jwt: &str,
    id: &str,
    name: &str,
    etag: &str,
) -> Result<pb::ServiceAccount, tonic::Status> {
    Ok(app
        .admin()
        .await
        .update_service_account(authed(
            pb::UpdateServiceAccountRequest {
                validate_only: false,
                service_account: Some(pb::ServiceAccount {
                    service_account_id: id.into(),
                    display_name: name.into(),
                    etag: etag.into(),
                    ..Default::default()
                }),
                update_mask: None,
            },
            jwt,
        ))
        .await?
        .into_inner()
        .service_account
        .expect("account"))
}

async fn a_stale_etag_is_aborted_and_the_current_one_applies(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let read = create_account(&app, &jwt, "Bot", None).await;
    let id = &read.service_account_id;
    assert!(!read.etag.is_empty());
    // Someone else changes the account after we read it.
    let theirs = update_name(&app, &jwt, id, "Their name", "").await.unwrap();
    assert_ne!(theirs.etag, read.etag);
    let status = assert_code(
        update_name(&app, &jwt, id, "My name", &read.etag).await,
        Code::Aborted,
    );
    assert!(status.message().contains("etag"), "{status:?}");
    let current = app
        .admin()
        .await
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
    assert_eq!(current.display_name, "Their name", "nothing was written");
    assert_eq!(current.etag, theirs.etag);
    let mine = update_name(&app, &jwt, id, "My name", &current.etag)
        .await
        .unwrap();
    assert_eq!(mine.display_name, "My name");
    // Grants change the account too.
    let granted = app
        .admin()
        .await
        .set_app_access(authed(
            pb::SetAppAccessRequest {
                validate_only: false,
                service_account_id: id.clone(),
                app_access: Some(pb::AppAccess {
                    all_apps: false,
                    app_ids: vec!["app-1".into()],
                }),
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner()
        .service_account
        .unwrap();
    assert_ne!(granted.etag, mine.etag);
}

async fn a_deleted_accounts_tokens_read_revoked_until_its_retention_ends(backend: Backend) {
    let Some(mut app) = unstarted(Setup::new(backend)).await else {
        return;
    };
    app.options.deleted_retention = Duration::from_secs(3);
    // A purged token's cached "revoked" answer ages out as any entry does.
    app.options.introspection_cache_max_age = Duration::from_secs(1);
    app.start().await;
    let jwt = app.admin_jwt("org-a");
    let id = create_account(&app, &jwt, "Bot", None)
        .await
        .service_account_id;
    let (_, live) = create_token(&app, &jwt, &id, &["mcp:tools:call"]).await;
    let (revoked, revoked_secret) = create_token(&app, &jwt, &id, &["mcp:tools:call"]).await;
    revoke(&app, &jwt, &id, &revoked.token_id).await;
    assert!(introspect(&app, &live, "", "", &[]).await.active);

    app.admin()
        .await
        .delete_service_account(authed(
            pb::DeleteServiceAccountRequest {
                validate_only: false,
                service_account_id: id.clone(),
            },
            &jwt,
        ))
        .await
        .unwrap();
    for secret in [&live, &revoked_secret] {
        assert_eq!(
            introspect(&app, secret, "", "", &[])
                .await
                .inactive_reason(),
            pb::InactiveReason::Revoked
        );
    }
    // The account is gone for admins at once, and its name is free again.
    let get = app
        .admin()
        .await
        .get_service_account(authed(
            pb::GetServiceAccountRequest {
                service_account_id: id.clone(),
            },
            &jwt,
        ))
        .await;
    assert_code(get, Code::NotFound);
    let revoke_again = app
        .admin()
        .await
        .revoke_token(authed(
            pb::RevokeTokenRequest {
                validate_only: false,
                service_account_id: id.clone(),
                token_id: revoked.token_id.clone(),
            },
            &jwt,
        ))
        .await;
    assert_code(revoke_again, Code::NotFound);
    let listed = app
        .admin()
        .await
        .list_service_accounts(authed(pb::ListServiceAccountsRequest::default(), &jwt))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.service_accounts.is_empty());
    create_account(&app, &jwt, "Bot", None).await;

    // Each token not yet revoked was revoked by the deleting admin, for that reason; the one
    // revoked before keeps its own revocation.
    let db = Database::connect(&app.database.url).await.unwrap();
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT id, revoked_by, revoke_reason FROM tokens \
                 WHERE service_account_id = '{id}' ORDER BY id"
            ),
        ))
        .await
        .unwrap();
    let stored: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| {
            (
                r.try_get::<String>("", "id").unwrap(),
                r.try_get::<String>("", "revoked_by").unwrap(),
                r.try_get::<String>("", "revoke_reason").unwrap(),
            )
        })
        .collect();
    assert_eq!(stored.len(), 2);
    for (token, by, reason) in &stored {
        assert_eq!(by, "admin-of-org-a");
        let expected = if *token == revoked.token_id {
            "admin"
        } else {
            "account_deleted"
        };
        assert_eq!(reason, expected, "{token}");
    }

    // After the retention the rows are purged: the tokens are unknown; audit events stay.
    wait_until("the deleted account's tokens are purged", async || {
        introspect(&app, &live, "", "", &[]).await.inactive_reason() == pb::InactiveReason::Unknown
    })
    .await;
    let actions = audit_actions(&app, &jwt).await;
    assert!(actions.contains(&"service_account.delete".to_owned()));
    assert_eq!(
        actions.iter().filter(|a| *a == "token.create").count(),
        2,
        "{actions:?}"
    );
    db.close().await.ok();
}
