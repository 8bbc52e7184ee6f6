//! The change feed callers watch to keep caches of introspection answers (`WatchChanges`).
//!
//! One bounded history per replica, numbered, that every watcher reads at its own pace: a
//! watcher is a position in it, so a thousand watchers cost a thousand integers, not a thousand
//! buffers. A watcher that falls further behind than the history reaches is sent a reset and
//! moved to the end (callers then drop everything), which bounds memory however slowly a caller
//! reads. A resume token is the replica's instance and a position: it resumes only on the
//! replica that gave it, and only while the history still holds what came after it.
//!
//! The feed follows the [change bus](crate::changes) after the cache, so an invalidation is
//! readable only once the cache has dropped what it made stale.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::changes::{Change, Subscriber};
use crate::ids::{OrgId, ServiceAccountId, TokenId};

/// What a watcher is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEvent {
    /// Every cached answer may be stale.
    Reset,
    /// Answers for this account's tokens (all, or only `token`) may have changed.
    Invalidation {
        org: OrgId,
        account: ServiceAccountId,
        token: Option<TokenId>,
    },
}

/// How a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The caller must drop everything it cached.
    Reset,
    /// The resume token was honoured: what the caller missed follows.
    Resumed,
}

/// The feed cannot be watched: this replica does not hear other replicas' changes now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this replica is not receiving other replicas' changes")]
pub struct FeedDown;

pub struct ChangeFeed {
    /// Random per process: a resume token from another replica, or from before a restart,
    /// never matches.
    instance: u64,
    capacity: usize,
    history: Mutex<History>,
    /// The last position and the era, for waking watchers.
    published: watch::Sender<(u64, u64)>,
}

struct History {
    /// Position of the newest event (0: none yet).
    last: u64,
    /// The newest events, oldest first; the last one is at `last`.
    events: VecDeque<FeedEvent>,
    /// Bumped whenever the feed goes down: watchers of an older era end.
    era: u64,
    up: bool,
}

impl ChangeFeed {
    /// Keeps the last `capacity` events for resuming and for slow watchers. `up`: whether
    /// watches are accepted before the first [`Change::Subscribed`] (a single replica has
    /// nothing else to hear from).
    pub fn new(capacity: usize, up: bool) -> Self {
        Self {
            instance: rand::random(),
            capacity,
            history: Mutex::new(History {
                last: 0,
                events: VecDeque::new(),
                era: 0,
                up,
            }),
            published: watch::Sender::new((0, 0)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A watcher of `org`'s invalidations (every org's with `None`), resuming after
    /// `resume_token` when that is one of this replica's and nothing it needs has been dropped
    /// from the history. A token that cannot be honoured, whatever it holds, starts with a reset.
    pub fn watch(
        self: &Arc<Self>,
        resume_token: &str,
        org: Option<OrgId>,
    ) -> Result<Watcher, FeedDown> {
        let history = self.lock();
        if !history.up {
            return Err(FeedDown);
        }
        let resumed = self.position_of(resume_token).filter(|&position| {
            position <= history.last && history.last - position <= history.events.len() as u64
        });
        let (start, position) = match resumed {
            Some(position) => (Start::Resumed, position),
            None => (Start::Reset, history.last),
        };
        Ok(Watcher {
            feed: self.clone(),
            org,
            position,
            era: history.era,
            start,
            wake: self.published.subscribe(),
        })
    }

    fn position_of(&self, token: &str) -> Option<u64> {
        let (instance, position) = token.split_once('-')?;
        (u64::from_str_radix(instance, 16).ok()? == self.instance && instance.len() == 16)
            .then(|| position.parse().ok())
            .flatten()
    }

    fn push(&self, event: FeedEvent) {
        let mut history = self.lock();
        history.last += 1;
        history.events.push_back(event);
        if history.events.len() > self.capacity {
            history.events.pop_front();
        }
        let woken = (history.last, history.era);
        drop(history);
        self.published.send_replace(woken);
    }

    fn set_up(&self, up: bool) {
        let mut history = self.lock();
        if history.up && !up {
            history.era += 1;
        }
        history.up = up;
        let woken = (history.last, history.era);
        drop(history);
        self.published.send_replace(woken);
    }

    /// Watchers now.
    pub fn watchers(&self) -> usize {
        self.published.receiver_count()
    }
}

impl Subscriber for ChangeFeed {
    fn changed(&self, change: &Change) {
        match change {
            Change::Account {
                org,
                account,
                token,
            } => self.push(FeedEvent::Invalidation {
                org: org.clone(),
                account: *account,
                token: *token,
            }),
            Change::TokenIssued(_) => {}
            Change::Everything => self.push(FeedEvent::Reset),
            Change::Subscribed => {
                // Whoever resumes across the gap must drop everything.
                self.push(FeedEvent::Reset);
                self.set_up(true);
            }
            Change::Lost => self.set_up(false),
        }
    }
}

/// One watcher: a position in the feed.
pub struct Watcher {
    feed: Arc<ChangeFeed>,
    org: Option<OrgId>,
    position: u64,
    era: u64,
    start: Start,
    wake: watch::Receiver<(u64, u64)>,
}

impl Watcher {
    pub fn start(&self) -> Start {
        self.start
    }

    /// The token that resumes after everything this watcher was given.
    pub fn resume_token(&self) -> String {
        format!("{:016x}-{}", self.feed.instance, self.position)
    }

    /// The next event for this watcher, waiting for one; a [`FeedEvent::Reset`] if it fell
    /// behind the history. `Err` once the feed went down since the watch began.
    pub async fn next(&mut self) -> Result<FeedEvent, FeedDown> {
        loop {
            if let Some(event) = self.take()? {
                return Ok(event);
            }
            // Marks the current value seen: a publication after `take` wakes this.
            if self.wake.changed().await.is_err() {
                return Err(FeedDown);
            }
        }
    }

    /// The next event already in the history, if any.
    fn take(&mut self) -> Result<Option<FeedEvent>, FeedDown> {
        self.wake.borrow_and_update();
        let history = self.feed.lock();
        if history.era != self.era || !history.up {
            return Err(FeedDown);
        }
        while self.position < history.last {
            let behind = history.last - self.position;
            let Some(index) = history.events.len().checked_sub(behind as usize) else {
                self.position = history.last;
                return Ok(Some(FeedEvent::Reset));
            };
            self.position += 1;
            let event = &history.events[index];
            let wanted = match (event, &self.org) {
                (FeedEvent::Invalidation { org, .. }, Some(only)) => org == only,
                _ => true,
            };
            if wanted {
                return Ok(Some(event.clone()));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests;
