//! `LeakReporting`: anyone holding a token may get it revoked. Unauthenticated by design, so it
//! is rate-limited per caller address: a report costs one storage lookup per token, and it must
//! not become a faster way to probe storage than `Introspect`.

use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use service_accounts_domain::Error;
use service_accounts_domain::leaks::{
    LeakOutcome, LeakReport, LeakReporter, MAX_TOKENS_PER_REPORT,
};
use service_accounts_domain::store::{AdminStore, TokenStore};
use tonic::{Request, Response, Status};

use crate::admin_api::request_id;
use crate::error::{ClientCertRule, handle};
use crate::pb;
use crate::pb::leak_reporting_server::LeakReporting;

pub struct LeakApi<S> {
    reporter: LeakReporter<S>,
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    checks: AtomicU64,
    client_cert: ClientCertRule,
}

impl<S: AdminStore + TokenStore> LeakApi<S> {
    /// Each caller address may report `tokens_per_minute` tokens a minute (at least one full
    /// report of 1,000 at once).
    pub fn new(store: S, tokens_per_minute: NonZeroU32, client_cert: ClientCertRule) -> Self {
        let burst = tokens_per_minute
            .max(NonZeroU32::new(MAX_TOKENS_PER_REPORT as u32).unwrap_or(NonZeroU32::MIN));
        Self {
            reporter: LeakReporter::new(store),
            limiter: RateLimiter::keyed(Quota::per_minute(tokens_per_minute).allow_burst(burst)),
            checks: AtomicU64::new(0),
            client_cert,
        }
    }

    /// Takes `tokens` from the caller's allowance, or says when to come back.
    fn admit(&self, peer: IpAddr, tokens: usize) -> Result<(), Error> {
        // Forget callers not seen for a while, so the table stays small.
        if self.checks.fetch_add(1, Ordering::Relaxed) % 1024 == 1023 {
            self.limiter.retain_recent();
        }
        let n =
            NonZeroU32::new(u32::try_from(tokens).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
        match self.limiter.check_key_n(&peer, n) {
            Ok(Ok(())) => Ok(()),
            _ => Err(Error::ResourceExhausted {
                subject: format!("leak_reports:{peer}"),
                description: "too many leaked tokens reported from this address; retry in a \
                              minute"
                    .into(),
            }),
        }
    }
}

#[tonic::async_trait]
impl<S: AdminStore + TokenStore> LeakReporting for LeakApi<S> {
    async fn report_leaked_tokens(
        &self,
        request: Request<pb::ReportLeakedTokensRequest>,
    ) -> Result<Response<pb::ReportLeakedTokensResponse>, Status> {
        handle(async {
            self.client_cert.check_grpc(&request)?;
            let peer = request
                .remote_addr()
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip().to_canonical());
            let req = request.get_ref();
            let report = LeakReport::parse(&req.tokens, &req.source)?;
            self.admit(peer, report.len())?;
            let request_id = request_id(request.metadata());
            let results = self.reporter.report(&report, &request_id).await?;
            Ok(pb::ReportLeakedTokensResponse {
                results: results
                    .into_iter()
                    .map(|r| pb::LeakedTokenResult {
                        hint: r.hint,
                        outcome: outcome(r.outcome) as i32,
                    })
                    .collect(),
            })
        })
        .await
    }
}

pub fn outcome(outcome: LeakOutcome) -> pb::LeakOutcome {
    match outcome {
        LeakOutcome::Revoked => pb::LeakOutcome::Revoked,
        LeakOutcome::AlreadyInactive => pb::LeakOutcome::AlreadyInactive,
        LeakOutcome::Unknown => pb::LeakOutcome::Unknown,
        LeakOutcome::Malformed => pb::LeakOutcome::Malformed,
    }
}
