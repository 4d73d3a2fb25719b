//! `archive restore`: a segment's rows (or one record's) back into the
//! database for an audit, once the object still hashes to its id.

use serde::Serialize;

use super::segment::decode;
use super::{ArchiveError, VerifyFailure};
use crate::model::fingerprint::sha256_hex;
use crate::snapshots::{Scope, SnapshotStore};
use crate::store::archive::{DeadLetterArchived, RecordRows, SegmentInfo, TableCounts};
use crate::store::ledger::RecordKey;
use crate::store::Store;

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
        ids.push(recorded(store, s).await?.id);
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
        let info = recorded(store, &sid).await?;
        report.inserted += restore_segment(store, snapshots, &info, record).await?;
        report.segments.push(info.id);
    }
    Ok(report)
}

/// The recorded segment `id` (or a unique prefix of it).
async fn recorded(store: &Store, id: &str) -> Result<SegmentInfo, ArchiveError> {
    store
        .segment(id)
        .await?
        .ok_or_else(|| ArchiveError::NoSegment(id.to_string()))
}

/// Reads, checks and puts back one segment, or only `record`'s rows of it.
async fn restore_segment(
    store: &Store,
    snapshots: &dyn SnapshotStore,
    info: &SegmentInfo,
    record: Option<(&str, &str)>,
) -> Result<TableCounts, ArchiveError> {
    let bytes = snapshots.read(&info.reference, Scope::Archive).await?;
    let fail = |reason: VerifyFailure| ArchiveError::Verify {
        reference: info.reference.clone(),
        reason,
    };
    if sha256_hex(&bytes) != info.id {
        return Err(fail(VerifyFailure::StoredHash));
    }
    let decoded = decode(&bytes).map_err(|e| fail(e.into()))?;
    let rows: Vec<(RecordKey, RecordRows)> = decoded
        .rows
        .into_iter()
        .filter(|((t, id), _)| record.is_none_or(|(rt, rid)| rt == t && rid == id))
        .collect();
    let dead: Vec<DeadLetterArchived> = decoded
        .dead_letters
        .into_iter()
        .filter(|d| {
            record.is_none_or(|(rt, rid)| {
                d.row.record_type.as_deref() == Some(rt) && d.row.record_id.as_deref() == Some(rid)
            })
        })
        .collect();
    // A whole segment back marks it restored; one record of it does not.
    let whole = record.is_none();
    Ok(store
        .restore_rows(&rows, &dead, whole.then_some(info.id.as_str()))
        .await?)
}
