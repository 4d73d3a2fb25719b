//! Event history (docs/spec.md §7 `events list|replay`, `verify`, admin record
//! endpoints): read a record's events with their audit trail, and rebuild its
//! merged state at any sequence number by folding the stored events through
//! the same [`rules::merge`] the live stage runs. The queries are the
//! store's ([`crate::store::history`]).

pub mod archive;
pub mod verify;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::model::fingerprint::fingerprint;
use crate::model::raw_event::{RawEvent, Source};
use crate::model::rules::{self, FieldState, Incoming, MergeError, MergePolicy, RecordState};
use crate::store::audit::AuditFact;
use crate::store::history::{EventPageQuery, HistoryReader};
use crate::store::ledger::StoredEvent;
use crate::store::{Store, StoreError};
use crate::topology::StageName;

/// Events per page when the caller does not say.
pub const DEFAULT_LIMIT: u32 = 100;
/// Upper bound on a page: keeps one request's cost (and memory) bounded.
pub const MAX_LIMIT: u32 = 1000;

/// Why a history read failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("limit must be between 1 and {MAX_LIMIT}, got {0}")]
    BadLimit(u32),
    /// The stored history cannot be folded: a gap, a bad row, or an event the
    /// merge rules refuse (the live stage would never have stored it).
    #[error("{record_type}/{record_id} cannot be replayed at sequence {seq}: {reason}")]
    Replay {
        record_type: String,
        record_id: String,
        seq: i64,
        reason: String,
    },
    /// The state asked for lies before the record's checkpoint: those
    /// events are in an archive segment, not in the database.
    #[error(
        "{record_type}/{record_id} at sequence {seq} is archived: events up to sequence {through} \
         are in archive segment {segment}; `event-backbone archive restore --segment {segment}` \
         brings them back"
    )]
    Archived {
        record_type: String,
        record_id: String,
        seq: i64,
        through: i64,
        segment: String,
    },
}

// ---------------------------------------------------------------------------
// list

/// Filters and paging of `events list`.
#[derive(Debug, Clone)]
pub struct ListQuery {
    /// 1..=MAX_LIMIT.
    pub limit: u32,
    /// Only events with `sequence_num < before_seq` (the paging cursor).
    pub before_seq: Option<i64>,
    pub source: Option<Source>,
    /// Event timestamp ≥ since (inclusive).
    pub since: Option<DateTime<Utc>>,
    /// Event timestamp < until (exclusive).
    pub until: Option<DateTime<Utc>>,
}

impl Default for ListQuery {
    fn default() -> Self {
        Self {
            limit: DEFAULT_LIMIT,
            before_seq: None,
            source: None,
            since: None,
            until: None,
        }
    }
}

/// One audit-log row about an event (the store's type, which `explain`
/// reads too).
pub type AuditEntry = AuditFact;

/// An event with its fingerprint and everything the audit log says about it.
#[derive(Debug, Clone, Serialize)]
pub struct EventEntry {
    #[serde(flatten)]
    pub event: StoredEvent,
    pub fingerprint: Option<String>,
    pub audit: Vec<AuditEntry>,
}

/// A page of a record's history, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct EventPage {
    pub record_type: String,
    pub record_id: String,
    pub events: Vec<EventEntry>,
    /// More (older) events match the filters.
    pub more: bool,
    /// Pass as `before_seq` to get the next page.
    pub next_before_seq: Option<i64>,
    /// Where the record's archived events are (docs/spec.md §6.1), oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub archived: Vec<crate::store::archive::ArchivedRange>,
}

