//! Who receives a merged event (docs/spec.md §4 "deliver"): pure, so the rule is
//! tested on its own and the stage only acts on the answer.

use crate::model::merged_event::MergedEvent;
use crate::model::raw_event::Source;

/// What a target should do with a merged event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Deliver,
    /// Nothing the target does not know already; `reason` goes in the audit row.
    Skip {
        reason: &'static str,
    },
}

/// Target `target` receives the event when it did not originate it and
/// something was applied, or when it originated it and lost a conflict (it
/// must learn the winning value). Everything else would be an echo.
pub fn route(ev: &MergedEvent, target: Source) -> Route {
    if ev.origin != target {
        if ev.applied.is_empty() {
            Route::Skip {
                reason: "nothing was applied",
            }
        } else {
            Route::Deliver
        }
    } else if ev.conflicts.iter().any(|c| c.winner != target) {
        Route::Deliver
    } else {
        Route::Skip {
            reason: "echo of the target's own change",
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use serde_json::{json, Map, Value};

    use super::*;
    use crate::model::rules::{
        merge, Conflict, ConflictPolicy, FieldState, Incoming, MergePolicy, RecordState,
    };

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn event(origin: Source, applied: Value, conflicts: Vec<Conflict>) -> MergedEvent {
        let Value::Object(applied) = applied else {
            panic!("applied must be an object")
        };
        MergedEvent {
            event_id: "e".into(),
            fingerprint: "f".into(),
            record_type: "project".into(),
            record_id: "42".into(),
            origin,
            version: 8,
            base_version: 7,
            timestamp: "2026-03-13T20:00:00.123456Z".into(),
            applied,
            conflicts,
            full_snapshot_ref: None,
        }
    }

    fn conflict(winner: Source) -> Conflict {
        Conflict {
            field: "status".into(),
            incoming: json!("open"),
            kept: json!("closed"),
            winner,
            rule: ConflictPolicy::LastWriterWins,
        }
    }

    #[test]
    fn the_other_target_receives_applied_changes() {
        let ev = event(Source::Suitex, json!({"name": "X"}), vec![]);
        assert_eq!(route(&ev, Source::Netsuite), Route::Deliver);
        assert!(matches!(route(&ev, Source::Suitex), Route::Skip { .. }));
    }

    #[test]
    fn nothing_applied_is_skipped_by_the_other_target() {
        // The origin lost every conflict: the other side already holds the winners.
        let ev = event(Source::Suitex, json!({}), vec![conflict(Source::Netsuite)]);
        assert!(matches!(route(&ev, Source::Netsuite), Route::Skip { .. }));
        assert_eq!(route(&ev, Source::Suitex), Route::Deliver);
    }

    #[test]
    fn an_origin_that_won_its_conflicts_gets_no_echo() {
        let ev = event(
            Source::Netsuite,
            json!({"status": "open"}),
            vec![conflict(Source::Netsuite)],
        );
        assert!(matches!(route(&ev, Source::Netsuite), Route::Skip { .. }));
        assert_eq!(route(&ev, Source::Suitex), Route::Deliver);
    }

    /// docs/spec.md §5: state v=7, `status` last changed by netsuite at v=7, 10:00;
    /// suitex sends b=6, 09:59, {status: open, name: X}. Both targets deliver.
    #[test]
    fn spec_worked_example_reaches_both_targets() {
        let mut state = RecordState {
            version: 7,
            ..Default::default()
        };
        state.fields.insert(
            "status".into(),
            FieldState {
                value: json!("closed"),
                version: 7,
                source: Source::Netsuite,
                timestamp: t("2026-03-13T10:00:00Z"),
            },
        );
        let mut changes = Map::new();
        changes.insert("status".into(), json!("open"));
        changes.insert("name".into(), json!("X"));
        let result = merge(
            &mut state,
            Incoming {
                source: Source::Suitex,
                timestamp: t("2026-03-13T09:59:00Z"),
                base_version: 6,
                changes: &changes,
            },
            &MergePolicy::default(),
        )
        .unwrap();
        let mut ev = event(
            Source::Suitex,
            Value::Object(result.applied),
            result.conflicts,
        );
        ev.version = result.version;
        assert_eq!(ev.version, 8);
        assert_eq!(ev.applied, *json!({"name": "X"}).as_object().unwrap());
        assert_eq!(ev.conflicts[0].winner, Source::Netsuite);
        assert_eq!(
            route(&ev, Source::Netsuite),
            Route::Deliver,
            "netsuite learns `name`"
        );
        assert_eq!(
            route(&ev, Source::Suitex),
            Route::Deliver,
            "suitex lost `status`"
        );
    }
}
