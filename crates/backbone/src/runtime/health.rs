//! What `/healthz` and `/readyz` read: each consumer's streaming state, the
//! supervisor's heartbeat, whether Pub/Sub answers, and the messages held for
//! an outage.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::metrics;
use crate::stages::deliver::pacing::{Pacer, TargetSnapshot};
use crate::stages::deliver::slots::AccountSlots;

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
    /// store or Pub/Sub does not answer (docs/spec.md §4.1), and the latest reason.
    holds: Mutex<BTreeMap<String, (usize, String)>>,
    /// The delivery targets' pacers: shown by `/readyz` as detail only — a
    /// target's outage is not ours, so it never makes the pod unready.
    targets: Mutex<Vec<TargetState>>,
}

/// A target's pacer and, when its account-wide cap is set, its slots.
type TargetState = (Arc<Pacer>, Option<Arc<AccountSlots>>);

#[derive(Debug, Clone, serde::Serialize)]
pub struct ConsumerState {
    pub up: bool,
    pub detail: String,
}

impl Health {
    /// Registers the delivery targets whose state `/readyz` shows.
    /// `slots` lines up with `pacers`: a target's account-wide cap, if set.
    pub fn set_targets(&self, pacers: Vec<Arc<Pacer>>, slots: Vec<Option<Arc<AccountSlots>>>) {
        let mut slots = slots.into_iter();
        let both = pacers
            .into_iter()
            .map(|p| (p, slots.next().flatten()))
            .collect();
        *self.targets.lock().unwrap_or_else(|p| p.into_inner()) = both;
    }

    /// Each delivery target's pace, circuit and held deliveries.
    pub fn targets(&self) -> Vec<TargetSnapshot> {
        self.targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(p, slots)| {
                let mut snap = p.snapshot();
                if let Some(s) = slots {
                    snap.account_concurrency = Some(s.cap());
                    snap.account_slots_held = Some(s.held());
                }
                snap
            })
            .collect()
    }

    pub fn set(&self, label: &str, up: bool, detail: impl Into<String>) {
        let broker_up = self.broker_up();
        metrics::set_consumer_up(label, up && broker_up);
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
                metrics::set_consumer_up(label, state.up && broker_up);
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
        metrics::set_held_messages(label, e.0);
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
        metrics::set_held_messages(label, left);
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

    /// [`Health::holding`] without the reasons (which quote the errors of
    /// the database or the broker): what an unauthenticated probe may see.
    pub fn holding_counts(&self) -> Option<String> {
        let h = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        if h.is_empty() {
            return None;
        }
        Some(
            h.iter()
                .map(|(label, (n, _))| format!("{label}: {n} held (see the log)"))
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

    pub(super) fn track(&self, label: &str, task: tokio::task::AbortHandle) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_broker_makes_every_consumer_unready_until_it_answers() {
        let h = Health::default();
        let label = "unit-broker-sub";
        let gauge = || metrics::consumer_up(label);
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
