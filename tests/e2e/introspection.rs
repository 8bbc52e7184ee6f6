use service_accounts_api::pb;
use tonic::Code;

use crate::on_both_backends;
use crate::support::*;

fn random_well_formed_token() -> String {
    // Built like a real token, checksum included, but never issued.
    use base64::Engine;
    let body = format!(
        "emb_sa_{}",
        "A".repeat(20) + &uuid::Uuid::now_v7().simple().to_string()[..17]
    );
    let crc = crc32fast::hash(body.as_bytes());
    format!(
        "{body}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crc.to_be_bytes())
    )
}

#[tokio::test]
async fn malformed_and_unknown_tokens_are_inactive_without_details() {
    let app = spawn(Backend::Sqlite).await.unwrap();
    for malformed in ["", "Bearer x", "emb_sa_short", &"emb_sa_".repeat(8)[..50]] {
        let result = introspect(&app, malformed, "", "", &[]).await;
        assert!(!result.active && !result.allowed, "{malformed:?}");
        assert_eq!(
            result.inactive_reason(),
            pb::InactiveReason::Malformed,
            "{malformed:?}"
        );
    }
    let unknown = random_well_formed_token();
    assert_eq!(unknown.len(), 50);
    let result = introspect(&app, &unknown, "org-a", "app-1", &["mcp:read"]).await;
    assert!(!result.active);
    assert_eq!(result.inactive_reason(), pb::InactiveReason::Unknown);
    assert_eq!(result.denial_reason(), pb::DenialReason::TokenInactive);
    assert_eq!(
        result,
        pb::IntrospectResponse {
            active: false,
            inactive_reason: pb::InactiveReason::Unknown as i32,
            allowed: false,
            denial_reason: pb::DenialReason::TokenInactive as i32,
            denial_reasons: vec![pb::DenialReason::TokenInactive as i32],
            ..Default::default()
        }
    );
    // A single changed character breaks the checksum: malformed, not unknown.
    let mut typo = unknown.clone().into_bytes();
    typo[10] = if typo[10] == b'B' { b'C' } else { b'B' };
    let typo = String::from_utf8(typo).unwrap();
    assert_eq!(
        introspect(&app, &typo, "", "", &[]).await.inactive_reason(),
        pb::InactiveReason::Malformed
    );
}

#[tokio::test]
async fn bad_checks_are_invalid_arguments() {
    let app = spawn(Backend::Sqlite).await.unwrap();
    let mut client = app.introspection().await;
    let request = |org_id: &str, app_id: &str, scopes: &[&str]| pb::IntrospectRequest {
        client_ip: String::new(),
        token: random_well_formed_token(),
        org_id: org_id.into(),
        app_id: app_id.into(),
        required_scopes: scopes.iter().map(|s| s.to_string()).collect(),
    };
    assert_invalid(
        client.introspect(request("org-a", "bad app", &[])).await,
        &["app_id"],
    );
    assert_invalid(
        client
            .introspect(request("", "", &["mcp:read", "nope"]))
            .await,
        &["required_scopes[1]"],
    );
    // An app id means something only within its org: the caller must say which.
    assert_invalid(
        client.introspect(request("", "app-1", &[])).await,
        &["org_id"],
    );
    assert_invalid(
        client.introspect(request("bad org", "app-1", &[])).await,
        &["org_id"],
    );
    let huge = client
        .introspect(pb::IntrospectRequest {
            token: "x".repeat(64 * 1024),
            ..Default::default()
        })
        .await;
    // Refused before decoding: the message is larger than the 16 KiB limit.
    assert_code(huge, Code::OutOfRange);
}

