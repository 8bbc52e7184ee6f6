//! `loadgen inventory` (bench/inventory.sh): the inventory reads of SPEC §22 against one big
//! org. Each case is a `ListTokens` (every token of the caller's org, `service_account_id` `-`)
//! or `ListAuditEvents` listing with a filter and an order. A case is timed twice, one call at a
//! time over one connection: its first page over and over, and the pages after it, following
//! `next_page_token` (from the first page again when the listing ends). Then the credential
//! report of the whole org is streamed a few times while the server's resident set size is
//! sampled.
//!
//! Prints JSON lines: one per case and series (p50/p90/p99/max in ms, plus the wall-clock window
//! of the timed calls, `from_ms`/`to_ms` since the Unix epoch, by which a database's log can be
//! matched to the case), one per report run.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use service_accounts_api::pb;
use service_accounts_api::pb::service_account_admin_client::ServiceAccountAdminClient;
use tonic::transport::Channel;

use crate::{authed, rss_kib};

type Error = Box<dyn std::error::Error>;

#[derive(clap::Args)]
pub struct InventoryArgs {
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// Admin JWT of the big org.
    #[arg(long, env = "ADMIN_JWT", hide_env_values = true)]
    jwt: String,
    /// Admin JWT of a second, small org: its own listings are timed too.
    #[arg(long, env = "OTHER_ADMIN_JWT", hide_env_values = true)]
    other_jwt: Option<String>,
    /// Timed calls per case and series.
    #[arg(long, default_value_t = 300)]
    calls: u64,
    /// Untimed calls before each series.
    #[arg(long, default_value_t = 20)]
    warmup: u64,
    #[arg(long, default_value_t = 100)]
    page_size: i32,
    /// The bound of the `expire_time < …` case (RFC 3339); default: 30 days from now.
    #[arg(long)]
    expire_before: Option<String>,
    /// The bound of the `create_time > …` audit case (RFC 3339); default: 7 days ago.
    #[arg(long)]
    audit_since: Option<String>,
    /// Only the cases with these labels (comma-separated); default: every case.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Credential reports of the whole org to stream (0: none).
    #[arg(long, default_value_t = 3)]
    report_runs: usize,
    /// The server's pid: its VmRSS is sampled before and while each report streams.
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    sample_every: Duration,
    /// A pause before each series and report, so that their windows stand apart in a
    /// database's log.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    gap: Duration,
    /// A label printed with every line (e.g. the backend).
    #[arg(long, default_value = "")]
    backend: String,
}

/// What one case lists.
enum Listing {
    Tokens { filter: String, order_by: String },
    Audit { filter: String, order_by: String },
}

struct Case {
    label: &'static str,
    /// Listed as the second org's admin.
    other_org: bool,
    listing: Listing,
}

impl Case {
    fn tokens(label: &'static str, filter: &str, order_by: &str) -> Self {
        Self {
            label,
            other_org: false,
            listing: Listing::Tokens {
                filter: filter.into(),
                order_by: order_by.into(),
            },
        }
    }

    fn audit(label: &'static str, filter: &str) -> Self {
        Self {
            label,
            other_org: false,
            listing: Listing::Audit {
                filter: filter.into(),
                order_by: "create_time desc".into(),
            },
        }
    }

    fn rpc(&self) -> &'static str {
        match self.listing {
            Listing::Tokens { .. } => "ListTokens",
            Listing::Audit { .. } => "ListAuditEvents",
        }
    }

    fn filter_and_order(&self) -> (&str, &str) {
        match &self.listing {
            Listing::Tokens { filter, order_by } | Listing::Audit { filter, order_by } => {
                (filter, order_by)
            }
        }
    }
}

struct Lister {
    client: ServiceAccountAdminClient<Channel>,
    jwt: String,
    other_jwt: Option<String>,
    page_size: i32,
}

