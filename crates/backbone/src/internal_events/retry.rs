//! The retry path.

use std::fmt::Display;

use super::InternalEvent;
use crate::metrics::{metrics, stage_label};

/// A failed execution was published to the error topic to be run again
/// after its backoff.
pub struct SentToRetry<'a> {
    pub stage: &'a str,
    /// The execution that failed (1 = first run).
    pub attempt: u32,
    pub error: &'a dyn Display,
}

impl InternalEvent for SentToRetry<'_> {
    fn emit(self) {
        metrics()
            .retry_attempts
            .with_label_values(&[stage_label(self.stage)])
            .inc();
        tracing::info!(
            stage = self.stage,
            attempt = self.attempt,
            error = %self.error,
            "Message failed; sent to the retry path."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::{emit, test_support::logged};
    use super::*;

    #[test]
    fn sent_to_retry_counts_per_stage_and_logs_at_info() {
        let c = || {
            metrics()
                .retry_attempts
                .with_label_values(&["deliver.netsuite"])
                .get()
        };
        let before = c();
        let lines = logged(|| {
            emit(SentToRetry {
                stage: "deliver.netsuite",
                attempt: 1,
                error: &"timed out",
            })
        });
        assert_eq!(c() - before, 1);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(
            lines[0]["fields"]["message"],
            "Message failed; sent to the retry path."
        );
        assert_eq!(lines[0]["fields"]["attempt"], 1);
    }
}
