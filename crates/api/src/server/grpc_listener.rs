//! The gRPC port's accept loop: the connection cap, and a deadline for each connection's
//! handshake (TLS, then the 24-byte HTTP/2 client preface). A connection counts as waiting,
//! and may be closed to make room, until its preface is in; from then on it is the HTTP/2
//! keepalive that drops peers gone silent.
//!
//! TLS is done here rather than by tonic: tonic would wrap the stream given to it, and the
//! preface could not be seen under the encryption.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tonic::transport::server::{Connected, Router};

use super::TelemetryLayer;
use crate::config::ConnectionLimits;
use crate::connections::{ConnectionCap, Slot};

/// HTTP/2's client connection preface, `PRI * HTTP/2.0…`.
const PREFACE_BYTES: usize = 24;

/// The gRPC port's connection limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    /// For the TLS handshake and the HTTP/2 preface together, from the connection's opening.
    pub handshake_timeout: Duration,
}

impl From<&ConnectionLimits> for Limits {
    /// Keepalive is set on the tonic server; the accept loop takes the rest.
    fn from(flags: &ConnectionLimits) -> Self {
        Self {
            max_connections: flags.grpc_max_connections as usize,
            handshake_timeout: flags.grpc_handshake_timeout,
        }
    }
}

/// Serves `router` on `listener` until `signal`.
pub(super) async fn serve(
    router: Router<TelemetryLayer>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    signal: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let cap = ConnectionCap::new("gRPC", limits.max_connections);
    let timeout = limits.handshake_timeout;
    match tls {
        None => {
            let plain = |stream| async { Ok(stream) };
            let incoming = incoming(listener, cap, timeout, plain);
            router.serve_with_incoming_shutdown(incoming, signal).await
        }
        Some(acceptor) => {
            let incoming = incoming(listener, cap, timeout, move |s| acceptor.accept(s));
            router.serve_with_incoming_shutdown(incoming, signal).await
        }
    }
}

/// Connections past their handshake (`handshake`, then [`Guarded`] watches for the preface).
/// Handshakes run side by side: a slow one holds up no other.
fn incoming<IO, H, F>(
    listener: TcpListener,
    cap: Arc<ConnectionCap>,
    timeout: Duration,
    handshake: H,
) -> impl Stream<Item = io::Result<Guarded<IO>>>
where
    IO: Send + 'static,
    H: Fn(TcpStream) -> F,
    F: Future<Output = io::Result<IO>> + Send + 'static,
{
    let accepting = Accepting {
        listener,
        cap,
        timeout,
        handshake,
        handshaking: JoinSet::new(),
    };
    futures_util::stream::unfold(accepting, |mut accepting| async move {
        let io = accepting.next().await;
        Some((Ok(io), accepting))
    })
}

struct Accepting<IO, H> {
    listener: TcpListener,
    cap: Arc<ConnectionCap>,
    timeout: Duration,
    handshake: H,
    handshaking: JoinSet<Option<Guarded<IO>>>,
}

enum Event<IO> {
    Accepted(TcpStream),
    AcceptFailed(io::Error),
    Handshaken(Option<Guarded<IO>>),
}

impl<IO, H, F> Accepting<IO, H>
where
    IO: Send + 'static,
    H: Fn(TcpStream) -> F,
    F: Future<Output = io::Result<IO>> + Send + 'static,
{
    async fn next(&mut self) -> Guarded<IO> {
        loop {
            let event = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => Event::Accepted(stream),
                    Err(error) => Event::AcceptFailed(error),
                },
                Some(done) = self.handshaking.join_next(), if !self.handshaking.is_empty() => {
                    Event::Handshaken(done.ok().flatten())
                }
            };
            match event {
                Event::Accepted(stream) => self.start(stream),
                Event::AcceptFailed(error) => {
                    // Out of file descriptors, typically: do not spin.
                    tracing::warn!(%error, "gRPC listener cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Event::Handshaken(Some(io)) => return io,
                Event::Handshaken(None) => {}
            }
        }
    }

    fn start(&mut self, stream: TcpStream) {
        // Over the cap with every connection busy: dropping the stream closes it.
        let Some(slot) = self.cap.admit() else {
            return;
        };
        // Small unary responses must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let deadline = Instant::now() + self.timeout;
        let handshake = (self.handshake)(stream);
        self.handshaking.spawn(async move {
            let evicted = slot.evicted().clone();
            tokio::select! {
                done = tokio::time::timeout_at(deadline, handshake) => match done {
                    Ok(Ok(io)) => Some(Guarded::new(io, slot, deadline)),
                    Ok(Err(error)) => {
                        tracing::debug!(%error, "gRPC TLS handshake failed");
                        None
                    }
                    Err(_) => {
                        tracing::debug!("gRPC TLS handshake not done in time");
                        None
                    }
                },
                () = evicted.cancelled() => None,
            }
        });
    }
}

/// A connection's stream that fails its reads, closing the connection, if the HTTP/2 preface
/// is not in by the deadline or the connection is evicted before then. It holds the
/// connection's place under the cap for as long as it is open.
pub(super) struct Guarded<IO> {
    io: IO,
    slot: Slot,
    /// Preface bytes still to come; 0 once the connection speaks HTTP/2.
    preface_left: usize,
    deadline: Pin<Box<Sleep>>,
    evicted: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<IO> Guarded<IO> {
    fn new(io: IO, slot: Slot, deadline: Instant) -> Self {
        let evicted = Box::pin(slot.evicted().clone().cancelled_owned());
        Self {
            io,
            slot,
            preface_left: PREFACE_BYTES,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            evicted,
        }
    }

    /// Why the connection must close now, while its preface is not in.
    fn cut_short(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if self.evicted.as_mut().poll(cx).is_ready() {
            tracing::debug!("gRPC connection closed to make room for a new one");
            return Some(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed to make room for a new connection",
            ));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            tracing::debug!("gRPC connection closed: no HTTP/2 preface in time");
            return Some(io::Error::new(
                io::ErrorKind::TimedOut,
                "no HTTP/2 preface within the handshake timeout",
            ));
        }
        None
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.preface_left == 0 {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        if let Some(error) = self.cut_short(cx) {
            return Poll::Ready(Err(error));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let read = buf.filled().len() - before;
            self.preface_left = self.preface_left.saturating_sub(read);
            if self.preface_left == 0 {
                self.slot.busy();
            }
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// tonic reads the peer's address and certificates from the stream underneath.
impl<IO: Connected> Connected for Guarded<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}
