//! `IntrospectionClient::with_cache`: decisions at the caller, kept coherent by `WatchChanges`.
//! The client reaches its replica through a test proxy, so a test can freeze the link (then
//! only the cache can answer) or cut it.

use std::time::{Duration, Instant};

use service_accounts_api::pb;
use service_accounts_client::{
    CacheOptions, DenialReason, InactiveReason, IntrospectionClient, Requirement, Verdict,
};

use crate::coherence::CONVERGENCE_BOUND;
use crate::on_both_backends;
use crate::support::*;

/// A caching client of `replica`, through a proxy the test controls.
async fn cached_client(replica: &TestApp, options: CacheOptions) -> (IntrospectionClient, Proxy) {
    let proxy = Proxy::to(replica.addr).await;
    let client = IntrospectionClient::connect_lazy(format!("http://{}", proxy.addr))
        .unwrap()
        .with_deadline(Duration::from_millis(500))
        .with_cache(options);
    (client, proxy)
}

fn acme() -> Requirement {
    Requirement::org("org-a").scope("mcp:tools:call")
}

async fn check(client: &IntrospectionClient, secret: &str) -> Verdict {
    client
        .check(secret, &acme(), None)
        .await
        .expect("a verdict")
}

/// Checks until the token's answer is cached (the feed is up and a fill was kept).
async fn warm(client: &IntrospectionClient, secret: &str) {
    Wait::new("the client caches the answer")
        .within(CONVERGENCE_BOUND)
        .until(async || {
            assert!(matches!(check(client, secret).await, Verdict::Allowed(_)));
            client.cached_tokens() > 0
        })
        .await;
}

/// Freezes the link: whatever the client answers now comes from its cache.
async fn cache_only<T>(proxy: &Proxy, probe: impl AsyncFnOnce() -> T) -> T {
    proxy.freeze();
    let started = Instant::now();
    let answer = probe().await;
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "answered by the control plane, not the cache"
    );
    proxy.thaw();
    answer
}

