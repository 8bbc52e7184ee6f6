//! `loadgen listeners` (bench/capacity.sh): extra PostgreSQL connections that `LISTEN` on the
//! service's change channel and read (and discard) every notification, as the listeners of other
//! replicas would. Optionally each also sends itself a heartbeat, as every replica does.
//!
//! Prints one JSON line once every listener is subscribed, then runs until SIGTERM or SIGINT
//! and prints a second line: notifications received (the least and most by one listener, the
//! total), errors, and heartbeats sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sea_orm::sqlx;
use sea_orm::sqlx::postgres::{PgListener, PgPoolOptions};

#[derive(clap::Args)]
pub struct ListenersArgs {
    /// The PostgreSQL database the service's replicas use.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Listening connections to open.
    #[arg(long)]
    count: usize,
    #[arg(long, default_value = "service_accounts_changes")]
    channel: String,
    /// The listeners' `application_name` (the service's own is `service-accounts-listener`).
    #[arg(long, default_value = "loadgen-listener")]
    application_name: String,
    /// Connections opened at once while starting.
    #[arg(long, default_value_t = 8)]
    connect_concurrency: usize,
    /// Also send, for each listener, a heartbeat notification this often (each replica sends
    /// one every 250 ms); unset: the listeners only listen.
    #[arg(long, value_parser = humantime::parse_duration)]
    heartbeat_every: Option<Duration>,
    /// Connections the heartbeats share (a pool besides the listeners).
    #[arg(long, default_value_t = 4)]
    heartbeat_connections: u32,
}

pub async fn listeners(args: ListenersArgs) -> Result<(), Box<dyn std::error::Error>> {
    let separator = if args.database_url.contains('?') {
        '&'
    } else {
        '?'
    };
    let url = format!(
        "{}{separator}application_name={}",
        args.database_url, args.application_name
    );
    let started = Instant::now();
    let received: Arc<Vec<AtomicU64>> = Arc::new((0..args.count).map(|_| 0.into()).collect());
    let errors = Arc::new(AtomicU64::new(0));
    let slots = Arc::new(tokio::sync::Semaphore::new(args.connect_concurrency.max(1)));
    let mut connecting = tokio::task::JoinSet::new();
    for i in 0..args.count {
        let (url, channel, slots) = (url.clone(), args.channel.clone(), slots.clone());
        connecting.spawn(async move {
            let _slot = slots
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let mut listener = PgListener::connect(&url).await?;
            listener.listen(&channel).await?;
            Ok::<_, sqlx::Error>((i, listener))
        });
    }
    let mut readers = tokio::task::JoinSet::new();
    while let Some(joined) = connecting.join_next().await {
        let (i, mut listener) = joined??;
        let (received, errors) = (received.clone(), errors.clone());
        readers.spawn(async move {
            loop {
                // `recv` reconnects (and listens again) after a lost connection.
                match listener.recv().await {
                    Ok(_) => {
                        received[i].fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
    }
    let connect_ms = started.elapsed().as_millis();

    let heartbeats = Arc::new(AtomicU64::new(0));
    let heartbeat_errors = Arc::new(AtomicU64::new(0));
    if let Some(every) = args.heartbeat_every.filter(|_| args.count > 0) {
        let pool = PgPoolOptions::new()
            .max_connections(args.heartbeat_connections.max(1))
            .connect(&url)
            .await?;
        for i in 0..args.count {
            let (pool, channel) = (pool.clone(), args.channel.clone());
            let (sent, failed) = (heartbeats.clone(), heartbeat_errors.clone());
            // Spread the listeners' heartbeats over the interval, as independent replicas'.
            let offset = every.mul_f64(i as f64 / args.count as f64);
            readers.spawn(async move {
                tokio::time::sleep(offset).await;
                let mut pace = tokio::time::interval(every);
                pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let payload = format!("heartbeat:loadgen-{}-{i}", std::process::id());
                loop {
                    pace.tick().await;
                    let result = sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(&channel)
                        .bind(&payload)
                        .execute(&pool)
                        .await;
                    match result {
                        Ok(_) => sent.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
    }
    println!(
        "{{\"listeners\":{},\"connect_ms\":{connect_ms},\"heartbeat_every_ms\":{}}}",
        args.count,
        args.heartbeat_every.map_or(0, |d| d.as_millis())
    );

    let listening = Instant::now();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let counts: Vec<u64> = received.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    println!(
        "{{\"listeners\":{},\"seconds\":{:.1},\"received_min\":{},\"received_max\":{},\"received_total\":{},\"errors\":{},\"heartbeats_sent\":{},\"heartbeat_errors\":{}}}",
        args.count,
        listening.elapsed().as_secs_f64(),
        counts.iter().min().copied().unwrap_or(0),
        counts.iter().max().copied().unwrap_or(0),
        counts.iter().sum::<u64>(),
        errors.load(Ordering::Relaxed),
        heartbeats.load(Ordering::Relaxed),
        heartbeat_errors.load(Ordering::Relaxed),
    );
    readers.abort_all();
    Ok(())
}
