//! Dead letters: sent to the dlq, replayed from it.

use std::fmt::Display;

use super::InternalEvent;
use crate::metrics::{metrics, stage_label};

/// A failed message was published to the dlq topic: its error is permanent
/// (`reason` `invalid`/`permanent`) or its attempts are used up (`exhausted`).
pub struct DeadLettered<'a> {
    /// The stage it failed in (folded to a bounded label for the metric).
    pub stage: &'a str,
    pub reason: &'a str,
    /// The execution that failed (1 = first run).
    pub attempt: u32,
    pub error: &'a dyn Display,
}

impl InternalEvent for DeadLettered<'_> {
    fn emit(self) {
        metrics()
            .dead_letters
            .with_label_values(&[stage_label(self.stage), self.reason])
            .inc();
        tracing::warn!(
            stage = self.stage,
            reason = self.reason,
            attempt = self.attempt,
            error = %self.error,
            "Message dead-lettered."
        );
    }
}

/// A parked dead letter was republished to the error topic and marked
/// replayed. The replay call logs one summary line, not one per row.
pub struct DeadLetterReplayed;

impl InternalEvent for DeadLetterReplayed {
    fn emit(self) {
        metrics().dlq_replayed.inc();
    }
}

/// Replays another process recorded (the CLI's `dlq replay`), seen by the
/// daemon in the audit log: its `backbone_dlq_replayed_total` counts every
/// replay path.
pub struct DeadLettersReplayedElsewhere {
    pub count: u64,
}

impl InternalEvent for DeadLettersReplayedElsewhere {
    fn emit(self) {
        metrics().dlq_replayed.inc_by(self.count);
        tracing::info!(
            count = self.count,
            "Dead letters replayed by another process."
        );
    }
}

/// Parked delivery dead letters closed by themselves: the target has since
/// acknowledged a later version of their record.
pub struct DeadLettersSuperseded {
    pub count: usize,
}

impl InternalEvent for DeadLettersSuperseded {
    fn emit(self) {
        tracing::info!(
            count = self.count,
            "Parked dead letters superseded by later deliveries."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::{emit, test_support::logged};
    use super::*;

    #[test]
    fn dead_lettered_counts_by_stage_label_and_reason_and_warns() {
        let c = |stage: &str| {
            metrics()
                .dead_letters
                .with_label_values(&[stage, "permanent"])
                .get()
        };
        let (deliver, other) = (c("deliver.suitex"), c("other"));
        let err = "HTTP 422 from the target";
        let lines = logged(|| {
            emit(DeadLettered {
                stage: "deliver.suitex",
                reason: "permanent",
                attempt: 2,
                error: &err,
            });
            // A stage name from a message attribute must not grow the label set.
            emit(DeadLettered {
                stage: "made-up",
                reason: "permanent",
                attempt: 1,
                error: &err,
            });
        });
        assert_eq!(c("deliver.suitex") - deliver, 1);
        assert_eq!(c("other") - other, 1);
        assert_eq!(lines.len(), 2, "{lines:?}");
        let l = &lines[0];
        assert_eq!(l["level"], "WARN");
        assert_eq!(l["fields"]["message"], "Message dead-lettered.");
        assert_eq!(l["fields"]["stage"], "deliver.suitex");
        assert_eq!(l["fields"]["reason"], "permanent");
        assert_eq!(l["fields"]["attempt"], 2);
        assert_eq!(l["fields"]["error"], err);
        // The log keeps the stage as given.
        assert_eq!(lines[1]["fields"]["stage"], "made-up");
    }

    #[test]
    fn replayed_counts_one() {
        let before = metrics().dlq_replayed.get();
        emit(DeadLetterReplayed);
        assert_eq!(metrics().dlq_replayed.get() - before, 1);
    }
}
