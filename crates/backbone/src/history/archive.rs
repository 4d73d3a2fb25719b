//! Retention with archival (docs/spec.md §6.1): `event-backbone archive` moves each
//! record's events older than the cutoff, their audit rows and merged events
//! to the snapshot bucket, and leaves a checkpoint the rest of history goes
//! on from.
//!
//! Per segment, in this order: build it (gzip'd JSON lines), write it under
//! its SHA-256, read it back and check hash, rows and counts, record its
//! manifest, coverage and the records' checkpoints in one transaction, then
//! remove the rows in small transactions. A run that stops anywhere is
//! finished by the next one: a recorded segment not yet removed is removed
//! first; a segment written but never recorded covers nothing (its object is
//! orphaned, harmless) and its rows are archived afresh. Nothing is recorded
//! twice: coverage starts after the highest sequence already covered.
//!
//! Never archived: records with pending events (an open gap), unreplayed
//! dead letters, merged events not yet published, or a delivery started
//! and not acknowledged; and, per target, nothing from the first merged
//! event routed to it that it has not acknowledged.

use std::io::{Read, Write};
use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{fold_each_from, HistoryError};
use crate::model::merged_event::MergedEvent;
use crate::model::raw_event::Source;
use crate::model::rules::{MergePolicy, RecordState};
use crate::snapshots::{Scope, SnapshotError, SnapshotStore};
use crate::stages::deliver::routing::{self, Route};
pub use crate::store::archive::TableCounts;
use crate::store::archive::{
    AuditArchived, Candidate, Checkpoint, Coverage, DeadLetterArchived, MergedArchived, RecordRows,
    SegmentInfo, SegmentRecord,
};
use crate::store::ledger::{RecordKey, StoredEvent};
use crate::store::{Store, StoreError};

/// The segment format's name, first line of every segment.
pub const FORMAT: &str = "event-backbone-archive/1";
/// Candidate records read per query.
const PAGE: i64 = 500;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    History(#[from] HistoryError),
    /// What was read back is not what was written: nothing is removed.
    #[error("archive segment {reference} did not verify: {reason}")]
    Verify { reference: String, reason: String },
    #[error("{0}")]
    Other(String),
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Rows created before this are archived.
    pub cutoff: DateTime<Utc>,
    pub segment_events: usize,
    pub delete_batch: usize,
    /// Pause after each unit of work, as a multiple of its time (`retention.pace`).
    pub pace: f64,
    /// Say what would be archived; write and remove nothing.
    pub dry_run: bool,
}

/// One line of a segment.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", content = "r", rename_all = "snake_case")]
enum Line {
    Header {
        format: String,
        cutoff: String,
        records: Vec<Coverage>,
        #[serde(default)]
        dead_letters: usize,
    },
    Event(StoredEvent),
    Audit(AuditArchived),
    Merged {
        record_type: String,
        record_id: String,
        #[serde(flatten)]
        row: MergedArchived,
    },
    Checkpoint(Checkpoint),
    DeadLetter(Box<DeadLetterArchived>),
}

/// A segment's manifest, recorded in the database and written beside it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub segment: String,
    pub reference: String,
    pub sha256: String,
    pub bytes: usize,
    pub uncompressed_bytes: usize,
    pub cutoff: String,
    pub tables: std::collections::BTreeMap<String, i64>,
    pub records: Vec<Coverage>,
    /// Ids of the replayed dead letters it holds.
    pub dead_letters: Vec<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SegmentReport {
    pub id: String,
    pub reference: String,
    pub bytes: usize,
    pub uncompressed_bytes: usize,
    pub records: usize,
    pub events: usize,
    pub audit: usize,
    pub merged: usize,
    pub dead_letters: usize,
    /// Rows removed per table; zero on a dry run.
    pub removed: TableCounts,
}

#[derive(Debug, Clone, Serialize)]
pub struct Held {
    pub record_type: String,
    pub record_id: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub cutoff: String,
    pub dry_run: bool,
    /// Segments a previous run recorded and this one finished removing.
    pub finished_earlier: Vec<String>,
    pub segments: Vec<SegmentReport>,
    /// Records with old events that stay, and why.
    pub held: Vec<Held>,
    pub events: usize,
    pub elapsed_ms: f64,
}

/// One record's share of a segment being built.
struct Part {
    coverage: Coverage,
    rows: RecordRows,
    checkpoint: Checkpoint,
}

