//! Pending events (docs/spec.md §4.1): raw events whose `base_version` is ahead of
//! their record wait here, durably, until the record reaches their base.
//! Written and deleted inside merge transactions; the gap sweeper reads the
//! old ones and marks the records it reported.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::{Any, AnyConnection, QueryBuilder, Row};

use super::ledger::RecordKey;
use super::{get_opt_text, get_text, Dialect, Store, StoreError};
use crate::model::raw_event::Source;

/// The validated event as it will be merged (changes already resolved).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingEvent {
    /// The publisher's id, if it gave one.
    pub id: Option<uuid::Uuid>,
    pub source: Source,
    pub timestamp: DateTime<Utc>,
    pub base_version: i64,
    pub changes: Map<String, Value>,
    pub full_snapshot_ref: Option<String>,
}

/// One row of `pending_events`.
#[derive(Debug, Clone)]
pub struct PendingRow {
    pub fingerprint: String,
    /// The id its `events` row will get.
    pub event_id: String,
    pub record_type: String,
    pub record_id: String,
    pub base_version: i64,
    pub event: PendingEvent,
    pub message_id: Option<String>,
    /// The message as received, for its gap dead letter.
    pub data: Vec<u8>,
    pub attributes: HashMap<String, String>,
}

const COLUMNS: &str = "fingerprint, event_id, record_type, record_id, base_version";

fn select_columns(d: Dialect) -> String {
    format!(
        "{COLUMNS}, {} AS event, message_id, data, {} AS attributes",
        d.text("event"),
        d.text("attributes")
    )
}

fn from_row(row: &sqlx::any::AnyRow) -> Result<PendingRow, StoreError> {
    let event: PendingEvent = serde_json::from_str(&get_text(row, "event")?)
        .map_err(|e| StoreError::Corrupt(format!("pending_events.event: {e}")))?;
    let attributes = serde_json::from_str(&get_text(row, "attributes")?)
        .map_err(|e| StoreError::Corrupt(format!("pending_events.attributes: {e}")))?;
    Ok(PendingRow {
        fingerprint: get_text(row, "fingerprint")?,
        event_id: get_text(row, "event_id")?,
        record_type: get_text(row, "record_type")?,
        record_id: get_text(row, "record_id")?,
        base_version: row.try_get("base_version")?,
        event,
        message_id: get_opt_text(row, "message_id")?,
        data: row.try_get("data")?,
        attributes,
    })
}

/// The pending events of `keys`, oldest base first. A row that cannot be
/// read is logged and left out (it stays pending and is reported as a gap)
/// rather than failing every merge of its record.
pub async fn load(
    conn: &mut AnyConnection,
    d: Dialect,
    keys: &[RecordKey],
) -> Result<Vec<PendingRow>, StoreError> {
    let mut out = Vec::new();
    for chunk in keys.chunks(100) {
        let mut q: QueryBuilder<Any> = QueryBuilder::new(format!(
            "SELECT {} FROM pending_events WHERE ",
            select_columns(d)
        ));
        super::ledger::push_records(&mut q, chunk);
        q.push(" ORDER BY base_version, received_at");
        for row in q.build().fetch_all(&mut *conn).await? {
            match from_row(&row) {
                Ok(p) => out.push(p),
                Err(e) => {
                    tracing::error!(error = %e, "A pending event cannot be read; it stays pending.")
                }
            }
        }
    }
    Ok(out)
}

