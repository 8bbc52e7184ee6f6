//! The gRPC port's accept loop and its connection cap: a deadline for each connection's
//! handshake (TLS, then the 24-byte HTTP/2 client preface), and which connections are busy.
//!
//! A connection is busy while it has at least one open RPC (from its request's headers until
//! its response, streamed or not, is over); otherwise it is waiting, and may be closed to make
//! room at the cap, like an idle HTTP keep-alive connection. [`OpenRpcsLayer`] finds each
//! request's connection by its peer address in [`Connections`]. Peers gone silent are dropped
//! by the HTTP/2 keepalive.
//!
//! TLS is done here rather than by tonic: tonic would wrap the stream given to it, and the
//! preface could not be seen under the encryption.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tonic::transport::server::{Connected, Router, TcpConnectInfo, TlsConnectInfo};

use super::GrpcLayers;
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

/// The gRPC port's open connections under its cap, by peer address.
pub(super) struct Connections {
    cap: Arc<ConnectionCap>,
    by_peer: RwLock<HashMap<SocketAddr, Arc<Connection>>>,
}

/// One open connection: its place under the cap, and its open RPCs.
struct Connection {
    slot: Slot,
    open_rpcs: AtomicUsize,
}

impl Connection {
    /// Busy with an open RPC, waiting without one. The count changes outside the cap's lock;
    /// [`Slot::settle`] reads it under the lock, after each change from none or to none.
    fn settle(&self) {
        self.slot
            .settle(|| self.open_rpcs.load(Ordering::Acquire) > 0);
    }
}

impl Connections {
    pub fn new(max_connections: usize) -> Arc<Self> {
        Arc::new(Self {
            cap: ConnectionCap::new("gRPC", max_connections),
            by_peer: RwLock::default(),
        })
    }

    /// Admits a connection from `peer` (waiting); `None` if it is refused.
    fn admit(self: &Arc<Self>, peer: SocketAddr) -> Option<Registered> {
        let connection = Arc::new(Connection {
            slot: self.cap.admit()?,
            open_rpcs: AtomicUsize::new(0),
        });
        self.by_peer
            .write()
            .expect("gRPC connections lock")
            .insert(peer, connection.clone());
        Some(Registered {
            connections: self.clone(),
            peer,
            connection,
        })
    }

    /// An RPC opened on the connection from `peer`: busy until the returned guard drops.
    /// `None` for a connection no longer registered (closing, or evicted a moment ago).
    fn open_rpc(&self, peer: SocketAddr) -> Option<OpenRpc> {
        let connection = self
            .by_peer
            .read()
            .expect("gRPC connections lock")
            .get(&peer)?
            .clone();
        if connection.open_rpcs.fetch_add(1, Ordering::AcqRel) == 0 {
            connection.settle();
        }
        Some(OpenRpc(connection))
    }
}

/// A connection's entry in [`Connections`], removed when the connection closes.
struct Registered {
    connections: Arc<Connections>,
    peer: SocketAddr,
    connection: Arc<Connection>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut by_peer = self
            .connections
            .by_peer
            .write()
            .expect("gRPC connections lock");
        // The address may be a newer connection's by now.
        if by_peer
            .get(&self.peer)
            .is_some_and(|c| Arc::ptr_eq(c, &self.connection))
        {
            by_peer.remove(&self.peer);
        }
    }
}

/// One open RPC, keeping its connection busy.
struct OpenRpc(Arc<Connection>);

impl Drop for OpenRpc {
    fn drop(&mut self) {
        if self.0.open_rpcs.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.settle();
        }
    }
}

/// Marks each request's connection busy until the request's response is over (its body ended
/// or dropped): a server-streaming RPC keeps its connection busy while it streams.
#[derive(Clone)]
pub(super) struct OpenRpcsLayer(Arc<Connections>);

impl OpenRpcsLayer {
    pub fn new(connections: Arc<Connections>) -> Self {
        Self(connections)
    }
}