impl Lister {
    /// One page: how many items it held and its `next_page_token`.
    async fn page(&mut self, case: &Case, page_token: &str) -> Result<(usize, String), Error> {
        let jwt = if case.other_org {
            self.other_jwt.as_deref().ok_or("no second org's JWT")?
        } else {
            &self.jwt
        };
        Ok(match &case.listing {
            Listing::Tokens { filter, order_by } => {
                let page = self
                    .client
                    .list_tokens(authed(
                        jwt,
                        pb::ListTokensRequest {
                            service_account_id: "-".into(),
                            page_size: self.page_size,
                            page_token: page_token.into(),
                            filter: filter.clone(),
                            order_by: order_by.clone(),
                        },
                    ))
                    .await?
                    .into_inner();
                (page.tokens.len(), page.next_page_token)
            }
            Listing::Audit { filter, order_by } => {
                let page = self
                    .client
                    .list_audit_events(authed(
                        jwt,
                        pb::ListAuditEventsRequest {
                            page_size: self.page_size,
                            page_token: page_token.into(),
                            filter: filter.clone(),
                            order_by: order_by.clone(),
                        },
                    ))
                    .await?
                    .into_inner();
                (page.audit_events.len(), page.next_page_token)
            }
        })
    }
}

fn epoch_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

fn json_str(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(quoted, "\\u{:04x}", c as u32);
            }
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

