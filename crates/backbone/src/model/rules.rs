//! Merge rules (docs/spec.md §5): pure, no I/O, so the live stage, `events replay`
//! and `verify` all fold events through exactly the same code.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::raw_event::Source;

/// How a conflicting field is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictPolicy {
    LastWriterWins,
    SourcePriority,
}

impl ConflictPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictPolicy::LastWriterWins => "last_writer_wins",
            ConflictPolicy::SourcePriority => "source_priority",
        }
    }
}

/// The merge configuration: a policy and the source order used for ties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergePolicy {
    pub conflict_policy: ConflictPolicy,
    /// Highest priority first.
    pub source_priority: Vec<Source>,
}

impl Default for MergePolicy {
    fn default() -> Self {
        Self {
            conflict_policy: ConflictPolicy::LastWriterWins,
            source_priority: vec![Source::Netsuite, Source::Suitex],
        }
    }
}

impl MergePolicy {
    fn rank(&self, s: Source) -> usize {
        self.source_priority
            .iter()
            .position(|p| *p == s)
            .unwrap_or(usize::MAX)
    }
}

/// When and by whom a field was last changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldState {
    pub value: Value,
    pub version: i64,
    pub source: Source,
    #[serde(with = "micros")]
    pub timestamp: DateTime<Utc>,
}

/// A record's merged state: the projection the live stage keeps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecordState {
    pub version: i64,
    pub fields: BTreeMap<String, FieldState>,
}

impl RecordState {
    /// Field values only, as delivered to readers.
    pub fn values(&self) -> Map<String, Value> {
        self.fields
            .iter()
            .map(|(k, f)| (k.clone(), f.value.clone()))
            .collect()
    }
}

/// One incoming change set, as far as the rules care.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    pub source: Source,
    pub timestamp: DateTime<Utc>,
    pub base_version: i64,
    pub changes: &'a Map<String, Value>,
}

/// A conflict and how it was resolved (docs/spec.md §3.3 `conflicts[]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    pub field: String,
    pub incoming: Value,
    pub kept: Value,
    pub winner: Source,
    pub rule: ConflictPolicy,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MergeResult {
    /// Fields whose incoming value was applied (including conflicts it won).
    pub applied: Map<String, Value>,
    pub conflicts: Vec<Conflict>,
    /// The record's version before this event.
    pub previous_version: i64,
    /// The record's version after this event.
    pub version: i64,
}

impl MergeResult {
    /// A merged event is published when something was applied or a conflict resolved.
    pub fn publishes(&self) -> bool {
        !self.applied.is_empty() || !self.conflicts.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// An earlier event of this record is missing or still in flight.
    #[error("base_version {base} is ahead of the merged version {version}")]
    BaseVersionAhead { base: i64, version: i64 },
}

/// Folds one event into `state` (mutating it only on success).
pub fn merge(
    state: &mut RecordState,
    ev: Incoming<'_>,
    policy: &MergePolicy,
) -> Result<MergeResult, MergeError> {
    if ev.base_version > state.version {
        return Err(MergeError::BaseVersionAhead {
            base: ev.base_version,
            version: state.version,
        });
    }
    let previous_version = state.version;
    let new_version = state.version + 1;
    let mut applied = Map::new();
    let mut conflicts = Vec::new();

    for (field, value) in ev.changes {
        let incoming_wins = match state.fields.get(field) {
            None => true,
            Some(cur) if cur.version <= ev.base_version => true,
            Some(cur) => {
                let wins = incoming_beats(ev.source, ev.timestamp, cur, policy);
                conflicts.push(Conflict {
                    field: field.clone(),
                    incoming: value.clone(),
                    kept: if wins {
                        value.clone()
                    } else {
                        cur.value.clone()
                    },
                    winner: if wins { ev.source } else { cur.source },
                    rule: policy.conflict_policy,
                });
                wins
            }
        };
        if incoming_wins {
            applied.insert(field.clone(), value.clone());
        }
    }

    let version = if applied.is_empty() {
        previous_version
    } else {
        for (field, value) in &applied {
            state.fields.insert(
                field.clone(),
                FieldState {
                    value: value.clone(),
                    version: new_version,
                    source: ev.source,
                    timestamp: ev.timestamp,
                },
            );
        }
        state.version = new_version;
        new_version
    };
    Ok(MergeResult {
        applied,
        conflicts,
        previous_version,
        version,
    })
}

/// Does the incoming change beat the field's current value under `policy`?
fn incoming_beats(
    source: Source,
    ts: DateTime<Utc>,
    cur: &FieldState,
    policy: &MergePolicy,
) -> bool {
    let by_priority = policy.rank(source) < policy.rank(cur.source);
    match policy.conflict_policy {
        ConflictPolicy::SourcePriority => {
            // Same source on both sides: the later write stands.
            if source == cur.source {
                ts >= cur.timestamp
            } else {
                by_priority
            }
        }
        ConflictPolicy::LastWriterWins => match ts.cmp(&cur.timestamp) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal => source == cur.source || by_priority,
        },
    }
}

