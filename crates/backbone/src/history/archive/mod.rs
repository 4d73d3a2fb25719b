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
//!
//! The steps by file: `plan` (what of a record may go), `segment` (its bytes,
//! pure), `flush` (write, verify, record, remove), `restore`.

mod flush;
mod plan;
mod restore;
mod segment;

use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

use self::flush::flush;
use self::plan::plan;
use self::segment::Part;
use super::HistoryError;
use crate::model::rules::MergePolicy;
use crate::snapshots::{SnapshotError, SnapshotStore};
use crate::store::ledger::RecordKey;
use crate::store::{Store, StoreError};

pub use self::flush::Manifest;
pub use self::restore::{restore, RestoreReport};
pub use self::segment::{decode, DecodeError, Decoded, EncodeError};
pub use crate::store::archive::TableCounts;

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
    Verify {
        reference: String,
        reason: VerifyFailure,
    },
    /// The segment could not be built; nothing was written.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// A verified segment's manifest could not be serialized; nothing is
    /// recorded, so nothing is removed.
    #[error("the manifest of archive segment {segment} cannot be written as JSON: {error}")]
    Manifest {
        segment: String,
        error: serde_json::Error,
    },
    /// `archive restore --segment` named no recorded segment (or a prefix
    /// of more than one).
    #[error("no archive segment {0}")]
    NoSegment(String),
    /// A stored merged event that does not parse: which targets it is
    /// routed to is unknown, so the record is not archived.
    #[error("merged event {record_type}/{record_id} at {sequence_num}: {error}")]
    MergedEvent {
        record_type: String,
        record_id: String,
        sequence_num: i64,
        error: serde_json::Error,
    },
    /// The coverage recorded for a record and its checkpoint disagree:
    /// archiving more would fold from the wrong state.
    #[error(
        "{record_type}/{record_id}: coverage ends at {covered_to} but its checkpoint is at \
         {checkpoint:?}"
    )]
    Checkpoint {
        record_type: String,
        record_id: String,
        covered_to: i64,
        /// The checkpoint's sequence, `None` when there is none.
        checkpoint: Option<i64>,
    },
    /// The events read do not fold to the last one planned (a gap).
    #[error("{record_type}/{record_id}: events {from}..={to} fold to sequence {last}")]
    Fold {
        record_type: String,
        record_id: String,
        from: i64,
        to: i64,
        last: i64,
    },
}

/// Why a segment read back (or read for a restore) is not the one recorded.
#[derive(Debug, thiserror::Error)]
pub enum VerifyFailure {
    #[error("the object read back hashes differently")]
    ReadBackHash,
    #[error("the object hashes differently from its manifest")]
    StoredHash,
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("its manifest differs from what was written")]
    ManifestDiffers,
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
