//! The park stage: dead letters it could not write.

use std::fmt::Display;
use std::time::Duration;

use super::InternalEvent;
use crate::metrics::metrics;

/// A dead letter could not be parked for a reason other than a database
/// outage; it is nacked and comes back.
pub struct ParkFailed<'a> {
    /// The store error's class (`contention`, `data`, `permission`, `other`).
    pub class: &'a str,
}

impl InternalEvent for ParkFailed<'_> {
    fn emit(self) {
        metrics()
            .park_failures
            .with_label_values(&[self.class])
            .inc();
    }
}

/// A dead letter failed to park often enough that each further try is held
/// back; emitted once per message, when the hold starts.
pub struct DeadLetterHeld<'a> {
    pub dlq_message_id: &'a str,
    pub stage: &'a str,
    pub reason: &'a str,
    pub error: &'a dyn Display,
    pub tries: u32,
    pub hold: Duration,
}

impl InternalEvent for DeadLetterHeld<'_> {
    fn emit(self) {
        tracing::error!(
            dlq_message_id = %self.dlq_message_id,
            stage = %self.stage,
            reason = %self.reason,
            error = %self.error,
            tries = self.tries,
            hold = ?self.hold,
            "A dead letter cannot be parked; it stays in the dlq subscription and is retried every hold period."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::emit;
    use super::*;

    #[test]
    fn park_failed_counts_per_class() {
        let c = || {
            metrics()
                .park_failures
                .with_label_values(&["permission"])
                .get()
        };
        let before = c();
        emit(ParkFailed {
            class: "permission",
        });
        assert_eq!(c() - before, 1);
    }
}
