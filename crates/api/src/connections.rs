//! A listener's cap on open connections, shared by the HTTP and gRPC listeners.
//!
//! Each open connection is either busy (serving a request: an HTTP request whose head is in, or
//! at least one open RPC on a gRPC connection) or waiting (for its handshake or a request, or
//! idle between requests). A connection that arrives at the cap closes the one that has been
//! waiting longest; if none is waiting, the newcomer is refused. A client that trickles its
//! headers, or opens a connection and sends nothing more, never becomes busy, so under such an
//! attack the attacker's connections are the ones closed, and a caller that sends its request at
//! once is admitted and served. An idle keep-alive connection may be closed the same way.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// The cap's warning is logged at most this often, with the counts since the previous one.
const WARN_EVERY: Duration = Duration::from_secs(60);

pub struct ConnectionCap {
    /// The listener, for logs.
    listener: &'static str,
    max: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    open: HashMap<u64, Entry>,
    /// The waiting connections, longest-waiting first.
    waiting: BTreeSet<(Instant, u64)>,
    /// Connections closed or refused at the cap since the last warning.
    evicted: u64,
    refused: u64,
    last_warning: Option<Instant>,
}

struct Entry {
    waiting_since: Option<Instant>,
    evict: CancellationToken,
}

/// At the cap, what making room for a new connection did.
enum Room {
    Free,
    Evicted,
    Refused,
}

impl ConnectionCap {
    pub fn new(listener: &'static str, max: usize) -> Arc<Self> {
        Arc::new(Self {
            listener,
            max: max.max(1),
            inner: Mutex::default(),
        })
    }

    /// Registers a new connection, waiting. At the cap, first closes the connection that has
    /// waited longest; `None` (refuse the newcomer) when every open connection is busy.
    pub fn admit(self: &Arc<Self>) -> Option<Slot> {
        let now = Instant::now();
        let mut inner = self.inner.lock().expect("connection cap lock");
        let room = inner.make_room(self.max);
        let admitted = match room {
            Room::Refused => None,
            Room::Free | Room::Evicted => Some(inner.insert(now)),
        };
        let warning = match room {
            Room::Free => None,
            Room::Evicted | Room::Refused => inner.take_warning(now),
        };
        drop(inner);
        match room {
            Room::Free => {}
            Room::Evicted => tracing::debug!(
                listener = self.listener,
                "closed the longest-waiting connection to admit a new one"
            ),
            Room::Refused => tracing::debug!(
                listener = self.listener,
                "refused a connection: every connection is serving a request"
            ),
        }
        if let Some((evicted, refused)) = warning {
            tracing::warn!(
                listener = self.listener,
                max = self.max,
                evicted,
                refused,
                "connection cap reached: closing the longest-waiting connections for new ones, \
                 refusing new ones while every connection is busy"
            );
        }
        admitted.map(|(id, evicted)| Slot {
            cap: self.clone(),
            id,
            evicted,
        })
    }

    /// Connections open now.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.inner.lock().expect("connection cap lock").open.len()
    }

    fn update(&self, id: u64, change: impl FnOnce(&mut Inner, u64)) {
        change(&mut self.inner.lock().expect("connection cap lock"), id);
    }
}

impl Inner {
    fn make_room(&mut self, max: usize) -> Room {
        if self.open.len() < max {
            return Room::Free;
        }
        let Some((_, id)) = self.waiting.pop_first() else {
            self.refused += 1;
            return Room::Refused;
        };
        if let Some(entry) = self.open.remove(&id) {
            entry.evict.cancel();
        }
        self.evicted += 1;
        Room::Evicted
    }

    /// The counts to warn about, at most once per [`WARN_EVERY`].
    fn take_warning(&mut self, now: Instant) -> Option<(u64, u64)> {
        if self
            .last_warning
            .is_some_and(|last| now.duration_since(last) < WARN_EVERY)
        {
            return None;
        }
        self.last_warning = Some(now);
        let counts = (self.evicted, self.refused);
        (self.evicted, self.refused) = (0, 0);
        Some(counts)
    }

    fn insert(&mut self, now: Instant) -> (u64, CancellationToken) {
        let id = self.next_id;
        self.next_id += 1;
        let evict = CancellationToken::new();
        self.open.insert(
            id,
            Entry {
                waiting_since: Some(now),
                evict: evict.clone(),
            },
        );
        self.waiting.insert((now, id));
        (id, evict)
    }

    fn busy(&mut self, id: u64) {
        if let Some(since) = self.open.get_mut(&id).and_then(|e| e.waiting_since.take()) {
            self.waiting.remove(&(since, id));
        }
    }

