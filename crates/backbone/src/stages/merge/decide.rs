//! The merge batch's decision (STYLE §10): from the batch's [`View`] and its
//! items, in arrival order, what to write and what to answer each item —
//! without the database, so it is tested on its own. The batch reads the
//! view and applies the writes in one transaction around it (`batch.rs`).

use std::collections::{HashMap, HashSet};

use serde_json::json;

use super::item::{Decision, EventItem, Item, SEQUENCE_ATTRIBUTE, STAGE};
use crate::model::fingerprint::format_timestamp;
use crate::model::merged_event::MergedEvent;
use crate::model::rules::{self, Incoming, MergeError, MergePolicy};
use crate::store::ledger::{AuditRow, EventRow, RecordKey, StateRow};
use crate::store::merge_batch::{self, View, Wanted};
use crate::store::merged::MergedRow;
use crate::store::outbox::OutboxRow;
use crate::store::pending::{PendingEvent, PendingRow};
use crate::store::StoreError;

/// What the decision needs of the engine's configuration.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    pub policy: &'a MergePolicy,
    pub merged_topic: &'a str,
}

/// The decision on one batch.
#[derive(Debug, Default)]
pub struct Decided {
    pub writes: merge_batch::Writes,
    /// One per item, in order.
    pub decisions: Vec<Decision>,
    /// (record_type, rule) per resolved conflict, to count once committed.
    pub conflicts: Vec<(String, &'static str)>,
    /// Pending events added minus those merged.
    pub pending_delta: i64,
}

/// What the view must hold for `items`.
pub fn wanted(items: &[Item]) -> Wanted<'_> {
    let events: Vec<&EventItem> = events(items).collect();
    let mut keys: Vec<RecordKey> = events
        .iter()
        .map(|e| (e.event.record_type.clone(), e.event.record_id.clone()))
        .collect();
    keys.sort();
    keys.dedup();
    Wanted {
        stage: STAGE,
        fingerprints: events.iter().map(|e| e.fingerprint.as_str()).collect(),
        ids: events
            .iter()
            .filter_map(|e| e.event.id.map(|u| u.to_string()))
            .collect(),
        keys,
    }
}

fn events(items: &[Item]) -> impl Iterator<Item = &EventItem> {
    items.iter().filter_map(|i| match i {
        Item::Event(e) => Some(e.as_ref()),
        Item::Audit(_) => None,
    })
}

/// Decides every item in arrival order against `view`; `new_id` names an
/// event that came without an id.
pub fn decide(
    cfg: &Rules<'_>,
    view: View,
    items: &[Item],
    new_id: &mut dyn FnMut() -> String,
) -> Result<Decided, StoreError> {
    let mut batch = Batch::new(*cfg, view);
    let mut decisions = Vec::with_capacity(items.len());
    for item in items {
        decisions.push(match item {
            Item::Audit(a) => {
                batch.w.rows.audit.push(a.clone());
                Decision::Audited
            }
            Item::Event(e) => batch.event(e, new_id)?,
        });
    }
    Ok(batch.finish(decisions))
}

/// The view as the decision changes it, item by item, and what it writes.
struct Batch<'c> {
    cfg: Rules<'c>,
    claimed: HashSet<String>,
    used_ids: HashSet<String>,
    states: HashMap<RecordKey, StateRow>,
    leftovers: HashMap<String, Vec<OutboxRow>>,
    waiting: HashMap<RecordKey, Vec<Waiting>>,
    w: Writes,
}

impl<'c> Batch<'c> {
    fn new(cfg: Rules<'c>, view: View) -> Self {
        let mut waiting: HashMap<RecordKey, Vec<Waiting>> = HashMap::new();
        for p in view.pending {
            waiting
                .entry((p.record_type.clone(), p.record_id.clone()))
                .or_default()
                .push(Waiting {
                    row: p,
                    stored: true,
                });
        }
        Self {
            cfg,
            claimed: view.claimed,
            used_ids: view.used_ids,
            states: view.states,
            leftovers: view.leftovers,
            waiting,
            w: Writes::default(),
        }
    }

