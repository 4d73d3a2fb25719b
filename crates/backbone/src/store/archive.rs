//! Archival (docs/spec.md §6.1): what `event-backbone archive` reads, records and
//! removes, and what history reads back (checkpoints, archived ranges).
//!
//! Removal only ever goes through [`Store::remove_covered`], after the
//! segment's manifest is recorded ([`Store::record_segment`]); migration
//! 0006's triggers refuse any DELETE on the ledger that no recorded segment
//! covers, and count each removal against the segment's manifest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::{Any, AnyConnection, QueryBuilder, Row};

use super::ledger::{event_columns, RecordKey, StoredEvent};
use super::{get_opt_text, get_text, Backend, Dialect, Store, StoreError};
use crate::model::rules::RecordState;

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

impl Store {
    /// Records (after `after`, in key order, up to `page`) with events
    /// created before `cutoff`, with what may hold each back.
    pub async fn archive_candidates(
        &self,
        cutoff: &chrono::DateTime<chrono::Utc>,
        after: Option<&RecordKey>,
        page: i64,
    ) -> Result<Vec<Candidate>, StoreError> {
        let d = self.dialect();
        let mut conn = self.pool().acquire().await?;
        let mut q: QueryBuilder<Any> = QueryBuilder::new(
            "SELECT record_type, record_id, MAX(sequence_num) AS to_seq FROM events WHERE created_at < ",
        );
        q.push_bind(d.ts_value(cutoff));
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
        q.push_bind(page);
        let rows = q.build().fetch_all(&mut *conn).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let key = (get_text(r, "record_type")?, get_text(r, "record_id")?);
            let mut c = Candidate {
                old_to_seq: r.try_get("to_seq")?,
                ..Default::default()
            };
            let one = |sql: &'static str| {
                sqlx::query_scalar::<_, i64>(sql)
                    .bind(key.0.clone())
                    .bind(key.1.clone())
            };
            c.covered_to = one("SELECT COALESCE(MAX(to_seq), 0) FROM archive_coverage \
                 WHERE record_type = ? AND record_id = ?")
            .fetch_one(&mut *conn)
            .await?;
            c.pending =
                one("SELECT COUNT(*) FROM pending_events WHERE record_type = ? AND record_id = ?")
                    .fetch_one(&mut *conn)
                    .await?;
            c.unreplayed_dead_letters = one(
                "SELECT COUNT(*) FROM dead_letters WHERE record_type = ? AND record_id = ? \
                 AND status = 'parked'",
            )
            .fetch_one(&mut *conn)
            .await?;
            c.outbox = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE ordering_key = ?")
                .bind(crate::model::raw_event::ordering_key(&key.0, &key.1))
                .fetch_one(&mut *conn)
                .await?;
            for row in sqlx::query(
                "SELECT target, acked_seq, attempted_seq FROM delivery_state \
                 WHERE record_type = ? AND record_id = ?",
            )
            .bind(key.0.clone())
            .bind(key.1.clone())
            .fetch_all(&mut *conn)
            .await?
            {
                c.delivery.insert(
                    get_text(&row, "target")?,
                    (row.try_get("acked_seq")?, row.try_get("attempted_seq")?),
                );
            }
            c.key = key;
            out.push(c);
        }
        Ok(out)
    }

    /// A record's rows with `from_seq ≤ sequence_num ≤ to_seq`, and its
    /// audit rows an archive with `cutoff` takes.
    pub async fn archive_rows(
        &self,
        (record_type, record_id): (&str, &str),
        from_seq: i64,
        to_seq: i64,
        cutoff: &chrono::DateTime<chrono::Utc>,
    ) -> Result<RecordRows, StoreError> {
        let d = self.dialect();
        let mut tx = self.pool().begin().await?;
        let sql = format!(
            "SELECT {} FROM events WHERE record_type = ? AND record_id = ? \
             AND sequence_num >= ? AND sequence_num <= ? ORDER BY sequence_num",
            event_columns(d)
        );
        let events = sqlx::query(&sql)
            .bind(record_type.to_string())
            .bind(record_id.to_string())
            .bind(from_seq)
            .bind(to_seq)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(StoredEvent::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let sql = format!(
            "SELECT id, event_id, fingerprint, stage, processing_outcome, {} AS detail, \
             message_id, {} AS attempt_i, {} AS claim_i, {} AS created FROM event_audit_log \
             WHERE {AUDIT_OF_RECORD} ORDER BY id",
            d.text("detail"),
            d.int("attempt"),
            d.int("claim"),
            d.ts("created_at")
        );
        let audit = sqlx::query(&sql)
            .bind(record_type.to_string())
            .bind(record_id.to_string())
            .bind(d.ts_value(cutoff))
            .bind(to_seq)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| {
                Ok(AuditArchived {
                    id: r.try_get("id")?,
                    event_id: get_opt_text(r, "event_id")?,
                    fingerprint: get_text(r, "fingerprint")?,
                    record_type: record_type.to_string(),
                    record_id: record_id.to_string(),
                    stage: get_text(r, "stage")?,
                    outcome: get_text(r, "processing_outcome")?,
                    detail: get_opt_text(r, "detail")?,
                    message_id: get_opt_text(r, "message_id")?,
                    attempt: r.try_get("attempt_i")?,
                    claim: r.try_get::<Option<i64>, _>("claim_i")?.unwrap_or(0) != 0,
                    created_at: get_text(r, "created")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let sql = format!(
            "SELECT sequence_num, version, event_id, {} AS payload, {} AS created \
             FROM merged_events WHERE record_type = ? AND record_id = ? \
             AND sequence_num >= ? AND sequence_num <= ? ORDER BY sequence_num",
            d.text("payload"),
            d.ts("created_at")
        );
        let merged = sqlx::query(&sql)
            .bind(record_type.to_string())
            .bind(record_id.to_string())
            .bind(from_seq)
            .bind(to_seq)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| {
                Ok(MergedArchived {
                    sequence_num: r.try_get("sequence_num")?,
                    version: r.try_get("version")?,
                    event_id: get_text(r, "event_id")?,
                    payload: get_text(r, "payload")?,
                    created_at: get_text(r, "created")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        tx.commit().await?;
        Ok(RecordRows {
            events,
            audit,
            merged,
        })
    }

    /// The full merged events (as published) of a record in `(after, to]`.
    pub async fn merged_range(
        &self,
        record_type: &str,
        record_id: &str,
        after: i64,
        to: i64,
    ) -> Result<Vec<super::merged::MergedRow>, StoreError> {
        let sql = format!(
            "{} WHERE m.record_type = ? AND m.record_id = ? AND m.sequence_num > ? \
             AND m.sequence_num <= ? ORDER BY m.sequence_num",
            super::merged::select_sql(self.dialect())
        );
        sqlx::query(&sql)
            .bind(record_type.to_string())
            .bind(record_id.to_string())
            .bind(after)
            .bind(to)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(super::merged::from_row)
            .collect()
    }

    /// Records a verified segment: its manifest, per-record coverage, row
    /// counts and the records' checkpoints, in one transaction. Recording the
    /// same segment again changes nothing.
    pub async fn record_segment(&self, s: &SegmentRecord<'_>) -> Result<(), StoreError> {
        let d = self.dialect();
        let _guard = self.write_guard().await;
        let mut tx = self.pool().begin().await?;
        let ins = d.insert_ignore();
        let r = sqlx::query(&format!(
            "{ins} INTO archive_segments (id, reference, bytes, cutoff, manifest) VALUES (?, ?, ?, ?, ?)"
        ))
        .bind(s.id.to_string())
        .bind(s.reference.to_string())
        .bind(s.bytes)
        .bind(d.ts_value(s.cutoff))
        .bind(s.manifest_json.to_string())
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(());
        }
        for (table, n) in s.tables {
            sqlx::query(
                "INSERT INTO archive_segment_tables (segment_id, table_name, row_count) VALUES (?, ?, ?)",
            )
            .bind(s.id.to_string())
            .bind(table.to_string())
            .bind(*n)
            .execute(&mut *tx)
            .await?;
        }
        for c in s.coverage {
            sqlx::query(
                "INSERT INTO archive_coverage (record_type, record_id, segment_id, from_seq, to_seq, \
                 audit_before) VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(c.record_type.clone())
            .bind(c.record_id.clone())
            .bind(s.id.to_string())
            .bind(c.from_seq)
            .bind(c.to_seq)
            .bind(d.ts_value(s.cutoff))
            .execute(&mut *tx)
            .await?;
        }
        for id in s.dead_letters {
            sqlx::query(
                "INSERT INTO archive_dead_letters (segment_id, dead_letter_id) VALUES (?, ?)",
            )
            .bind(s.id.to_string())
            .bind(*id)
            .execute(&mut *tx)
            .await?;
        }
        for cp in s.checkpoints {
            let state = serde_json::to_string(&cp.state)
                .map_err(|e| StoreError::Corrupt(format!("checkpoint state: {e}")))?;
            let upsert = match d.0 {
                Backend::Mysql => {
                    " ON DUPLICATE KEY UPDATE sequence_num = VALUES(sequence_num), \
                     version = VALUES(version), state = VALUES(state), segment_id = VALUES(segment_id)"
                }
                Backend::Sqlite => {
                    " ON CONFLICT (record_type, record_id) DO UPDATE SET \
                     sequence_num = excluded.sequence_num, version = excluded.version, \
                     state = excluded.state, segment_id = excluded.segment_id"
                }
            };
            sqlx::query(&format!(
                "INSERT INTO record_checkpoints (record_type, record_id, sequence_num, version, \
                 state, segment_id) VALUES (?, ?, ?, ?, ?, ?){upsert}"
            ))
            .bind(cp.record_type.clone())
            .bind(cp.record_id.clone())
            .bind(cp.sequence_num)
            .bind(cp.state.version)
            .bind(state)
            .bind(cp.segment_id.clone())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Recorded segments whose rows have not all been removed yet (a run that
    /// stopped part-way), oldest first.
    pub async fn unremoved_segments(&self) -> Result<Vec<SegmentInfo>, StoreError> {
        self.segments_where("removed_at IS NULL AND restored_at IS NULL")
            .await
    }

    /// Every recorded segment, oldest first.
    pub async fn segments(&self) -> Result<Vec<SegmentInfo>, StoreError> {
        self.segments_where("1 = 1").await
    }

    /// One recorded segment by id (or by a unique prefix of it).
    pub async fn segment(&self, id: &str) -> Result<Option<SegmentInfo>, StoreError> {
        let all = self.segments_where("1 = 1").await?;
        let mut m = all.into_iter().filter(|s| s.id.starts_with(id));
        match (m.next(), m.next()) {
            (Some(s), None) => Ok(Some(s)),
            _ => Ok(None),
        }
    }

    async fn segments_where(&self, cond: &str) -> Result<Vec<SegmentInfo>, StoreError> {
        let d = self.dialect();
        let sql = format!(
            "SELECT id, reference, bytes, {} AS cutoff_t, {} AS removed, {} AS restored \
             FROM archive_segments WHERE {cond} ORDER BY verified_at, id",
            d.ts("cutoff"),
            d.ts("removed_at"),
            d.ts("restored_at")
        );
        sqlx::query(&sql)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(|r| {
                Ok(SegmentInfo {
                    id: get_text(r, "id")?,
                    reference: get_text(r, "reference")?,
                    bytes: r.try_get("bytes")?,
                    cutoff: get_text(r, "cutoff_t")?,
                    removed_at: get_opt_text(r, "removed")?,
                    restored_at: get_opt_text(r, "restored")?,
                })
            })
            .collect()
    }

    /// The per-record coverage of a segment.
    pub async fn segment_coverage(
        &self,
        segment_id: &str,
    ) -> Result<Vec<(RecordKey, i64, i64)>, StoreError> {
        sqlx::query(
            "SELECT record_type, record_id, from_seq, to_seq FROM archive_coverage \
             WHERE segment_id = ? ORDER BY record_type, record_id",
        )
        .bind(segment_id.to_string())
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(|r| {
            Ok((
                (get_text(r, "record_type")?, get_text(r, "record_id")?),
                r.try_get("from_seq")?,
                r.try_get("to_seq")?,
            ))
        })
        .collect()
    }

    /// Removes the rows `segment` covers, `batch` rows per transaction:
    /// audit rows first (the trigger looks at their events), then merged
    /// events, then events; marks the segment removed. Safe to run again.
    /// Returns the rows removed per table.
    /// After each transaction it pauses `pace` times as long as it took.
    pub async fn remove_covered(
        &self,
        segment: &SegmentInfo,
        batch: usize,
        pace: f64,
    ) -> Result<[u64; 4], StoreError> {
        let pause = |began: std::time::Instant| async move {
            if pace > 0.0 {
                tokio::time::sleep(began.elapsed().mul_f64(pace)).await;
            }
        };
        let d = self.dialect();
        let cutoff = super::parse_ts(&segment.cutoff)?;
        let batch = batch.max(1) as i64;
        let mut removed = [0u64; 4];
        for ((t, id), from, to) in self.segment_coverage(&segment.id).await? {
            loop {
                let ids: Vec<i64> = sqlx::query_scalar(&format!(
                    "SELECT id FROM event_audit_log WHERE {AUDIT_OF_RECORD} ORDER BY id LIMIT ?"
                ))
                .bind(t.clone())
                .bind(id.clone())
                .bind(d.ts_value(&cutoff))
                .bind(to)
                .bind(batch)
                .fetch_all(self.pool())
                .await?;
                if ids.is_empty() {
                    break;
                }
                let began = std::time::Instant::now();
                let guard = self.write_guard().await;
                let mut q: QueryBuilder<Any> =
                    QueryBuilder::new("DELETE FROM event_audit_log WHERE id IN (");
                let mut sep = q.separated(", ");
                for i in &ids {
                    sep.push_bind(*i);
                }
                q.push(")");
                removed[0] += q.build().execute(self.pool()).await?.rows_affected();
                drop(guard);
                pause(began).await;
            }
            for (i, table) in ["merged_events", "events"].into_iter().enumerate() {
                let mut lo = from;
                while lo <= to {
                    let hi = (lo + batch - 1).min(to);
                    let began = std::time::Instant::now();
                    let guard = self.write_guard().await;
                    removed[i + 1] += sqlx::query(&format!(
                        "DELETE FROM {table} WHERE record_type = ? AND record_id = ? \
                         AND sequence_num >= ? AND sequence_num <= ?"
                    ))
                    .bind(t.clone())
                    .bind(id.clone())
                    .bind(lo)
                    .bind(hi)
                    .execute(self.pool())
                    .await?
                    .rows_affected();
                    drop(guard);
                    pause(began).await;
                    lo = hi + 1;
                }
            }
        }
        let _guard = self.write_guard().await;
        // Only replayed ones: a row replayed and dead again is pending once
        // more (reopened) and stays.
        removed[3] = sqlx::query(
            "DELETE FROM dead_letters WHERE replayed_at IS NOT NULL AND id IN \
             (SELECT dead_letter_id FROM archive_dead_letters WHERE segment_id = ?)",
        )
        .bind(segment.id.clone())
        .execute(self.pool())
        .await?
        .rows_affected();
        sqlx::query(&format!(
            "UPDATE archive_segments SET removed_at = {} WHERE id = ?",
            d.now()
        ))
        .bind(segment.id.clone())
        .execute(self.pool())
        .await?;
        Ok(removed)
    }

    /// Up to `limit` dead letters replayed and parked before `cutoff` that
    /// no segment holds yet, by id.
    pub async fn archive_dead_letters(
        &self,
        cutoff: &chrono::DateTime<chrono::Utc>,
        limit: i64,
    ) -> Result<Vec<DeadLetterArchived>, StoreError> {
        let sql = format!(
            "SELECT {} FROM dead_letters WHERE replayed_at IS NOT NULL AND parked_at < ? \
             AND NOT EXISTS (SELECT 1 FROM archive_dead_letters a WHERE a.dead_letter_id = dead_letters.id) \
             ORDER BY id LIMIT ?",
            super::dead_letters::columns(self)
        );
        sqlx::query(&sql)
            .bind(self.dialect().ts_value(cutoff))
            .bind(limit)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(|r| {
                let row = super::dead_letters::from_row(r)?;
                Ok(DeadLetterArchived {
                    data_hex: hex::encode(&row.data),
                    row,
                })
            })
            .collect()
    }

    /// A record's checkpoint, if part of its history is archived.
    pub async fn checkpoint(
        &self,
        record_type: &str,
        record_id: &str,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let mut conn = self.pool().acquire().await?;
        checkpoint(&mut conn, self.dialect(), record_type, record_id).await
    }

    /// Where a record's archived events are, in sequence order.
    pub async fn archived_ranges(
        &self,
        record_type: &str,
        record_id: &str,
    ) -> Result<Vec<ArchivedRange>, StoreError> {
        sqlx::query(
            "SELECT c.from_seq, c.to_seq, c.segment_id, s.reference, \
             CASE WHEN s.removed_at IS NULL OR s.restored_at IS NOT NULL THEN 1 ELSE 0 END AS here \
             FROM archive_coverage c JOIN archive_segments s ON s.id = c.segment_id \
             WHERE c.record_type = ? AND c.record_id = ? ORDER BY c.from_seq",
        )
        .bind(record_type.to_string())
        .bind(record_id.to_string())
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(|r| {
            Ok(ArchivedRange {
                from_seq: r.try_get("from_seq")?,
                to_seq: r.try_get("to_seq")?,
                segment: get_text(r, "segment_id")?,
                reference: get_text(r, "reference")?,
                in_database: r.try_get::<i64, _>("here")? != 0,
            })
        })
        .collect()
    }

    /// Puts archived rows back (`archive restore`); rows already there are
    /// left alone. Marks the segment restored when `segment_id` is given.
    pub async fn restore_rows(
        &self,
        rows: &[(RecordKey, RecordRows)],
        dead: &[DeadLetterArchived],
        segment_id: Option<&str>,
    ) -> Result<[u64; 4], StoreError> {
        let d = self.dialect();
        let ins = d.insert_ignore();
        let _guard = self.write_guard().await;
        let mut tx = self.pool().begin().await?;
        let mut n = [0u64; 4];
        for x in dead {
            let r = &x.row;
            let data = hex::decode(&x.data_hex)
                .map_err(|e| StoreError::Corrupt(format!("archived dead letter {}: {e}", r.id)))?;
            let errors =
                serde_json::to_string(&r.errors).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let attributes = serde_json::to_string(&r.attributes)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let ts = |s: &Option<String>| -> Result<Option<String>, StoreError> {
                s.as_deref()
                    .map(|t| Ok(d.ts_value(&super::parse_ts(t)?)))
                    .transpose()
            };
            n[3] += sqlx::query(&format!(
                "{ins} INTO dead_letters (id, dlq_message_id, origin_message_id, stage, reason, \
                 attempts, fingerprint, record_type, record_id, last_error, errors, data, \
                 attributes, ordering_key, source_subscription, delivery_count, parked_at, \
                 replay_count, replayed_at, status, status_actor, status_reason) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .bind(r.id)
            .bind(r.dlq_message_id.clone())
            .bind(r.origin_message_id.clone())
            .bind(r.stage.clone())
            .bind(r.reason.clone())
            .bind(r.attempts)
            .bind(r.fingerprint.clone())
            .bind(r.record_type.clone())
            .bind(r.record_id.clone())
            .bind(r.last_error.clone())
            .bind(errors)
            .bind(data)
            .bind(attributes)
            .bind(r.ordering_key.clone())
            .bind(r.source_subscription.clone())
            .bind(r.delivery_count)
            .bind(d.ts_value(&super::parse_ts(&r.parked_at)?))
            .bind(r.replay_count)
            .bind(ts(&r.replayed_at)?)
            // A segment written before migration 0011 has no status: an
            // archived row was replayed (only those are archived).
            .bind(if r.status == "parked" && r.replayed_at.is_some() {
                "replayed".to_string()
            } else {
                r.status.clone()
            })
            .bind(r.status_actor.clone())
            .bind(r.status_reason.clone())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        for ((t, id), r) in rows {
            for e in &r.events {
                n[0] += sqlx::query(&format!(
                    "{ins} INTO events (id, record_type, record_id, source, `timestamp`, \
                     base_version, changes, full_snapshot_ref, processed, sequence_num, created_at) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ))
                .bind(e.id.clone())
                .bind(t.clone())
                .bind(id.clone())
                .bind(e.source.clone())
                .bind(d.ts_value(&super::parse_ts(&e.timestamp)?))
                .bind(e.base_version)
                .bind(e.changes.to_string())
                .bind(e.full_snapshot_ref.clone())
                .bind(i64::from(e.processed))
                .bind(e.sequence_num)
                .bind(d.ts_value(&super::parse_ts(&e.created_at)?))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            }
            for a in &r.audit {
                n[1] += sqlx::query(&format!(
                    "{ins} INTO event_audit_log (id, event_id, fingerprint, record_type, record_id, \
                     stage, processing_outcome, detail, message_id, attempt, claim, created_at) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ))
                .bind(a.id)
                .bind(a.event_id.clone())
                .bind(a.fingerprint.clone())
                .bind(t.clone())
                .bind(id.clone())
                .bind(a.stage.clone())
                .bind(a.outcome.clone())
                .bind(a.detail.clone())
                .bind(a.message_id.clone())
                .bind(a.attempt)
                .bind(a.claim.then_some(1i64))
                .bind(d.ts_value(&super::parse_ts(&a.created_at)?))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            }
            for m in &r.merged {
                n[2] += sqlx::query(&format!(
                    "{ins} INTO merged_events (record_type, record_id, sequence_num, version, \
                     event_id, payload, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                ))
                .bind(t.clone())
                .bind(id.clone())
                .bind(m.sequence_num)
                .bind(m.version)
                .bind(m.event_id.clone())
                .bind(m.payload.clone())
                .bind(d.ts_value(&super::parse_ts(&m.created_at)?))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            }
        }
        if let Some(s) = segment_id {
            sqlx::query(&format!(
                "UPDATE archive_segments SET restored_at = {} WHERE id = ?",
                d.now()
            ))
            .bind(s.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(n)
    }
}

/// A record's checkpoint, on `conn` (inside a caller's transaction).
pub async fn checkpoint(
    conn: &mut AnyConnection,
    d: Dialect,
    record_type: &str,
    record_id: &str,
) -> Result<Option<Checkpoint>, StoreError> {
    let sql = format!(
        "SELECT sequence_num, {} AS state, segment_id FROM record_checkpoints \
         WHERE record_type = ? AND record_id = ?",
        d.text("state")
    );
    let Some(r) = sqlx::query(&sql)
        .bind(record_type.to_string())
        .bind(record_id.to_string())
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    let state: RecordState = serde_json::from_str(&get_text(&r, "state")?)
        .map_err(|e| StoreError::Corrupt(format!("record_checkpoints.state: {e}")))?;
    Ok(Some(Checkpoint {
        record_type: record_type.to_string(),
        record_id: record_id.to_string(),
        sequence_num: r.try_get("sequence_num")?,
        state,
        segment_id: get_text(&r, "segment_id")?,
    }))
}
