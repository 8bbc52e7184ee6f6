//! Coalesces token use in memory (when, for which app, from which address) so that storage sees
//! at most one write per token per flush, however many requests a token serves.
//!
//! Each token being used has a [`UsageCell`] (held by its cache entry) that every use updates in
//! place; the cell is queued for the next flush only when it goes from clean to dirty, so the
//! shared queue is touched once per token per flush interval, not per request.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::StoreError;
use crate::ids::TokenId;
use crate::service_account::AppId;
use crate::store::TokenStore;
use crate::time::Timestamp;
use crate::token::Usage;

/// One token's pending use.
#[derive(Debug)]
pub struct UsageCell {
    /// Second of the last recorded use that carried neither an app nor an address: such uses
    /// are recorded at most once a second, without taking the lock.
    plain_second: AtomicI64,
    state: Mutex<CellState>,
}

#[derive(Debug, Default)]
struct CellState {
    latest: Option<Usage>,
    queued: bool,
}

impl Default for UsageCell {
    fn default() -> Self {
        Self {
            plain_second: AtomicI64::new(i64::MIN),
            state: Mutex::default(),
        }
    }
}

impl UsageCell {
    fn lock(&self) -> std::sync::MutexGuard<'_, CellState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the pending use, leaving the cell clean.
    fn take(&self) -> Option<Usage> {
        let mut state = self.lock();
        state.queued = false;
        state.latest.take()
    }
}

/// Tokens a flush takes from its queue and writes at a time: it holds the runtime's thread for
/// one chunk's bookkeeping at a time (about a millisecond), not for every pending token (about
/// 100 ms for 100,000 tokens, which other requests on that thread would wait for).
pub const FLUSH_CHUNK: usize = 1000;

#[derive(Debug, Default)]
pub struct LastUsed {
    pending: Mutex<HashMap<TokenId, Arc<UsageCell>>>,
}

impl LastUsed {
    /// Records a use of `token` in its cell.
    pub fn record(
        &self,
        token: TokenId,
        cell: &Arc<UsageCell>,
        at: Timestamp,
        app_id: Option<&AppId>,
        client_ip: Option<IpAddr>,
    ) {
        if app_id.is_none() && client_ip.is_none() {
            let second = at.timestamp();
            if cell.plain_second.swap(second, Ordering::Relaxed) == second {
                return;
            }
        }
        self.put(token, cell, at, app_id, client_ip);
    }

    fn put(
        &self,
        token: TokenId,
        cell: &Arc<UsageCell>,
        at: Timestamp,
        app_id: Option<&AppId>,
        client_ip: Option<IpAddr>,
    ) {
        let newly_queued = {
            let mut state = cell.lock();
            match &mut state.latest {
                Some(latest) => latest.merge_parts(at, app_id, client_ip),
                None => {
                    state.latest = Some(Usage {
                        at,
                        app_id: app_id.cloned(),
                        client_ip,
                    })
                }
            }
            !std::mem::replace(&mut state.queued, true)
        };
        if newly_queued {
            self.enqueue(token, cell.clone());
        }
    }

