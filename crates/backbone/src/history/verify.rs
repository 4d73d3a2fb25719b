//! `verify`: every record's live projection (`record_state`) against a full
//! replay of its events — the safety net for merge-code changes.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use super::{fold_each_from, from_checkpoint, HistoryError};
use crate::model::rules::MergePolicy;
use crate::store::ledger::RecordKey;
use crate::store::Store;

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
        let keys = store
            .event_record_keys(record_type, after.as_ref(), KEY_PAGE)
            .await?;
        let Some(last) = keys.last().cloned() else {
            break;
        };
        check_all(store, policy, keys, &mut report).await?;
        after = Some(last);
    }
    let orphans = store.orphan_projections(record_type).await?;
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

/// Compares one record's projection with a replay of its events (both read
/// in one transaction: [`Store::record_with_projection`]).
async fn check_record(
    store: &Store,
    policy: &MergePolicy,
    (record_type, record_id): RecordKey,
) -> Result<(usize, Option<Drift>), HistoryError> {
    let (projection, events, checkpoint) = store
        .record_with_projection(&record_type, &record_id)
        .await?;
    // Archived history: the replay starts at the record's checkpoint.
    let archived = checkpoint.is_some();

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
    let folded = from_checkpoint(checkpoint, &events, None)
        .and_then(|(start, rest)| fold_each_from(start, rest, policy, |_, _, _| {}));
    let (state, last_seq) = match folded {
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
    if events.is_empty() && !archived {
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