/// A record's events newest first, filtered and paged.
pub async fn list(
    store: &Store,
    record_type: &str,
    record_id: &str,
    q: &ListQuery,
) -> Result<EventPage, HistoryError> {
    if q.limit == 0 || q.limit > MAX_LIMIT {
        return Err(HistoryError::BadLimit(q.limit));
    }
    let record = (record_type, record_id);
    let mut reader = store.history_reader().await?;
    // One extra row tells whether another page exists without a COUNT.
    let page = EventPageQuery {
        limit: i64::from(q.limit) + 1,
        before_seq: q.before_seq,
        source: q.source.map(|s| s.as_str()),
        since: q.since.as_ref(),
        until: q.until.as_ref(),
    };
    let mut events = reader.events_newest_first(record, &page).await?;
    let more = events.len() > q.limit as usize;
    events.truncate(q.limit as usize);
    let next_before_seq = if more {
        events.last().map(|e| e.sequence_num)
    } else {
        None
    };
    let events = attach_audit(&mut reader, record, events).await?;
    drop(reader);
    let archived = store.archived_ranges(record_type, record_id).await?;
    Ok(EventPage {
        record_type: record_type.to_string(),
        record_id: record_id.to_string(),
        events,
        more,
        next_before_seq,
        archived,
    })
}

/// Joins each event to its audit rows: those naming its id (its claim,
/// deliveries), and the record's rows of its fingerprint that name no event
/// (duplicates, failed executions). Rows without a record are unparseable
/// messages, fingerprinted over raw bytes: they never match an event.
pub async fn attach_audit(
    reader: &mut HistoryReader,
    record: (&str, &str),
    events: Vec<StoredEvent>,
) -> Result<Vec<EventEntry>, StoreError> {
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    let by_id = reader.audit_of_events(record, &ids).await?;
    // The merge stage's claim row is where an event's fingerprint is stored.
    let mut fp_of: HashMap<String, String> = HashMap::new();
    for a in by_id
        .iter()
        .filter(|a| a.claim && a.stage == StageName::Merge.as_str())
    {
        if let Some(id) = &a.event_id {
            fp_of.insert(id.clone(), a.fingerprint.clone());
        }
    }
    for e in &events {
        if !fp_of.contains_key(&e.id) {
            if let Some(fp) = recompute_fingerprint(e) {
                fp_of.insert(e.id.clone(), fp);
            }
        }
    }
    let mut fps: Vec<&str> = fp_of.values().map(String::as_str).collect();
    fps.sort_unstable();
    fps.dedup();
    let by_fp = reader.audit_of_fingerprints(record, &fps).await?;
    let mut all: BTreeMap<i64, AuditEntry> = BTreeMap::new();
    for a in by_id.into_iter().chain(by_fp) {
        all.insert(a.id, a);
    }
    Ok(events
        .into_iter()
        .map(|event| {
            let fp = fp_of.get(&event.id).cloned();
            let audit = all
                .values()
                .filter(|a| {
                    a.event_id.as_deref() == Some(event.id.as_str())
                        || (a.event_id.is_none() && fp.as_deref() == Some(a.fingerprint.as_str()))
                })
                .cloned()
                .collect();
            EventEntry {
                event,
                fingerprint: fp,
                audit,
            }
        })
        .collect())
}

/// The docs/spec.md §3.2 fingerprint from the stored row, for an event whose claim
/// row is missing (e.g. loaded by a tool that wrote no audit rows).
fn recompute_fingerprint(e: &StoredEvent) -> Option<String> {
    let changes = e.changes.as_object()?;
    let raw = RawEvent {
        id: None,
        record_type: e.record_type.clone(),
        record_id: e.record_id.clone(),
        source: e.source.parse().ok()?,
        timestamp: e.timestamp_utc().ok()?,
        base_version: e.base_version,
        changes: Map::new(),
        full_snapshot_ref: None,
    };
    Some(fingerprint(&raw, changes))
}

// ---------------------------------------------------------------------------
// replay

/// A record's state rebuilt from its events.
#[derive(Debug, Clone)]
pub struct Replayed {
    pub record_type: String,
    pub record_id: String,
    /// The requested bound; `None` means the head.
    pub to_seq: Option<i64>,
    /// Sequence number of the last event folded (0 when none).
    pub last_seq: i64,
    pub events_replayed: usize,
    pub state: RecordState,
    /// Reading plus folding.
    pub elapsed: Duration,
}

