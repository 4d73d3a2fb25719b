//! `merged_events`: every merged event by record and position, written in the
//! merge transaction. A delivery folds in the versions its target has not
//! acknowledged yet (SPEC §4.1), so it reads them back from here.
//!
//! Stored compact (SPEC §6.1, migration 0005): the payload leaves out what
//! the row's own columns say (`event_id`, `record_type`, `record_id`,
//! `version`) and what the producing event's row says (`origin`,
//! `base_version`, `timestamp`: `events` at the same record and
//! `sequence_num`); every read joins them back, so readers get the merged
//! event as published. Rows written before keep their full payload, which
//! reads the same.

use serde_json::{Map, Value};
use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, QueryBuilder, Row};

use super::{get_opt_text, get_text, Dialect, Store, StoreError};
use crate::model::merged_event::MergedEvent;

/// Keys of the merged event the stored payload leaves out.
const FROM_COLUMNS: [&str; 7] = [
    "event_id",
    "record_type",
    "record_id",
    "version",
    "origin",
    "base_version",
    "timestamp",
];

/// The stored form of a merged event's JSON (see the module documentation).
pub fn compact(payload: &str) -> Result<String, StoreError> {
    let mut m: Map<String, Value> = serde_json::from_str(payload)
        .map_err(|e| StoreError::Corrupt(format!("merged event to store: {e}")))?;
    for k in FROM_COLUMNS {
        m.remove(k);
    }
    Ok(Value::Object(m).to_string())
}

/// `SELECT` of merged events with what [`from_row`] needs, `m` being
/// `merged_events` and `e` its producing event; append `WHERE …`.
pub(super) fn select_sql(d: Dialect) -> String {
    format!(
        "SELECT m.record_type, m.record_id, m.sequence_num, m.version, m.event_id, \
         {} AS payload, e.source AS e_source, e.base_version AS e_base, {} AS e_ts \
         FROM merged_events m LEFT JOIN events e ON e.record_type = m.record_type \
         AND e.record_id = m.record_id AND e.sequence_num = m.sequence_num",
        d.text("m.payload"),
        d.ts("e.`timestamp`")
    )
}

/// A row of [`select_sql`], its payload the merged event as published.
pub(super) fn from_row(r: &AnyRow) -> Result<MergedRow, StoreError> {
    let mut row = MergedRow {
        record_type: get_text(r, "record_type")?,
        record_id: get_text(r, "record_id")?,
        sequence_num: r.try_get("sequence_num")?,
        version: r.try_get("version")?,
        event_id: get_text(r, "event_id")?,
        payload: get_text(r, "payload")?,
    };
    let corrupt = |what: String| {
        StoreError::Corrupt(format!(
            "merged event {}/{} at {}: {what}",
            row.record_type, row.record_id, row.sequence_num
        ))
    };
    let mut m: Map<String, Value> =
        serde_json::from_str(&row.payload).map_err(|e| corrupt(e.to_string()))?;
    if !m.contains_key("origin") {
        let (Some(source), Some(ts)) = (get_opt_text(r, "e_source")?, get_opt_text(r, "e_ts")?)
        else {
            return Err(corrupt("its event row is missing".into()));
        };
        let base: i64 = r.try_get::<Option<i64>, _>("e_base")?.unwrap_or(0);
        m.insert("origin".into(), Value::String(source));
        m.insert("base_version".into(), base.into());
        m.insert("timestamp".into(), Value::String(ts));
    }
    m.entry("event_id")
        .or_insert_with(|| row.event_id.clone().into());
    m.entry("record_type")
        .or_insert_with(|| row.record_type.clone().into());
    m.entry("record_id")
        .or_insert_with(|| row.record_id.clone().into());
    m.entry("version").or_insert_with(|| row.version.into());
    // Through the type, so the key order is the published one.
    let ev: MergedEvent =
        serde_json::from_value(Value::Object(m)).map_err(|e| corrupt(e.to_string()))?;
    row.payload = serde_json::to_string(&ev).map_err(|e| corrupt(e.to_string()))?;
    Ok(row)
}

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
    let stored: Vec<String> = rows
        .iter()
        .map(|r| compact(&r.payload))
        .collect::<Result<_, _>>()?;
    let rows: Vec<(&MergedRow, String)> = rows.iter().zip(stored).collect();
    // Split by bytes too: a statement must fit `max_allowed_packet`.
    for chunk in super::ledger::statement_chunks(&rows, 100, |(_, p)| p.len() + 512) {
        let mut q: QueryBuilder<Any> = QueryBuilder::new(
            "INSERT INTO merged_events (record_type, record_id, sequence_num, version, event_id, \
             payload) ",
        );
        q.push_values(chunk, |mut b, (r, payload)| {
            b.push_bind(r.record_type.clone())
                .push_bind(r.record_id.clone())
                .push_bind(r.sequence_num)
                .push_bind(r.version)
                .push_bind(r.event_id.clone())
                .push_bind(payload.clone());
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
            "{} WHERE m.record_type = ? AND m.record_id = ? \
             AND m.sequence_num > ? AND m.sequence_num < ? ORDER BY m.sequence_num",
            select_sql(self.dialect())
        );
        let rows = sqlx::query(&sql)
            .bind(record_type.to_string())
            .bind(record_id.to_string())
            .bind(after)
            .bind(before)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(|r| Ok(from_row(r)?.payload)).collect()
    }

    /// Every merged event, by record and position (`bench pipeline` checks
    /// each delivery against them).
    pub async fn merged_all(&self) -> Result<Vec<MergedRow>, StoreError> {
        let sql = format!(
            "{} ORDER BY m.record_type, m.record_id, m.sequence_num",
            select_sql(self.dialect())
        );
        let rows = sqlx::query(&sql).fetch_all(self.pool()).await?;
        rows.iter().map(from_row).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_leaves_out_what_the_rows_say() {
        let full = serde_json::json!({
            "event_id": "e1", "fingerprint": "f", "record_type": "project", "record_id": "42",
            "origin": "suitex", "version": 8, "base_version": 7,
            "timestamp": "2026-03-13T20:00:00.123456Z",
            "applied": {"name": "X"}, "conflicts": [],
        });
        let stored: Value = serde_json::from_str(&compact(&full.to_string()).unwrap()).unwrap();
        assert_eq!(
            stored,
            serde_json::json!({"fingerprint": "f", "applied": {"name": "X"}, "conflicts": []})
        );
        assert!(compact("not json").is_err());
    }
}
