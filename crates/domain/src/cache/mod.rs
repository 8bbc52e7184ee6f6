//! The introspection cache: token hash → stored token record (or "no such token"), so that a hit costs
//! no storage round trip.
//!
//! Coherence rules, which the tests hold it to:
//! - Every change that can alter an introspection result invalidates the account's entries
//!   before the admin RPC returns (same replica), or when the change notification arrives
//!   (other replicas).
//! - A fill that raced with an invalidation is never served: entries remember the invalidation
//!   epoch read *before* their storage read, and an entry older than its account's last
//!   invalidation (or the last flush) counts as a miss.
//! - While the cross-replica invalidation channel is down, the cache is distrusted: nothing is
//!   served from it or stored in it until the channel is back (then it starts empty).
//! - Entries also expire after a maximum age, as a backstop.
//! - Memory is bounded in bytes as well as entries: an entry weighs at least its share of the
//!   byte budget per allowed entry, and is charged its account's data (name, app list) in full,
//!   although that data is held once and shared by the account's entries: the bound holds
//!   whatever is evicted, and sharing only makes real use lower.
//! - The per-account invalidation bookkeeping is a fixed array of epochs indexed by a hash of
//!   the account id: nothing in it is ever evicted, so an entry always sees its account's last
//!   invalidation; two accounts sharing a slot only cause extra misses.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::sync::Cache;

use crate::changes::{Change, Subscriber};
use crate::ids::ServiceAccountId;
use crate::last_used::UsageCell;
use crate::token::{AccountRecord, TokenHash, TokenRecord};

/// Roughly what one entry costs besides its account's shared part: the key, the entry, the
/// token record, the last-use cell, and the map's own bookkeeping per entry.
const ENTRY_BYTES: usize = std::mem::size_of::<TokenHash>()
    + std::mem::size_of::<Entry>()
    + std::mem::size_of::<TokenRecord>()
    + 2 * 16 // Arc headers
    + std::mem::size_of::<UsageCell>()
    + 96;

/// Slots of the invalidation array: 512 KiB of epochs.
const INVALIDATION_SLOTS: usize = 1 << 16;

#[derive(Clone)]
struct Entry {
    filled_at: u64,
    record: Option<Arc<TokenRecord>>,
    /// The slot of the account's last invalidation epoch: a hit checks it with one atomic load
    /// instead of a second map lookup.
    account_slot: u32,
    /// Whole seconds after [`IntrospectionCache::started`] past which the entry is too old to
    /// serve. Checked here rather than by moka's time-to-live, whose per-entry expiry queue
    /// costs memory and work on every insert; an expired entry is a miss and its refill
    /// replaces it.
    expires_after: u32,
    /// The token's pending use, updated in place by every hit (see [`crate::last_used`]).
    usage: Arc<UsageCell>,
}

/// What the cache knows about a token hash.
pub enum Lookup {
    Miss,
    /// Storage had no token with this hash.
    Unknown,
    Known {
        record: Arc<TokenRecord>,
        usage: Arc<UsageCell>,
    },
}

/// A ticket for storing what storage returned; see [`IntrospectionCache::begin_fill`].
#[derive(Debug, Clone, Copy)]
pub struct Fill(u64);

/// The entries' hasher: foldhash, seeded per process. Cheaper than the default SipHash, and
/// still unpredictable: anyone can make up well-formed tokens, so bucket collisions must not be
/// computable.
type EntryHasher = foldhash::fast::RandomState;

/// What an entry counts against the byte budget: at least its share of it, so that the budget
/// bounds the number of entries too, and the account data it points to in full.
#[derive(Clone)]
struct EntryWeight {
    least: u64,
}

impl quick_cache::Weighter<TokenHash, Entry> for EntryWeight {
    fn weight(&self, _: &TokenHash, entry: &Entry) -> u64 {
        let held = entry.record.as_ref().map_or(0, |r| {
            r.account.approximate_bytes() + r.allowed_cidrs.approximate_bytes()
        });
        ((ENTRY_BYTES + held) as u64).max(self.least)
    }
}

pub struct IntrospectionCache {
    entries: quick_cache::sync::Cache<TokenHash, Entry, EntryWeight, EntryHasher>,
    /// Each account's data, once, shared by its entries.
    accounts: Cache<ServiceAccountId, Arc<AccountRecord>>,
    /// The last invalidation epoch of the accounts hashed to each slot.
    invalidated: Box<[AtomicU64]>,
    epoch: AtomicU64,
    flushed_at: AtomicU64,
    trusted: AtomicBool,
    /// Capacity 0: never fill (moka could otherwise serve an entry until its housekeeping).
    enabled: bool,
    started: Instant,
    max_age: Duration,
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
}

/// Counters for operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub invalidations: u64,
    pub trusted: bool,
}