pub async fn inventory(args: InventoryArgs) -> Result<(), Error> {
    let channel = Channel::from_shared(args.target.clone())?.connect().await?;
    let mut lister = Lister {
        client: ServiceAccountAdminClient::new(channel.clone()),
        jwt: args.jwt.clone(),
        other_jwt: args.other_jwt.clone(),
        page_size: args.page_size,
    };
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let expire_before = args
        .expire_before
        .clone()
        .unwrap_or_else(|| humantime::format_rfc3339_seconds(now + 30 * day).to_string());
    let audit_since = args
        .audit_since
        .clone()
        .unwrap_or_else(|| humantime::format_rfc3339_seconds(now - 7 * day).to_string());
    // A token with an audit trail of its own (created, then revoked when it was).
    let some_token = lister
        .client
        .list_tokens(authed(
            &args.jwt,
            pb::ListTokensRequest {
                service_account_id: "-".into(),
                page_size: 1,
                filter: "state = REVOKED".into(),
                ..Default::default()
            },
        ))
        .await?
        .into_inner()
        .tokens
        .into_iter()
        .next()
        .ok_or("the org has no revoked token")?
        .token_id;

    let mut cases = vec![
        Case::tokens("all", "", ""),
        Case::tokens("never-used", "NOT last_used_time:*", ""),
        Case::tokens("mcp-write", r#"scopes:"mcp:write""#, ""),
        Case::tokens(
            "expiring-30d",
            &format!(r#"expire_time < "{expire_before}""#),
            "",
        ),
        Case::tokens(
            "combined",
            r#"state = ACTIVE AND NOT last_used_time:* AND scopes:"mcp:write""#,
            "",
        ),
        Case::tokens("by-last-use-desc", "", "last_used_time desc"),
        Case::tokens("by-expiry", "", "expire_time"),
        // The first pages of these two are the tokens whose key is unset (never used, never
        // expiring), which sort first in these orders.
        Case::tokens("by-last-use", "", "last_used_time"),
        Case::tokens("by-expiry-desc", "", "expire_time desc"),
    ];
    if args.other_jwt.is_some() {
        for (label, filter, order_by) in [
            ("other-org-all", "", ""),
            ("other-org-never-used", "NOT last_used_time:*", ""),
            ("other-org-by-last-use", "", "last_used_time"),
            ("other-org-by-expiry-desc", "", "expire_time desc"),
        ] {
            cases.push(Case {
                other_org: true,
                ..Case::tokens(label, filter, order_by)
            });
        }
    }
    cases.extend([
        Case::audit("audit-all", ""),
        Case::audit("audit-revokes", r#"action = "token.revoke""#),
        Case::audit("audit-actor", r#"actor = "carol@example.com""#),
        Case::audit("audit-target", &format!(r#"target_id = "{some_token}""#)),
        Case::audit(
            "audit-last-7d",
            &format!(r#"create_time > "{audit_since}""#),
        ),
    ]);
    let cases: Vec<Case> = cases
        .into_iter()
        .filter(|c| args.only.is_empty() || args.only.iter().any(|o| o == c.label))
        .collect();

    for case in &cases {
        tokio::time::sleep(args.gap).await;
        first_pages(&mut lister, case, &args).await?;
        tokio::time::sleep(args.gap).await;
        next_pages(&mut lister, case, &args).await?;
    }
    for run in 1..=args.report_runs {
        tokio::time::sleep(args.gap).await;
        report(channel.clone(), &args, run).await?;
    }
    Ok(())
}

fn histogram() -> Result<Histogram<u64>, Error> {
    Ok(Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?)
}

struct Series {
    histogram: Histogram<u64>,
    rows: usize,
    from_ms: u128,
    to_ms: u128,
}

fn print_series(case: &Case, args: &InventoryArgs, pages: &str, series: &Series, extra: &str) {
    let (filter, order_by) = case.filter_and_order();
    let h = &series.histogram;
    println!(
        "{{\"label\":\"{}\",\"backend\":\"{}\",\"rpc\":\"{}\",\"filter\":{},\"order_by\":{},\"pages\":\"{pages}\",\"page_size\":{},\"calls\":{},\"rows_per_call\":{:.1},\"p50_ms\":{:.2},\"p90_ms\":{:.2},\"p99_ms\":{:.2},\"max_ms\":{:.2},\"from_ms\":{},\"to_ms\":{}{extra}}}",
        case.label,
        args.backend,
        case.rpc(),
        json_str(filter),
        json_str(order_by),
        args.page_size,
        h.len(),
        series.rows as f64 / h.len().max(1) as f64,
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.9)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max()),
        series.from_ms,
        series.to_ms,
    );
}

/// The first page, `calls` times.
async fn first_pages(lister: &mut Lister, case: &Case, args: &InventoryArgs) -> Result<(), Error> {
    for _ in 0..args.warmup {
        lister.page(case, "").await?;
    }
    let mut series = Series {
        histogram: histogram()?,
        rows: 0,
        from_ms: epoch_ms(),
        to_ms: 0,
    };
    for _ in 0..args.calls {
        let started = Instant::now();
        let (rows, _) = lister.page(case, "").await?;
        series
            .histogram
            .saturating_record(started.elapsed().as_micros() as u64);
        series.rows += rows;
    }
    series.to_ms = epoch_ms();
    print_series(case, args, "first", &series, "");
    Ok(())
}

/// Pages 2, 3, …, following `next_page_token`; when the listing ends, from its first page
/// again (that page untimed). Nothing is printed for a listing of one page.
async fn next_pages(lister: &mut Lister, case: &Case, args: &InventoryArgs) -> Result<(), Error> {
    let (_, mut cursor) = lister.page(case, "").await?;
    if cursor.is_empty() {
        return Ok(());
    }
    let mut page = 2u64;
    let mut deepest = 0u64;
    let mut laps = 0u64;
    let mut series = Series {
        histogram: histogram()?,
        rows: 0,
        from_ms: 0,
        to_ms: 0,
    };
    for call in 0..args.warmup + args.calls {
        if call == args.warmup {
            series.from_ms = epoch_ms();
            laps = 0;
        }
        if cursor.is_empty() {
            cursor = lister.page(case, "").await?.1;
            page = 2;
            laps += 1;
        }
        let started = Instant::now();
        let (rows, next) = lister.page(case, &cursor).await?;
        let took = started.elapsed().as_micros() as u64;
        if call >= args.warmup {
            series.histogram.saturating_record(took);
            series.rows += rows;
            deepest = deepest.max(page);
        }
        cursor = next;
        page += 1;
    }
    series.to_ms = epoch_ms();
    print_series(
        case,
        args,
        "next",
        &series,
        &format!(",\"deepest_page\":{deepest},\"restarts\":{laps}"),
    );
    Ok(())
}

/// Samples a process's VmRSS until stopped: the largest reading and how many were taken.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    samples: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let samples = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, peak, samples) = (stop.clone(), peak.clone(), samples.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(kib) = rss_kib(pid) {
                        peak.fetch_max(kib, Ordering::Relaxed);
                        samples.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(every);
                }
            })
        };
        Self {
            stop,
            peak,
            samples,
            thread,
        }
    }

    /// (peak KiB, samples)
    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        (
            self.peak.load(Ordering::Relaxed),
            self.samples.load(Ordering::Relaxed),
        )
    }
}

