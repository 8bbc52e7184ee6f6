//! Admin keys from the identity side's JWKS endpoint (a local HTTPS server here): rotated there,
//! picked up here with no restart; a failing endpoint leaves the keys in use.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::Issuer;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use service_accounts_api::pb;
use tonic::Code;

use crate::support::*;

const ISSUER: &str = "https://identity.test";
const AUDIENCE: &str = "service-accounts";

/// What the endpoint answers: a document, or 503.
type Document = Arc<Mutex<Option<String>>>;

struct JwksServer {
    url: String,
    ca_pem: String,
    document: Document,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JwksServer {
    async fn start() -> Self {
        let (ca_params, ca_key, ca_pem) = authority("identity CA");
        let (cert, key) = leaf(&["localhost"], &Issuer::new(ca_params, ca_key));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let document: Document = Arc::default();
        let fetches = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (document.clone(), fetches.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, served, counted) =
                    (acceptor.clone(), served.clone(), counted.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let answer = service_fn(move |_request| {
                        counted.fetch_add(1, Ordering::SeqCst);
                        let body = served.lock().unwrap().clone();
                        async move {
                            let response = match body {
                                Some(body) => hyper::Response::new(Full::new(Bytes::from(body))),
                                None => hyper::Response::builder()
                                    .status(503)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            };
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), answer)
                        .await;
                });
            }
        });
        Self {
            url: format!("https://localhost:{port}/.well-known/jwks.json"),
            ca_pem,
            document,
            fetches,
            task,
        }
    }

    fn publish(&self, document: Option<String>) {
        *self.document.lock().unwrap() = document;
    }

    fn publish_keys(&self, signers: &[&Signer]) {
        let keys: Vec<_> = signers.iter().map(|s| s.jwk()).collect();
        self.publish(Some(json!({ "keys": keys }).to_string()));
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

fn admin_jwt(signer: &Signer) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    signer.sign(&json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "org_id": "org-a",
        "roles": ["org_admin"],
        "iat": now,
        "exp": now + 300,
    }))
}

/// A server that trusts only `identity`'s JWKS URL, refreshed every `refresh_interval`.
async fn app_trusting(identity: &JwksServer, refresh_interval: Duration) -> TestApp {
    let mut app = unstarted(Setup::new(Backend::Sqlite)).await.unwrap();
    let ca_path = data_path(&app).join("identity-ca.pem");
    std::fs::write(&ca_path, &identity.ca_pem).unwrap();
    app.options.admin_jwks = Some(identity.url.clone());
    app.options.admin_jwt_issuer = Some(ISSUER.into());
    app.options.admin_jwt_audience = Some(AUDIENCE.into());
    app.options.admin_jwks_ca = Some(ca_path);
    app.options.admin_trust_dev_key = false;
    app.options.admin_jwks_refresh_interval = refresh_interval;
    app.start().await;
    app
}

async fn list_as(app: &TestApp, signer: &Signer) -> Result<(), tonic::Status> {
    app.admin()
        .await
        .list_service_accounts(authed(
            pb::ListServiceAccountsRequest::default(),
            &admin_jwt(signer),
        ))
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_keys_rotate_at_the_identity_side_without_a_restart() {
    let (old, new) = (Signer::new(11, "2026-old"), Signer::new(12, "2026-new"));
    let identity = JwksServer::start().await;
    identity.publish_keys(&[&old]);

    let app = app_trusting(&identity, Duration::from_secs(1)).await;

    list_as(&app, &old)
        .await
        .expect("the published key is trusted");
    let refused = list_as(&app, &new).await.expect_err("not published yet");
    assert_eq!(refused.code(), Code::Unauthenticated);

    // The identity side rotates: the new key replaces the old one.
    identity.publish_keys(&[&new]);
    wait_until("the new key is trusted", async || list_as(&app, &new).await).await;
    let refused = list_as(&app, &old)
        .await
        .expect_err("the old key was removed");
    assert_eq!(refused.code(), Code::Unauthenticated);

    // The endpoint fails, then serves something that is not a JWKS: the keys in use stay.
    for broken in [None, Some("<html>maintenance</html>".to_owned())] {
        identity.publish(broken);
        let seen = identity.fetches();
        wait_until("another fetch", async || identity.fetches() > seen + 1).await;
        list_as(&app, &new)
            .await
            .expect("the last good key is kept");
    }
    assert!(
        captured_logs().contains("admin JWKS refresh failed; keeping the keys in use"),
        "the failed refresh is logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_key_id_triggers_a_fetch_before_the_periodic_one() {
    let (old, new) = (Signer::new(21, "first"), Signer::new(22, "second"));
    let identity = JwksServer::start().await;
    identity.publish_keys(&[&old]);
    // Periodic refreshes are an hour apart; on-demand ones at least 30 s apart.
    let app = app_trusting(&identity, Duration::from_secs(3600)).await;
    assert_eq!(identity.fetches(), 1, "fetched once at start");

    identity.publish_keys(&[&old, &new]);
    list_as(&app, &new)
        .await
        .expect("an unknown key id is looked up before the call is answered");
    assert_eq!(identity.fetches(), 2);
    for _ in 0..5 {
        let refused = list_as(&app, &Signer::new(23, "made-up")).await;
        assert_eq!(refused.expect_err("unknown").code(), Code::Unauthenticated);
    }
    assert_eq!(
        identity.fetches(),
        2,
        "made-up key ids cannot make it fetch on every call"
    );
}
