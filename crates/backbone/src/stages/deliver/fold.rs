//! Convergent delivery (docs/spec.md §4.1): what a target has not acknowledged yet,
//! folded into one body. Pure, so the rule is tested on its own.
//!
//! A target that acknowledged version `a` and is sent version `v > a + 1`
//! receives, under `v`'s identity, the routed content of every version
//! `a+1 ..= v`: the `applied` fields of versions it did not originate and the
//! conflicts it lost, later versions winning. `applied` and `conflicts` of the
//! folded body never name the same field, so applying the body (set every
//! `applied` field, then every conflict's `kept` value) gives the merged
//! value of each field routed to the target.

use serde_json::Map;

use crate::model::merged_event::MergedEvent;
use crate::model::raw_event::Source;
use crate::model::rules::Conflict;

/// Folds `versions` (in version order, the last one is the version being
/// delivered) for `target`. `None` when nothing in them is routed to it.
pub fn fold(versions: &[MergedEvent], target: Source) -> Option<MergedEvent> {
    let last = versions.last()?;
    let mut applied = Map::new();
    let mut conflicts: Vec<Conflict> = Vec::new();
    let drop_conflict = |conflicts: &mut Vec<Conflict>, field: &str| {
        conflicts.retain(|c| c.field != field);
    };
    for m in versions {
        if m.origin != target {
            for (f, v) in &m.applied {
                applied.insert(f.clone(), v.clone());
                drop_conflict(&mut conflicts, f);
            }
            // A conflict the target won keeps its own value: the field now
            // holds that value, whatever earlier versions set.
            for c in m
                .conflicts
                .iter()
                .filter(|c| !m.applied.contains_key(&c.field))
            {
                applied.remove(&c.field);
                drop_conflict(&mut conflicts, &c.field);
                conflicts.push(c.clone());
            }
        } else {
            // The target's own change: it holds those values already.
            for f in m.applied.keys() {
                applied.remove(f);
                drop_conflict(&mut conflicts, f);
            }
            // ...except where it lost: it must learn the winner.
            for c in m.conflicts.iter().filter(|c| c.winner != target) {
                applied.remove(&c.field);
                drop_conflict(&mut conflicts, &c.field);
                conflicts.push(c.clone());
            }
        }
    }
    if applied.is_empty() && conflicts.is_empty() {
        return None;
    }
    Some(MergedEvent {
        applied,
        conflicts,
        full_snapshot_ref: None,
        ..last.clone()
    })
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::model::rules::ConflictPolicy;

    fn ev(version: i64, origin: Source, applied: Value, conflicts: Vec<Conflict>) -> MergedEvent {
        let Value::Object(applied) = applied else {
            panic!("applied must be an object")
        };
        MergedEvent {
            event_id: format!("e{version}"),
            fingerprint: format!("f{version}"),
            record_type: "project".into(),
            record_id: "42".into(),
            origin,
            version,
            base_version: version - 1,
            timestamp: "2026-03-13T20:00:00.123456Z".into(),
            applied,
            conflicts,
            full_snapshot_ref: None,
        }
    }

    fn lost(field: &str, kept: Value, winner: Source) -> Conflict {
        Conflict {
            field: field.into(),
            incoming: json!("x"),
            kept,
            winner,
            rule: ConflictPolicy::LastWriterWins,
        }
    }

    /// What a target ends up with after applying a body.
    fn apply(body: &MergedEvent) -> Map<String, Value> {
        let mut m = body.applied.clone();
        for c in &body.conflicts {
            m.insert(c.field.clone(), c.kept.clone());
        }
        m
    }

    #[test]
    fn a_failed_version_travels_with_the_next_one() {
        let v5 = ev(5, Source::Netsuite, json!({"a": 1, "b": 1}), vec![]);
        let v6 = ev(6, Source::Netsuite, json!({"b": 2}), vec![]);
        let body = fold(&[v5, v6], Source::Suitex).expect("routed");
        assert_eq!(body.version, 6);
        assert_eq!(body.fingerprint, "f6");
        assert_eq!(apply(&body), *json!({"a": 1, "b": 2}).as_object().unwrap());
    }

    #[test]
    fn the_targets_own_changes_are_not_echoed_but_lost_conflicts_are() {
        let v5 = ev(5, Source::Netsuite, json!({"a": 1}), vec![]);
        let v6 = ev(6, Source::Suitex, json!({"a": 9, "c": 3}), vec![]);
        let v7 = ev(
            7,
            Source::Suitex,
            json!({}),
            vec![lost("s", json!("closed"), Source::Netsuite)],
        );
        let body = fold(&[v5, v6, v7], Source::Suitex).expect("routed");
        // `a` was overwritten by suitex itself at v6: nothing to send for it.
        assert_eq!(apply(&body), *json!({"s": "closed"}).as_object().unwrap());
        assert!(body
            .applied
            .keys()
            .all(|k| !body.conflicts.iter().any(|c| &c.field == k)));
    }

    #[test]
    fn a_later_applied_value_replaces_an_earlier_lost_conflict() {
        let v5 = ev(
            5,
            Source::Suitex,
            json!({}),
            vec![lost("s", json!("closed"), Source::Netsuite)],
        );
        let v6 = ev(6, Source::Netsuite, json!({"s": "archived"}), vec![]);
        let body = fold(&[v5, v6], Source::Suitex).expect("routed");
        assert_eq!(apply(&body), *json!({"s": "archived"}).as_object().unwrap());
        assert!(body.conflicts.is_empty());
    }

    #[test]
    fn nothing_routed_is_none() {
        let v5 = ev(5, Source::Suitex, json!({"a": 1}), vec![]);
        let v6 = ev(6, Source::Suitex, json!({"b": 1}), vec![]);
        assert!(fold(&[v5, v6], Source::Suitex).is_none());
    }

    #[test]
    fn one_version_folds_to_what_routing_sends() {
        let v = ev(
            8,
            Source::Suitex,
            json!({"name": "X"}),
            vec![lost("status", json!("closed"), Source::Netsuite)],
        );
        let ns = fold(std::slice::from_ref(&v), Source::Netsuite).expect("netsuite learns name");
        assert_eq!(
            apply(&ns),
            *json!({"name": "X", "status": "closed"})
                .as_object()
                .unwrap()
        );
        let sx = fold(std::slice::from_ref(&v), Source::Suitex).expect("suitex lost status");
        assert_eq!(
            apply(&sx),
            *json!({"status": "closed"}).as_object().unwrap()
        );
    }
}