/// Archives everything older than `opts.cutoff` that may go, as one
/// database user that both records segments and removes their rows
/// (SQLite; an administrator). With the shipped MySQL grants use
/// [`run_as`].
pub async fn run(
    store: &Store,
    snapshots: &dyn SnapshotStore,
    policy: &MergePolicy,
    opts: &Options,
) -> Result<Report, ArchiveError> {
    run_as(store, store, snapshots, policy, opts).await
}

/// Archives as two database users (issue 31): `recorder` reads what goes
/// and records each segment once it is verified; `remover` removes the rows
/// a recorded segment covers (and finishes what an earlier run left). No
/// single credential can vouch for a segment and remove what it covers.
pub async fn run_as(
    recorder: &Store,
    remover: &Store,
    snapshots: &dyn SnapshotStore,
    policy: &MergePolicy,
    opts: &Options,
) -> Result<Report, ArchiveError> {
    let store = recorder;
    let started = Instant::now();
    let mut report = Report {
        cutoff: crate::model::fingerprint::format_timestamp(&opts.cutoff),
        dry_run: opts.dry_run,
        ..Default::default()
    };
    if !opts.dry_run {
        for s in remover.unremoved_segments().await? {
            remover
                .remove_covered(&s, opts.delete_batch, opts.pace)
                .await?;
            report.finished_earlier.push(s.id);
        }
    }
    let mut after: Option<RecordKey> = None;
    let mut parts: Vec<Part> = Vec::new();
    let mut in_segment = 0usize;
    loop {
        let page = store
            .archive_candidates(&opts.cutoff, after.as_ref(), PAGE)
            .await?;
        let Some(last) = page.last() else {
            break;
        };
        after = Some(last.key.clone());
        for c in page {
            let began = Instant::now();
            let planned = plan(store, policy, &c, opts, &mut report.held).await?;
            pause(began, opts.pace).await;
            let Some(part) = planned else {
                continue;
            };
            in_segment += part.rows.events.len();
            parts.push(part);
            if in_segment >= opts.segment_events {
                let seg = flush(
                    store,
                    remover,
                    snapshots,
                    opts,
                    std::mem::take(&mut parts),
                    Vec::new(),
                )
                .await?;
                report.events += seg.events;
                report.segments.push(seg);
                in_segment = 0;
            }
        }
    }
    if !parts.is_empty() {
        let seg = flush(store, remover, snapshots, opts, parts, Vec::new()).await?;
        report.events += seg.events;
        report.segments.push(seg);
    }
    // Replayed dead letters parked before the cutoff, in segments of their own.
    loop {
        let limit = i64::try_from(opts.segment_events).unwrap_or(i64::MAX);
        let dead = store.archive_dead_letters(&opts.cutoff, limit).await?;
        if dead.is_empty() {
            break;
        }
        let full = dead.len() as i64 == limit;
        let seg = flush(store, remover, snapshots, opts, Vec::new(), dead).await?;
        report.segments.push(seg);
        if opts.dry_run || !full {
            break;
        }
    }
    report.elapsed_ms = (started.elapsed().as_secs_f64() * 1e6).round() / 1e3;
    Ok(report)
}

/// Sleeps `pace` times as long as the work begun at `started` took.
pub async fn pause(started: Instant, pace: f64) {
    if pace > 0.0 {
        tokio::time::sleep(started.elapsed().mul_f64(pace)).await;
    }
}

