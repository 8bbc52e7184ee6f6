use std::time::Duration;

use service_accounts_api::pb;
use tonic::Code;

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(
    tokens_are_shown_once_listed_without_secrets_and_revoked,
    invalid_tokens_are_rejected_and_nothing_is_written,
    deleting_an_account_kills_its_tokens,
    expired_tokens_are_inactive,
    last_used_is_recorded_and_flushed_on_shutdown,
    no_secret_reaches_storage_or_logs,
);

async fn tokens_are_shown_once_listed_without_secrets_and_revoked(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let mut admin = app.admin().await;
    let account = create_account(&app, &jwt, "CI Pipeline", None).await;
    let id = account.service_account_id.clone();

    let (old, old_secret) = create_token(&app, &jwt, &id, &["mcp:tools:call", "mcp:read"]).await;
    let (new, new_secret) = create_token(&app, &jwt, &id, &["mcp:tools:call"]).await;
    assert_eq!(old_secret.len(), 50);
    assert!(old_secret.starts_with("emb_sa_"));
    assert_ne!(old_secret, new_secret);
    assert_eq!(old.hint, format!("emb_sa_…{}", &old_secret[44..]));
    assert_eq!(old.scopes, ["mcp:read", "mcp:tools:call"]);
    assert_eq!(old.created_by, "admin-of-org-a");
    assert_eq!(old.state(), pb::token::State::Active);

    // Both tokens work at once (rotation without downtime).
    let active = introspect(&app, &old_secret, "", "", &[]).await;
    assert!(active.active && active.allowed);
    assert_eq!(active.org_id, "org-a");
    assert_eq!(active.service_account_id, id);
    assert_eq!(active.service_account_display_name, "CI Pipeline");
    assert_eq!(active.token_id, old.token_id);
    assert_eq!(active.scopes, ["mcp:read", "mcp:tools:call"]);
    assert!(introspect(&app, &new_secret, "", "", &[]).await.active);

    let missing = introspect(&app, &new_secret, "", "", &["mcp:read", "mcp:tools:call"]).await;
    assert!(missing.active && !missing.allowed);
    assert_eq!(missing.denial_reason(), pb::DenialReason::ScopeMissing);
    assert_eq!(missing.missing_scopes, ["mcp:read"]);

    let listed = admin
        .list_tokens(authed(
            pb::ListTokensRequest {
                service_account_id: id.clone(),
                ..Default::default()
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tokens.len(), 2);
    assert_eq!(listed.tokens[0].token_id, old.token_id);
    let debug = format!("{listed:?}");
    assert!(!debug.contains(&old_secret[7..44]) && !debug.contains(&new_secret[7..44]));

    let revoked = admin
        .revoke_token(authed(
            pb::RevokeTokenRequest {
                validate_only: false,
                service_account_id: id.clone(),
                token_id: old.token_id.clone(),
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert!(revoked.revoke_time.is_some());
    assert_eq!(revoked.revoked_by, "admin-of-org-a");
    assert_eq!(revoked.state(), pb::token::State::Revoked);
    let after = introspect(&app, &old_secret, "", "", &[]).await;
    assert!(!after.active && !after.allowed);
    assert_eq!(after.inactive_reason(), pb::InactiveReason::Revoked);
    assert_eq!(after.denial_reason(), pb::DenialReason::TokenInactive);
    assert!(
        after.service_account_id.is_empty() && after.org_id.is_empty() && after.scopes.is_empty()
    );
    assert!(introspect(&app, &new_secret, "", "", &[]).await.active);

    // Operators see the revocation as an audit log line, and the revoked token's later use.
    let logs = captured_logs();
    let revoke_line = logs
        .lines()
        .find(|l| {
            l.contains("admin change committed")
                && l.contains("action=token.revoke")
                && l.contains(&format!("target_id={}", old.token_id))
        })
        .expect("audit log line for the revocation");
    assert!(
        revoke_line.contains("actor=admin-of-org-a") && revoke_line.contains("org_id=org-a"),
        "{revoke_line}"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains("a token that no longer works was presented")
                && l.contains(&old.token_id)),
        "warning about the revoked token's use"
    );

    // Revoking again is a no-op that reports the original revocation.
    let again = admin
        .revoke_token(authed(
            pb::RevokeTokenRequest {
                validate_only: false,
                service_account_id: id.clone(),
                token_id: old.token_id.clone(),
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(again.revoke_time, revoked.revoke_time);

    let unknown = admin
        .revoke_token(authed(
            pb::RevokeTokenRequest {
                validate_only: false,
                service_account_id: id.clone(),
                token_id: uuid::Uuid::now_v7().to_string(),
            },
            &jwt,
        ))
        .await;
    assert_code(unknown, Code::NotFound);

    // Pagination over tokens.
    let first = admin
        .list_tokens(authed(
            pb::ListTokensRequest {
                service_account_id: id.clone(),
                page_size: 1,
                page_token: String::new(),
                ..Default::default()
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner();
    let second = admin
        .list_tokens(authed(
            pb::ListTokensRequest {
                service_account_id: id.clone(),
                page_size: 1,
                page_token: first.next_page_token.clone(),
                ..Default::default()
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.tokens[0].token_id, old.token_id);
    assert_eq!(second.tokens[0].token_id, new.token_id);
    assert!(second.next_page_token.is_empty());
    // Listed, each token says whether it works.
    assert_eq!(first.tokens[0].state(), pb::token::State::Revoked);
    assert_eq!(second.tokens[0].state(), pb::token::State::Active);

    assert_eq!(
        audit_actions(&app, &jwt).await,
        [
            "service_account.create",
            "token.create",
            "token.create",
            "token.revoke"
        ]
    );
}

async fn invalid_tokens_are_rejected_and_nothing_is_written(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let mut admin = app.admin().await;
    let id = create_account(&app, &jwt, "Bot", None)
        .await
        .service_account_id;
    let request = |name: &str, scopes: &[&str], expire: Option<prost_types::Timestamp>| {
        authed(
            pb::CreateTokenRequest {
                validate_only: false,
                allowed_cidrs: Vec::new(),
                service_account_id: id.clone(),
                display_name: name.into(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                expire_time: expire,
            },
            &jwt,
        )
    };
    assert_invalid(
        admin.create_token(request("t", &[], None)).await,
        &["scopes"],
    );
    assert_invalid(
        admin
            .create_token(request("t", &["mcp:tools:call", "admin:all"], None))
            .await,
        &["scopes"],
    );
    assert_invalid(
        admin.create_token(request("t", &["mcp:read"], None)).await,
        &["scopes"],
    );
    assert_invalid(
        admin.create_token(request("t", &[""], None)).await,
        &["scopes"],
    );
    assert_invalid(
        admin
            .create_token(request("", &["mcp:tools:call"], None))
            .await,
        &["display_name"],
    );
    let past = prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp() - 60,
        nanos: 0,
    };
    assert_invalid(
        admin
            .create_token(request("t", &["mcp:tools:call"], Some(past)))
            .await,
        &["expire_time"],
    );
    let nonsense = prost_types::Timestamp {
        seconds: 0,
        nanos: -5,
    };
    assert_invalid(
        admin
            .create_token(request("t", &["mcp:tools:call"], Some(nonsense)))
            .await,
        &["expire_time"],
    );
    assert_invalid(
        admin.create_token(request("", &[], None)).await,
        &["display_name", "scopes"],
    );
    let unknown_account = admin
        .create_token(authed(
            pb::CreateTokenRequest {
                validate_only: false,
                allowed_cidrs: Vec::new(),
                service_account_id: uuid::Uuid::now_v7().to_string(),
                display_name: "t".into(),
                scopes: vec!["mcp:tools:call".into()],
                expire_time: None,
            },
            &jwt,
        ))
        .await;
    assert_code(unknown_account, Code::NotFound);

    let listed = admin
        .list_tokens(authed(
            pb::ListTokensRequest {
                service_account_id: id.clone(),
                ..Default::default()
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.tokens.is_empty());
    assert_eq!(audit_actions(&app, &jwt).await, ["service_account.create"]);
}

async fn deleting_an_account_kills_its_tokens(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let id = create_account(&app, &jwt, "Bot", None)
        .await
        .service_account_id;
    let (_, first) = create_token(&app, &jwt, &id, &["mcp:tools:call"]).await;
    let (_, second) = create_token(&app, &jwt, &id, &["mcp:tools:call"]).await;
    assert!(introspect(&app, &first, "", "", &[]).await.active);
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
    // Kept, revoked: a leaked token of a deleted account reads as revoked, not unknown.
    for secret in [first, second] {
        let result = introspect(&app, &secret, "", "", &[]).await;
        assert!(!result.active);
        assert_eq!(result.inactive_reason(), pb::InactiveReason::Revoked);
    }
    let listed = app
        .admin()
        .await
        .list_tokens(authed(
            pb::ListTokensRequest {
                service_account_id: id,
                ..Default::default()
            },
            &jwt,
        ))
        .await;
    assert_code(listed, Code::NotFound);
}

async fn expired_tokens_are_inactive(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let id = create_account(&app, &jwt, "Bot", None)
        .await
        .service_account_id;
    let expire = chrono::Utc::now() + chrono::TimeDelta::milliseconds(1500);
    let response = app
        .admin()
        .await
        .create_token(authed(
            pb::CreateTokenRequest {
                validate_only: false,
                allowed_cidrs: Vec::new(),
                service_account_id: id,
                display_name: "short-lived".into(),
                scopes: vec!["mcp:tools:call".into()],
                expire_time: Some(prost_types::Timestamp {
                    seconds: expire.timestamp(),
                    nanos: expire.timestamp_subsec_nanos() as i32,
                }),
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner();
    let before = introspect(&app, &response.secret, "", "", &[]).await;
    assert!(before.active);
    let reported = before.expire_time.unwrap();
    assert_eq!(reported.seconds, expire.timestamp());
    assert_eq!(
        reported.nanos / 1000,
        (expire.timestamp_subsec_nanos() / 1000) as i32
    );
    // The point is that time passes: past the expiry, with no event to wait on.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let after = introspect(&app, &response.secret, "", "", &[]).await;
    assert!(!after.active);
    assert_eq!(after.inactive_reason(), pb::InactiveReason::Expired);
    // An admin reading it sees the same, computed when read.
    let token = response.token.unwrap();
    assert_eq!(token.state(), pb::token::State::Active);
    let listed = app
        .admin()
        .await
        .list_tokens(authed(
            pb::ListTokensRequest {
                service_account_id: token.service_account_id.clone(),
                ..Default::default()
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tokens.len(), 1);
    assert_eq!(listed.tokens[0].token_id, token.token_id);
    assert_eq!(listed.tokens[0].state(), pb::token::State::Expired);
}

async fn last_used_is_recorded_and_flushed_on_shutdown(backend: Backend) {
    let setup = Setup::new(backend).last_used_flush_interval(Duration::from_millis(100));
    let Some(mut app) = setup.start().await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let id = create_account(&app, &jwt, "Bot", None)
        .await
        .service_account_id;
    let (token, secret) = create_token(&app, &jwt, &id, &["mcp:tools:call"]).await;
    assert!(token.last_used_time.is_none());

    let before = chrono::Utc::now().timestamp();
    introspect(&app, &secret, "", "", &[]).await;
    let seen = Wait::new("last_used_time is set by the background flush")
        .within(Duration::from_secs(3))
        .every(Duration::from_millis(50))
        .until(async || last_used(&app, &jwt, &id).await)
        .await;
    assert!(seen.seconds >= before && seen.seconds <= chrono::Utc::now().timestamp());

    // With a flush interval too long to matter, shutdown must still write what is pending.
    app.stop().await.unwrap();
    app.options.last_used_flush_interval = Duration::from_secs(3600);
    app.start().await;
    // Let the first (immediate) interval tick pass before producing something to flush.
    tokio::time::sleep(Duration::from_millis(100)).await;
    introspect(&app, &secret, "", "", &[]).await;
    app.stop().await.unwrap();
    app.start().await;
    let flushed = last_used(&app, &jwt, &id).await.unwrap();
    assert!(
        instant(&Some(flushed)) > instant(&Some(seen)),
        "{flushed:?} should be after {seen:?}"
    );
}

async fn no_secret_reaches_storage_or_logs(backend: Backend) {
    let Some(mut app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let id = create_account(&app, &jwt, "Bot", None)
        .await
        .service_account_id;
    let mut secrets = Vec::new();
    for _ in 0..3 {
        let (token, secret) = create_token(&app, &jwt, &id, &["mcp:tools:call"]).await;
        introspect(&app, &secret, "", "", &[]).await;
        secrets.push((token, secret));
    }
    let mut admin = app.admin().await;
    // A rotation's new secret is held to the same rule; the old token is then presented.
    let rotated = admin
        .rotate_token(authed(
            pb::RotateTokenRequest {
                service_account_id: id.clone(),
                token_id: secrets[2].0.token_id.clone(),
                ..Default::default()
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner();
    introspect(&app, &rotated.secret, "", "", &[]).await;
    introspect(&app, &secrets[2].1, "", "", &[]).await;
    secrets.push((rotated.token.unwrap(), rotated.secret));
    // Exercise the error paths with secrets in them too.
    introspect(&app, &format!("{}x", secrets[0].1), "", "", &[]).await;
    let _ = admin
        .revoke_token(authed(
            pb::RevokeTokenRequest {
                validate_only: false,
                service_account_id: id.clone(),
                token_id: secrets[0].1.clone(),
            },
            &jwt,
        ))
        .await;
    let _ = admin
        .create_service_account(authed(
            pb::CreateServiceAccountRequest::default(),
            &format!("{jwt}tampered"),
        ))
        .await;
    app.stop().await.unwrap();

    let stored = dump_storage(&app, backend).await;
    let logs = captured_logs();
    assert!(!logs.is_empty(), "the log capture is working");
    assert!(
        stored.contains(&secrets[0].0.token_id),
        "the dump holds the token rows"
    );
    for (_, secret) in &secrets {
        let random_part = &secret[7..44];
        assert!(
            !stored.contains(random_part),
            "a token secret reached the database"
        );
        assert!(
            !logs.contains(random_part),
            "a token secret reached the logs"
        );
    }
    let jwt_signature = jwt.rsplit('.').next().unwrap();
    assert!(
        !logs.contains(jwt_signature),
        "an admin JWT reached the logs"
    );
    assert!(
        !stored.contains(jwt_signature),
        "an admin JWT reached the database"
    );
}

/// Everything the database holds, as text: the SQLite files' bytes, or every PostgreSQL row.
async fn dump_storage(app: &TestApp, backend: Backend) -> String {
    match backend {
        Backend::Sqlite => {
            let mut all = Vec::new();
            for entry in std::fs::read_dir(data_path(app)).unwrap() {
                let path = entry.unwrap().path();
                if path.to_string_lossy().contains("test.db") {
                    all.extend(std::fs::read(&path).unwrap());
                }
            }
            String::from_utf8_lossy(&all).into_owned()
        }
        Backend::Postgres => {
            use sea_orm::{ConnectionTrait, Statement};
            let db = sea_orm::Database::connect(&app.database.url).await.unwrap();
            let mut all = String::new();
            for table in [
                "service_accounts",
                "service_account_apps",
                "tokens",
                "audit_events",
            ] {
                let rows = db
                    .query_all_raw(Statement::from_string(
                        db.get_database_backend(),
                        format!("SELECT t::text AS row FROM {table} t"),
                    ))
                    .await
                    .unwrap();
                for row in rows {
                    all.push_str(&row.try_get::<String>("", "row").unwrap());
                    all.push('\n');
                }
            }
            db.close().await.ok();
            all
        }
    }
}

async fn last_used(app: &TestApp, jwt: &str, id: &str) -> Option<prost_types::Timestamp> {
    let request = authed(
        pb::ListTokensRequest {
            service_account_id: id.into(),
            ..Default::default()
        },
        jwt,
    );
    app.admin()
        .await
        .list_tokens(request)
        .await
        .unwrap()
        .into_inner()
        .tokens[0]
        .last_used_time
}
