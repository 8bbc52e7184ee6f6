//! Slow-client (slowloris) attacks on both listeners: many connections that send their request
//! head, or the HTTP/2 preface, one byte a second and never finish, or that complete the HTTP/2
//! handshake and then open no stream while answering pings. Legitimate callers must keep being
//! answered within a bound while they last; the connection cap makes room for them by closing
//! the attackers' connections. Also the HTTP listener's idle and header timeouts, and the gRPC
//! handshake timeout and keepalive.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use service_accounts_api::config::ConnectionLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::MissedTickBehavior;

use crate::support::*;

/// The connection cap both listeners get here.
const CAP: usize = 64;
/// Attacker connections open at once, at most: several times the cap.
const ATTACKERS: usize = 3 * CAP;
/// New attacker connections per second. Each would stay for [`ATTACK_TIMEOUT`], so the attack
/// wants several times the cap; yet a legitimate connection, newer than the cap's longest-waiting
/// ones, is closed to make room only after `CAP / ATTACK_RATE` (0.64 s) without its request in.
const ATTACK_RATE: u32 = 100;
/// Header and handshake timeouts during an attack: longer than the check that connections are
/// being closed to make room, so that it is eviction, not a timeout, that closes them.
const ATTACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a legitimate request may take, connecting included, while the attack runs.
const BOUND: Duration = Duration::from_secs(2);
/// How long legitimate callers keep calling during the attack.
const ATTACK_LENGTH: Duration = Duration::from_secs(6);

/// An HTTP request head that is never finished (no blank line).
const SLOW_HEAD: &[u8] = b"GET /v1/forward-auth HTTP/1.1\r\nHost: service-accounts\r\n\
    X-Embrace-Org-Id: org-a\r\nX-Embrace-App-Id: checkout-ios\r\nX-Padding: aaaaaaaaaaaaaaaa";
/// HTTP/2's client connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn start(limits: impl FnOnce(&mut ConnectionLimits)) -> TestApp {
    let mut app = unstarted(Setup::new(Backend::Sqlite))
        .await
        .expect("SQLite is always there");
    app.enable_http();
    limits(&mut app.options.connections);
    app.start().await;
    app
}

/// A token allowed for org-a's checkout-ios with scope mcp:read.
async fn real_token(app: &TestApp) -> String {
    let jwt = app.admin_jwt("org-a");
    let account = create_account(app, &jwt, "Slow clients", Some(&["checkout-ios"])).await;
    create_token(
        app,
        &jwt,
        &account.service_account_id,
        &["mcp:tools:call", "mcp:read"],
    )
    .await
    .1
}

/// Slow clients, as attack tools run them: connections to `addr` opened at a steady
/// [`ATTACK_RATE`], up to `count` open at once (a closed one is replaced), each run by `attack`
/// until the server closes it (whether the server sent anything).
struct SlowClients {
    /// Connections the server closed.
    closed: Arc<AtomicUsize>,
    /// Of those, the ones it had sent something on first.
    answered: Arc<AtomicUsize>,
    opener: JoinHandle<()>,
}

impl SlowClients {
    /// Each connection sends `head` one byte a second.
    fn trickling(addr: SocketAddr, count: usize, head: &'static [u8]) -> Self {
        Self::start(addr, count, move |stream| trickle(stream, head))
    }

