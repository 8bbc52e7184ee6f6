//! `POST /v1/secret-scanning/github`: GitHub's secret-scanning partner endpoint (see
//! [`crate::secret_scanning`]). Authenticated by GitHub's signature over the body, not by the
//! client-certificate rule of the gateway routes: GitHub has no certificate of ours.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use service_accounts_domain::leaks::LeakReporter;
use service_accounts_domain::store::{AdminStore, TokenStore};

use super::{BodyError, HttpApi, Response, read_body, text};
use crate::admin_api::sane_request_id;
use crate::secret_scanning::{self, GithubKeys, KEY_ID_HEADER, MAX_BODY_BYTES, SIGNATURE_HEADER};

pub const PATH: &str = "/v1/secret-scanning/github";

pub struct Github<S> {
    pub keys: GithubKeys,
    pub reporter: LeakReporter<S>,
}

pub async fn handle<S: AdminStore + TokenStore>(
    api: &HttpApi<S>,
    headers: &HeaderMap,
    body: Incoming,
) -> Response {
    let Some(github) = &api.github else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    if !api.is_ready() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage is not ready; retry later\n",
        );
    }
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body must be at most {MAX_BODY_BYTES} bytes\n"),
        )
    };
    let body = match read_body(headers, body, MAX_BODY_BYTES, api.timeout).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return too_large(),
        Err(BodyError::TooSlow) => {
            return text(StatusCode::REQUEST_TIMEOUT, "the body took too long\n");
        }
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let request_id = sane_request_id(header("x-request-id"));
    let reply = secret_scanning::handle(
        &github.keys,
        &github.reporter,
        header(KEY_ID_HEADER),
        header(SIGNATURE_HEADER),
        &body,
        &request_id,
    )
    .await;
    let mut response = http::Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    response
}
