//! The supervisor: one task per enabled consumer, restarted with backoff when
//! its stream fails or it panics, and the readiness state `/readyz` reports.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use google_cloud_pubsub::client::{Subscriber, SubscriptionAdmin};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::metrics::metrics;
use crate::pubsub::consumer::{self, ConsumerError, ConsumerSpec, Runtime};
use crate::pubsub::provision::is_not_found;

/// Per-consumer streaming state, shared with the HTTP health endpoints.
#[derive(Default)]
pub struct Health {
    consumers: Mutex<BTreeMap<String, ConsumerState>>,
    /// Bumped by the supervisor loop; `/healthz` checks it is recent.
    heartbeat: Mutex<Option<Instant>>,
    /// The running task of each consumer, so it can be killed like a crash.
    tasks: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    /// Where `/metrics` ended up listening (the port may have been 0).
    metrics_addr: OnceLock<SocketAddr>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ConsumerState {
    pub up: bool,
    pub detail: String,
}

impl Health {
    pub fn set(&self, label: &str, up: bool, detail: impl Into<String>) {
        metrics()
            .consumer_up
            .with_label_values(&[label])
            .set(i64::from(up));
        self.consumers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                label.to_string(),
                ConsumerState {
                    up,
                    detail: detail.into(),
                },
            );
    }

    pub fn snapshot(&self) -> BTreeMap<String, ConsumerState> {
        self.consumers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn all_up(&self) -> bool {
        let c = self.snapshot();
        !c.is_empty() && c.values().all(|s| s.up)
    }

    /// Aborts a consumer's task as a crash would; the supervisor counts it
    /// and restarts the consumer. Returns false when no such task runs.
    /// For tests of supervision, and to bounce a stuck consumer.
    pub fn kill_consumer(&self, label: &str) -> bool {
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        match tasks.get(label) {
            Some(h) if !h.is_finished() => {
                h.abort();
                true
            }
            _ => false,
        }
    }

    fn track(&self, label: &str, task: tokio::task::AbortHandle) {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(label.to_string(), task);
    }

    /// Records the bound metrics address (first call wins).
    pub fn set_metrics_addr(&self, addr: SocketAddr) {
        let _ = self.metrics_addr.set(addr);
    }

    /// The address `/metrics`, `/healthz` and `/readyz` are served on, once bound.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr.get().copied()
    }

    pub fn beat(&self) {
        *self.heartbeat.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// The supervisor loop has beaten within `max_age`.
    pub fn alive(&self, max_age: Duration) -> bool {
        self.heartbeat
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() <= max_age)
    }
}

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
}

impl Supervisor {
    /// Runs every consumer until `shutdown`; returns after all have drained.
    pub async fn run(self, consumers: Vec<Supervised>, shutdown: CancellationToken) {
        let me = Arc::new(self);
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
            self.health.set(&label, true, "streaming");
            let started = Instant::now();
            let me = self.clone();
            let c2 = c.clone();
            let sd = shutdown.clone();
            let task = tokio::spawn(async move {
                consumer::run(
                    &me.subscriber,
                    &c2.spec,
                    me.runtime.clone(),
                    sd,
                    me.grace,
                    || {},
                )
                .await
            });
            self.health.track(&label, task.abort_handle());
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
            metrics()
                .consumer_restarts
                .with_label_values(&[&label])
                .inc();
            let wait = backoff(failures);
            tracing::warn!(subscription = %label, reason = %reason, restart_in = ?wait, "Consumer stopped; restarting it.");
            self.health
                .set(&label, false, format!("restarting: {reason}"));
            if sleep_or_shutdown(wait, &shutdown).await {
                break;
            }
        }
        self.health.set(&label, false, "stopped");
    }
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
