//! The credential report (SPEC §22): `ExportCredentialReport` streams a CSV (RFC 4180, CRLF) of
//! the org's tokens matching a filter, read here with a real CSV reader.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use service_accounts_api::pb;
use tonic::{Code, Request, Status};

use crate::on_both_backends;
use crate::rotation::rotate;
use crate::support::*;

on_both_backends!(
    the_report_has_a_row_per_token_of_the_org_with_every_column_awkward_names_intact_and_no_secret,
    the_report_holds_only_the_tokens_the_filter_matches_and_a_bad_filter_is_refused,
);

const HEADER: [&str; 18] = [
    "account_id",
    "account_name",
    "account_state",
    "token_id",
    "token_name",
    "token_state",
    "scopes",
    "create_time",
    "created_by",
    "expire_time",
    "last_used_time",
    "last_used_app_id",
    "last_used_address",
    "revoke_time",
    "revoked_by",
    "revoke_reason",
    "previous_token_id",
    "days_since_last_use",
];

const CALL: &[&str] = &["mcp:tools:call"];
const READ: &[&str] = &["mcp:tools:call", "mcp:read"];
const CALL_WRITE: &[&str] = &["mcp:tools:call", "mcp:write"];

/// The report's bytes, every chunk in order; the RPC's refusal, at the call or in the stream.
async fn report(app: &TestApp, jwt: Option<&str>, filter: &str) -> Result<Vec<u8>, Status> {
    let message = pb::ExportCredentialReportRequest {
        filter: filter.into(),
    };
    let request = match jwt {
        Some(jwt) => authed(message, jwt),
        None => Request::new(message),
    };
    let mut stream = app
        .admin()
        .await
        .export_credential_report(request)
        .await?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(response) = stream.message().await? {
        bytes.extend_from_slice(&response.chunk);
    }
    Ok(bytes)
}

/// One row: column name → cell.
type Row = HashMap<&'static str, String>;

/// Reads a report with a CSV reader, checking its shape: UTF-8, the exact header row, CRLF line
/// ends, 18 cells in every row.
#[track_caller]
fn read_rows(bytes: &[u8]) -> Vec<Row> {
    let text = std::str::from_utf8(bytes).expect("the report is UTF-8");
    let header_line = format!("{}\r\n", HEADER.join(","));
    assert!(
        text.starts_with(&header_line),
        "the report starts with the header row: {text:?}"
    );
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'\n' => assert!(i > 0 && bytes[i - 1] == b'\r', "a bare LF at byte {i}"),
            b'\r' => assert_eq!(bytes.get(i + 1), Some(&b'\n'), "a bare CR at byte {i}"),
            _ => {}
        }
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(bytes);
    let header: Vec<String> = reader
        .headers()
        .expect("header row")
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(header, HEADER);
    reader
        .records()
        .map(|record| {
            let record = record.expect("an RFC 4180 row");
            assert_eq!(record.len(), HEADER.len(), "{record:?}");
            HEADER
                .iter()
                .zip(record.iter())
                .map(|(column, cell)| (*column, cell.to_owned()))
                .collect()
        })
        .collect()
}

/// An RFC 3339 UTC time within a second of `expected` (the report may drop sub-seconds), or an
/// empty cell when `expected` is unset.
#[track_caller]
fn assert_time(cell: &str, expected: &Option<prost_types::Timestamp>, what: &str) {
    let Some(expected) = expected else {
        assert_eq!(cell, "", "{what} should be empty");
        return;
    };
    let parsed = chrono::DateTime::parse_from_rfc3339(cell)
        .unwrap_or_else(|e| panic!("{what}: {cell:?} is not RFC 3339: {e}"));
    assert_eq!(
        parsed.offset().local_minus_utc(),
        0,
        "{what}: {cell:?} is not UTC"
    );
    let listed = chrono::DateTime::from_timestamp(expected.seconds, expected.nanos as u32).unwrap();
    let off = (parsed.to_utc() - listed).abs();
    assert!(
        off < TimeDelta::seconds(1),
        "{what}: {cell:?}, listed {listed}"
    );
}

