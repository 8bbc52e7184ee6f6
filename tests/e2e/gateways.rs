//! The real nginx and Caddy, run with the configurations docs/gateways.md shows (read from that
//! file, with its example addresses replaced by local ones), in front of a test upstream that
//! records what reaches it, and asking the real server's `/v1/forward-auth`.
//!
//! Without the binaries these tests say they are skipped; under `CI` they fail instead.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use reqwest::Method;
use reqwest::header::HeaderMap;
use service_accounts_api::pb;
use tempfile::TempDir;

use crate::support::*;

const DOCS: &str = include_str!("../../docs/gateways.md");

/// The documented addresses the tests replace: the control plane and the protected service.
const DOC_SERVICE_ACCOUNTS: &str = "service-accounts:8080";
const DOC_APP: &str = "app:3000";

/// Identity headers only the gateway may set.
const IDENTITY: [&str; 5] = [
    "x-embrace-org-id",
    "x-embrace-service-account-id",
    "x-embrace-service-account-name",
    "x-embrace-token-id",
    "x-embrace-scopes",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Nginx,
    Caddy,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_as_documented() {
    gateway_in_front(Kind::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_forward_auth_as_documented() {
    gateway_in_front(Kind::Caddy).await;
}

async fn gateway_in_front(kind: Kind) {
    let Some(binary) = gateway_binary(kind) else {
        return;
    };
    let upstream = Upstream::start().await;
    let mut app = unstarted(Setup::new(Backend::Sqlite)).await.unwrap();
    app.enable_http();
    app.start().await;
    let gateway = Gateway::start(kind, &binary, app.http_addr(), upstream.addr).await;

    // The documented site: org acme, app checkout-ios, scope mcp:read.
    let jwt = app.admin_jwt("acme");
    let account = create_account(&app, &jwt, "CI Pipeline", Some(&["checkout-ios"])).await;
    let id = &account.service_account_id;
    let (token, secret) = create_token(&app, &jwt, id, &["mcp:tools:call", "mcp:read"]).await;
    let (_, narrow) = create_token(&app, &jwt, id, &["mcp:tools:call"]).await;
    let android = create_account(&app, &jwt, "Android", Some(&["checkout-android"])).await;
    let (_, other_app) = create_token(
        &app,
        &jwt,
        &android.service_account_id,
        &["mcp:tools:call", "mcp:read"],
    )
    .await;
    let from_loopback = restricted_token(&app, &jwt, id, "127.0.0.1/32").await;
    let from_elsewhere = restricted_token(&app, &jwt, id, "10.0.0.0/8").await;
    let bearer = |secret: &str| format!("Bearer {secret}");
    // What a client might send to pass as someone else.
    let forged = [
        ("x-embrace-org-id", "evil-corp"),
        ("x-embrace-service-account-id", "forged-account"),
        ("x-embrace-service-account-name", "Forged"),
        ("x-embrace-token-id", "forged-token"),
        ("x-embrace-scopes", "mcp:write"),
        ("x-embrace-app-id", "checkout-ios"),
        ("x-embrace-required-scopes", ""),
        ("x-embrace-client-ip", "10.1.2.3"),
        ("x-embrace-denial-reason", "none"),
    ];
    let call = async |method: Method, token: Option<&str>, forge: bool| {
        let authorization = token.map(bearer);
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(authorization) = &authorization {
            headers.push(("authorization", authorization));
        }
        if forge {
            headers.extend(forged);
        }
        send(
            &http_client(),
            method,
            &gateway.url("/orders?page=2"),
            &headers,
        )
        .await
    };

    // Allowed: the upstream gets the verified identity, whatever the client claimed.
    for forge in [false, true] {
        let before = upstream.count();
        let answer = call(Method::GET, Some(&secret), forge).await;
        assert_eq!(answer.status, 200, "{}", gateway.explain(&answer));
        assert_eq!(answer.body, "upstream reached");
        assert_eq!(upstream.count(), before + 1);
        let seen = upstream.last();
        let expected = [
            ("x-embrace-org-id", "acme"),
            ("x-embrace-service-account-id", id.as_str()),
            ("x-embrace-service-account-name", "CI Pipeline"),
            ("x-embrace-token-id", token.token_id.as_str()),
        ];
        for (name, value) in expected {
            assert_eq!(only(&seen, name), Some(value), "{name} (forged: {forge})");
        }
        let mut scopes: Vec<&str> = only(&seen, "x-embrace-scopes")
            .unwrap()
            .split(' ')
            .collect();
        scopes.sort();
        assert_eq!(scopes, ["mcp:read", "mcp:tools:call"]);
        // Nothing else under X-Embrace-*, and not the token.
        for name in seen.keys() {
            assert!(
                !name.as_str().starts_with("x-embrace-") || IDENTITY.contains(&name.as_str()),
                "{name} reached the upstream (forged: {forge})"
            );
        }
        assert!(
            seen.get("authorization").is_none(),
            "the token reached the upstream"
        );
    }
    // HEAD is checked like GET.
    let before = upstream.count();
    let head = call(Method::HEAD, Some(&secret), true).await;
    assert_eq!(head.status, 200, "{}", gateway.explain(&head));
    assert_eq!(upstream.count(), before + 1);
    assert_eq!(
        only(&upstream.last(), "x-embrace-service-account-id"),
        Some(id.as_str())
    );
    // The client's address as the gateway saw it (loopback), never the one the client claims.
    let before = upstream.count();
    let answer = call(Method::GET, Some(&from_loopback), true).await;
    assert_eq!(answer.status, 200, "{}", gateway.explain(&answer));
    assert_eq!(upstream.count(), before + 1);

    // Denied: nothing reaches the upstream, forged headers or not.
    let before = upstream.count();
    for forge in [false, true] {
        let answer = call(Method::GET, None, forge).await;
        assert_eq!(answer.status, 401, "{}", gateway.explain(&answer));
        assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
        let answer = call(Method::GET, Some("emb_sa_madeupmadeupmadeup"), forge).await;
        assert_eq!(answer.status, 401, "{}", gateway.explain(&answer));
        assert_eq!(
            answer.header("www-authenticate"),
            Some(r#"Bearer error="invalid_token""#)
        );
        for (token, reason) in [
            (&narrow, "DENIAL_REASON_SCOPE_MISSING"),
            (&other_app, "DENIAL_REASON_APP_NOT_GRANTED"),
            (&from_elsewhere, "DENIAL_REASON_CLIENT_IP_NOT_ALLOWED"),
        ] {
            let answer = call(Method::GET, Some(token), forge).await;
            assert_eq!(answer.status, 403, "{reason}: {}", gateway.explain(&answer));
            assert_eq!(answer.header("x-embrace-denial-reason"), Some(reason));
        }
    }
    revoke(&app, &jwt, id, &token.token_id).await;
    let answer = call(Method::GET, Some(&secret), true).await;
    assert_eq!(answer.status, 401, "{}", gateway.explain(&answer));
    assert_eq!(
        upstream.count(),
        before,
        "a denied request reached the upstream"
    );

    // Storage fails: the gateway denies (nginx answers 500 for the check's 503, Caddy relays it).
    app.stop().await.unwrap();
    break_tokens_table(&app).await;
    app.start().await;
    let denied = match kind {
        Kind::Nginx => 500,
        Kind::Caddy => 503,
    };
    for token in [&from_loopback, &narrow] {
        let answer = call(Method::GET, Some(token), false).await;
        assert_eq!(answer.status, denied, "{}", gateway.explain(&answer));
    }
    assert_eq!(
        upstream.count(),
        before,
        "a request reached the upstream unchecked"
    );
    gateway.stop();
}

/// A token usable only from `cidr`.
async fn restricted_token(app: &TestApp, jwt: &str, account: &str, cidr: &str) -> String {
    app.admin()
        .await
        .create_token(authed(
            pb::CreateTokenRequest {
                validate_only: false,
                service_account_id: account.into(),
                display_name: format!("from {cidr}"),
                scopes: vec!["mcp:tools:call".into(), "mcp:read".into()],
                allowed_cidrs: vec![cidr.into()],
                expire_time: None,
            },
            jwt,
        ))
        .await
        .expect("create token")
        .into_inner()
        .secret
}

#[track_caller]
fn only<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    assert!(values.next().is_none(), "{name} reached the upstream twice");
    Some(value.to_str().unwrap())
}

/// The fenced block that follows `<!-- gateway-config: NAME -->` in docs/gateways.md.
fn documented(name: &str) -> &'static str {
    let marker = format!("<!-- gateway-config: {name} -->\n```");
    let (_, after) = DOCS
        .split_once(&marker)
        .unwrap_or_else(|| panic!("docs/gateways.md has no {name} configuration"));
    let (_, block) = after.split_once('\n').unwrap();
    block.split_once("\n```").expect("a closed code block").0
}

/// `text` with each `from` (which must occur exactly once, so that the docs cannot drift away
/// from what is tested) replaced.
fn replace_once(text: &str, replacements: &[(&str, &str)]) -> String {
    let mut text = text.to_owned();
    for (from, to) in replacements {
        assert_eq!(
            text.matches(from).count(),
            1,
            "the documented configuration should name {from:?} once"
        );
        text = text.replace(from, to);
    }
    text
}

/// The gateway's binary; `None` (skip) when it is not installed, a failure under `CI`.
fn gateway_binary(kind: Kind) -> Option<PathBuf> {
    let name = match kind {
        Kind::Nginx => "nginx",
        Kind::Caddy => "caddy",
    };
    // nginx lives in /usr/sbin, which is not on every user's PATH.
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "CI is set but `{name}` is not installed: the gateway tests must run in CI \
                 (.ci/run installs it: apt-get install nginx caddy)"
            );
        }
        eprintln!("skipping the {name} gateway test: `{name}` is not installed");
    }
    found
}

