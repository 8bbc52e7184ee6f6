//! TLS for everyone, and mTLS for introspection callers (`Introspect`, Envoy's `Check` and leak
//! reports), with certificates made at test time.

use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use rcgen::Issuer;
use service_accounts_api::pb;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::support::*;

struct Pki {
    ca_pem: String,
    server: (String, String),
    client: (String, String),
    rogue_client: (String, String),
}

fn pki() -> Pki {
    let (ca_params, ca_key, ca_pem) = authority("test CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let (rogue_params, rogue_key, _) = authority("rogue CA");
    let rogue = Issuer::new(rogue_params, rogue_key);
    Pki {
        ca_pem,
        server: leaf(&["localhost"], &issuer),
        client: leaf(&["mcp-server.internal"], &issuer),
        rogue_client: leaf(&["mcp-server.internal"], &rogue),
    }
}

async fn channel(
    app: &TestApp,
    pki: &Pki,
    client: Option<&(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = client {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://localhost:{}", app.addr.port()))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_admins_and_mtls_guards_introspection() {
    let pki = pki();
    // A plaintext server to set things up, then the same data served over TLS.
    let mut app = spawn(Backend::Sqlite).await.unwrap();
    let jwt = app.admin_jwt("org-a");
    let id = create_account(&app, &jwt, "Bot", None)
        .await
        .service_account_id;
    let (_, secret) = create_token(&app, &jwt, &id, &["mcp:tools:call"]).await;
    app.stop().await.unwrap();

    let dir = app.data_dir.path().to_owned();
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    app.options.tls_cert = Some(write("server.pem", &pki.server.0));
    app.options.tls_key = Some(write("server.key", &pki.server.1));
    app.options.tls_client_ca = Some(write("client-ca.pem", &pki.ca_pem));
    start_tls(&mut app, &pki).await;

    // An admin without a client certificate: TLS, JWT, fine.
    let plain_tls = channel(&app, &pki, None).await.unwrap();
    let listed =
        pb::service_account_admin_client::ServiceAccountAdminClient::new(plain_tls.clone())
            .list_service_accounts(authed(pb::ListServiceAccountsRequest::default(), &jwt))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(listed.service_accounts.len(), 1);
    // ...but introspection needs the client certificate.
    let request = || pb::IntrospectRequest {
        token: secret.clone(),
        ..Default::default()
    };
    let refused = pb::token_introspection_client::TokenIntrospectionClient::new(plain_tls.clone())
        .introspect(request())
        .await;
    assert_code(refused, Code::Unauthenticated);
    // Envoy's `Check` answers the same question, so it is guarded the same way.
    let refused = AuthorizationClient::new(plain_tls.clone())
        .check(CheckRequest::default())
        .await;
    assert_code(refused, Code::Unauthenticated);
    // So is leak reporting: possession of a token is its authority, but on a network restricted
    // to certified callers it is no way around the restriction.
    let refused = pb::leak_reporting_client::LeakReportingClient::new(plain_tls)
        .report_leaked_tokens(pb::ReportLeakedTokensRequest {
            tokens: vec![secret.clone()],
            source: String::new(),
        })
        .await;
    assert_code(refused, Code::Unauthenticated);

    let mtls = channel(&app, &pki, Some(&pki.client)).await.unwrap();
    let answer = pb::token_introspection_client::TokenIntrospectionClient::new(mtls.clone())
        .introspect(request())
        .await
        .unwrap()
        .into_inner();
    assert!(answer.active);
    let unknown = pb::leak_reporting_client::LeakReportingClient::new(mtls.clone())
        .report_leaked_tokens(pb::ReportLeakedTokensRequest {
            tokens: vec!["not-a-token".into()],
            source: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unknown.results[0].outcome(), pb::LeakOutcome::Malformed);
    // With the certificate, a request without a token is Envoy's 401, not a gRPC error.
    let answer = AuthorizationClient::new(mtls)
        .check(CheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.status.map(|s| s.code),
        Some(Code::Unauthenticated as i32)
    );

    // A certificate from another CA fails the handshake.
    let rogue = match channel(&app, &pki, Some(&pki.rogue_client)).await {
        Err(_) => true,
        Ok(channel) => pb::token_introspection_client::TokenIntrospectionClient::new(channel)
            .introspect(request())
            .await
            .is_err(),
    };
    assert!(
        rogue,
        "a client certificate from an unknown CA was accepted"
    );

    // Plaintext gRPC to a TLS port gets nowhere: the connection or the call fails.
    let plaintext = Channel::from_shared(format!("http://127.0.0.1:{}", app.addr.port()))
        .unwrap()
        .connect()
        .await;
    let refused = match plaintext {
        Err(_) => true,
        Ok(channel) => pb::token_introspection_client::TokenIntrospectionClient::new(channel)
            .introspect(request())
            .await
            .is_err(),
    };
    assert!(refused, "plaintext reached a TLS server");
}

/// Starts the server with TLS; the harness's readiness probe speaks plaintext, so probe here.
async fn start_tls(app: &mut TestApp, pki: &Pki) {
    app.start_without_probe().await;
    Wait::new("the TLS server accepts connections")
        .within(std::time::Duration::from_secs(10))
        .until(async || channel(app, pki, Some(&pki.client)).await)
        .await;
}