/// What of `c` may be archived now, read and folded into its checkpoint;
/// `None` (with the reason in `held`) when nothing may.
async fn plan(
    store: &Store,
    policy: &MergePolicy,
    c: &Candidate,
    opts: &Options,
    held: &mut Vec<Held>,
) -> Result<Option<Part>, ArchiveError> {
    let (t, id) = (&c.key.0, &c.key.1);
    let from = c.covered_to + 1;
    let mut to = c.old_to_seq;
    if from > to {
        return Ok(None);
    }
    let mut hold = |reason: String| {
        held.push(Held {
            record_type: t.clone(),
            record_id: id.clone(),
            reason,
        });
        Ok(None)
    };
    if c.pending > 0 {
        return hold(format!("{} pending events (an open gap)", c.pending));
    }
    if c.unreplayed_dead_letters > 0 {
        return hold(format!(
            "{} dead letters not replayed",
            c.unreplayed_dead_letters
        ));
    }
    if c.outbox > 0 {
        return hold(format!("{} merged events not yet published", c.outbox));
    }
    if let Some((target, _)) = c.delivery.iter().find(|(_, (a, s))| s > a) {
        return hold(format!("a delivery to {target} is not acknowledged yet"));
    }
    // Per target, nothing from the first merged event routed to it and not
    // acknowledged: a later delivery folds those in (docs/spec.md §4.1).
    let acked = |target: Source| {
        c.delivery
            .get(target.as_str())
            .map_or(0, |(acked, _)| *acked)
    };
    let lowest = Source::ALL.iter().map(|t| acked(*t)).min().unwrap_or(0);
    if lowest < to {
        for m in store.merged_range(t, id, lowest, to).await? {
            let ev: MergedEvent = serde_json::from_str(&m.payload).map_err(|e| {
                ArchiveError::Other(format!("merged event {t}/{id} at {}: {e}", m.sequence_num))
            })?;
            let unacked = Source::ALL.iter().any(|target| {
                m.sequence_num > acked(*target) && routing::route(&ev, *target) == Route::Deliver
            });
            if unacked {
                to = to.min(m.sequence_num - 1);
                break;
            }
        }
    }
    if to < from {
        return hold("deliveries not yet acknowledged".into());
    }
    let rows = store.archive_rows((t, id), from, to, &opts.cutoff).await?;
    let start = if c.covered_to == 0 {
        (RecordState::default(), 0)
    } else {
        match store.checkpoint(t, id).await? {
            Some(cp) if cp.sequence_num == c.covered_to => (cp.state, cp.sequence_num),
            other => {
                return Err(ArchiveError::Other(format!(
                    "{t}/{id}: coverage ends at {} but its checkpoint is at {:?}",
                    c.covered_to,
                    other.map(|c| c.sequence_num)
                )))
            }
        }
    };
    let (state, last) = fold_each_from(start, &rows.events, policy, |_, _, _| {})?;
    if last != to {
        return Err(ArchiveError::Other(format!(
            "{t}/{id}: events {from}..={to} fold to sequence {last}"
        )));
    }
    Ok(Some(Part {
        coverage: Coverage {
            record_type: t.clone(),
            record_id: id.clone(),
            from_seq: from,
            to_seq: to,
            events: rows.events.len() as i64,
            audit: rows.audit.len() as i64,
            merged: rows.merged.len() as i64,
        },
        checkpoint: Checkpoint {
            record_type: t.clone(),
            record_id: id.clone(),
            sequence_num: to,
            state,
            segment_id: String::new(),
        },
        rows,
    }))
}

/// Gzip'd JSON lines of a segment: header, rows, checkpoints.
fn encode(
    cutoff: &str,
    parts: &[Part],
    dead: &[DeadLetterArchived],
) -> Result<(Vec<u8>, usize), ArchiveError> {
    let mut text = Vec::new();
    let mut line = |l: &Line| -> Result<(), ArchiveError> {
        serde_json::to_writer(&mut text, l).map_err(|e| ArchiveError::Other(e.to_string()))?;
        text.push(b'\n');
        Ok(())
    };
    line(&Line::Header {
        format: FORMAT.into(),
        cutoff: cutoff.into(),
        records: parts.iter().map(|p| p.coverage.clone()).collect(),
        dead_letters: dead.len(),
    })?;
    for d in dead {
        line(&Line::DeadLetter(Box::new(d.clone())))?;
    }
    for p in parts {
        for e in &p.rows.events {
            line(&Line::Event(e.clone()))?;
        }
        for a in &p.rows.audit {
            line(&Line::Audit(a.clone()))?;
        }
        for m in &p.rows.merged {
            line(&Line::Merged {
                record_type: p.coverage.record_type.clone(),
                record_id: p.coverage.record_id.clone(),
                row: m.clone(),
            })?;
        }
        line(&Line::Checkpoint(p.checkpoint.clone()))?;
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&text)
        .map_err(|e| ArchiveError::Other(e.to_string()))?;
    let bytes = gz
        .finish()
        .map_err(|e| ArchiveError::Other(e.to_string()))?;
    Ok((bytes, text.len()))
}

/// A segment read back: its records' rows and checkpoints.
pub struct Decoded {
    pub cutoff: String,
    pub records: Vec<Coverage>,
    pub rows: Vec<(RecordKey, RecordRows)>,
    pub checkpoints: Vec<Checkpoint>,
    pub dead_letters: Vec<DeadLetterArchived>,
}