/// nginx or Caddy as a child process on a free loopback port, with its files in a temp dir.
struct Gateway {
    kind: Kind,
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Gateway {
    async fn start(kind: Kind, binary: &Path, auth: SocketAddr, upstream: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // nginx workers run as an unprivileged user when the test runs as root.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let port = free_port();
        let (auth, upstream) = (auth.to_string(), upstream.to_string());
        let d = dir.path().display();
        let log = std::fs::File::create(dir.path().join("output.log")).unwrap();
        let mut command = Command::new(binary);
        match kind {
            Kind::Nginx => {
                let site = replace_once(
                    documented("nginx"),
                    &[
                        (DOC_SERVICE_ACCOUNTS, &auth),
                        (DOC_APP, &upstream),
                        ("listen 80;", &format!("listen 127.0.0.1:{port};")),
                    ],
                );
                let config = format!(
                    "worker_processes 1;\n\
                     pid {d}/nginx.pid;\n\
                     error_log {d}/error.log info;\n\
                     events {{ worker_connections 64; }}\n\
                     http {{\n\
                     access_log {d}/access.log;\n\
                     client_body_temp_path {d}/client_body;\n\
                     proxy_temp_path {d}/proxy;\n\
                     fastcgi_temp_path {d}/fastcgi;\n\
                     uwsgi_temp_path {d}/uwsgi;\n\
                     scgi_temp_path {d}/scgi;\n\
                     {site}\n\
                     }}\n"
                );
                let file = dir.path().join("nginx.conf");
                std::fs::write(&file, config).unwrap();
                command
                    .arg("-p")
                    .arg(dir.path())
                    .arg("-c")
                    .arg(&file)
                    .arg("-e")
                    .arg(dir.path().join("error.log"))
                    .args(["-g", "daemon off;"]);
            }
            Kind::Caddy => {
                let site = replace_once(
                    documented("caddy"),
                    &[
                        (DOC_SERVICE_ACCOUNTS, &auth),
                        (DOC_APP, &upstream),
                        ("app.example.com", &format!("http://127.0.0.1:{port}")),
                    ],
                );
                let config = format!("{{\n\tadmin off\n\tdefault_bind 127.0.0.1\n}}\n\n{site}\n");
                let file = dir.path().join("Caddyfile");
                std::fs::write(&file, config).unwrap();
                command
                    .args(["run", "--adapter", "caddyfile", "--config"])
                    .arg(&file)
                    .env("HOME", dir.path())
                    .env("XDG_CONFIG_HOME", dir.path())
                    .env("XDG_DATA_HOME", dir.path());
            }
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let mut gateway = Self {
            kind,
            port,
            dir,
            child: Some(child),
        };
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let waiting = format!("{kind:?} listens on {address}");
        Wait::new(waiting)
            .within(Duration::from_secs(20))
            .every(Duration::from_millis(50))
            .until(async || {
                if let Some(status) = gateway.child.as_mut().unwrap().try_wait().unwrap() {
                    panic!("{kind:?} exited ({status}):\n{}", gateway.logs());
                }
                tokio::net::TcpStream::connect(address)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await;
        gateway
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Everything the gateway logged.
    fn logs(&self) -> String {
        ["output.log", "error.log"]
            .iter()
            .filter_map(|name| std::fs::read_to_string(self.dir.path().join(name)).ok())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// An unexpected answer, with the gateway's logs.
    fn explain(&self, answer: &Answer) -> String {
        format!("{:?} answered {answer:?}\n{}", self.kind, self.logs())
    }

    /// SIGTERM (nginx's master stops its workers), then wait.
    fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        for _ in 0..100 {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// The protected service: answers every request and records the headers it arrived with.
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::<Mutex<Vec<HeaderMap>>>::default();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let answer = service_fn(move |request: hyper::Request<_>| {
                        record.lock().unwrap().push(request.headers().clone());
                        async {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from_static(b"upstream reached"),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), answer)
                        .await;
                });
            }
        });
        Self { addr, seen, task }
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn last(&self) -> HeaderMap {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
