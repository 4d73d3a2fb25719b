//! Writes and reads of the immutable ledger (`events`, `event_audit_log`) and
//! the record-state projection, batched: one statement per table per batch.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{Any, AnyConnection, QueryBuilder, Row};

use super::{get_opt_text, get_text, parse_ts, Dialect, StoreError};
use crate::model::limits;
use crate::model::rules::RecordState;

/// Rows per multi-row statement: well under both backends' placeholder limits.
const CHUNK: usize = 400;

/// Splits `rows` into runs of at most `max_rows` rows whose bound values
/// add up to about [`limits::STATEMENT_MAX_BYTES`] at most (a run always
/// has one row), so a batch of large events never builds a statement
/// bigger than the server's `max_allowed_packet`.
pub fn statement_chunks<T>(rows: &[T], max_rows: usize, size: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let max_rows = max_rows.max(1);
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0usize);
    for (i, r) in rows.iter().enumerate() {
        let n = size(r);
        if i > start && (i - start >= max_rows || bytes + n > limits::STATEMENT_MAX_BYTES) {
            out.push(&rows[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += n;
    }
    if start < rows.len() {
        out.push(&rows[start..]);
    }
    out
}

/// One row of `events`.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub id: String,
    pub record_type: String,
    pub record_id: String,
    pub source: String,
    pub timestamp: DateTime<Utc>,
    pub base_version: i64,
    /// The changes as JSON text (resolved from the snapshot when there was one).
    pub changes: String,
    pub full_snapshot_ref: Option<String>,
    pub processed: bool,
    pub sequence_num: i64,
}

/// One row of `event_audit_log`.
#[derive(Debug, Clone)]
pub struct AuditRow {
    pub event_id: Option<String>,
    pub fingerprint: String,
    pub record_type: Option<String>,
    pub record_id: Option<String>,
    pub stage: String,
    pub outcome: String,
    /// JSON text.
    pub detail: Option<String>,
    pub message_id: Option<String>,
    pub attempt: i32,
    /// This row claims (fingerprint, stage): a second claim fails the unique key.
    pub claim: bool,
}

impl AuditRow {
    /// Cuts every text value to its column's width (on a char boundary):
    /// an audit row about a message that broke the limits must still be
    /// writable. The fingerprint is not touched (callers pass a real one).
    pub fn fit_columns(&mut self) {
        let fit = |v: &mut String, max: usize| {
            let n = limits::truncate_chars(v, max).len();
            v.truncate(n);
        };
        fit(&mut self.stage, limits::STAGE_MAX);
        fit(&mut self.outcome, limits::REASON_MAX);
        for (v, max) in [
            (&mut self.event_id, limits::EVENT_ID_LEN),
            (&mut self.record_type, limits::RECORD_TYPE_MAX),
            (&mut self.record_id, limits::RECORD_ID_MAX),
            (&mut self.message_id, limits::MESSAGE_ID_MAX),
        ] {
            if let Some(v) = v {
                fit(v, max);
            }
        }
    }
}

/// A record's projection row.
#[derive(Debug, Clone, Default)]
pub struct StateRow {
    pub version: i64,
    pub last_seq: i64,
    pub state: RecordState,
    /// Events of the record waiting in `pending_events`.
    pub pending: i64,
}

pub type RecordKey = (String, String);

/// Which of `fingerprints` are already claimed for `stage`.
pub async fn claimed(
    conn: &mut AnyConnection,
    stage: &str,
    fingerprints: &[&str],
) -> Result<HashSet<String>, StoreError> {
    let mut out = HashSet::new();
    for chunk in fingerprints.chunks(CHUNK) {
        let mut q: QueryBuilder<Any> = QueryBuilder::new(
            "SELECT fingerprint FROM event_audit_log WHERE claim = 1 AND stage = ",
        );
        q.push_bind(stage.to_string());
        q.push(" AND fingerprint IN (");
        let mut sep = q.separated(", ");
        for fp in chunk {
            sep.push_bind(fp.to_string());
        }
        q.push(")");
        for row in q.build().fetch_all(&mut *conn).await? {
            out.insert(get_text(&row, "fingerprint")?);
        }
    }
    Ok(out)
}

/// Which of `ids` already exist in `events` or wait in `pending_events`.
pub async fn existing_event_ids(
    conn: &mut AnyConnection,
    ids: &[&str],
) -> Result<HashSet<String>, StoreError> {
    let mut out = HashSet::new();
    for chunk in ids.chunks(CHUNK / 2) {
        let mut q: QueryBuilder<Any> = QueryBuilder::new("SELECT id FROM events WHERE id IN (");
        let mut sep = q.separated(", ");
        for id in chunk {
            sep.push_bind(id.to_string());
        }
        q.push(") UNION SELECT event_id AS id FROM pending_events WHERE event_id IN (");
        let mut sep = q.separated(", ");
        for id in chunk {
            sep.push_bind(id.to_string());
        }
        q.push(")");
        for row in q.build().fetch_all(&mut *conn).await? {
            out.insert(get_text(&row, "id")?);
        }
    }
    Ok(out)
}

/// Appends `(record_type = ? AND record_id = ?) OR …` for `keys`.
pub(super) fn push_records(q: &mut QueryBuilder<'_, Any>, keys: &[RecordKey]) {
    for (i, (t, id)) in keys.iter().enumerate() {
        if i > 0 {
            q.push(" OR ");
        }
        q.push("(record_type = ");
        q.push_bind(t.clone());
        q.push(" AND record_id = ");
        q.push_bind(id.clone());
        q.push(")");
    }
}

/// Loads the projection rows of `keys`; with `lock`, MySQL locks them until
/// the transaction ends so replicas serialise per record.
pub async fn load_states(
    conn: &mut AnyConnection,
    d: Dialect,
    keys: &[RecordKey],
    lock: bool,
) -> Result<HashMap<RecordKey, StateRow>, StoreError> {
    let mut out = HashMap::new();
    for chunk in keys.chunks(CHUNK / 2) {
        let mut q: QueryBuilder<Any> = QueryBuilder::new(format!(
            "SELECT s.record_type, s.record_id, s.version, s.last_seq, s.pending, {} AS state FROM ",
            d.text("s.state")
        ));
        if lock && matches!(d.0, super::Backend::Mysql) {
            // Locking reads lock every row they scan. With few record types
            // the optimizer may answer an OR of (type, id) pairs by scanning
            // the whole type, which locks every record of it and serialises
            // all merge workers and replicas; a join on a derived list of
            // keys looks each one up by primary key and locks only those.
            q.push("(");
            for (i, (t, id)) in chunk.iter().enumerate() {
                q.push(if i == 0 {
                    "SELECT "
                } else {
                    " UNION ALL SELECT "
                });
                q.push_bind(t.clone());
                q.push(" AS t, ");
                q.push_bind(id.clone());
                q.push(" AS i");
            }
            q.push(") k JOIN record_state s ON s.record_type = k.t AND s.record_id = k.i");
            q.push(d.for_update());
        } else {
            q.push("record_state s WHERE ");
            push_records(&mut q, chunk);
        }
        for row in q.build().fetch_all(&mut *conn).await? {
            let key = (get_text(&row, "record_type")?, get_text(&row, "record_id")?);
            let state: RecordState = serde_json::from_str(&get_text(&row, "state")?)
                .map_err(|e| StoreError::Corrupt(format!("record_state.state: {e}")))?;
            out.insert(
                key,
                StateRow {
                    version: row.try_get("version")?,
                    last_seq: row.try_get("last_seq")?,
                    state,
                    pending: row.try_get("pending")?,
                },
            );
        }
    }
    Ok(out)
}

pub async fn insert_events(
    conn: &mut AnyConnection,
    d: Dialect,
    rows: &[EventRow],
) -> Result<(), StoreError> {
    insert_events_chunked(conn, d, rows, CHUNK / 4).await
}

/// [`insert_events`] with `per_statement` rows per INSERT (bulk loaders).
pub async fn insert_events_chunked(
    conn: &mut AnyConnection,
    d: Dialect,
    rows: &[EventRow],
    per_statement: usize,
) -> Result<(), StoreError> {
    let size = |r: &EventRow| {
        r.changes.len() + r.record_id.len() + r.full_snapshot_ref.as_ref().map_or(0, String::len)
    };
    for chunk in statement_chunks(rows, per_statement, size) {
        let mut q: QueryBuilder<Any> = QueryBuilder::new(
            "INSERT INTO events (id, record_type, record_id, source, `timestamp`, base_version, \
             changes, full_snapshot_ref, processed, sequence_num) ",
        );
        q.push_values(chunk, |mut b, r| {
            b.push_bind(r.id.clone())
                .push_bind(r.record_type.clone())
                .push_bind(r.record_id.clone())
                .push_bind(r.source.clone())
                .push_bind(d.ts_value(&r.timestamp))
                .push_bind(r.base_version)
                .push_bind(r.changes.clone())
                .push_bind(r.full_snapshot_ref.clone())
                .push_bind(i64::from(r.processed))
                .push_bind(r.sequence_num);
        });
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

pub async fn insert_audit(conn: &mut AnyConnection, rows: &[AuditRow]) -> Result<(), StoreError> {
    insert_audit_chunked(conn, rows, CHUNK / 4).await
}

/// [`insert_audit`] with `per_statement` rows per INSERT (bulk loaders).
pub async fn insert_audit_chunked(
    conn: &mut AnyConnection,
    rows: &[AuditRow],
    per_statement: usize,
) -> Result<(), StoreError> {
    let size = |r: &AuditRow| r.detail.as_ref().map_or(0, String::len) + 256;
    for chunk in statement_chunks(rows, per_statement, size) {
        let mut q: QueryBuilder<Any> = QueryBuilder::new(
            "INSERT INTO event_audit_log (event_id, fingerprint, record_type, record_id, stage, \
             processing_outcome, detail, message_id, attempt, claim) ",
        );
        q.push_values(chunk, |mut b, r| {
            b.push_bind(r.event_id.clone())
                .push_bind(r.fingerprint.clone())
                .push_bind(r.record_type.clone())
                .push_bind(r.record_id.clone())
                .push_bind(r.stage.clone())
                .push_bind(r.outcome.clone())
                .push_bind(r.detail.clone())
                .push_bind(r.message_id.clone())
                .push_bind(r.attempt)
                .push_bind(r.claim.then_some(1i32));
        });
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Writes the projection rows of a batch (insert or overwrite).
pub async fn upsert_states(
    conn: &mut AnyConnection,
    d: Dialect,
    rows: &[(RecordKey, StateRow)],
) -> Result<(), StoreError> {
    let mut encoded = Vec::with_capacity(rows.len());
    for (key, s) in rows {
        let json = serde_json::to_string(&s.state)
            .map_err(|e| StoreError::Corrupt(format!("state not serialisable: {e}")))?;
        encoded.push((key, s, json));
    }
    for chunk in statement_chunks(&encoded, CHUNK / 5, |(_, _, json)| json.len()) {
        let mut q: QueryBuilder<Any> = QueryBuilder::new(
            "INSERT INTO record_state (record_type, record_id, version, last_seq, state, pending) ",
        );
        q.push_values(chunk, |mut b, ((t, id), s, json)| {
            b.push_bind(t.clone())
                .push_bind(id.clone())
                .push_bind(s.version)
                .push_bind(s.last_seq)
                .push_bind(json.clone())
                .push_bind(s.pending);
        });
        q.push(match d.0 {
            super::Backend::Mysql => {
                " ON DUPLICATE KEY UPDATE version = VALUES(version), last_seq = VALUES(last_seq), \
                 state = VALUES(state), pending = VALUES(pending)"
            }
            super::Backend::Sqlite => {
                " ON CONFLICT (record_type, record_id) DO UPDATE SET version = excluded.version, \
                 last_seq = excluded.last_seq, state = excluded.state, pending = excluded.pending, \
                 updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
            }
        });
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// A stored event as read back by history queries (and archived as such).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StoredEvent {
    pub id: String,
    pub record_type: String,
    pub record_id: String,
    pub source: String,
    pub timestamp: String,
    pub base_version: i64,
    pub changes: serde_json::Value,
    pub full_snapshot_ref: Option<String>,
    pub processed: bool,
    pub sequence_num: i64,
    pub created_at: String,
}

/// The columns of `events` in the shape `StoredEvent::from_row` reads.
pub fn event_columns(d: Dialect) -> String {
    format!(
        "id, record_type, record_id, source, {} AS ts, base_version, {} AS changes, \
         full_snapshot_ref, {} AS processed_i, sequence_num, {} AS created",
        d.ts("`timestamp`"),
        d.text("changes"),
        d.int("processed"),
        d.ts("created_at")
    )
}

impl StoredEvent {
    pub fn from_row(row: &sqlx::any::AnyRow) -> Result<Self, StoreError> {
        let changes_text = get_text(row, "changes")?;
        Ok(StoredEvent {
            id: get_text(row, "id")?,
            record_type: get_text(row, "record_type")?,
            record_id: get_text(row, "record_id")?,
            source: get_text(row, "source")?,
            timestamp: get_text(row, "ts")?,
            base_version: row.try_get("base_version")?,
            changes: serde_json::from_str(&changes_text)
                .map_err(|e| StoreError::Corrupt(format!("events.changes: {e}")))?,
            full_snapshot_ref: get_opt_text(row, "full_snapshot_ref")?,
            processed: row.try_get::<i64, _>("processed_i")? != 0,
            sequence_num: row.try_get("sequence_num")?,
            created_at: get_text(row, "created")?,
        })
    }

    pub fn timestamp_utc(&self) -> Result<DateTime<Utc>, StoreError> {
        parse_ts(&self.timestamp)
    }
}

/// Events of one record in sequence order (up to `to_seq` when given).
pub async fn record_events(
    conn: &mut AnyConnection,
    d: Dialect,
    record_type: &str,
    record_id: &str,
    to_seq: Option<i64>,
) -> Result<Vec<StoredEvent>, StoreError> {
    let sql = format!(
        "SELECT {} FROM events WHERE record_type = ? AND record_id = ? AND sequence_num <= ? \
         ORDER BY sequence_num",
        event_columns(d)
    );
    let rows = sqlx::query(&sql)
        .bind(record_type.to_string())
        .bind(record_id.to_string())
        .bind(to_seq.unwrap_or(i64::MAX))
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(StoredEvent::from_row).collect()
}

/// The live projection of one record, if any.
pub async fn record_state(
    conn: &mut AnyConnection,
    d: Dialect,
    record_type: &str,
    record_id: &str,
) -> Result<Option<StateRow>, StoreError> {
    let key = (record_type.to_string(), record_id.to_string());
    let mut m = load_states(conn, d, std::slice::from_ref(&key), false).await?;
    Ok(m.remove(&key))
}

/// How many events have `record_type`.
pub async fn count_events_of_type(
    conn: &mut AnyConnection,
    record_type: &str,
) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE record_type = ?")
            .bind(record_type.to_string())
            .fetch_one(&mut *conn)
            .await?,
    )
}

/// The record type of some event whose type is not `record_type`, if there
/// is one. Two ranges rather than `<>` so both backends seek the
/// `(record_type, …)` index instead of scanning `record_type`'s own rows.
pub async fn other_record_type(
    conn: &mut AnyConnection,
    record_type: &str,
) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT record_type FROM events WHERE record_type < ? OR record_type > ? LIMIT 1",
    )
    .bind(record_type.to_string())
    .bind(record_type.to_string())
    .fetch_optional(&mut *conn)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_chunks_bound_rows_and_bytes() {
        let rows: Vec<usize> = vec![1; 10];
        let c = statement_chunks(&rows, 4, |n| *n);
        assert_eq!(c.iter().map(|c| c.len()).collect::<Vec<_>>(), [4, 4, 2]);
        let big = limits::STATEMENT_MAX_BYTES / 2 + 1;
        let rows = vec![big, big, 1, big, limits::STATEMENT_MAX_BYTES * 3];
        let c = statement_chunks(&rows, 100, |n| *n);
        // A row over the budget still goes, alone.
        assert_eq!(c.iter().map(|c| c.len()).collect::<Vec<_>>(), [1, 2, 1, 1]);
        assert!(statement_chunks(&[] as &[usize], 4, |n| *n).is_empty());
    }
}
