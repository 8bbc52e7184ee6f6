//! A decision from the Rust client's cache (`IntrospectionClient::with_cache`): the control
//! plane runs in this process (SQLite), the client's cache is warmed through it, and criterion
//! times `check` on the cached token: an allowed request, a denied one (missing scope), and one
//! from a client address checked against the token's networks. docs/benchmarks.md reports it.
//!
//!   cargo bench -p service-accounts-loadgen --bench cached_decision
//!
//! Also prints the allocations each cached decision makes (a verdict's identity shares the
//! cached record; a denial lists its reasons), and the cache's memory per token: the heap the
//! process holds with the cache full, less what it holds once the client is dropped, less the
//! same for a client with one cached token (its connection and invalidation slots); the
//! server's own cache is off, and its last-used times are flushed first, so that only the
//! client's entries count. For 10 accounts of 2,000 tokens, and 5,000 accounts of one.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use service_accounts_api::config::{ServeConfig, sqlite_url};
use service_accounts_api::dev_key::DevKey;
use service_accounts_api::pb;
use service_accounts_api::pb::service_account_admin_client::ServiceAccountAdminClient;
use service_accounts_client::{CacheOptions, IntrospectionClient, Requirement, Verdict};
use tonic::Request;
use tonic::transport::Channel;

#[global_allocator]
static ALLOCATOR: counting::Counting = counting::Counting;

/// Counts the bytes the process holds on the heap, and each thread's allocations.
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::sync::atomic::{AtomicIsize, Ordering};

    pub static HELD: AtomicIsize = AtomicIsize::new(0);

    thread_local! {
        static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    }

    pub struct Counting;

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            HELD.fetch_sub(layout.size() as isize, Ordering::Relaxed);
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
            HELD.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    pub fn held() -> isize {
        HELD.load(Ordering::Relaxed)
    }

    /// Allocations (and reallocations) made by this thread so far.
    pub fn allocations() -> u64 {
        ALLOCATIONS.with(Cell::get)
    }
}

struct ControlPlane {
    url: String,
    jwt: String,
    _data: tempfile::TempDir,
}