/// JSON shape of [`Replayed`], shared by the CLI and the admin API.
#[derive(Debug, Serialize)]
pub struct ReplayedView<'a> {
    pub record_type: &'a str,
    pub record_id: &'a str,
    pub to_seq: Option<i64>,
    pub last_seq: i64,
    pub version: i64,
    pub events_replayed: usize,
    pub elapsed_ms: f64,
    /// Field values.
    pub state: Map<String, Value>,
    /// Per field: value, version, source and timestamp of its last change.
    pub fields: &'a BTreeMap<String, FieldState>,
}

impl Replayed {
    pub fn view(&self) -> ReplayedView<'_> {
        ReplayedView {
            record_type: &self.record_type,
            record_id: &self.record_id,
            to_seq: self.to_seq,
            last_seq: self.last_seq,
            version: self.state.version,
            events_replayed: self.events_replayed,
            // Microsecond resolution is plenty for an operator.
            elapsed_ms: (self.elapsed.as_secs_f64() * 1e6).round() / 1e3,
            state: self.state.values(),
            fields: &self.state.fields,
        }
    }
}

/// Rebuilds a record's state from its events up to `to_seq` (the head when
/// `None`).
pub async fn replay(
    store: &Store,
    policy: &MergePolicy,
    record_type: &str,
    record_id: &str,
    to_seq: Option<i64>,
) -> Result<Replayed, HistoryError> {
    let started = Instant::now();
    let checkpoint = store.checkpoint(record_type, record_id).await?;
    let events = store.record_events(record_type, record_id, to_seq).await?;
    let (start, events) = from_checkpoint(checkpoint, &events, to_seq)?;
    let (state, last_seq) = fold_each_from(start, events, policy, |_, _, _| {})?;
    Ok(Replayed {
        record_type: record_type.to_string(),
        record_id: record_id.to_string(),
        to_seq,
        last_seq,
        events_replayed: events.len(),
        state,
        elapsed: started.elapsed(),
    })
}

/// Where a fold of `events` (a record's, up to `to_seq`) starts: at the
/// beginning when the record's first event is stored (never archived, or
/// restored), else at its checkpoint, skipping stored events it already
/// holds. Asking for a state before the checkpoint is [`HistoryError::Archived`].
pub fn from_checkpoint(
    checkpoint: Option<crate::store::archive::Checkpoint>,
    events: &[StoredEvent],
    to_seq: Option<i64>,
) -> Result<((RecordState, i64), &[StoredEvent]), HistoryError> {
    let Some(cp) = checkpoint else {
        return Ok(((RecordState::default(), 0), events));
    };
    if events.first().is_some_and(|e| e.sequence_num == 1) {
        return Ok(((RecordState::default(), 0), events));
    }
    if let Some(seq) = to_seq.filter(|s| *s < cp.sequence_num) {
        return Err(HistoryError::Archived {
            record_type: cp.record_type,
            record_id: cp.record_id,
            seq,
            through: cp.sequence_num,
            segment: cp.segment_id,
        });
    }
    let rest = events.partition_point(|e| e.sequence_num <= cp.sequence_num);
    Ok(((cp.state, cp.sequence_num), &events[rest..]))
}

/// Folds events (in sequence order, starting at 1, without gaps) through the
/// live merge rules. Returns the state and the last sequence number.
pub fn fold(
    events: &[StoredEvent],
    policy: &MergePolicy,
) -> Result<(RecordState, i64), HistoryError> {
    fold_each(events, policy, |_, _, _| {})
}

