use service_accounts_api::pb;
use tonic::Code;

use crate::helpers::*;

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
        let result = introspect(&app, malformed, "", &[]).await;
        assert!(!result.active && !result.allowed, "{malformed:?}");
        assert_eq!(
            result.inactive_reason(),
            pb::InactiveReason::Malformed,
            "{malformed:?}"
        );
    }
    let unknown = random_well_formed_token();
    assert_eq!(unknown.len(), 50);
    let result = introspect(&app, &unknown, "app-1", &["mcp:read"]).await;
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
            ..Default::default()
        }
    );
    // A single changed character breaks the checksum: malformed, not unknown.
    let mut typo = unknown.clone().into_bytes();
    typo[10] = if typo[10] == b'B' { b'C' } else { b'B' };
    let typo = String::from_utf8(typo).unwrap();
    assert_eq!(
        introspect(&app, &typo, "", &[]).await.inactive_reason(),
        pb::InactiveReason::Malformed
    );
}

#[tokio::test]
async fn bad_checks_are_invalid_arguments() {
    let app = spawn(Backend::Sqlite).await.unwrap();
    let mut client = app.introspection().await;
    let request = |app_id: &str, scopes: &[&str]| pb::IntrospectRequest {
        token: random_well_formed_token(),
        app_id: app_id.into(),
        required_scopes: scopes.iter().map(|s| s.to_string()).collect(),
    };
    assert_invalid(
        client.introspect(request("bad app", &[])).await,
        &["app_id"],
    );
    assert_invalid(
        client.introspect(request("", &["mcp:read", "nope"])).await,
        &["required_scopes[1]"],
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
    assert!(introspect(&app, &secret, "", &[]).await.active);
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
    // Malformed tokens never touch storage, so they are still answered.
    assert_eq!(
        introspect(&app, "nope", "", &[]).await.inactive_reason(),
        pb::InactiveReason::Malformed
    );
}