async fn the_report_has_a_row_per_token_of_the_org_with_every_column_awkward_names_intact_and_no_secret(
    backend: Backend,
) {
    let setup = Setup::new(backend).last_used_flush_interval(Duration::from_millis(100));
    let Some(app) = setup.start().await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let second = app.jwt("org-a", "second-admin", &["org_admin"]);
    let other_jwt = app.admin_jwt("org-b");

    // Display names refuse control characters (line breaks included), so the awkward ones are
    // commas, double quotes, semicolons, apostrophes and non-ASCII.
    let build_name = "Build, \"prod\" bot";
    let paused_name = "Paused; 'ops' bot, naïve 🚀";
    let build = create_account(&app, &jwt, build_name, None)
        .await
        .service_account_id;
    let paused = create_account(&app, &jwt, paused_name, None)
        .await
        .service_account_id;
    let mut secrets = Vec::new();
    let soon = Utc::now() + TimeDelta::seconds(3);
    let (short, secret) = issue_token(&app, &jwt, &build, "short, lived", CALL, Some(soon)).await;
    secrets.push(secret);
    let in_ten_days = Utc::now() + TimeDelta::days(10);
    let used_name = "GitHub Actions, \"prod\"";
    let (used, used_secret) =
        issue_token(&app, &jwt, &build, used_name, READ, Some(in_ten_days)).await;
    secrets.push(used_secret.clone());
    let (gone, secret) =
        issue_token(&app, &jwt, &build, "naïve \"quoted\",, commas", CALL, None).await;
    secrets.push(secret);
    revoke(&app, &second, &build, &gone.token_id).await;
    let (old, secret) = issue_token(&app, &jwt, &paused, "Rotate \"me\"", CALL_WRITE, None).await;
    secrets.push(secret);
    let rotation = rotate(&app, &jwt, &paused, &old.token_id, None)
        .await
        .expect("rotate");
    secrets.push(rotation.secret.clone());
    let new = rotation.token.unwrap();
    let (idle, secret) = issue_token(&app, &second, &paused, "Idle ,\"\",", CALL, None).await;
    secrets.push(secret);

    let used_by = app
        .introspection()
        .await
        .introspect(pb::IntrospectRequest {
            token: used_secret.clone(),
            org_id: "org-a".into(),
            app_id: "checkout-ios".into(),
            required_scopes: vec!["mcp:read".into()],
            client_ip: "203.0.113.7".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(used_by.active && used_by.allowed, "{used_by:?}");
    app.admin()
        .await
        .disable_service_account(authed(
            pb::DisableServiceAccountRequest {
                validate_only: false,
                service_account_id: paused.clone(),
            },
            &jwt,
        ))
        .await
        .expect("disable");

    let other_account = create_account(&app, &other_jwt, "Org B, \"other\" bot", None)
        .await
        .service_account_id;
    let (other, other_secret) =
        issue_token(&app, &other_jwt, &other_account, "other, org", READ, None).await;
    secrets.push(other_secret);

    // Wait for the use to be flushed and for `short` to expire.
    Wait::new("the use is recorded and `short` has expired")
        .until(async || {
            let listed = tokens_of(&app, &jwt, &build).await;
            let seen = listed
                .iter()
                .any(|t| t.token_id == used.token_id && t.last_used_app_id == "checkout-ios");
            let expired = listed
                .iter()
                .any(|t| t.token_id == short.token_id && t.state() == pb::token::State::Expired);
            seen && expired
        })
        .await;
    let mut listed: HashMap<String, pb::Token> = HashMap::new();
    for token in [
        tokens_of(&app, &jwt, &build).await,
        tokens_of(&app, &jwt, &paused).await,
    ]
    .into_iter()
    .flatten()
    {
        listed.insert(token.token_id.clone(), token);
    }

    let bytes = report(&app, Some(&jwt), "").await.expect("the report");
    let text = String::from_utf8(bytes.clone()).unwrap();
    // RFC 4180 quoting: fields with commas or quotes are quoted, quotes doubled.
    assert!(text.contains("\"Build, \"\"prod\"\" bot\""), "{text}");
    assert!(text.contains("\"GitHub Actions, \"\"prod\"\"\""), "{text}");
    // No secret, whole or its random part, and nothing of org B.
    for secret in &secrets {
        assert!(!text.contains(secret.as_str()), "a secret is in the report");
        assert!(!text.contains(&secret[7..44]), "a secret is in the report");
    }
    for of_org_b in [
        other.token_id.as_str(),
        &other_account,
        "other, org",
        "admin-of-org-b",
    ] {
        assert!(
            !text.contains(of_org_b),
            "org B's {of_org_b:?} is in the report"
        );
    }

    let rows = read_rows(&bytes);
    let ids: Vec<&str> = rows.iter().map(|r| r["token_id"].as_str()).collect();
    // One row per token, oldest first.
    assert_eq!(
        ids,
        [
            &short.token_id,
            &used.token_id,
            &gone.token_id,
            &old.token_id,
            &new.token_id,
            &idle.token_id,
        ]
    );
    // (account name, account state, token state, revoked by, revoke reason, previous token,
    //  last used app, last used address, days since last use), per token.
    let expected: HashMap<&str, [&str; 9]> = HashMap::from([
        (
            short.token_id.as_str(),
            [build_name, "ACTIVE", "EXPIRED", "", "", "", "", "", ""],
        ),
        (
            used.token_id.as_str(),
            [
                build_name,
                "ACTIVE",
                "ACTIVE",
                "",
                "",
                "",
                "checkout-ios",
                "203.0.113.7",
                "0",
            ],
        ),
        (
            gone.token_id.as_str(),
            [
                build_name,
                "ACTIVE",
                "REVOKED",
                "second-admin",
                "ADMIN",
                "",
                "",
                "",
                "",
            ],
        ),
        (
            old.token_id.as_str(),
            [
                paused_name,
                "DISABLED",
                "REVOKED",
                "admin-of-org-a",
                "ROTATED",
                "",
                "",
                "",
                "",
            ],
        ),
        (
            new.token_id.as_str(),
            [
                paused_name,
                "DISABLED",
                "ACTIVE",
                "",
                "",
                old.token_id.as_str(),
                "",
                "",
                "",
            ],
        ),
        (
            idle.token_id.as_str(),
            [paused_name, "DISABLED", "ACTIVE", "", "", "", "", "", ""],
        ),
    ]);
    for row in &rows {
        let id = row["token_id"].as_str();
        let token = &listed[id];
        let [
            account_name,
            account_state,
            token_state,
            revoked_by,
            revoke_reason,
            previous,
            app_id,
            address,
            days,
        ] = expected[id];
        let cells: Vec<(&str, &str)> = HEADER.iter().map(|c| (*c, row[c].as_str())).collect();
        let wanted = [
            ("account_id", token.service_account_id.as_str()),
            ("account_name", account_name),
            ("account_state", account_state),
            ("token_id", id),
            ("token_name", token.display_name.as_str()),
            ("token_state", token_state),
            ("created_by", token.created_by.as_str()),
            ("last_used_app_id", app_id),
            ("last_used_address", address),
            ("revoked_by", revoked_by),
            ("revoke_reason", revoke_reason),
            ("previous_token_id", previous),
            ("days_since_last_use", days),
        ];
        for (column, value) in wanted {
            assert_eq!(row[column], value, "{column} of {cells:?}");
        }
        let mut scopes: Vec<&str> = row["scopes"].split(' ').collect();
        scopes.sort_unstable();
        let mut listed_scopes: Vec<&str> = token.scopes.iter().map(String::as_str).collect();
        listed_scopes.sort_unstable();
        assert_eq!(scopes, listed_scopes, "scopes of {cells:?}");
        assert_time(&row["create_time"], &token.create_time, "create_time");
        assert_time(&row["expire_time"], &token.expire_time, "expire_time");
        assert_time(
            &row["last_used_time"],
            &token.last_used_time,
            "last_used_time",
        );
        assert_time(&row["revoke_time"], &token.revoke_time, "revoke_time");
    }
    // The names as they were given, commas and quotes and all.
    let names: Vec<&str> = rows.iter().map(|r| r["token_name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "short, lived",
            used_name,
            "naïve \"quoted\",, commas",
            "Rotate \"me\"",
            "Rotate \"me\"",
            "Idle ,\"\",",
        ]
    );

    // Org B's report: its own token only.
    let theirs = read_rows(&report(&app, Some(&other_jwt), "").await.unwrap());
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0]["token_id"], other.token_id);
    assert_eq!(theirs[0]["account_name"], "Org B, \"other\" bot");
    assert_eq!(theirs[0]["created_by"], "admin-of-org-b");
}

