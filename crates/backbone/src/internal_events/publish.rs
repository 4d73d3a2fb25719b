//! Publishing to our topics.

use std::fmt::Display;

use super::InternalEvent;
use crate::metrics::metrics;

/// The broker accepted a message for `topic` (a topic kind label: `raw`,
/// `merged`, `error`, `dlq`).
pub struct Published<'a> {
    pub topic: &'a str,
}

impl InternalEvent for Published<'_> {
    fn emit(self) {
        metrics().published.with_label_values(&[self.topic]).inc();
    }
}

/// A publish to `topic` failed after its in-process retries; the caller
/// decides what to say about it.
pub struct PublishFailed<'a> {
    pub topic: &'a str,
}

impl InternalEvent for PublishFailed<'_> {
    fn emit(self) {
        metrics()
            .publish_errors
            .with_label_values(&[self.topic])
            .inc();
    }
}

/// Nothing was sent: `topic` is outside this environment (docs/spec.md §2).
pub struct PublishRefused<'a> {
    /// The topic as asked for (not a bounded label; the log only).
    pub topic: &'a str,
    pub error: &'a dyn Display,
}

impl InternalEvent for PublishRefused<'_> {
    fn emit(self) {
        metrics()
            .publish_errors
            .with_label_values(&["refused"])
            .inc();
        tracing::error!(
            topic = self.topic,
            error = %self.error,
            "Refused to publish to a topic outside this environment."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::{emit, test_support::logged};
    use super::*;

    fn errors(topic: &str) -> u64 {
        metrics().publish_errors.with_label_values(&[topic]).get()
    }

    #[test]
    fn published_and_failed_count_per_topic() {
        let ok = || metrics().published.with_label_values(&["merged"]).get();
        let (published, failed) = (ok(), errors("merged"));
        emit(Published { topic: "merged" });
        emit(PublishFailed { topic: "merged" });
        assert_eq!(ok() - published, 1);
        assert_eq!(errors("merged") - failed, 1);
    }

    #[test]
    fn refused_counts_under_refused_not_the_topic_and_logs_an_error() {
        let refused = errors("refused");
        let lines = logged(|| {
            emit(PublishRefused {
                topic: "projects/p/topics/sync-raw-prod",
                error: &"belongs to env prod",
            })
        });
        assert_eq!(errors("refused") - refused, 1);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["level"], "ERROR");
        assert_eq!(
            lines[0]["fields"]["topic"],
            "projects/p/topics/sync-raw-prod"
        );
    }
}
