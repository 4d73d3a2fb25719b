//! `verify`: every record's live projection (`record_state`) against a full
//! replay of its events — the safety net for merge-code changes.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use sqlx::{Any, QueryBuilder};

use super::{fold, HistoryError};
use crate::model::rules::MergePolicy;
use crate::store::ledger::{self, RecordKey};
use crate::store::{get_text, Store};

/// Records whose keys are read per query while walking the event store.
const KEY_PAGE: i64 = 500;
/// Records checked at once (each holds a connection briefly).
const PARALLEL: usize = 4;

/// Versions of one side of a comparison.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Head {
    pub version: i64,
    pub last_seq: i64,
}

/// A record whose projection disagrees with its history.
#[derive(Debug, Clone, Serialize)]
pub struct Drift {
    pub record_type: String,
    pub record_id: String,
    /// `mismatch`, `missing_projection`, `projection_without_events` or `replay_failed`.
    pub kind: &'static str,
    pub projection: Option<Head>,
    pub replay: Option<Head>,
    /// Fields whose value or change metadata differ.
    pub fields: Vec<String>,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub record_type: Option<String>,
    pub records_checked: usize,
    pub events_replayed: usize,
    pub elapsed_ms: f64,
    pub drift: Vec<Drift>,
}

impl VerifyReport {
    pub fn clean(&self) -> bool {
        self.drift.is_empty()
    }
}

/// Checks every record (of `record_type` when given).
pub async fn verify(
    store: &Store,
    policy: &MergePolicy,
    record_type: Option<&str>,
) -> Result<VerifyReport, HistoryError> {
    let started = Instant::now();
    let mut report = VerifyReport {
        record_type: record_type.map(str::to_string),
        records_checked: 0,
        events_replayed: 0,
        elapsed_ms: 0.0,
        drift: Vec::new(),
    };
    let mut after: Option<RecordKey> = None;
    loop {
        let keys = event_keys(store, record_type, after.as_ref()).await?;
        let Some(last) = keys.last().cloned() else {
            break;
        };
        check_all(store, policy, keys, &mut report).await?;
        after = Some(last);
    }
    let orphans = orphan_projections(store, record_type).await?;
    check_all(store, policy, orphans, &mut report).await?;
    report
        .drift
        .sort_by(|a, b| (&a.record_type, &a.record_id).cmp(&(&b.record_type, &b.record_id)));
    report.elapsed_ms = dur_ms(started.elapsed());
    Ok(report)
}

fn dur_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

async fn check_all(
    store: &Store,
    policy: &MergePolicy,
    keys: Vec<RecordKey>,
    report: &mut VerifyReport,
) -> Result<(), HistoryError> {
    let results: Vec<(usize, Option<Drift>)> = futures::stream::iter(keys)
        .map(|k| check_record(store, policy, k))
        .buffer_unordered(PARALLEL)
        .try_collect()
        .await?;
    for (events, drift) in results {
        report.records_checked += 1;
        report.events_replayed += events;
        report.drift.extend(drift);
    }
    Ok(())
}

/// The next page of distinct record keys in the event store, in index order
/// (a loose scan of `idx_events_aggregate`).
async fn event_keys(
    store: &Store,
    record_type: Option<&str>,
    after: Option<&RecordKey>,
) -> Result<Vec<RecordKey>, HistoryError> {
    let mut q: QueryBuilder<Any> =
        QueryBuilder::new("SELECT record_type, record_id FROM events WHERE 1 = 1");
    if let Some(t) = record_type {
        q.push(" AND record_type = ");
        q.push_bind(t.to_string());
    }
    if let Some((t, id)) = after {
        q.push(" AND (record_type > ");
        q.push_bind(t.clone());
        q.push(" OR (record_type = ");
        q.push_bind(t.clone());
        q.push(" AND record_id > ");
        q.push_bind(id.clone());
        q.push("))");
    }
    q.push(" GROUP BY record_type, record_id ORDER BY record_type, record_id LIMIT ");
    q.push_bind(KEY_PAGE);
    let rows = q.build().fetch_all(store.pool()).await?;
    rows.iter()
        .map(|r| Ok((get_text(r, "record_type")?, get_text(r, "record_id")?)))
        .collect::<Result<_, crate::store::StoreError>>()
        .map_err(HistoryError::from)
}

