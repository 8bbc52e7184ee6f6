//! A caller-side cache of `Introspect` answers, kept coherent by `WatchChanges` (opt-in, see
//! [`CacheOptions`]; the argument is in the repository's `docs/caching.md`).
//!
//! - Answers are cached only while the feed is up, and the feed runs on the same channel (one
//!   HTTP/2 connection, one replica) as the `Introspect` calls.
//! - Every answer remembers the feed's epoch read before its call was sent; an invalidation of
//!   its account, or a reset, that arrived later makes it a miss. So an answer that was in flight
//!   across an invalidation is never served.
//! - A cached token is decided here by the control plane's own rules
//!   (`service_accounts_domain::introspection::evaluate`), so its expiry, networks, org, apps and
//!   scopes are checked on every use, exactly as the server would.
//! - Nothing is served when nothing has arrived on the feed for `max_staleness`, nor after the
//!   feed drops (a new feed starts with a reset, which empties the cache).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use service_accounts_domain::ids::ServiceAccountId;
use service_accounts_domain::token::{AccountRecord, TokenHash, TokenRecord};
use tonic::transport::Channel;

use crate::identity::record_of;
use crate::pb::token_introspection_client::TokenIntrospectionClient;
use crate::pb::watch_changes_response::Event;
use crate::pb::{InactiveReason, IntrospectResponse, WatchChangesRequest};

/// How answers not known to be final (unknown token, disabled account) may be reused: they name
/// no account an invalidation could name.
const BRIEF: Duration = Duration::from_secs(1);

/// Slots of the per-account invalidation epochs (a hash of the account id picks one; two
/// accounts sharing a slot only cost extra misses).
const SLOTS: usize = 4096;

/// Opt-in caching for [`IntrospectionClient`](crate::IntrospectionClient).
#[derive(Clone, Copy, Debug)]
pub struct CacheOptions {
    capacity: usize,
    max_staleness: Duration,
}

impl CacheOptions {
    /// Up to `capacity` tokens, and a staleness bound of 5 s.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            max_staleness: Duration::from_secs(5),
        }
    }

    pub(crate) fn max_staleness_bound(&self) -> Duration {
        self.max_staleness
    }

    /// Past this long without a message on the feed (the server sends a heartbeat every second
    /// by default), answers are no longer served from the cache: every call goes to the
    /// control plane, and fails closed if it cannot answer.
    pub fn max_staleness(mut self, max_staleness: Duration) -> Self {
        self.max_staleness = max_staleness;
        self
    }
}

/// What is cached for a token.
#[derive(Clone)]
pub(crate) enum Answer {
    /// An active token: decided here for each requirement.
    Active(Arc<TokenRecord>),
    /// Revoked or expired: it never works again.
    Final(InactiveReason),
    /// Unknown, or of a disabled account: reused for [`BRIEF`] only, until `until_ms` after the
    /// cache's start.
    Brief {
        reason: InactiveReason,
        until_ms: u64,
    },
}

/// 24 bytes: an account's invalidation slot is computed from the record when read, not kept.
#[derive(Clone)]
struct Entry {
    /// The feed's epoch when the call that filled it was sent.
    filled: u64,
    answer: Answer,
}

/// Entries are keyed by the first 128 bits of the token's SHA-256: an active answer's record
/// holds the whole digest, compared in constant time before it is used (as the server does),
/// so the key need not hold it again. For inactive answers a 128-bit prefix is as unique as an id.
fn key(hash: &TokenHash) -> u128 {
    let bytes = hash.as_bytes();
    u128::from_le_bytes(std::array::from_fn(|i| bytes[i]))
}

/// A ticket for caching the answer of one call: see [`CallerCache::begin`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    epoch: u64,
    generation: u64,
}

pub(crate) struct CallerCache {
    entries: quick_cache::sync::Cache<u128, Entry>,
    /// Each account's data once, shared by its tokens' entries (its app list is most of an
    /// entry's memory).
    accounts: quick_cache::sync::Cache<ServiceAccountId, Arc<AccountRecord>>,
    /// Bumped by every message that drops answers.
    epoch: AtomicU64,
    /// The epoch of the last reset: older entries are misses.
    reset_at: AtomicU64,
    invalidated: Box<[AtomicU64]>,
    up: AtomicBool,
    /// Bumped whenever the feed goes down or up: an answer whose call began under another
    /// generation is not cached.
    generation: AtomicU64,
    last_heard_ms: AtomicU64,
    started: Instant,
    max_staleness: Duration,
}

