//! Storage lookups of cache misses, batched while storage is busy.
//!
//! A miss queries storage at once when a slot is free, so a quiet service waits for nothing.
//! When every slot is taken, misses queue, and each slot that frees up takes the oldest queued
//! misses, up to [`MAX_BATCH`] distinct tokens, in one query. Under a burst of misses (a
//! restart, an invalidation, a flood of made-up tokens) one round trip and one statement then
//! serve many requests, and storage never sees more than `slots` queries at once.
//!
//! Waiting misses help: whichever of them gets a free slot runs the next batch, so no task
//! or thread of its own is needed (a miss may so run a batch that does not hold its own token).
//! A miss whose batch is lost (the request running it was cancelled) queues again, at the
//! front. Every miss is queued before any query that answers it is sent,
//! which keeps the cache's rule that a fill's epoch is read before its storage read.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::{Semaphore, oneshot};

use crate::StoreError;
use crate::store::TokenStore;
use crate::token::{TokenHash, TokenRecord};

/// The most distinct tokens one query looks up.
pub const MAX_BATCH: usize = 32;

type Answer = Result<Option<TokenRecord>, StoreError>;

pub(crate) struct Lookups {
    slots: Semaphore,
    queue: Mutex<VecDeque<Waiting>>,
}

struct Waiting {
    hash: TokenHash,
    answer: oneshot::Sender<Answer>,
}

impl Lookups {
    /// At most `slots` (at least 1) queries at once.
    pub(crate) fn new(slots: usize) -> Self {
        Self {
            slots: Semaphore::new(slots.max(1)),
            queue: Mutex::new(VecDeque::new()),
        }
    }

    /// The token with this hash, from a query of its own or one shared with other misses.
    pub(crate) async fn find(&self, store: &impl TokenStore, hash: TokenHash) -> Answer {
        let mut requeued = false;
        loop {
            let (answer, mut answered) = oneshot::channel();
            let waiting = Waiting { hash, answer };
            // A miss whose batch was lost goes first: it has waited longest.
            if requeued {
                self.queue().push_front(waiting);
            } else {
                self.queue().push_back(waiting);
            }
            requeued = true;
            loop {
                tokio::select! {
                    biased;
                    answer = &mut answered => match answer {
                        Ok(answer) => return answer,
                        Err(_) => break, // its batch was cancelled: queue again
                    },
                    slot = self.slots.acquire() => {
                        let _slot = slot.map_err(|_| {
                            StoreError::Unavailable("introspection is shutting down".into())
                        })?;
                        let batch = self.take_batch();
                        if batch.is_empty() {
                            // Another slot took this miss: its answer is on the way.
                            drop(_slot);
                            match (&mut answered).await {
                                Ok(answer) => return answer,
                                Err(_) => break,
                            }
                        }
                        answer_batch(store, batch).await;
                    }
                }
            }
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Waiting>> {
        // The queue is only pushed to and drained; a panic elsewhere cannot leave it torn.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The oldest waiting misses, up to [`MAX_BATCH`] distinct tokens. Misses of a token already
    /// taken ride along for free; misses whose request has gone away are dropped.
    fn take_batch(&self) -> Vec<Waiting> {
        let mut queue = self.queue();
        let mut batch: Vec<Waiting> = Vec::new();
        let mut distinct: Vec<TokenHash> = Vec::with_capacity(MAX_BATCH);
        while let Some(next) = queue.front() {
            let repeat = distinct.contains(&next.hash);
            if !repeat && distinct.len() == MAX_BATCH {
                break;
            }
            let Some(next) = queue.pop_front() else { break };
            if next.answer.is_closed() {
                continue;
            }
            if !repeat {
                distinct.push(next.hash);
            }
            batch.push(next);
        }
        batch
    }
}

async fn answer_batch(store: &impl TokenStore, batch: Vec<Waiting>) {
    let mut hashes: Vec<TokenHash> = batch.iter().map(|w| w.hash).collect();
    hashes.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    hashes.dedup();
    match store.find_tokens(&hashes).await {
        Ok(found) => {
            for waiting in batch {
                // The query matched by hash; the introspector confirms in constant time.
                let record = found
                    .iter()
                    .find(|(hash, _)| *hash == waiting.hash)
                    .map(|(_, record)| record.clone())
                    .transpose();
                let _ = waiting.answer.send(record);
            }
        }
        Err(error) => {
            for waiting in batch {
                let _ = waiting.answer.send(Err(error.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests;
