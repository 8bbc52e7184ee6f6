//! `TokenIntrospection`: the hot path. Callers are restricted by network policy or, when
//! configured, by mTLS (a client certificate from the configured CA); no logging per call.

use std::sync::Arc;
use std::time::Duration;

use service_accounts_domain::ids::TokenId;
use service_accounts_domain::introspection::{
    Denial, Denials, Ended, Introspection, Introspector, Unrecognised,
};
use service_accounts_domain::store::TokenStore;
use service_accounts_domain::token::TokenRecord;
use tonic::{Request, Response, Status};

use opentelemetry::KeyValue;

use crate::error::{RpcError, handle};
use crate::pb;
use crate::pb::token_introspection_server::TokenIntrospection;
use crate::render;
use crate::requests::Parse;
use crate::telemetry::ServiceMetrics;

pub struct IntrospectionApi<S> {
    introspector: Arc<Introspector<S>>,
    metrics: ServiceMetrics,
    /// mTLS: only callers with a client certificate from the configured CA may introspect.
    require_client_cert: bool,
    /// Tokens whose use after revocation or expiry was logged in the last minute.
    warned: moka::sync::Cache<TokenId, ()>,
}

impl<S: TokenStore> IntrospectionApi<S> {
    pub fn new(
        introspector: Arc<Introspector<S>>,
        metrics: ServiceMetrics,
        require_client_cert: bool,
    ) -> Self {
        Self {
            introspector,
            metrics,
            require_client_cert,
            warned: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
        }
    }

    /// A revoked or expired token, or one of a disabled account, still being presented is worth
    /// an operator's attention (a leaked old token? a client nobody told?), but at most once a
    /// minute per token.
    fn warn_ended_token(&self, reason: Ended, token: &TokenRecord) {
        if self.warned.contains_key(&token.token_id) {
            return;
        }
        self.warned.insert(token.token_id, ());
        tracing::warn!(
            reason = ?reason,
            org_id = %token.account.org_id,
            service_account_id = %token.account.service_account_id,
            service_account = %token.account.display_name,
            token_id = %token.token_id,
            "a token that no longer works was presented"
        );
    }
}

#[tonic::async_trait]
impl<S: TokenStore> TokenIntrospection for IntrospectionApi<S> {
    async fn introspect(
        &self,
        request: Request<pb::IntrospectRequest>,
    ) -> Result<Response<pb::IntrospectResponse>, Status> {
        handle(async {
            if self.require_client_cert && request.peer_certs().is_none_or(|certs| certs.is_empty())
            {
                return Err(RpcError::NoClientCertificate);
            }
            let req = request.get_ref();
            let checks = req.parse()?;
            let result = self.introspector.introspect(&req.token, &checks).await?;
            if let Introspection::Ended { reason, token } = &result {
                self.warn_ended_token(*reason, token);
            }
            let response = response(result);
            if !self.metrics.enabled {
                return Ok(response);
            }
            if response.active {
                let span = tracing::Span::current();
                span.record("org_id", response.org_id.as_str());
                span.record("service_account_id", response.service_account_id.as_str());
            }
            self.metrics.introspections.add(
                1,
                &[
                    KeyValue::new("outcome", outcome(&response)),
                    KeyValue::new("allowed", response.allowed),
                ],
            );
            Ok(response)
        })
        .await
    }
}

fn response(result: Introspection) -> pb::IntrospectResponse {
    match result {
        Introspection::Unrecognised(_) | Introspection::Ended { .. } => pb::IntrospectResponse {
            active: false,
            inactive_reason: inactive_reason(&result) as i32,
            allowed: false,
            denial_reason: pb::DenialReason::TokenInactive as i32,
            denial_reasons: vec![pb::DenialReason::TokenInactive as i32],
            ..Default::default()
        },
        Introspection::Active { token, denials } => {
            let Denials {
                reasons,
                missing_scopes,
            } = denials;
            let first = reasons
                .first()
                .map_or(pb::DenialReason::Unspecified, |first| denial_reason(*first));
            pb::IntrospectResponse {
                active: true,
                inactive_reason: pb::InactiveReason::Unspecified as i32,
                org_id: token.account.org_id.as_str().to_owned(),
                service_account_id: token.account.service_account_id.to_canonical(),
                service_account_display_name: token.account.display_name.clone(),
                token_id: token.token_id.to_canonical(),
                scopes: token.scopes.names().map(str::to_owned).collect(),
                app_access: Some(render::app_access(&token.account.app_access)),
                expire_time: token.expire_time.map(render::timestamp),
                allowed: reasons.is_empty(),
                denial_reason: first as i32,
                missing_scopes: missing_scopes
                    .iter()
                    .map(|s| s.as_str().to_owned())
                    .collect(),
                denial_reasons: reasons.iter().map(|r| denial_reason(*r) as i32).collect(),
            }
        }
    }
}

fn denial_reason(denial: Denial) -> pb::DenialReason {
    match denial {
        Denial::OrgMismatch => pb::DenialReason::OrgMismatch,
        Denial::ClientIpNotAllowed => pb::DenialReason::ClientIpNotAllowed,
        Denial::AppNotGranted => pb::DenialReason::AppNotGranted,
        Denial::ScopeMissing => pb::DenialReason::ScopeMissing,
    }
}

fn outcome(response: &pb::IntrospectResponse) -> &'static str {
    if response.active {
        return "active";
    }
    match response.inactive_reason() {
        pb::InactiveReason::Malformed => "malformed",
        pb::InactiveReason::Unknown => "unknown",
        pb::InactiveReason::Revoked => "revoked",
        pb::InactiveReason::Expired => "expired",
        pb::InactiveReason::AccountDisabled => "account_disabled",
        pb::InactiveReason::Unspecified => "unspecified",
    }
}

fn inactive_reason(result: &Introspection) -> pb::InactiveReason {
    match result {
        Introspection::Unrecognised(Unrecognised::Malformed) => pb::InactiveReason::Malformed,
        Introspection::Unrecognised(Unrecognised::Unknown) => pb::InactiveReason::Unknown,
        Introspection::Ended {
            reason: Ended::Revoked,
            ..
        } => pb::InactiveReason::Revoked,
        Introspection::Ended {
            reason: Ended::Expired,
            ..
        } => pb::InactiveReason::Expired,
        Introspection::Ended {
            reason: Ended::AccountDisabled,
            ..
        } => pb::InactiveReason::AccountDisabled,
        Introspection::Active { .. } => pb::InactiveReason::Unspecified,
    }
}
