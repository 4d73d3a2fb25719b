//! `explain`: why a record's field holds its value, and whether each target
//! has it. For every field: the current value, the event that set it, every
//! conflict on the field (winner, loser, rule, why), and per target whether
//! and when that value was delivered.
//!
//! Conflicts are not stored with the event that held the field, so they are
//! derived by replaying the record's immutable events through the live merge
//! rules ([`history::fold_each`]); each one is checked against the merged
//! event stored for its sequence, and any disagreement (e.g. a merge policy
//! changed since) is reported as a warning, never papered over. Deliveries
//! come from the audit rows the delivery and park stages write.
//!
//! [`explain`] is pure (facts in, explanation out); [`explain_record`] reads
//! the facts first.

pub mod text;

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::Value;

use crate::history::{self, HistoryError};
use crate::model::fingerprint::format_timestamp;
use crate::model::merged_event::MergedEvent;
use crate::model::raw_event::Source;
use crate::model::rules::{Conflict, ConflictPolicy, MergePolicy};
use crate::stages::deliver::stage_name;
use crate::store::explain::{AuditFact, RecordFacts};
use crate::store::{Store, StoreError};
use crate::topology::StageName;

/// Why an explanation could not be given.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(
        "{record_type}/{record_id} is unknown: no events and no merged state are stored for it"
    )]
    UnknownRecord {
        record_type: String,
        record_id: String,
    },
    #[error("{record_type}/{record_id} has no field `{field}` (its fields: {available})")]
    UnknownField {
        record_type: String,
        record_id: String,
        field: String,
        /// Comma-separated, or `none`.
        available: String,
    },
    /// The stored history cannot be folded (a gap, a bad row).
    #[error(transparent)]
    Replay(#[from] HistoryError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ExplainError {
    /// The record or the field does not exist (CLI exit 1, HTTP 404).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            ExplainError::UnknownRecord { .. } | ExplainError::UnknownField { .. }
        )
    }
}

/// An event of the record, as explanations name it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRef {
    pub event_id: String,
    pub sequence_num: i64,
    /// The record's version after this event (unchanged when it applied nothing).
    pub version: i64,
    pub source: Source,
    /// The event's own timestamp (RFC 3339, microseconds).
    pub timestamp: String,
}

/// One side of a conflict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Side {
    /// `incoming` (the event being merged) or `held` (the field's value then).
    pub role: &'static str,
    pub event: EventRef,
    pub value: Value,
}

/// A conflict on a field, decided by the merge rules.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConflictView {
    /// Position of the incoming event, where the conflict was decided.
    pub sequence_num: i64,
    pub rule: ConflictPolicy,
    pub winner: Side,
    pub loser: Side,
    /// The winner set (or kept) the field's current value.
    pub decided_current_value: bool,
    /// In words: what made the winner win under `rule`.
    pub why: String,
    /// The merged event stored for this sequence records the same resolution
    /// (false: no merged event is stored for it, see `warnings` if it differs).
    pub recorded: bool,
}

/// Where a target stands with the field's current value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// The target acknowledged (2xx) a merged event carrying the value.
    Delivered,
    /// The target is where the value came from.
    NotNeeded,
    /// The last attempt failed transiently; the retry path has it.
    Retrying,
    /// The delivery was dead-lettered (replay it with `dlq replay`).
    DeadLettered,
    /// No acknowledged delivery yet (in flight, or the target's consumer is off).
    NotDelivered,
}

/// A merged event the target acknowledged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delivered {
    /// When the target's 2xx was recorded (the audit row's time).
    pub at: String,
    /// The merged event sent (its body folded in every version the target
    /// had not acknowledged yet, docs/spec.md §4.1).
    pub event_id: String,
    pub sequence_num: i64,
    pub version: i64,
    pub audit_id: i64,
}