    fn start<A, F>(addr: SocketAddr, count: usize, attack: A) -> Self
    where
        A: Fn(TcpStream) -> F + Send + Sync + 'static,
        F: Future<Output = bool> + Send + 'static,
    {
        let attack = Arc::new(attack);
        let closed = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(Semaphore::new(count));
        let counts = (closed.clone(), answered.clone());
        let opener = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            let mut pace = tokio::time::interval(Duration::from_secs(1) / ATTACK_RATE);
            pace.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                pace.tick().await;
                let place = open.clone().acquire_owned().await.expect("never closed");
                let (closed, answered) = counts.clone();
                let attack = attack.clone();
                connections.spawn(async move {
                    if let Ok(stream) = TcpStream::connect(addr).await {
                        if attack(stream).await {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        closed.fetch_add(1, Ordering::Relaxed);
                    }
                    drop(place);
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Self {
            closed,
            answered,
            opener,
        }
    }

    fn closed(&self) -> usize {
        self.closed.load(Ordering::Relaxed)
    }

    fn answered(&self) -> usize {
        self.answered.load(Ordering::Relaxed)
    }
}

impl Drop for SlowClients {
    fn drop(&mut self) {
        // Its connections go with it.
        self.opener.abort();
    }
}

/// Sends `head` a byte a second, reading whatever the server sends, until it closes; whether
/// the server sent anything.
async fn trickle(mut stream: TcpStream, head: &[u8]) -> bool {
    let mut sink = [0u8; 1024];
    let mut heard = false;
    for byte in head {
        if stream.write_all(&[*byte]).await.is_err() {
            return heard;
        }
        let next = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            tokio::select! {
                read = stream.read(&mut sink) => match read {
                    Ok(0) | Err(_) => return heard,
                    Ok(_) => heard = true,
                },
                () = tokio::time::sleep_until(next) => break,
            }
        }
    }
    until_closed(&mut stream).await || heard
}

/// Reads and discards until the peer closes the connection; whether it sent anything.
async fn until_closed(stream: &mut TcpStream) -> bool {
    let mut sink = [0u8; 1024];
    let mut heard = false;
    while let Ok(1..) = stream.read(&mut sink).await {
        heard = true;
    }
    heard
}

/// How long the server takes to close `stream` (reading and discarding what it sends).
async fn time_to_close(stream: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    tokio::time::timeout(limit, until_closed(stream))
        .await
        .unwrap_or_else(|_| panic!("the server did not close the connection within {limit:?}"));
    started.elapsed()
}

/// `GET /v1/forward-auth` with `secret` on `stream`, keep-alive; the status.
async fn forward_auth_on(stream: &mut TcpStream, secret: &str) -> Result<u16, String> {
    let request = format!(
        "GET /v1/forward-auth HTTP/1.1\r\nHost: service-accounts\r\n\
         Authorization: Bearer {secret}\r\nX-Embrace-Org-Id: org-a\r\n\
         X-Embrace-App-Id: checkout-ios\r\nX-Embrace-Required-Scopes: mcp:read\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending: {e}"))?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let read = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading: {e}"))?;
        if read == 0 {
            return Err(format!(
                "closed before an answer: {:?}",
                String::from_utf8_lossy(&answer)
            ));
        }
        answer.extend_from_slice(&chunk[..read]);
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
    };
    let head = String::from_utf8_lossy(&answer[..head_end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| format!("no content-length in {head:?}"))?;
    while answer.len() < head_end + length {
        let read = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the body: {e}"))?;
        if read == 0 {
            return Err("closed in the body".into());
        }
        answer.extend_from_slice(&chunk[..read]);
    }
    head.get(9..12)
        .and_then(|status| status.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))
}

/// `forward_auth_on` on a fresh connection; the time taken, connecting included, if allowed.
async fn fresh_forward_auth(addr: SocketAddr, secret: &str) -> Result<Duration, String> {
    let started = Instant::now();
    let answer = tokio::time::timeout(BOUND, async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        forward_auth_on(&mut stream, secret).await
    })
    .await
    .map_err(|_| format!("no answer within {BOUND:?}"))?;
    match answer? {
        200 => Ok(started.elapsed()),
        status => Err(format!("status {status}")),
    }
}

/// `Introspect` on a fresh channel; the time taken, connecting included, if the token is active.
async fn fresh_introspect(addr: SocketAddr, secret: &str) -> Result<Duration, String> {
    use service_accounts_api::pb;
    let started = Instant::now();
    let answer = tokio::time::timeout(BOUND, async {
        let channel = connect(addr)
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        pb::token_introspection_client::TokenIntrospectionClient::new(channel)
            .introspect(pb::IntrospectRequest {
                token: secret.into(),
                org_id: "org-a".into(),
                ..Default::default()
            })
            .await
            .map_err(|status| format!("{status:?}"))
    })
    .await
    .map_err(|_| format!("no answer within {BOUND:?}"))??;
    match answer.into_inner().active {
        true => Ok(started.elapsed()),
        false => Err("the token is not active".into()),
    }
}