impl CallerCache {
    pub(crate) fn new(options: CacheOptions) -> Self {
        Self {
            entries: quick_cache::sync::Cache::new(options.capacity),
            accounts: quick_cache::sync::Cache::new(options.capacity / 4 + 1),
            epoch: AtomicU64::new(1),
            reset_at: AtomicU64::new(0),
            invalidated: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            up: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            last_heard_ms: AtomicU64::new(0),
            started: Instant::now(),
            max_staleness: options.max_staleness,
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The feed is up and spoke within the staleness bound.
    fn usable(&self) -> bool {
        self.up.load(Ordering::Acquire)
            && self
                .now_ms()
                .saturating_sub(self.last_heard_ms.load(Ordering::Acquire))
                < self.max_staleness.as_millis() as u64
    }

    pub(crate) fn get(&self, hash: &TokenHash) -> Option<Answer> {
        if !self.usable() {
            return None;
        }
        let entry = self.entries.get(&key(hash))?;
        if entry.filled < self.reset_at.load(Ordering::Acquire) {
            return None;
        }
        match &entry.answer {
            Answer::Active(record) => {
                let invalidated = &self.invalidated[slot(record.account.service_account_id)];
                if entry.filled < invalidated.load(Ordering::SeqCst)
                    || !record.token_hash.ct_eq(hash)
                {
                    return None;
                }
            }
            Answer::Brief { until_ms, .. } if self.now_ms() >= *until_ms => return None,
            _ => {}
        }
        Some(entry.answer)
    }

    /// Call before sending `Introspect`; `None` when the answer must not be cached.
    pub(crate) fn begin(&self) -> Option<Ticket> {
        let generation = self.generation.load(Ordering::SeqCst);
        self.usable().then(|| Ticket {
            epoch: self.epoch.load(Ordering::SeqCst),
            generation,
        })
    }

    /// Caches what the control plane answered for `hash`, if that is allowed (see the module).
    /// Returns the answer to decide with, when it could be read as one.
    pub(crate) fn insert(
        &self,
        hash: TokenHash,
        response: &IntrospectResponse,
        ticket: Ticket,
    ) -> Option<Answer> {
        let brief_until = self.now_ms() + BRIEF.as_millis() as u64;
        let answer = match answer_of(hash, response, brief_until)? {
            Answer::Active(record) => Answer::Active(self.share_account(record)),
            answer => answer,
        };
        if self.generation.load(Ordering::SeqCst) != ticket.generation
            || !self.up.load(Ordering::Acquire)
        {
            return Some(answer);
        }
        self.entries.insert(
            key(&hash),
            Entry {
                filled: ticket.epoch,
                answer: answer.clone(),
            },
        );
        Some(answer)
    }

    /// The record, with its account's data replaced by the copy already held when equal.
    fn share_account(&self, mut record: Arc<TokenRecord>) -> Arc<TokenRecord> {
        let id = record.account.service_account_id;
        match self.accounts.get(&id) {
            Some(held) if *held == *record.account => {
                if let Some(owned) = Arc::get_mut(&mut record) {
                    owned.account = held;
                }
            }
            _ => self.accounts.insert(id, record.account.clone()),
        }
        record
    }

    fn heard(&self) {
        self.last_heard_ms.store(self.now_ms(), Ordering::Release);
    }

    fn reset(&self) {
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        self.reset_at.store(epoch, Ordering::Release);
        self.entries.clear();
        self.accounts.clear();
    }

    fn invalidate(&self, account: ServiceAccountId) {
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        self.invalidated[slot(account)].fetch_max(epoch, Ordering::SeqCst);
    }

    fn set_up(&self, up: bool) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.up.store(up, Ordering::Release);
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// A cache whose feed is up and has just spoken.
    #[cfg(test)]
    pub(crate) fn live(options: CacheOptions) -> Self {
        let cache = Self::new(options);
        cache.reset();
        cache.set_up(true);
        cache.heard();
        cache
    }
}

fn slot(account: ServiceAccountId) -> usize {
    let bits = account.as_uuid().as_u128();
    let folded = (bits as u64) ^ ((bits >> 64) as u64);
    (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - 12)) as usize
}

/// The cacheable reading of an answer; `None` when it cannot be read as one (a field this
/// version does not understand), and then nothing is cached.
fn answer_of(hash: TokenHash, response: &IntrospectResponse, brief_until: u64) -> Option<Answer> {
    if !response.active {
        return match response.inactive_reason() {
            reason @ (InactiveReason::Revoked | InactiveReason::Expired) => {
                Some(Answer::Final(reason))
            }
            reason @ (InactiveReason::Unknown | InactiveReason::AccountDisabled) => {
                Some(Answer::Brief {
                    reason,
                    until_ms: brief_until,
                })
            }
            InactiveReason::Malformed | InactiveReason::Unspecified => None,
        };
    }
    record_of(hash, response).map(|record| Answer::Active(Arc::new(record)))
}

/// Follows `WatchChanges` on `channel` for as long as `cache` is used by anyone, reconnecting
/// with backoff. Each new stream starts from nothing (no resume token): the first message is a
/// reset, which empties the cache before it is used again.
pub(crate) async fn follow(cache: Weak<CallerCache>, channel: Channel, max_staleness: Duration) {
    let mut client = TokenIntrospectionClient::new(channel);
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(strong) = cache.upgrade() else {
            return;
        };
        let staleness = max_staleness;
        let stream = tokio::time::timeout(
            staleness,
            client.watch_changes(WatchChangesRequest::default()),
        )
        .await;
        if let Ok(Ok(stream)) = stream {
            let mut stream = stream.into_inner();
            drop(strong);
            loop {
                let message = tokio::time::timeout(staleness, stream.message()).await;
                let Some(cache) = cache.upgrade() else {
                    return;
                };
                let Ok(Ok(Some(message))) = message else {
                    break;
                };
                backoff = Duration::from_millis(50);
                match message.event {
                    Some(Event::Reset(_)) => {
                        cache.reset();
                        if !cache.up.load(Ordering::Acquire) {
                            cache.set_up(true);
                        }
                    }
                    Some(Event::Invalidation(invalidation)) => {
                        match ServiceAccountId::parse(&invalidation.service_account_id) {
                            Ok(account) => cache.invalidate(account),
                            // Not an account this version can read: drop everything.
                            Err(_) => cache.reset(),
                        }
                    }
                    Some(Event::Heartbeat(_)) | None => {}
                }
                cache.heard();
            }
        } else {
            drop(strong);
        }
        if let Some(cache) = cache.upgrade() {
            cache.set_up(false);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests;