/// The last audit row about the target for this value, when it was not delivered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attempt {
    pub stage: String,
    pub outcome: String,
    pub at: String,
    pub sequence_num: i64,
    pub error: Option<String>,
    pub audit_id: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetDelivery {
    pub status: DeliveryStatus,
    /// The position from which the target needed this value: the event
    /// that set it, or a later change of the target's own that lost to it.
    pub needed_since: Option<i64>,
    pub delivered: Option<Delivered>,
    pub last_attempt: Option<Attempt>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldExplanation {
    pub value: Value,
    pub set_by: EventRef,
    /// Every conflict on this field, oldest first.
    pub conflicts: Vec<ConflictView>,
    /// Per target (`netsuite`, `suitex`).
    pub delivery: BTreeMap<Source, TargetDelivery>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyView {
    pub conflict_policy: ConflictPolicy,
    pub source_priority: Vec<Source>,
}

/// The answer for one record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    pub record_type: String,
    pub record_id: String,
    pub version: i64,
    pub last_seq: i64,
    pub events: usize,
    /// Events waiting for an earlier version (not part of any value yet).
    pub pending: i64,
    /// The policy the history was replayed with (the configured one).
    pub policy: PolicyView,
    /// By field name (only the asked one with `--field`).
    pub fields: BTreeMap<String, FieldExplanation>,
    /// Disagreements between the replay and what is stored.
    pub warnings: Vec<String>,
}

/// Reads what is stored about the record and explains it.
pub async fn explain_record(
    store: &Store,
    policy: &MergePolicy,
    record_type: &str,
    record_id: &str,
    field: Option<&str>,
) -> Result<Explanation, ExplainError> {
    let facts = store
        .timed(store.record_facts(record_type, record_id))
        .await?;
    explain(record_type, record_id, &facts, policy, field)
}

/// The field's holder during the replay.
#[derive(Clone)]
struct Held {
    event: EventRef,
    value: Value,
}

/// Explains a record from its stored facts (pure).
pub fn explain(
    record_type: &str,
    record_id: &str,
    facts: &RecordFacts,
    policy: &MergePolicy,
    field: Option<&str>,
) -> Result<Explanation, ExplainError> {
    if facts.events.is_empty() && facts.projection.is_none() && facts.checkpoint.is_none() {
        return Err(ExplainError::UnknownRecord {
            record_type: record_type.to_string(),
            record_id: record_id.to_string(),
        });
    }
    let mut warnings = Vec::new();
    let stored = stored_conflicts(facts, &mut warnings);

    let mut held: HashMap<String, Held> = HashMap::new();
    // Archived history (docs/spec.md §6.1): the replay starts at the checkpoint, whose
    // fields name the archive segment instead of the event that set them.
    let (start, events) = history::from_checkpoint(facts.checkpoint.clone(), &facts.events, None)?;
    if start.1 > 0 {
        let segment = facts
            .checkpoint
            .as_ref()
            .map(|c| c.segment_id.clone())
            .unwrap_or_default();
        warnings.push(format!(
            "events up to sequence {} are archived (segment {segment}): fields last set by them \
             are explained from its checkpoint; `event-backbone archive restore --segment \
             {segment}` brings them back",
            start.1
        ));
        for (f, fs) in &start.0.fields {
            held.insert(
                f.clone(),
                Held {
                    event: EventRef {
                        event_id: format!("archived:{segment}"),
                        sequence_num: start.1,
                        version: fs.version,
                        source: fs.source,
                        timestamp: format_timestamp(&fs.timestamp),
                    },
                    value: fs.value.clone(),
                },
            );
        }
    }
    let mut conflicts: BTreeMap<String, Vec<ConflictView>> = BTreeMap::new();
    let (state, last_seq) = history::fold_each_from(start, events, policy, |e, inc, r| {
        let me = EventRef {
            event_id: e.id.clone(),
            sequence_num: e.sequence_num,
            version: r.version,
            source: inc.source,
            timestamp: format_timestamp(&inc.timestamp),
        };
        for c in &r.conflicts {
            let Some(h) = held.get(&c.field) else {
                // The rules only report a conflict on a field that has a value.
                warnings.push(format!(
                    "sequence {}: conflict on `{}` with no earlier value in the replay",
                    e.sequence_num, c.field
                ));
                continue;
            };
            let incoming = Side {
                role: "incoming",
                event: me.clone(),
                value: c.incoming.clone(),
            };
            let holder = Side {
                role: "held",
                event: h.event.clone(),
                value: h.value.clone(),
            };
            let (winner, loser) = if r.applied.contains_key(&c.field) {
                (incoming, holder)
            } else {
                (holder, incoming)
            };
            let recorded = match stored.get(&e.sequence_num) {
                None => false,
                Some(recorded) => {
                    let same = recorded.iter().any(|s| same_resolution(s, c));
                    if !same {
                        warnings.push(format!(
                            "sequence {}: the stored merged event resolved `{}` differently \
                             than a replay under the configured merge policy ({} won); \
                             was the policy changed since?",
                            e.sequence_num, c.field, c.winner
                        ));
                    }
                    same
                }
            };
            conflicts
                .entry(c.field.clone())
                .or_default()
                .push(ConflictView {
                    sequence_num: e.sequence_num,
                    rule: c.rule,
                    why: why(c.rule, &winner, &loser, policy),
                    winner,
                    loser,
                    decided_current_value: false,
                    recorded,
                });
        }
        for (f, v) in &r.applied {
            held.insert(
                f.clone(),
                Held {
                    event: me.clone(),
                    value: v.clone(),
                },
            );
        }
    })?;

    if let Some(p) = &facts.projection {
        let drifted: Vec<&String> = p
            .state
            .fields
            .keys()
            .chain(state.fields.keys())
            .filter(|f| p.state.fields.get(*f) != state.fields.get(*f))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if p.version != state.version || !drifted.is_empty() {
            warnings.push(format!(
                "the live projection (version {}) disagrees with the replay (version {}){}; \
                 run `event-backbone verify`",
                p.version,
                state.version,
                if drifted.is_empty() {
                    String::new()
                } else {
                    format!(
                        " on {}",
                        drifted
                            .iter()
                            .map(|f| format!("`{f}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            ));
        }
    } else if !facts.events.is_empty() {
        warnings.push("the record has events but no live projection row".into());
    }

    if let Some(f) = field {
        if !held.contains_key(f) {
            let mut names: Vec<&str> = held.keys().map(String::as_str).collect();
            names.sort_unstable();
            return Err(ExplainError::UnknownField {
                record_type: record_type.to_string(),
                record_id: record_id.to_string(),
                field: f.to_string(),
                available: if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                },
            });
        }
    }

    let audit = AuditIndex::new(facts);
    let mut fields = BTreeMap::new();
    for (name, h) in &held {
        if field.is_some_and(|f| f != name) {
            continue;
        }
        let mut cs = conflicts.remove(name).unwrap_or_default();
        for c in &mut cs {
            c.decided_current_value = c.winner.event.event_id == h.event.event_id;
        }
        let delivery = Source::ALL
            .iter()
            .map(|&t| (t, audit.delivery(t, h, &cs)))
            .collect();
        fields.insert(
            name.clone(),
            FieldExplanation {
                value: h.value.clone(),
                set_by: h.event.clone(),
                conflicts: cs,
                delivery,
            },
        );
    }

    Ok(Explanation {
        record_type: record_type.to_string(),
        record_id: record_id.to_string(),
        version: state.version,
        last_seq,
        events: facts.events.len(),
        pending: facts.projection.as_ref().map_or(0, |p| p.pending),
        policy: PolicyView {
            conflict_policy: policy.conflict_policy,
            source_priority: policy.source_priority.clone(),
        },
        fields,
        warnings,
    })
}

/// The conflicts of each stored merged event, by sequence.
fn stored_conflicts(
    facts: &RecordFacts,
    warnings: &mut Vec<String>,
) -> HashMap<i64, Vec<Conflict>> {
    let mut out = HashMap::new();
    for m in &facts.merged {
        match serde_json::from_str::<MergedEvent>(&m.payload) {
            Ok(ev) => {
                out.insert(m.sequence_num, ev.conflicts);
            }
            Err(e) => warnings.push(format!(
                "the stored merged event at sequence {} is unreadable: {e}",
                m.sequence_num
            )),
        }
    }
    out
}

fn same_resolution(a: &Conflict, b: &Conflict) -> bool {
    a.field == b.field && a.winner == b.winner && a.kept == b.kept && a.rule == b.rule
}

/// What made the winner win, in words. The decision itself was made by the
/// merge rules during the replay; this only names the deciding fact.
fn why(rule: ConflictPolicy, winner: &Side, loser: &Side, policy: &MergePolicy) -> String {
    let (w, l) = (&winner.event, &loser.event);
    let first_in_priority = || {
        format!(
            "{} comes before {} in merge.source_priority",
            w.source, l.source
        )
    };
    match rule {
        ConflictPolicy::LastWriterWins => {
            if w.timestamp > l.timestamp {
                format!(
                    "the later timestamp wins ({} is after {})",
                    w.timestamp, l.timestamp
                )
            } else if w.timestamp == l.timestamp && w.source != l.source {
                format!("same timestamp; {}", first_in_priority())
            } else if w.timestamp == l.timestamp {
                "same timestamp and source: the incoming write stands".into()
            } else {
                // Not a decision the rules make: say so rather than invent a reason.
                format!(
                    "unexpected: {} has the earlier timestamp under {}",
                    w.source,
                    policy.conflict_policy.as_str()
                )
            }
        }
        ConflictPolicy::SourcePriority => {
            if w.source != l.source {
                first_in_priority()
            } else {
                "same source: the later write stands".into()
            }
        }
    }
}

/// The record's audit rows about deliveries, by the position of the merged
/// event they concern.
struct AuditIndex<'a> {
    /// (position, row) of `deliver.*` rows and of `park` rows of deliveries.
    rows: Vec<(i64, &'a AuditFact)>,
}

impl<'a> AuditIndex<'a> {
    fn new(facts: &'a RecordFacts) -> Self {
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
    fn delivery(&self, target: Source, h: &Held, conflicts: &[ConflictView]) -> TargetDelivery {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::explain::MergedFact;
    use crate::store::ledger::{StateRow, StoredEvent};
    use serde_json::json;

    const T: &str = "project";
    const ID: &str = "42";

    fn ev(seq: i64, source: &str, base: i64, ts: &str, changes: Value) -> StoredEvent {
        StoredEvent {
            id: format!("e{seq}"),
            record_type: T.into(),
            record_id: ID.into(),
            source: source.into(),
            timestamp: ts.into(),
            base_version: base,
            changes,
            full_snapshot_ref: None,
            processed: true,
            sequence_num: seq,
            created_at: ts.into(),
        }
    }

    fn audit(
        id: i64,
        event: Option<&str>,
        fp: &str,
        stage: &str,
        outcome: &str,
        detail: Value,
    ) -> AuditFact {
        AuditFact {
            id,
            event_id: event.map(str::to_string),
            fingerprint: fp.into(),
            stage: stage.into(),
            outcome: outcome.into(),
            detail: Some(detail),
            message_id: None,
            attempt: 1,
            claim: outcome == "merged" || outcome == "delivered",
            created_at: format!("2026-12-01T19:00:{id:02}.000000Z"),
        }
    }

    /// docs/spec.md §5: v1..v7 by netsuite (status set at v7, 10:00), then suitex
    /// b=6, 09:59, {status: open, name: X} → v8.
    fn worked_example() -> RecordFacts {
        let mut events = vec![ev(
            1,
            "netsuite",
            0,
            "2026-03-13T01:00:00.000000Z",
            json!({"name": "Old"}),
        )];
        for v in 1..6 {
            events.push(ev(
                v + 1,
                "netsuite",
                v,
                &format!("2026-03-13T0{}:00:00.000000Z", v + 1),
                json!({ format!("f{v}"): v }),
            ));
        }
        events.push(ev(
            7,
            "netsuite",
            6,
            "2026-03-13T10:00:00.000000Z",
            json!({"status": "closed"}),
        ));
        events.push(ev(
            8,
            "suitex",
            6,
            "2026-03-13T09:59:00.000000Z",
            json!({"status": "open", "name": "X"}),
        ));
        let (state, _) = history::fold(&events, &MergePolicy::default()).unwrap();
        let mut audit_rows = Vec::new();
        for e in &events {
            audit_rows.push(audit(
                e.sequence_num,
                Some(&e.id),
                &format!("fp{}", e.sequence_num),
                "merge",
                "merged",
                json!({}),
            ));
        }
        let merged = vec![MergedFact {
            sequence_num: 8,
            version: 8,
            event_id: "e8".into(),
            payload:
                json!({"event_id": "e8", "fingerprint": "fp8", "record_type": T, "record_id": ID,
                "origin": "suitex", "version": 8, "base_version": 6,
                "timestamp": "2026-03-13T09:59:00.000000Z", "applied": {"name": "X"},
                "conflicts": [{"field": "status", "incoming": "open", "kept": "closed",
                               "winner": "netsuite", "rule": "last_writer_wins"}]})
                .to_string(),
        }];
        RecordFacts {
            events,
            projection: Some(StateRow {
                version: 8,
                last_seq: 8,
                state,
                pending: 0,
            }),
            merged,
            audit: audit_rows,
            checkpoint: None,
        }
    }

    fn delivered(facts: &mut RecordFacts, id: i64, seq: i64, target: &str) {
        facts.audit.push(audit(
            id,
            Some(&format!("e{seq}")),
            &format!("fp{seq}"),
            &format!("deliver.{target}"),
            "delivered",
            json!({"status": 200, "version": seq, "versions": [seq]}),
        ));
    }

    fn run(facts: &RecordFacts, field: Option<&str>) -> Result<Explanation, ExplainError> {
        explain(T, ID, facts, &MergePolicy::default(), field)
    }

    #[test]
    fn worked_example_status_names_winner_loser_rule_and_delivery() {
        let mut facts = worked_example();
        delivered(&mut facts, 20, 7, "suitex");
        delivered(&mut facts, 21, 8, "netsuite");
        delivered(&mut facts, 22, 8, "suitex");
        let x = run(&facts, None).unwrap();
        assert_eq!((x.version, x.last_seq, x.events), (8, 8, 8));
        assert!(x.warnings.is_empty(), "{:?}", x.warnings);
        let status = &x.fields["status"];
        assert_eq!(status.value, json!("closed"));
        assert_eq!(status.set_by.event_id, "e7");
        assert_eq!(status.set_by.source, Source::Netsuite);
        assert_eq!((status.set_by.sequence_num, status.set_by.version), (7, 7));
        assert_eq!(status.set_by.timestamp, "2026-03-13T10:00:00.000000Z");
        assert_eq!(status.conflicts.len(), 1);
        let c = &status.conflicts[0];
        assert_eq!(c.rule, ConflictPolicy::LastWriterWins);
        assert_eq!(
            (c.winner.event.event_id.as_str(), c.winner.role),
            ("e7", "held")
        );
        assert_eq!(c.winner.value, json!("closed"));
        assert_eq!(
            (c.loser.event.event_id.as_str(), c.loser.role),
            ("e8", "incoming")
        );
        assert_eq!(c.loser.event.source, Source::Suitex);
        assert_eq!(c.loser.value, json!("open"));
        assert!(c.decided_current_value && c.recorded);
        assert!(c.why.contains("later timestamp"), "{}", c.why);

        assert_eq!(
            status.delivery[&Source::Netsuite].status,
            DeliveryStatus::NotNeeded
        );
        let sx = &status.delivery[&Source::Suitex];
        assert_eq!(sx.status, DeliveryStatus::Delivered);
        // Suitex's own change at seq 8 lost: the v7 delivery is not enough.
        assert_eq!(sx.needed_since, Some(8));
        let d = sx.delivered.as_ref().unwrap();
        assert_eq!((d.sequence_num, d.version, d.audit_id), (8, 8, 22));
        assert_eq!(d.event_id, "e8");

        let name = &x.fields["name"];
        assert_eq!(name.set_by.event_id, "e8");
        assert!(name.conflicts.is_empty());
        assert_eq!(
            name.delivery[&Source::Suitex].status,
            DeliveryStatus::NotNeeded
        );
        assert_eq!(
            name.delivery[&Source::Netsuite].status,
            DeliveryStatus::Delivered
        );
        // Suitex acknowledged nothing before seq 7: that delivery carried f3 (seq 4) too.
        let f3 = &x.fields["f3"].delivery[&Source::Suitex];
        assert_eq!(f3.status, DeliveryStatus::Delivered);
        assert_eq!(
            (f3.needed_since, f3.delivered.as_ref().unwrap().sequence_num),
            (Some(4), 7)
        );
    }

    #[test]
    fn an_earlier_delivery_does_not_count_once_the_target_lost_a_conflict() {
        let mut facts = worked_example();
        delivered(&mut facts, 20, 7, "suitex");
        facts.audit.push(audit(
            21,
            Some("e8"),
            "fp8",
            "deliver.suitex",
            "transient",
            json!({"error": "HTTP 503", "version": 8}),
        ));
        let x = run(&facts, Some("status")).unwrap();
        let sx = &x.fields["status"].delivery[&Source::Suitex];
        assert_eq!(sx.status, DeliveryStatus::Retrying);
        let a = sx.last_attempt.as_ref().unwrap();
        assert_eq!((a.outcome.as_str(), a.sequence_num), ("transient", 8));
        assert_eq!(a.error.as_deref(), Some("HTTP 503"));
        // The park row names only the fingerprint and the failed stage.
        facts.audit.push(audit(
            22,
            None,
            "fp8",
            "park",
            "parked",
            json!({"stage": "deliver.suitex", "reason": "exhausted"}),
        ));
        facts.audit.push(audit(
            23,
            None,
            "fp8",
            "park",
            "parked",
            json!({"stage": "deliver.netsuite", "reason": "exhausted"}),
        ));
        let x = run(&facts, Some("status")).unwrap();
        let sx = &x.fields["status"].delivery[&Source::Suitex];
        assert_eq!(sx.status, DeliveryStatus::DeadLettered);
        assert_eq!(sx.last_attempt.as_ref().unwrap().audit_id, 22);
        // A later acknowledged version carries it (docs/spec.md §4.1 folding).
        facts.events.push(ev(
            9,
            "netsuite",
            8,
            "2026-03-13T11:00:00.000000Z",
            json!({"other": 1}),
        ));
        facts.projection = None;
        delivered(&mut facts, 24, 9, "suitex");
        let x = run(&facts, Some("status")).unwrap();
        let sx = &x.fields["status"].delivery[&Source::Suitex];
        assert_eq!(sx.status, DeliveryStatus::Delivered);
        assert_eq!(sx.delivered.as_ref().unwrap().sequence_num, 9);
        assert!(
            x.warnings.iter().any(|w| w.contains("no live projection")),
            "{:?}",
            x.warnings
        );
    }

    #[test]
    fn an_incoming_winner_and_earlier_conflicts() {
        let events = vec![
            ev(
                1,
                "netsuite",
                0,
                "2026-03-13T10:00:00.000000Z",
                json!({"s": "a"}),
            ),
            // Stale base, earlier: loses.
            ev(
                2,
                "suitex",
                0,
                "2026-03-13T09:00:00.000000Z",
                json!({"s": "b"}),
            ),
            // Stale base, later: wins against the held netsuite value.
            ev(
                3,
                "suitex",
                0,
                "2026-03-13T11:00:00.000000Z",
                json!({"s": "c"}),
            ),
        ];
        let facts = RecordFacts {
            events,
            ..Default::default()
        };
        let x = run(&facts, None).unwrap();
        let s = &x.fields["s"];
        assert_eq!(s.value, json!("c"));
        assert_eq!(s.set_by.event_id, "e3");
        assert_eq!(s.conflicts.len(), 2);
        let (first, second) = (&s.conflicts[0], &s.conflicts[1]);
        assert_eq!(first.winner.event.event_id, "e1");
        assert!(!first.decided_current_value);
        assert!(!first.recorded, "no merged events stored");
        assert_eq!(
            (second.winner.event.event_id.as_str(), second.winner.role),
            ("e3", "incoming")
        );
        assert_eq!(
            (
                second.loser.event.event_id.as_str(),
                second.loser.value.clone()
            ),
            ("e1", json!("a"))
        );
        assert!(second.decided_current_value);
        // Set by suitex, which never lost since: netsuite needs it, suitex does not.
        assert_eq!(
            s.delivery[&Source::Suitex].status,
            DeliveryStatus::NotNeeded
        );
        assert_eq!(s.delivery[&Source::Netsuite].needed_since, Some(3));
    }

    #[test]
    fn a_stored_resolution_that_differs_is_a_warning() {
        let mut facts = worked_example();
        facts.merged[0].payload = facts.merged[0]
            .payload
            .replace("\"winner\":\"netsuite\"", "\"winner\":\"suitex\"");
        let x = run(&facts, None).unwrap();
        assert!(!x.fields["status"].conflicts[0].recorded);
        assert!(
            x.warnings
                .iter()
                .any(|w| w.contains("sequence 8") && w.contains("policy")),
            "{:?}",
            x.warnings
        );
        // And under another policy the replay itself says so.
        let mut facts = worked_example();
        let policy = MergePolicy {
            conflict_policy: ConflictPolicy::SourcePriority,
            source_priority: vec![Source::Suitex, Source::Netsuite],
        };
        let x = explain(T, ID, &facts, &policy, None).unwrap();
        assert_eq!(x.fields["status"].value, json!("open"));
        assert!(
            x.warnings.len() >= 2,
            "conflict and projection disagree: {:?}",
            x.warnings
        );
        assert!(x.fields["status"].conflicts[0]
            .why
            .contains("merge.source_priority"));
        facts.merged.clear();
        assert!(explain(T, ID, &facts, &policy, None)
            .unwrap()
            .warnings
            .iter()
            .all(|w| !w.contains("sequence 8")));
    }

    #[test]
    fn unknown_record_and_unknown_field() {
        let e = run(&RecordFacts::default(), None).unwrap_err();
        assert!(matches!(e, ExplainError::UnknownRecord { .. }) && e.is_not_found());
        assert!(e.to_string().contains("project/42 is unknown"), "{e}");
        let e = run(&worked_example(), Some("colour")).unwrap_err();
        assert!(e.is_not_found());
        let msg = e.to_string();
        assert!(
            msg.contains("no field `colour`") && msg.contains("name, status"),
            "{msg}"
        );
        let x = run(&worked_example(), Some("name")).unwrap();
        assert_eq!(x.fields.keys().collect::<Vec<_>>(), ["name"]);
    }

    #[test]
    fn a_history_that_cannot_be_replayed_is_an_error() {
        let mut facts = worked_example();
        facts.events.remove(3);
        assert!(matches!(run(&facts, None), Err(ExplainError::Replay(_))));
    }

    #[test]
    fn why_names_the_deciding_fact() {
        let side = |source, ts: &str| Side {
            role: "held",
            event: EventRef {
                event_id: "e".into(),
                sequence_num: 1,
                version: 1,
                source,
                timestamp: ts.into(),
            },
            value: json!(1),
        };
        let p = MergePolicy::default();
        let t = "2026-03-13T10:00:00.000000Z";
        let w = why(
            ConflictPolicy::LastWriterWins,
            &side(Source::Netsuite, t),
            &side(Source::Suitex, t),
            &p,
        );
        assert_eq!(
            w,
            "same timestamp; netsuite comes before suitex in merge.source_priority"
        );
        let w = why(
            ConflictPolicy::SourcePriority,
            &side(Source::Suitex, t),
            &side(Source::Suitex, t),
            &p,
        );
        assert!(w.contains("same source"), "{w}");
    }

    #[test]
    fn text_and_json_shapes() {
        let mut facts = worked_example();
        delivered(&mut facts, 22, 8, "suitex");
        let x = run(&facts, Some("status")).unwrap();
        let text = text::render(&x);
        assert!(
            text.starts_with("project/42 at version 8 (8 events"),
            "{text}"
        );
        for want in [
            "status = \"closed\"",
            "set by    netsuite event e7 (seq 7, v7, at 2026-03-13T10:00:00.000000Z)",
            "conflict  seq 8, rule last_writer_wins: won by the current value",
            "won     netsuite event e7",
            "lost    suitex event e8 (seq 8, v8, at 2026-03-13T09:59:00.000000Z) = \"open\" [incoming]",
            "netsuite: not needed",
            "suitex:   delivered at 2026-12-01T19:00:22.000000Z with merged event e8 (seq 8, v8)",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        let v = serde_json::to_value(&x).unwrap();
        assert_eq!(
            v["fields"]["status"]["conflicts"][0]["winner"]["event"]["source"],
            "netsuite"
        );
        assert_eq!(
            v["fields"]["status"]["conflicts"][0]["rule"],
            "last_writer_wins"
        );
        assert_eq!(
            v["fields"]["status"]["delivery"]["suitex"]["status"],
            "delivered"
        );
        assert_eq!(
            v["fields"]["status"]["delivery"]["netsuite"]["status"],
            "not_needed"
        );
        assert_eq!(
            v["policy"]["source_priority"],
            json!(["netsuite", "suitex"])
        );
    }
}
