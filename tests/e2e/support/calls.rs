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
                labels: Default::default(),
                validate_only: false,
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
                validate_only: false,
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
                validate_only: false,
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

/// A timestamp as RFC 3339 UTC with as many fractional digits as it has (a filter's value).
#[track_caller]
pub fn rfc3339(t: &Option<prost_types::Timestamp>) -> String {
    let t = t.as_ref().expect("timestamp set");
    rfc3339_of(chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32).expect("in range"))
}

/// A time as RFC 3339 UTC (`…Z`), with as many fractional digits as it has.
pub fn rfc3339_of(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// A `google.protobuf.Timestamp` for a time.
pub fn timestamp_of(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// The 1-based character position of the first `needle` in `filter` (where a refusal points).
#[track_caller]
pub fn position_of(filter: &str, needle: &str) -> usize {
    let byte = filter
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in {filter:?}"));
    filter[..byte].chars().count() + 1
}

/// INVALID_ARGUMENT with one `BadRequest` violation, on `field`, whose description names
/// `position {position}` (and not a longer number that starts with the same digits).
#[track_caller]
pub fn assert_invalid_at(
    result: Result<impl std::fmt::Debug, Status>,
    field: &str,
    position: usize,
) {
    use tonic_types::StatusExt;
    let status = result.expect_err("expected INVALID_ARGUMENT");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let violations = status
        .get_details_bad_request()
        .map(|bad| bad.field_violations)
        .unwrap_or_default();
    assert_eq!(violations.len(), 1, "{status:?}");
    assert_eq!(violations[0].field, field, "{status:?}");
    let description = &violations[0].description;
    let wanted = format!("position {position}");
    let named = description
        .match_indices(&wanted)
        .any(|(at, _)| !description[at + wanted.len()..].starts_with(|c: char| c.is_ascii_digit()));
    assert!(named, "expected {wanted:?} in {description:?}");
}

/// Every token a `ListTokens` query returns, following `next_page_token` with pages of
/// `page_size`; the first refusal if any page is refused.
pub async fn list_all_tokens(
    app: &TestApp,
    jwt: &str,
    account: &str,
    filter: &str,
    order_by: &str,
    page_size: i32,
) -> Result<Vec<pb::Token>, Status> {
    let mut admin = app.admin().await;
    let mut tokens = Vec::new();
    let mut page_token = String::new();
    for _ in 0..10_000 {
        let page = admin
            .list_tokens(authed(
                pb::ListTokensRequest {
                    service_account_id: account.into(),
                    page_size,
                    page_token: page_token.clone(),
                    filter: filter.into(),
                    order_by: order_by.into(),
                },
                jwt,
            ))
            .await?
            .into_inner();
        assert!(
            page_size <= 0 || page.tokens.len() <= page_size as usize,
            "a page of {} for page_size {page_size}",
            page.tokens.len()
        );
        tokens.extend(page.tokens);
        if page.next_page_token.is_empty() {
            return Ok(tokens);
        }
        page_token = page.next_page_token;
    }
    panic!("ListTokens kept returning pages");
}

/// Every audit event a `ListAuditEvents` query returns, following pages of `page_size`.
pub async fn list_all_audit_events(
    app: &TestApp,
    jwt: &str,
    filter: &str,
    order_by: &str,
    page_size: i32,
) -> Result<Vec<pb::AuditEvent>, Status> {
    let mut admin = app.admin().await;
    let mut events = Vec::new();
    let mut page_token = String::new();
    for _ in 0..10_000 {
        let page = admin
            .list_audit_events(authed(
                pb::ListAuditEventsRequest {
                    page_size,
                    page_token: page_token.clone(),
                    filter: filter.into(),
                    order_by: order_by.into(),
                },
                jwt,
            ))
            .await?
            .into_inner();
        assert!(
            page_size <= 0 || page.audit_events.len() <= page_size as usize,
            "a page of {} for page_size {page_size}",
            page.audit_events.len()
        );
        events.extend(page.audit_events);
        if page.next_page_token.is_empty() {
            return Ok(events);
        }
        page_token = page.next_page_token;
    }
    panic!("ListAuditEvents kept returning pages");
}

/// Issues a token with a display name, scopes and optional expiry; returns (metadata, secret).
pub async fn issue_token(
    app: &TestApp,
    jwt: &str,
    account_id: &str,
    name: &str,
    scopes: &[&str],
    expire_time: Option<chrono::DateTime<chrono::Utc>>,
) -> (pb::Token, String) {
    let response = app
        .admin()
        .await
        .create_token(authed(
            pb::CreateTokenRequest {
                validate_only: false,
                service_account_id: account_id.into(),
                display_name: name.into(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                expire_time: expire_time.map(timestamp_of),
                allowed_cidrs: Vec::new(),
            },
            jwt,
        ))
        .await
        .expect("create token")
        .into_inner();
    (response.token.expect("token"), response.secret)
}
