//! `merged_events`: every merged event by record and position, written in the
//! merge transaction. A delivery folds in the versions its target has not
//! acknowledged yet (SPEC §4.1), so it reads them back from here.

use sqlx::{Any, AnyConnection, QueryBuilder, Row};

use super::{get_text, Store, StoreError};

/// One merged event as stored (the full payload, never a claim check).
#[derive(Debug, Clone)]
pub struct MergedRow {
    pub record_type: String,
    pub record_id: String,
    /// The producing event's `sequence_num` (unique per record).
    pub sequence_num: i64,
    pub version: i64,
    pub event_id: String,
    pub payload: String,
}

pub async fn insert(conn: &mut AnyConnection, rows: &[MergedRow]) -> Result<(), StoreError> {
    // Split by bytes too: a statement must fit `max_allowed_packet`.
    for chunk in super::ledger::statement_chunks(rows, 100, |r| r.payload.len() + 512) {
        let mut q: QueryBuilder<Any> = QueryBuilder::new(
            "INSERT INTO merged_events (record_type, record_id, sequence_num, version, event_id, \
             payload) ",
        );
        q.push_values(chunk, |mut b, r| {
            b.push_bind(r.record_type.clone())
                .push_bind(r.record_id.clone())
                .push_bind(r.sequence_num)
                .push_bind(r.version)
                .push_bind(r.event_id.clone())
                .push_bind(r.payload.clone());
        });
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

impl Store {
    /// The payloads of a record's merged events with `after < sequence_num <
    /// before`, in order.
    pub async fn merged_between(
        &self,
        record_type: &str,
        record_id: &str,
        after: i64,
        before: i64,
    ) -> Result<Vec<String>, StoreError> {
        let sql = format!(
            "SELECT {} AS payload FROM merged_events WHERE record_type = ? AND record_id = ? \
             AND sequence_num > ? AND sequence_num < ? ORDER BY sequence_num",
            self.dialect().text("payload")
        );
        let rows = sqlx::query(&sql)
            .bind(record_type.to_string())
            .bind(record_id.to_string())
            .bind(after)
            .bind(before)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(|r| get_text(r, "payload")).collect()
    }

    /// Every merged event, by record and position (`bench pipeline` checks
    /// each delivery against them).
    pub async fn merged_all(&self) -> Result<Vec<MergedRow>, StoreError> {
        let sql = format!(
            "SELECT record_type, record_id, sequence_num, version, event_id, {} AS payload \
             FROM merged_events ORDER BY record_type, record_id, sequence_num",
            self.dialect().text("payload")
        );
        let rows = sqlx::query(&sql).fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| {
                Ok(MergedRow {
                    record_type: get_text(r, "record_type")?,
                    record_id: get_text(r, "record_id")?,
                    sequence_num: r.try_get("sequence_num")?,
                    version: r.try_get("version")?,
                    event_id: get_text(r, "event_id")?,
                    payload: get_text(r, "payload")?,
                })
            })
            .collect()
    }

    /// The position of a merged event (for messages published before the
    /// position travelled as an attribute).
    pub async fn merged_position(
        &self,
        record_type: &str,
        record_id: &str,
        event_id: &str,
    ) -> Result<Option<i64>, StoreError> {
        let seq: Option<i64> = sqlx::query_scalar(
            "SELECT sequence_num FROM merged_events WHERE record_type = ? AND record_id = ? \
             AND event_id = ?",
        )
        .bind(record_type.to_string())
        .bind(record_id.to_string())
        .bind(event_id.to_string())
        .fetch_optional(self.pool())
        .await?;
        Ok(seq)
    }
}
