use super::*;
use crate::fixtures::record_of;
use crate::token::TokenSecret;

fn entry(account: ServiceAccountId) -> (TokenHash, TokenRecord) {
    let record = TokenRecord::clone(&record_of(account));
    (record.token_hash, record)
}

fn cache() -> IntrospectionCache {
    IntrospectionCache::new(1000, 1 << 20, Duration::from_secs(60))
}

#[test]
fn hits_after_fill_and_misses_after_account_invalidation() {
    let cache = cache();
    let account = ServiceAccountId::generate();
    let other = ServiceAccountId::generate();
    let (hash, g) = entry(account);
    let (other_hash, other_record) = entry(other);
    cache.insert(hash, Some(g), cache.begin_fill().unwrap());
    cache.insert(other_hash, Some(other_record), cache.begin_fill().unwrap());
    assert!(matches!(cache.get(&hash), Lookup::Known { .. }));
    cache.invalidate_account(account);
    assert!(matches!(cache.get(&hash), Lookup::Miss));
    assert!(matches!(cache.get(&other_hash), Lookup::Known { .. }));
}

#[test]
fn a_fill_that_read_storage_before_an_invalidation_is_never_served() {
    let cache = cache();
    let account = ServiceAccountId::generate();
    let (hash, g) = entry(account);
    let fill = cache.begin_fill().unwrap(); // introspection starts reading storage
    cache.invalidate_account(account); // an admin change commits and invalidates
    cache.insert(hash, Some(g.clone()), fill); // the stale read lands afterwards
    assert!(matches!(cache.get(&hash), Lookup::Miss));
    // A read that started after the invalidation is served.
    cache.insert(hash, Some(g), cache.begin_fill().unwrap());
    assert!(matches!(cache.get(&hash), Lookup::Known { .. }));
}

#[test]
fn a_hot_tokens_account_is_still_invalidated_after_thousands_of_other_accounts_changed() {
    let cache = IntrospectionCache::new(10, 1 << 20, Duration::from_secs(60));
    let account = ServiceAccountId::generate();
    let (hash, record) = entry(account);
    cache.insert(hash, Some(record), cache.begin_fill().unwrap());
    // Other accounts, none of them sharing the hot one's invalidation slot (one in 65,536 would,
    // and its change would only cost the hot token a miss).
    let others = std::iter::repeat_with(ServiceAccountId::generate)
        .filter(|other| super::slot(*other) != super::slot(account))
        .take(1000);
    for other in others {
        assert!(matches!(cache.get(&hash), Lookup::Known { .. }));
        cache.invalidate_account(other);
    }
    // Its token is revoked: the cached answer must go.
    cache.invalidate_account(account);
    assert!(matches!(cache.get(&hash), Lookup::Miss));
}

#[test]
fn a_raced_fill_is_never_served_however_many_other_accounts_changed() {
    let cache = IntrospectionCache::new(1, 1 << 20, Duration::from_secs(60));
    let account = ServiceAccountId::generate();
    let (hash, g) = entry(account);
    let fill = cache.begin_fill().unwrap();
    cache.invalidate_account(account);
    for _ in 0..100 {
        cache.invalidate_account(ServiceAccountId::generate());
    }
    cache.insert(hash, Some(g), fill);
    assert!(matches!(cache.get(&hash), Lookup::Miss));
}

#[test]
fn tokens_of_one_account_share_one_copy_of_its_data() {
    let cache = cache();
    let account = ServiceAccountId::generate();
    let (first_hash, first) = entry(account);
    let (second_hash, mut second) = entry(account);
    // Read separately from storage: equal, but two allocations.
    second.account = Arc::new(AccountRecord::clone(&first.account));
    let first = cache.insert(first_hash, Some(first), cache.begin_fill().unwrap());
    let second = cache.insert(second_hash, Some(second), cache.begin_fill().unwrap());
    assert!(Arc::ptr_eq(
        &first.unwrap().account,
        &second.unwrap().account
    ));
    // A changed account is not confused with the held copy.
    let (third_hash, mut third) = entry(account);
    Arc::make_mut(&mut third.account).display_name = "Renamed".into();
    let third = cache.insert(third_hash, Some(third), cache.begin_fill().unwrap());
    assert_eq!(&*third.unwrap().account.display_name, "Renamed");
}

