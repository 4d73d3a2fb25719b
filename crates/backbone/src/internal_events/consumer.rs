//! The consumer runtime: messages in and out, consumer restarts.

use std::fmt::Display;
use std::time::Duration;

use super::InternalEvent;
use crate::metrics::metrics;

/// A message arrived on `subscription` (before it waits for its key's turn).
pub struct MessageReceived<'a> {
    pub subscription: &'a str,
}

impl InternalEvent for MessageReceived<'_> {
    fn emit(self) {
        metrics()
            .messages_received
            .with_label_values(&[self.subscription])
            .inc();
    }
}

/// A message was acked or nacked with `outcome` (merged, delivered, retried,
/// nacked…), `elapsed` after its processing started. The in-flight gauge is
/// the runtime's: see [`crate::metrics::inflight_started`].
pub struct MessageProcessed<'a> {
    pub subscription: &'a str,
    pub outcome: &'a str,
    pub elapsed: Duration,
}

impl InternalEvent for MessageProcessed<'_> {
    fn emit(self) {
        let m = metrics();
        m.messages_processed
            .with_label_values(&[self.subscription, self.outcome])
            .inc();
        m.processing_duration
            .with_label_values(&[self.subscription])
            .observe(self.elapsed.as_secs_f64());
    }
}

/// A consumer's task ended with `reason` and is started again after
/// `restart_in`.
pub struct ConsumerRestarting<'a> {
    pub subscription: &'a str,
    pub reason: &'a dyn Display,
    pub restart_in: Duration,
}

impl InternalEvent for ConsumerRestarting<'_> {
    fn emit(self) {
        metrics()
            .consumer_restarts
            .with_label_values(&[self.subscription])
            .inc();
        tracing::warn!(
            subscription = %self.subscription,
            reason = %self.reason,
            restart_in = ?self.restart_in,
            "Consumer stopped; restarting it."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::{emit, test_support::logged};
    use super::*;

    const SUB: &str = "ie-test-sub";

    #[test]
    fn received_and_processed_count_per_subscription_and_outcome() {
        let m = metrics();
        let received = || m.messages_received.with_label_values(&[SUB]).get();
        let processed = || {
            m.messages_processed
                .with_label_values(&[SUB, "merged"])
                .get()
        };
        let timed = || {
            m.processing_duration
                .with_label_values(&[SUB])
                .get_sample_count()
        };
        let before = (received(), processed(), timed());
        emit(MessageReceived { subscription: SUB });
        emit(MessageProcessed {
            subscription: SUB,
            outcome: "merged",
            elapsed: Duration::from_millis(3),
        });
        assert_eq!(received() - before.0, 1);
        assert_eq!(processed() - before.1, 1);
        assert_eq!(timed() - before.2, 1);
    }

    #[test]
    fn restarting_counts_and_warns() {
        let c = || {
            metrics()
                .consumer_restarts
                .with_label_values(&["ie-test-restart"])
                .get()
        };
        let before = c();
        let lines = logged(|| {
            emit(ConsumerRestarting {
                subscription: "ie-test-restart",
                reason: &"stream closed",
                restart_in: Duration::from_secs(2),
            })
        });
        assert_eq!(c() - before, 1);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["level"], "WARN");
        assert_eq!(
            lines[0]["fields"]["message"],
            "Consumer stopped; restarting it."
        );
        assert_eq!(lines[0]["fields"]["subscription"], "ie-test-restart");
        assert_eq!(lines[0]["fields"]["reason"], "stream closed");
    }
}