    fn event(
        &mut self,
        e: &EventItem,
        new_id: &mut dyn FnMut() -> String,
    ) -> Result<Decision, StoreError> {
        let ev = &e.event;
        let key = (ev.record_type.clone(), ev.record_id.clone());
        let okey = ev.ordering_key();
        if self.claimed.contains(&e.fingerprint) {
            self.w
                .rows
                .audit
                .push(audit_row(e, None, "duplicate", json!({}), false));
            return Ok(Decision::Duplicate {
                publish: self.leftovers.remove(&okey).unwrap_or_default(),
            });
        }
        let event_id = match ev.id.map(|u| u.to_string()) {
            Some(id) if self.used_ids.contains(&id) => {
                self.w.rows.audit.push(audit_row(
                    e,
                    Some(id.clone()),
                    "permanent",
                    json!({"error": "id reused with different content"}),
                    false,
                ));
                return Ok(Decision::IdReused { id });
            }
            Some(id) => id,
            None => new_id(),
        };
        self.claimed.insert(e.fingerprint.clone());
        self.used_ids.insert(event_id.clone());
        self.w.touched.insert(key.clone());
        let mut publish = self.leftovers.remove(&okey).unwrap_or_default();
        let state = self.states.entry(key.clone()).or_default();
        let incoming = Incoming {
            source: ev.source,
            timestamp: ev.timestamp,
            base_version: ev.base_version,
            changes: &e.changes,
        };
        let result = match rules::merge(&mut state.state, incoming, self.cfg.policy) {
            Ok(r) => r,
            Err(MergeError::BaseVersionAhead { base, version }) => {
                return Ok(self.wait(e, key, event_id, (base, version), publish));
            }
        };
        let applied = Applied {
            event_id: event_id.clone(),
            fingerprint: e.fingerprint.clone(),
            record_type: ev.record_type.clone(),
            record_id: ev.record_id.clone(),
            source: ev.source,
            timestamp: ev.timestamp,
            base_version: ev.base_version,
            changes: &e.changes,
            full_snapshot_ref: ev.full_snapshot_ref.clone(),
            message_id: e.message_id.clone(),
            attempt: e.execution as i32,
            claim: true,
        };
        let own = self.w.record(&self.cfg, state, applied, result)?;
        if let Some((_, row)) = &own {
            publish.push(row.clone());
        }
        // The record moved: pending events that now fit merge right behind it.
        release_pending(
            &self.cfg,
            state,
            self.waiting.get_mut(&key),
            &mut self.w,
            &mut publish,
        )?;
        Ok(match own {
            Some((merged, _)) => Decision::Merged {
                merged: Box::new(merged),
                publish,
            },
            None => Decision::Noop { event_id, publish },
        })
    }

    /// A gap is not an error: the event waits, durably, for the versions
    /// before it (docs/spec.md §4.1).
    fn wait(
        &mut self,
        e: &EventItem,
        key: RecordKey,
        event_id: String,
        (base, version): (i64, i64),
        publish: Vec<OutboxRow>,
    ) -> Decision {
        let ev = &e.event;
        self.w.rows.audit.push(audit_row(
            e,
            Some(event_id.clone()),
            "pending",
            json!({"base_version": base, "version": version}),
            true,
        ));
        let row = PendingRow {
            fingerprint: e.fingerprint.clone(),
            event_id,
            record_type: ev.record_type.clone(),
            record_id: ev.record_id.clone(),
            base_version: base,
            event: PendingEvent {
                id: ev.id,
                source: ev.source,
                timestamp: ev.timestamp,
                base_version: base,
                changes: e.changes.clone(),
                full_snapshot_ref: ev.full_snapshot_ref.clone(),
            },
            message_id: Some(e.message_id.clone()),
            data: e.data.to_vec(),
            attributes: e.attributes.clone(),
        };
        self.states.entry(key.clone()).or_default().pending += 1;
        self.w.pending_added += 1;
        self.waiting
            .entry(key)
            .or_default()
            .push(Waiting { row, stored: false });
        Decision::Pending {
            base,
            version,
            publish,
        }
    }

