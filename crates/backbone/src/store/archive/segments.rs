//! The record of archive segments: writing a verified segment's manifest,
//! coverage and checkpoints, and reading them back (segments, coverage,
//! archived ranges, checkpoints).

use sqlx::{AnyConnection, Row};

use super::{ArchivedRange, Checkpoint, SegmentInfo, SegmentRecord};
use crate::model::rules::RecordState;
use crate::store::ledger::RecordKey;
use crate::store::{get_opt_text, get_text, Backend, Dialect, Store, StoreError};

impl Store {
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