/// Parses a segment's bytes (gzip'd JSON lines).
pub fn decode(bytes: &[u8]) -> Result<Decoded, String> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut text)
        .map_err(|e| format!("not gzip'd UTF-8: {e}"))?;
    let mut lines = text.lines();
    let first = lines.next().ok_or("empty segment")?;
    let Line::Header {
        format,
        cutoff,
        records,
        dead_letters: dead_count,
    } = serde_json::from_str(first).map_err(|e| format!("header: {e}"))?
    else {
        return Err("the first line is not a header".into());
    };
    if format != FORMAT {
        return Err(format!("unknown format {format:?}"));
    }
    let mut rows: Vec<(RecordKey, RecordRows)> = records
        .iter()
        .map(|c| {
            (
                (c.record_type.clone(), c.record_id.clone()),
                RecordRows::default(),
            )
        })
        .collect();
    let index: std::collections::HashMap<RecordKey, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (k.clone(), i))
        .collect();
    let slot = |k: RecordKey| {
        index
            .get(&k)
            .copied()
            .ok_or(format!("row of {k:?}, a record the header does not list"))
    };
    let mut checkpoints = Vec::new();
    let mut dead_letters = Vec::new();
    for (n, l) in lines.enumerate() {
        match serde_json::from_str::<Line>(l).map_err(|e| format!("line {}: {e}", n + 2))? {
            Line::Header { .. } => return Err(format!("line {}: a second header", n + 2)),
            Line::Event(e) => {
                let i = slot((e.record_type.clone(), e.record_id.clone()))?;
                rows[i].1.events.push(e);
            }
            Line::Audit(a) => {
                let i = slot((a.record_type.clone(), a.record_id.clone()))?;
                rows[i].1.audit.push(a);
            }
            Line::Merged {
                record_type,
                record_id,
                row,
            } => {
                let i = slot((record_type, record_id))?;
                rows[i].1.merged.push(row);
            }
            Line::Checkpoint(c) => checkpoints.push(c),
            Line::DeadLetter(d) => dead_letters.push(*d),
        }
    }
    if dead_letters.len() != dead_count {
        return Err(format!(
            "{} dead letters, the header says {dead_count}",
            dead_letters.len()
        ));
    }
    for (c, (_, r)) in records.iter().zip(&rows) {
        let counts = (
            r.events.len() as i64,
            r.audit.len() as i64,
            r.merged.len() as i64,
        );
        if counts != (c.events, c.audit, c.merged) {
            return Err(format!(
                "{}/{}: {counts:?} rows, the header says {:?}",
                c.record_type,
                c.record_id,
                (c.events, c.audit, c.merged)
            ));
        }
    }
    Ok(Decoded {
        cutoff,
        records,
        rows,
        checkpoints,
        dead_letters,
    })
}

/// Writes, verifies, records and removes one segment.
async fn flush(
    store: &Store,
    remover: &Store,
    snapshots: &dyn SnapshotStore,
    opts: &Options,
    mut parts: Vec<Part>,
    dead: Vec<DeadLetterArchived>,
) -> Result<SegmentReport, ArchiveError> {
    let began = Instant::now();
    let cutoff = crate::model::fingerprint::format_timestamp(&opts.cutoff);
    let count = |f: fn(&Part) -> usize| parts.iter().map(f).sum::<usize>();
    let (events, audit, merged) = (
        count(|p| p.rows.events.len()),
        count(|p| p.rows.audit.len()),
        count(|p| p.rows.merged.len()),
    );
    // The checkpoint names its segment, which is the hash of the bytes that
    // hold the checkpoint: the segment's checkpoints name none; the rows
    // written to the database name the segment.
    let (bytes, uncompressed) = encode(&cutoff, &parts, &dead)?;
    let sha = crate::model::fingerprint::sha256_hex(&bytes);
    let mut report = SegmentReport {
        id: sha.clone(),
        reference: String::new(),
        bytes: bytes.len(),
        uncompressed_bytes: uncompressed,
        records: parts.len(),
        events,
        audit,
        merged,
        dead_letters: dead.len(),
        removed: TableCounts::default(),
    };
    if opts.dry_run {
        return Ok(report);
    }
    let reference = snapshots
        .put_archive(Bytes::from(bytes.clone()), ".jsonl.gz")
        .await?;
    // Read back and check before anything leaves the database.
    let back = snapshots.read(&reference, Scope::Archive).await?;
    let fail = |reason: String| ArchiveError::Verify {
        reference: reference.clone(),
        reason,
    };
    if crate::model::fingerprint::sha256_hex(&back) != sha {
        return Err(fail("the object read back hashes differently".into()));
    }
    let decoded = decode(&back).map_err(fail)?;
    let records: Vec<Coverage> = parts.iter().map(|p| p.coverage.clone()).collect();
    if decoded.records != records
        || decoded.checkpoints.len() != parts.len()
        || decoded.dead_letters.len() != dead.len()
    {
        return Err(fail("its manifest differs from what was written".into()));
    }
    let tables = [
        ("events", events as i64),
        ("event_audit_log", audit as i64),
        ("merged_events", merged as i64),
        ("dead_letters", dead.len() as i64),
    ];
    let manifest = Manifest {
        format: FORMAT.into(),
        segment: sha.clone(),
        reference: reference.clone(),
        sha256: sha.clone(),
        bytes: bytes.len(),
        uncompressed_bytes: uncompressed,
        cutoff: cutoff.clone(),
        tables: tables.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
        records,
        dead_letters: dead.iter().map(|d| d.row.id).collect(),
    };
    let manifest_json =
        serde_json::to_string(&manifest).map_err(|e| ArchiveError::Other(e.to_string()))?;
    // Beside the segment, so the bucket describes itself without the database.
    snapshots
        .put_archive(Bytes::from(manifest_json.clone()), ".manifest.json")
        .await?;
    for p in &mut parts {
        p.checkpoint.segment_id = sha.clone();
    }
    let checkpoints: Vec<Checkpoint> = parts.iter().map(|p| p.checkpoint.clone()).collect();
    store
        .record_segment(&SegmentRecord {
            id: &sha,
            reference: &reference,
            bytes: bytes.len() as i64,
            cutoff: &opts.cutoff,
            manifest_json: &manifest_json,
            tables: &tables,
            coverage: &manifest.records,
            checkpoints: &checkpoints,
            dead_letters: &manifest.dead_letters,
        })
        .await?;
    pause(began, opts.pace).await;
    let info = SegmentInfo {
        id: sha,
        reference: reference.clone(),
        bytes: bytes.len() as i64,
        cutoff: cutoff.clone(),
        removed_at: None,
        restored_at: None,
    };
    report.removed = remover
        .remove_covered(&info, opts.delete_batch, opts.pace)
        .await?;
    report.reference = reference;
    Ok(report)
}

