//! `archive restore`: archived rows back into the database, in one
//! transaction, a step per table.

use sqlx::AnyConnection;

use super::{AuditArchived, DeadLetterArchived, MergedArchived, RecordRows, TableCounts};
use crate::store::ledger::{RecordKey, StoredEvent};
use crate::store::{parse_ts, Dialect, Store, StoreError};

impl Store {
    /// Puts archived rows back (`archive restore`); rows already there are
    /// left alone. Marks the segment restored when `segment_id` is given.
    pub async fn restore_rows(
        &self,
        rows: &[(RecordKey, RecordRows)],
        dead: &[DeadLetterArchived],
        segment_id: Option<&str>,
    ) -> Result<TableCounts, StoreError> {
        let d = self.dialect();
        let _guard = self.write_guard().await;
        let mut tx = self.pool().begin().await?;
        let mut n = TableCounts::default();
        for x in dead {
            n.dead_letters += insert_dead_letter(&mut tx, d, x).await?;
        }
        for (key, r) in rows {
            for e in &r.events {
                n.events += insert_event(&mut tx, d, key, e).await?;
            }
            for a in &r.audit {
                n.audit += insert_audit(&mut tx, d, key, a).await?;
            }
            for m in &r.merged {
                n.merged += insert_merged(&mut tx, d, key, m).await?;
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

/// A database timestamp from an archived one.
fn ts(d: Dialect, t: &str) -> Result<String, StoreError> {
    Ok(d.ts_value(&parse_ts(t)?))
}

/// One replayed dead letter back; 0 when its id is there already.
async fn insert_dead_letter(
    conn: &mut AnyConnection,
    d: Dialect,
    x: &DeadLetterArchived,
) -> Result<u64, StoreError> {
    let r = &x.row;
    let data = hex::decode(&x.data_hex)
        .map_err(|e| StoreError::Corrupt(format!("archived dead letter {}: {e}", r.id)))?;
    let errors =
        serde_json::to_string(&r.errors).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let attributes =
        serde_json::to_string(&r.attributes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let replayed_at = r.replayed_at.as_deref().map(|t| ts(d, t)).transpose()?;
    // A segment written before migration 0011 has no status: an archived
    // row was replayed (only those are archived).
    let status = if r.status == "parked" && r.replayed_at.is_some() {
        "replayed".to_string()
    } else {
        r.status.clone()
    };
    Ok(sqlx::query(&format!(
        "{} INTO dead_letters (id, dlq_message_id, origin_message_id, stage, reason, \
         attempts, fingerprint, record_type, record_id, last_error, errors, data, \
         attributes, ordering_key, source_subscription, delivery_count, parked_at, \
         replay_count, replayed_at, status, status_actor, status_reason) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        d.insert_ignore()
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
    .bind(ts(d, &r.parked_at)?)
    .bind(r.replay_count)
    .bind(replayed_at)
    .bind(status)
    .bind(r.status_actor.clone())
    .bind(r.status_reason.clone())
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// One archived event of record `(t, id)` back; 0 when it is there already.
async fn insert_event(
    conn: &mut AnyConnection,
    d: Dialect,
    (t, id): &RecordKey,
    e: &StoredEvent,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(&format!(
        "{} INTO events (id, record_type, record_id, source, `timestamp`, \
         base_version, changes, full_snapshot_ref, processed, sequence_num, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        d.insert_ignore()
    ))
    .bind(e.id.clone())
    .bind(t.clone())
    .bind(id.clone())
    .bind(e.source.clone())
    .bind(ts(d, &e.timestamp)?)
    .bind(e.base_version)
    .bind(e.changes.to_string())
    .bind(e.full_snapshot_ref.clone())
    .bind(i64::from(e.processed))
    .bind(e.sequence_num)
    .bind(ts(d, &e.created_at)?)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// One archived audit row of record `(t, id)` back; 0 when it is there already.
async fn insert_audit(
    conn: &mut AnyConnection,
    d: Dialect,
    (t, id): &RecordKey,
    a: &AuditArchived,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(&format!(
        "{} INTO event_audit_log (id, event_id, fingerprint, record_type, record_id, \
         stage, processing_outcome, detail, message_id, attempt, claim, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        d.insert_ignore()
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
    .bind(ts(d, &a.created_at)?)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// One archived merged event of record `(t, id)` back; 0 when it is there already.
async fn insert_merged(
    conn: &mut AnyConnection,
    d: Dialect,
    (t, id): &RecordKey,
    m: &MergedArchived,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(&format!(
        "{} INTO merged_events (record_type, record_id, sequence_num, version, \
         event_id, payload, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        d.insert_ignore()
    ))
    .bind(t.clone())
    .bind(id.clone())
    .bind(m.sequence_num)
    .bind(m.version)
    .bind(m.event_id.clone())
    .bind(m.payload.clone())
    .bind(ts(d, &m.created_at)?)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}
