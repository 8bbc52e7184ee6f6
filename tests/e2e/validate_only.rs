//! `validate_only` (AIP-163) on every mutation: each check runs, nothing is written, no audit
//! event, and the response is what it would have been (without a secret).

use prost::Message;
use service_accounts_api::pb;
use service_accounts_api::pb::service_account_admin_server::SERVICE_NAME as ADMIN;
use tonic::Code;

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(
    every_mutation_only_validated_answers_as_if_made_and_changes_nothing,
    a_mutation_only_validated_is_still_refused_by_every_check,
);

/// What an org looks like to an admin: its accounts, their tokens, its audit trail and policy.
async fn snapshot(app: &TestApp, jwt: &str) -> Vec<u8> {
    let mut admin = app.admin().await;
    let accounts = admin
        .list_service_accounts(authed(
            pb::ListServiceAccountsRequest {
                page_size: 1000,
                ..Default::default()
            },
            jwt,
        ))
        .await
        .unwrap()
        .into_inner();
    let tokens = admin
        .list_tokens(authed(
            pb::ListTokensRequest {
                service_account_id: "-".into(),
                page_size: 1000,
                ..Default::default()
            },
            jwt,
        ))
        .await
        .unwrap()
        .into_inner();
    let policy = admin
        .get_token_policy(authed(pb::GetTokenPolicyRequest {}, jwt))
        .await
        .unwrap()
        .into_inner();
    let events = audit_events(app, jwt).await;
    let mut bytes = accounts.encode_to_vec();
    bytes.extend(tokens.encode_to_vec());
    bytes.extend(policy.encode_to_vec());
    for event in events {
        bytes.extend(event.encode_to_vec());
    }
    bytes
}

/// The admin RPCs whose request has `validate_only`, from the descriptor set.
fn validating_rpcs() -> Vec<String> {
    let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
    let messages: Vec<_> = set
        .file
        .iter()
        .flat_map(|f| f.message_type.iter().map(move |m| (f.package(), m)))
        .collect();
    let mut rpcs = Vec::new();
    for file in &set.file {
        for service in &file.service {
            if format!("{}.{}", file.package(), service.name()) != ADMIN {
                continue;
            }
            for method in &service.method {
                let has = messages.iter().any(|(package, m)| {
                    format!(".{package}.{}", m.name()) == method.input_type()
                        && m.field.iter().any(|f| f.name() == "validate_only")
                });
                if has {
                    rpcs.push(method.name().to_owned());
                }
            }
        }
    }
    rpcs.sort();
    rpcs
}

