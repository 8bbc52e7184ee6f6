//! One HTTP connection's deadlines and its place under the listener's cap.
//!
//! hyper's own `header_read_timeout` starts when a connection goes idle, not when a request's
//! first byte arrives, so it cannot tell an idle keep-alive connection (fine for a while) from a
//! slow request head (not fine). The connection tracks both here instead: reads tell it when a
//! request begins, the service when one is being served and when it is done.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::io::InspectReader;

use crate::config::ConnectionLimits;
use crate::connections::Slot;

/// The HTTP listener's connection limits (`--http-max-connections` and the timeouts).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    /// A keep-alive connection with no request in progress is closed after this.
    pub idle_timeout: Duration,
    /// A request head must be complete within this of the connection's opening, or of its
    /// first byte on a keep-alive connection.
    pub header_timeout: Duration,
}

impl From<&ConnectionLimits> for Limits {
    fn from(flags: &ConnectionLimits) -> Self {
        Self {
            max_connections: flags.http_max_connections as usize,
            idle_timeout: flags.http_idle_timeout,
            header_timeout: flags.http_header_timeout,
        }
    }
}

/// Where a connection is, and by when it must have moved on.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Opened, or a request's first bytes arrived: the head is due by then.
    Head(Instant),
    Serving,
    /// Between requests: closed if no request begins by then.
    Idle(Instant),
}

pub(super) struct Tracker {
    slot: Slot,
    limits: Limits,
    phase: Mutex<Phase>,
    /// Told when a deadline moves earlier than the one being waited for.
    changed: Notify,
}

impl Tracker {
    pub fn new(slot: Slot, limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            slot,
            limits,
            phase: Mutex::new(Phase::Head(Instant::now() + limits.header_timeout)),
            changed: Notify::new(),
        })
    }

    /// A complete request head arrived and is being served.
    pub fn request_started(&self) {
        self.set(Phase::Serving);
        self.slot.busy();
    }

    /// The handler has answered; hyper writes the answer out next. The connection counts as
    /// waiting for its next request from now, so it may be closed to make room or for idleness,
    /// but gracefully: an answer still being written is finished first (see
    /// `http1_connection`).
    pub fn request_finished(&self) {
        self.set(Phase::Idle(Instant::now() + self.limits.idle_timeout));
        self.slot.waiting();
        self.changed.notify_one();
    }

    /// Bytes arrived: on an idle connection, a request has begun and its head is due.
    fn bytes_arrived(&self) {
        let mut phase = self.phase.lock().expect("phase lock");
        if let Phase::Idle(_) = *phase {
            *phase = Phase::Head(Instant::now() + self.limits.header_timeout);
            drop(phase);
            self.changed.notify_one();
        }
    }

    /// Whether a request head is due and not complete (or the connection has sent nothing yet):
    /// no answer is being written.
    pub fn reading_head(&self) -> bool {
        matches!(*self.phase.lock().expect("phase lock"), Phase::Head(_))
    }

    /// When the connection is to be closed unless it moves on; `None` while serving.
    pub fn deadline(&self) -> Option<Instant> {
        match *self.phase.lock().expect("phase lock") {
            Phase::Head(at) | Phase::Idle(at) => Some(at),
            Phase::Serving => None,
        }
    }

    /// Why the connection is to be closed now, if its deadline has passed.
    pub fn expired(&self) -> Option<&'static str> {
        let now = Instant::now();
        match *self.phase.lock().expect("phase lock") {
            Phase::Head(at) if at <= now => Some("request head not complete in time"),
            Phase::Idle(at) if at <= now => Some("idle"),
            _ => None,
        }
    }

    /// Resolves when a deadline may have moved earlier.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Resolves when the connection must close to make room for a new one.
    pub async fn evicted(&self) {
        self.slot.evicted().cancelled().await;
    }

    fn set(&self, phase: Phase) {
        *self.phase.lock().expect("phase lock") = phase;
    }
}

/// A connection's stream, telling its tracker when bytes arrive.
pub(super) fn watched<IO: tokio::io::AsyncRead>(
    io: IO,
    tracker: Arc<Tracker>,
) -> InspectReader<IO, impl FnMut(&[u8])> {
    InspectReader::new(io, move |bytes: &[u8]| {
        if !bytes.is_empty() {
            tracker.bytes_arrived();
        }
    })
}
