//! `POST /oauth2/introspect` (RFC 7662) on the HTTP listener, called over TCP as a resource
//! server would: every answer shape, client authentication, bad input, the clients file's
//! reload, and no secret in the logs.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use service_accounts_api::introspection_clients::new_client;
use service_accounts_api::pb;

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(every_answer_shape_and_client_authentication);

const CONTENT_TYPE: &str = "application/x-www-form-urlencoded";
const ISSUER: &str = "https://service-accounts.example";

struct Client {
    id: &'static str,
    secret: String,
    line: String,
}

fn client(id: &'static str) -> Client {
    let (secret, line) = new_client(id).unwrap();
    Client { id, secret, line }
}

/// A started server with the HTTP listener, `clients` in its clients file, and an issuer.
async fn start(backend: Backend, clients: &[&Client]) -> Option<(TestApp, PathBuf)> {
    let mut app = unstarted(Setup::new(backend)).await?;
    app.enable_http();
    let file = app.data_dir.path().join("introspection-clients");
    let lines: Vec<&str> = clients.iter().map(|c| c.line.as_str()).collect();
    std::fs::write(&file, format!("# resource servers\n{}\n", lines.join("\n"))).unwrap();
    app.options.introspection_clients = Some(file.clone());
    app.options.issuer = Some(ISSUER.into());
    app.start().await;
    Some((app, file))
}

fn form(pairs: &[(&str, &str)]) -> String {
    let mut serializer = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        serializer.append_pair(name, value);
    }
    serializer.finish()
}

