//! The merge stage: batches, conflicts, gaps.

use super::InternalEvent;
use crate::metrics::{metrics, stage_label};

/// A merge batch's transaction committed.
pub struct MergeBatchCommitted {
    /// Messages in the batch.
    pub messages: usize,
    /// Pending events stored minus pending events merged.
    pub pending_delta: i64,
}

impl InternalEvent for MergeBatchCommitted {
    fn emit(self) {
        let m = metrics();
        m.merge_batch_size.observe(self.messages as f64);
        m.merge_pending.add(self.pending_delta);
    }
}

/// A conflict the merge resolved by `rule`, counted once its batch committed.
pub struct MergeConflictResolved<'a> {
    pub record_type: &'a str,
    pub rule: &'a str,
}

impl InternalEvent for MergeConflictResolved<'_> {
    fn emit(self) {
        // record_type comes from publishers: bounded (RECORD_TYPE_LABELS_MAX).
        let record_type = crate::metrics::record_type_label(self.record_type);
        metrics()
            .merge_conflicts
            .with_label_values(&[record_type.as_str(), self.rule])
            .inc();
    }
}

/// A record's gap outlived `merge.gap_timeout` and its oldest pending event
/// was published to the dlq as a `gap` dead letter (docs/spec.md §4.1).
pub struct GapDeadLettered<'a> {
    pub stage: &'a str,
    pub record_type: &'a str,
    pub record_id: &'a str,
    /// The record's version; `version + 1` is missing.
    pub version: i64,
    /// Pending events waiting for it.
    pub pending: i64,
    /// The dead letter's `last_error`.
    pub why: &'a str,
}

impl InternalEvent for GapDeadLettered<'_> {
    fn emit(self) {
        let m = metrics();
        m.merge_gaps.inc();
        m.dead_letters
            .with_label_values(&[stage_label(self.stage), "gap"])
            .inc();
        tracing::warn!(
            record_type = %self.record_type,
            record_id = %self.record_id,
            version = self.version,
            missing = self.version + 1,
            pending = self.pending,
            "Gap dead-lettered: {}",
            self.why
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::{emit, test_support::logged};
    use super::*;

    #[test]
    fn batch_committed_observes_its_size_and_moves_pending() {
        let m = metrics();
        let (batches, sum, pending) = (
            m.merge_batch_size.get_sample_count(),
            m.merge_batch_size.get_sample_sum(),
            m.merge_pending.get(),
        );
        emit(MergeBatchCommitted {
            messages: 7,
            pending_delta: 2,
        });
        assert_eq!(m.merge_batch_size.get_sample_count() - batches, 1);
        assert_eq!(m.merge_batch_size.get_sample_sum() - sum, 7.0);
        assert_eq!(m.merge_pending.get() - pending, 2);
    }

    #[test]
    fn conflict_counts_per_record_type_and_rule() {
        // The series it lands in, whatever other tests in this process
        // emitted before (the label is bounded).
        let label = crate::metrics::record_type_label("ie_test_conflict");
        let c = || {
            metrics()
                .merge_conflicts
                .with_label_values(&[label.as_str(), "source_priority"])
                .get()
        };
        let before = c();
        for _ in 0..2 {
            emit(MergeConflictResolved {
                record_type: "ie_test_conflict",
                rule: "source_priority",
            });
        }
        assert_eq!(c() - before, 2);
    }

    #[test]
    fn publisher_chosen_record_types_cannot_grow_the_conflict_series_without_bound() {
        // Issue 31: record_type comes from publishers; 1,000 of them made
        // 1,000 series of merge_conflicts_total.
        for i in 0..1000 {
            emit(MergeConflictResolved {
                record_type: &format!("hostile_type_{i}"),
                rule: "last_writer_wins",
            });
        }
        let family = metrics()
            .registry
            .gather()
            .into_iter()
            .find(|f| f.name() == "backbone_merge_conflicts_total")
            .expect("the family");
        let types: std::collections::BTreeSet<String> = family
            .get_metric()
            .iter()
            .flat_map(|m| m.get_label().iter())
            .filter(|l| l.name() == "record_type")
            .map(|l| l.value().to_string())
            .collect();
        assert!(
            types.len() <= crate::metrics::RECORD_TYPE_LABELS_MAX + 1,
            "{} record_type values",
            types.len()
        );
        assert!(types.contains("other"));
    }

    #[test]
    fn gap_counts_a_gap_and_a_merge_dead_letter_and_warns() {
        let m = metrics();
        let dl = || m.dead_letters.with_label_values(&["merge", "gap"]).get();
        let (gaps, dead) = (m.merge_gaps.get(), dl());
        let lines = logged(|| {
            emit(GapDeadLettered {
                stage: "merge",
                record_type: "customer",
                record_id: "42",
                version: 3,
                pending: 2,
                why: "gap: missing version 4",
            })
        });
        assert_eq!(m.merge_gaps.get() - gaps, 1);
        assert_eq!(dl() - dead, 1);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let l = &lines[0];
        assert_eq!(l["level"], "WARN");
        assert_eq!(
            l["fields"]["message"],
            "Gap dead-lettered: gap: missing version 4"
        );
        assert_eq!(l["fields"]["record_type"], "customer");
        assert_eq!(l["fields"]["record_id"], "42");
        assert_eq!(l["fields"]["version"], 3);
        assert_eq!(l["fields"]["missing"], 4);
        assert_eq!(l["fields"]["pending"], 2);
    }
}