    /// Puts a dirty cell in the queue.
    fn enqueue(&self, token: TokenId, cell: Arc<UsageCell>) {
        let replaced = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.insert(token, cell.clone())
        };
        // The token's cache entry was replaced while its old cell was queued: keep what the
        // old cell held.
        if let Some(old) = replaced.filter(|old| !Arc::ptr_eq(old, &cell))
            && let Some(older) = old.take()
        {
            let mut state = cell.lock();
            match &mut state.latest {
                Some(latest) => latest.merge(&older),
                None => state.latest = Some(older),
            }
        }
    }

    /// Puts back queued cells that a failed flush did not take: they are still dirty. One lock
    /// for all of them; a token queued again meanwhile keeps its newer cell, which absorbs the
    /// old one's use.
    fn requeue(&self, cells: impl Iterator<Item = (TokenId, Arc<UsageCell>)>) {
        let mut absorbed = Vec::new();
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            for (token, cell) in cells {
                match pending.get(&token) {
                    Some(newer) if !Arc::ptr_eq(newer, &cell) => {
                        absorbed.push((newer.clone(), cell));
                    }
                    _ => {
                        pending.insert(token, cell);
                    }
                }
            }
        }
        for (newer, old) in absorbed {
            if let Some(older) = old.take() {
                let mut state = newer.lock();
                match &mut state.latest {
                    Some(latest) => latest.merge(&older),
                    None => state.latest = Some(older),
                }
            }
        }
    }

    /// Writes everything pending, [`FLUSH_CHUNK`] tokens at a time; on failure what was not
    /// written is kept for the next flush. Returns how many tokens were written.
    pub async fn flush(&self, store: &impl TokenStore) -> Result<usize, StoreError> {
        // The whole queue at once, in constant time: uses during the flush queue anew.
        let queued = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let mut queued = queued.into_iter();
        let mut written = 0;
        loop {
            let cells: Vec<(TokenId, Arc<UsageCell>)> = queued.by_ref().take(FLUSH_CHUNK).collect();
            if cells.is_empty() {
                return Ok(written);
            }
            let taken: Vec<(TokenId, Arc<UsageCell>, Usage)> = cells
                .into_iter()
                .filter_map(|(token, cell)| cell.take().map(|usage| (token, cell, usage)))
                .collect();
            let batch: Vec<(TokenId, Usage)> = taken
                .iter()
                .map(|(token, _, usage)| (*token, usage.clone()))
                .collect();
            if let Err(error) = store.record_last_used(&batch).await {
                for (token, cell, usage) in taken {
                    self.put(
                        token,
                        &cell,
                        usage.at,
                        usage.app_id.as_ref(),
                        usage.client_ip,
                    );
                }
                self.requeue(queued);
                return Err(error);
            }
            written += batch.len();
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use super::*;
    use crate::cache::IntrospectionCache;
    use crate::fixtures::issued;
    use crate::ids::ServiceAccountId;
    use crate::introspection::{Checks, Introspection, Introspector};
    use crate::store::StoreResult;
    use crate::token::{TokenHash, TokenRecord};

    /// An in-memory token store that keeps what was written per token.
    #[derive(Default)]
    struct CountingStore {
        records: StdMutex<HashMap<[u8; 32], TokenRecord>>,
        writes: StdMutex<HashMap<TokenId, Vec<Usage>>>,
        flushes: StdMutex<usize>,
        failing: std::sync::atomic::AtomicBool,
        /// Writes fail once this many have succeeded.
        fail_after: StdMutex<Option<usize>>,
    }

    impl TokenStore for Arc<CountingStore> {
        async fn find_tokens(
            &self,
            hashes: &[TokenHash],
        ) -> StoreResult<Vec<(TokenHash, StoreResult<TokenRecord>)>> {
            let records = self.records.lock().unwrap();
            Ok(hashes
                .iter()
                .filter_map(|hash| Some((*hash, Ok(records.get(hash.as_bytes())?.clone()))))
                .collect())
        }

        async fn issued_prefixes(&self) -> StoreResult<Vec<u64>> {
            Ok(Vec::new())
        }

        async fn record_last_used(&self, uses: &[(TokenId, Usage)]) -> StoreResult<()> {
            let done = *self.flushes.lock().unwrap();
            if self.failing.load(Ordering::Relaxed)
                || self.fail_after.lock().unwrap().is_some_and(|n| done >= n)
            {
                return Err(StoreError::Unavailable("down".into()));
            }
            *self.flushes.lock().unwrap() += 1;
            let mut writes = self.writes.lock().unwrap();
            for (token, usage) in uses {
                writes.entry(*token).or_default().push(usage.clone());
            }
            Ok(())
        }
    }

    fn issue(store: &CountingStore) -> (String, TokenId) {
        let (secret, record) = issued(ServiceAccountId::generate());
        let token_id = record.token_id;
        store
            .records
            .lock()
            .unwrap()
            .insert(*secret.hash().as_bytes(), record);
        (secret.expose().to_owned(), token_id)
    }

    fn introspector(store: &Arc<CountingStore>) -> Arc<Introspector<Arc<CountingStore>>> {
        Arc::new(Introspector::new(
            store.clone(),
            Arc::new(IntrospectionCache::new(
                100,
                1 << 20,
                std::time::Duration::from_secs(60),
            )),
            Arc::default(),
            4,
        ))
    }

    fn checks(app: &str, ip: &str) -> Checks {
        Checks::parse("org", app, &[], ip).unwrap()
    }

    #[tokio::test]
    async fn thousands_of_uses_become_one_write_per_token_per_flush() {
        let store = Arc::new(CountingStore::default());
        let tokens: Vec<(String, TokenId)> = (0..3).map(|_| issue(&store)).collect();
        let introspector = introspector(&store);
        let mut tasks = Vec::new();
        for worker in 0..8 {
            let introspector = introspector.clone();
            let tokens = tokens.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..500 {
                    let (secret, _) = &tokens[(worker + i) % tokens.len()];
                    // Half the uses name an app and an address, half do not.
                    let checks = if i % 2 == 0 {
                        checks("app1", "192.0.2.1")
                    } else {
                        Checks::default()
                    };
                    let result = introspector.introspect(secret, &checks).await.unwrap();
                    assert!(matches!(result, Introspection::Active { .. }));
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(introspector.flush_last_used().await.unwrap(), 3);
        assert_eq!(
            introspector.flush_last_used().await.unwrap(),
            0,
            "nothing new to write"
        );
        let writes = store.writes.lock().unwrap().clone();
        assert_eq!(writes.len(), 3);
        assert!(writes.values().all(|w| w.len() == 1), "{writes:?}");
        assert_eq!(*store.flushes.lock().unwrap(), 1);
    }

    #[tokio::test]
    async fn the_app_and_address_written_are_from_the_latest_allowed_uses_within_one_second() {
        let store = Arc::new(CountingStore::default());
        let (secret, token) = issue(&store);
        let introspector = introspector(&store);
        for checks in [
            checks("app1", "192.0.2.1"),
            Checks::default(),
            checks("", "2001:db8::7"),
            // Refused (the account has no access to app2): not a use.
            checks("app2", "198.51.100.1"),
        ] {
            introspector.introspect(&secret, &checks).await.unwrap();
        }
        introspector.flush_last_used().await.unwrap();
        let written = store.writes.lock().unwrap()[&token].clone();
        assert_eq!(written.len(), 1);
        assert_eq!(written[0].app_id.as_ref().map(AppId::as_str), Some("app1"));
        assert_eq!(written[0].client_ip, Some("2001:db8::7".parse().unwrap()));
    }

    #[tokio::test]
    async fn a_failed_flush_keeps_its_batch_for_the_next_one() {
        let store = Arc::new(CountingStore::default());
        let (secret, token) = issue(&store);
        let introspector = introspector(&store);
        introspector
            .introspect(&secret, &checks("app1", "192.0.2.1"))
            .await
            .unwrap();
        store.failing.store(true, Ordering::Relaxed);
        assert!(introspector.flush_last_used().await.is_err());
        store.failing.store(false, Ordering::Relaxed);
        assert_eq!(introspector.flush_last_used().await.unwrap(), 1);
        let written = store.writes.lock().unwrap()[&token].clone();
        assert_eq!(written[0].app_id.as_ref().map(AppId::as_str), Some("app1"));
    }

    #[tokio::test]
    async fn a_flush_writes_chunk_by_chunk_and_a_failure_keeps_what_was_not_written() {
        let store = Arc::new(CountingStore::default());
        let last_used = LastUsed::default();
        let count = 2 * FLUSH_CHUNK + 1;
        let at = crate::time::now();
        for _ in 0..count {
            let cell = Arc::new(UsageCell::default());
            last_used.record(
                TokenId::generate(),
                &cell,
                at,
                None,
                Some("192.0.2.1".parse().unwrap()),
            );
        }
        *store.fail_after.lock().unwrap() = Some(1);
        assert!(last_used.flush(&store).await.is_err());
        assert_eq!(store.writes.lock().unwrap().len(), FLUSH_CHUNK);
        assert_eq!(last_used.pending(), count - FLUSH_CHUNK);

        *store.fail_after.lock().unwrap() = None;
        assert_eq!(last_used.flush(&store).await.unwrap(), count - FLUSH_CHUNK);
        let writes = store.writes.lock().unwrap();
        assert_eq!(writes.len(), count);
        assert!(writes.values().all(|uses| uses.len() == 1));
        // One write for the first chunk, then two for the 1,001 left.
        assert_eq!(*store.flushes.lock().unwrap(), 3);
    }

    #[test]
    fn recording_keeps_the_latest_time_and_fills_from_older_uses_only_what_is_missing() {
        let last_used = LastUsed::default();
        let token = TokenId::generate();
        let cell = Arc::new(UsageCell::default());
        let early = crate::time::now();
        let late = early + chrono::TimeDelta::seconds(5);
        let app = |s| Some(AppId::parse(s).unwrap());
        last_used.record(token, &cell, late, app("new").as_ref(), None);
        last_used.record(
            token,
            &cell,
            early,
            app("old").as_ref(),
            Some("192.0.2.1".parse().unwrap()),
        );
        assert_eq!(last_used.pending(), 1);
        let usage = cell.take().unwrap();
        assert_eq!(usage.at, late);
        assert_eq!(usage.app_id, app("new"));
        assert_eq!(usage.client_ip, Some("192.0.2.1".parse().unwrap()));
    }
}
