//! `WatchChanges`: every change that can alter an answer reaches watchers (on other replicas
//! too), resumes, resets, limits and the end of streams.

use std::time::Duration;

use service_accounts_api::pb;
use service_accounts_api::pb::watch_changes_response::Event;
use tonic::{Code, Streaming};

use crate::on_both_backends;
use crate::support::*;

/// Far beyond how long a message takes on a loaded CI machine; only keeps a failure finite.
const PATIENCE: Duration = Duration::from_secs(10);

/// A stream, once the replica accepts one (on PostgreSQL, once it hears the other replicas).
async fn watch(
    app: &TestApp,
    resume_token: &str,
    org: &str,
) -> Streaming<pb::WatchChangesResponse> {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let request = pb::WatchChangesRequest {
            resume_token: resume_token.into(),
            org_id: org.into(),
        };
        match app.introspection().await.watch_changes(request).await {
            Ok(stream) => return stream.into_inner(),
            Err(status)
                if status.code() == Code::Unavailable && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("WatchChanges: {status:?}"),
        }
    }
}

async fn next(stream: &mut Streaming<pb::WatchChangesResponse>) -> pb::WatchChangesResponse {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("a message within the patience")
        .expect("the stream is healthy")
        .expect("the stream is open")
}

/// The next message that is not a heartbeat.
async fn next_change(stream: &mut Streaming<pb::WatchChangesResponse>) -> Event {
    loop {
        match next(stream).await.event.expect("an event") {
            Event::Heartbeat(_) => continue,
            event => return event,
        }
    }
}

fn invalidation(org: &str, account: &str, token: &str) -> Event {
    Event::Invalidation(pb::Invalidation {
        org_id: org.into(),
        service_account_id: account.into(),
        token_id: token.into(),
    })
}