/// Streams the whole org's credential report once; prints its time, size, rows and the
/// server's RSS before and while it streamed.
async fn report(channel: Channel, args: &InventoryArgs, run: usize) -> Result<(), Error> {
    let mut client = ServiceAccountAdminClient::new(channel).max_decoding_message_size(64 << 20);
    // The baseline: the largest of the readings over the half second before the request.
    let baseline = match args.server_pid {
        Some(pid) => {
            let sampler = RssSampler::start(pid, args.sample_every);
            tokio::time::sleep(Duration::from_millis(500)).await;
            Some(sampler.finish().0)
        }
        None => None,
    };
    let sampler = args
        .server_pid
        .map(|pid| RssSampler::start(pid, args.sample_every));
    let from_ms = epoch_ms();
    let started = Instant::now();
    let mut stream = client
        .export_credential_report(authed(
            &args.jwt,
            pb::ExportCredentialReportRequest::default(),
        ))
        .await?
        .into_inner();
    let mut first_chunk = None;
    let (mut bytes, mut lines, mut chunks) = (0usize, 0usize, 0usize);
    let mut after_cr = false;
    let mut largest_chunk = 0usize;
    while let Some(message) = stream.message().await? {
        first_chunk.get_or_insert_with(|| started.elapsed());
        chunks += 1;
        bytes += message.chunk.len();
        largest_chunk = largest_chunk.max(message.chunk.len());
        for &b in &message.chunk {
            if after_cr && b == b'\n' {
                lines += 1;
            }
            after_cr = b == b'\r';
        }
    }
    let took = started.elapsed();
    let to_ms = epoch_ms();
    let (peak, samples) = sampler.map(RssSampler::finish).unwrap_or_default();
    let after = args.server_pid.map(rss_kib).transpose()?;
    let mut line = format!(
        "{{\"label\":\"report\",\"backend\":\"{}\",\"run\":{run},\"seconds\":{:.3},\"first_chunk_ms\":{:.1},\"bytes\":{bytes},\"lines\":{lines},\"rows\":{},\"chunks\":{chunks},\"largest_chunk\":{largest_chunk}",
        args.backend,
        took.as_secs_f64(),
        first_chunk.unwrap_or_default().as_secs_f64() * 1000.0,
        lines.saturating_sub(1),
    );
    if let (Some(baseline), Some(after)) = (baseline, after) {
        write!(
            line,
            ",\"rss_samples\":{samples},\"rss_baseline_kib\":{baseline},\"rss_peak_kib\":{peak},\"rss_after_kib\":{after},\"rss_growth_mib\":{:.2}",
            peak.saturating_sub(baseline) as f64 / 1024.0
        )?;
    }
    write!(line, ",\"from_ms\":{from_ms},\"to_ms\":{to_ms}}}")?;
    println!("{line}");
    Ok(())
}

#[derive(clap::Args)]
pub struct SqlitePlansArgs {
    /// The SQLite database file.
    #[arg(long)]
    db: std::path::PathBuf,
    /// Statements, one a line: a label, a tab, the series, a tab, the SQL (with `?N` placeholders).
    #[arg(long)]
    statements: std::path::PathBuf,
    /// Run ANALYZE first (statistics as `sqlite_stat1` and `sqlite_stat4`).
    #[arg(long)]
    analyze: bool,
}

/// `EXPLAIN QUERY PLAN` of each statement through the SQLite library the server links (the
/// same version and compile options, placeholders left unbound as when the server prepares
/// them), printed as an indented tree.
pub async fn sqlite_plans(args: SqlitePlansArgs) -> Result<(), Error> {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};
    let mut options =
        sea_orm::ConnectOptions::new(format!("sqlite://{}?mode=rw", args.db.display()));
    options.max_connections(1).sqlx_logging(false);
    let db = sea_orm::Database::connect(options).await?;
    let version = db
        .query_one_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT sqlite_version() AS v",
        ))
        .await?
        .ok_or("no version")?
        .try_get::<String>("", "v")?;
    if args.analyze {
        db.execute_unprepared("ANALYZE").await?;
    }
    for line in std::fs::read_to_string(&args.statements)?.lines() {
        let mut fields = line.splitn(3, '\t');
        let (Some(label), Some(series), Some(sql)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let rows = db
            .query_all_raw(Statement::from_string(
                DbBackend::Sqlite,
                format!("EXPLAIN QUERY PLAN {sql}"),
            ))
            .await?;
        println!("==== {label} ({series}), SQLite {version}");
        println!(
            "… WHERE {}",
            sql.split_once(" WHERE ").map_or(sql, |(_, w)| w)
        );
        let mut depth = std::collections::HashMap::new();
        for row in rows {
            let id: i64 = row.try_get("", "id")?;
            let parent: i64 = row.try_get("", "parent")?;
            let detail: String = row.try_get("", "detail")?;
            let level = depth.get(&parent).map_or(0, |d| d + 1);
            depth.insert(id, level);
            println!("{}{detail}", "  ".repeat(level));
        }
        println!();
    }
    Ok(())
}
