use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Answer, Lookups, MAX_BATCH};
use crate::StoreError;
use crate::fixtures::issued;
use crate::ids::{ServiceAccountId, TokenId};
use crate::store::{StoreResult, TokenStore};
use crate::token::Usage;
use crate::token::{TokenHash, TokenRecord, TokenSecret};

/// A store whose queries take 10 ms, and which logs the hashes of each query.
#[derive(Default)]
struct LoggingStore {
    records: HashMap<TokenHash, TokenRecord>,
    queries: Mutex<Vec<Vec<TokenHash>>>,
    failing: bool,
    /// A stored token that cannot be read.
    unreadable: Option<TokenHash>,
}

impl LoggingStore {
    fn with_tokens(count: usize) -> (Self, Vec<TokenHash>) {
        let records: HashMap<_, _> = (0..count)
            .map(|_| {
                let (_, record) = issued(ServiceAccountId::generate());
                (record.token_hash, record)
            })
            .collect();
        let hashes = records.keys().copied().collect();
        let store = Self {
            records,
            ..Self::default()
        };
        (store, hashes)
    }

    fn queries(&self) -> Vec<Vec<TokenHash>> {
        self.queries.lock().unwrap().clone()
    }
}

impl TokenStore for Arc<LoggingStore> {
    async fn find_tokens(
        &self,
        hashes: &[TokenHash],
    ) -> StoreResult<Vec<(TokenHash, StoreResult<TokenRecord>)>> {
        self.queries.lock().unwrap().push(hashes.to_vec());
        tokio::time::sleep(Duration::from_millis(10)).await;
        if self.failing {
            return Err(StoreError::Unavailable("down".into()));
        }
        Ok(hashes
            .iter()
            .filter_map(|h| {
                let record = self.records.get(h)?.clone();
                let unreadable = StoreError::Other("unreadable row".into());
                Some((
                    *h,
                    if self.unreadable == Some(*h) {
                        Err(unreadable)
                    } else {
                        Ok(record)
                    },
                ))
            })
            .collect())
    }

    async fn issued_prefixes(&self) -> StoreResult<Vec<u64>> {
        Ok(Vec::new())
    }

    async fn record_last_used(&self, _: &[(TokenId, Usage)]) -> StoreResult<()> {
        Ok(())
    }
}

/// Sorted as a batch's hashes are sent.
fn sorted(mut hashes: Vec<TokenHash>) -> Vec<TokenHash> {
    hashes.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    hashes
}

fn made_up() -> TokenHash {
    TokenSecret::generate().hash()
}

