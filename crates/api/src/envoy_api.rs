//! Envoy's external authorization API, `envoy.service.auth.v3.Authorization/Check`, so that an
//! Envoy `ext_authz` filter (or any mesh built on it) authenticates service-account tokens with no
//! code in the service behind it (SPEC §17). The decision is [`gateway::decide`], the one
//! `/v1/forward-auth` uses, so both always agree with `Introspect`; this module only translates
//! Envoy's request and response shapes.
//!
//! Callers are restricted like `TokenIntrospection`'s: by network policy or, when configured, by
//! mTLS. Envoy reads a denial from `status`, and the HTTP reply it sends the client from
//! `denied_response`; only failures of our own (bad route configuration, storage down) are gRPC
//! errors, which Envoy turns into a denial too as long as `failure_mode_allow` is false.

use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, HeaderAppendAction, HeaderValue, HeaderValueOption,
    HttpStatusCode, OkHttpResponse,
};
use envoy_types::ext_authz::v3::{CheckRequestExt, CheckResponseExt, DeniedHttpResponseBuilder};
use envoy_types::pb::google::protobuf::BoolValue;
use service_accounts_domain::introspection::Introspector;
use service_accounts_domain::store::TokenStore;
use tonic::{Request, Response, Status};

use crate::error::{ClientCertRule, handle};
use crate::gateway::{self, Challenge, Decision, GatewayRequest};

/// Envoy's ext_authz protos and their imports, encoded for server reflection: `envoy-types`
/// ships the generated code but no descriptor set, so build.rs compiles one from the copies in
/// `third_party/envoy-api`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptor.bin"));

/// `context_extensions` keys a route sets (`ExtAuthzPerRoute.check_settings`).
pub const ORG_ID: &str = "org_id";
pub const APP_ID: &str = "app_id";
/// Space or comma separated.
pub const REQUIRED_SCOPES: &str = "required_scopes";

/// The request header carrying the bearer token; Envoy sends header names lower-case.
const AUTHORIZATION: &str = "authorization";

pub struct EnvoyAuthApi<S> {
    introspector: Arc<Introspector<S>>,
    /// mTLS: only callers with a client certificate from the configured CA may check, exactly as
    /// for `Introspect` (`Check` answers the same question).
    client_cert: ClientCertRule,
    /// What the denied answers' `WWW-Authenticate` challenges name besides the error.
    challenge: Challenge,
}

impl<S: TokenStore> EnvoyAuthApi<S> {
    pub fn new(
        introspector: Arc<Introspector<S>>,
        client_cert: ClientCertRule,
        challenge: Challenge,
    ) -> Self {
        Self {
            introspector,
            client_cert,
            challenge,
        }
    }
}

#[tonic::async_trait]
impl<S: TokenStore> Authorization for EnvoyAuthApi<S> {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        handle(async {
            self.client_cert.check_grpc(&request)?;
            let check = request.get_ref();
            let extension = |key: &str| {
                check
                    .attributes
                    .as_ref()
                    .and_then(|attributes| attributes.context_extensions.get(key))
                    .map_or("", String::as_str)
            };
            let decision = gateway::decide(
                &self.introspector,
                GatewayRequest {
                    authorization: authorization(check),
                    org_id: extension(ORG_ID),
                    app_id: extension(APP_ID),
                    required_scopes: extension(REQUIRED_SCOPES),
                    // The downstream connection's peer, as Envoy saw it: never a header the
                    // client could set.
                    client_ip: check.get_client_address().map_or("", String::as_str),
                },
            )
            .await?;
            if let Decision::Allow(identity) = &decision {
                // As for `Introspect`: the RPC's span says whose request was let through.
                let span = tracing::Span::current();
                for (header, field) in [
                    (gateway::ORG_ID, "org_id"),
                    (gateway::SERVICE_ACCOUNT_ID, "service_account_id"),
                ] {
                    if let Some((_, value)) = identity.iter().find(|(name, _)| *name == header) {
                        span.record(field, value.as_str());
                    }
                }
            }
            Ok(response(decision, &self.challenge))
        })
        .await
    }
}

/// The checked request's `Authorization` header. Envoy sends headers as a map, or, with
/// `encode_raw_headers`, as a list of raw values instead. A request with several `Authorization`
/// headers has no single token: the map comma-joins them into a value that is no bearer token,
/// and from the list none is taken.
fn authorization(check: &CheckRequest) -> Option<&str> {
    if let Some(value) = check.get_client_headers()?.get(AUTHORIZATION) {
        return Some(value);
    }
    let http = check.attributes.as_ref()?.request.as_ref()?.http.as_ref()?;
    let mut values = http
        .header_map
        .as_ref()?
        .headers
        .iter()
        .filter(|header| header.key.eq_ignore_ascii_case(AUTHORIZATION));
    match (values.next(), values.next()) {
        (Some(only), None) if only.raw_value.is_empty() => Some(only.value.as_str()),
        (Some(only), None) => std::str::from_utf8(&only.raw_value).ok(),
        _ => None,
    }
}

