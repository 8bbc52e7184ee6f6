//! `POST /v1/secret-scanning/github` as GitHub's secret-scanning partner program sends it,
//! signed with keys generated here: matches of ours are revoked and reported `true_positive`;
//! anything unsigned, mis-signed or malformed gets its status and changes nothing.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey, LineEnding};
use service_accounts_api::pb;
use sha2::{Digest, Sha256};

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(
    github_reported_matches_are_revoked_and_labelled,
    unsigned_mis_signed_or_malformed_reports_change_nothing,
);

const PATH: &str = "/v1/secret-scanning/github";

/// What is sent, with which headers, and the status it must get.
type Case<'a> = (&'a str, Vec<u8>, Vec<(&'a str, String)>, u16);

fn signing_key(seed: &str) -> SigningKey {
    let bytes: [u8; 32] = Sha256::digest(seed.as_bytes()).into();
    SigningKey::from_bytes(&bytes.into()).unwrap()
}

fn sign(key: &SigningKey, body: &[u8]) -> String {
    let signature: Signature = key.sign(body);
    STANDARD.encode(signature.to_der().as_bytes())
}

/// A server with the HTTP listener on and `key` published as GitHub's key `github-key-1`.
async fn start(backend: Backend, key: &SigningKey) -> Option<TestApp> {
    let mut app = unstarted(Setup::new(backend)).await?;
    let keys = serde_json::json!({
        "public_keys": [{
            "key_identifier": "github-key-1",
            "key": key.verifying_key().to_public_key_pem(LineEnding::LF).unwrap(),
            "is_current": true,
        }]
    });
    let path = app.data_dir.path().join("github-keys.json");
    std::fs::write(&path, keys.to_string()).unwrap();
    app.options.github_secret_scanning_keys = Some(path);
    app.enable_http();
    app.start().await;
    Some(app)
}

async fn post(app: &TestApp, body: &[u8], headers: &[(&str, &str)]) -> Answer {
    let mut request = http_client().post(app.http_url(PATH)).body(body.to_vec());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    Answer::of(request.send().await.expect("HTTP request")).await
}

fn alerts(tokens: &[&str]) -> Vec<u8> {
    let alerts: Vec<serde_json::Value> = tokens
        .iter()
        .map(|token| {
            serde_json::json!({
                "token": token,
                "type": "embrace_service_account_token",
                "url": "https://github.com/octo/repo/blob/abc/config.yml",
                "source": "content",
            })
        })
        .collect();
    serde_json::to_vec(&alerts).unwrap()
}

async fn github_reported_matches_are_revoked_and_labelled(backend: Backend) {
    let github = signing_key("github");
    let Some(app) = start(backend, &github).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let id = create_account(&app, &jwt, "Bot", None)
        .await
        .service_account_id;
    let (live, live_secret) = create_token(&app, &jwt, &id, &["mcp:tools:call"]).await;
    let (revoked, revoked_secret) = create_token(&app, &jwt, &id, &["mcp:tools:call"]).await;
    revoke(&app, &jwt, &id, &revoked.token_id).await;
    let unknown = service_accounts_domain::token::TokenSecret::generate()
        .expose()
        .to_owned();
    let body = alerts(&[&live_secret, &revoked_secret, &unknown, "emb_sa_short"]);
    let answer = post(
        &app,
        &body,
        &[
            ("github-public-key-identifier", "github-key-1"),
            ("github-public-key-signature", &sign(&github, &body)),
            ("content-type", "application/json"),
        ],
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let feedback: Vec<serde_json::Value> = serde_json::from_str(&answer.body).unwrap();
    let labels: Vec<&str> = feedback
        .iter()
        .map(|f| f["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        [
            "true_positive",
            "true_positive",
            "false_positive",
            "false_positive"
        ]
    );
    assert_eq!(feedback[0]["token_raw"], live_secret.as_str());
    assert!(feedback.iter().all(
        |f| f["token_type"] == "embrace_service_account_token" && f.get("token_hash").is_none()
    ));
    let answer = introspect(&app, &live_secret, "", "", &[]).await;
    assert_eq!(answer.inactive_reason(), pb::InactiveReason::Revoked);
    let tokens = tokens_of(&app, &jwt, &id).await;
    let leaked = tokens.iter().find(|t| t.token_id == live.token_id).unwrap();
    assert_eq!(leaked.revoke_reason(), pb::token::RevokeReason::Leaked);
    let events = audit_events(&app, &jwt).await;
    let leak = events
        .iter()
        .find(|e| e.action == "token.leak_revoke")
        .expect("a leak revocation event");
    assert!(leak.details.contains("github.com/octo/repo"), "{leak:?}");
    assert!(
        !captured_logs().contains(&live_secret[7..44]),
        "a reported secret reached the logs"
    );
}

async fn unsigned_mis_signed_or_malformed_reports_change_nothing(backend: Backend) {
    let github = signing_key("github");
    let Some(app) = start(backend, &github).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let id = create_account(&app, &jwt, "Bot", None)
        .await
        .service_account_id;
    let (_, secret) = create_token(&app, &jwt, &id, &["mcp:tools:call"]).await;
    let body = alerts(&[&secret]);
    let signature = sign(&github, &body);
    let signed = |key_id: &str, signature: String| {
        vec![
            ("github-public-key-identifier", key_id.to_owned()),
            ("github-public-key-signature", signature),
        ]
    };

    // Each refusal: its status, and the token still works.
    let mut tampered = body.clone();
    let at = tampered.len() - 3;
    tampered[at] = b' ';
    let not_json = b"token=emb_sa_x".to_vec();
    let wrong_shape = br#"{"token": "x"}"#.to_vec();
    let too_many = alerts(&vec![secret.as_str(); 1001]);
    let cases: Vec<Case> = vec![
        ("no signature", body.clone(), vec![], 401),
        (
            "unknown key id",
            body.clone(),
            signed("github-key-9", signature.clone()),
            401,
        ),
        (
            "signed by another key",
            body.clone(),
            signed("github-key-1", sign(&signing_key("attacker"), &body)),
            401,
        ),
        (
            "body changed after signing",
            tampered,
            signed("github-key-1", signature.clone()),
            401,
        ),
        (
            "not JSON",
            not_json.clone(),
            signed("github-key-1", sign(&github, &not_json)),
            400,
        ),
        (
            "not an array",
            wrong_shape.clone(),
            signed("github-key-1", sign(&github, &wrong_shape)),
            400,
        ),
        (
            "1,001 matches",
            too_many.clone(),
            signed("github-key-1", sign(&github, &too_many)),
            400,
        ),
    ];
    for (what, body, headers, status) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let answer = post(&app, &body, &headers).await;
        assert_eq!(answer.status, status, "{what}: {answer:?}");
        assert!(
            introspect(&app, &secret, "", "", &[]).await.active,
            "{what} changed something"
        );
    }
    // A 10 MB body is refused from its declared length, before any of it is read: the request
    // is written by hand so that the answer is read without sending the body.
    let answer = declared_but_unsent(&app, 10 * 1024 * 1024).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(introspect(&app, &secret, "", "", &[]).await.active);
    let actions = audit_actions(&app, &jwt).await;
    assert!(
        !actions.iter().any(|a| a == "token.leak_revoke"),
        "{actions:?}"
    );
}

/// Sends request headers declaring a body of `length` bytes, sends none of it, and returns the
/// server's answer as text.
async fn declared_but_unsent(app: &TestApp, length: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(app.http_addr())
        .await
        .unwrap();
    let head = format!(
        "POST {PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         github-public-key-identifier: github-key-1\r\ngithub-public-key-signature: AA==\r\n\
         Content-Length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0; 4096];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("an answer before the body is sent")
        .unwrap();
    String::from_utf8_lossy(&answer[..read]).into_owned()
}
