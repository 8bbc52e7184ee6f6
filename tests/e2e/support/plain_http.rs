//! A plain HTTP client for the HTTP listener and for gateways in front of it.

use std::time::Duration;

/// A client that goes straight to the address it is given (no proxy from the environment),
/// without connection reuse between calls, so that every request is a fresh one.
pub fn http_client() -> reqwest::Client {
    http_client_builder().build().expect("HTTP client")
}

/// The same, to add TLS settings to.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    // The process-wide rustls provider (ring, as the server uses); already set is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
}

/// A response's status, headers (names lower-case) and body, read completely.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Answer {
    pub async fn of(response: reqwest::Response) -> Self {
        Self {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.text().await.expect("response body"),
        }
    }

    /// The one value of header `name`, if sent.
    #[track_caller]
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut values = self.headers.get_all(name).iter();
        let value = values.next()?;
        assert!(values.next().is_none(), "{name} sent more than once");
        Some(value.to_str().expect("a text header"))
    }
}

/// Sends `method path` to `base` (`http://host:port`) with `headers`.
pub async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut request = client.request(method, url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    Answer::of(request.send().await.expect("HTTP request")).await
}

/// 401 as the gateways (and the client crate's layer) answer it, with no identity.
#[track_caller]
pub fn assert_no_token(answer: &Answer) {
    assert_eq!(answer.status, 401, "{answer:?}");
    // RFC 6750 §3.1: no error code when the request carried no bearer token at all.
    assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
    assert_eq!(answer.header("x-embrace-service-account-id"), None);
}

/// 401 for a bearer token that is not active, as the gateways (and the client crate's layer)
/// answer it, with no identity.
#[track_caller]
pub fn assert_unauthenticated(answer: &Answer) {
    assert_eq!(answer.status, 401, "{answer:?}");
    assert_eq!(
        answer.header("www-authenticate"),
        Some(r#"Bearer error="invalid_token""#)
    );
    assert_eq!(answer.header("x-embrace-service-account-id"), None);
}

/// 403 with the denial reason's name, with no identity.
#[track_caller]
pub fn assert_forbidden(answer: &Answer, reason: &str) {
    assert_eq!(answer.status, 403, "{answer:?}");
    assert_eq!(answer.header("x-embrace-denial-reason"), Some(reason));
    assert_eq!(answer.header("x-embrace-service-account-id"), None);
}