#[tokio::test]
async fn storage_failure_fails_closed() {
    let mut app = spawn(Backend::Sqlite).await.unwrap();
    let jwt = app.admin_jwt("org-a");
    let id = create_account(&app, &jwt, "Bot", None)
        .await
        .service_account_id;
    let (_, secret) = create_token(&app, &jwt, &id, &["mcp:tools:call"]).await;
    assert!(introspect(&app, &secret, "", "", &[]).await.active);
    app.stop().await.unwrap();

    // Restart on a database whose tokens table is gone: every lookup fails.
    let db = sea_orm::Database::connect(&app.database.url).await.unwrap();
    use sea_orm::ConnectionTrait;
    db.execute_unprepared("ALTER TABLE tokens RENAME TO tokens_away")
        .await
        .unwrap();
    db.close().await.unwrap();
    app.start().await;
    let result = app
        .introspection()
        .await
        .introspect(pb::IntrospectRequest {
            token: secret.clone(),
            ..Default::default()
        })
        .await;
    assert_code(result, Code::Unavailable);
    // The admin service answers a storage failure the same way: retry later, not a server bug.
    let listed = app
        .admin()
        .await
        .list_tokens(authed(
            pb::ListTokensRequest {
                service_account_id: id.clone(),
                ..Default::default()
            },
            &jwt,
        ))
        .await;
    assert_code(listed, Code::Unavailable);
    // Malformed tokens never touch storage, so they are still answered.
    assert_eq!(
        introspect(&app, "nope", "", "", &[])
            .await
            .inactive_reason(),
        pb::InactiveReason::Malformed
    );
}

on_both_backends!(every_decision_is_bound_to_the_callers_org);

/// An all-apps account of one org must not be allowed an app of another org.
async fn every_decision_is_bound_to_the_callers_org(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let everything = create_account(&app, &jwt, "Everything", None).await;
    let (token, secret) = create_token(
        &app,
        &jwt,
        &everything.service_account_id,
        &["mcp:tools:call"],
    )
    .await;

    let own = introspect(&app, &secret, "org-a", "checkout-ios", &["mcp:tools:call"]).await;
    assert!(own.active && own.allowed, "{own:?}");
    assert!(own.denial_reasons.is_empty());

    let foreign = introspect(&app, &secret, "org-b", "checkout-ios", &[]).await;
    assert!(foreign.active && !foreign.allowed, "{foreign:?}");
    assert_eq!(foreign.denial_reason(), pb::DenialReason::OrgMismatch);
    // Still an active token: the identity is reported as for any active token.
    assert_eq!(foreign.org_id, "org-a");
    assert_eq!(foreign.service_account_id, everything.service_account_id);
    assert_eq!(foreign.token_id, token.token_id);
    assert!(foreign.app_access.unwrap().all_apps);

    // The org alone is a check as well.
    let org_only = introspect(&app, &secret, "org-b", "", &[]).await;
    assert!(org_only.active && !org_only.allowed);
    assert_eq!(org_only.denial_reason(), pb::DenialReason::OrgMismatch);

    // Every failed check is computed; the first in the order org, app, scopes is the headline,
    // and missing scopes are always listed.
    let all_wrong = introspect(&app, &secret, "org-b", "checkout-ios", &["mcp:write"]).await;
    assert_eq!(all_wrong.denial_reason(), pb::DenialReason::OrgMismatch);
    assert_eq!(
        all_wrong.denial_reasons,
        [
            pb::DenialReason::OrgMismatch as i32,
            pb::DenialReason::AppNotGranted as i32,
            pb::DenialReason::ScopeMissing as i32,
        ]
    );
    assert_eq!(all_wrong.missing_scopes, ["mcp:write"]);

    let explicit = create_account(&app, &jwt, "Explicit", Some(&["checkout-ios"])).await;
    let (_, explicit_secret) = create_token(
        &app,
        &jwt,
        &explicit.service_account_id,
        &["mcp:tools:call"],
    )
    .await;
    assert!(
        introspect(&app, &explicit_secret, "org-a", "checkout-ios", &[])
            .await
            .allowed
    );
    // The same app id string in another org is another app.
    let elsewhere = introspect(&app, &explicit_secret, "org-b", "checkout-ios", &[]).await;
    assert_eq!(
        elsewhere.denial_reasons,
        [
            pb::DenialReason::OrgMismatch as i32,
            pb::DenialReason::AppNotGranted as i32,
        ]
    );
}