async fn control_plane(tokens_per_account: u32) -> ControlPlane {
    let data = tempfile::tempdir().unwrap();
    let mut config = ServeConfig::for_tests(data.path(), &sqlite_url(&data.path().join("b.db")));
    config.introspection_cache_capacity = 0;
    config.last_used_flush_interval = Duration::from_millis(200);
    config.max_tokens_per_service_account = tokens_per_account;
    config.max_service_accounts_per_org = 100_000;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(service_accounts_api::server::serve(
        config,
        listener,
        std::future::pending(),
    ));
    let key = loop {
        match DevKey::load_existing(data.path()) {
            Ok(key) => break key,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let jwt = key
        .mint(
            "acme",
            "bench",
            &["org_admin".into()],
            Duration::from_secs(3600),
        )
        .unwrap();
    // SERVING: an admin call answers.
    loop {
        if let Ok(channel) = Channel::from_shared(url.clone()).unwrap().connect().await
            && admin(channel, &jwt).await.is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ControlPlane {
        url,
        jwt,
        _data: data,
    }
}

async fn admin(channel: Channel, jwt: &str) -> Result<(), tonic::Status> {
    ServiceAccountAdminClient::new(channel)
        .list_service_accounts(authed(pb::ListServiceAccountsRequest::default(), jwt))
        .await
        .map(drop)
}

fn authed<T>(message: T, jwt: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {jwt}").parse().unwrap());
    request
}

/// An account with `count` tokens; returns their secrets.
async fn tokens(plane: &ControlPlane, count: usize, cidrs: &[&str]) -> Vec<String> {
    let channel = Channel::from_shared(plane.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut admin = ServiceAccountAdminClient::new(channel);
    let account = admin
        .create_service_account(authed(
            pb::CreateServiceAccountRequest {
                validate_only: false,
                labels: Default::default(),
                display_name: format!("Bench {}", rand_suffix()),
                description: String::new(),
                app_access: Some(pb::AppAccess {
                    all_apps: false,
                    app_ids: vec!["checkout-ios".into(), "checkout-android".into()],
                }),
            },
            &plane.jwt,
        ))
        .await
        .unwrap()
        .into_inner()
        .service_account
        .unwrap()
        .service_account_id;
    let mut secrets = Vec::with_capacity(count);
    for i in 0..count {
        let created = admin
            .create_token(authed(
                pb::CreateTokenRequest {
                    validate_only: false,
                    service_account_id: account.clone(),
                    display_name: format!("token {i}"),
                    scopes: vec!["mcp:tools:call".into(), "mcp:read".into()],
                    expire_time: None,
                    allowed_cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
                },
                &plane.jwt,
            ))
            .await
            .unwrap()
            .into_inner();
        secrets.push(created.secret);
    }
    secrets
}

/// Account names are unique in an org.
fn rand_suffix() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

async fn warmed(plane: &ControlPlane, capacity: usize, secrets: &[String]) -> IntrospectionClient {
    let client = IntrospectionClient::connect_lazy(plane.url.clone())
        .unwrap()
        .with_cache(CacheOptions::new(capacity));
    let requirement = Requirement::org("acme");
    // Until the feed is up, answers are not kept: check until every token is cached.
    while client.cached_tokens() < secrets.len() {
        for secret in secrets {
            client.check(secret, &requirement, None).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client
}

fn cached_decision(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (client, open, restricted) = runtime.block_on(async {
        let plane = control_plane(10).await;
        let open = tokens(&plane, 1, &[]).await.remove(0);
        let restricted = tokens(&plane, 1, &["10.0.0.0/8", "2001:db8::/32"])
            .await
            .remove(0);
        let client = warmed(&plane, 100, &[open.clone(), restricted.clone()]).await;
        (client, open, restricted)
    });
    let read = Requirement::org("acme")
        .app("checkout-ios")
        .scope("mcp:read");
    let write = Requirement::org("acme")
        .app("checkout-ios")
        .scope("mcp:write");
    let mut group = c.benchmark_group("cached decision");
    group.bench_function("allowed", |b| {
        b.to_async(&runtime).iter(|| async {
            let verdict = client.check(black_box(&open), &read, None).await.unwrap();
            assert!(matches!(verdict, Verdict::Allowed(_)));
            verdict
        })
    });
    group.bench_function("denied (missing scope)", |b| {
        b.to_async(&runtime).iter(|| async {
            let verdict = client.check(black_box(&open), &write, None).await.unwrap();
            assert!(matches!(verdict, Verdict::Denied { .. }));
            verdict
        })
    });
    let inside = Some("10.1.2.3".parse().unwrap());
    group.bench_function("allowed, client address checked", |b| {
        b.to_async(&runtime).iter(|| async {
            let verdict = client
                .check(black_box(&restricted), &read, inside)
                .await
                .unwrap();
            assert!(matches!(verdict, Verdict::Allowed(_)));
            verdict
        })
    });
    group.finish();

    // Allocations per decision: `block_on` runs the checks on this thread, and a cached one
    // never waits, so this thread's count is theirs.
    for (label, token, requirement, ip) in [
        ("allowed", &open, &read, None),
        ("denied (missing scope)", &open, &write, None),
        (
            "allowed, client address checked",
            &restricted,
            &read,
            inside,
        ),
    ] {
        let checks = 10_000;
        let before = counting::allocations();
        runtime.block_on(async {
            for _ in 0..checks {
                black_box(client.check(token, requirement, ip).await.unwrap());
            }
        });
        let per_check = (counting::allocations() - before) as f64 / checks as f64;
        println!("cached decision, {label}: {per_check:.2} allocations per decision");
    }

    // Memory per cached token: many tokens of a few accounts (whose data the entries share),
    // and one token per account (nothing to share).
    for (accounts, per_account) in [(10, 2_000), (5_000, 1)] {
        let per_entry = runtime.block_on(memory_per_entry(accounts, per_account));
        println!(
            "client cache: {per_entry:.0} bytes per cached token \
             ({accounts} accounts x {per_account} tokens)"
        );
    }
}

async fn memory_per_entry(accounts: usize, per_account: usize) -> f64 {
    let plane = control_plane(per_account as u32).await;
    let mut secrets = Vec::with_capacity(accounts * per_account);
    for chunk in (0..accounts).collect::<Vec<_>>().chunks(10) {
        let batches: Vec<_> = chunk
            .iter()
            .map(|_| {
                let (url, jwt) = (plane.url.clone(), plane.jwt.clone());
                tokio::spawn(async move {
                    let plane = ControlPlane {
                        url,
                        jwt,
                        _data: tempfile::tempdir().unwrap(),
                    };
                    tokens(&plane, per_account, &[]).await
                })
            })
            .collect();
        for batch in batches {
            secrets.extend(batch.await.unwrap());
        }
    }
    let total = secrets.len();
    let requirement = Requirement::org("acme");
    // What a client holds: the heap with it, less the heap once it is dropped. The control
    // plane in this process keeps last-used times until its next flush: wait for it each time.
    let settle = Duration::from_secs(1);
    let held_by = async |secrets: &[String]| -> (isize, usize) {
        let client = warmed(&plane, total, &secrets[..1]).await;
        for secret in secrets {
            client.check(secret, &requirement, None).await.unwrap();
        }
        let cached = client.cached_tokens();
        tokio::time::sleep(settle).await;
        let full = counting::held();
        drop(client);
        tokio::time::sleep(settle).await;
        (full - counting::held(), cached)
    };
    // A client's fixed cost (its connection, the invalidation slots) is not an entry's.
    let (fixed, _) = held_by(&secrets[..1]).await;
    let (held, cached) = held_by(&secrets).await;
    assert!(cached >= total * 9 / 10, "only {cached} of {total} cached");
    (held - fixed) as f64 / (cached - 1) as f64
}

criterion_group!(benches, cached_decision);
criterion_main!(benches);
