//! One-line RPC calls and assertions on their results.

use std::path::PathBuf;

use service_accounts_api::pb;
use tonic::{Code, Request, Status};

use super::app::TestApp;

/// A request carrying `authorization: Bearer <jwt>`.
pub fn authed<T>(message: T, jwt: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {jwt}").parse().unwrap());
    request
}

/// The field paths of a status's `BadRequest` details.
pub fn violated_fields(status: &Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|bad| bad.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

#[track_caller]
pub fn assert_invalid(result: Result<impl std::fmt::Debug, Status>, fields: &[&str]) {
    let status = result.expect_err("expected INVALID_ARGUMENT");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(violated_fields(&status), fields, "{status:?}");
}

#[track_caller]
pub fn assert_code(result: Result<impl std::fmt::Debug, Status>, code: Code) -> Status {
    let status = result.expect_err("expected an error");
    assert_eq!(status.code(), code, "{status:?}");
    status
}

/// Creates an account with explicit apps (`None` = all apps) and returns it.
pub async fn create_account(
    app: &TestApp,
    jwt: &str,
    name: &str,
    apps: Option<&[&str]>,
) -> pb::ServiceAccount {
    let access = match apps {
        None => pb::AppAccess {
            all_apps: true,
            app_ids: vec![],
        },
        Some(apps) => pb::AppAccess {
            all_apps: false,
            app_ids: apps.iter().map(|a| a.to_string()).collect(),
        },
    };
    app.admin()
        .await
        .create_service_account(authed(
            pb::CreateServiceAccountRequest {
                display_name: name.into(),
                description: format!("{name} description"),
                app_access: Some(access),
            },
            jwt,
        ))
        .await
        .expect("create account")
        .into_inner()
        .service_account
        .expect("account")
}

/// Issues a token with `scopes` and returns (metadata, secret).
/// Creates an account named `name` (all apps) over `channel`: a server process's, say.
pub async fn create_account_over(
    channel: tonic::transport::Channel,
    jwt: &str,
    name: &str,
) -> pb::ServiceAccount {
    pb::service_account_admin_client::ServiceAccountAdminClient::new(channel)
        .create_service_account(authed(
            pb::CreateServiceAccountRequest {
                display_name: name.into(),
                ..Default::default()
            },
            jwt,
        ))
        .await
        .expect("create account")
        .into_inner()
        .service_account
        .expect("service account")
}

pub async fn create_token(
    app: &TestApp,
    jwt: &str,
    account_id: &str,
    scopes: &[&str],
) -> (pb::Token, String) {
    let response = app
        .admin()
        .await
        .create_token(authed(
            pb::CreateTokenRequest {
                allowed_cidrs: Vec::new(),
                service_account_id: account_id.into(),
                display_name: "test token".into(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                expire_time: None,
            },
            jwt,
        ))
        .await
        .expect("create token")
        .into_inner();
    (response.token.expect("token"), response.secret)
}

/// Introspects `token`, checking `org_id`, `app_id` and `scopes` where non-empty.
pub async fn introspect(
    app: &TestApp,
    token: &str,
    org_id: &str,
    app_id: &str,
    scopes: &[&str],
) -> pb::IntrospectResponse {
    app.introspection()
        .await
        .introspect(pb::IntrospectRequest {
            client_ip: String::new(),
            token: token.into(),
            org_id: org_id.into(),
            app_id: app_id.into(),
            required_scopes: scopes.iter().map(|s| s.to_string()).collect(),
        })
        .await
        .expect("introspect")
        .into_inner()
}

/// Every token of an account (one page of up to 1000), oldest first.
pub async fn tokens_of(app: &TestApp, jwt: &str, account: &str) -> Vec<pb::Token> {
    app.admin()
        .await
        .list_tokens(authed(
            pb::ListTokensRequest {
                service_account_id: account.into(),
                page_size: 1000,
                page_token: String::new(),
                ..Default::default()
            },
            jwt,
        ))
        .await
        .expect("list tokens")
        .into_inner()
        .tokens
}

/// The org's audit events (one page of up to 1000), oldest first.
pub async fn audit_events(app: &TestApp, jwt: &str) -> Vec<pb::AuditEvent> {
    app.admin()
        .await
        .list_audit_events(authed(
            pb::ListAuditEventsRequest {
                page_size: 1000,
                page_token: String::new(),
                ..Default::default()
            },
            jwt,
        ))
        .await
        .expect("list audit events")
        .into_inner()
        .audit_events
}

pub async fn audit_actions(app: &TestApp, jwt: &str) -> Vec<String> {
    app.admin()
        .await
        .list_audit_events(authed(
            pb::ListAuditEventsRequest {
                page_size: 1000,
                page_token: String::new(),
                ..Default::default()
            },
            jwt,
        ))
        .await
        .expect("list audit events")
        .into_inner()
        .audit_events
        .into_iter()
        .map(|e| e.action)
        .collect()
}

pub fn data_path(app: &TestApp) -> PathBuf {
    app.data_dir.path().to_owned()
}

/// Revokes a token through the admin API and returns the revoked token.
pub async fn revoke(app: &TestApp, jwt: &str, account_id: &str, token_id: &str) -> pb::Token {
    app.admin()
        .await
        .revoke_token(authed(
            pb::RevokeTokenRequest {
                service_account_id: account_id.into(),
                token_id: token_id.into(),
            },
            jwt,
        ))
        .await
        .expect("revoke token")
        .into_inner()
        .token
        .expect("token")
}

/// Renames the tokens table of a stopped app's database: once it starts again, every token
/// lookup fails (storage failing, as the server sees it).
pub async fn break_tokens_table(app: &TestApp) {
    use sea_orm::ConnectionTrait;
    let db = sea_orm::Database::connect(&app.database.url).await.unwrap();
    db.execute_unprepared("ALTER TABLE tokens RENAME TO tokens_away")
        .await
        .unwrap();
    db.close().await.unwrap();
}

/// A timestamp as a comparable (seconds, nanos) pair; panics if unset.
#[track_caller]
pub fn instant(t: &Option<prost_types::Timestamp>) -> (i64, i32) {
    let t = t.as_ref().expect("timestamp set");
    (t.seconds, t.nanos)
}