/// What `archive restore` put back.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub segments: Vec<String>,
    /// Rows inserted per table; rows already there are skipped.
    pub inserted: TableCounts,
}

/// Brings the rows of one segment (or of every segment covering one
/// record) back into the database for an audit. Checkpoints stay: history
/// reads the restored events from the beginning.
pub async fn restore(
    store: &Store,
    snapshots: &dyn SnapshotStore,
    segment: Option<&str>,
    record: Option<(&str, &str)>,
) -> Result<RestoreReport, ArchiveError> {
    let mut ids: Vec<String> = Vec::new();
    if let Some(s) = segment {
        let info = store
            .segment(s)
            .await?
            .ok_or_else(|| ArchiveError::Other(format!("no archive segment {s}")))?;
        ids.push(info.id);
    }
    if let Some((t, id)) = record {
        for r in store.archived_ranges(t, id).await? {
            if !ids.contains(&r.segment) {
                ids.push(r.segment);
            }
        }
    }
    let mut report = RestoreReport {
        segments: Vec::new(),
        inserted: TableCounts::default(),
    };
    for sid in ids {
        let info = store
            .segment(&sid)
            .await?
            .ok_or_else(|| ArchiveError::Other(format!("no archive segment {sid}")))?;
        let bytes = snapshots.read(&info.reference, Scope::Archive).await?;
        if crate::model::fingerprint::sha256_hex(&bytes) != info.id {
            return Err(ArchiveError::Verify {
                reference: info.reference,
                reason: "the object hashes differently from its manifest".into(),
            });
        }
        let decoded = decode(&bytes).map_err(|reason| ArchiveError::Verify {
            reference: info.reference.clone(),
            reason,
        })?;
        let rows: Vec<(RecordKey, RecordRows)> = decoded
            .rows
            .into_iter()
            .filter(|((t, id), _)| record.is_none_or(|(rt, rid)| rt == t && rid == id))
            .collect();
        // A whole segment back marks it restored; one record of it does not.
        let whole = record.is_none();
        let dead: Vec<DeadLetterArchived> = decoded
            .dead_letters
            .into_iter()
            .filter(|d| {
                record.is_none_or(|(rt, rid)| {
                    d.row.record_type.as_deref() == Some(rt)
                        && d.row.record_id.as_deref() == Some(rid)
                })
            })
            .collect();
        report.inserted += store
            .restore_rows(&rows, &dead, whole.then_some(info.id.as_str()))
            .await?;
        report.segments.push(info.id);
    }
    Ok(report)
}
