//! Holding a message while our own infrastructure (database, snapshot store,
//! Pub/Sub) does not answer: the stage is tried again in-process with
//! backoff, the lease extended, and `/readyz` told why (docs/spec.md §4.1).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::runtime::health::Health;

/// Between two tries of a held message: from 100 ms, doubling, at most 5 s
/// (docs/spec.md §4.1: work resumes within 5 s of the infrastructure's return).
const HOLD_MIN: Duration = Duration::from_millis(100);
const HOLD_MAX: Duration = Duration::from_secs(5);

/// The messages a consumer holds because our own infrastructure (database,
/// snapshot store, Pub/Sub) does not answer. While any is held the consumer
/// pulls nothing new, and `/readyz` says why.
pub struct Holds {
    label: String,
    health: Arc<Health>,
    /// Cancelled at shutdown: held messages are handed back (nack).
    pub(super) stop: CancellationToken,
    count: AtomicUsize,
    /// Signalled when the last held message went through.
    pub(super) released: Notify,
}

impl Holds {
    pub fn new(label: impl Into<String>, health: Arc<Health>, stop: CancellationToken) -> Self {
        Self {
            label: label.into(),
            health,
            stop,
            count: AtomicUsize::new(0),
            released: Notify::new(),
        }
    }

    pub(super) fn paused(&self) -> bool {
        self.count.load(Ordering::SeqCst) > 0
    }
}

/// One message's hold: counted from its first failed try until it goes
/// through or is handed back (drop).
pub(super) struct Hold<'a> {
    holds: &'a Holds,
    delays: backon::ExponentialBackoff,
    since: Option<Instant>,
    tries: u32,
}

impl<'a> Hold<'a> {
    pub(super) fn new(holds: &'a Holds) -> Self {
        Self {
            holds,
            delays: ExponentialBuilder::default()
                .with_min_delay(HOLD_MIN)
                .with_max_delay(HOLD_MAX)
                .without_max_times()
                .with_jitter()
                .build(),
            since: None,
            tries: 0,
        }
    }

    /// Waits before the next try; false when shutdown came first (nack).
    pub(super) async fn wait(&mut self, why: &str) -> bool {
        self.tries += 1;
        if self.since.is_none() {
            self.since = Some(Instant::now());
            self.holds.count.fetch_add(1, Ordering::SeqCst);
            self.holds.health.hold_started(&self.holds.label, why);
            tracing::warn!(error = %why, "Infrastructure unavailable; holding the message (lease extended) and retrying in-process.");
        } else {
            self.holds.health.hold_reason(&self.holds.label, why);
            if self.tries.is_multiple_of(20) {
                tracing::warn!(error = %why, tries = self.tries, "Still holding the message; infrastructure unavailable.");
            }
        }
        let delay = self.delays.next().unwrap_or(HOLD_MAX).min(HOLD_MAX);
        tokio::select! {
            _ = self.holds.stop.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        let Some(since) = self.since else { return };
        self.holds.health.hold_ended(&self.holds.label);
        if self.holds.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.holds.released.notify_one();
        }
        tracing::info!(held_for = ?since.elapsed(), tries = self.tries, "Held message released.");
    }
}