fn basic(client: &Client) -> String {
    use base64::Engine;
    let raw = format!("{}:{}", client.id, client.secret);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

async fn post(app: &TestApp, headers: &[(&str, &str)], body: impl Into<reqwest::Body>) -> Answer {
    let mut request = http_client()
        .post(app.http_url("/oauth2/introspect"))
        .header("content-type", CONTENT_TYPE);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let answer = Answer::of(request.body(body).send().await.expect("HTTP request")).await;
    assert_eq!(
        answer.header("cache-control"),
        Some("no-store"),
        "{answer:?}"
    );
    answer
}

fn body(answer: &Answer) -> Value {
    serde_json::from_str(&answer.body).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
}

#[track_caller]
fn assert_error(answer: &Answer, status: u16, error: &str) {
    assert_eq!(answer.status, status, "{answer:?}");
    assert_eq!(body(answer)["error"], error, "{answer:?}");
}

async fn every_answer_shape_and_client_authentication(backend: Backend) {
    let gateway = client("mcp-gateway");
    let Some((app, _)) = start(backend, &[&gateway]).await else {
        return;
    };
    let auth = basic(&gateway);
    let authed = [("authorization", auth.as_str())];
    let jwt = app.admin_jwt("acme");
    let account = create_account(&app, &jwt, "CI Pipeline", Some(&["checkout-ios"])).await;
    let id = account.service_account_id.clone();
    let (token, secret) = create_token(&app, &jwt, &id, &["mcp:tools:call", "mcp:read"]).await;
    let all_apps = create_account(&app, &jwt, "Everything", None).await;
    let (_, all_apps_secret) = create_token(
        &app,
        &jwt,
        &all_apps.service_account_id,
        &["mcp:tools:call"],
    )
    .await;

    // Active, no checks asked: the identity, and no decision.
    let active = post(&app, &authed, form(&[("token", &secret)])).await;
    assert_eq!(active.status, 200, "{active:?}");
    assert_eq!(active.header("content-type"), Some("application/json"));
    let created = token.create_time.as_ref().unwrap().seconds;
    assert_eq!(
        body(&active),
        json!({
            "active": true,
            "scope": "mcp:read mcp:tools:call",
            "client_id": id,
            "sub": id,
            "username": "CI Pipeline",
            "token_type": "Bearer",
            "jti": token.token_id,
            "iat": created,
            "iss": ISSUER,
            "org_id": "acme",
            "app_access": {"app_ids": ["checkout-ios"]},
        })
    );
    // With checks: the decision, with every reason in Introspect's order.
    let checked = post(
        &app,
        &authed,
        form(&[
            ("token", &secret),
            ("token_type_hint", "access_token"),
            ("org_id", "globex"),
            ("app_id", "checkout-ios"),
            ("required_scopes", "mcp:read mcp:write"),
        ]),
    )
    .await;
    let checked = body(&checked);
    assert_eq!(checked["allowed"], false);
    assert_eq!(
        checked["denial_reasons"],
        json!([
            "DENIAL_REASON_ORG_MISMATCH",
            "DENIAL_REASON_APP_NOT_GRANTED",
            "DENIAL_REASON_SCOPE_MISSING"
        ])
    );
    let allowed = post(
        &app,
        &authed,
        form(&[
            ("token", &secret),
            ("org_id", "acme"),
            ("app_id", "checkout-ios"),
        ]),
    )
    .await;
    assert_eq!(body(&allowed)["allowed"], true);
    assert_eq!(body(&allowed)["denial_reasons"], json!([]));
    // Credentials in the form instead of Basic; an all-apps account.
    let in_form = post(
        &app,
        &[],
        form(&[
            ("token", &all_apps_secret),
            ("client_id", gateway.id),
            ("client_secret", &gateway.secret),
        ]),
    )
    .await;
    assert_eq!(body(&in_form)["app_access"], json!({"all_apps": true}));

    // A token restricted to networks: active for a request from inside them only, and without a
    // client_ip, inactive to a caller that reads `active` alone.
    let restricted = app
        .admin()
        .await
        .create_token(crate::support::authed(
            pb::CreateTokenRequest {
                validate_only: false,
                service_account_id: id.clone(),
                display_name: "office only".into(),
                scopes: vec!["mcp:tools:call".into()],
                allowed_cidrs: vec!["10.0.0.0/8".into()],
                expire_time: None,
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner()
        .secret;
    let bare = post(&app, &authed, form(&[("token", &restricted)])).await;
    assert_eq!(bare.body, r#"{"active":false}"#);
    let inside = post(
        &app,
        &authed,
        form(&[("token", &restricted), ("client_ip", "10.1.2.3")]),
    )
    .await;
    assert_eq!(
        (
            body(&inside)["active"].clone(),
            body(&inside)["allowed"].clone()
        ),
        (json!(true), json!(true))
    );
    let outside = post(
        &app,
        &authed,
        form(&[("token", &restricted), ("client_ip", "192.0.2.1")]),
    )
    .await;
    assert_eq!(body(&outside)["allowed"], false);
    assert_eq!(
        body(&outside)["denial_reasons"],
        json!(["DENIAL_REASON_CLIENT_IP_NOT_ALLOWED"])
    );

    // Inactive, whatever the reason: exactly {"active":false}.
    revoke(&app, &jwt, &id, &token.token_id).await;
    for inactive in [
        secret.as_str(),
        "emb_sa_notatoken",
        "emb_sa_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "not even close",
    ] {
        let answer = post(&app, &authed, form(&[("token", inactive)])).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (200, r#"{"active":false}"#)
        );
    }

    // The caller is not an introspection client: 401 invalid_client with a Basic challenge.
    let wrong = Client {
        secret: format!("{}x", gateway.secret),
        ..client("mcp-gateway")
    };
    let stranger = client("stranger");
    for headers in [
        vec![],
        vec![("authorization".to_owned(), basic(&wrong))],
        vec![("authorization".to_owned(), basic(&stranger))],
        vec![("authorization".to_owned(), "Basic !!!".to_owned())],
    ] {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let answer = post(&app, &headers, form(&[("token", &all_apps_secret)])).await;
        assert_error(&answer, 401, "invalid_client");
        assert_eq!(answer.header("www-authenticate"), Some("Basic"));
    }

    // Bad requests: 400 invalid_request, and nothing decided.
    let long_org = "o".repeat(300);
    let too_many_ways = form(&[
        ("token", &all_apps_secret),
        ("client_id", gateway.id),
        ("client_secret", &gateway.secret),
    ]);
    for (headers, body_text, says) in [
        (&authed[..], form(&[]), "token"),
        (
            &authed[..],
            form(&[("token", "a"), ("token", "b")]),
            "more than once",
        ),
        (&authed[..], "token=%FF%FE".to_owned(), "UTF-8"),
        (
            &authed[..],
            form(&[("token", &secret), ("app_id", "checkout-ios")]),
            "org_id",
        ),
        (
            &authed[..],
            form(&[("token", &secret), ("org_id", &long_org)]),
            "org_id",
        ),
        (
            &authed[..],
            form(&[("token", &secret), ("required_scopes", "mcp:admin")]),
            "scope",
        ),
        (
            &authed[..],
            form(&[("token", &secret), ("client_ip", "nope")]),
            "client_ip",
        ),
        (&authed[..], too_many_ways, "both"),
    ] {
        let answer = post(&app, headers, body_text.clone()).await;
        assert_error(&answer, 400, "invalid_request");
        let description = body(&answer)["error_description"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(description.contains(says), "{body_text}: {description}");
        assert!(!description.contains(&long_org), "{description}");
    }
    let json_body = http_client()
        .post(app.http_url("/oauth2/introspect"))
        .header("authorization", &auth)
        .header("content-type", "application/json")
        .body(format!(r#"{{"token":"{all_apps_secret}"}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(json_body.status().as_u16(), 400);
    // Over 16 KiB: 413, declared or not.
    let huge = format!("token={}", "a".repeat(17 * 1024));
    assert_error(
        &post(&app, &authed, huge.clone()).await,
        413,
        "invalid_request",
    );
    // A chunked body declares no length: cut off at the limit all the same.
    let mut stream = tokio::net::TcpStream::connect(app.http_addr())
        .await
        .unwrap();
    let head = format!(
        "POST /oauth2/introspect HTTP/1.1\r\nhost: sa\r\nauthorization: {auth}\r\n\
         content-type: {CONTENT_TYPE}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    let mut request = head.into_bytes();
    for chunk in huge.as_bytes().chunks(1024) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The server may answer and close before it has read everything.
    let _ = stream.write_all(&request).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    // Other methods: 405.
    let get = send(
        &http_client(),
        Method::GET,
        &app.http_url("/oauth2/introspect"),
        &[],
    )
    .await;
    assert_eq!(get.status, 405, "{get:?}");
    assert_eq!(get.header("allow"), Some("POST"));
    assert_eq!(get.header("cache-control"), Some("no-store"));

    // Neither token secrets nor client secrets reach the logs.
    let logs = captured_logs();
    for secret in [&secret, &all_apps_secret, &gateway.secret] {
        assert!(!logs.contains(secret.as_str()), "a secret was logged");
    }
}

/// Storage that cannot answer is 503 temporarily_unavailable: never `active: false`, which a
/// resource server would take as "this token is revoked".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_trouble_is_503_never_inactive() {
    let gateway = client("gw");
    let (mut app, _) = start(Backend::Sqlite, &[&gateway]).await.unwrap();
    let jwt = app.admin_jwt("acme");
    let id = create_account(&app, &jwt, "Bot", None)
        .await
        .service_account_id;
    let (_, secret) = create_token(&app, &jwt, &id, &["mcp:tools:call"]).await;
    app.stop().await.unwrap();
    break_tokens_table(&app).await;
    app.start().await;
    let auth = basic(&gateway);
    let answer = post(
        &app,
        &[("authorization", &auth)],
        form(&[("token", &secret)]),
    )
    .await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.body, r#"{"error":"temporarily_unavailable"}"#);
}

/// The clients file is read again when it changes; a broken version keeps the clients in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_file_is_reloaded_and_a_broken_one_keeps_the_last_good() {
    let first = client("first");
    let second = client("second");
    let (app, file) = start(Backend::Sqlite, &[&first]).await.unwrap();
    let jwt = app.admin_jwt("acme");
    let id = create_account(&app, &jwt, "Bot", None)
        .await
        .service_account_id;
    let (_, secret) = create_token(&app, &jwt, &id, &["mcp:tools:call"]).await;
    let status = async |who: &Client| {
        let auth = basic(who);
        post(
            &app,
            &[("authorization", &auth)],
            form(&[("token", &secret)]),
        )
        .await
        .status
    };
    assert_eq!(status(&first).await, 200);
    assert_eq!(status(&second).await, 401);

    std::fs::write(&file, format!("{}\n{}\n", first.line, second.line)).unwrap();
    Wait::new("the second client is accepted once the file changed")
        .within(Duration::from_secs(10))
        .every(Duration::from_millis(100))
        .until(async || (status(&second).await == 200).then_some(()))
        .await;

    std::fs::write(&file, "this is not a clients file\n").unwrap();
    Wait::new("the broken file is noticed")
        .within(Duration::from_secs(10))
        .every(Duration::from_millis(100))
        .until(async || {
            captured_logs()
                .contains("introspection clients not reloaded; keeping the clients in use")
                .then_some(())
        })
        .await;
    assert_eq!(status(&first).await, 200);
    assert_eq!(status(&second).await, 200);
}

/// With a realm and a resource metadata URL configured, forward-auth's challenges name them
/// (RFC 6750 §3, RFC 9728 §5.1), so that an MCP client learns where to get a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenges_name_the_configured_realm_and_resource_metadata() {
    let mut app = unstarted(Setup::new(Backend::Sqlite)).await.unwrap();
    app.enable_http();
    app.options.bearer_realm = Some("acme mcp".into());
    let metadata = "https://mcp.example/.well-known/oauth-protected-resource";
    app.options.resource_metadata_url = Some(metadata.into());
    app.start().await;
    let url = app.http_url("/v1/forward-auth");
    let none = send(&http_client(), Method::GET, &url, &[]).await;
    assert_eq!(none.status, 401);
    assert_eq!(
        none.header("www-authenticate"),
        Some(format!(r#"Bearer realm="acme mcp", resource_metadata="{metadata}""#).as_str())
    );
    let bad = send(
        &http_client(),
        Method::GET,
        &url,
        &[("authorization", "Bearer emb_sa_nope")],
    )
    .await;
    assert_eq!(
        bad.header("www-authenticate"),
        Some(
            format!(
                r#"Bearer realm="acme mcp", error="invalid_token", resource_metadata="{metadata}""#
            )
            .as_str()
        )
    );
}

/// SIGHUP reloads the clients file at once, even a change the file's size and time do not show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_clients_file() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (client("first"), client("second"));
    let file = dir.path().join("clients");
    std::fs::write(&file, format!("{}\n", first.line)).unwrap();
    let modified = std::fs::metadata(&file).unwrap().modified().unwrap();
    let http_port = free_port();
    let mut server = ServerProcess::start(|command| {
        command
            .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
            .arg("--introspection-clients")
            .arg(&file)
            .args(["--shutdown-grace", "2s", "--data-dir"])
            .arg(dir.path());
    });
    server.connect_when_serving().await;
    let url = format!("http://127.0.0.1:{http_port}/oauth2/introspect");
    let status = async |who: &Client| {
        http_client()
            .post(&url)
            .header("content-type", CONTENT_TYPE)
            .header("authorization", basic(who))
            .body("token=emb_sa_unknown")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(status(&first).await, 200);
    assert_eq!(status(&second).await, 401);

    // The second client in place of the first: same length, same modification time, same file.
    assert_eq!(
        first.line.len() - first.id.len(),
        second.line.len() - second.id.len()
    );
    let swapped = format!("{}\n", second.line.replacen(second.id, "first", 1));
    let second_as_first = Client {
        id: "first",
        secret: second.secret.clone(),
        line: String::new(),
    };
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .and_then(|mut f| std::io::Write::write_all(&mut f, swapped.as_bytes()))
        .unwrap();
    std::fs::File::options()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_modified(modified))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(status(&first).await, 200, "reloaded without a signal");

    let pid = server.pid().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    Wait::new("the new secret is accepted after SIGHUP")
        .within(Duration::from_secs(5))
        .every(Duration::from_millis(50))
        .until(async || (status(&second_as_first).await == 200).then_some(()))
        .await;
    assert_eq!(status(&first).await, 401);
    let logs = server.terminate().await.stderr;
    assert!(logs.contains("introspection clients reloaded"), "{logs}");
    assert!(!logs.contains(&first.secret) && !logs.contains(&second.secret));
}
