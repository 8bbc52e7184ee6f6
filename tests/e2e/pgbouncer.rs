//! Replicas whose queries go through a real PgBouncer in transaction pooling while their change
//! listeners connect to PostgreSQL directly (`--database-listen-url`).

use std::collections::BTreeSet;
use std::time::Duration;

use prost::Message;
use sea_orm::{ConnectionTrait, Database, Statement};
use service_accounts_api::pb;
use service_accounts_api::pb::service_account_admin_server::SERVICE_NAME as ADMIN;
use service_accounts_persistence::changes::LISTENER_APPLICATION_NAME;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::coherence::{CONVERGENCE_BOUND, database_name};
use crate::support::*;

/// Two replicas on one fresh database, both querying through `bouncer`, listening directly.
async fn replicas_behind(bouncer: &PgBouncer) -> (TestApp, TestApp) {
    replicas_listening_through(bouncer, None).await
}

/// The same, listening through `listener_bouncer` when given.
async fn replicas_listening_through(
    bouncer: &PgBouncer,
    listener_bouncer: Option<&PgBouncer>,
) -> (TestApp, TestApp) {
    let mut a = unstarted(Setup::new(Backend::Postgres)).await.unwrap();
    let direct = a.database.url.clone();
    let listen = listener_bouncer.map_or(direct.clone(), |b| b.url_for(&direct));
    a.options.storage.database_url = Some(bouncer.url_for(&direct).as_str().into());
    a.options.storage.database_listen_url = Some(listen.as_str().into());
    a.start().await;
    let b = a.replica_on(&bouncer.url_for(&direct)).await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_behind_a_transaction_pooling_pgbouncer_serve_every_admin_rpc() {
    let Some(admin_url) = postgres_admin_url() else {
        return;
    };
    let Some(bouncer) = PgBouncer::start(&admin_url).await else {
        return;
    };
    let (a, b) = replicas_behind(&bouncer).await;

    let called = every_admin_rpc(&a, &a.admin_jwt("org-tour")).await;
    assert_eq!(called, admin_rpcs(), "every admin RPC is called above");

    // Transactions of both replicas interleaved on PgBouncer's two server connections: prepared
    // statements left by one client must not collide with another's.
    let mut work = tokio::task::JoinSet::new();
    for i in 0..16 {
        let addr = if i % 2 == 0 { a.addr } else { b.addr };
        let jwt = a.admin_jwt(&format!("org-{i}"));
        work.spawn(async move {
            let channel = connect(addr).await.unwrap();
            let mut admin =
                pb::service_account_admin_client::ServiceAccountAdminClient::new(channel.clone());
            let mut introspection =
                pb::token_introspection_client::TokenIntrospectionClient::new(channel);
            for round in 0..5 {
                let account = admin
                    .create_service_account(authed(
                        pb::CreateServiceAccountRequest {
                            display_name: format!("Bot {round}"),
                            ..Default::default()
                        },
                        &jwt,
                    ))
                    .await?
                    .into_inner()
                    .service_account
                    .unwrap();
                let secret = admin
                    .create_token(authed(
                        pb::CreateTokenRequest {
                            service_account_id: account.service_account_id.clone(),
                            display_name: "t".into(),
                            scopes: vec!["mcp:tools:call".into(), "mcp:read".into()],
                            ..Default::default()
                        },
                        &jwt,
                    ))
                    .await?
                    .into_inner()
                    .secret;
                let answer = introspection
                    .introspect(pb::IntrospectRequest {
                        token: secret,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                assert!(answer.active);
                admin
                    .list_tokens(authed(
                        pb::ListTokensRequest {
                            service_account_id: "-".into(),
                            ..Default::default()
                        },
                        &jwt,
                    ))
                    .await?;
            }
            Ok::<_, tonic::Status>(())
        });
    }
    while let Some(done) = work.join_next().await {
        done.unwrap()
            .unwrap_or_else(|status| panic!("{status:?}\nPgBouncer log:\n{}", bouncer.log()));
    }

    // The pools reached PostgreSQL through PgBouncer's server connections only; the listeners
    // directly, one per replica.
    let (listeners, others) = backends(&admin_url, &database_name(&a.database.url)).await;
    assert_eq!(listeners, 2, "one direct listener per replica");
    assert!(
        others <= pgbouncer::POOL_SIZE,
        "{others} query connections: more than PgBouncer's pool"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_pgbouncer_a_revocation_reaches_the_other_replica_and_a_restart_is_survived() {
    let Some(admin_url) = postgres_admin_url() else {
        return;
    };
    let Some(mut bouncer) = PgBouncer::start(&admin_url).await else {
        return;
    };
    let (a, b) = replicas_behind(&bouncer).await;
    let jwt = a.admin_jwt("org-a");

    let revoked_on_a_is_inactive_on_b = async |a: &TestApp, b: &TestApp, name: &str| {
        let id = create_account(a, &jwt, name, None).await.service_account_id;
        let (token, secret) = create_token(a, &jwt, &id, &["mcp:tools:call"]).await;
        wait_until("B answers from its cache", async || {
            introspect(b, &secret, "", "", &[]).await.active
        })
        .await;
        revoke(a, &jwt, &id, &token.token_id).await;
        Wait::new("B no longer reports the token active")
            .within(CONVERGENCE_BOUND)
            .every(Duration::from_millis(2))
            .until(async || !introspect(b, &secret, "", "", &[]).await.active)
            .await;
    };
    revoked_on_a_is_inactive_on_b(&a, &b, "Before").await;

    // A cached token on B, then PgBouncer goes away: B's heartbeats (sent through PgBouncer)
    // stop coming back, so B stops trusting its cache and, with no storage, fails closed.
    let id = create_account(&a, &jwt, "Cached", None)
        .await
        .service_account_id;
    let (_, secret) = create_token(&a, &jwt, &id, &["mcp:tools:call"]).await;
    wait_until("B answers from its cache", async || {
        introspect(&b, &secret, "", "", &[]).await.active
    })
    .await;
    bouncer.stop();
    let status = Wait::new("B stops answering from its cache")
        .within(CONVERGENCE_BOUND + Duration::from_secs(1))
        .every(Duration::from_millis(10))
        .until(async || {
            b.introspection()
                .await
                .introspect(pb::IntrospectRequest {
                    token: secret.clone(),
                    ..Default::default()
                })
                .await
                .err()
        })
        .await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    bouncer.start_again().await;
    wait_until("admin RPCs work again on A", async || {
        a.admin()
            .await
            .get_service_account(authed(
                pb::GetServiceAccountRequest {
                    service_account_id: id.clone(),
                },
                &jwt,
            ))
            .await
    })
    .await;
    wait_until("B answers again", async || {
        introspect(&b, &secret, "", "", &[]).await.active
    })
    .await;
    revoked_on_a_is_inactive_on_b(&a, &b, "After").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_through_a_session_pooling_pgbouncer_hears_the_other_replicas_revocations() {
    let Some(admin_url) = postgres_admin_url() else {
        return;
    };
    let (Some(queries), Some(listener)) = (
        PgBouncer::start(&admin_url).await,
        PgBouncer::start_session_pooling(&admin_url).await,
    ) else {
        return;
    };
    let (a, b) = replicas_listening_through(&queries, Some(&listener)).await;
    let jwt = a.admin_jwt("org-a");
    let id = create_account(&a, &jwt, "Bot", None)
        .await
        .service_account_id;
    let (token, secret) = create_token(&a, &jwt, &id, &["mcp:tools:call"]).await;
    wait_until("B answers from its cache", async || {
        introspect(&b, &secret, "", "", &[]).await.active
    })
    .await;
    revoke(&a, &jwt, &id, &token.token_id).await;
    Wait::new("B no longer reports the token active")
        .within(CONVERGENCE_BOUND)
        .every(Duration::from_millis(2))
        .until(async || !introspect(&b, &secret, "", "", &[]).await.active)
        .await;
    // The only way to PostgreSQL is PgBouncer's port: both subscriptions are live through it
    // (PgBouncer passes `application_name` on to its server connections).
    let (listeners, _) = backends(&admin_url, &database_name(&a.database.url)).await;
    assert_eq!(listeners, 2, "both listeners subscribed through PgBouncer");
}

/// The admin RPCs of the compiled descriptor set.
fn admin_rpcs() -> BTreeSet<String> {
    let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
    set.file
        .iter()
        .flat_map(|file| file.service.iter().map(move |s| (file, s)))
        .filter(|(file, s)| format!("{}.{}", file.package(), s.name()) == ADMIN)
        .flat_map(|(_, s)| s.method.iter().map(|m| m.name().to_owned()))
        .collect()
}

/// Calls each admin RPC once, successfully, in an order that gives each something to act on;
/// returns the names called.
async fn every_admin_rpc(app: &TestApp, jwt: &str) -> BTreeSet<String> {
    let mut admin = app.admin().await;
    let mut called = BTreeSet::new();
    let mut ok = |name: &str| assert!(called.insert(name.to_owned()), "{name} twice");
    let account = admin
        .create_service_account(authed(
            pb::CreateServiceAccountRequest {
                display_name: "Tour".into(),
                ..Default::default()
            },
            jwt,
        ))
        .await
        .expect("CreateServiceAccount")
        .into_inner()
        .service_account
        .unwrap();
    ok("CreateServiceAccount");
    let id = account.service_account_id.clone();
    let account_id = || id.clone();
    admin
        .get_service_account(authed(
            pb::GetServiceAccountRequest {
                service_account_id: account_id(),
            },
            jwt,
        ))
        .await
        .expect("GetServiceAccount");
    ok("GetServiceAccount");
    let listed = admin
        .list_service_accounts(authed(
            pb::ListServiceAccountsRequest {
                filter: "display_name = \"Tour\"".into(),
                ..Default::default()
            },
            jwt,
        ))
        .await
        .expect("ListServiceAccounts")
        .into_inner();
    assert_eq!(listed.service_accounts.len(), 1);
    ok("ListServiceAccounts");
    admin
        .update_service_account(authed(
            pb::UpdateServiceAccountRequest {
                service_account: Some(pb::ServiceAccount {
                    service_account_id: account_id(),
                    description: "touring".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            jwt,
        ))
        .await
        .expect("UpdateServiceAccount");
    ok("UpdateServiceAccount");
    admin
        .set_app_access(authed(
            pb::SetAppAccessRequest {
                service_account_id: account_id(),
                app_access: Some(pb::AppAccess {
                    all_apps: false,
                    app_ids: vec!["app-1".into()],
                }),
                ..Default::default()
            },
            jwt,
        ))
        .await
        .expect("SetAppAccess");
    ok("SetAppAccess");
    admin
        .grant_app_access(authed(
            pb::GrantAppAccessRequest {
                service_account_id: account_id(),
                app_ids: vec!["app-2".into()],
                ..Default::default()
            },
            jwt,
        ))
        .await
        .expect("GrantAppAccess");
    ok("GrantAppAccess");
    admin
        .revoke_app_access(authed(
            pb::RevokeAppAccessRequest {
                service_account_id: account_id(),
                app_ids: vec!["app-1".into()],
                ..Default::default()
            },
            jwt,
        ))
        .await
        .expect("RevokeAppAccess");
    ok("RevokeAppAccess");
    admin
        .update_token_policy(authed(
            pb::UpdateTokenPolicyRequest {
                token_policy: Some(pb::TokenPolicy {
                    max_lifetime: Some(prost_types::Duration {
                        seconds: 90 * 86_400,
                        nanos: 0,
                    }),
                    default_lifetime: None,
                }),
                ..Default::default()
            },
            jwt,
        ))
        .await
        .expect("UpdateTokenPolicy");
    ok("UpdateTokenPolicy");
    let policy = admin
        .get_token_policy(authed(pb::GetTokenPolicyRequest {}, jwt))
        .await
        .expect("GetTokenPolicy")
        .into_inner();
    assert!(policy.token_policy.unwrap().max_lifetime.is_some());
    ok("GetTokenPolicy");
    let scopes = admin
        .list_scopes(authed(pb::ListScopesRequest {}, jwt))
        .await
        .expect("ListScopes")
        .into_inner();
    assert!(!scopes.scopes.is_empty());
    ok("ListScopes");
    let token = admin
        .create_token(authed(
            pb::CreateTokenRequest {
                service_account_id: account_id(),
                display_name: "tour token".into(),
                scopes: vec!["mcp:tools:call".into(), "mcp:read".into()],
                ..Default::default()
            },
            jwt,
        ))
        .await
        .expect("CreateToken")
        .into_inner()
        .token
        .unwrap();
    ok("CreateToken");
    let tokens = admin
        .list_tokens(authed(
            pb::ListTokensRequest {
                service_account_id: account_id(),
                filter: "scopes:\"mcp:read\"".into(),
                order_by: "create_time desc".into(),
                ..Default::default()
            },
            jwt,
        ))
        .await
        .expect("ListTokens")
        .into_inner();
    assert_eq!(tokens.tokens.len(), 1);
    ok("ListTokens");
    admin
        .update_token(authed(
            pb::UpdateTokenRequest {
                token: Some(pb::Token {
                    service_account_id: account_id(),
                    token_id: token.token_id.clone(),
                    display_name: "renamed".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["display_name".into()],
                }),
                ..Default::default()
            },
            jwt,
        ))
        .await
        .expect("UpdateToken");
    ok("UpdateToken");
    let rotated = admin
        .rotate_token(authed(
            pb::RotateTokenRequest {
                service_account_id: account_id(),
                token_id: token.token_id.clone(),
                ..Default::default()
            },
            jwt,
        ))
        .await
        .expect("RotateToken")
        .into_inner();
    assert!(!rotated.secret.is_empty());
    ok("RotateToken");
    let expiring = admin
        .list_expiring_tokens(authed(
            pb::ListExpiringTokensRequest {
                within: Some(prost_types::Duration {
                    seconds: 365 * 86_400,
                    nanos: 0,
                }),
                ..Default::default()
            },
            jwt,
        ))
        .await
        .expect("ListExpiringTokens")
        .into_inner();
    assert!(
        !expiring.tokens.is_empty(),
        "the policy gives tokens an expiry"
    );
    ok("ListExpiringTokens");
    admin
        .revoke_token(authed(
            pb::RevokeTokenRequest {
                service_account_id: account_id(),
                token_id: rotated.token.unwrap().token_id,
                ..Default::default()
            },
            jwt,
        ))
        .await
        .expect("RevokeToken");
    ok("RevokeToken");
    admin
        .disable_service_account(authed(
            pb::DisableServiceAccountRequest {
                service_account_id: account_id(),
                ..Default::default()
            },
            jwt,
        ))
        .await
        .expect("DisableServiceAccount");
    ok("DisableServiceAccount");
    admin
        .enable_service_account(authed(
            pb::EnableServiceAccountRequest {
                service_account_id: account_id(),
                ..Default::default()
            },
            jwt,
        ))
        .await
        .expect("EnableServiceAccount");
    ok("EnableServiceAccount");
    let mut report = admin
        .export_credential_report(authed(pb::ExportCredentialReportRequest::default(), jwt))
        .await
        .expect("ExportCredentialReport")
        .into_inner();
    let mut csv = Vec::new();
    while let Some(chunk) = report.next().await {
        csv.extend(chunk.expect("a report chunk").chunk);
    }
    assert!(String::from_utf8(csv).unwrap().contains("renamed"));
    ok("ExportCredentialReport");
    admin
        .delete_service_account(authed(
            pb::DeleteServiceAccountRequest {
                service_account_id: account_id(),
                ..Default::default()
            },
            jwt,
        ))
        .await
        .expect("DeleteServiceAccount");
    ok("DeleteServiceAccount");
    let events = admin
        .list_audit_events(authed(
            pb::ListAuditEventsRequest {
                page_size: 100,
                order_by: "create_time desc".into(),
                ..Default::default()
            },
            jwt,
        ))
        .await
        .expect("ListAuditEvents")
        .into_inner();
    assert!(events.audit_events.len() >= 13, "an event per change");
    ok("ListAuditEvents");
    called
}

/// Backends on `database`: (direct change listeners, every other one).
async fn backends(admin_url: &str, database: &str) -> (usize, usize) {
    let admin = Database::connect(admin_url).await.unwrap();
    let rows = admin
        .query_all_raw(Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "SELECT coalesce(application_name, '') AS name FROM pg_stat_activity \
             WHERE datname = $1 AND backend_type = 'client backend'",
            [database.into()],
        ))
        .await
        .unwrap();
    admin.close().await.ok();
    let names: Vec<String> = rows
        .iter()
        .map(|r| r.try_get("", "name").unwrap())
        .collect();
    let listeners = names
        .iter()
        .filter(|n| *n == LISTENER_APPLICATION_NAME)
        .count();
    (listeners, names.len() - listeners)
}
