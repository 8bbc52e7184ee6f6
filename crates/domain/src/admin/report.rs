//! The credential report (SPEC §22): every token of the org matching a filter, as CSV, read a
//! page at a time so that memory does not grow with the org.

use chrono::SecondsFormat;

use super::{Admin, AdminService};
use crate::error::Error;
use crate::query::{Cond, ListedToken, Order, TokenPredicate, TokenQuery, TokenTime};
use crate::service_account::AccountState;
use crate::store::AdminStore;
use crate::time::{self, SECONDS_PER_DAY, Timestamp};
use crate::token::{RevokeReason, TokenState};

/// The report's columns, in order.
pub const REPORT_COLUMNS: [&str; 18] = [
    "account_id",
    "account_name",
    "account_state",
    "token_id",
    "token_name",
    "token_state",
    "scopes",
    "create_time",
    "created_by",
    "expire_time",
    "last_used_time",
    "last_used_app_id",
    "last_used_address",
    "revoke_time",
    "revoked_by",
    "revoke_reason",
    "previous_token_id",
    "days_since_last_use",
];

/// Rows read from the store per chunk.
const ROWS_PER_CHUNK: u32 = 500;

/// A report in progress: where the next chunk starts.
#[derive(Debug)]
pub struct CredentialReport {
    query: TokenQuery,
    header_written: bool,
    finished: bool,
}

impl<S: AdminStore> AdminService<S> {
    /// Starts a report of the org's tokens matching `filter`, in creation order, as of now.
    pub fn credential_report(
        &self,
        admin: &Admin,
        filter: Option<Cond<TokenPredicate>>,
    ) -> CredentialReport {
        CredentialReport {
            query: TokenQuery {
                org: admin.org_id.clone(),
                account: None,
                filter,
                order: Order {
                    by: TokenTime::Create,
                    descending: false,
                },
                after: None,
                limit: ROWS_PER_CHUNK,
                now: time::now(),
            },
            header_written: false,
            finished: false,
        }
    }

    /// The report's next bytes (the header with the first rows), or `None` once it is complete.
    pub async fn next_report_chunk(
        &self,
        report: &mut CredentialReport,
    ) -> Result<Option<Vec<u8>>, Error> {
        if report.finished {
            return Ok(None);
        }
        let rows = self.store.list_tokens(&report.query).await?;
        report.finished = rows.len() < ROWS_PER_CHUNK as usize;
        if let Some(last) = rows.last() {
            report.query.after = Some(report.query.key(&last.token));
        }
        // Writing to memory cannot fail.
        let mut csv = writer();
        if !report.header_written {
            report.header_written = true;
            csv.write_record(REPORT_COLUMNS).expect("in memory");
        }
        for row in &rows {
            csv.write_record(fields(row, report.query.now))
                .expect("in memory");
        }
        Ok(Some(csv.into_inner().expect("in memory")))
    }
}

fn writer() -> csv::Writer<Vec<u8>> {
    csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new())
}

/// One token's row, in [`REPORT_COLUMNS`] order; unset values are empty.
fn fields(row: &ListedToken, now: Timestamp) -> [String; 18] {
    let token = &row.token;
    let time = |t: Option<Timestamp>| {
        t.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
            .unwrap_or_default()
    };
    let text = |t: Option<&str>| t.unwrap_or_default().to_owned();
    [
        token.service_account_id.to_string(),
        row.account_name.as_str().to_owned(),
        match row.account_state {
            AccountState::Active => "ACTIVE",
            AccountState::Disabled => "DISABLED",
        }
        .to_owned(),
        token.id.to_string(),
        token.display_name.as_str().to_owned(),
        match token.state(now) {
            TokenState::Active => "ACTIVE",
            TokenState::Expired => "EXPIRED",
            TokenState::Revoked => "REVOKED",
        }
        .to_owned(),
        token.scopes.to_stored(),
        time(Some(token.create_time)),
        token.created_by.to_string(),
        time(token.expire_time),
        time(token.last_used_time),
        text(token.last_used_app_id.as_ref().map(|a| a.as_str())),
        token
            .last_used_client_ip
            .map(|ip| ip.to_string())
            .unwrap_or_default(),
        time(token.revoke_time),
        text(token.revoked_by.as_ref().map(|u| u.as_str())),
        text(token.revoke_reason.map(|r| match r {
            RevokeReason::Admin => "ADMIN",
            RevokeReason::Rotated => "ROTATED",
            RevokeReason::Leaked => "LEAKED",
            RevokeReason::AccountDeleted => "ACCOUNT_DELETED",
        })),
        token
            .previous_token_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        token
            .last_used_time
            .map(|used| ((now - used).num_seconds().max(0) / SECONDS_PER_DAY).to_string())
            .unwrap_or_default(),
    ]
}
