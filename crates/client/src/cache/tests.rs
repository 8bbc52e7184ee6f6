use super::*;

const ACCOUNT: &str = "01a24bcf-88ad-74f0-a8a2-6f19606976a3";

fn active() -> IntrospectResponse {
    IntrospectResponse {
        active: true,
        allowed: true,
        org_id: "acme".into(),
        service_account_id: ACCOUNT.into(),
        service_account_display_name: "Bot".into(),
        token_id: "01a24bcf-88b9-75fd-8929-c0616e73f3e8".into(),
        scopes: vec!["mcp:tools:call".into()],
        allowed_cidrs: vec!["10.0.0.0/8".into()],
        ..Default::default()
    }
}

/// A new token's hash (the number only tells the tests' tokens apart when reading them).
fn hash(_: u8) -> TokenHash {
    service_accounts_domain::token::TokenSecret::generate().hash()
}

/// A cache whose feed is up and has just spoken.
fn live() -> CallerCache {
    CallerCache::live(CacheOptions::new(100))
}

fn account() -> ServiceAccountId {
    ServiceAccountId::parse(ACCOUNT).unwrap()
}

#[test]
fn an_active_answer_is_cached_with_everything_a_decision_needs() {
    let cache = live();
    let h = hash(1);
    let ticket = cache.begin().unwrap();
    cache.insert(h, &active(), ticket);
    let Some(Answer::Active(record)) = cache.get(&h) else {
        panic!("not cached");
    };
    assert_eq!(record.account.org_id.as_str(), "acme");
    assert!(
        !record
            .allowed_cidrs
            .allows(Some("192.0.2.1".parse().unwrap()))
    );
    assert!(
        record
            .allowed_cidrs
            .allows(Some("10.1.2.3".parse().unwrap()))
    );
}

#[test]
fn an_answer_in_flight_across_an_invalidation_of_its_account_is_never_served() {
    let cache = live();
    let h = hash(2);
    let ticket = cache.begin().unwrap();
    cache.invalidate(account()); // arrives while the call is in flight
    cache.insert(h, &active(), ticket);
    assert!(cache.get(&h).is_none());
    // The next call's answer is served.
    let ticket = cache.begin().unwrap();
    cache.insert(h, &active(), ticket);
    assert!(cache.get(&h).is_some());
    cache.invalidate(account());
    assert!(
        cache.get(&h).is_none(),
        "an invalidation drops what was cached"
    );
}

#[test]
fn an_answer_in_flight_across_a_reset_or_a_reconnect_is_never_served() {
    let cache = live();
    let (a, b) = (hash(3), hash(4));
    let ticket = cache.begin().unwrap();
    cache.reset();
    cache.insert(a, &active(), ticket);
    assert!(cache.get(&a).is_none());

    let ticket = cache.begin().unwrap();
    cache.set_up(false);
    cache.set_up(true);
    cache.reset();
    cache.insert(b, &active(), ticket);
    assert!(cache.get(&b).is_none());
}

#[test]
fn nothing_is_served_or_cached_while_the_feed_is_down_or_silent() {
    let cache = CallerCache::new(CacheOptions::new(100).max_staleness(Duration::from_millis(50)));
    assert!(cache.begin().is_none(), "no feed yet");
    cache.reset();
    cache.set_up(true);
    cache.heard();
    let h = hash(5);
    let ticket = cache.begin().unwrap();
    cache.insert(h, &active(), ticket);
    assert!(cache.get(&h).is_some());
    std::thread::sleep(Duration::from_millis(80));
    assert!(cache.get(&h).is_none(), "past max_staleness");
    assert!(cache.begin().is_none());
    cache.heard();
    assert!(cache.get(&h).is_some());
    cache.set_up(false);
    assert!(cache.get(&h).is_none(), "feed down");
}

#[test]
fn revoked_and_expired_are_kept_unknown_and_disabled_only_briefly_malformed_never() {
    let cache = live();
    let inactive = |reason: InactiveReason| IntrospectResponse {
        active: false,
        inactive_reason: reason.into(),
        ..Default::default()
    };
    let (revoked, unknown, malformed) = (hash(6), hash(7), hash(8));
    for (h, reason) in [
        (revoked, InactiveReason::Revoked),
        (unknown, InactiveReason::Unknown),
        (malformed, InactiveReason::Malformed),
    ] {
        let ticket = cache.begin().unwrap();
        cache.insert(h, &inactive(reason), ticket);
    }
    assert!(matches!(
        cache.get(&revoked),
        Some(Answer::Final(InactiveReason::Revoked))
    ));
    assert!(matches!(
        cache.get(&unknown),
        Some(Answer::Brief {
            reason: InactiveReason::Unknown,
            ..
        })
    ));
    assert!(cache.get(&malformed).is_none());
    std::thread::sleep(BRIEF + Duration::from_millis(50));
    assert!(cache.get(&unknown).is_none(), "unknown for at most 1 s");
    assert!(cache.get(&revoked).is_some());
}

#[test]
fn an_answer_this_version_cannot_read_is_not_cached() {
    let cache = live();
    let h = hash(9);
    let mut response = active();
    response.allowed_cidrs.push("10.0.0.0/99".into());
    let ticket = cache.begin().unwrap();
    assert!(cache.insert(h, &response, ticket).is_none());
    assert!(cache.get(&h).is_none());
}

#[test]
fn a_scope_this_version_does_not_know_is_cached_without_it() {
    let cache = live();
    let h = hash(10);
    let mut response = active();
    response.scopes.push("scope:from-the-future".into());
    let ticket = cache.begin().unwrap();
    cache.insert(h, &response, ticket);
    let Some(Answer::Active(record)) = cache.get(&h) else {
        panic!("not cached");
    };
    assert_eq!(
        record.scopes.names().collect::<Vec<_>>(),
        ["mcp:tools:call"]
    );
}

#[test]
fn a_token_sharing_the_key_prefix_of_a_cached_one_is_not_served_its_answer() {
    let cache = live();
    let h = hash(1);
    let ticket = cache.begin().unwrap();
    cache.insert(h, &active(), ticket);
    let mut other = *h.as_bytes();
    other[31] ^= 1;
    let other = TokenHash(other);
    assert_eq!(key(&h), key(&other));
    assert!(cache.get(&other).is_none());
    assert!(cache.get(&h).is_some());
}

#[test]
fn an_entry_is_24_bytes_besides_its_key() {
    assert_eq!(std::mem::size_of::<Entry>(), 24);
}