async fn every_mutation_only_validated_answers_as_if_made_and_changes_nothing(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let mut admin = app.admin().await;
    let account = create_account(&app, &jwt, "CI Pipeline", Some(&["checkout-ios"])).await;
    let id = account.service_account_id.clone();
    let (token, secret) = create_token(&app, &jwt, &id, &["mcp:tools:call"]).await;
    let before = snapshot(&app, &jwt).await;
    let mut called = Vec::new();
    let unchanged = async |rpc: &str, called: &mut Vec<String>| {
        called.push(rpc.to_owned());
        assert_eq!(
            snapshot(&app, &jwt).await,
            before,
            "{rpc} changed something"
        );
    };

    let created = admin
        .create_service_account(authed(
            pb::CreateServiceAccountRequest {
                display_name: "Support Bot".into(),
                labels: [("team".to_string(), "support".to_string())].into(),
                validate_only: true,
                ..Default::default()
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner()
        .service_account
        .unwrap();
    assert_eq!(created.display_name, "Support Bot");
    assert_eq!(created.labels["team"], "support");
    assert!(!created.service_account_id.is_empty());
    unchanged("CreateServiceAccount", &mut called).await;

    let renamed = admin
        .update_service_account(authed(
            pb::UpdateServiceAccountRequest {
                service_account: Some(pb::ServiceAccount {
                    service_account_id: id.clone(),
                    display_name: "CI".into(),
                    labels: [("team".to_string(), "platform".to_string())].into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["display_name".into(), "labels".into()],
                }),
                validate_only: true,
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner()
        .service_account
        .unwrap();
    assert_eq!(renamed.display_name, "CI");
    assert_eq!(renamed.labels["team"], "platform");
    assert_ne!(renamed.etag, account.etag, "the etag it would have had");
    unchanged("UpdateServiceAccount", &mut called).await;

    let access = |apps: &[&str]| pb::AppAccess {
        all_apps: false,
        app_ids: apps.iter().map(|a| a.to_string()).collect(),
    };
    let set = admin
        .set_app_access(authed(
            pb::SetAppAccessRequest {
                service_account_id: id.clone(),
                app_access: Some(access(&["checkout-web"])),
                validate_only: true,
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        set.service_account.unwrap().app_access,
        Some(access(&["checkout-web"]))
    );
    unchanged("SetAppAccess", &mut called).await;
    let granted = admin
        .grant_app_access(authed(
            pb::GrantAppAccessRequest {
                service_account_id: id.clone(),
                app_ids: vec!["checkout-web".into()],
                validate_only: true,
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        granted.service_account.unwrap().app_access,
        Some(access(&["checkout-ios", "checkout-web"]))
    );
    unchanged("GrantAppAccess", &mut called).await;
    let revoked_app = admin
        .revoke_app_access(authed(
            pb::RevokeAppAccessRequest {
                service_account_id: id.clone(),
                app_ids: vec!["checkout-ios".into()],
                validate_only: true,
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        revoked_app.service_account.unwrap().app_access,
        Some(access(&[]))
    );
    unchanged("RevokeAppAccess", &mut called).await;

    let disabled = admin
        .disable_service_account(authed(
            pb::DisableServiceAccountRequest {
                service_account_id: id.clone(),
                validate_only: true,
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        disabled.service_account.unwrap().state(),
        pb::service_account::State::Disabled
    );
    unchanged("DisableServiceAccount", &mut called).await;
    // Enabling an active account changes nothing either way.
    admin
        .enable_service_account(authed(
            pb::EnableServiceAccountRequest {
                service_account_id: id.clone(),
                validate_only: true,
            },
            &jwt,
        ))
        .await
        .unwrap();
    unchanged("EnableServiceAccount", &mut called).await;

    let issued = admin
        .create_token(authed(
            pb::CreateTokenRequest {
                service_account_id: id.clone(),
                display_name: "deploy".into(),
                scopes: vec!["mcp:tools:call".into()],
                validate_only: true,
                ..Default::default()
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(issued.secret, "", "no token, so no secret");
    assert_eq!(issued.token.unwrap().display_name, "deploy");
    unchanged("CreateToken", &mut called).await;

    let rotated = admin
        .rotate_token(authed(
            pb::RotateTokenRequest {
                service_account_id: id.clone(),
                token_id: token.token_id.clone(),
                validate_only: true,
                ..Default::default()
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rotated.secret, "");
    let previous = rotated.previous_token.unwrap();
    assert_eq!(previous.state(), pb::token::State::Revoked, "{previous:?}");
    assert_eq!(previous.revoke_reason(), pb::token::RevokeReason::Rotated);
    unchanged("RotateToken", &mut called).await;

    let updated = admin
        .update_token(authed(
            pb::UpdateTokenRequest {
                token: Some(pb::Token {
                    service_account_id: id.clone(),
                    token_id: token.token_id.clone(),
                    display_name: "renamed".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["display_name".into()],
                }),
                validate_only: true,
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.token.unwrap().display_name, "renamed");
    unchanged("UpdateToken", &mut called).await;

    let revoked = admin
        .revoke_token(authed(
            pb::RevokeTokenRequest {
                service_account_id: id.clone(),
                token_id: token.token_id.clone(),
                validate_only: true,
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.token.unwrap().state(), pb::token::State::Revoked);
    unchanged("RevokeToken", &mut called).await;

    let policy = admin
        .update_token_policy(authed(
            pb::UpdateTokenPolicyRequest {
                token_policy: Some(pb::TokenPolicy {
                    max_lifetime: Some(prost_types::Duration {
                        seconds: 7_776_000,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["max_lifetime".into()],
                }),
                validate_only: true,
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(policy.token_policy.unwrap().max_lifetime.is_some());
    unchanged("UpdateTokenPolicy", &mut called).await;

    admin
        .delete_service_account(authed(
            pb::DeleteServiceAccountRequest {
                service_account_id: id.clone(),
                validate_only: true,
            },
            &jwt,
        ))
        .await
        .unwrap();
    unchanged("DeleteServiceAccount", &mut called).await;

    // Nothing happened to the token either: it still works.
    assert!(introspect(&app, &secret, "", "", &[]).await.active);
    called.sort();
    assert_eq!(called, validating_rpcs(), "every mutation is covered here");
}

async fn a_mutation_only_validated_is_still_refused_by_every_check(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let mut admin = app.admin().await;
    let account = create_account(&app, &jwt, "CI Pipeline", None).await;
    let before = snapshot(&app, &jwt).await;

    // The name conflict is found by the store, in the transaction that is rolled back.
    let taken = admin
        .create_service_account(authed(
            pb::CreateServiceAccountRequest {
                display_name: "ci pipeline".into(),
                validate_only: true,
                ..Default::default()
            },
            &jwt,
        ))
        .await;
    assert_code(taken, Code::AlreadyExists);
    let labelled = admin
        .create_service_account(authed(
            pb::CreateServiceAccountRequest {
                display_name: "Labelled".into(),
                labels: [("bad key".to_string(), String::new())].into(),
                validate_only: true,
                ..Default::default()
            },
            &jwt,
        ))
        .await;
    assert_invalid(labelled, &[r#"labels["bad key"]"#]);
    let invalid = admin
        .create_token(authed(
            pb::CreateTokenRequest {
                service_account_id: account.service_account_id.clone(),
                display_name: "deploy".into(),
                scopes: vec!["mcp:read".into()],
                validate_only: true,
                ..Default::default()
            },
            &jwt,
        ))
        .await;
    assert_invalid(invalid, &["scopes"]);
    let missing = admin
        .revoke_token(authed(
            pb::RevokeTokenRequest {
                service_account_id: account.service_account_id.clone(),
                token_id: uuid::Uuid::now_v7().to_string(),
                validate_only: true,
            },
            &jwt,
        ))
        .await;
    assert_code(missing, Code::NotFound);
    assert_eq!(snapshot(&app, &jwt).await, before);
}