/// Projection rows of records that have no events at all.
async fn orphan_projections(
    store: &Store,
    record_type: Option<&str>,
) -> Result<Vec<RecordKey>, HistoryError> {
    let mut q: QueryBuilder<Any> = QueryBuilder::new(
        // An anti-join: both backends probe idx_events_aggregate per projection
        // row (MariaDB materialises the whole index for the NOT EXISTS form).
        "SELECT s.record_type, s.record_id FROM record_state s LEFT JOIN events e \
         ON e.record_type = s.record_type AND e.record_id = s.record_id WHERE e.record_id IS NULL",
    );
    if let Some(t) = record_type {
        q.push(" AND s.record_type = ");
        q.push_bind(t.to_string());
    }
    let rows = q.build().fetch_all(store.pool()).await?;
    rows.iter()
        .map(|r| Ok((get_text(r, "record_type")?, get_text(r, "record_id")?)))
        .collect::<Result<_, crate::store::StoreError>>()
        .map_err(HistoryError::from)
}

/// Compares one record's projection with a replay of its events. Both are
/// read in one transaction so a record the daemon is writing meanwhile is
/// seen consistently (event rows and projection commit together).
async fn check_record(
    store: &Store,
    policy: &MergePolicy,
    (record_type, record_id): RecordKey,
) -> Result<(usize, Option<Drift>), HistoryError> {
    let d = store.dialect();
    let mut tx = store.pool().begin().await?;
    let projection = ledger::record_state(&mut tx, d, &record_type, &record_id).await?;
    let events = ledger::record_events(&mut tx, d, &record_type, &record_id, None).await?;
    tx.commit().await?;

    let drift = |kind, projection, replay, fields, detail: String| Drift {
        record_type: record_type.clone(),
        record_id: record_id.clone(),
        kind,
        projection,
        replay,
        fields,
        detail,
    };
    let proj_head = projection.as_ref().map(|p| Head {
        version: p.version,
        last_seq: p.last_seq,
    });
    let (state, last_seq) = match fold(&events, policy) {
        Ok(x) => x,
        Err(e) => {
            let d = drift("replay_failed", proj_head, None, Vec::new(), e.to_string());
            return Ok((events.len(), Some(d)));
        }
    };
    let replay_head = Head {
        version: state.version,
        last_seq,
    };
    let Some(p) = projection else {
        let d = drift(
            "missing_projection",
            None,
            Some(replay_head),
            Vec::new(),
            format!("{} events but no record_state row", events.len()),
        );
        return Ok((events.len(), Some(d)));
    };
    if events.is_empty() {
        let d = drift(
            "projection_without_events",
            proj_head,
            None,
            Vec::new(),
            "record_state row exists but the record has no events".into(),
        );
        return Ok((0, Some(d)));
    }
    let mut fields: Vec<String> = p
        .state
        .fields
        .keys()
        .chain(state.fields.keys())
        .filter(|f| p.state.fields.get(*f) != state.fields.get(*f))
        .cloned()
        .collect();
    fields.sort();
    fields.dedup();
    let heads_agree =
        p.version == state.version && p.state.version == state.version && p.last_seq == last_seq;
    if heads_agree && fields.is_empty() {
        return Ok((events.len(), None));
    }
    let detail = if fields.is_empty() {
        format!(
            "projection is at version {} / sequence {} (state says version {}), replay at version {} / sequence {}",
            p.version, p.last_seq, p.state.version, state.version, last_seq
        )
    } else {
        format!("fields differ: {}", fields.join(", "))
    };
    Ok((
        events.len(),
        Some(drift(
            "mismatch",
            proj_head,
            Some(replay_head),
            fields,
            detail,
        )),
    ))
}