async fn the_report_holds_only_the_tokens_the_filter_matches_and_a_bad_filter_is_refused(
    backend: Backend,
) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let second = app.jwt("org-a", "second-admin", &["org_admin"]);
    let other_jwt = app.admin_jwt("org-b");
    let alpha = create_account(&app, &jwt, "Alpha", None)
        .await
        .service_account_id;
    let beta = create_account(&app, &jwt, "Beta", None)
        .await
        .service_account_id;
    issue_token(&app, &jwt, &alpha, "a1", READ, None).await;
    let (a2, _) = issue_token(&app, &jwt, &alpha, "a2", CALL_WRITE, None).await;
    revoke(&app, &jwt, &alpha, &a2.token_id).await;
    issue_token(&app, &second, &beta, "b1", CALL, None).await;
    let tomorrow = Utc::now() + TimeDelta::days(1);
    issue_token(&app, &jwt, &beta, "b2", READ, Some(tomorrow)).await;
    let other_account = create_account(&app, &other_jwt, "Org B bot", None)
        .await
        .service_account_id;
    issue_token(&app, &other_jwt, &other_account, "theirs", READ, None).await;
    let audit_before = audit_actions(&app, &jwt).await;

    let names = async |jwt: &str, filter: &str| -> Vec<String> {
        let bytes = report(&app, Some(jwt), filter)
            .await
            .unwrap_or_else(|status| panic!("filter {filter:?} refused: {status:?}"));
        read_rows(&bytes)
            .into_iter()
            .map(|mut row| row.remove("token_name").unwrap())
            .collect()
    };
    let cases: Vec<(String, Vec<&str>)> = vec![
        (String::new(), vec!["a1", "a2", "b1", "b2"]),
        ("state = REVOKED".into(), vec!["a2"]),
        ("state = ACTIVE".into(), vec!["a1", "b1", "b2"]),
        (format!("service_account_id = \"{beta}\""), vec!["b1", "b2"]),
        ("scopes:\"mcp:read\"".into(), vec!["a1", "b2"]),
        ("created_by = \"second-admin\"".into(), vec!["b1"]),
        ("expire_time:*".into(), vec!["b2"]),
        ("NOT last_used_time:*".into(), vec!["a1", "a2", "b1", "b2"]),
        // OR binds tighter than AND.
        (
            "revoke_reason = ADMIN OR scopes:\"mcp:read\" AND NOT expire_time:*".into(),
            vec!["a1", "a2"],
        ),
        (format!("service_account_id = \"{other_account}\""), vec![]),
        ("created_by = \"nobody\"".into(), vec![]),
    ];
    for (filter, expected) in &cases {
        assert_eq!(&names(&jwt, filter).await, expected, "filter {filter:?}");
    }
    // Nothing matches: the header row alone.
    let empty = report(&app, Some(&jwt), "created_by = \"nobody\"")
        .await
        .unwrap();
    assert_eq!(empty, format!("{}\r\n", HEADER.join(",")).as_bytes());
    // Org B's report, with a filter org A's tokens match.
    assert_eq!(names(&other_jwt, "scopes:\"mcp:read\"").await, ["theirs"]);
    assert_eq!(
        names(&other_jwt, "created_by = \"admin-of-org-a\"").await,
        Vec::<String>::new()
    );

    // A bad filter is the RPC's status, as for ListTokens.
    for (filter, position) in [
        ("colour = \"red\"", 1),
        ("state = ACTIVE AND", 19),
        ("scopes:\"mcp:admin\"", 8),
        ("state = DORMANT", 9),
        ("(state = ACTIVE", 16),
    ] {
        let result = report(&app, Some(&jwt), filter).await;
        assert!(result.is_err(), "filter {filter:?} was accepted");
        assert_invalid_at(result, "filter", position);
    }
    let too_long = format!("created_by = \"{}\"", "x".repeat(2048 - 14));
    assert_invalid(report(&app, Some(&jwt), &too_long).await, &["filter"]);

    assert_eq!(audit_actions(&app, &jwt).await, audit_before);
}

