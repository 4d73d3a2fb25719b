//! `explain`: why a record's field holds its value, and whether each target
//! has it. For every field: the current value, the event that set it, every
//! conflict on the field (winner, loser, rule, why), and per target whether
//! and when that value was delivered.
//!
//! Facts in, explanation out: [`explain_record`] reads what is stored about
//! the record, [`explain`] (pure) derives the explanation in steps: replaying
//! the immutable events through the live merge rules (`replay`: who holds
//! each field, every conflict, each checked against the merged event stored
//! for its sequence), comparing the result with the live projection, and
//! reading each target's deliveries from the audit rows (`delivery`). Any
//! disagreement (e.g. a merge policy changed since) is reported as a
//! warning, never papered over. [`text`] renders an explanation for people.

mod delivery;
mod replay;
pub mod text;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use serde_json::Value;

use self::delivery::AuditIndex;
use self::replay::{Held, Replayed};
use crate::history::HistoryError;
use crate::model::raw_event::Source;
use crate::model::rules::{ConflictPolicy, MergePolicy, RecordState};
use crate::store::explain::RecordFacts;
use crate::store::{Store, StoreError};

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
    let Replayed {
        held,
        conflicts,
        state,
        last_seq,
    } = replay::replay(facts, policy, &mut warnings)?;
    warnings.extend(projection_drift(facts, &state));
    if let Some(f) = field {
        known_field(record_type, record_id, f, &held)?;
    }
    let fields = field_explanations(facts, &held, conflicts, field);
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

/// Where the live projection disagrees with the replay, in words (none
/// when they agree).
fn projection_drift(facts: &RecordFacts, state: &RecordState) -> Option<String> {
    let Some(p) = &facts.projection else {
        return (!facts.events.is_empty())
            .then(|| "the record has events but no live projection row".into());
    };
    let drifted: BTreeSet<&String> = p
        .state
        .fields
        .keys()
        .chain(state.fields.keys())
        .filter(|f| p.state.fields.get(*f) != state.fields.get(*f))
        .collect();
    if p.version == state.version && drifted.is_empty() {
        return None;
    }
    Some(format!(
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
    ))
}

/// The asked field must have a value; the error lists those that do.
fn known_field(
    record_type: &str,
    record_id: &str,
    field: &str,
    held: &HashMap<String, Held>,
) -> Result<(), ExplainError> {
    if held.contains_key(field) {
        return Ok(());
    }
    let mut names: Vec<&str> = held.keys().map(String::as_str).collect();
    names.sort_unstable();
    Err(ExplainError::UnknownField {
        record_type: record_type.to_string(),
        record_id: record_id.to_string(),
        field: field.to_string(),
        available: if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        },
    })
}

/// Each field (or only `field`) with its conflicts and where each target
/// stands with its value.
fn field_explanations(
    facts: &RecordFacts,
    held: &HashMap<String, Held>,
    mut conflicts: BTreeMap<String, Vec<ConflictView>>,
    field: Option<&str>,
) -> BTreeMap<String, FieldExplanation> {
    let audit = AuditIndex::new(facts);
    let mut fields = BTreeMap::new();
    for (name, h) in held {
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
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history;
    use crate::store::explain::{AuditFact, MergedFact};
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
