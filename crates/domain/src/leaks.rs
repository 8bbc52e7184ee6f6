//! Leaked tokens: whoever holds a token may get it revoked. Possession is the authority, and
//! revoking is the safe direction, so no admin is involved; each revocation is audited in the
//! token's org under the actor [`LEAK_REPORT_ACTOR`].

use serde_json::json;

use crate::audit::{AuditAction, AuditEvent, Target};
use crate::error::{Error, Invalid, Violations};
use crate::ids::{AuditEventId, UserId};
use crate::store::{AdminStore, TokenStore};
use crate::time;
use crate::token::{Revocation, RevokeReason, TokenSecret};

/// At most this many tokens per report (GitHub sends them in batches).
pub const MAX_TOKENS_PER_REPORT: usize = 1000;
/// At most this many bytes of `source`.
pub const MAX_SOURCE_BYTES: usize = 2048;
/// The actor of leak revocations in the audit trail and in `revoked_by`.
pub const LEAK_REPORT_ACTOR: &str = "leak-report";

/// What became of one reported token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeakOutcome {
    /// It was not revoked or expired; now it is revoked with reason `Leaked`.
    Revoked,
    AlreadyInactive,
    Unknown,
    Malformed,
}

/// One result, in report order. The hint is empty for a malformed token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeakResult {
    pub hint: String,
    pub outcome: LeakOutcome,
}

/// A validated report: 1 to 1000 tokens (kept as given: a malformed one is an outcome, not an
/// error) and where they were found.
#[derive(Debug, Clone)]
pub struct LeakReport {
    tokens: Vec<String>,
    source: String,
}

impl LeakReport {
    pub fn parse(tokens: &[String], source: &str) -> Result<Self, Error> {
        let mut v = Violations::new();
        if tokens.is_empty() {
            v.add("tokens", "at least one token is required");
        }
        if tokens.len() > MAX_TOKENS_PER_REPORT {
            v.add(
                "tokens",
                format!(
                    "at most {MAX_TOKENS_PER_REPORT} tokens per report, got {}",
                    tokens.len()
                ),
            );
        }
        v.check("source", parse_source(source));
        v.finish()?;
        Ok(Self {
            tokens: tokens.to_vec(),
            source: source.to_owned(),
        })
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

fn parse_source(source: &str) -> Result<(), Invalid> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(Invalid::new(format!(
            "at most {MAX_SOURCE_BYTES} bytes, got {}",
            source.len()
        )));
    }
    if source.chars().any(char::is_control) {
        return Err(Invalid::new("must not contain control characters"));
    }
    Ok(())
}

/// Revokes reported tokens. Reads storage directly, not the introspection cache: the answer must
/// be authoritative, and the revocation reaches every cache through the usual commit.
pub struct LeakReporter<S> {
    store: S,
}

impl<S: AdminStore + TokenStore> LeakReporter<S> {
    pub fn new(store: S) -> Self {
        Self { store }
    }

    /// One token at a time, in order: a report's storage load is bounded by its size, which the
    /// transport rate-limits per caller.
    pub async fn report(
        &self,
        report: &LeakReport,
        request_id: &str,
    ) -> Result<Vec<LeakResult>, Error> {
        let mut results = Vec::with_capacity(report.tokens.len());
        for token in &report.tokens {
            results.push(self.revoke(token, &report.source, request_id).await?);
        }
        Ok(results)
    }

    async fn revoke(
        &self,
        token: &str,
        source: &str,
        request_id: &str,
    ) -> Result<LeakResult, Error> {
        let Ok(secret) = TokenSecret::parse(token) else {
            return Ok(LeakResult {
                hint: String::new(),
                outcome: LeakOutcome::Malformed,
            });
        };
        let hint = secret.hint();
        let result = |outcome| {
            Ok(LeakResult {
                hint: hint.clone(),
                outcome,
            })
        };
        let Some(record) = self.store.find_token(&secret.hash()).await? else {
            return result(LeakOutcome::Unknown);
        };
        if !record.token_hash.ct_eq(&secret.hash()) {
            return result(LeakOutcome::Unknown);
        }
        let now = time::now();
        // A disabled account's token is revoked too: it would work again once enabled.
        if record.revoke_time.is_some() || record.expire_time.is_some_and(|t| t <= now) {
            return result(LeakOutcome::AlreadyInactive);
        }
        let actor = UserId::parse(LEAK_REPORT_ACTOR).map_err(|e| Error::invalid("actor", e.0))?;
        let account = &record.account;
        let event = AuditEvent {
            id: AuditEventId::generate(),
            org_id: account.org_id.clone(),
            actor: actor.clone(),
            action: AuditAction::TokenLeakRevoke,
            target: Target::Token {
                service_account_id: account.service_account_id,
                token_id: record.token_id,
            },
            request_id: request_id.to_owned(),
            create_time: now,
            details: json!({
                "service_account_id": account.service_account_id.to_string(),
                "source": source,
            })
            .to_string(),
            validate_only: false,
        };
        let revocation = Revocation {
            at: now,
            by: actor,
            reason: RevokeReason::Leaked,
        };
        let revoked = self
            .store
            .revoke_token(
                &account.org_id,
                account.service_account_id,
                record.token_id,
                &revocation,
                &event,
            )
            .await?;
        // Not revoked here: someone revoked it between the read and the write.
        result(if revoked {
            LeakOutcome::Revoked
        } else {
            LeakOutcome::AlreadyInactive
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_has_one_to_a_thousand_tokens_and_a_bounded_source() {
        let one = vec!["x".to_owned()];
        assert!(LeakReport::parse(&one, "https://github.com/o/r/blob/main/.env").is_ok());
        assert!(LeakReport::parse(&[], "").is_err());
        let many = vec!["x".to_owned(); 1001];
        assert!(LeakReport::parse(&many, "").is_err());
        assert!(LeakReport::parse(&many[..1000], "").is_ok());
        assert!(LeakReport::parse(&one, &"a".repeat(2049)).is_err());
        assert!(LeakReport::parse(&one, "line\nbreak").is_err());
    }
}