async fn a_revocation_reaches_a_cached_allow_and_no_fill_brings_it_back(backend: Backend) {
    let Some(a) = spawn(backend).await else {
        return;
    };
    // On PostgreSQL the client watches another replica than the one that revokes.
    let b = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(a.replica().await),
    };
    let watched = b.as_ref().unwrap_or(&a);
    let jwt = a.admin_jwt("org-a");
    let account = create_account(&a, &jwt, "Bot", None)
        .await
        .service_account_id;
    let (token, secret) = create_token(&a, &jwt, &account, &["mcp:tools:call"]).await;
    let (client, proxy) = cached_client(watched, CacheOptions::new(1000)).await;
    warm(&client, &secret).await;
    let allowed = cache_only(&proxy, async || check(&client, &secret).await).await;
    assert!(
        matches!(allowed, Verdict::Allowed(identity) if identity.token_id().to_string() == token.token_id)
    );

    // Hammer the cached token while it is revoked on A.
    let hammering = {
        let (client, secret) = (client.clone(), secret.clone());
        tokio::spawn(async move {
            let mut calls = Vec::new();
            let until = Instant::now() + Duration::from_secs(1);
            while Instant::now() < until {
                let started = Instant::now();
                let allowed = matches!(check(&client, &secret).await, Verdict::Allowed(_));
                calls.push((started, allowed));
                // A cached check never waits, so this loop would otherwise keep its worker from
                // the server and the revocation in this process.
                tokio::task::yield_now().await;
            }
            calls
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    revoke(&a, &jwt, &account, &token.token_id).await;
    let revoked_at = Instant::now();
    let calls = hammering.await.unwrap();
    let last_allowed = calls
        .iter()
        .filter(|(_, allowed)| *allowed)
        .map(|(started, _)| *started)
        .max()
        .unwrap();
    let late = last_allowed.saturating_duration_since(revoked_at);
    eprintln!(
        "{} cached checks; the last allowed one started {:?} before and {late:?} after the \
         revoke returned",
        calls.len(),
        revoked_at.saturating_duration_since(last_allowed),
    );
    assert!(
        late < CONVERGENCE_BOUND,
        "a cached allow outlived the revocation by {late:?}"
    );
    assert!(
        calls
            .iter()
            .filter(|(started, _)| *started > revoked_at)
            .count()
            > 50,
        "the cache was hammered after the revocation"
    );
    // Settled: nothing cached brings it back, from the cache or from a fill.
    for _ in 0..200 {
        assert_eq!(
            check(&client, &secret).await,
            Verdict::Inactive(InactiveReason::Revoked)
        );
    }
    let revoked = cache_only(&proxy, async || check(&client, &secret).await).await;
    assert_eq!(
        revoked,
        Verdict::Inactive(InactiveReason::Revoked),
        "kept as final"
    );
}

on_both_backends!(a_revocation_reaches_a_cached_allow_and_no_fill_brings_it_back);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_control_plane_unreachable_cached_allows_last_until_max_staleness_then_fail() {
    let app = spawn(Backend::Sqlite).await.unwrap();
    let jwt = app.admin_jwt("org-a");
    let account = create_account(&app, &jwt, "Bot", None)
        .await
        .service_account_id;
    let (_, secret) = create_token(&app, &jwt, &account, &["mcp:tools:call"]).await;
    let staleness = Duration::from_millis(1500);
    let (client, proxy) =
        cached_client(&app, CacheOptions::new(100).max_staleness(staleness)).await;
    warm(&client, &secret).await;

    // Half-open: nothing moves, nothing closes. Allowed from the cache...
    proxy.freeze();
    let frozen_at = Instant::now();
    assert!(matches!(check(&client, &secret).await, Verdict::Allowed(_)));
    // ...then, past the staleness bound, never allowed: the control plane cannot answer.
    tokio::time::sleep(staleness).await;
    let result = client.check(&secret, &acme(), None).await;
    assert!(
        matches!(result, Err(service_accounts_client::Error::Unavailable(_))),
        "{:?} after {:?} without a message",
        result,
        frozen_at.elapsed()
    );
    proxy.thaw();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_stops_the_cache_until_a_new_feed_resets_it_then_it_fills_again() {
    let app = spawn(Backend::Sqlite).await.unwrap();
    let jwt = app.admin_jwt("org-a");
    let account = create_account(&app, &jwt, "Bot", None)
        .await
        .service_account_id;
    let (_, secret) = create_token(&app, &jwt, &account, &["mcp:tools:call"]).await;
    let (client, proxy) = cached_client(&app, CacheOptions::new(100)).await;
    warm(&client, &secret).await;

    proxy.cut();
    // The feed is gone: no answer from the cache, and the control plane is unreachable.
    Wait::new("the client notices the feed is gone and stops using its cache")
        .within(CONVERGENCE_BOUND)
        .until(async || client.check(&secret, &acme(), None).await.is_err())
        .await;
    for _ in 0..20 {
        assert!(client.check(&secret, &acme(), None).await.is_err());
    }
    proxy.restore();
    Wait::new("a new feed: answers are cached again")
        .within(CONVERGENCE_BOUND * 2)
        .until(async || {
            client.check(&secret, &acme(), None).await.is_ok() && {
                proxy.freeze();
                let cached = tokio::time::timeout(
                    Duration::from_millis(200),
                    client.check(&secret, &acme(), None),
                )
                .await;
                proxy.thaw();
                matches!(cached, Ok(Ok(Verdict::Allowed(_))))
            }
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_token_stops_being_allowed_when_it_expires() {
    let app = spawn(Backend::Sqlite).await.unwrap();
    let jwt = app.admin_jwt("org-a");
    let account = create_account(&app, &jwt, "Bot", None)
        .await
        .service_account_id;
    let expires = std::time::SystemTime::now() + Duration::from_secs(2);
    let secret = app
        .admin()
        .await
        .create_token(authed(
            pb::CreateTokenRequest {
                validate_only: false,
                service_account_id: account.clone(),
                display_name: "short".into(),
                scopes: vec!["mcp:tools:call".into()],
                expire_time: Some(expires.into()),
                allowed_cidrs: Vec::new(),
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner()
        .secret;
    let (client, proxy) = cached_client(
        &app,
        CacheOptions::new(100).max_staleness(Duration::from_secs(30)),
    )
    .await;
    warm(&client, &secret).await;
    // Only the cache answers from here on: it alone must notice the expiry.
    proxy.freeze();
    let mut last_allowed = None;
    loop {
        match check(&client, &secret).await {
            Verdict::Allowed(_) => last_allowed = Some(std::time::SystemTime::now()),
            Verdict::Inactive(InactiveReason::Expired) => break,
            other => panic!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused_at = std::time::SystemTime::now();
    assert!(last_allowed.unwrap() < expires, "allowed after its expiry");
    let late = refused_at.duration_since(expires).unwrap_or_default();
    assert!(
        late < Duration::from_millis(200),
        "refused {late:?} after expiry"
    );
    proxy.thaw();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_changes_and_rotations_reach_caller_caches() {
    let app = spawn(Backend::Sqlite).await.unwrap();
    let jwt = app.admin_jwt("org-a");
    let account = create_account(&app, &jwt, "Bot", None)
        .await
        .service_account_id;
    let created = app
        .admin()
        .await
        .create_token(authed(
            pb::CreateTokenRequest {
                validate_only: false,
                service_account_id: account.clone(),
                display_name: "office".into(),
                scopes: vec!["mcp:tools:call".into()],
                expire_time: None,
                allowed_cidrs: vec!["10.0.0.0/8".into()],
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner();
    let (token, secret) = (created.token.unwrap(), created.secret);
    let (client, proxy) = cached_client(&app, CacheOptions::new(100)).await;
    let from = |ip: &str| Some(ip.parse().unwrap());
    Wait::new("the client caches the answer")
        .within(CONVERGENCE_BOUND)
        .until(async || {
            client
                .check(&secret, &acme(), from("10.1.2.3"))
                .await
                .is_ok()
                && client.cached_tokens() > 0
        })
        .await;
    // The networks are decided at the caller, from the cache.
    let (inside, outside) = cache_only(&proxy, async || {
        (
            client
                .check(&secret, &acme(), from("10.1.2.3"))
                .await
                .unwrap(),
            client
                .check(&secret, &acme(), from("192.0.2.7"))
                .await
                .unwrap(),
        )
    })
    .await;
    assert!(matches!(inside, Verdict::Allowed(_)));
    assert!(
        matches!(&outside, Verdict::Denied { reasons, .. } if reasons == &[DenialReason::ClientIpNotAllowed]),
        "{outside:?}"
    );

    app.admin()
        .await
        .update_token(authed(
            pb::UpdateTokenRequest {
                validate_only: false,
                token: Some(pb::Token {
                    service_account_id: account.clone(),
                    token_id: token.token_id.clone(),
                    allowed_cidrs: vec!["192.0.2.0/24".into()],
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["allowed_cidrs".into()],
                }),
            },
            &jwt,
        ))
        .await
        .unwrap();
    Wait::new("the new networks reach the cache")
        .within(CONVERGENCE_BOUND)
        .until(async || {
            matches!(
                client.check(&secret, &acme(), from("10.1.2.3")).await,
                Ok(Verdict::Denied { .. })
            )
        })
        .await;
    assert!(matches!(
        client.check(&secret, &acme(), from("192.0.2.7")).await,
        Ok(Verdict::Allowed(_))
    ));

    // Rotated with no grace: the old token ends at once, the new one works.
    let rotated = app
        .admin()
        .await
        .rotate_token(authed(
            pb::RotateTokenRequest {
                validate_only: false,
                service_account_id: account.clone(),
                token_id: token.token_id.clone(),
                grace_period: None,
                expire_time: None,
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner();
    Wait::new("the rotation reaches the cache")
        .within(CONVERGENCE_BOUND)
        .until(async || {
            matches!(
                client.check(&secret, &acme(), from("192.0.2.7")).await,
                Ok(Verdict::Inactive(InactiveReason::Revoked))
            )
        })
        .await;
    assert!(matches!(
        client
            .check(&rotated.secret, &acme(), from("192.0.2.7"))
            .await,
        Ok(Verdict::Allowed(_))
    ));
}

/// The answer to a check is held back on its way while its token is revoked: it is the true
/// answer of its moment (allowed), and once the invalidation behind it has arrived, the token is
/// never allowed again, from the cache or otherwise. The two arrive together; whether the client
/// handles the invalidation or the answer first is the scheduler's choice, and the rule must hold
/// either way (the unit tests in `crates/client/src/cache/tests.rs` take each order in turn).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_held_back_while_its_token_is_revoked_is_not_served_after_the_invalidation() {
    let app = spawn(Backend::Sqlite).await.unwrap();
    let jwt = app.admin_jwt("org-a");
    let account = create_account(&app, &jwt, "Bot", None)
        .await
        .service_account_id;
    let (_, warmer) = create_token(&app, &jwt, &account, &["mcp:tools:call"]).await;
    let (token, secret) = create_token(&app, &jwt, &account, &["mcp:tools:call"]).await;
    let (client, proxy) = cached_client(
        &app,
        CacheOptions::new(100).max_staleness(Duration::from_secs(30)),
    )
    .await;
    let client = client.with_deadline(Duration::from_secs(5));
    // The feed is up (another token of the account is cached); this one is not cached yet.
    warm(&client, &warmer).await;

    proxy.delay_answers(Duration::from_millis(400));
    let held = tokio::spawn({
        let (client, secret) = (client.clone(), secret.clone());
        async move { check(&client, &secret).await }
    });
    // The request has reached the server and its answer is waiting in the proxy.
    tokio::time::sleep(Duration::from_millis(150)).await;
    revoke(&app, &jwt, &account, &token.token_id).await;
    assert!(
        matches!(held.await.unwrap(), Verdict::Allowed(_)),
        "the held answer was computed before the revoke"
    );
    proxy.delay_answers(Duration::ZERO);
    // Everything the server sent after that answer, the invalidation among it, has arrived
    // within one more hold.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for _ in 0..100 {
        assert_eq!(
            check(&client, &secret).await,
            Verdict::Inactive(InactiveReason::Revoked)
        );
    }
}
