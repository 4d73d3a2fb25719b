//! One segment from build to removal: encode it, write it under its
//! SHA-256, read it back and check it, write and record its manifest, then
//! remove the rows it covers. Each step only once the one before held.

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::segment::{decode, encode, Part};
use super::{pause, ArchiveError, Options, SegmentReport, VerifyFailure, FORMAT};
use crate::model::fingerprint::{format_timestamp, sha256_hex};
use crate::snapshots::{Scope, SnapshotStore};
use crate::store::archive::{
    Checkpoint, Coverage, DeadLetterArchived, SegmentInfo, SegmentRecord, TableCounts,
};
use crate::store::Store;

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
    pub tables: BTreeMap<String, i64>,
    pub records: Vec<Coverage>,
    /// Ids of the replayed dead letters it holds.
    pub dead_letters: Vec<i64>,
}

/// Writes, verifies, records and removes one segment.
pub(super) async fn flush(
    store: &Store,
    remover: &Store,
    snapshots: &dyn SnapshotStore,
    opts: &Options,
    mut parts: Vec<Part>,
    dead: Vec<DeadLetterArchived>,
) -> Result<SegmentReport, ArchiveError> {
    let began = Instant::now();
    let cutoff = format_timestamp(&opts.cutoff);
    // The checkpoint names its segment, which is the hash of the bytes that
    // hold the checkpoint: the segment's checkpoints name none; the rows
    // written to the database name the segment.
    let (bytes, uncompressed) = encode(&cutoff, &parts, &dead)?;
    let sha = sha256_hex(&bytes);
    let mut report = report_of(&sha, &bytes, uncompressed, &parts, &dead);
    if opts.dry_run {
        return Ok(report);
    }
    let reference = write_and_verify(snapshots, &bytes, &sha, &parts, &dead).await?;
    let tables = [
        ("events", report.events as i64),
        ("event_audit_log", report.audit as i64),
        ("merged_events", report.merged as i64),
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
        records: parts.iter().map(|p| p.coverage.clone()).collect(),
        dead_letters: dead.iter().map(|d| d.row.id).collect(),
    };
    let manifest_json =
        serde_json::to_string(&manifest).map_err(|error| ArchiveError::Manifest {
            segment: sha.clone(),
            error,
        })?;
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
        cutoff,
        removed_at: None,
        restored_at: None,
    };
    report.removed = remover
        .remove_covered(&info, opts.delete_batch, opts.pace)
        .await?;
    report.reference = reference;
    Ok(report)
}

/// What a segment holds, before anything is written (all a dry run says).
fn report_of(
    sha: &str,
    bytes: &[u8],
    uncompressed: usize,
    parts: &[Part],
    dead: &[DeadLetterArchived],
) -> SegmentReport {
    let count = |f: fn(&Part) -> usize| parts.iter().map(f).sum::<usize>();
    SegmentReport {
        id: sha.to_string(),
        reference: String::new(),
        bytes: bytes.len(),
        uncompressed_bytes: uncompressed,
        records: parts.len(),
        events: count(|p| p.rows.events.len()),
        audit: count(|p| p.rows.audit.len()),
        merged: count(|p| p.rows.merged.len()),
        dead_letters: dead.len(),
        removed: TableCounts::default(),
    }
}

/// Writes the segment under its hash and reads it back: the same hash, and
/// the records, checkpoints and dead letters written, before anything
/// leaves the database. Returns its reference.
async fn write_and_verify(
    snapshots: &dyn SnapshotStore,
    bytes: &[u8],
    sha: &str,
    parts: &[Part],
    dead: &[DeadLetterArchived],
) -> Result<String, ArchiveError> {
    let reference = snapshots
        .put_archive(Bytes::from(bytes.to_vec()), ".jsonl.gz")
        .await?;
    let back = snapshots.read(&reference, Scope::Archive).await?;
    let fail = |reason: VerifyFailure| ArchiveError::Verify {
        reference: reference.clone(),
        reason,
    };
    if sha256_hex(&back) != sha {
        return Err(fail(VerifyFailure::ReadBackHash));
    }
    let decoded = decode(&back).map_err(|e| fail(e.into()))?;
    let written = parts.iter().map(|p| &p.coverage);
    if !decoded.records.iter().eq(written)
        || decoded.checkpoints.len() != parts.len()
        || decoded.dead_letters.len() != dead.len()
    {
        return Err(fail(VerifyFailure::ManifestDiffers));
    }
    Ok(reference)
}
