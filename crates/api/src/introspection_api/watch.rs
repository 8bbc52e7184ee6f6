//! `WatchChanges`: the change feed as a gRPC stream (the rules are in
//! `service_accounts_domain::feed`; this is how they reach the wire).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use service_accounts_domain::Error;
use service_accounts_domain::feed::{ChangeFeed, FeedEvent, Start, Watcher};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::error::{ApiError, status};
use crate::pb::watch_changes_response::Event;
use crate::pb::{Heartbeat, Invalidation, Reset, WatchChangesResponse};

pub type WatchStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<WatchChangesResponse, Status>> + Send>>;

/// What every watch shares.
#[derive(Clone)]
pub struct Watches {
    pub feed: Arc<ChangeFeed>,
    pub heartbeat: Duration,
    /// A permit per stream, `max` in all: `--max-watchers`.
    pub slots: Arc<Semaphore>,
    pub max: usize,
    /// Streams end (with OK) when this is cancelled: the server is shutting down.
    pub stopping: CancellationToken,
}

impl Watches {
    pub fn start(&self, resume_token: &str, org: &str) -> Result<WatchStream, ApiError> {
        let org = if org.is_empty() {
            None
        } else {
            Some(
                service_accounts_domain::ids::OrgId::parse(org)
                    .map_err(|invalid| Error::invalid("org_id", invalid.to_string()))?,
            )
        };
        let permit =
            self.slots
                .clone()
                .try_acquire_owned()
                .map_err(|_| Error::ResourceExhausted {
                    subject: "watchers".into(),
                    description: format!(
                        "this replica already serves its maximum of {} change streams \
                     (--max-watchers); watch another replica or retry later",
                        self.max
                    ),
                })?;
        let watcher = self.feed.watch(resume_token, org)?;
        // One message in hand: a caller that stops reading holds no more than that here, and
        // its position in the feed stops moving, which is what earns it a reset later.
        let (sender, receiver) = mpsc::channel(1);
        tokio::spawn(stream(
            watcher,
            sender,
            self.heartbeat,
            self.stopping.clone(),
            permit,
        ));
        Ok(Box::pin(ReceiverStream::new(receiver)))
    }
}

async fn stream(
    mut watcher: Watcher,
    sender: mpsc::Sender<Result<WatchChangesResponse, Status>>,
    heartbeat: Duration,
    stopping: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let first = match watcher.start() {
        Start::Reset => Event::Reset(Reset {}),
        Start::Resumed => Event::Heartbeat(Heartbeat {}),
    };
    let mut next = Some(message(&watcher, first));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if let Some(item) = next.take() {
            let ended = item.is_err();
            tokio::select! {
                sent = sender.send(item) => if sent.is_err() || ended { return },
                () = stopping.cancelled() => return,
            }
            // Any message proves the stream alive: the next heartbeat is due a period later.
            ticker.reset();
        }
        next = Some(tokio::select! {
            biased;
            () = stopping.cancelled() => return,
            () = sender.closed() => return,
            event = watcher.next() => match event {
                Ok(event) => message(&watcher, feed_event(event)),
                Err(down) => Err(status(down.into())),
            },
            _ = ticker.tick() => message(&watcher, Event::Heartbeat(Heartbeat {})),
        });
    }
}

fn message(watcher: &Watcher, event: Event) -> Result<WatchChangesResponse, Status> {
    Ok(WatchChangesResponse {
        event: Some(event),
        resume_token: watcher.resume_token(),
        time: Some(std::time::SystemTime::now().into()),
    })
}

fn feed_event(event: FeedEvent) -> Event {
    match event {
        FeedEvent::Reset => Event::Reset(Reset {}),
        FeedEvent::Invalidation {
            org,
            account,
            token,
        } => Event::Invalidation(Invalidation {
            org_id: org.as_str().to_owned(),
            service_account_id: account.to_string(),
            token_id: token.map(|t| t.to_string()).unwrap_or_default(),
        }),
    }
}