/// Runs `find` for each hash at once, in this order, and returns the answers in that order.
async fn find_all(
    lookups: &Arc<Lookups>,
    store: &Arc<LoggingStore>,
    hashes: &[TokenHash],
) -> Vec<Result<Option<TokenRecord>, StoreError>> {
    let tasks: Vec<_> = hashes
        .iter()
        .map(|hash| {
            let (lookups, store, hash) = (lookups.clone(), store.clone(), *hash);
            tokio::spawn(async move { lookups.find(&store, hash).await })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

fn found(answer: &Result<Option<TokenRecord>, StoreError>) -> Option<TokenHash> {
    answer.as_ref().unwrap().as_ref().map(|r| r.token_hash)
}

#[tokio::test(start_paused = true)]
async fn a_lone_miss_is_looked_up_at_once_by_itself() {
    let (store, hashes) = LoggingStore::with_tokens(1);
    let store = Arc::new(store);
    let lookups = Arc::new(Lookups::new(4));
    let answer = lookups.find(&store, hashes[0]).await;
    assert_eq!(found(&answer), Some(hashes[0]));
    assert_eq!(store.queries(), [vec![hashes[0]]]);
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_misses_takes_a_few_queries_and_each_gets_its_own_answer() {
    let (store, known) = LoggingStore::with_tokens(50);
    let store = Arc::new(store);
    let lookups = Arc::new(Lookups::new(2));
    let mut hashes = known.clone();
    hashes.extend((0..50).map(|_| made_up()));
    let answers = find_all(&lookups, &store, &hashes).await;
    for (hash, answer) in hashes.iter().zip(&answers) {
        let expected = known.contains(hash).then_some(*hash);
        assert_eq!(found(answer), expected);
    }
    let queries = store.queries();
    // Two go out at once alone; the other 98 queue and leave in batches of at most 32.
    assert!(
        queries.len() <= 2 + 98_usize.div_ceil(MAX_BATCH),
        "{queries:?}"
    );
    assert!(queries.iter().all(|q| q.len() <= MAX_BATCH));
    assert_eq!(queries.iter().map(Vec::len).sum::<usize>(), 100);
}

#[tokio::test(start_paused = true)]
async fn a_token_missed_by_several_requests_at_once_is_found_for_each_in_one_lookup() {
    let (store, known) = LoggingStore::with_tokens(2);
    let store = Arc::new(store);
    let lookups = Arc::new(Lookups::new(1));
    // The first occupies the only slot; the five misses of the second queue together.
    let hashes = [known[0], known[1], known[1], known[1], known[1], known[1]];
    let answers = find_all(&lookups, &store, &hashes).await;
    for (hash, answer) in hashes.iter().zip(&answers) {
        assert_eq!(found(answer), Some(*hash));
    }
    assert_eq!(store.queries(), [vec![known[0]], vec![known[1]]]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_query_fails_every_miss_it_carried() {
    let store = Arc::new(LoggingStore {
        failing: true,
        ..LoggingStore::default()
    });
    let lookups = Arc::new(Lookups::new(1));
    let hashes: Vec<_> = (0..5).map(|_| made_up()).collect();
    let answers = find_all(&lookups, &store, &hashes).await;
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Err(StoreError::Unavailable(_))))
    );
    assert_eq!(store.queries().len(), 2);
}

type Spawn = Box<dyn Fn(TokenHash) -> tokio::task::JoinHandle<Answer>>;

/// A store of three tokens behind one lookup slot, and a way to start a miss.
fn one_slot_with_three_tokens() -> (Arc<LoggingStore>, Vec<TokenHash>, Spawn) {
    let (store, known) = LoggingStore::with_tokens(3);
    let store = Arc::new(store);
    let lookups = Arc::new(Lookups::new(1));
    let spawn_store = store.clone();
    let spawn = Box::new(move |hash: TokenHash| {
        let (lookups, store) = (lookups.clone(), spawn_store.clone());
        tokio::spawn(async move { lookups.find(&store, hash).await })
    });
    (store, known, spawn)
}

#[tokio::test(start_paused = true)]
async fn a_miss_whose_batch_was_cancelled_is_looked_up_again() {
    let (store, known, spawn) = one_slot_with_three_tokens();
    let first = spawn(known[0]);
    tokio::time::sleep(Duration::from_millis(1)).await;
    // Both queue behind the first; when it is done, the second takes both in one batch.
    let second = spawn(known[1]);
    let third = spawn(known[2]);
    tokio::time::sleep(Duration::from_millis(15)).await;
    assert_eq!(store.queries()[1], sorted(vec![known[1], known[2]]));
    second.abort();
    let third = third.await.unwrap();
    assert_eq!(found(&third), Some(known[2]));
    assert_eq!(found(&first.await.unwrap()), Some(known[0]));
    assert_eq!(store.queries().last().unwrap(), &[known[2]]);
}

#[tokio::test(start_paused = true)]
async fn a_miss_whose_request_went_away_is_not_looked_up() {
    let (store, known, spawn) = one_slot_with_three_tokens();
    let first = spawn(known[0]);
    tokio::time::sleep(Duration::from_millis(1)).await;
    let gone = spawn(known[1]);
    let waiting = spawn(known[2]);
    tokio::time::sleep(Duration::from_millis(1)).await;
    gone.abort();
    assert_eq!(found(&first.await.unwrap()), Some(known[0]));
    assert_eq!(found(&waiting.await.unwrap()), Some(known[2]));
    assert_eq!(store.queries(), [vec![known[0]], vec![known[2]]]);
}

#[tokio::test(start_paused = true)]
async fn a_token_storage_cannot_read_fails_only_its_own_misses() {
    let (mut store, known) = LoggingStore::with_tokens(3);
    store.unreadable = Some(known[1]);
    let store = Arc::new(store);
    let lookups = Arc::new(Lookups::new(1));
    let hashes = [known[0], known[1], known[2], known[1]];
    let answers = find_all(&lookups, &store, &hashes).await;
    assert_eq!(found(&answers[0]), Some(known[0]));
    assert!(matches!(answers[1], Err(StoreError::Other(_))));
    assert_eq!(found(&answers[2]), Some(known[2]));
    assert!(matches!(answers[3], Err(StoreError::Other(_))));
    // The last three went in one batch.
    assert_eq!(store.queries().len(), 2);
}
