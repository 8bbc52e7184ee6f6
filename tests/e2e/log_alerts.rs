//! The log lines docs/operations.md says to alert on are the ones the server writes: each is
//! brought about for real, on the binary writing to a pipe as it would to a file or a collector.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::Method;
use service_accounts_api::pb;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::support::*;

const DOCS: &str = include_str!("../../docs/operations.md");

/// The message each bullet of the "## Logs" section's alert list starts with.
fn documented_alerts() -> Vec<&'static str> {
    let section = DOCS
        .split("\n## Logs\n")
        .nth(1)
        .expect("a ## Logs section")
        .split("\n## ")
        .next()
        .unwrap();
    section
        .lines()
        .filter_map(|line| line.strip_prefix("- `"))
        .map(|rest| rest.split('`').next().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_line_the_docs_say_to_alert_on_is_written_when_it_happens() {
    let alerts = documented_alerts();
    assert_eq!(alerts.len(), 5, "{alerts:?}");
    let Some(admin_url) = postgres_admin_url() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let database = TestDatabase::create(Backend::Postgres, &dir).await.unwrap();
    let (proxy, proxied_url) = Proxy::in_front_of(&admin_url, &database.url, Duration::ZERO).await;
    let http_port = free_port();
    let mut server = ServerProcess::start(|command| {
        command
            .args(["--database-url", &proxied_url, "--admin-trust-dev-key"])
            .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
            .args(["--readiness-interval", "200ms", "--shutdown-grace", "2s"])
            .arg("--data-dir")
            .arg(dir.path());
    });
    let addr = SocketAddr::from(([127, 0, 0, 1], server.port));
    let channel = server.connect_when_serving().await;
    let jwt = admin_token(dir.path(), "acme", "alice");
    let mut admin =
        pb::service_account_admin_client::ServiceAccountAdminClient::new(channel.clone());
    let mut introspection =
        pb::token_introspection_client::TokenIntrospectionClient::new(channel.clone());

    // Admin changes (audited), and a revoked token presented again.
    let account = create_account_over(channel.clone(), &jwt, "Alerts").await;
    let id = account.service_account_id;
    let mut tokens = Vec::new();
    for name in ["Old", "Live"] {
        let created = admin
            .create_token(authed(
                pb::CreateTokenRequest {
                    service_account_id: id.clone(),
                    display_name: name.into(),
                    scopes: vec!["mcp:tools:call".into()],
                    ..Default::default()
                },
                &jwt,
            ))
            .await
            .unwrap()
            .into_inner();
        tokens.push((created.token.unwrap().token_id, created.secret));
    }
    let [(old_id, old), (_, live)] = tokens.as_slice() else {
        unreachable!()
    };
    admin
        .revoke_token(authed(
            pb::RevokeTokenRequest {
                validate_only: false,
                service_account_id: id.clone(),
                token_id: old_id.clone(),
            },
            &jwt,
        ))
        .await
        .unwrap();
    let introspect = |token: &str| pb::IntrospectRequest {
        token: token.to_owned(),
        ..Default::default()
    };
    let answer = introspection.introspect(introspect(old)).await.unwrap();
    assert!(!answer.get_ref().active);

    // A gateway that sends a malformed identity header.
    let refused = send(
        &http_client(),
        Method::GET,
        &format!("http://127.0.0.1:{http_port}/v1/forward-auth"),
        &[
            ("authorization", &format!("Bearer {live}")),
            ("x-embrace-org-id", "acme"),
            ("x-embrace-org-id", "globex"),
        ],
    )
    .await;
    assert_eq!(refused.status, 400, "{refused:?}");

    // Storage goes away: health turns NOT_SERVING, and the replica stops trusting its cache.
    assert!(
        introspection
            .introspect(introspect(live))
            .await
            .unwrap()
            .get_ref()
            .active
    );
    proxy.cut();
    Wait::new("health says NOT_SERVING")
        .within(Duration::from_secs(10))
        .every(Duration::from_millis(50))
        .until(async || {
            matches!(health_status(addr, "").await, Ok(ServingStatus::NotServing)).then_some(())
        })
        .await;
    Wait::new("introspection fails closed")
        .within(Duration::from_secs(10))
        .every(Duration::from_millis(50))
        .until(async || {
            let result = introspection.introspect(introspect(live)).await;
            matches!(result, Err(status) if status.code() == Code::Unavailable).then_some(())
        })
        .await;
    proxy.restore();

    let logs = server.terminate().await.stderr;
    for alert in alerts {
        assert!(logs.contains(alert), "no log line says {alert:?}:\n{logs}");
    }
    // Written to a pipe, not a terminal: plain text, no colour codes.
    assert!(!logs.contains('\x1b'), "{logs}");
    for secret in [old, live, &jwt] {
        assert!(!logs.contains(secret.as_str()));
    }
}
