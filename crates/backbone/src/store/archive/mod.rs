//! Archival (docs/spec.md §6.1): what `event-backbone archive` reads, records and
//! removes, and what history reads back (checkpoints, archived ranges).
//!
//! Removal only ever goes through [`Store::remove_covered`], after the
//! segment's manifest is recorded ([`Store::record_segment`]); migration
//! 0006's triggers refuse any DELETE on the ledger that no recorded segment
//! covers, and count each removal against the segment's manifest.
//!
//! The types are here, the queries in a file per step: `candidates` (what
//! may go and its rows), `segments` (recording a segment, reading segments
//! and checkpoints back), `remove`, `restore`.
//!
//! [`Store::remove_covered`]: crate::store::Store::remove_covered
//! [`Store::record_segment`]: crate::store::Store::record_segment

mod candidates;
mod remove;
mod restore;
mod segments;

use std::collections::BTreeMap;
use std::ops::AddAssign;

use serde::{Deserialize, Serialize};

use super::ledger::{RecordKey, StoredEvent};
use crate::model::rules::RecordState;

pub use segments::checkpoint;

/// A record that has events older than the cutoff, and what may hold it back.
#[derive(Debug, Clone, Default)]
pub struct Candidate {
    pub key: RecordKey,
    /// Highest sequence_num among its events created before the cutoff.
    pub old_to_seq: i64,
    /// Highest sequence_num a recorded segment already covers (0: none).
    pub covered_to: i64,
    /// Events waiting in `pending_events` (an open gap).
    pub pending: i64,
    /// Parked dead letters of the record not replayed yet.
    pub unreplayed_dead_letters: i64,
    /// Merged events of the record not confirmed published.
    pub outbox: i64,
    /// Per target: (acked_seq, attempted_seq).
    pub delivery: BTreeMap<String, (i64, i64)>,
}

/// An audit row as archived (every column).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditArchived {
    pub id: i64,
    pub event_id: Option<String>,
    pub fingerprint: String,
    pub record_type: String,
    pub record_id: String,
    pub stage: String,
    pub outcome: String,
    pub detail: Option<String>,
    pub message_id: Option<String>,
    pub attempt: i64,
    pub claim: bool,
    pub created_at: String,
}

/// A merged_events row as stored (compact payload; every column).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MergedArchived {
    pub sequence_num: i64,
    pub version: i64,
    pub event_id: String,
    pub payload: String,
    pub created_at: String,
}

/// A replayed dead letter as archived (its data as hex).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetterArchived {
    #[serde(flatten)]
    pub row: super::dead_letters::DeadLetter,
    pub data_hex: String,
}

/// Everything of one record a segment takes.
#[derive(Debug, Clone, Default)]
pub struct RecordRows {
    pub events: Vec<StoredEvent>,
    pub audit: Vec<AuditArchived>,
    pub merged: Vec<MergedArchived>,
}

/// One record's part of a segment's manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Coverage {
    pub record_type: String,
    pub record_id: String,
    pub from_seq: i64,
    pub to_seq: i64,
    pub events: i64,
    pub audit: i64,
    pub merged: i64,
}

/// The state a record's history goes on from after its archived events.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Checkpoint {
    pub record_type: String,
    pub record_id: String,
    /// The last archived event's sequence_num.
    pub sequence_num: i64,
    pub state: RecordState,
    pub segment_id: String,
}

/// A recorded segment, as a caller needs it to finish or undo it.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentInfo {
    pub id: String,
    pub reference: String,
    pub bytes: i64,
    pub cutoff: String,
    pub removed_at: Option<String>,
    pub restored_at: Option<String>,
}

/// Where a record's archived events are.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ArchivedRange {
    pub from_seq: i64,
    pub to_seq: i64,
    pub segment: String,
    pub reference: String,
    /// Still in the database too (restored, or not removed yet).
    pub in_database: bool,
}

/// The manifest row and what goes with it, written in one transaction.
#[derive(Debug, Clone)]
pub struct SegmentRecord<'a> {
    pub id: &'a str,
    pub reference: &'a str,
    pub bytes: i64,
    pub cutoff: &'a chrono::DateTime<chrono::Utc>,
    pub manifest_json: &'a str,
    /// Rows per table.
    pub tables: &'a [(&'a str, i64)],
    pub coverage: &'a [Coverage],
    pub checkpoints: &'a [Checkpoint],
    /// Ids of the replayed dead letters it holds.
    pub dead_letters: &'a [i64],
}

/// The audit rows of a record an archive up to `to_seq` with `cutoff` takes:
/// created before the cutoff and not about an event after `to_seq` that is
/// still stored (the triggers' own rule).
const AUDIT_OF_RECORD: &str = "record_type = ? AND record_id = ? AND created_at < ? \
     AND NOT EXISTS (SELECT 1 FROM events e WHERE e.id = event_audit_log.event_id \
     AND e.sequence_num > ?)";

/// Rows per archived table: what [`Store::remove_covered`] removed or
/// [`Store::restore_rows`] put back. Named fields, since removal and restore
/// go through the tables in different orders.
///
/// [`Store::remove_covered`]: crate::store::Store::remove_covered
/// [`Store::restore_rows`]: crate::store::Store::restore_rows
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TableCounts {
    pub events: u64,
    pub audit: u64,
    pub merged: u64,
    pub dead_letters: u64,
}

impl AddAssign for TableCounts {
    fn add_assign(&mut self, other: TableCounts) {
        self.events += other.events;
        self.audit += other.audit;
        self.merged += other.merged;
        self.dead_letters += other.dead_letters;
    }
}
