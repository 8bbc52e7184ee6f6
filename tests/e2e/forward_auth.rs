//! `/v1/forward-auth` on the HTTP listener, called directly over TCP as a gateway would: every
//! status it answers, `HEAD`, mTLS, start-up and shutdown, and no secret in the logs.

use std::time::Duration;

use rcgen::Issuer;
use reqwest::Method;
use service_accounts_api::pb;

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(
    forward_auth_answers_every_decision_like_introspect,
    forward_auth_checks_the_client_address_against_the_tokens_networks,
);

const BEARER: &str = "authorization";
const ORG: &str = "x-embrace-org-id";
const APP: &str = "x-embrace-app-id";
const SCOPES: &str = "x-embrace-required-scopes";
const CLIENT_IP: &str = "x-embrace-client-ip";

/// A started server with the HTTP listener on.
async fn start_with_http(backend: Backend) -> Option<TestApp> {
    let mut app = unstarted(Setup::new(backend)).await?;
    app.enable_http();
    app.start().await;
    Some(app)
}

async fn forward_auth(app: &TestApp, method: Method, headers: &[(&str, &str)]) -> Answer {
    send(
        &http_client(),
        method,
        &app.http_url("/v1/forward-auth"),
        headers,
    )
    .await
}

async fn forward_auth_answers_every_decision_like_introspect(backend: Backend) {
    let Some(app) = start_with_http(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let account = create_account(&app, &jwt, "Déploiement CI", Some(&["checkout-ios"])).await;
    let id = &account.service_account_id;
    let (token, secret) = create_token(&app, &jwt, id, &["mcp:tools:call", "mcp:read"]).await;
    let (narrow_token, narrow) = create_token(&app, &jwt, id, &["mcp:tools:call"]).await;
    let bearer = format!("Bearer {secret}");
    let request = |scopes: &'static str| {
        [
            (BEARER, bearer.clone()),
            (ORG, "org-a".to_owned()),
            (APP, "checkout-ios".to_owned()),
            (SCOPES, scopes.to_owned()),
        ]
    };
    let call = async |method: Method, headers: &[(&'static str, String)]| {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        forward_auth(&app, method, &headers).await
    };

    // Allowed: 200 with the verified identity.
    let allowed = call(Method::GET, &request("mcp:read")).await;
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert_eq!(allowed.header("x-embrace-org-id"), Some("org-a"));
    assert_eq!(
        allowed.header("x-embrace-service-account-id"),
        Some(id.as_str())
    );
    assert_eq!(
        allowed.header("x-embrace-service-account-name"),
        Some("D%C3%A9ploiement CI")
    );
    assert_eq!(
        allowed.header("x-embrace-token-id"),
        Some(token.token_id.as_str())
    );
    let mut scopes: Vec<&str> = allowed
        .header("x-embrace-scopes")
        .unwrap()
        .split(' ')
        .collect();
    scopes.sort();
    assert_eq!(scopes, ["mcp:read", "mcp:tools:call"]);
    assert_eq!(allowed.header("x-embrace-denial-reason"), None);
    assert_eq!(allowed.header("cache-control"), Some("no-store"));
    // Scopes may be space or comma separated; org and app are optional checks.
    let both = call(Method::GET, &request("mcp:read,mcp:tools:call")).await;
    assert_eq!(both.status, 200, "{both:?}");
    let bare = call(Method::GET, &[(BEARER, bearer.clone())]).await;
    assert_eq!(bare.status, 200, "{bare:?}");

    // Any method; HEAD like GET without the body; a POST's body is ignored.
    let head = call(Method::HEAD, &request("mcp:read")).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.body, "");
    assert_eq!(
        head.header("x-embrace-token-id"),
        Some(token.token_id.as_str())
    );
    let posted = http_client()
        .post(app.http_url("/v1/forward-auth"))
        .header(BEARER, &bearer)
        .header(ORG, "org-b")
        .body(r#"{"org_id": "org-a"}"#)
        .send()
        .await
        .expect("POST");
    assert_forbidden(&Answer::of(posted).await, "DENIAL_REASON_ORG_MISMATCH");
    let put = call(Method::PUT, &request("mcp:read")).await;
    assert_eq!(put.status, 200);
    // Below the path, as Envoy's HTTP ext_authz calls it (its path_prefix + the request's path).
    let below = send(
        &http_client(),
        Method::GET,
        &app.http_url("/v1/forward-auth/api/orders?page=2"),
        &[(BEARER, &bearer), (ORG, "org-a")],
    )
    .await;
    assert_eq!(below.status, 200, "{below:?}");

    // No token, not a bearer token, a made-up token: 401 with the challenge.
    assert_no_token(&call(Method::GET, &[(ORG, "org-a".into())]).await);
    assert_no_token(&call(Method::GET, &[(BEARER, format!("Basic {secret}"))]).await);
    assert_unauthenticated(
        &call(
            Method::GET,
            &[(BEARER, "Bearer emb_sa_notarealtokennotarealtoken".into())],
        )
        .await,
    );
    let head = call(Method::HEAD, &[(ORG, "org-a".into())]).await;
    assert_no_token(&head);
    assert_eq!(head.body, "");

    // Active but not allowed: 403 with the reason, in Introspect's order.
    // Only a missing scope is RFC 6750's insufficient_scope, naming the scopes.
    let mut other_org = request("mcp:read");
    other_org[1].1 = "org-b".into();
    let answer = call(Method::GET, &other_org).await;
    assert_forbidden(&answer, "DENIAL_REASON_ORG_MISMATCH");
    assert_eq!(answer.header("www-authenticate"), None);
    let mut other_app = request("mcp:read");
    other_app[2].1 = "checkout-android".into();
    let answer = call(Method::GET, &other_app).await;
    assert_forbidden(&answer, "DENIAL_REASON_APP_NOT_GRANTED");
    assert_eq!(answer.header("www-authenticate"), None);
    let mut narrow_request = request("mcp:read");
    narrow_request[0].1 = format!("Bearer {narrow}");
    let answer = call(Method::GET, &narrow_request).await;
    assert_forbidden(&answer, "DENIAL_REASON_SCOPE_MISSING");
    assert_eq!(
        answer.header("www-authenticate"),
        Some(r#"Bearer error="insufficient_scope", scope="mcp:read""#)
    );
    let head = call(Method::HEAD, &narrow_request).await;
    assert_forbidden(&head, "DENIAL_REASON_SCOPE_MISSING");
    assert_eq!(head.body, "");

    // The gateway's own headers malformed: 400 naming the header, never a decision.
    for (headers, named) in [
        (vec![(APP, "checkout-ios")], "X-Embrace-Org-Id"),
        (
            vec![(ORG, "org-a"), (SCOPES, "mcp:read admin")],
            "X-Embrace-Required-Scopes",
        ),
        (
            vec![(ORG, "org-a"), (CLIENT_IP, "not-an-address")],
            "X-Embrace-Client-Ip",
        ),
        (vec![(ORG, "org-a"), (ORG, "org-b")], "X-Embrace-Org-Id"),
    ] {
        let mut headers: Vec<(&str, &str)> = headers;
        headers.push((BEARER, &bearer));
        let refused = forward_auth(&app, Method::GET, &headers).await;
        assert_eq!(refused.status, 400, "{headers:?}: {refused:?}");
        assert!(refused.body.contains(named), "{refused:?}");
        assert_eq!(refused.header("x-embrace-service-account-id"), None);
    }

    // Revoked: 401 at once.
    revoke(&app, &jwt, id, &narrow_token.token_id).await;
    assert_unauthenticated(&call(Method::GET, &narrow_request).await);
    revoke(&app, &jwt, id, &token.token_id).await;
    assert_unauthenticated(&call(Method::GET, &request("mcp:read")).await);

    // Unknown paths are 404, whatever the token.
    for path in ["/", "/v1/forward-authx", "/v1/introspect"] {
        let answer = send(
            &http_client(),
            Method::GET,
            &app.http_url(path),
            &[(BEARER, &bearer)],
        )
        .await;
        assert_eq!(answer.status, 404, "{path}");
    }

    // Neither the secrets nor the Authorization header reach the logs.
    let logs = captured_logs();
    for secret in [&secret, &narrow] {
        assert!(!logs.contains(secret.as_str()), "a token secret was logged");
    }
    assert!(!logs.to_lowercase().contains("bearer emb_sa_"));
}

async fn forward_auth_checks_the_client_address_against_the_tokens_networks(backend: Backend) {
    let Some(app) = start_with_http(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let id = create_account(&app, &jwt, "Runner", None)
        .await
        .service_account_id;
    let secret = app
        .admin()
        .await
        .create_token(authed(
            pb::CreateTokenRequest {
                validate_only: false,
                service_account_id: id.clone(),
                display_name: "office only".into(),
                scopes: vec!["mcp:tools:call".into()],
                allowed_cidrs: vec!["10.0.0.0/8".into(), "2001:db8::/32".into()],
                expire_time: None,
            },
            &jwt,
        ))
        .await
        .expect("create token")
        .into_inner()
        .secret;
    let bearer = format!("Bearer {secret}");
    for (client_ip, allowed) in [
        (Some("10.1.2.3"), true),
        (Some("2001:db8::7"), true),
        (Some("192.168.1.1"), false),
        (None, false),
    ] {
        let mut headers = vec![(BEARER, bearer.as_str()), (ORG, "org-a")];
        if let Some(ip) = client_ip {
            headers.push((CLIENT_IP, ip));
        }
        let answer = forward_auth(&app, Method::GET, &headers).await;
        if allowed {
            assert_eq!(answer.status, 200, "{client_ip:?}: {answer:?}");
        } else {
            assert_forbidden(&answer, "DENIAL_REASON_CLIENT_IP_NOT_ALLOWED");
        }
    }
}

/// Storage failing is 503, never an allow: the same database trick as Introspect's test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_fails_closed_when_storage_fails() {
    let mut app = start_with_http(Backend::Sqlite).await.unwrap();
    let jwt = app.admin_jwt("org-a");
    let id = create_account(&app, &jwt, "Bot", None)
        .await
        .service_account_id;
    let (_, secret) = create_token(&app, &jwt, &id, &["mcp:tools:call"]).await;
    let bearer = format!("Bearer {secret}");
    let allowed = forward_auth(&app, Method::GET, &[(BEARER, &bearer)]).await;
    assert_eq!(allowed.status, 200);
    app.stop().await.unwrap();
    // Stopped with the rest: nothing listens on the HTTP port any more.
    assert!(
        tokio::net::TcpStream::connect(app.http_addr())
            .await
            .is_err(),
        "the HTTP listener outlived the server"
    );

    break_tokens_table(&app).await;
    app.start().await;
    for method in [Method::GET, Method::HEAD] {
        let answer = forward_auth(&app, method.clone(), &[(BEARER, &bearer)]).await;
        assert_eq!(answer.status, 503, "{method}: {answer:?}");
        assert_eq!(answer.header("x-embrace-service-account-id"), None);
    }
    // A malformed token never touches storage: still a plain 401.
    assert_unauthenticated(&forward_auth(&app, Method::GET, &[(BEARER, "Bearer nope")]).await);
}

/// Until storage is ready (health NOT_SERVING), forward-auth answers 503; then it decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_is_unavailable_until_storage_is_ready() {
    let Some(admin_url) = postgres_admin_url() else {
        return;
    };
    let direct = start_with_http(Backend::Postgres).await.unwrap();
    let jwt = direct.admin_jwt("org-a");
    let id = create_account(&direct, &jwt, "Bot", None)
        .await
        .service_account_id;
    let (_, secret) = create_token(&direct, &jwt, &id, &["mcp:tools:call"]).await;
    let bearer = format!("Bearer {secret}");

    // Every round trip to storage takes 300 ms, so start-up (ping, migration check) is slow.
    let (_proxy, url) =
        Proxy::in_front_of(&admin_url, &direct.database.url, Duration::from_millis(300)).await;
    let mut replica = direct.unstarted_replica_on(&url);
    assert_ne!(replica.http_addr(), direct.http_addr());
    replica.start_without_probe().await;
    let starting = Wait::new("the replica's HTTP listener answers")
        .within(Duration::from_secs(10))
        .until(async || {
            let answer = http_client()
                .get(replica.http_url("/v1/forward-auth"))
                .header(BEARER, &bearer)
                .send()
                .await;
            match answer {
                Ok(answer) => Ok(Answer::of(answer).await),
                Err(error) => Err(error.to_string()),
            }
        })
        .await;
    assert_eq!(starting.status, 503, "{starting:?}");
    Wait::new("forward-auth allows once storage is ready")
        .within(Duration::from_secs(30))
        .until(async || {
            let answer = forward_auth(&replica, Method::GET, &[(BEARER, &bearer)]).await;
            if answer.status == 200 {
                Ok(())
            } else {
                Err(answer.status)
            }
        })
        .await;
}

/// With the server's TLS flags the HTTP listener serves HTTPS with the same certificate, and
/// with a client CA forward-auth needs a client certificate, as Introspect does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_serves_https_with_the_grpc_certificate_and_mtls() {
    let (ca_params, ca_key, ca_pem) = authority("test CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let (server_cert, server_key) = leaf(&["localhost"], &issuer);
    let (client_cert, client_key) = leaf(&["gateway.internal"], &issuer);

    let mut app = start_with_http(Backend::Sqlite).await.unwrap();
    let jwt = app.admin_jwt("org-a");
    let id = create_account(&app, &jwt, "Bot", None)
        .await
        .service_account_id;
    let (_, secret) = create_token(&app, &jwt, &id, &["mcp:tools:call"]).await;
    let bearer = format!("Bearer {secret}");
    app.stop().await.unwrap();

    let dir = app.data_dir.path().to_owned();
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    app.options.tls_cert = Some(write("server.pem", &server_cert));
    app.options.tls_key = Some(write("server.key", &server_key));
    app.options.tls_client_ca = Some(write("client-ca.pem", &ca_pem));
    app.start_without_probe().await;

    let url = format!(
        "https://localhost:{}/v1/forward-auth",
        app.http_addr().port()
    );
    let trusting = || {
        http_client_builder()
            .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
    };
    let with_cert = trusting()
        .identity(
            reqwest::Identity::from_pem(format!("{client_cert}{client_key}").as_bytes()).unwrap(),
        )
        .build()
        .unwrap();
    let allowed = Wait::new("forward-auth over HTTPS allows")
        .within(Duration::from_secs(20))
        .until(async || {
            let answer = with_cert.get(&url).header(BEARER, &bearer).send().await;
            match answer {
                Ok(answer) if answer.status() == 200 => Ok(Answer::of(answer).await),
                Ok(answer) => Err(answer.status().to_string()),
                Err(error) => Err(error.to_string()),
            }
        })
        .await;
    assert_eq!(
        allowed.header("x-embrace-service-account-id"),
        Some(id.as_str())
    );

    // No client certificate: refused before any decision.
    let without_cert = trusting().build().unwrap();
    let refused = send(&without_cert, Method::GET, &url, &[(BEARER, &bearer)]).await;
    assert_eq!(refused.status, 403, "{refused:?}");
    assert_eq!(refused.header("x-embrace-denial-reason"), None);
    assert_eq!(refused.header("x-embrace-service-account-id"), None);

    // Plaintext HTTP to the HTTPS port gets no decision.
    let plaintext = http_client()
        .get(app.http_url("/v1/forward-auth"))
        .header(BEARER, &bearer)
        .send()
        .await;
    assert!(
        plaintext.is_err() || plaintext.unwrap().status() != 200,
        "plaintext reached the HTTPS listener"
    );
}

/// A port that is taken is a start-up mistake, reported as one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_http_port_stops_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut app = unstarted(Setup::new(Backend::Sqlite)).await.unwrap();
    app.options.http_listen = Some(taken.local_addr().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = service_accounts_api::server::serve(app.options.clone(), listener, async {})
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.starts_with("cannot listen on 127.0.0.1:") && message.contains("for HTTP"),
        "{message}"
    );
}