pub async fn insert(conn: &mut AnyConnection, rows: &[PendingRow]) -> Result<(), StoreError> {
    let mut all = Vec::with_capacity(rows.len());
    for r in rows {
        let event = serde_json::to_string(&r.event)
            .map_err(|e| StoreError::Corrupt(format!("pending event: {e}")))?;
        let attrs = serde_json::to_string(&r.attributes)
            .map_err(|e| StoreError::Corrupt(format!("pending attributes: {e}")))?;
        all.push((r, (event, attrs)));
    }
    // Split by bytes too: a statement must fit `max_allowed_packet`.
    let size =
        |(r, (e, a)): &(&PendingRow, (String, String))| r.data.len() + e.len() + a.len() + 512;
    for chunk in super::ledger::statement_chunks(&all, 50, size) {
        let mut q: QueryBuilder<Any> = QueryBuilder::new(
            "INSERT INTO pending_events (fingerprint, event_id, record_type, record_id, \
             base_version, event, message_id, data, attributes) ",
        );
        q.push_values(chunk, |mut b, (r, (event, attrs))| {
            b.push_bind(r.fingerprint.clone())
                .push_bind(r.event_id.clone())
                .push_bind(r.record_type.clone())
                .push_bind(r.record_id.clone())
                .push_bind(r.base_version)
                .push_bind(event.clone())
                .push_bind(r.message_id.clone())
                .push_bind(r.data.clone())
                .push_bind(attrs.clone());
        });
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

pub async fn delete(conn: &mut AnyConnection, fingerprints: &[String]) -> Result<(), StoreError> {
    for chunk in fingerprints.chunks(400) {
        let mut q: QueryBuilder<Any> =
            QueryBuilder::new("DELETE FROM pending_events WHERE fingerprint IN (");
        let mut sep = q.separated(", ");
        for fp in chunk {
            sep.push_bind(fp.clone());
        }
        q.push(")");
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// A record whose gap outlived `merge.gap_timeout`.
#[derive(Debug, Clone)]
pub struct Gap {
    pub record_type: String,
    pub record_id: String,
    /// The oldest unreported pending event: its message is dead-lettered.
    pub oldest: PendingRow,
}

impl Store {
    /// Pending events in total (the `backbone_merge_pending` gauge).
    pub async fn pending_count(&self) -> Result<i64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pending_events")
            .fetch_one(self.pool())
            .await?;
        Ok(n)
    }

    /// Records with a pending event older than `older_than` that no gap
    /// dead letter has reported yet (at most `limit`).
    pub async fn open_gaps(
        &self,
        older_than: std::time::Duration,
        limit: i64,
    ) -> Result<Vec<Gap>, StoreError> {
        let d = self.dialect();
        let cutoff =
            Utc::now() - chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::zero());
        let sql = format!(
            "SELECT {} FROM pending_events WHERE gap_reported_at IS NULL AND received_at <= ? \
             ORDER BY received_at LIMIT ?",
            select_columns(d)
        );
        let rows = sqlx::query(&sql)
            .bind(d.ts_value(&cutoff))
            .bind(limit)
            .fetch_all(self.pool())
            .await?;
        let mut gaps: Vec<Gap> = Vec::new();
        for row in &rows {
            let p = match from_row(row) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "A pending event cannot be read.");
                    continue;
                }
            };
            if let Some(g) = gaps
                .iter_mut()
                .find(|g| g.record_type == p.record_type && g.record_id == p.record_id)
            {
                if p.base_version < g.oldest.base_version {
                    g.oldest = p;
                }
                continue;
            }
            gaps.push(Gap {
                record_type: p.record_type.clone(),
                record_id: p.record_id.clone(),
                oldest: p,
            });
        }
        Ok(gaps)
    }

    /// Claims the report of a record's gap: marks its unreported pending
    /// events; false when another replica claimed it first.
    pub async fn claim_gap(&self, record_type: &str, record_id: &str) -> Result<bool, StoreError> {
        let _guard = self.write_guard().await;
        let sql = format!(
            "UPDATE pending_events SET gap_reported_at = {} \
             WHERE record_type = ? AND record_id = ? AND gap_reported_at IS NULL",
            self.dialect().now()
        );
        let done = sqlx::query(&sql)
            .bind(record_type.to_string())
            .bind(record_id.to_string())
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Undoes [`Store::claim_gap`] when its dead letter could not be published.
    pub async fn unclaim_gap(&self, record_type: &str, record_id: &str) -> Result<(), StoreError> {
        let _guard = self.write_guard().await;
        sqlx::query(
            "UPDATE pending_events SET gap_reported_at = NULL \
             WHERE record_type = ? AND record_id = ?",
        )
        .bind(record_type.to_string())
        .bind(record_id.to_string())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// A record's merged version and how many of its events are pending
    /// (zeros when unknown), from its projection row.
    pub async fn record_progress(
        &self,
        record_type: &str,
        record_id: &str,
    ) -> Result<(i64, i64), StoreError> {
        let row: Option<(i64, i64)> = sqlx::query_as(
            "SELECT version, pending FROM record_state WHERE record_type = ? AND record_id = ?",
        )
        .bind(record_type.to_string())
        .bind(record_id.to_string())
        .fetch_optional(self.pool())
        .await?;
        Ok(row.unwrap_or_default())
    }
}