/// [`fold`], calling `seen(event, incoming, result)` after each event is merged:
/// `explain` learns from it how each conflict was decided, by the very rules
/// the live stage ran.
pub fn fold_each(
    events: &[StoredEvent],
    policy: &MergePolicy,
    seen: impl FnMut(&StoredEvent, &Incoming<'_>, &rules::MergeResult),
) -> Result<(RecordState, i64), HistoryError> {
    fold_each_from((RecordState::default(), 0), events, policy, seen)
}

/// [`fold_each`] from a given state and the sequence_num it stands at (a
/// checkpoint of archived history, docs/spec.md §6.1).
pub fn fold_each_from(
    (mut state, mut last_seq): (RecordState, i64),
    events: &[StoredEvent],
    policy: &MergePolicy,
    mut seen: impl FnMut(&StoredEvent, &Incoming<'_>, &rules::MergeResult),
) -> Result<(RecordState, i64), HistoryError> {
    for e in events {
        let fail = |reason: String| HistoryError::Replay {
            record_type: e.record_type.clone(),
            record_id: e.record_id.clone(),
            seq: e.sequence_num,
            reason,
        };
        if e.sequence_num != last_seq + 1 {
            return Err(fail(format!(
                "expected sequence {} next (events are missing)",
                last_seq + 1
            )));
        }
        let source: Source = e
            .source
            .parse()
            .map_err(|x: crate::model::raw_event::UnknownSource| fail(x.to_string()))?;
        let timestamp = e.timestamp_utc().map_err(|x| fail(x.to_string()))?;
        let Value::Object(changes) = &e.changes else {
            return Err(fail("stored changes are not a JSON object".into()));
        };
        let incoming = Incoming {
            source,
            timestamp,
            base_version: e.base_version,
            changes,
        };
        let result = rules::merge(&mut state, incoming, policy).map_err(|x| match x {
            MergeError::BaseVersionAhead { .. } => fail(x.to_string()),
        })?;
        seen(e, &incoming, &result);
        last_seq = e.sequence_num;
    }
    Ok((state, last_seq))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(seq: i64, source: &str, base: i64, ts: &str, changes: Value) -> StoredEvent {
        StoredEvent {
            id: format!("e{seq}"),
            record_type: "project".into(),
            record_id: "42".into(),
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

    #[test]
    fn fold_applies_the_merge_rules_in_order() {
        let events = vec![
            ev(
                1,
                "netsuite",
                0,
                "2026-03-13T10:00:00.000000Z",
                json!({"a": 1, "b": 1}),
            ),
            ev(
                2,
                "suitex",
                1,
                "2026-03-13T10:05:00.000000Z",
                json!({"a": 2}),
            ),
            // Stale base and an older timestamp: loses the conflict on `a`.
            ev(
                3,
                "netsuite",
                1,
                "2026-03-13T10:01:00.000000Z",
                json!({"a": 3, "c": 3}),
            ),
        ];
        let (state, last) = fold(&events, &MergePolicy::default()).unwrap();
        assert_eq!(last, 3);
        assert_eq!(state.version, 3);
        assert_eq!(
            Value::Object(state.values()),
            json!({"a": 2, "b": 1, "c": 3})
        );
        let (early, last) = fold(&events[..1], &MergePolicy::default()).unwrap();
        assert_eq!((early.version, last), (1, 1));
    }

    #[test]
    fn fold_refuses_gaps_and_impossible_events() {
        let gap = vec![
            ev(
                1,
                "netsuite",
                0,
                "2026-03-13T10:00:00.000000Z",
                json!({"a": 1}),
            ),
            ev(
                3,
                "netsuite",
                1,
                "2026-03-13T10:00:00.000000Z",
                json!({"a": 2}),
            ),
        ];
        let e = fold(&gap, &MergePolicy::default()).unwrap_err();
        assert!(matches!(e, HistoryError::Replay { seq: 3, .. }), "{e}");
        let ahead = vec![ev(
            1,
            "netsuite",
            4,
            "2026-03-13T10:00:00.000000Z",
            json!({"a": 1}),
        )];
        let e = fold(&ahead, &MergePolicy::default()).unwrap_err();
        assert!(e.to_string().contains("ahead"), "{e}");
        let bad_source = vec![ev(
            1,
            "sap",
            0,
            "2026-03-13T10:00:00.000000Z",
            json!({"a": 1}),
        )];
        assert!(fold(&bad_source, &MergePolicy::default()).is_err());
        assert_eq!(fold(&[], &MergePolicy::default()).unwrap().1, 0);
    }
}
