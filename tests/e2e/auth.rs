use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use service_accounts_api::config::{AdminTrust, JwksSource, JwksTrust};
use service_accounts_api::pb;
use tonic::Code;

use crate::on_both_backends;
use crate::support::*;

const ISSUER: &str = "https://identity.test";
const AUDIENCE: &str = "service-accounts";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(org: &str, roles: &[&str]) -> serde_json::Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "org_id": org,
        "roles": roles,
        "iat": now(),
        "exp": now() + 300,
    })
}

fn with(mut claims: serde_json::Value, key: &str, value: serde_json::Value) -> serde_json::Value {
    claims[key] = value;
    claims
}

fn without(mut claims: serde_json::Value, key: &str) -> serde_json::Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

async fn spawn_with_jwks(signer: &Signer) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.keep().join("jwks.json");
    std::fs::write(&path, json!({ "keys": [signer.jwk()] }).to_string()).unwrap();
    Setup::new(Backend::Sqlite)
        .admin_trust(AdminTrust {
            jwks: Some(JwksTrust {
                source: JwksSource::File(path),
                issuer: ISSUER.into(),
                audience: AUDIENCE.into(),
            }),
            trust_dev_key: false,
        })
        .start()
        .await
        .unwrap()
}

async fn list_with(
    app: &TestApp,
    authorization: Option<String>,
) -> Result<pb::ListServiceAccountsResponse, tonic::Status> {
    let mut request = tonic::Request::new(pb::ListServiceAccountsRequest::default());
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.parse().unwrap());
    }
    app.admin()
        .await
        .list_service_accounts(request)
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn admin_jwts_are_verified_against_the_configured_jwks() {
    let signer = Signer::new(7, "key-1");
    let app = spawn_with_jwks(&signer).await;
    let bearer = |token: String| Some(format!("Bearer {token}"));

    assert!(
        list_with(&app, bearer(signer.sign(&claims("org-a", &["org_admin"]))))
            .await
            .is_ok()
    );

    let unauthenticated = [
        ("no credential", None),
        (
            "wrong scheme",
            Some(format!(
                "Basic {}",
                signer.sign(&claims("org-a", &["org_admin"]))
            )),
        ),
        ("not a JWT", bearer("garbage".into())),
        (
            "expired",
            bearer(signer.sign(&with(
                claims("org-a", &["org_admin"]),
                "exp",
                json!(now() - 120),
            ))),
        ),
        (
            "not yet valid",
            bearer(signer.sign(&with(
                claims("org-a", &["org_admin"]),
                "nbf",
                json!(now() + 120),
            ))),
        ),
        (
            "wrong issuer",
            bearer(signer.sign(&with(
                claims("org-a", &["org_admin"]),
                "iss",
                json!("https://evil.test"),
            ))),
        ),
        (
            "wrong audience",
            bearer(signer.sign(&with(
                claims("org-a", &["org_admin"]),
                "aud",
                json!("other"),
            ))),
        ),
        (
            "no expiry",
            bearer(signer.sign(&without(claims("org-a", &["org_admin"]), "exp"))),
        ),
        (
            "no org",
            bearer(signer.sign(&without(claims("org-a", &["org_admin"]), "org_id"))),
        ),
        (
            "untrusted key",
            bearer(Signer::new(8, "key-1").sign(&claims("org-a", &["org_admin"]))),
        ),
        (
            "dev key when a JWKS is configured",
            bearer(app.admin_jwt("org-a")),
        ),
        (
            "alg none",
            bearer(unsigned(&claims("org-a", &["org_admin"]))),
        ),
        (
            "HS256 keyed with the public key",
            bearer(hmac_with_public_key(
                &signer,
                &claims("org-a", &["org_admin"]),
            )),
        ),
    ];
    for (case, authorization) in unauthenticated {
        let result = list_with(&app, authorization).await;
        let status = result.expect_err(case);
        assert_eq!(status.code(), Code::Unauthenticated, "{case}: {status:?}");
    }

    let not_admin = list_with(&app, bearer(signer.sign(&claims("org-a", &["viewer"])))).await;
    assert_code(not_admin, Code::PermissionDenied);
    let no_roles = list_with(
        &app,
        bearer(signer.sign(&without(claims("org-a", &[]), "roles"))),
    )
    .await;
    assert_code(no_roles, Code::PermissionDenied);
}