/// Serialises timestamps with exactly six fractional digits so stored state
/// round-trips without losing or inventing precision.
mod micros {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ts: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::model::fingerprint::format_timestamp(ts))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn t(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 13, h, m, 0).unwrap()
    }

    fn changes(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn state_v7() -> RecordState {
        let mut s = RecordState {
            version: 7,
            ..Default::default()
        };
        s.fields.insert(
            "status".into(),
            FieldState {
                value: json!("closed"),
                version: 7,
                source: Source::Netsuite,
                timestamp: t(10, 0),
            },
        );
        s.fields.insert(
            "name".into(),
            FieldState {
                value: json!("Old"),
                version: 3,
                source: Source::Suitex,
                timestamp: t(8, 0),
            },
        );
        s
    }

    #[test]
    fn spec_worked_example() {
        let mut s = state_v7();
        let c = changes(json!({"status": "open", "name": "X"}));
        let r = merge(
            &mut s,
            Incoming {
                source: Source::Suitex,
                timestamp: t(9, 59),
                base_version: 6,
                changes: &c,
            },
            &MergePolicy::default(),
        )
        .unwrap();
        assert_eq!(r.version, 8);
        assert_eq!(r.previous_version, 7);
        assert_eq!(r.applied, changes(json!({"name": "X"})));
        assert_eq!(
            r.conflicts,
            vec![Conflict {
                field: "status".into(),
                incoming: json!("open"),
                kept: json!("closed"),
                winner: Source::Netsuite,
                rule: ConflictPolicy::LastWriterWins,
            }]
        );
        assert_eq!(s.version, 8);
        assert_eq!(s.fields["name"].version, 8);
        assert_eq!(s.fields["status"].value, json!("closed"));
    }

    #[test]
    fn later_writer_wins_conflict_and_is_applied() {
        let mut s = state_v7();
        let c = changes(json!({"status": "open"}));
        let r = merge(
            &mut s,
            Incoming {
                source: Source::Suitex,
                timestamp: t(10, 1),
                base_version: 6,
                changes: &c,
            },
            &MergePolicy::default(),
        )
        .unwrap();
        assert_eq!(r.applied, c);
        assert_eq!(r.conflicts[0].winner, Source::Suitex);
        assert_eq!(r.conflicts[0].kept, json!("open"));
        assert_eq!(s.fields["status"].source, Source::Suitex);
    }

    #[test]
    fn timestamp_tie_goes_to_first_priority_source() {
        let mut s = state_v7();
        let c = changes(json!({"status": "open"}));
        let ev = Incoming {
            source: Source::Suitex,
            timestamp: t(10, 0),
            base_version: 6,
            changes: &c,
        };
        let r = merge(&mut s.clone(), ev, &MergePolicy::default()).unwrap();
        assert_eq!(r.conflicts[0].winner, Source::Netsuite);
        let suitex_first = MergePolicy {
            conflict_policy: ConflictPolicy::LastWriterWins,
            source_priority: vec![Source::Suitex, Source::Netsuite],
        };
        let r = merge(&mut s, ev, &suitex_first).unwrap();
        assert_eq!(r.conflicts[0].winner, Source::Suitex);
    }

    #[test]
    fn source_priority_ignores_timestamps() {
        let policy = MergePolicy {
            conflict_policy: ConflictPolicy::SourcePriority,
            source_priority: vec![Source::Netsuite, Source::Suitex],
        };
        let mut s = state_v7();
        let c = changes(json!({"status": "open"}));
        let r = merge(
            &mut s,
            Incoming {
                source: Source::Suitex,
                timestamp: t(23, 0),
                base_version: 6,
                changes: &c,
            },
            &policy,
        )
        .unwrap();
        assert!(r.applied.is_empty());
        assert_eq!(r.conflicts[0].winner, Source::Netsuite);
        assert_eq!(r.conflicts[0].rule, ConflictPolicy::SourcePriority);
        assert_eq!(r.version, 7, "nothing applied: version unchanged");
        assert!(r.publishes(), "a resolved conflict is still published");
    }

    #[test]
    fn base_version_ahead_is_an_error_and_leaves_state_alone() {
        let mut s = state_v7();
        let before = s.clone();
        let c = changes(json!({"x": 1}));
        let e = merge(
            &mut s,
            Incoming {
                source: Source::Suitex,
                timestamp: t(9, 0),
                base_version: 8,
                changes: &c,
            },
            &MergePolicy::default(),
        )
        .unwrap_err();
        assert_eq!(
            e,
            MergeError::BaseVersionAhead {
                base: 8,
                version: 7
            }
        );
        assert_eq!(s, before);
    }

    #[test]
    fn new_record_applies_everything_and_null_clears() {
        let mut s = RecordState::default();
        let c = changes(json!({"a": 1, "owner": null}));
        let r = merge(
            &mut s,
            Incoming {
                source: Source::Netsuite,
                timestamp: t(1, 0),
                base_version: 0,
                changes: &c,
            },
            &MergePolicy::default(),
        )
        .unwrap();
        assert_eq!(r.version, 1);
        assert_eq!(s.values(), c);
    }

    #[test]
    fn empty_changes_is_a_noop() {
        let mut s = state_v7();
        let c = Map::new();
        let r = merge(
            &mut s,
            Incoming {
                source: Source::Netsuite,
                timestamp: t(1, 0),
                base_version: 7,
                changes: &c,
            },
            &MergePolicy::default(),
        )
        .unwrap();
        assert!(!r.publishes());
        assert_eq!(r.version, 7);
    }

    #[test]
    fn state_round_trips_through_json_with_micros() {
        let mut s = state_v7();
        s.fields.get_mut("status").unwrap().timestamp =
            DateTime::parse_from_rfc3339("2026-03-13T20:00:00.123456Z")
                .unwrap()
                .with_timezone(&Utc);
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains(".123456Z"));
        let back: RecordState = serde_json::from_str(&text).unwrap();
        assert_eq!(back, s);
    }
}
