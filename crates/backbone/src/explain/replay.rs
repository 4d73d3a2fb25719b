//! The replay step of an explanation: the record's events folded through the
//! live merge rules ([`history::fold_each_from`]), noting which event holds
//! each field and every conflict on the way, each checked against the merged
//! event stored for its sequence. Conflicts are not stored with the event
//! that held the field, so this is where they come from.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::{ConflictView, EventRef, ExplainError, Side};
use crate::history;
use crate::model::fingerprint::format_timestamp;
use crate::model::merged_event::MergedEvent;
use crate::model::rules::{
    Conflict, ConflictPolicy, Incoming, MergePolicy, MergeResult, RecordState,
};
use crate::store::explain::RecordFacts;
use crate::store::ledger::StoredEvent;

/// The field's holder during the replay.
#[derive(Clone)]
pub(super) struct Held {
    pub(super) event: EventRef,
    pub(super) value: Value,
}

/// What the replay found.
pub(super) struct Replayed {
    /// Each field's holder after the last event.
    pub(super) held: HashMap<String, Held>,
    /// Every conflict, by field, oldest first.
    pub(super) conflicts: BTreeMap<String, Vec<ConflictView>>,
    pub(super) state: RecordState,
    pub(super) last_seq: i64,
}

/// Replays the record's events under `policy`; what disagrees with what is
/// stored is added to `warnings`.
pub(super) fn replay(
    facts: &RecordFacts,
    policy: &MergePolicy,
    warnings: &mut Vec<String>,
) -> Result<Replayed, ExplainError> {
    let stored = stored_conflicts(facts, warnings);
    let (start, events) = history::from_checkpoint(facts.checkpoint.clone(), &facts.events, None)?;
    let mut r = Replayer {
        held: HashMap::new(),
        conflicts: BTreeMap::new(),
        stored,
        policy,
        warnings,
    };
    if start.1 > 0 {
        r.start_at_checkpoint(facts, &start);
    }
    let (state, last_seq) =
        history::fold_each_from(start, events, policy, |e, inc, m| r.seen(e, inc, m))?;
    Ok(Replayed {
        held: r.held,
        conflicts: r.conflicts,
        state,
        last_seq,
    })
}

/// The replay's running state, fed one event at a time by the fold.
struct Replayer<'a> {
    held: HashMap<String, Held>,
    conflicts: BTreeMap<String, Vec<ConflictView>>,
    /// The conflicts of each stored merged event, by sequence.
    stored: HashMap<i64, Vec<Conflict>>,
    policy: &'a MergePolicy,
    warnings: &'a mut Vec<String>,
}

impl Replayer<'_> {
    /// Archived history (docs/spec.md §6.1): the replay starts at the
    /// checkpoint, whose fields name the archive segment instead of the
    /// event that set them.
    fn start_at_checkpoint(&mut self, facts: &RecordFacts, (state, seq): &(RecordState, i64)) {
        let segment = facts
            .checkpoint
            .as_ref()
            .map(|c| c.segment_id.clone())
            .unwrap_or_default();
        self.warnings.push(format!(
            "events up to sequence {} are archived (segment {segment}): fields last set by them \
             are explained from its checkpoint; `event-backbone archive restore --segment \
             {segment}` brings them back",
            seq
        ));
        for (f, fs) in &state.fields {
            self.held.insert(
                f.clone(),
                Held {
                    event: EventRef {
                        event_id: format!("archived:{segment}"),
                        sequence_num: *seq,
                        version: fs.version,
                        source: fs.source,
                        timestamp: format_timestamp(&fs.timestamp),
                    },
                    value: fs.value.clone(),
                },
            );
        }
    }

    /// One event folded: its conflicts (against the holders before it),
    /// then the fields it set.
    fn seen(&mut self, e: &StoredEvent, inc: &Incoming<'_>, r: &MergeResult) {
        let me = EventRef {
            event_id: e.id.clone(),
            sequence_num: e.sequence_num,
            version: r.version,
            source: inc.source,
            timestamp: format_timestamp(&inc.timestamp),
        };
        for c in &r.conflicts {
            self.conflict(&me, c, r.applied.contains_key(&c.field));
        }
        for (f, v) in &r.applied {
            self.held.insert(
                f.clone(),
                Held {
                    event: me.clone(),
                    value: v.clone(),
                },
            );
        }
    }

    fn conflict(&mut self, me: &EventRef, c: &Conflict, incoming_won: bool) {
        let Some(h) = self.held.get(&c.field) else {
            // The rules only report a conflict on a field that has a value.
            self.warnings.push(format!(
                "sequence {}: conflict on `{}` with no earlier value in the replay",
                me.sequence_num, c.field
            ));
            return;
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
        let (winner, loser) = if incoming_won {
            (incoming, holder)
        } else {
            (holder, incoming)
        };
        let recorded = self.recorded(me.sequence_num, c);
        self.conflicts
            .entry(c.field.clone())
            .or_default()
            .push(ConflictView {
                sequence_num: me.sequence_num,
                rule: c.rule,
                why: why(c.rule, &winner, &loser, self.policy),
                winner,
                loser,
                decided_current_value: false,
                recorded,
            });
    }

    /// Whether the merged event stored for `seq` resolved `c` alike; a
    /// resolution that differs is a warning, never papered over.
    fn recorded(&mut self, seq: i64, c: &Conflict) -> bool {
        let Some(recorded) = self.stored.get(&seq) else {
            return false;
        };
        let same = recorded.iter().any(|s| same_resolution(s, c));
        if !same {
            self.warnings.push(format!(
                "sequence {}: the stored merged event resolved `{}` differently \
                 than a replay under the configured merge policy ({} won); \
                 was the policy changed since?",
                seq, c.field, c.winner
            ));
        }
        same
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::raw_event::Source;
    use serde_json::json;

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
}