/// A small unauthenticated request must not buy a large answer: 3,000 empty scopes are answered
/// with 20 violations and a count, in well under 4 KiB.
#[tokio::test]
async fn a_request_with_thousands_of_bad_fields_gets_a_small_bounded_error() {
    let app = spawn(Backend::Sqlite).await.unwrap();
    let status = app
        .introspection()
        .await
        .introspect(pb::IntrospectRequest {
            token: random_well_formed_token(),
            required_scopes: vec![String::new(); 3000],
            ..Default::default()
        })
        .await
        .expect_err("invalid");
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields = violated_fields(&status);
    assert_eq!(fields.len(), 21, "{fields:?}");
    assert_eq!(fields[20], "request");
    let answer = status.message().len() + status.details().len();
    assert!(answer < 4096, "{answer} bytes of message and details");
}

/// Oversized request metadata is refused by the HTTP/2 layer, and the server keeps serving.
#[tokio::test]
async fn oversized_metadata_is_refused_and_the_server_keeps_serving() {
    let app = spawn(Backend::Sqlite).await.unwrap();
    let mut request = tonic::Request::new(pb::IntrospectRequest {
        token: random_well_formed_token(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-padding", "a".repeat(64 * 1024).parse().unwrap());
    let refused = app.introspection().await.introspect(request).await;
    assert!(refused.is_err(), "{refused:?}");
    let after = introspect(&app, &random_well_formed_token(), "", "", &[]).await;
    assert_eq!(after.inactive_reason(), pb::InactiveReason::Unknown);
}

on_both_backends!(a_burst_of_first_introspections_is_answered_token_by_token);

/// Misses queue behind one storage query at a time and are looked up in batches: tokens of
/// accounts with and without app lists, the same token several times, and made-up tokens, all
/// at once, each get their own answer.
async fn a_burst_of_first_introspections_is_answered_token_by_token(backend: Backend) {
    let Some(mut app) = unstarted(Setup::new(backend)).await else {
        return;
    };
    app.options.introspection_max_lookups = 1;
    app.start().await;
    let jwt = app.admin_jwt("org-a");
    let everything = create_account(&app, &jwt, "Everything", None).await;
    let listed = create_account(&app, &jwt, "Listed", Some(&["app-1", "app-2"])).await;
    let mut expected = Vec::new();
    for account in [&everything, &listed] {
        for _ in 0..8 {
            let (token, secret) =
                create_token(&app, &jwt, &account.service_account_id, &["mcp:tools:call"]).await;
            expected.push((secret, Some((account.clone(), token.token_id))));
        }
    }
    for _ in 0..8 {
        expected.push((random_well_formed_token(), None));
    }
    let channel = app.channel().await;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..3 {
        for (token, identity) in expected.clone() {
            let mut client =
                pb::token_introspection_client::TokenIntrospectionClient::new(channel.clone());
            calls.spawn(async move {
                let response = client
                    .introspect(pb::IntrospectRequest {
                        token,
                        org_id: "org-a".into(),
                        app_id: "app-2".into(),
                        ..Default::default()
                    })
                    .await
                    .expect("introspect")
                    .into_inner();
                (response, identity)
            });
        }
    }
    let mut answered = 0;
    while let Some(call) = calls.join_next().await {
        let (response, identity) = call.unwrap();
        match identity {
            Some((account, token_id)) => {
                assert!(response.active && response.allowed, "{response:?}");
                assert_eq!(response.token_id, token_id);
                assert_eq!(response.service_account_id, account.service_account_id);
                assert_eq!(response.service_account_display_name, account.display_name);
                assert_eq!(response.app_access, account.app_access);
            }
            None => assert_eq!(response.inactive_reason(), pb::InactiveReason::Unknown),
        }
        answered += 1;
    }
    assert_eq!(answered, 3 * 24);
}
