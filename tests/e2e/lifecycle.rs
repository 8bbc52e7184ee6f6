//! Shutdown drains in-flight calls and loses no last-used update; health follows storage.

use std::time::{Duration, Instant};

use service_accounts_api::pb;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_calls_and_flushes_last_used() {
    let Some(admin_url) = postgres_admin_url() else {
        return;
    };
    let direct = spawn(Backend::Postgres).await.unwrap();
    let jwt = direct.admin_jwt("org-a");
    let id = create_account(&direct, &jwt, "Bot", None)
        .await
        .service_account_id;
    let (_, secret) = create_token(&direct, &jwt, &id, &["mcp:tools:call"]).await;

    // A replica whose every storage round trip takes 300 ms, with no cache: calls stay in flight.
    let (_proxy, slow_url) =
        Proxy::in_front_of(&admin_url, &direct.database.url, Duration::from_millis(300)).await;
    let mut replica = direct.unstarted_replica_on(&slow_url);
    replica.options.introspection_cache_capacity = 0;
    replica.options.last_used_flush_interval = Duration::from_secs(3600);
    replica.start().await;

    let mut calls = Vec::new();
    for _ in 0..16 {
        let mut client = replica.introspection().await;
        let secret = secret.clone();
        calls.push(tokio::spawn(async move {
            client
                .introspect(pb::IntrospectRequest {
                    token: secret,
                    ..Default::default()
                })
                .await
        }));
    }
    // Give the calls time to reach the server (each then waits 300 ms on storage).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = Instant::now();
    replica.stop().await.expect("clean shutdown");
    eprintln!(
        "shutdown with 16 calls in flight took {:?}",
        stopping.elapsed()
    );
    for call in calls {
        let response = call.await.unwrap().expect("an in-flight call was cut");
        assert!(response.into_inner().active);
    }

    // The replica's flush interval never came round: only the shutdown flush can have written.
    let tokens = direct
        .admin()
        .await
        .list_tokens(authed(
            pb::ListTokensRequest {
                service_account_id: id,
                ..Default::default()
            },
            &jwt,
        ))
        .await
        .unwrap()
        .into_inner()
        .tokens;
    assert!(
        tokens[0].last_used_time.is_some(),
        "last-used lost at shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_while_storage_is_unreachable() {
    let Some(admin_url) = postgres_admin_url() else {
        return;
    };
    let direct = spawn(Backend::Postgres).await.unwrap();
    let (proxy, url) = Proxy::in_front_of(&admin_url, &direct.database.url, Duration::ZERO).await;
    let replica = direct.replica_on(&url).await;
    assert_eq!(status(&replica).await, ServingStatus::Serving);
    proxy.cut();
    wait_for_status(&replica, ServingStatus::NotServing).await;
    proxy.restore();
    wait_for_status(&replica, ServingStatus::Serving).await;
}

async fn status(app: &TestApp) -> ServingStatus {
    app.health_client()
        .await
        .unwrap()
        .check(HealthCheckRequest {
            service: "embrace.serviceaccounts.v1.TokenIntrospection".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status()
}

async fn wait_for_status(app: &TestApp, wanted: ServingStatus) {
    Wait::new(format!("health becomes {wanted:?}"))
        .within(Duration::from_secs(15))
        .every(Duration::from_millis(50))
        .until(async || status(app).await == wanted)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_until_storage_is_ready() {
    let Some(admin_url) = postgres_admin_url() else {
        return;
    };
    let direct = spawn(Backend::Postgres).await.unwrap();
    // Every round trip to storage takes 200 ms, so start-up (ping, migration check) is slow.
    let (_proxy, url) =
        Proxy::in_front_of(&admin_url, &direct.database.url, Duration::from_millis(200)).await;
    let mut replica = direct.unstarted_replica_on(&url);
    replica.start_without_probe().await;

    // Every distinct status, in order, until SERVING.
    let mut seen = Vec::new();
    Wait::new("health becomes SERVING")
        .within(Duration::from_secs(30))
        .every(Duration::from_millis(20))
        .until(async || {
            if let Ok(status) = health_status(replica.addr, "").await
                && seen.last() != Some(&status)
            {
                seen.push(status);
            }
            match seen.last() {
                Some(ServingStatus::Serving) => Ok(()),
                _ => Err(seen.clone()),
            }
        })
        .await;
    assert_eq!(seen, [ServingStatus::NotServing, ServingStatus::Serving]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_on_a_fresh_database_all_come_up() {
    if postgres_admin_url().is_none() {
        return;
    }
    let first = unstarted(Setup::new(Backend::Postgres)).await.unwrap();
    let mut servers = Vec::new();
    for _ in 0..3 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let options = first.options.clone();
        servers.push((
            addr,
            tokio::spawn(service_accounts_api::server::serve(
                options,
                listener,
                std::future::pending(),
            )),
        ));
    }
    for (addr, server) in &servers {
        Wait::new(format!("the replica on {addr} is SERVING"))
            .within(Duration::from_secs(20))
            .every(Duration::from_millis(20))
            .until(async || {
                assert!(!server.is_finished(), "a replica failed to start");
                let Ok(channel) = connect(*addr).await else {
                    return false;
                };
                let status = tonic_health::pb::health_client::HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .status();
                status == ServingStatus::Serving
            })
            .await;
    }
    for (_, server) in servers {
        server.abort();
    }
}