    fn finish(self, decisions: Vec<Decision>) -> Decided {
        let mut rows = self.w.rows;
        // Pending events still waiting: new ones are stored, stored ones stay.
        for list in self.waiting.into_values() {
            rows.pending_new
                .extend(list.into_iter().filter(|w| !w.stored).map(|w| w.row));
        }
        let touched = self.w.touched;
        rows.states = self
            .states
            .into_iter()
            .filter(|(k, _)| touched.contains(k))
            .collect();
        Decided {
            pending_delta: self.w.pending_added - rows.pending_done.len() as i64,
            writes: rows,
            decisions,
            conflicts: self.w.conflicts,
        }
    }
}

/// The audit row of an event's decision.
fn audit_row(
    e: &EventItem,
    event_id: Option<String>,
    outcome: &str,
    detail: serde_json::Value,
    claim: bool,
) -> AuditRow {
    AuditRow {
        event_id,
        fingerprint: e.fingerprint.clone(),
        record_type: Some(e.event.record_type.clone()),
        record_id: Some(e.event.record_id.clone()),
        stage: STAGE.to_string(),
        outcome: outcome.to_string(),
        detail: Some(detail.to_string()),
        message_id: Some(e.message_id.clone()),
        attempt: e.execution as i32,
        claim,
    }
}

/// A pending event of a record in this batch; `stored` once it is in the table.
struct Waiting {
    row: PendingRow,
    stored: bool,
}

/// What the decision writes, and what it counts once committed.
#[derive(Default)]
struct Writes {
    rows: merge_batch::Writes,
    pending_added: i64,
    touched: HashSet<RecordKey>,
    /// (record_type, rule) per resolved conflict.
    conflicts: Vec<(String, &'static str)>,
}

/// An event whose merge succeeded, as the rows need it.
struct Applied<'a> {
    event_id: String,
    fingerprint: String,
    record_type: String,
    record_id: String,
    source: crate::model::raw_event::Source,
    timestamp: chrono::DateTime<chrono::Utc>,
    base_version: i64,
    changes: &'a serde_json::Map<String, serde_json::Value>,
    full_snapshot_ref: Option<String>,
    message_id: String,
    attempt: i32,
    /// Its audit row claims the fingerprint (not when a pending row did).
    claim: bool,
}

