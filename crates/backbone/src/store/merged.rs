//! `merged_events`: every merged event by record and position, written in the
//! merge transaction. A delivery folds in the versions its target has not
//! acknowledged yet (docs/spec.md §4.1), so it reads them back from here.
//!
//! Stored as what nothing else holds (docs/spec.md §6.1): the payload leaves out
//! - what the row's own columns say (`event_id`, `record_type`, `record_id`,
//!   `version`);
//! - what the producing event's row says (`events` at the same record and
//!   `sequence_num`: `origin`, `base_version`, `timestamp`, and `applied`
//!   when it is the event's `changes`, or only the names of the applied
//!   fields when their values are the event's);
//! - `fingerprint`, which the event's merge claim in the audit log holds;
//! - `conflicts` when there are none.
//!
//! A merged event with no conflict is stored as `{}`. Every read joins the
//! rest back, so readers get the merged event as published. Rows written
//! before (migration 0005's compact form, with `fingerprint`, or the full
//! payload, with `origin`) read the same.

use std::collections::HashMap;

use serde_json::{Map, Value};
use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, QueryBuilder, Row};

use super::ledger::EventRow;
use super::{get_opt_text, get_text, Dialect, Store, StoreError};
use crate::model::merged_event::MergedEvent;

/// Keys of the merged event the stored payload leaves out.
const FROM_COLUMNS: [&str; 8] = [
    "event_id",
    "record_type",
    "record_id",
    "version",
    "origin",
    "base_version",
    "timestamp",
    "fingerprint",
];

/// The stage whose claim row holds an event's fingerprint.
const MERGE_STAGE: &str = crate::topology::StageName::Merge.as_str();

/// The stored form of a merged event's JSON (see the module documentation);
/// `changes` are its event's as stored in `events` (unknown: `applied` is
/// kept whole).
pub fn compact(payload: &str, changes: Option<&str>) -> Result<String, StoreError> {
    let mut m: Map<String, Value> = serde_json::from_str(payload)
        .map_err(|e| StoreError::Corrupt(format!("merged event to store: {e}")))?;
    for k in FROM_COLUMNS {
        m.remove(k);
    }
    if m.get("conflicts")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
    {
        m.remove("conflicts");
    }
    let changes: Option<Map<String, Value>> = changes.and_then(|c| serde_json::from_str(c).ok());
    if let (Some(Value::Object(applied)), Some(changes)) = (m.get("applied"), changes) {
        if *applied == changes {
            m.remove("applied");
        } else if applied.iter().all(|(k, v)| changes.get(k) == Some(v)) {
            let names = applied.keys().cloned().map(Value::String).collect();
            m.insert("applied".into(), Value::Array(names));
        }
    }
    Ok(Value::Object(m).to_string())
}

/// `SELECT` of merged events with what [`from_row`] needs, `m` being
/// `merged_events` and `e` its producing event; append `WHERE …`.
pub fn select_sql(d: Dialect) -> String {
    format!(
        "SELECT m.record_type, m.record_id, m.sequence_num, m.version, m.event_id, \
         {} AS payload, e.source AS e_source, e.base_version AS e_base, {} AS e_ts, \
         {} AS e_changes, (SELECT MIN(a.fingerprint) FROM event_audit_log a \
         WHERE a.event_id = m.event_id AND a.stage = '{MERGE_STAGE}' AND a.claim = 1) AS a_fp \
         FROM merged_events m LEFT JOIN events e ON e.record_type = m.record_type \
         AND e.record_id = m.record_id AND e.sequence_num = m.sequence_num",
        d.text("m.payload"),
        d.ts("e.`timestamp`"),
        d.text("e.changes"),
    )
}

