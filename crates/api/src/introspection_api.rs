//! `TokenIntrospection`: the hot path. Callers are restricted by network policy or, when
//! configured, by mTLS (a client certificate from the configured CA); no logging per call.

use std::sync::Arc;
use std::time::Duration;

use service_accounts_domain::ids::TokenId;
use service_accounts_domain::introspection::{Ended, Introspection, Introspector};
use service_accounts_domain::store::TokenStore;
use service_accounts_domain::token::TokenRecord;
use tonic::{Request, Response, Status};

use opentelemetry::KeyValue;

use crate::error::{ClientCertRule, handle};
use crate::pb;
use crate::requests::Parse;
use crate::telemetry::ServiceMetrics;

mod reply;
mod watch;

pub use reply::IntrospectReply;
pub use server::token_introspection_server::{TokenIntrospection, TokenIntrospectionServer};
pub use watch::{WatchStream, Watches};

/// The `TokenIntrospection` server, generated here rather than in `service-accounts-client`
/// so that it answers with [`IntrospectReply`] (see `build.rs`).
pub(crate) mod server {
    #![allow(clippy::doc_lazy_continuation, clippy::doc_overindented_list_items)]
    tonic::include_proto!("embrace.serviceaccounts.v1");
}

pub struct IntrospectionApi<S> {
    introspector: Arc<Introspector<S>>,
    metrics: ServiceMetrics,
    /// mTLS: only callers with a client certificate from the configured CA may introspect.
    client_cert: ClientCertRule,
    /// Tokens whose use after revocation or expiry was logged in the last minute.
    warned: moka::sync::Cache<TokenId, ()>,
    watches: Watches,
}

impl<S: TokenStore> IntrospectionApi<S> {
    pub fn new(
        introspector: Arc<Introspector<S>>,
        metrics: ServiceMetrics,
        client_cert: ClientCertRule,
        watches: Watches,
    ) -> Self {
        Self {
            introspector,
            metrics,
            client_cert,
            watches,
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
    ) -> Result<Response<IntrospectReply>, Status> {
        handle(async {
            self.client_cert.check_grpc(&request)?;
            let req = request.get_ref();
            let checks = req.parse()?;
            let result = self.introspector.introspect(&req.token, &checks).await?;
            if let Introspection::Ended { reason, token } = &result {
                self.warn_ended_token(*reason, token);
            }
            let reply = IntrospectReply(result);
            if self.metrics.enabled {
                self.record(&reply);
            }
            Ok(reply)
        })
        .await
    }

    type WatchChangesStream = WatchStream;

    async fn watch_changes(
        &self,
        request: Request<pb::WatchChangesRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        handle(async {
            self.client_cert.check_grpc(&request)?;
            let req = request.get_ref();
            self.watches.start(&req.resume_token, &req.org_id)
        })
        .await
    }
}

impl<S> IntrospectionApi<S> {
    fn record(&self, reply: &IntrospectReply) {
        if let Introspection::Active { token, .. } = &reply.0 {
            let span = tracing::Span::current();
            span.record("org_id", token.account.org_id.as_str());
            span.record(
                "service_account_id",
                tracing::field::display(token.account.service_account_id),
            );
        }
        self.metrics.introspections.add(
            1,
            &[
                KeyValue::new("outcome", reply.outcome()),
                KeyValue::new("allowed", reply.is_allowed()),
            ],
        );
    }
}
