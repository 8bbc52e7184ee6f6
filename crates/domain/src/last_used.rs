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
