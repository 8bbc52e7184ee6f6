use super::*;

fn org(name: &str) -> OrgId {
    OrgId::parse(name).unwrap()
}

fn change(org_name: &str) -> (Change, FeedEvent) {
    let (account, token) = (ServiceAccountId::generate(), Some(TokenId::generate()));
    (
        Change::Account {
            org: org(org_name),
            account,
            token,
        },
        FeedEvent::Invalidation {
            org: org(org_name),
            account,
            token,
        },
    )
}

/// The events already readable, without waiting.
fn ready(watcher: &mut Watcher) -> Vec<FeedEvent> {
    std::iter::from_fn(|| watcher.take().unwrap()).collect()
}

#[test]
fn a_new_watcher_starts_with_a_reset_and_then_sees_each_change_once() {
    let feed = Arc::new(ChangeFeed::new(100, true));
    feed.changed(&change("acme").0);
    let mut watcher = feed.watch("", None).unwrap();
    assert_eq!(watcher.start(), Start::Reset);
    assert!(
        ready(&mut watcher).is_empty(),
        "what came before is covered by the reset"
    );
    let (first, first_event) = change("acme");
    let (second, second_event) = change("globex");
    feed.changed(&first);
    feed.changed(&Change::TokenIssued(7));
    feed.changed(&second);
    assert_eq!(ready(&mut watcher), [first_event, second_event]);
}

#[test]
fn a_resume_within_the_history_replays_what_was_missed_and_nothing_else() {
    let feed = Arc::new(ChangeFeed::new(100, true));
    let mut watcher = feed.watch("", None).unwrap();
    let (seen, seen_event) = change("acme");
    feed.changed(&seen);
    assert_eq!(ready(&mut watcher), [seen_event]);
    let token = watcher.resume_token();
    drop(watcher);

    let (missed, missed_event) = change("acme");
    feed.changed(&missed);
    let mut resumed = feed.watch(&token, None).unwrap();
    assert_eq!(resumed.start(), Start::Resumed);
    assert_eq!(ready(&mut resumed), [missed_event]);

    // Nothing missed: resumed, nothing to replay.
    let mut again = feed.watch(&resumed.resume_token(), None).unwrap();
    assert_eq!(again.start(), Start::Resumed);
    assert!(ready(&mut again).is_empty());
}

#[test]
fn a_resume_token_that_cannot_be_honoured_starts_with_a_reset() {
    let feed = Arc::new(ChangeFeed::new(2, true));
    let other = Arc::new(ChangeFeed::new(2, true));
    let old = feed.watch("", None).unwrap().resume_token();
    for _ in 0..3 {
        feed.changed(&change("acme").0);
    }
    let future = format!("{}-999", &old[..16]);
    let from_elsewhere = other.watch("", None).unwrap().resume_token();
    for token in [
        old.as_str(),
        &future,
        &from_elsewhere,
        "garbage",
        "-",
        "0-0",
        "ffffffffffffffff-x",
    ] {
        assert_eq!(
            feed.watch(token, None).unwrap().start(),
            Start::Reset,
            "{token:?}"
        );
    }
}

#[test]
fn a_watcher_that_falls_behind_the_history_gets_one_reset_then_keeps_up() {
    let feed = Arc::new(ChangeFeed::new(3, true));
    let mut watcher = feed.watch("", None).unwrap();
    for _ in 0..10 {
        feed.changed(&change("acme").0);
    }
    assert_eq!(ready(&mut watcher), [FeedEvent::Reset]);
    let (next, next_event) = change("acme");
    feed.changed(&next);
    assert_eq!(ready(&mut watcher), [next_event]);
    assert!(feed.lock().events.len() <= 3, "the history is bounded");
}

#[test]
fn an_org_filter_passes_that_orgs_invalidations_and_every_reset() {
    let feed = Arc::new(ChangeFeed::new(100, true));
    let mut watcher = feed.watch("", Some(org("acme"))).unwrap();
    let (ours, ours_event) = change("acme");
    feed.changed(&change("globex").0);
    feed.changed(&ours);
    feed.changed(&Change::Everything);
    assert_eq!(ready(&mut watcher), [ours_event, FeedEvent::Reset]);
}

#[test]
fn while_other_replicas_cannot_be_heard_watches_are_refused_and_running_ones_end() {
    let feed = Arc::new(ChangeFeed::new(100, false));
    assert_eq!(feed.watch("", None).err(), Some(FeedDown));
    feed.changed(&Change::Subscribed);
    let mut watcher = feed.watch("", None).unwrap();
    let token = watcher.resume_token();
    feed.changed(&Change::Lost);
    assert_eq!(watcher.take().err(), Some(FeedDown));
    assert_eq!(feed.watch("", None).err(), Some(FeedDown));

    // Back: a resume from before the gap is told to drop everything.
    feed.changed(&Change::Subscribed);
    let mut resumed = feed.watch(&token, None).unwrap();
    assert_eq!(ready(&mut resumed), [FeedEvent::Reset]);
}

#[tokio::test]
async fn next_waits_for_the_next_change() {
    let feed = Arc::new(ChangeFeed::new(100, true));
    let mut watcher = feed.watch("", None).unwrap();
    let (later, later_event) = change("acme");
    let publisher = {
        let feed = feed.clone();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            feed.changed(&later);
        })
    };
    assert_eq!(watcher.next().await, Ok(later_event));
    publisher.await.unwrap();
    assert_eq!(feed.watchers(), 1);
}