impl Writes {
    /// Writes the rows of a merged event; returns it and its outbox row when
    /// it is published.
    fn record(
        &mut self,
        cfg: &Rules<'_>,
        state: &mut StateRow,
        a: Applied<'_>,
        result: rules::MergeResult,
    ) -> Result<Option<(MergedEvent, OutboxRow)>, StoreError> {
        state.version = state.state.version;
        state.last_seq += 1;
        self.rows.events.push(EventRow {
            id: a.event_id.clone(),
            record_type: a.record_type.clone(),
            record_id: a.record_id.clone(),
            source: a.source.as_str().to_string(),
            timestamp: a.timestamp,
            base_version: a.base_version,
            changes: serde_json::Value::Object(a.changes.clone()).to_string(),
            full_snapshot_ref: a.full_snapshot_ref.clone(),
            // The merge ran in this same transaction.
            processed: true,
            sequence_num: state.last_seq,
        });
        self.conflicts.extend(
            result
                .conflicts
                .iter()
                .map(|c| (a.record_type.clone(), c.rule.as_str())),
        );
        let applied_fields: Vec<&String> = result.applied.keys().collect();
        let outcome = if result.publishes() { "merged" } else { "noop" };
        self.rows.audit.push(AuditRow {
            event_id: Some(a.event_id.clone()),
            fingerprint: a.fingerprint.clone(),
            record_type: Some(a.record_type.clone()),
            record_id: Some(a.record_id.clone()),
            stage: STAGE.to_string(),
            outcome: outcome.to_string(),
            detail: Some(
                json!({
                    "sequence_num": state.last_seq,
                    "version": result.version,
                    "applied": applied_fields,
                    "conflicts": result.conflicts.len(),
                    "was_pending": !a.claim,
                })
                .to_string(),
            ),
            message_id: Some(a.message_id.clone()),
            attempt: a.attempt,
            claim: a.claim,
        });
        if !result.publishes() {
            return Ok(None);
        }
        let merged = MergedEvent {
            event_id: a.event_id.clone(),
            fingerprint: a.fingerprint,
            record_type: a.record_type.clone(),
            record_id: a.record_id.clone(),
            origin: a.source,
            version: result.version,
            base_version: a.base_version,
            timestamp: format_timestamp(&a.timestamp),
            applied: result.applied,
            conflicts: result.conflicts,
            full_snapshot_ref: None,
        };
        let payload = serde_json::to_string(&merged)
            .map_err(|e| StoreError::Corrupt(format!("merged event: {e}")))?;
        let mut attributes = merged.attributes();
        // Orders a record's merged events where versions repeat (a
        // conflict-only event keeps the version): deliveries compare it.
        attributes.insert(SEQUENCE_ATTRIBUTE.to_string(), state.last_seq.to_string());
        let row = OutboxRow {
            event_id: a.event_id.clone(),
            topic: cfg.merged_topic.to_string(),
            ordering_key: merged.ordering_key(),
            payload: payload.clone(),
            attributes,
            sequence_num: state.last_seq,
        };
        self.rows.outbox.push(row.clone());
        self.rows.merged.push(MergedRow {
            record_type: a.record_type,
            record_id: a.record_id,
            sequence_num: state.last_seq,
            version: merged.version,
            event_id: a.event_id,
            payload,
        });
        Ok(Some((merged, row)))
    }
}

