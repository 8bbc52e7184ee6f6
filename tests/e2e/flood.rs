//! A flood of made-up, well-formed tokens (anyone can compute the checksum) against a replica
//! whose database pool is tiny: legitimate tokens introspected for the first time still succeed,
//! promptly. Run with `--nocapture` to see their latencies; with `FLOOD_COMPARE=1` also without
//! the lookup bound (slow: each legitimate lookup then queues behind the flood for the pool).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use service_accounts_api::pb;
use service_accounts_api::pb::token_introspection_client::TokenIntrospectionClient;
use service_accounts_domain::token::TokenSecret;

use crate::support::*;

const FLOOD_CONNECTIONS: usize = 4;
const FLOOD_STREAMS_PER_CONNECTION: usize = 32;
const LEGITIMATE_TOKENS: usize = 30;

struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    tasks: tokio::task::JoinSet<()>,
}

impl Flood {
    async fn start(app: &TestApp) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..FLOOD_CONNECTIONS {
            let channel = app.channel().await;
            for _ in 0..FLOOD_STREAMS_PER_CONNECTION {
                let (mut client, stop, sent) = (
                    TokenIntrospectionClient::new(channel.clone()),
                    stop.clone(),
                    sent.clone(),
                );
                tasks.spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let made_up = TokenSecret::generate().expose().to_owned();
                        let _ = client
                            .introspect(pb::IntrospectRequest {
                                token: made_up,
                                ..Default::default()
                            })
                            .await;
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        }
        Self { stop, sent, tasks }
    }

    async fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        while self.tasks.join_next().await.is_some() {}
        self.sent.load(Ordering::Relaxed)
    }
}

/// Introspects fresh tokens one after another while the flood runs; every one must be active.
async fn legitimate_latencies(max_lookups: u32) -> Option<(Vec<Duration>, u64, Duration)> {
    let mut app = unstarted(Setup::new(Backend::Postgres)).await?;
    app.options.storage.db_max_connections = 2;
    app.options.introspection_max_lookups = max_lookups;
    app.start().await;
    let jwt = app.admin_jwt("org-a");
    let id = create_account(&app, &jwt, "Bot", None)
        .await
        .service_account_id;
    let mut secrets = Vec::new();
    for _ in 0..LEGITIMATE_TOKENS {
        secrets.push(create_token(&app, &jwt, &id, &["mcp:tools:call"]).await.1);
    }
    let mut client = app.introspection().await;
    let flood = Flood::start(&app).await;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await; // let the flood fill the queues
    let mut latencies = Vec::new();
    for secret in secrets {
        let began = Instant::now();
        let answer = client
            .introspect(pb::IntrospectRequest {
                token: secret,
                ..Default::default()
            })
            .await
            .expect("a legitimate introspection succeeds during the flood")
            .into_inner();
        latencies.push(began.elapsed());
        assert!(answer.active, "{answer:?}");
    }
    let flooded_for = started.elapsed();
    let sent = flood.stop().await;
    latencies.sort();
    Some((latencies, sent, flooded_for))
}

fn report(label: &str, (latencies, sent, flooded_for): &(Vec<Duration>, u64, Duration)) {
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    eprintln!(
        "{label}: {} first introspections during a flood of {sent} made-up tokens in {:.1} s: \
         p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        flooded_for.as_secs_f64(),
        at(0.5),
        at(0.99),
        latencies.last().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legitimate_first_introspections_succeed_during_a_flood_of_made_up_tokens() {
    if postgres_admin_url().is_none() {
        return;
    }
    // One lookup per lane: issued tokens never wait behind made-up ones, and one of the two
    // connections stays free for other work.
    let bounded = legitimate_latencies(1).await.unwrap();
    report("bounded (1 lookup per lane, pool 2)", &bounded);
    assert!(bounded.1 > 0, "the flood ran");
    if std::env::var_os("FLOOD_COMPARE").is_some() {
        // Lookups of made-up tokens may take the whole pool.
        let unbounded = legitimate_latencies(64).await.unwrap();
        report("unbounded (pool 2)", &unbounded);
    }
}