fn unsigned(claims: &serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(json!({ "alg": "none", "typ": "JWT" }).to_string());
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{body}.")
}

fn hmac_with_public_key(signer: &Signer, claims: &serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(signer.kid.into());
    let public = signer.jwk().to_string();
    encode(
        &header,
        claims,
        &EncodingKey::from_secret(public.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn a_jwks_with_a_symmetric_key_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(
        &path,
        json!({ "keys": [{ "kty": "oct", "k": "c2VjcmV0" }] }).to_string(),
    )
    .unwrap();
    let trust = AdminTrust {
        jwks: Some(JwksTrust {
            source: JwksSource::File(path),
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
        }),
        trust_dev_key: false,
    };
    let error = match service_accounts_api::server::authenticator(&trust, dir.path(), true) {
        Ok(_) => panic!("an HMAC key must not be trusted"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("symmetric"), "{error}");
}

on_both_backends!(
    other_orgs_resources_are_not_found,
    non_admins_are_denied_everywhere
);

async fn other_orgs_resources_are_not_found(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt_a = app.admin_jwt("org-a");
    let id = create_account(&app, &jwt_a, "A's bot", Some(&["app-1"]))
        .await
        .service_account_id;
    let (token, secret) = create_token(&app, &jwt_a, &id, &["mcp:tools:call"]).await;

    let jwt_b = app.admin_jwt("org-b");
    let mut admin = app.admin().await;
    let missing_id = uuid::Uuid::now_v7().to_string();
    let mut answers = Vec::new();
    for target in [id.clone(), missing_id] {
        let results: Vec<(&str, Result<(), tonic::Status>)> = vec![
            (
                "get",
                admin
                    .get_service_account(authed(
                        pb::GetServiceAccountRequest {
                            service_account_id: target.clone(),
                        },
                        &jwt_b,
                    ))
                    .await
                    .map(drop),
            ),
            (
                "update",
                admin
                    .update_service_account(authed(
                        pb::UpdateServiceAccountRequest {
                            validate_only: false,
                            service_account: Some(pb::ServiceAccount {
                                service_account_id: target.clone(),
                                display_name: "taken over".into(),
                                ..Default::default()
                            }),
                            update_mask: None,
                        },
                        &jwt_b,
                    ))
                    .await
                    .map(drop),
            ),
            (
                "set app access",
                admin
                    .set_app_access(authed(
                        pb::SetAppAccessRequest {
                            validate_only: false,
                            service_account_id: target.clone(),
                            app_access: Some(pb::AppAccess {
                                all_apps: true,
                                app_ids: vec![],
                            }),
                        },
                        &jwt_b,
                    ))
                    .await
                    .map(drop),
            ),
            (
                "grant",
                admin
                    .grant_app_access(authed(
                        pb::GrantAppAccessRequest {
                            validate_only: false,
                            service_account_id: target.clone(),
                            app_ids: vec!["x".into()],
                        },
                        &jwt_b,
                    ))
                    .await
                    .map(drop),
            ),
            (
                "revoke app",
                admin
                    .revoke_app_access(authed(
                        pb::RevokeAppAccessRequest {
                            validate_only: false,
                            service_account_id: target.clone(),
                            app_ids: vec!["app-1".into()],
                        },
                        &jwt_b,
                    ))
                    .await
                    .map(drop),
            ),
            (
                "create token",
                admin
                    .create_token(authed(
                        pb::CreateTokenRequest {
                            validate_only: false,
                            allowed_cidrs: Vec::new(),
                            service_account_id: target.clone(),
                            display_name: "t".into(),
                            scopes: vec!["mcp:tools:call".into()],
                            expire_time: None,
                        },
                        &jwt_b,
                    ))
                    .await
                    .map(drop),
            ),
            (
                "list tokens",
                admin
                    .list_tokens(authed(
                        pb::ListTokensRequest {
                            service_account_id: target.clone(),
                            ..Default::default()
                        },
                        &jwt_b,
                    ))
                    .await
                    .map(drop),
            ),
            (
                "revoke token",
                admin
                    .revoke_token(authed(
                        pb::RevokeTokenRequest {
                            validate_only: false,
                            service_account_id: target.clone(),
                            token_id: token.token_id.clone(),
                        },
                        &jwt_b,
                    ))
                    .await
                    .map(drop),
            ),
            (
                "delete",
                admin
                    .delete_service_account(authed(
                        pb::DeleteServiceAccountRequest {
                            validate_only: false,
                            service_account_id: target.clone(),
                        },
                        &jwt_b,
                    ))
                    .await
                    .map(drop),
            ),
        ];
        for (rpc, result) in results {
            let status = result.expect_err(rpc);
            assert_eq!(status.code(), Code::NotFound, "{rpc}: {status:?}");
            answers.push((rpc, status.message().to_owned(), status.details().to_vec()));
        }
    }
    // Another org's account and a missing one are answered identically, RPC by RPC.
    let (theirs, missing) = answers.split_at(answers.len() / 2);
    assert_eq!(theirs, missing);
    let listed = admin
        .list_service_accounts(authed(pb::ListServiceAccountsRequest::default(), &jwt_b))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.service_accounts.is_empty());
    assert!(audit_actions(&app, &jwt_b).await.is_empty());

    // Org A's account and token are untouched.
    let checked = introspect(&app, &secret, "org-a", "app-1", &[]).await;
    assert!(checked.allowed);
    assert_eq!(checked.service_account_display_name, "A's bot");
    assert_eq!(
        audit_actions(&app, &jwt_a).await,
        ["service_account.create", "token.create"]
    );
}

async fn non_admins_are_denied_everywhere(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let admin_jwt = app.admin_jwt("org-a");
    let id = create_account(&app, &admin_jwt, "Bot", None)
        .await
        .service_account_id;
    let viewer = app.jwt("org-a", "viewer", &["viewer", "org_member"]);
    let mut admin = app.admin().await;
    let results: Vec<(&str, Result<(), tonic::Status>)> = vec![
        (
            "create",
            admin
                .create_service_account(authed(
                    pb::CreateServiceAccountRequest {
                        display_name: "x".into(),
                        ..Default::default()
                    },
                    &viewer,
                ))
                .await
                .map(drop),
        ),
        (
            "get",
            admin
                .get_service_account(authed(
                    pb::GetServiceAccountRequest {
                        service_account_id: id.clone(),
                    },
                    &viewer,
                ))
                .await
                .map(drop),
        ),
        (
            "list",
            admin
                .list_service_accounts(authed(pb::ListServiceAccountsRequest::default(), &viewer))
                .await
                .map(drop),
        ),
        (
            "delete",
            admin
                .delete_service_account(authed(
                    pb::DeleteServiceAccountRequest {
                        validate_only: false,
                        service_account_id: id.clone(),
                    },
                    &viewer,
                ))
                .await
                .map(drop),
        ),
        (
            "create token",
            admin
                .create_token(authed(
                    pb::CreateTokenRequest {
                        validate_only: false,
                        allowed_cidrs: Vec::new(),
                        service_account_id: id.clone(),
                        display_name: "t".into(),
                        scopes: vec!["mcp:tools:call".into()],
                        expire_time: None,
                    },
                    &viewer,
                ))
                .await
                .map(drop),
        ),
        (
            "list tokens",
            admin
                .list_tokens(authed(
                    pb::ListTokensRequest {
                        service_account_id: id.clone(),
                        ..Default::default()
                    },
                    &viewer,
                ))
                .await
                .map(drop),
        ),
        (
            "list scopes",
            admin
                .list_scopes(authed(pb::ListScopesRequest {}, &viewer))
                .await
                .map(drop),
        ),
        (
            "audit",
            admin
                .list_audit_events(authed(pb::ListAuditEventsRequest::default(), &viewer))
                .await
                .map(drop),
        ),
    ];
    for (rpc, result) in results {
        let status = result.expect_err(rpc);
        assert_eq!(status.code(), Code::PermissionDenied, "{rpc}: {status:?}");
    }
    assert_eq!(
        audit_actions(&app, &admin_jwt).await,
        ["service_account.create"]
    );
}
