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
    /// Why Pub/Sub is taken to be unreachable; `None` while it answers (or
    /// before the first probe: the consumers' own start-up checks cover that).
    broker_down: Mutex<Option<String>>,
    /// Messages each consumer holds because the database, the snapshot
    /// store or Pub/Sub does not answer (SPEC §4.1), and the latest reason.
    holds: Mutex<BTreeMap<String, (usize, String)>>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ConsumerState {
    pub up: bool,
    pub detail: String,
}

impl Health {
    pub fn set(&self, label: &str, up: bool, detail: impl Into<String>) {
        let broker_up = self.broker_up();
        metrics()
            .consumer_up
            .with_label_values(&[label])
            .set(i64::from(up && broker_up));
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

    /// Records what the last Pub/Sub probe found. While Pub/Sub does not
    /// answer no consumer has a working stream, whatever the client retries
    /// behind the scenes: every `consumer_up` reads 0 and readiness fails.
    pub fn set_broker(&self, down: Option<String>) {
        let changed = {
            let mut b = self.broker_down.lock().unwrap_or_else(|p| p.into_inner());
            let changed = b.is_some() != down.is_some();
            *b = down;
            changed
        };
        if changed {
            let broker_up = self.broker_up();
            for (label, state) in self
                .consumers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
            {
                metrics()
                    .consumer_up
                    .with_label_values(&[label])
                    .set(i64::from(state.up && broker_up));
            }
        }
    }

    /// `Err(reason)` while the last probe could not reach Pub/Sub.
    pub fn broker(&self) -> Result<(), String> {
        match &*self.broker_down.lock().unwrap_or_else(|p| p.into_inner()) {
            None => Ok(()),
            Some(why) => Err(why.clone()),
        }
    }

    /// A message of consumer `label` is now held because of `reason`.
    pub fn hold_started(&self, label: &str, reason: &str) {
        let mut h = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        let e = h.entry(label.to_string()).or_insert((0, String::new()));
        e.0 += 1;
        e.1 = reason.to_string();
        metrics()
            .held_messages
            .with_label_values(&[label])
            .set(e.0 as i64);
    }

    /// The latest reason a held message of `label` is still waiting for.
    pub fn hold_reason(&self, label: &str, reason: &str) {
        if let Some(e) = self
            .holds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(label)
        {
            e.1 = reason.to_string();
        }
    }

    /// A held message of `label` went through (or was handed back).
    pub fn hold_ended(&self, label: &str) {
        let mut h = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        let left = match h.get_mut(label) {
            Some(e) => {
                e.0 = e.0.saturating_sub(1);
                e.0
            }
            None => 0,
        };
        if left == 0 {
            h.remove(label);
        }
        metrics()
            .held_messages
            .with_label_values(&[label])
            .set(left as i64);
    }

    /// `Some(what)` while any consumer holds messages for an outage.
    pub fn holding(&self) -> Option<String> {
        let h = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        if h.is_empty() {
            return None;
        }
        Some(
            h.iter()
                .map(|(label, (n, why))| format!("{label}: {n} held ({why})"))
                .collect::<Vec<_>>()
                .join("; "),
        )
    }

    fn broker_up(&self) -> bool {
        self.broker().is_ok()
    }

    /// Each consumer as readiness sees it: not up while Pub/Sub is down.
    pub fn snapshot(&self) -> BTreeMap<String, ConsumerState> {
        let broker = self.broker();
        let mut c = self
            .consumers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Err(why) = broker {
            for s in c.values_mut().filter(|s| s.up) {
                s.up = false;
                s.detail = format!("stream interrupted: {why}");
            }
        }
        c
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

    #[test]
    fn an_unreachable_broker_makes_every_consumer_unready_until_it_answers() {
        let h = Health::default();
        let label = "unit-broker-sub";
        let gauge = || metrics().consumer_up.with_label_values(&[label]).get();
        h.set(label, true, "streaming");
        assert!(h.all_up());
        assert_eq!(gauge(), 1);

        h.set_broker(Some("Pub/Sub unreachable: connection refused".into()));
        assert!(!h.all_up());
        assert_eq!(gauge(), 0);
        let s = h.snapshot();
        assert!(!s[label].up);
        assert!(s[label].detail.contains("connection refused"), "{s:?}");
        // A consumer (re)started meanwhile is still not up.
        h.set(label, true, "streaming");
        assert_eq!(gauge(), 0);

        h.set_broker(None);
        assert!(h.all_up());
        assert_eq!(gauge(), 1);
        assert_eq!(h.snapshot()[label].detail, "streaming");
    }
}
