//! What archiving reads: the records with old events and what holds each
//! back, the rows a segment takes, and the replayed dead letters that go.

use sqlx::{Any, QueryBuilder, Row};

use super::{
    AuditArchived, Candidate, DeadLetterArchived, MergedArchived, RecordRows, AUDIT_OF_RECORD,
};
use crate::store::ledger::{event_columns, RecordKey, StoredEvent};
use crate::store::{dead_letters, get_opt_text, get_text, merged, Store, StoreError};

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
    ) -> Result<Vec<merged::MergedRow>, StoreError> {
        let sql = format!(
            "{} WHERE m.record_type = ? AND m.record_id = ? AND m.sequence_num > ? \
             AND m.sequence_num <= ? ORDER BY m.sequence_num",
            merged::select_sql(self.dialect())
        );
        sqlx::query(&sql)
            .bind(record_type.to_string())
            .bind(record_id.to_string())
            .bind(after)
            .bind(to)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(merged::from_row)
            .collect()
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
            dead_letters::columns(self)
        );
        sqlx::query(&sql)
            .bind(self.dialect().ts_value(cutoff))
            .bind(limit)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(|r| {
                let row = dead_letters::from_row(r)?;
                Ok(DeadLetterArchived {
                    data_hex: hex::encode(&row.data),
                    row,
                })
            })
            .collect()
    }
}
