//! Polling with a deadline, in place of hand-written `loop { ...; sleep }` blocks.
//!
//! ```ignore
//! let active = async || introspect(&b, &secret, "", "", &[]).await.active;
//! wait_until("B reports the token active", active).await; // up to DEFAULT_TIMEOUT
//! let (_, took) = Wait::new("B sees the revoke")
//!     .within(BOUND) // panics if the condition does not hold in time
//!     .every(Duration::from_millis(2))
//!     .timed(async || !active().await)
//!     .await;
//! ```
//!
//! A probe returns `bool`, `Option<T>` or `Result<T, E>` (the last `Err` is shown on timeout).

use std::fmt::Debug;
use std::time::{Duration, Instant};

/// How long a wait lasts unless the test says otherwise: generous, for a loaded CI machine.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(25);

/// What a probe returns: `true`, `Some(value)` or `Ok(value)` when the condition holds.
/// An `Err` is "not yet", and the last one is shown if the wait times out.
pub trait Outcome {
    type Value;
    fn settled(self) -> Result<Self::Value, Option<String>>;
}

impl Outcome for bool {
    type Value = ();
    fn settled(self) -> Result<(), Option<String>> {
        if self { Ok(()) } else { Err(None) }
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn settled(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: Debug> Outcome for Result<T, E> {
    type Value = T;
    fn settled(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(format!("{e:?}")))
    }
}

/// Polls `probe` until it holds, for up to [`DEFAULT_TIMEOUT`]; panics naming `what` otherwise.
pub async fn wait_until<O: Outcome>(what: &str, probe: impl AsyncFnMut() -> O) -> O::Value {
    Wait::new(what).until(probe).await
}

/// A wait with its own deadline and polling interval.
#[must_use]
pub struct Wait {
    what: String,
    timeout: Duration,
    interval: Duration,
}

impl Wait {
    pub fn new(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            timeout: DEFAULT_TIMEOUT,
            interval: DEFAULT_INTERVAL,
        }
    }

    /// The deadline, counted from the start of the wait.
    pub fn within(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn every(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Polls until `probe` holds and returns its value; panics once a failed probe ends past
    /// the deadline (a probe that started in time and holds counts, as in a hand-written loop).
    pub async fn until<O: Outcome>(self, probe: impl AsyncFnMut() -> O) -> O::Value {
        self.timed(probe).await.0
    }

    /// As [`Wait::until`], also returning how long the condition took to hold.
    pub async fn timed<O: Outcome>(
        self,
        mut probe: impl AsyncFnMut() -> O,
    ) -> (O::Value, Duration) {
        let started = Instant::now();
        loop {
            let last = match probe().await.settled() {
                Ok(value) => return (value, started.elapsed()),
                Err(last) => last,
            };
            let elapsed = started.elapsed();
            if elapsed >= self.timeout {
                let last = last
                    .map(|l| format!("; last seen: {l}"))
                    .unwrap_or_default();
                panic!(
                    "timed out after {elapsed:?} (limit {:?}) waiting until {}{last}",
                    self.timeout, self.what
                );
            }
            tokio::time::sleep(self.interval).await;
        }
    }

    /// Polls for the whole of the deadline and panics the first time `probe` does not hold:
    /// for "never again" checks, where the point is that time passes.
    pub async fn throughout<O: Outcome>(self, mut probe: impl AsyncFnMut() -> O) {
        let started = Instant::now();
        while started.elapsed() < self.timeout {
            if let Err(last) = probe().await.settled() {
                let last = last.map(|l| format!(": {l}")).unwrap_or_default();
                panic!(
                    "{} stopped holding after {:?}{last}",
                    self.what,
                    started.elapsed()
                );
            }
            tokio::time::sleep(self.interval).await;
        }
    }
}

/// The helper itself: a missed deadline must fail the test, as the loops it replaced did.
mod tests {
    use super::*;

    #[tokio::test]
    #[should_panic(expected = "waiting until the impossible; last seen: \"no\"")]
    async fn a_missed_deadline_panics_naming_the_wait() {
        Wait::new("the impossible")
            .within(Duration::from_millis(30))
            .until(async || Err::<(), _>("no"))
            .await;
    }

    #[tokio::test]
    async fn a_condition_that_comes_to_hold_returns_its_value_and_the_time_taken() {
        let mut polls = 0;
        let (value, took) = Wait::new("the third poll")
            .every(Duration::from_millis(5))
            .timed(async || {
                polls += 1;
                (polls == 3).then_some(polls)
            })
            .await;
        assert_eq!(value, 3);
        assert!(took >= Duration::from_millis(10), "{took:?}");
    }

    #[tokio::test]
    #[should_panic(expected = "the flag stopped holding")]
    async fn throughout_panics_when_the_condition_breaks() {
        let mut polls = 0;
        Wait::new("the flag")
            .within(Duration::from_secs(5))
            .every(Duration::from_millis(1))
            .throughout(async || {
                polls += 1;
                polls < 3
            })
            .await;
    }
}