impl<S> tower::Layer<S> for OpenRpcsLayer {
    type Service = OpenRpcs<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OpenRpcs {
            inner,
            connections: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub(super) struct OpenRpcs<S> {
    inner: S,
    connections: Arc<Connections>,
}

/// The peer address tonic put in the request, with or without TLS.
fn peer<B>(request: &http::Request<B>) -> Option<SocketAddr> {
    let extensions = request.extensions();
    match extensions.get::<TcpConnectInfo>() {
        Some(info) => info.remote_addr(),
        None => extensions
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.get_ref().remote_addr()),
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for OpenRpcs<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Unpin,
{
    type Response = http::Response<WhileOpen<R>>;
    type Error = S::Error;
    type Future = Opened<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let rpc = peer(&request).and_then(|peer| self.connections.open_rpc(peer));
        Opened {
            inner: self.inner.call(request),
            rpc,
        }
    }
}

/// The response future, handing the open RPC on to the response's body.
pub(super) struct Opened<F> {
    inner: F,
    rpc: Option<OpenRpc>,
}

impl<F, R, E> Future for Opened<F>
where
    F: Future<Output = Result<http::Response<R>, E>> + Unpin,
{
    type Output = Result<http::Response<WhileOpen<R>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = ready!(Pin::new(&mut self.inner).poll(cx))?;
        let rpc = self.rpc.take();
        Poll::Ready(Ok(response.map(|body| WhileOpen { body, rpc })))
    }
}

/// A response body that holds its RPC open until it ends or is dropped.
pub(super) struct WhileOpen<B> {
    body: B,
    rpc: Option<OpenRpc>,
}

impl<B: Body<Data = Bytes> + Unpin> Body for WhileOpen<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        if frame.is_none() {
            self.rpc = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Serves `router` on `listener` until `signal`, with `connections` (also given to the router's
/// [`OpenRpcsLayer`]).
pub(super) async fn serve(
    router: Router<GrpcLayers>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    connections: Arc<Connections>,
    handshake_timeout: Duration,
    signal: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let timeout = handshake_timeout;
    match tls {
        None => {
            let plain = |stream| async { Ok(stream) };
            let incoming = incoming(listener, connections, timeout, plain);
            router.serve_with_incoming_shutdown(incoming, signal).await
        }
        Some(acceptor) => {
            let incoming = incoming(listener, connections, timeout, move |s| acceptor.accept(s));
            router.serve_with_incoming_shutdown(incoming, signal).await
        }
    }
}

/// Connections past their handshake (`handshake`, then [`Guarded`] watches for the preface).
/// Handshakes run side by side: a slow one holds up no other.
fn incoming<IO, H, F>(
    listener: TcpListener,
    connections: Arc<Connections>,
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
        connections,
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
    connections: Arc<Connections>,
    timeout: Duration,
    handshake: H,
    handshaking: JoinSet<Option<Guarded<IO>>>,
}

enum Event<IO> {
    Accepted(TcpStream, SocketAddr),
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
                    Ok((stream, peer)) => Event::Accepted(stream, peer),
                    Err(error) => Event::AcceptFailed(error),
                },
                Some(done) = self.handshaking.join_next(), if !self.handshaking.is_empty() => {
                    Event::Handshaken(done.ok().flatten())
                }
            };
            match event {
                Event::Accepted(stream, peer) => self.start(stream, peer),
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

    fn start(&mut self, stream: TcpStream, peer: SocketAddr) {
        // Over the cap with every connection busy: dropping the stream closes it.
        let Some(registered) = self.connections.admit(peer) else {
            return;
        };
        // Small unary responses must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let deadline = Instant::now() + self.timeout;
        let handshake = (self.handshake)(stream);
        self.handshaking.spawn(async move {
            let evicted = registered.connection.slot.evicted().clone();
            tokio::select! {
                done = tokio::time::timeout_at(deadline, handshake) => match done {
                    Ok(Ok(io)) => Some(Guarded::new(io, registered, deadline)),
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
/// is not in by the deadline, or once the connection is evicted (which only a connection with
/// no open RPC is). It holds the connection's place under the cap for as long as it is open.
pub(super) struct Guarded<IO> {
    io: IO,
    /// The connection's place under the cap, found by peer address while it is open.
    _registered: Registered,
    /// Preface bytes still to come; 0 once the connection speaks HTTP/2.
    preface_left: usize,
    /// Until the preface is in.
    deadline: Option<Pin<Box<Sleep>>>,
    evicted: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<IO> Guarded<IO> {
    fn new(io: IO, registered: Registered, deadline: Instant) -> Self {
        let evicted = Box::pin(
            registered
                .connection
                .slot
                .evicted()
                .clone()
                .cancelled_owned(),
        );
        Self {
            io,
            _registered: registered,
            preface_left: PREFACE_BYTES,
            deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
            evicted,
        }
    }

    /// Why the connection must close now.
    fn cut_short(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if self.evicted.as_mut().poll(cx).is_ready() {
            tracing::debug!("gRPC connection closed to make room for a new one");
            return Some(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed to make room for a new connection",
            ));
        }
        if self
            .deadline
            .as_mut()
            .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready())
        {
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
        // Each read also waits for eviction: hyper reads whenever the connection is open, so
        // an eviction wakes it.
        if let Some(error) = self.cut_short(cx) {
            return Poll::Ready(Err(error));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if self.preface_left > 0
            && let Poll::Ready(Ok(())) = polled
        {
            let read = buf.filled().len() - before;
            self.preface_left = self.preface_left.saturating_sub(read);
            if self.preface_left == 0 {
                // In time: the connection waits for its first RPC, with no deadline.
                self.deadline = None;
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