#[tokio::test]
async fn the_report_is_refused_to_callers_who_are_not_org_admins() {
    let app = spawn(Backend::Sqlite).await.unwrap();
    let jwt = app.admin_jwt("org-a");
    let account = create_account(&app, &jwt, "Bot", None)
        .await
        .service_account_id;
    create_token(&app, &jwt, &account, CALL).await;
    let viewer = app.jwt("org-a", "viewer", &["viewer", "org_member"]);

    assert_code(report(&app, None, "").await, Code::Unauthenticated);
    assert_code(
        report(&app, Some("e30.e30.c2ln"), "").await,
        Code::Unauthenticated,
    );
    assert_code(
        report(&app, Some(&format!("{jwt}x")), "").await,
        Code::Unauthenticated,
    );
    assert_code(
        report(&app, Some(&viewer), "").await,
        Code::PermissionDenied,
    );
    // Refused before the filter is read.
    assert_code(
        report(&app, Some(&viewer), "colour = \"red\"").await,
        Code::PermissionDenied,
    );
    assert_code(
        report(&app, None, "colour = \"red\"").await,
        Code::Unauthenticated,
    );
    // The admin gets it.
    assert_eq!(
        read_rows(&report(&app, Some(&jwt), "").await.unwrap()).len(),
        1
    );
}
