//! Coalesces "token was used at T" in memory so that storage sees at most one write per token
//! per flush, however many requests a token serves.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::error::StoreError;
use crate::ids::TokenId;
use crate::store::TokenStore;
use crate::time::Timestamp;

#[derive(Debug, Default)]
pub struct LastUsed {
    pending: Mutex<HashMap<TokenId, Timestamp>>,
}

impl LastUsed {
    pub fn record(&self, token: TokenId, at: Timestamp) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending
            .entry(token)
            .and_modify(|t| *t = (*t).max(at))
            .or_insert(at);
    }

    /// Writes everything pending in one batch; on failure the batch is kept for the next flush.
    /// Returns how many tokens were written.
    pub async fn flush(&self, store: &impl TokenStore) -> Result<usize, StoreError> {
        let batch: Vec<(TokenId, Timestamp)> = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.drain().collect()
        };
        if batch.is_empty() {
            return Ok(0);
        }
        match store.record_last_used(&batch).await {
            Ok(()) => Ok(batch.len()),
            Err(error) => {
                for (token, at) in batch {
                    self.record(token, at);
                }
                Err(error)
            }
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::Mutex as StdMutex;

    use super::*;
    use crate::cache::IntrospectionCache;
    use crate::fixtures::issued;
    use crate::ids::ServiceAccountId;
    use crate::introspection::{Checks, Introspection, Introspector};
    use crate::store::StoreResult;
    use crate::token::{TokenHash, TokenRecord};

    /// An in-memory token store that counts writes per token.
    #[derive(Default)]
    struct CountingStore {
        records: StdMutex<HashMap<[u8; 32], TokenRecord>>,
        writes: StdMutex<HashMap<TokenId, usize>>,
        flushes: StdMutex<usize>,
    }

    impl TokenStore for Arc<CountingStore> {
        async fn find_token(&self, hash: &TokenHash) -> StoreResult<Option<TokenRecord>> {
            Ok(self.records.lock().unwrap().get(hash.as_bytes()).cloned())
        }

        async fn issued_prefixes(&self) -> StoreResult<Vec<u64>> {
            Ok(Vec::new())
        }

        async fn record_last_used(&self, uses: &[(TokenId, Timestamp)]) -> StoreResult<()> {
            *self.flushes.lock().unwrap() += 1;
            let mut writes = self.writes.lock().unwrap();
            for (token, _) in uses {
                *writes.entry(*token).or_default() += 1;
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

    #[tokio::test]
    async fn thousands_of_uses_become_one_write_per_token_per_flush() {
        let store = Arc::new(CountingStore::default());
        let tokens: Vec<(String, TokenId)> = (0..3).map(|_| issue(&store)).collect();
        let introspector = Arc::new(Introspector::new(
            store.clone(),
            Arc::new(IntrospectionCache::new(
                100,
                1 << 20,
                std::time::Duration::from_secs(60),
            )),
            4,
        ));
        let mut tasks = Vec::new();
        for worker in 0..8 {
            let introspector = introspector.clone();
            let tokens = tokens.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..500 {
                    let (secret, _) = &tokens[(worker + i) % tokens.len()];
                    let result = introspector
                        .introspect(secret, &Checks::default())
                        .await
                        .unwrap();
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
        assert!(writes.values().all(|&n| n == 1), "{writes:?}");
        assert_eq!(*store.flushes.lock().unwrap(), 1);
    }

    #[test]
    fn recording_keeps_the_latest_time_per_token() {
        let last_used = LastUsed::default();
        let token = TokenId::generate();
        let early = crate::time::now();
        let late = early + chrono::TimeDelta::seconds(5);
        last_used.record(token, late);
        last_used.record(token, early);
        assert_eq!(last_used.pending(), 1);
        let pending = last_used.pending.lock().unwrap().get(&token).copied();
        assert_eq!(pending, Some(late));
    }
}