/// `watcher` watches, `changer` is where the changes are made (the same server on SQLite,
/// another replica on PostgreSQL).
async fn every_kind_of_change_reaches_watchers(backend: Backend) {
    let Some(mut changer) = unstarted(Setup::new(backend)).await else {
        return;
    };
    // Purged one second after deletion, checked every second.
    changer.options.deleted_retention = Duration::from_secs(1);
    changer.start().await;
    let watcher = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(changer.replica().await),
    };
    let watched = watcher.as_ref().unwrap_or(&changer);
    let mut stream = watch(watched, "", "").await;
    assert!(
        matches!(next(&mut stream).await.event, Some(Event::Reset(_))),
        "a new stream starts with a reset"
    );

    let jwt = changer.admin_jwt("org-a");
    let admin = &mut changer.admin().await;
    let account = create_account(&changer, &jwt, "Bot", Some(&["app-1"]))
        .await
        .service_account_id;
    let (token, secret) = create_token(&changer, &jwt, &account, &["mcp:tools:call"]).await;
    let (leaked, leaked_secret) = create_token(&changer, &jwt, &account, &["mcp:tools:call"]).await;
    let whole_account = invalidation("org-a", &account, "");
    let one_token = |id: &str| invalidation("org-a", &account, id);

    let mut expect = async |what: &str, wanted: Event| {
        assert_eq!(next_change(&mut stream).await, wanted, "{what}");
    };
    // Issuing a token changes no existing answer: the first change watchers hear is this.
    admin
        .update_token(authed(
            pb::UpdateTokenRequest {
                validate_only: false,
                token: Some(pb::Token {
                    service_account_id: account.clone(),
                    token_id: token.token_id.clone(),
                    allowed_cidrs: vec!["10.0.0.0/8".into()],
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
    expect("update token", one_token(&token.token_id)).await;

    let rotated = admin
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
    expect("rotate", one_token(&token.token_id)).await;
    let new_token = rotated.token.unwrap().token_id;
    revoke(&changer, &jwt, &account, &new_token).await;
    expect("revoke", one_token(&new_token)).await;

    let id = || account.clone();
    admin
        .disable_service_account(authed(
            pb::DisableServiceAccountRequest {
                validate_only: false,
                service_account_id: id(),
            },
            &jwt,
        ))
        .await
        .unwrap();
    expect("disable", whole_account.clone()).await;
    admin
        .enable_service_account(authed(
            pb::EnableServiceAccountRequest {
                validate_only: false,
                service_account_id: id(),
            },
            &jwt,
        ))
        .await
        .unwrap();
    expect("enable", whole_account.clone()).await;
    admin
        .set_app_access(authed(
            pb::SetAppAccessRequest {
                validate_only: false,
                service_account_id: id(),
                app_access: Some(pb::AppAccess {
                    all_apps: false,
                    app_ids: vec!["app-2".into()],
                }),
            },
            &jwt,
        ))
        .await
        .unwrap();
    expect("set app access", whole_account.clone()).await;
    admin
        .grant_app_access(authed(
            pb::GrantAppAccessRequest {
                validate_only: false,
                service_account_id: id(),
                app_ids: vec!["app-3".into()],
            },
            &jwt,
        ))
        .await
        .unwrap();
    expect("grant app access", whole_account.clone()).await;
    admin
        .revoke_app_access(authed(
            pb::RevokeAppAccessRequest {
                validate_only: false,
                service_account_id: id(),
                app_ids: vec!["app-3".into()],
            },
            &jwt,
        ))
        .await
        .unwrap();
    expect("revoke app access", whole_account.clone()).await;

    let reported = leak_api::LeakReportingClient::new(changer.channel().await)
        .report_leaked_tokens(pb::ReportLeakedTokensRequest {
            tokens: vec![leaked_secret],
            source: "a test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reported.results.len(), 1);
    expect("leak report", one_token(&leaked.token_id)).await;

    admin
        .delete_service_account(authed(
            pb::DeleteServiceAccountRequest {
                validate_only: false,
                service_account_id: id(),
            },
            &jwt,
        ))
        .await
        .unwrap();
    expect("delete", whole_account.clone()).await;
    // Purged after the retention: its tokens become unknown rather than revoked.
    expect("purge", whole_account.clone()).await;
    let purged = introspect(watched, &secret, "", "", &[]).await;
    assert_eq!(purged.inactive_reason(), pb::InactiveReason::Unknown);
}

on_both_backends!(every_kind_of_change_reaches_watchers);

use service_accounts_api::pb::leak_reporting_client as leak_api;

async fn a_resume_replays_what_was_missed_and_a_token_that_cannot_be_honoured_resets(
    backend: Backend,
) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let jwt = app.admin_jwt("org-a");
    let account = create_account(&app, &jwt, "Bot", None)
        .await
        .service_account_id;
    let (first, _) = create_token(&app, &jwt, &account, &["mcp:tools:call"]).await;
    let (second, _) = create_token(&app, &jwt, &account, &["mcp:tools:call"]).await;

    let mut stream = watch(&app, "", "").await;
    let reset = next(&mut stream).await;
    assert!(matches!(reset.event, Some(Event::Reset(_))));
    revoke(&app, &jwt, &account, &first.token_id).await;
    let seen = loop {
        let message = next(&mut stream).await;
        if matches!(message.event, Some(Event::Invalidation(_))) {
            break message;
        }
    };
    drop(stream);

    // Nothing missed: a heartbeat first.
    let mut resumed = watch(&app, &seen.resume_token, "").await;
    let first_message = next(&mut resumed).await;
    assert!(
        matches!(first_message.event, Some(Event::Heartbeat(_))),
        "{first_message:?}"
    );
    drop(resumed);

    // Missed one: a heartbeat, then it.
    revoke(&app, &jwt, &account, &second.token_id).await;
    let mut resumed = watch(&app, &seen.resume_token, "").await;
    assert!(matches!(
        next(&mut resumed).await.event,
        Some(Event::Heartbeat(_))
    ));
    assert_eq!(
        next_change(&mut resumed).await,
        invalidation("org-a", &account, &second.token_id)
    );

    // Another replica's, a made-up and a garbled token: reset.
    let made_up = format!("0123456789abcdef-{}", 1);
    for token in [made_up.as_str(), "garbage", &seen.resume_token[..10]] {
        let mut stream = watch(&app, token, "").await;
        assert!(
            matches!(next(&mut stream).await.event, Some(Event::Reset(_))),
            "{token:?}"
        );
    }
}

on_both_backends!(a_resume_replays_what_was_missed_and_a_token_that_cannot_be_honoured_resets);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_filter_passes_only_that_orgs_invalidations() {
    let app = spawn(Backend::Sqlite).await.unwrap();
    let (acme, globex) = (app.admin_jwt("acme"), app.admin_jwt("globex"));
    let ours = create_account(&app, &acme, "Ours", None)
        .await
        .service_account_id;
    let theirs = create_account(&app, &globex, "Theirs", None)
        .await
        .service_account_id;
    let (our_token, _) = create_token(&app, &acme, &ours, &["mcp:tools:call"]).await;
    let (their_token, _) = create_token(&app, &globex, &theirs, &["mcp:tools:call"]).await;
    let mut stream = watch(&app, "", "acme").await;
    assert!(matches!(
        next(&mut stream).await.event,
        Some(Event::Reset(_))
    ));
    revoke(&app, &globex, &theirs, &their_token.token_id).await;
    revoke(&app, &acme, &ours, &our_token.token_id).await;
    assert_eq!(
        next_change(&mut stream).await,
        invalidation("acme", &ours, &our_token.token_id)
    );

    let status = app
        .introspection()
        .await
        .watch_changes(pb::WatchChangesRequest {
            resume_token: String::new(),
            org_id: "has spaces".into(),
        })
        .await
        .unwrap_err();
    assert_invalid(Err::<(), _>(status), &["org_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_an_idle_stream_alive_past_the_rpc_timeout() {
    let mut app = unstarted(Setup::new(Backend::Sqlite)).await.unwrap();
    app.options.watch_heartbeat_interval = Duration::from_millis(100);
    app.options.rpc_timeout = Duration::from_millis(500);
    app.start().await;
    let mut stream = watch(&app, "", "").await;
    assert!(matches!(
        next(&mut stream).await.event,
        Some(Event::Reset(_))
    ));
    let started = std::time::Instant::now();
    let mut heartbeats = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        let message = next(&mut stream).await;
        assert!(matches!(message.event, Some(Event::Heartbeat(_))));
        assert!(message.time.is_some() && !message.resume_token.is_empty());
        heartbeats += 1;
    }
    // 1.5 s at one per 100 ms: about 15; a loaded machine may delay some, never add any.
    assert!(
        (5..=16).contains(&heartbeats),
        "{heartbeats} heartbeats in 1.5 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_watchers_a_stream_is_refused_until_one_ends() {
    let mut app = unstarted(Setup::new(Backend::Sqlite)).await.unwrap();
    app.options.max_watchers = 2;
    app.start().await;
    let first = watch(&app, "", "").await;
    let _second = watch(&app, "", "").await;
    let refused = app
        .introspection()
        .await
        .watch_changes(pb::WatchChangesRequest::default())
        .await;
    let status = assert_code(refused, Code::ResourceExhausted);
    assert!(
        status.message().contains("--max-watchers"),
        "{}",
        status.message()
    );
    drop(first);
    Wait::new("the slot of the stream that ended is free again")
        .within(PATIENCE)
        .until(async || {
            app.introspection()
                .await
                .watch_changes(pb::WatchChangesRequest::default())
                .await
                .is_ok()
        })
        .await;
}

/// A watcher that stops reading is not buffered: once it falls behind the history it is sent
/// one reset, and it never receives every change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_is_sent_a_reset_instead_of_a_backlog() {
    let mut app = unstarted(Setup::new(Backend::Sqlite)).await.unwrap();
    app.options.watch_history = 16;
    app.start().await;
    let jwt = app.admin_jwt("org-a");
    let account = create_account(&app, &jwt, "Bot", None)
        .await
        .service_account_id;
    let (token, _) = create_token(&app, &jwt, &account, &["mcp:tools:call"]).await;
    // A small receive window, so that little can wait in transit.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .initial_stream_window_size(Some(8 * 1024))
        .connect()
        .await
        .unwrap();
    let mut stream = pb::token_introspection_client::TokenIntrospectionClient::new(channel)
        .watch_changes(pb::WatchChangesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        next(&mut stream).await.event,
        Some(Event::Reset(_))
    ));

    // Not reading: far more changes than the history, the window and the server's own send
    // buffer together hold.
    const CHANGES: usize = 400;
    let mut writers = Vec::new();
    for worker in 0..4 {
        let (mut admin, jwt, account, token) = (
            app.admin().await,
            jwt.clone(),
            account.clone(),
            token.token_id.clone(),
        );
        writers.push(tokio::spawn(async move {
            for i in 0..CHANGES / 4 {
                admin
                    .update_token(authed(
                        pb::UpdateTokenRequest {
                            validate_only: false,
                            token: Some(pb::Token {
                                service_account_id: account.clone(),
                                token_id: token.clone(),
                                display_name: format!("name {worker} {i}"),
                                ..Default::default()
                            }),
                            update_mask: Some(prost_types::FieldMask {
                                paths: vec!["display_name".into()],
                            }),
                        },
                        &jwt,
                    ))
                    .await
                    .unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let (mut invalidations, mut resets) = (0, 0);
    loop {
        let message = tokio::time::timeout(Duration::from_millis(500), stream.message()).await;
        let Ok(message) = message else {
            break; // caught up: only heartbeats would follow
        };
        match message.unwrap().unwrap().event.unwrap() {
            Event::Invalidation(_) => invalidations += 1,
            Event::Reset(_) => resets += 1,
            Event::Heartbeat(_) => {}
        }
    }
    eprintln!(
        "a stalled watcher got {invalidations} invalidations and {resets} reset(s) of {CHANGES} changes"
    );
    assert_eq!(resets, 1, "one reset once it fell behind");
    assert!(
        invalidations < CHANGES,
        "{invalidations} invalidations: the server buffered everything for a stalled watcher"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_cleanly_when_the_server_stops() {
    let mut app = spawn(Backend::Sqlite).await.unwrap();
    let mut stream = watch(&app, "", "").await;
    assert!(matches!(
        next(&mut stream).await.event,
        Some(Event::Reset(_))
    ));
    let stopped = tokio::spawn(async move {
        let started = std::time::Instant::now();
        app.stop().await.unwrap();
        started.elapsed()
    });
    let end = tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other.map(|_| ()),
            }
        }
    })
    .await
    .expect("the stream ends");
    assert!(end.is_ok(), "a clean end, not {end:?}");
    let took = stopped.await.unwrap();
    assert!(
        took < Duration::from_secs(4),
        "the stream held shutdown for {took:?}"
    );
}

/// While a replica cannot hear the others, its streams end and new ones are refused: a caller
/// must not cache what that replica says then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_loses_other_replicas_changes_ends_its_streams() {
    let Some(app) = spawn(Backend::Postgres).await else {
        return;
    };
    let mut stream = watch(&app, "", "").await;
    assert!(matches!(
        next(&mut stream).await.event,
        Some(Event::Reset(_))
    ));
    let admin = sea_orm::Database::connect(postgres_admin_url().unwrap())
        .await
        .unwrap();
    let database = crate::coherence::database_name(&app.database.url);
    use sea_orm::ConnectionTrait;
    admin
        .execute_unprepared(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'service-accounts-listener' AND datname = '{database}'"
        ))
        .await
        .unwrap();
    let ended = loop {
        match tokio::time::timeout(PATIENCE, stream.message())
            .await
            .unwrap()
        {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    let ended = ended.unwrap_err();
    assert_eq!(ended.code(), Code::Unavailable);
    assert!(
        ended.message().contains("other replicas' changes"),
        "{}",
        ended.message()
    );
    // Back again once resubscribed, starting with a reset.
    Wait::new("watching works again")
        .within(PATIENCE)
        .until(async || {
            app.introspection()
                .await
                .watch_changes(pb::WatchChangesRequest::default())
                .await
                .is_ok()
        })
        .await;
    let mut again = watch(&app, "", "").await;
    assert!(matches!(
        next(&mut again).await.event,
        Some(Event::Reset(_))
    ));
    admin.close().await.ok();
}