/// A row of [`select_sql`], its payload the merged event as published.
pub fn from_row(r: &AnyRow) -> Result<MergedRow, StoreError> {
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
    if !m.contains_key("fingerprint") {
        let fp = get_opt_text(r, "a_fp")?
            .ok_or_else(|| corrupt("the merge claim of its event is missing".into()))?;
        m.insert("fingerprint".into(), Value::String(fp));
    }
    let applied = match m.remove("applied") {
        Some(Value::Object(a)) => a,
        stored => {
            let text = get_opt_text(r, "e_changes")?
                .ok_or_else(|| corrupt("its event row is missing".into()))?;
            let changes: Map<String, Value> =
                serde_json::from_str(&text).map_err(|e| corrupt(format!("its changes: {e}")))?;
            match stored {
                None => changes,
                Some(Value::Array(names)) => pick(&changes, &names).map_err(corrupt)?,
                Some(other) => return Err(corrupt(format!("stored applied {other}"))),
            }
        }
    };
    m.insert("applied".into(), Value::Object(applied));
    m.entry("conflicts")
        .or_insert_with(|| Value::Array(Vec::new()));
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

/// The named fields of `changes`, each of which must be there.
fn pick(changes: &Map<String, Value>, names: &[Value]) -> Result<Map<String, Value>, String> {
    names
        .iter()
        .map(|n| {
            let name = n
                .as_str()
                .ok_or_else(|| format!("applied field name {n}"))?;
            let v = changes
                .get(name)
                .ok_or_else(|| format!("applied field {name} is not in its changes"))?;
            Ok((name.to_string(), v.clone()))
        })
        .collect()
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

/// Inserts merged events; `events` are the rows of their producing events
/// where the caller has them (written in the same transaction), so that the
/// stored form can leave out what they say.
pub async fn insert(
    conn: &mut AnyConnection,
    rows: &[MergedRow],
    events: &[EventRow],
) -> Result<(), StoreError> {
    let changes: HashMap<&str, &str> = events
        .iter()
        .map(|e| (e.id.as_str(), e.changes.as_str()))
        .collect();
    let stored: Vec<String> = rows
        .iter()
        .map(|r| compact(&r.payload, changes.get(r.event_id.as_str()).copied()))
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

    /// The merged events of a record after position `after`, in order, at
    /// most `limit`: what a target that acknowledged `after` has not been
    /// sent (docs/spec.md §4.1), up to the newest in the store.
    pub async fn merged_after(
        &self,
        record_type: &str,
        record_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<MergedRow>, StoreError> {
        let sql = format!(
            "{} WHERE m.record_type = ? AND m.record_id = ? \
             AND m.sequence_num > ? ORDER BY m.sequence_num LIMIT ?",
            select_sql(self.dialect())
        );
        let rows = sqlx::query(&sql)
            .bind(record_type.to_string())
            .bind(record_id.to_string())
            .bind(after)
            .bind(limit)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(from_row).collect()
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

    fn full(applied: Value, conflicts: Value) -> String {
        serde_json::json!({
            "event_id": "e1", "fingerprint": "f", "record_type": "project", "record_id": "42",
            "origin": "suitex", "version": 8, "base_version": 7,
            "timestamp": "2026-03-13T20:00:00.123456Z",
            "applied": applied, "conflicts": conflicts,
        })
        .to_string()
    }

    fn stored(payload: &str, changes: Option<&str>) -> Value {
        serde_json::from_str(&compact(payload, changes).unwrap()).unwrap()
    }

    #[test]
    fn compact_leaves_out_what_the_rows_and_the_claim_say() {
        let p = full(
            serde_json::json!({"name": "X", "n": 1}),
            serde_json::json!([]),
        );
        // Applied is the event's changes: nothing is left.
        assert_eq!(
            stored(&p, Some(r#"{"n":1,"name":"X"}"#)),
            serde_json::json!({})
        );
        // Changes unknown: applied is kept whole.
        assert_eq!(
            stored(&p, None),
            serde_json::json!({"applied": {"name": "X", "n": 1}})
        );
        assert!(compact("not json", None).is_err());
    }

    #[test]
    fn compact_keeps_names_of_a_subset_and_values_that_differ() {
        let conflict = serde_json::json!([{"field": "status", "incoming": "open",
            "kept": "closed", "winner": "netsuite", "rule": "last_writer_wins"}]);
        let p = full(serde_json::json!({"name": "X"}), conflict.clone());
        let changes = r#"{"name":"X","status":"open"}"#;
        assert_eq!(
            stored(&p, Some(changes)),
            serde_json::json!({"applied": ["name"], "conflicts": conflict})
        );
        // A value that is not the event's is kept as it is.
        let p = full(serde_json::json!({"name": "Y"}), serde_json::json!([]));
        assert_eq!(
            stored(&p, Some(changes)),
            serde_json::json!({"applied": {"name": "Y"}})
        );
    }

    #[test]
    fn pick_takes_named_fields_and_refuses_a_missing_one() {
        let changes: Map<String, Value> =
            serde_json::from_str(r#"{"a":1,"b":null,"c":[2]}"#).unwrap();
        let got = pick(&changes, &[Value::from("b"), Value::from("c")]).unwrap();
        assert_eq!(Value::Object(got), serde_json::json!({"b": null, "c": [2]}));
        assert!(pick(&changes, &[Value::from("z")]).is_err());
        assert!(pick(&changes, &[Value::from(1)]).is_err());
    }
}