    fn waiting(&mut self, id: u64) {
        if let Some(entry) = self.open.get_mut(&id)
            && entry.waiting_since.is_none()
        {
            let now = Instant::now();
            entry.waiting_since = Some(now);
            self.waiting.insert((now, id));
        }
    }

    fn close(&mut self, id: u64) {
        if let Some(since) = self.open.remove(&id).and_then(|e| e.waiting_since) {
            self.waiting.remove(&(since, id));
        }
    }
}

/// One open connection's place under the cap; dropping it frees the place.
pub struct Slot {
    cap: Arc<ConnectionCap>,
    id: u64,
    evicted: CancellationToken,
}

impl Slot {
    /// The connection is serving a request: it is not closed to make room.
    pub fn busy(&self) {
        self.cap.update(self.id, Inner::busy);
    }

    /// Busy if `busy()`, else waiting (from now, if it was busy). `busy` is asked under the cap's
    /// lock: callers that track requests outside it settle after each change, and the last to
    /// settle sees the last change.
    pub fn settle(&self, busy: impl FnOnce() -> bool) {
        self.cap.update(self.id, |inner, id| {
            if busy() {
                inner.busy(id);
            } else {
                inner.waiting(id);
            }
        });
    }

    /// The connection waits for a request again, from now.
    pub fn waiting(&self) {
        self.cap.update(self.id, Inner::waiting);
    }

    /// Cancelled when the connection must close to make room for a new one.
    pub fn evicted(&self) -> &CancellationToken {
        &self.evicted
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.cap.update(self.id, Inner::close);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admit_all(cap: &Arc<ConnectionCap>, count: usize) -> Vec<Slot> {
        (0..count)
            .map(|_| cap.admit().expect("room below the cap"))
            .collect()
    }

    #[test]
    fn at_the_cap_the_longest_waiting_connection_is_closed_for_the_new_one() {
        let cap = ConnectionCap::new("test", 3);
        let slots = admit_all(&cap, 3);
        let newcomer = cap.admit().expect("room made");
        assert!(slots[0].evicted().is_cancelled());
        assert!(!slots[1].evicted().is_cancelled());
        assert!(!slots[2].evicted().is_cancelled());
        assert!(!newcomer.evicted().is_cancelled());
        assert_eq!(cap.open(), 3);
    }

    #[test]
    fn busy_connections_are_never_closed_and_a_newcomer_is_refused_when_all_are_busy() {
        let cap = ConnectionCap::new("test", 2);
        let slots = admit_all(&cap, 2);
        slots[0].busy();
        let newcomer = cap.admit().expect("room made");
        assert!(!slots[0].evicted().is_cancelled());
        assert!(slots[1].evicted().is_cancelled());
        newcomer.busy();
        assert!(cap.admit().is_none());
        assert_eq!(cap.open(), 2);
    }

    #[test]
    fn a_connection_that_waits_again_queues_behind_those_waiting_since_before() {
        let cap = ConnectionCap::new("test", 2);
        let slots = admit_all(&cap, 2);
        slots[0].busy();
        slots[0].waiting();
        cap.admit().expect("room made");
        assert!(slots[1].evicted().is_cancelled());
        assert!(!slots[0].evicted().is_cancelled());
    }

    #[test]
    fn a_settled_connection_is_busy_or_waiting_as_told() {
        let cap = ConnectionCap::new("test", 2);
        let slots = admit_all(&cap, 2);
        slots[0].settle(|| true);
        slots[1].settle(|| true);
        assert!(cap.admit().is_none());
        slots[1].settle(|| false);
        cap.admit().expect("room made");
        assert!(slots[1].evicted().is_cancelled());
        assert!(!slots[0].evicted().is_cancelled());
    }

    #[test]
    fn a_closed_connection_frees_its_place() {
        let cap = ConnectionCap::new("test", 2);
        let mut slots = admit_all(&cap, 2);
        slots.iter().for_each(Slot::busy);
        assert!(cap.admit().is_none());
        slots.pop();
        assert!(cap.admit().is_some());
        assert!(!slots[0].evicted().is_cancelled());
    }

    #[test]
    fn an_evicted_connection_no_longer_counts_and_its_drop_frees_nothing_else() {
        let cap = ConnectionCap::new("test", 1);
        let first = cap.admit().expect("room");
        let second = cap.admit().expect("room made");
        assert!(first.evicted().is_cancelled());
        drop(first);
        assert_eq!(cap.open(), 1);
        second.busy();
        assert!(cap.admit().is_none());
    }
}
