//! The delivery step of an explanation: where each target stands with a
//! field's current value, from the audit rows the delivery and park stages
//! write.

use std::collections::HashMap;

use serde_json::Value;

use super::replay::Held;
use super::{Attempt, ConflictView, Delivered, DeliveryStatus, TargetDelivery};
use crate::model::raw_event::Source;
use crate::stages::deliver::stage_name;
use crate::store::explain::{AuditFact, RecordFacts};
use crate::topology::StageName;

/// The record's audit rows about deliveries, by the position of the merged
/// event they concern.
pub(super) struct AuditIndex<'a> {
    /// (position, row) of `deliver.*` rows and of `park` rows of deliveries.
    rows: Vec<(i64, &'a AuditFact)>,
}

impl<'a> AuditIndex<'a> {
    pub(super) fn new(facts: &'a RecordFacts) -> Self {
        let seq_of_id: HashMap<&str, i64> = facts
            .events
            .iter()
            .map(|e| (e.id.as_str(), e.sequence_num))
            .collect();
        // A merged event carries its raw event's fingerprint; park rows name
        // only the fingerprint.
        let seq_of_fp: HashMap<&str, i64> = facts
            .audit
            .iter()
            .filter(|a| a.stage == StageName::Merge.as_str() && a.claim)
            .filter_map(|a| {
                let seq = seq_of_id.get(a.event_id.as_deref()?)?;
                Some((a.fingerprint.as_str(), *seq))
            })
            .collect();
        let rows = facts
            .audit
            .iter()
            .filter_map(|a| {
                let seq = if a.stage.starts_with("deliver.") {
                    seq_of_id.get(a.event_id.as_deref()?)
                } else if a.stage == StageName::Park.as_str() {
                    seq_of_fp.get(a.fingerprint.as_str())
                } else {
                    None
                }?;
                Some((*seq, a))
            })
            .collect();
        Self { rows }
    }

    /// Rows about `target`, in insertion order.
    fn about(&self, target: Source) -> impl Iterator<Item = &(i64, &'a AuditFact)> + '_ {
        let stage = stage_name(target);
        self.rows.iter().filter(move |(_, a)| {
            a.stage == stage
                || (a.stage == StageName::Park.as_str()
                    && a.detail
                        .as_ref()
                        .and_then(|d| d.get("stage"))
                        .and_then(Value::as_str)
                        == Some(stage))
        })
    }

    /// Whether `target` has the value `h` set. A delivery at position q
    /// carries everything routed to the target after its previous
    /// acknowledgement (docs/spec.md §4.1), so the first acknowledgement at or after
    /// the position from which the target needed the value delivered it.
    pub(super) fn delivery(
        &self,
        target: Source,
        h: &Held,
        conflicts: &[ConflictView],
    ) -> TargetDelivery {
        let set = h.event.sequence_num;
        let mut need = (h.event.source != target).then_some(set);
        // A later change of the target's own that lost to the other source:
        // it must learn the value again (as routing decides: a conflict the
        // target lost to itself is not sent back to it).
        for c in conflicts {
            if c.sequence_num > set
                && c.loser.event.source == target
                && c.winner.event.source != target
            {
                need = Some(need.map_or(c.sequence_num, |n| n.max(c.sequence_num)));
            }
        }
        let Some(need) = need else {
            return TargetDelivery {
                status: DeliveryStatus::NotNeeded,
                needed_since: None,
                delivered: None,
                last_attempt: None,
            };
        };
        // A request carries every version up to its `through` (a burst sent
        // as one request, docs/spec.md §4.1): it delivered what was needed by then.
        let relevant: Vec<&(i64, &AuditFact)> = self
            .about(target)
            .filter(|(seq, a)| *seq >= need || detail_i64(a, "through").is_some_and(|t| t >= need))
            .collect();
        if let Some((seq, a)) = relevant
            .iter()
            .find(|(_, a)| a.stage == stage_name(target) && a.outcome == "delivered")
        {
            return TargetDelivery {
                status: DeliveryStatus::Delivered,
                needed_since: Some(need),
                delivered: Some(Delivered {
                    at: a.created_at.clone(),
                    event_id: a.event_id.clone().unwrap_or_default(),
                    sequence_num: *seq,
                    version: detail_i64(a, "version").unwrap_or_default(),
                    audit_id: a.id,
                }),
                last_attempt: None,
            };
        }
        let last = relevant.last().map(|(seq, a)| Attempt {
            stage: a.stage.clone(),
            outcome: a.outcome.clone(),
            at: a.created_at.clone(),
            sequence_num: *seq,
            error: a
                .detail
                .as_ref()
                .and_then(|d| d.get("error"))
                .and_then(Value::as_str)
                .map(str::to_string),
            audit_id: a.id,
        });
        let status = match last.as_ref().map(|l| l.outcome.as_str()) {
            Some("parked" | "permanent" | "invalid") => DeliveryStatus::DeadLettered,
            Some("transient") => DeliveryStatus::Retrying,
            _ => DeliveryStatus::NotDelivered,
        };
        TargetDelivery {
            status,
            needed_since: Some(need),
            delivered: None,
            last_attempt: last,
        }
    }
}

fn detail_i64(a: &AuditFact, key: &str) -> Option<i64> {
    a.detail.as_ref()?.get(key)?.as_i64()
}