fn response(decision: Decision, challenge: &Challenge) -> CheckResponse {
    let www_authenticate = decision.challenge(challenge);
    match decision {
        Decision::Allow(identity) => {
            let mut response = CheckResponse::with_status(Status::ok(""));
            #[allow(deprecated)] // `append` is deprecated but still honoured before `append_action`
            let headers = identity
                .into_iter()
                .map(|(key, value)| HeaderValueOption {
                    header: Some(HeaderValue {
                        key: key.to_owned(),
                        value,
                        raw_value: Vec::new(),
                    }),
                    // Replace whatever the client sent under these names. Envoy reads the
                    // deprecated `append` first when it is set, older versions read only it, and
                    // both fields say "overwrite".
                    append: Some(BoolValue { value: false }),
                    append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
                    // An empty value (a token without scopes) must still replace a client's copy.
                    keep_empty_value: true,
                })
                .collect();
            response.set_http_response(OkHttpResponse {
                headers,
                // The upstream never needs the token, and must not be able to replay it.
                headers_to_remove: vec![AUTHORIZATION.to_owned()],
                ..Default::default()
            });
            response
        }
        Decision::Unauthenticated { .. } | Decision::Forbidden { .. } => {
            let (status, http_status) = match decision {
                Decision::Forbidden { reason, .. } => {
                    (Status::permission_denied(reason), HttpStatusCode::Forbidden)
                }
                _ => (
                    Status::unauthenticated("no bearer token, or one that is not active"),
                    HttpStatusCode::Unauthorized,
                ),
            };
            let mut denied = DeniedHttpResponseBuilder::new();
            denied.set_http_status(http_status);
            if let Decision::Forbidden { reason, .. } = decision {
                denied.add_header(
                    gateway::DENIAL_REASON,
                    reason,
                    Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                    false,
                );
            }
            if let Some(value) = &www_authenticate {
                denied.add_header(
                    "www-authenticate",
                    value,
                    Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                    false,
                );
            }
            let mut response = CheckResponse::with_status(status);
            response.set_http_response(denied);
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::ext_authz::v3::pb::HttpResponse;
    use envoy_types::pb::envoy::config::core::v3::HeaderMap;
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};

    use super::*;

    fn with_http(http: HttpRequest) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    http: Some(http),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    fn raw(key: &str, value: &str) -> HeaderValue {
        HeaderValue {
            key: key.into(),
            value: String::new(),
            raw_value: value.as_bytes().to_vec(),
        }
    }

    #[test]
    fn the_token_is_read_from_the_header_map_or_the_raw_headers() {
        let mapped = with_http(HttpRequest {
            headers: [("authorization".to_owned(), "Bearer a".to_owned())].into(),
            ..Default::default()
        });
        assert_eq!(authorization(&mapped), Some("Bearer a"));
        let raw_one = with_http(HttpRequest {
            header_map: Some(HeaderMap {
                headers: vec![raw("x-other", "1"), raw("Authorization", "Bearer b")],
            }),
            ..Default::default()
        });
        assert_eq!(authorization(&raw_one), Some("Bearer b"));
        let raw_two = with_http(HttpRequest {
            header_map: Some(HeaderMap {
                headers: vec![raw("authorization", "Bearer b"), raw("authorization", "c")],
            }),
            ..Default::default()
        });
        assert_eq!(authorization(&raw_two), None);
        assert_eq!(authorization(&CheckRequest::default()), None);
    }

    #[test]
    fn an_empty_identity_value_still_overwrites() {
        let response = response(
            Decision::Allow(vec![(gateway::SCOPES, String::new())]),
            &Challenge::default(),
        );
        let Some(HttpResponse::OkResponse(ok)) = response.http_response else {
            panic!("an allowed check has an ok_response");
        };
        assert!(ok.headers[0].keep_empty_value);
        assert_eq!(response.status.map(|s| s.code), Some(0));
    }

    #[test]
    fn the_descriptor_set_describes_the_served_service() {
        use envoy_types::pb::envoy::service::auth::v3::authorization_server::SERVICE_NAME;
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let service = set
            .file
            .iter()
            .find(|file| file.package() == "envoy.service.auth.v3" && !file.service.is_empty())
            .expect("the ext_authz service is in the set");
        assert_eq!(
            format!("{}.{}", service.package(), service.service[0].name()),
            SERVICE_NAME
        );
    }
}
