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
    // The change feed tells who changed what and when: the same callers only.
    let refused = pb::token_introspection_client::TokenIntrospectionClient::new(plain_tls.clone())
        .watch_changes(pb::WatchChangesRequest::default())
        .await;
    assert_code(refused.map(|_| ()), Code::Unauthenticated);
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
    let mut feed = pb::token_introspection_client::TokenIntrospectionClient::new(mtls.clone())
        .watch_changes(pb::WatchChangesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = feed.message().await.unwrap().unwrap();
    assert!(matches!(
        first.event,
        Some(pb::watch_changes_response::Event::Reset(_))
    ));
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

/// docs/operations.md "TLS and mTLS", as written: its OpenSSL commands make the certificates, the
/// server starts with its flags, and its callers are answered as it says. The `curl` commands run
/// as written (pointed at this test's port); the `grpcurl` calls are made with the generated
/// client, with the same files.
mod as_documented {
    use std::path::Path;
    use std::process::Command;
    use std::time::Duration;

    use service_accounts_api::pb;
    use tonic::Code;
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

    use crate::support::*;

    const DOCS: &str = include_str!("../../docs/operations.md");
    const NO_CERTIFICATE: &str =
        "this service requires a client certificate from the configured CA";

    /// The shell block after `<!-- tls-example: NAME -->`.
    fn example(name: &str) -> &'static str {
        let marker = format!("<!-- tls-example: {name} -->\n```sh\n");
        let start = DOCS
            .find(&marker)
            .unwrap_or_else(|| panic!("docs/operations.md has no {name} example"))
            + marker.len();
        let end = start + DOCS[start..].find("```").unwrap();
        &DOCS[start..end]
    }

    /// The block's commands, one per entry, with their line continuations joined.
    fn commands(block: &str) -> Vec<String> {
        block
            .replace("\\\n", " ")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    }

    fn shell(dir: &Path, script: &str, env: &[(&str, &str)]) -> std::process::Output {
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", script])
            .current_dir(dir)
            .envs(env.iter().copied())
            .output()
            .expect("run bash")
    }

    async fn channel(dir: &Path, port: u16, client_cert: bool) -> Result<Channel, String> {
        let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca.pem")))
            .domain_name("service-accounts");
        if client_cert {
            tls = tls.identity(Identity::from_pem(
                read("mcp-server.pem"),
                read("mcp-server.key"),
            ));
        }
        Channel::from_shared(format!("https://127.0.0.1:{port}"))
            .unwrap()
            .tls_config(tls)
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| e.to_string())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_tls_section_works_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();

        let made = shell(dir, example("certificates"), &[]);
        assert!(made.status.success(), "{made:?}");

        // The documented server command, on this test's ports.
        let serve = commands(example("serve"));
        let [serve] = serve.as_slice() else {
            panic!("one serve command: {serve:?}")
        };
        let words: Vec<&str> = serve.split_whitespace().collect();
        assert_eq!(words[0], "service-accounts");
        let http_port = free_port();
        let mut args = Vec::new();
        let mut rest = words[1..].iter();
        while let Some(&word) = rest.next() {
            match word {
                // ServerProcess listens on its own port.
                "--listen" => assert_eq!(rest.next(), Some(&"0.0.0.0:50051")),
                "--http-listen" => {
                    assert_eq!(rest.next(), Some(&"0.0.0.0:8443"));
                    args.extend(["--http-listen".to_owned(), format!("127.0.0.1:{http_port}")]);
                }
                other => args.push(other.to_owned()),
            }
        }
        let server = ServerProcess::start(|command| {
            command
                .args(&args)
                .args(["--shutdown-grace", "2s", "--data-dir"])
                .arg(dir)
                .current_dir(dir);
        });
        let port = server.port;
        let with_cert = Wait::new("the TLS server accepts connections")
            .within(Duration::from_secs(20))
            .until(async || channel(dir, port, true).await)
            .await;
        let without_cert = channel(dir, port, false).await.unwrap();

        // An admin without a client certificate: TLS and the JWT are enough.
        let jwt = admin_token(dir, "acme", "alice");
        let mut admin =
            pb::service_account_admin_client::ServiceAccountAdminClient::new(without_cert.clone());
        let account = create_account_over(without_cert.clone(), &jwt, "MCP").await;
        let token = admin
            .create_token(authed(
                pb::CreateTokenRequest {
                    service_account_id: account.service_account_id,
                    display_name: "MCP".into(),
                    scopes: vec!["mcp:tools:call".into()],
                    ..Default::default()
                },
                &jwt,
            ))
            .await
            .unwrap()
            .into_inner()
            .secret;

        // Introspect: with the calling service's certificate, answered; without, refused.
        let request = || pb::IntrospectRequest {
            token: token.clone(),
            ..Default::default()
        };
        let answer = pb::token_introspection_client::TokenIntrospectionClient::new(with_cert)
            .introspect(request())
            .await
            .unwrap()
            .into_inner();
        assert!(answer.active);
        let refused = pb::token_introspection_client::TokenIntrospectionClient::new(without_cert)
            .introspect(request())
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);
        assert_eq!(refused.message(), NO_CERTIFICATE);
        assert!(DOCS.contains(NO_CERTIFICATE));

        // forward-auth with curl, as written, then without the client certificate.
        let curl = commands(example("callers"))
            .into_iter()
            .find(|c| c.starts_with("curl "))
            .expect("a curl example");
        let curl = curl.replacen(
            "curl ",
            &format!(
                "curl -sS --resolve service-accounts:{http_port}:127.0.0.1 -w '\\n%{{http_code}}' "
            ),
            1,
        );
        let curl = curl.replace(
            "service-accounts:8443",
            &format!("service-accounts:{http_port}"),
        );
        let env = [("TOKEN", token.as_str())];
        let allowed = shell(dir, &curl, &env);
        let allowed_out = String::from_utf8_lossy(&allowed.stdout);
        assert!(allowed.status.success(), "{allowed:?}");
        assert_eq!(allowed_out.lines().last(), Some("200"), "{allowed_out}");
        let anonymous = curl.replace(" --cert mcp-server.pem --key mcp-server.key", "");
        assert_ne!(anonymous, curl, "the curl example presents mcp-server.pem");
        let refused = shell(dir, &anonymous, &env);
        let refused_out = String::from_utf8_lossy(&refused.stdout);
        assert_eq!(refused_out.lines().last(), Some("403"), "{refused:?}");
        assert!(refused_out.contains(NO_CERTIFICATE), "{refused_out}");

        // The grpcurl examples use the files the certificate commands made.
        let callers = example("callers");
        for file in ["ca.pem", "mcp-server.pem", "mcp-server.key"] {
            assert!(callers.contains(file) && dir.join(file).exists(), "{file}");
        }
        let exited = server.terminate().await;
        assert!(!exited.stderr.contains(&token) && !exited.stderr.contains(&jwt));
    }
}