impl IntrospectionCache {
    /// At most `capacity` tokens (0 disables caching) and about `max_bytes` of memory for them,
    /// plus up to a quarter of that for their accounts' shared data.
    pub fn new(capacity: u64, max_bytes: u64, max_age: Duration) -> Self {
        // Weighing each entry at least max_bytes / capacity bounds the count as well.
        let least = max_bytes.checked_div(capacity).unwrap_or(0);
        Self {
            // Lean per entry (a slot in a slab and an index in a table), no background work,
            // and a hit takes a shared lock on one shard; CLOCK-PRO keeps hot tokens in.
            entries: quick_cache::sync::Cache::with(
                usize::try_from(capacity.clamp(1, 1 << 20)).unwrap_or(1 << 20),
                max_bytes.max(1),
                EntryWeight { least },
                EntryHasher::default(),
                Default::default(),
            ),
            accounts: Cache::builder()
                .max_capacity(max_bytes / 4)
                .weigher(|_, account: &Arc<AccountRecord>| {
                    u32::try_from(account.approximate_bytes()).unwrap_or(u32::MAX)
                })
                .time_to_idle(max_age * 2)
                .build(),
            invalidated: (0..INVALIDATION_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            epoch: AtomicU64::new(1),
            flushed_at: AtomicU64::new(0),
            trusted: AtomicBool::new(true),
            enabled: capacity > 0,
            started: Instant::now(),
            max_age,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
        }
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            trusted: self.is_trusted(),
        }
    }

    pub fn get(&self, hash: &TokenHash) -> Lookup {
        let lookup = self.lookup(hash);
        let counter = match lookup {
            Lookup::Miss => &self.misses,
            _ => &self.hits,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        lookup
    }

    fn lookup(&self, hash: &TokenHash) -> Lookup {
        if !self.trusted.load(Ordering::Acquire) {
            return Lookup::Miss;
        }
        let Some(entry) = self.entries.get(hash) else {
            return Lookup::Miss;
        };
        if entry.filled_at < self.flushed_at.load(Ordering::Acquire)
            || self.started.elapsed().as_secs() >= u64::from(entry.expires_after)
        {
            return Lookup::Miss;
        }
        match entry.record {
            None => Lookup::Unknown,
            Some(record) => {
                let slot = entry.account_slot as usize;
                if entry.filled_at < self.invalidated[slot].load(Ordering::SeqCst) {
                    return Lookup::Miss;
                }
                Lookup::Known {
                    record,
                    usage: entry.usage,
                }
            }
        }
    }

    /// Call before reading storage; `None` while the cache is distrusted (do not fill).
    pub fn begin_fill(&self) -> Option<Fill> {
        (self.enabled && self.trusted.load(Ordering::Acquire))
            .then(|| Fill(self.epoch.load(Ordering::SeqCst)))
    }

    /// Stores what storage returned and hands back the record to answer with, its account part
    /// shared with the account's other cached tokens.
    pub fn insert(
        &self,
        hash: TokenHash,
        record: Option<TokenRecord>,
        fill: Fill,
    ) -> Option<Arc<TokenRecord>> {
        let record = record.map(|record| Arc::new(self.share_account(record)));
        let account_slot = record
            .as_ref()
            .map_or(0, |r| slot(r.account.service_account_id) as u32);
        let expires_after = self
            .started
            .elapsed()
            .saturating_add(self.max_age)
            .as_secs();
        self.entries.insert(
            hash,
            Entry {
                filled_at: fill.0,
                record: record.clone(),
                account_slot,
                expires_after: u32::try_from(expires_after).unwrap_or(u32::MAX),
                usage: Arc::default(),
            },
        );
        record
    }

    /// The account data already held for this account when it is the same, so that a thousand
    /// tokens of one account hold one copy of its app list.
    fn share_account(&self, mut record: TokenRecord) -> TokenRecord {
        let id = record.account.service_account_id;
        match self.accounts.get(&id) {
            Some(held) if *held == *record.account => record.account = held,
            _ => self.accounts.insert(id, record.account.clone()),
        }
        record
    }

    /// Every cached token of `account` is re-read from storage on its next use.
    pub fn invalidate_account(&self, account: ServiceAccountId) {
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        self.invalidated[slot(account)].fetch_max(epoch, Ordering::SeqCst);
    }

    /// Everything is re-read from storage on its next use.
    pub fn invalidate_all(&self) {
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        self.flushed_at.store(epoch, Ordering::Release);
        self.entries.clear();
        self.invalidations.fetch_add(1, Ordering::Relaxed);
    }

    /// The invalidation channel is down: serve nothing from the cache until [`Self::trust`].
    pub fn distrust(&self) {
        self.trusted.store(false, Ordering::Release);
        self.invalidate_all();
    }

    /// The invalidation channel is back. Changes may have been missed meanwhile, so start empty.
    pub fn trust(&self) {
        self.invalidate_all();
        self.trusted.store(true, Ordering::Release);
    }

    pub fn is_trusted(&self) -> bool {
        self.trusted.load(Ordering::Acquire)
    }

    pub fn entry_count(&self) -> u64 {
        self.entries.len() as u64
    }
}

/// The invalidation slot of an account: its id's bits folded and spread over the slots.
fn slot(account: ServiceAccountId) -> usize {
    let bits = account.as_uuid().as_u128();
    let folded = (bits as u64) ^ ((bits >> 64) as u64);
    (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - 16)) as usize
}

/// Follows every change; must be the bus's first subscriber (see [`crate::changes`]).
impl Subscriber for IntrospectionCache {
    fn changed(&self, change: &Change) {
        match change {
            Change::Account { account, .. } => self.invalidate_account(*account),
            Change::TokenIssued(_) => {}
            Change::Everything => self.invalidate_all(),
            Change::Subscribed => self.trust(),
            Change::Lost => self.distrust(),
        }
    }
}

#[cfg(test)]
mod tests;
