//! The supervisor: one task per enabled consumer, restarted with backoff when
//! its stream fails or it panics, and a probe telling readiness whether
//! Pub/Sub answers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use google_cloud_pubsub::client::{Subscriber, SubscriptionAdmin};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::consumer::{self, ConsumerError, ConsumerSpec, Runtime};
use super::health::Health;
use crate::internal_events::{emit, ConsumerRestarting};
use crate::pubsub::provision::is_not_found;

/// Everything one supervised consumer needs.
pub struct Supervised {
    pub spec: ConsumerSpec,
}

pub struct Supervisor {
    pub subscriber: Subscriber,
    pub admin: SubscriptionAdmin,
    pub runtime: Arc<Runtime>,
    pub health: Arc<Health>,
    pub grace: Duration,
    /// How often Pub/Sub is asked whether it answers (`pubsub.probe_interval`).
    pub probe_interval: Duration,
}

impl Supervisor {
    /// Runs every consumer until `shutdown`; returns after all have drained.
    pub async fn run(self, consumers: Vec<Supervised>, shutdown: CancellationToken) {
        let me = Arc::new(self);
        let probe = consumers_probe_target(&consumers).map(|subscription| {
            tokio::spawn(me.clone().probe_broker(subscription, shutdown.clone()))
        });
        let mut set = JoinSet::new();
        for c in consumers {
            me.health.set(&c.spec.label, false, "starting");
            set.spawn(me.clone().supervise(Arc::new(c), shutdown.clone()));
        }
        let beat = {
            let health = me.health.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    health.beat();
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            })
        };
        while set.join_next().await.is_some() {}
        beat.abort();
        if let Some(p) = probe {
            p.abort();
        }
    }

    /// Asks Pub/Sub for one consumed subscription every `probe_interval`.
    /// The subscriber client hides a lost connection (it reconnects with
    /// backoff inside the stream), so this is how readiness learns of it.
    /// A missing subscription is the supervisor's business, not an outage.
    async fn probe_broker(self: Arc<Self>, subscription: String, shutdown: CancellationToken) {
        loop {
            let answer = tokio::time::timeout(
                BROKER_PROBE_TIMEOUT,
                self.admin
                    .get_subscription()
                    .set_subscription(subscription.clone())
                    .send(),
            )
            .await;
            let down = match answer {
                Ok(Ok(_)) => None,
                Ok(Err(e)) if is_not_found(&e) => None,
                Ok(Err(e)) => Some(format!("Pub/Sub unreachable: {e}")),
                Err(_) => Some(format!(
                    "Pub/Sub did not answer within {BROKER_PROBE_TIMEOUT:?}"
                )),
            };
            match (&down, self.health.broker()) {
                (Some(why), Ok(())) => {
                    tracing::warn!(reason = %why, "Pub/Sub is unreachable; not ready until it answers.")
                }
                (None, Err(_)) => tracing::info!("Pub/Sub answers again."),
                _ => {}
            }
            self.health.set_broker(down);
            if sleep_or_shutdown(self.probe_interval, &shutdown).await {
                return;
            }
        }
    }

    async fn supervise(self: Arc<Self>, c: Arc<Supervised>, shutdown: CancellationToken) {
        let label = c.spec.label.clone();
        let mut failures: u32 = 0;
        while !shutdown.is_cancelled() {
            // Check the subscription first: a missing one is a configuration
            // problem, reported plainly and retried slowly, not a restart storm.
            match self
                .admin
                .get_subscription()
                .set_subscription(c.spec.subscription.clone())
                .send()
                .await
            {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {
                    let msg = format!(
                        "subscription {} does not exist; run `event-backbone provision`",
                        c.spec.subscription
                    );
                    tracing::error!(subscription = %label, "{msg}.");
                    self.health.set(&label, false, msg);
                    if sleep_or_shutdown(Duration::from_secs(30), &shutdown).await {
                        break;
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(subscription = %label, error = %e, "Cannot reach Pub/Sub to check the subscription.");
                    self.health
                        .set(&label, false, format!("Pub/Sub unreachable: {e}"));
                    failures += 1;
                    if sleep_or_shutdown(backoff(failures), &shutdown).await {
                        break;
                    }
                    continue;
                }
            }
            let started = Instant::now();
            let me = self.clone();
            let c2 = c.clone();
            let sd = shutdown.clone();
            let task = tokio::spawn(async move {
                consumer::run(&me.subscriber, &c2.spec, me.runtime.clone(), sd, me.grace).await
            });
            // Tracked before it reads as up: whoever sees "up" can reach this
            // task, not the one that ended before it.
            self.health.track(&label, task.abort_handle());
            self.health.set(&label, true, "streaming");
            let outcome = task.await;
            self.health.set(&label, false, "stopped");
            let reason = match outcome {
                Ok(Ok(())) => break,
                Ok(Err(ConsumerError::Stream {
                    not_found: true,
                    message,
                    ..
                })) => {
                    format!("subscription vanished: {message}")
                }
                Ok(Err(e)) => e.to_string(),
                Err(join) if join.is_panic() => format!("consumer task panicked: {join}"),
                Err(join) => format!("consumer task ended: {join}"),
            };
            if shutdown.is_cancelled() {
                break;
            }
            // A consumer that streamed for a while starts its backoff afresh.
            if started.elapsed() > Duration::from_secs(60) {
                failures = 0;
            }
            failures += 1;
            let wait = backoff(failures);
            emit(ConsumerRestarting {
                subscription: &label,
                reason: &reason,
                restart_in: wait,
            });
            self.health
                .set(&label, false, format!("restarting: {reason}"));
            if sleep_or_shutdown(wait, &shutdown).await {
                break;
            }
        }
        self.health.set(&label, false, "stopped");
    }
}

/// Below the chart's 3 s readiness probe timeout is not needed (readiness
/// reads the last result); above a healthy round trip with room to spare.
const BROKER_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The subscription the broker probe asks about: the first consumer's.
fn consumers_probe_target(consumers: &[Supervised]) -> Option<String> {
    consumers.first().map(|c| c.spec.subscription.clone())
}

/// 0.5 s, 1 s, 2 s, … capped at 30 s.
fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(6);
    Duration::from_millis(500u64 << exp).min(Duration::from_secs(30))
}

/// Sleeps; returns true when shutdown fired first.
async fn sleep_or_shutdown(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(20), Duration::from_secs(30));
    }
}