/// Merges, in version order, the pending events of a record that now fit
/// (base ≤ version), each one possibly letting the next one in.
fn release_pending(
    cfg: &Rules<'_>,
    state: &mut StateRow,
    waiting: Option<&mut Vec<Waiting>>,
    w: &mut Writes,
    publish: &mut Vec<OutboxRow>,
) -> Result<(), StoreError> {
    let Some(list) = waiting else {
        return Ok(());
    };
    loop {
        // Lowest base first; among equal bases, the one that arrived first.
        let Some(i) = list
            .iter()
            .enumerate()
            .filter(|(_, wt)| wt.row.base_version <= state.version)
            .min_by_key(|(i, wt)| (wt.row.base_version, *i))
            .map(|(i, _)| i)
        else {
            return Ok(());
        };
        let wt = list.remove(i);
        let p = wt.row;
        let incoming = Incoming {
            source: p.event.source,
            timestamp: p.event.timestamp,
            base_version: p.base_version,
            changes: &p.event.changes,
        };
        let result = match rules::merge(&mut state.state, incoming, cfg.policy) {
            Ok(r) => r,
            // Cannot happen (base ≤ version was checked); keep it waiting.
            Err(_) => continue,
        };
        state.pending -= 1;
        if wt.stored {
            w.rows.pending_done.push(p.fingerprint.clone());
        } else {
            w.pending_added -= 1;
        }
        let applied = Applied {
            event_id: p.event_id.clone(),
            fingerprint: p.fingerprint.clone(),
            record_type: p.record_type.clone(),
            record_id: p.record_id.clone(),
            source: p.event.source,
            timestamp: p.event.timestamp,
            base_version: p.base_version,
            changes: &p.event.changes,
            full_snapshot_ref: p.event.full_snapshot_ref.clone(),
            message_id: p.message_id.clone().unwrap_or_default(),
            attempt: 1,
            claim: false,
        };
        if let Some((_, row)) = w.record(cfg, state, applied, result)? {
            publish.push(row);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use chrono::{TimeZone, Utc};
    use serde_json::{Map, Value};

    use super::*;
    use crate::model::raw_event::{RawEvent, Source};

    const TOPIC: &str = "projects/p/topics/merged";

    fn rules(policy: &MergePolicy) -> Rules<'_> {
        Rules {
            policy,
            merged_topic: TOPIC,
        }
    }

    pub(crate) fn item(id: &str, source: Source, base: i64, second: u32, changes: Value) -> Item {
        let Value::Object(changes) = changes else {
            panic!("changes must be an object")
        };
        let event = RawEvent {
            id: None,
            record_type: "customer".into(),
            record_id: id.into(),
            source,
            timestamp: Utc.with_ymd_and_hms(2026, 3, 13, 10, 0, second).unwrap(),
            base_version: base,
            changes: Map::new(),
            full_snapshot_ref: None,
        };
        Item::Event(Box::new(EventItem {
            fingerprint: format!("fp-{id}-{base}-{second}"),
            message_id: format!("m-{id}-{base}-{second}"),
            event,
            changes,
            execution: 1,
            data: bytes::Bytes::new(),
            attributes: HashMap::new(),
        }))
    }

    fn ids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("id-{n}")
        }
    }

    fn run(view: View, items: &[Item]) -> Decided {
        let policy = MergePolicy::default();
        decide(&rules(&policy), view, items, &mut ids()).unwrap()
    }

    fn key(id: &str) -> RecordKey {
        ("customer".into(), id.into())
    }

    #[test]
    fn wanted_asks_once_per_record_and_for_every_fingerprint() {
        let items = [
            item("a", Source::Suitex, 0, 1, json!({"x": 1})),
            item("a", Source::Suitex, 1, 2, json!({"x": 2})),
            item("b", Source::Netsuite, 0, 3, json!({"y": 1})),
        ];
        let w = wanted(&items);
        assert_eq!(w.keys, vec![key("a"), key("b")]);
        assert_eq!(w.fingerprints.len(), 3);
        assert!(w.ids.is_empty(), "no publisher ids given");
    }

    #[test]
    fn a_burst_on_a_new_record_merges_in_order_with_one_state_row() {
        let items = [
            item("a", Source::Suitex, 0, 1, json!({"x": 1})),
            item("a", Source::Suitex, 1, 2, json!({"x": 2})),
        ];
        let d = run(View::default(), &items);
        let versions: Vec<i64> = d
            .decisions
            .iter()
            .map(|d| match d {
                Decision::Merged { merged, .. } => merged.version,
                other => panic!("expected merged, got {other:?}"),
            })
            .collect();
        assert_eq!(versions, vec![1, 2]);
        assert_eq!(d.writes.events.len(), 2);
        assert_eq!(d.writes.outbox.len(), 2);
        assert_eq!(d.writes.merged.len(), 2);
        assert_eq!(d.writes.states.len(), 1, "one state row per record");
        let (_, st) = &d.writes.states[0];
        assert_eq!((st.version, st.last_seq), (2, 2));
        let seqs: Vec<i64> = d.writes.outbox.iter().map(|o| o.sequence_num).collect();
        assert_eq!(seqs, vec![1, 2]);
        assert!(d.writes.outbox.iter().all(|o| o.topic == TOPIC));
        assert_eq!(d.pending_delta, 0);
    }

    #[test]
    fn a_claimed_fingerprint_is_a_duplicate_and_takes_its_records_leftovers() {
        let items = [item("a", Source::Suitex, 0, 1, json!({"x": 1}))];
        let leftover = OutboxRow {
            event_id: "old".into(),
            topic: TOPIC.into(),
            ordering_key: "customer:a".into(),
            payload: "{}".into(),
            attributes: HashMap::new(),
            sequence_num: 7,
        };
        let view = View {
            claimed: HashSet::from(["fp-a-0-1".to_string()]),
            leftovers: HashMap::from([("customer:a".to_string(), vec![leftover])]),
            ..View::default()
        };
        let d = run(view, &items);
        match &d.decisions[0] {
            Decision::Duplicate { publish } => assert_eq!(publish[0].event_id, "old"),
            other => panic!("expected a duplicate, got {other:?}"),
        }
        assert!(d.writes.events.is_empty() && d.writes.states.is_empty());
        assert_eq!(d.writes.audit.len(), 1);
        assert_eq!(d.writes.audit[0].outcome, "duplicate");
        assert!(!d.writes.audit[0].claim);
    }

    #[test]
    fn the_same_fingerprint_twice_in_one_batch_is_merged_once() {
        let e = item("a", Source::Suitex, 0, 1, json!({"x": 1}));
        let d = run(View::default(), &[e.clone(), e]);
        assert!(matches!(d.decisions[0], Decision::Merged { .. }));
        assert!(matches!(d.decisions[1], Decision::Duplicate { .. }));
        assert_eq!(d.writes.events.len(), 1);
    }

    #[test]
    fn a_gap_waits_as_pending_and_the_missing_version_lets_it_in() {
        // v2's base is 1 but the record is new: it waits; v1 then arrives.
        let items = [
            item("a", Source::Suitex, 1, 2, json!({"x": 2})),
            item("a", Source::Suitex, 0, 1, json!({"x": 1})),
        ];
        let d = run(View::default(), &items);
        assert!(matches!(
            d.decisions[0],
            Decision::Pending {
                base: 1,
                version: 0,
                ..
            }
        ));
        match &d.decisions[1] {
            Decision::Merged { merged, publish } => {
                assert_eq!(merged.version, 1);
                let seqs: Vec<i64> = publish.iter().map(|o| o.sequence_num).collect();
                assert_eq!(seqs, vec![1, 2], "its own, then the released one");
            }
            other => panic!("expected merged, got {other:?}"),
        }
        assert!(d.writes.pending_new.is_empty(), "released within the batch");
        assert_eq!(d.pending_delta, 0);
        assert_eq!(d.writes.states[0].1.pending, 0);
    }

    #[test]
    fn a_gap_nobody_fills_is_stored_pending() {
        let d = run(
            View::default(),
            &[item("a", Source::Suitex, 3, 1, json!({"x": 1}))],
        );
        assert_eq!(d.writes.pending_new.len(), 1);
        assert_eq!(d.pending_delta, 1);
        assert_eq!(d.writes.states[0].1.pending, 1);
        assert_eq!(d.writes.audit[0].outcome, "pending");
        assert!(
            d.writes.audit[0].claim,
            "a pending event claims its fingerprint"
        );
    }

    #[test]
    fn a_publisher_id_used_before_is_refused_without_a_claim() {
        let Item::Event(mut e) = item("a", Source::Suitex, 0, 1, json!({"x": 1})) else {
            unreachable!()
        };
        let id = uuid::Uuid::now_v7();
        e.event.id = Some(id);
        let view = View {
            used_ids: HashSet::from([id.to_string()]),
            ..View::default()
        };
        let items = [Item::Event(e)];
        assert_eq!(wanted(&items).ids, vec![id.to_string()]);
        let d = run(view, &items);
        assert!(matches!(&d.decisions[0], Decision::IdReused { id: i } if *i == id.to_string()));
        assert_eq!(d.writes.audit[0].outcome, "permanent");
        assert!(d.writes.events.is_empty());
    }

    #[test]
    fn audit_items_are_written_as_given() {
        let a = AuditRow {
            event_id: None,
            fingerprint: "f".into(),
            record_type: None,
            record_id: None,
            stage: STAGE.into(),
            outcome: "invalid".into(),
            detail: None,
            message_id: None,
            attempt: 1,
            claim: false,
        };
        let d = run(View::default(), &[Item::Audit(a)]);
        assert!(matches!(d.decisions[0], Decision::Audited));
        assert_eq!(d.writes.audit.len(), 1);
        assert!(d.writes.states.is_empty());
    }
}