/// The slowest of `took`, for the record.
fn report(what: &str, took: &[Duration]) {
    let slowest = took.iter().max().copied().unwrap_or_default();
    eprintln!("{what}: {} answered, slowest {slowest:?}", took.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_callers_are_answered_promptly_while_slow_clients_flood_the_listener() {
    let app = start(|limits| {
        limits.http_max_connections = CAP as u32;
        limits.http_header_timeout = ATTACK_TIMEOUT;
    })
    .await;
    let secret = real_token(&app).await;
    let addr = app.http_addr();

    let attack = SlowClients::trickling(addr, ATTACKERS, SLOW_HEAD);
    // Well before the header timeout: closed to make room, or refused.
    Wait::new("slow clients over the cap are closed")
        .within(ATTACK_TIMEOUT / 2)
        .until(async || attack.closed() >= CAP)
        .await;

    // A gateway's keep-alive connection in steady use. (One left idle is closed to make room
    // like any other waiting connection, once as many newer ones as the cap have arrived.)
    let reusing = tokio::spawn(keep_alive_requests(addr, secret.clone()));
    let mut fresh = Vec::new();
    Wait::new("every request on a fresh connection is answered 200 within the bound")
        .within(ATTACK_LENGTH)
        .every(Duration::from_millis(50))
        .throughout(async || {
            fresh_forward_auth(addr, &secret)
                .await
                .map(|t| fresh.push(t))
        })
        .await;
    let reused = reusing
        .await
        .expect("keep-alive requests")
        .unwrap_or_else(|e| panic!("{e}"));
    let closed = attack.closed();
    assert!(
        closed >= 4 * CAP,
        "the attackers' connections keep being closed: {closed}"
    );
    // A refusal is a 503: none, as a slow client never holds a busy connection.
    assert_eq!(attack.answered(), 0, "slow clients refused with a 503");
    report("HTTP fresh connections", &fresh);
    report("HTTP keep-alive connection", &reused);
    eprintln!("HTTP attacker connections closed: {closed}");
}

/// Requests on one keep-alive connection, every 10 ms for [`ATTACK_LENGTH`], each answered 200
/// within [`BOUND`]; the time each took.
async fn keep_alive_requests(addr: SocketAddr, secret: String) -> Result<Vec<Duration>, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let mut took = Vec::new();
    let until = Instant::now() + ATTACK_LENGTH;
    while Instant::now() < until {
        let started = Instant::now();
        let status = tokio::time::timeout(BOUND, forward_auth_on(&mut stream, &secret)).await;
        match status {
            Ok(Ok(200)) => took.push(started.elapsed()),
            other => return Err(format!("keep-alive request {}: {other:?}", took.len() + 1)),
        }
        // The gateway's pace.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(took)
}

/// The gRPC port with [`CAP`], under `attack` once a token exists: every `Introspect` on a fresh
/// channel is answered within [`BOUND`] for [`ATTACK_LENGTH`]; the attack's connections keep
/// being closed. The attack's connections closed, and the time each call took.
async fn grpc_under_attack(
    attack: impl FnOnce(SocketAddr) -> SlowClients,
) -> (SlowClients, Vec<Duration>) {
    let app = start(|limits| {
        limits.grpc_max_connections = CAP as u32;
        limits.grpc_handshake_timeout = ATTACK_TIMEOUT;
        limits.grpc_keepalive_interval = Duration::from_secs(1);
        limits.grpc_keepalive_timeout = Duration::from_secs(1);
    })
    .await;
    let secret = real_token(&app).await;

    let attack = attack(app.addr);
    Wait::new("attacking connections over the cap are closed")
        .within(ATTACK_TIMEOUT / 2)
        .until(async || attack.closed() >= CAP)
        .await;

    let mut took = Vec::new();
    Wait::new("every Introspect is answered within the bound")
        .within(ATTACK_LENGTH)
        .every(Duration::from_millis(50))
        .throughout(async || {
            fresh_introspect(app.addr, &secret)
                .await
                .map(|t| took.push(t))
        })
        .await;
    let closed = attack.closed();
    assert!(
        closed >= 4 * CAP,
        "the attackers' connections keep being closed: {closed}"
    );
    (attack, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_callers_are_answered_promptly_while_slow_clients_flood_the_port() {
    let (attack, took) =
        grpc_under_attack(|addr| SlowClients::trickling(addr, ATTACKERS, PREFACE)).await;
    let closed = attack.closed();
    // An admitted connection hears the server's HTTP/2 settings; a refused one hears nothing.
    let refused = closed - attack.answered();
    assert_eq!(refused, 0, "slow clients refused");
    report("gRPC fresh channels", &took);
    eprintln!("gRPC attacker connections closed: {closed}");
}

/// An HTTP/2 client connection that opens no stream: the h2 library answers the server's
/// settings and pings, as any client does, until the server closes the connection; whether the
/// handshake completed.
async fn idle_http2(stream: TcpStream) -> bool {
    let Ok((_open, connection)) = h2::client::handshake(stream).await else {
        return false;
    };
    // `_open` held: with no stream and no handle left, the client would close by itself.
    let _ = connection.await;
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_callers_are_answered_promptly_while_idle_http2_connections_that_answer_pings_flood_the_port()
 {
    let (attack, took) =
        grpc_under_attack(|addr| SlowClients::start(addr, ATTACKERS, idle_http2)).await;
    report("gRPC fresh channels", &took);
    eprintln!(
        "idle HTTP/2 attacker connections closed: {}",
        attack.closed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_closes_after_the_idle_timeout_and_a_slow_head_after_the_header_timeout()
 {
    let header_timeout = Duration::from_secs(1);
    let idle_timeout = Duration::from_secs(4);
    // A loaded machine answers late, and counts a wait from the answer read, not from when the
    // server marked the connection idle.
    let slack = Duration::from_secs(1);
    let app = start(|limits| {
        limits.http_header_timeout = header_timeout;
        limits.http_idle_timeout = idle_timeout;
    })
    .await;
    let secret = real_token(&app).await;
    let addr = app.http_addr();

    // Idle past the header timeout but within the idle timeout: still open, and usable.
    let mut kept_alive = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(forward_auth_on(&mut kept_alive, &secret).await, Ok(200));
    Wait::new("the idle connection stays open past the header timeout")
        .within(2 * header_timeout)
        .every(Duration::from_millis(50))
        .throughout(async || {
            let mut byte = [0u8; 1];
            matches!(kept_alive.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .await;
    assert_eq!(forward_auth_on(&mut kept_alive, &secret).await, Ok(200));
    let idle = time_to_close(&mut kept_alive, 2 * idle_timeout).await;
    assert!(idle >= idle_timeout - slack, "closed after {idle:?} idle");

    // A head sent a byte every 100 ms, far below the cap: cut at the header timeout.
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    let mut sending = SLOW_HEAD.iter();
    let closed = loop {
        let byte = sending.next().expect("the head outlasts the timeout");
        if slow.write_all(&[*byte]).await.is_err() {
            break started.elapsed();
        }
        let mut sink = [0u8; 64];
        if let Ok(read) =
            tokio::time::timeout(Duration::from_millis(100), slow.read(&mut sink)).await
            && matches!(read, Ok(0) | Err(_))
        {
            break started.elapsed();
        }
    };
    assert!(
        closed >= header_timeout - Duration::from_millis(100) && closed < header_timeout + slack,
        "a slow head was cut after {closed:?}"
    );
    eprintln!("idle keep-alive closed after {idle:?}; slow head cut after {closed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_connection_without_its_preface_in_time_is_closed_at_the_handshake_timeout_and_one_silent_after_it_at_the_keepalive()
 {
    let handshake_timeout = Duration::from_secs(1);
    let slack = Duration::from_secs(1);
    let app = start(|limits| {
        limits.grpc_handshake_timeout = handshake_timeout;
        limits.grpc_keepalive_interval = Duration::from_secs(1);
        limits.grpc_keepalive_timeout = Duration::from_secs(1);
    })
    .await;
    // Sends the preface at once, then nothing, nor answers pings.
    let mut after_preface = TcpStream::connect(app.addr).await.expect("connect");
    after_preface.write_all(PREFACE).await.expect("preface");
    let started = Instant::now();
    let mut silent = TcpStream::connect(app.addr).await.expect("connect");
    let mut partial = TcpStream::connect(app.addr).await.expect("connect");
    partial
        .write_all(&PREFACE[..10])
        .await
        .expect("part of the preface");
    for (what, stream) in [("silent", &mut silent), ("partial preface", &mut partial)] {
        time_to_close(stream, 3 * handshake_timeout).await;
        let closed = started.elapsed();
        assert!(
            closed >= handshake_timeout - Duration::from_millis(100)
                && closed < handshake_timeout + slack,
            "{what}: closed {closed:?} after opening"
        );
    }
    // Keepalive: 1 s of silence, then 1 s for the unanswered ping.
    time_to_close(&mut after_preface, Duration::from_secs(5)).await;
    // A caller that sends its preface at once is served as usual.
    let secret = real_token(&app).await;
    fresh_introspect(app.addr, &secret)
        .await
        .expect("a prompt caller is served");
}

/// On SIGTERM a connection still sending its request head, or idle, is closed at once: only
/// requests being served get the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_head_does_not_hold_up_shutdown() {
    let mut app = unstarted(Setup::new(Backend::Sqlite))
        .await
        .expect("SQLite is always there");
    app.enable_http();
    app.options.connections.http_header_timeout = Duration::from_secs(60);
    app.options.connections.http_idle_timeout = Duration::from_secs(60);
    app.options.shutdown_grace = Duration::from_secs(30);
    app.start().await;
    let mut half_sent = TcpStream::connect(app.http_addr()).await.unwrap();
    half_sent.write_all(&SLOW_HEAD[..20]).await.unwrap();
    let mut idle = TcpStream::connect(app.http_addr()).await.unwrap();
    let secret = real_token(&app).await;
    assert_eq!(forward_auth_on(&mut idle, &secret).await, Ok(200));

    let started = Instant::now();
    app.stop().await.unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    time_to_close(&mut half_sent, Duration::from_secs(1)).await;
    time_to_close(&mut idle, Duration::from_secs(1)).await;
}
