//! A TCP proxy between a replica and PostgreSQL, to slow, freeze, cut and restore its link; also
//! in front of any server, to count the connections a client opens.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A TCP proxy in front of PostgreSQL that a test can slow down, cut and restore.
pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    frozen: watch::Sender<bool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    opened: Arc<AtomicUsize>,
    /// Milliseconds each chunk from the server is held back (see [`Proxy::delay_answers`]).
    answer_delay: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// A proxy to the server of `admin_url`, and `database_url` rewritten to go through it.
    /// `delay` holds back every chunk the client sends.
    pub async fn in_front_of(
        admin_url: &str,
        database_url: &str,
        delay: Duration,
    ) -> (Self, String) {
        let authority = admin_url.split("://").nth(1).unwrap();
        let host_port = authority.split('/').next().unwrap();
        let host_port = host_port.rsplit('@').next().unwrap();
        let upstream = if host_port.contains(':') {
            host_port.to_owned()
        } else {
            format!("{host_port}:5432")
        };
        let proxy = Self::start(upstream.clone(), delay).await;
        let proxied = database_url.replacen(&upstream, &proxy.addr.to_string(), 1);
        assert_ne!(
            proxied, database_url,
            "TEST_DATABASE_URL must name host:port"
        );
        (proxy, proxied)
    }

    /// A plain proxy to `upstream`.
    pub async fn to(upstream: SocketAddr) -> Self {
        Self::start(upstream.to_string(), Duration::ZERO).await
    }

    /// How many connections clients have opened through the proxy (cut ones included).
    pub fn connections_opened(&self) -> usize {
        self.opened.load(Ordering::SeqCst)
    }

    async fn start(upstream: String, delay: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let frozen = watch::Sender::new(false);
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let opened = Arc::new(AtomicUsize::new(0));
        let answer_delay = Arc::new(AtomicUsize::new(0));
        let accept = tokio::spawn({
            let answer_delay = answer_delay.clone();
            let cut = cut.clone();
            let opened = opened.clone();
            let frozen = frozen.clone();
            let connections = connections.clone();
            async move {
                loop {
                    let Ok((inbound, _)) = listener.accept().await else {
                        return;
                    };
                    opened.fetch_add(1, Ordering::SeqCst);
                    if cut.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let upstream = upstream.clone();
                    let frozen = frozen.subscribe();
                    let answer_delay = answer_delay.clone();
                    connections.lock().unwrap().push(tokio::spawn(async move {
                        let Ok(outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                            return;
                        };
                        pipe(inbound, outbound, delay, answer_delay, frozen).await;
                    }));
                }
            }
        });
        Self {
            addr,
            cut,
            frozen,
            connections,
            opened,
            answer_delay,
            accept,
        }
    }

    /// Stops moving bytes on every connection without closing any.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Holds back every chunk the server sends for `delay` from now on (zero: none), in order.
    pub fn delay_answers(&self, delay: Duration) {
        self.answer_delay
            .store(delay.as_millis() as usize, Ordering::SeqCst);
    }

    /// Moves bytes again after [`Self::freeze`].
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

async fn pipe(
    inbound: tokio::net::TcpStream,
    outbound: tokio::net::TcpStream,
    delay: Duration,
    answer_delay: Arc<AtomicUsize>,
    frozen: watch::Receiver<bool>,
) {
    let (client_read, client_write) = inbound.into_split();
    let (server_read, server_write) = outbound.into_split();
    let fixed = Arc::new(AtomicUsize::new(delay.as_millis() as usize));
    tokio::join!(
        forward(client_read, server_write, fixed, frozen.clone()),
        forward(server_read, client_write, answer_delay, frozen),
    );
}

/// Copies one direction; `delay` holds back each chunk, and while `frozen` nothing moves (the
/// connection stays open: a half-open link, as a network partition leaves it).
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay_ms: Arc<AtomicUsize>,
    mut frozen: watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let delay = delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay as u64)).await;
        }
        // An error means the proxy is gone.
        if frozen.wait_for(|frozen| !frozen).await.is_err() {
            break;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