#[test]
fn the_cache_holds_no_more_entries_than_its_byte_budget_allows() {
    // 64 KiB for up to 1,000 entries: each weighs at least 64 bytes, and really several
    // hundred, so far fewer than 1,000 fit.
    let cache = IntrospectionCache::new(1000, 64 * 1024, Duration::from_secs(60));
    for _ in 0..1000 {
        let (hash, record) = entry(ServiceAccountId::generate());
        cache.insert(hash, Some(record), cache.begin_fill().unwrap());
    }
    let held = cache.entry_count();
    assert!(
        held > 0 && held <= (64 * 1024 / ENTRY_BYTES) as u64,
        "{held} entries held"
    );
    // And the entry count bounds it as well when entries are small next to the budget.
    let cache = IntrospectionCache::new(10, 1 << 30, Duration::from_secs(60));
    for _ in 0..100 {
        let (hash, record) = entry(ServiceAccountId::generate());
        cache.insert(hash, Some(record), cache.begin_fill().unwrap());
    }
    assert!(cache.entry_count() <= 10, "{}", cache.entry_count());
}

#[test]
fn unknown_tokens_are_cached_until_a_flush() {
    let cache = cache();
    let hash = TokenSecret::generate().hash();
    cache.insert(hash, None, cache.begin_fill().unwrap());
    assert!(matches!(cache.get(&hash), Lookup::Unknown));
    let fill = cache.begin_fill().unwrap();
    cache.invalidate_all();
    assert!(matches!(cache.get(&hash), Lookup::Miss));
    cache.insert(hash, None, fill);
    assert!(matches!(cache.get(&hash), Lookup::Miss));
}

#[test]
fn a_distrusted_cache_serves_and_stores_nothing_and_restarts_empty() {
    let cache = cache();
    let (hash, g) = entry(ServiceAccountId::generate());
    cache.insert(hash, Some(g.clone()), cache.begin_fill().unwrap());
    let in_flight = cache.begin_fill().unwrap();
    cache.distrust();
    assert!(matches!(cache.get(&hash), Lookup::Miss));
    assert!(cache.begin_fill().is_none());
    cache.trust();
    cache.insert(hash, Some(g), in_flight);
    assert!(
        matches!(cache.get(&hash), Lookup::Miss),
        "a fill from before the outage"
    );
}

#[test]
fn zero_capacity_caches_nothing() {
    let cache = IntrospectionCache::new(0, 1 << 20, Duration::from_secs(60));
    assert!(cache.begin_fill().is_none(), "nothing is ever stored");
}

#[test]
fn an_entry_older_than_the_max_age_is_a_miss() {
    let cache = IntrospectionCache::new(1000, 1 << 20, Duration::from_secs(1));
    let (hash, record) = entry(ServiceAccountId::generate());
    cache.insert(hash, Some(record.clone()), cache.begin_fill().unwrap());
    let (unknown, _) = entry(ServiceAccountId::generate());
    cache.insert(unknown, None, cache.begin_fill().unwrap());
    assert!(matches!(cache.get(&hash), Lookup::Known { .. }));
    assert!(matches!(cache.get(&unknown), Lookup::Unknown));

    std::thread::sleep(Duration::from_millis(1100));
    assert!(matches!(cache.get(&hash), Lookup::Miss));
    assert!(matches!(cache.get(&unknown), Lookup::Miss));
    // A refill is served again.
    cache.insert(hash, Some(record), cache.begin_fill().unwrap());
    assert!(matches!(cache.get(&hash), Lookup::Known { .. }));
}
