//! Reads for history (`events list|replay`, `verify`, the admin record
//! endpoints): a record's events and audit rows, and the record keys
//! `verify` walks.
//!
//! Every single-record query is an index range on `idx_events_aggregate`
//! (record_type, record_id, sequence_num) or on the audit log's
//! `idx_audit_record` (record_type, record_id, event_id): cost grows
//! with the page, never with the table.

use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, QueryBuilder};

use super::audit::{audit_columns, AuditFact};
use super::ledger::{self, event_columns, RecordKey, StateRow, StoredEvent};
use super::{get_text, Backend, Dialect, Store, StoreError};

/// Which of a record's events a page holds.
#[derive(Debug, Clone, Default)]
pub struct EventPageQuery<'a> {
    /// Rows to read.
    pub limit: i64,
    /// Only events with `sequence_num < before_seq`.
    pub before_seq: Option<i64>,
    pub source: Option<&'a str>,
    /// Event timestamp ≥ since (inclusive).
    pub since: Option<&'a DateTime<Utc>>,
    /// Event timestamp < until (exclusive).
    pub until: Option<&'a DateTime<Utc>>,
}

/// A record's projection, its stored events and its archive checkpoint.
pub type RecordWithProjection = (
    Option<StateRow>,
    Vec<StoredEvent>,
    Option<super::archive::Checkpoint>,
);

/// One pooled connection for the several reads of one history page.
pub struct HistoryReader {
    conn: PoolConnection<Any>,
    dialect: Dialect,
}

impl Store {
    /// A connection for [`HistoryReader`]'s reads.
    pub async fn history_reader(&self) -> Result<HistoryReader, StoreError> {
        Ok(HistoryReader {
            conn: self.pool().acquire().await?,
            dialect: self.dialect(),
        })
    }

    /// Events of one record in sequence order (up to `to_seq` when given).
    pub async fn record_events(
        &self,
        record_type: &str,
        record_id: &str,
        to_seq: Option<i64>,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut conn = self.pool().acquire().await?;
        ledger::record_events(&mut conn, self.dialect(), record_type, record_id, to_seq).await
    }

    /// A record's projection, its events and its checkpoint, read in one transaction so a
    /// record the daemon is writing meanwhile is seen consistently (event
    /// rows and projection commit together).
    pub async fn record_with_projection(
        &self,
        record_type: &str,
        record_id: &str,
    ) -> Result<RecordWithProjection, StoreError> {
        let d = self.dialect();
        let mut tx = self.pool().begin().await?;
        let projection = ledger::record_state(&mut tx, d, record_type, record_id).await?;
        let events = ledger::record_events(&mut tx, d, record_type, record_id, None).await?;
        let checkpoint = super::archive::checkpoint(&mut tx, d, record_type, record_id).await?;
        tx.commit().await?;
        Ok((projection, events, checkpoint))
    }

    /// Up to `page` distinct record keys in the event store after `after`, in
    /// index order (a loose scan of `idx_events_aggregate`).
    pub async fn event_record_keys(
        &self,
        record_type: Option<&str>,
        after: Option<&RecordKey>,
        page: i64,
    ) -> Result<Vec<RecordKey>, StoreError> {
        let mut q: QueryBuilder<Any> =
            QueryBuilder::new("SELECT record_type, record_id FROM events WHERE 1 = 1");
        if let Some(t) = record_type {
            q.push(" AND record_type = ");
            q.push_bind(t.to_string());
        }
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
        let rows = q.build().fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| Ok((get_text(r, "record_type")?, get_text(r, "record_id")?)))
            .collect()
    }

    /// Projection rows of records that have no events at all.
    pub async fn orphan_projections(
        &self,
        record_type: Option<&str>,
    ) -> Result<Vec<RecordKey>, StoreError> {
        let mut q: QueryBuilder<Any> = QueryBuilder::new(
            // An anti-join: both backends probe idx_events_aggregate per projection
            // row (MariaDB materialises the whole index for the NOT EXISTS form).
            "SELECT s.record_type, s.record_id FROM record_state s LEFT JOIN events e \
             ON e.record_type = s.record_type AND e.record_id = s.record_id WHERE e.record_id IS NULL",
        );
        if let Some(t) = record_type {
            q.push(" AND s.record_type = ");
            q.push_bind(t.to_string());
        }
        let rows = q.build().fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| Ok((get_text(r, "record_type")?, get_text(r, "record_id")?)))
            .collect()
    }
}

impl HistoryReader {
    /// A record's events newest first, filtered by `q`.
    pub async fn events_newest_first(
        &mut self,
        (record_type, record_id): (&str, &str),
        q: &EventPageQuery<'_>,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let d = self.dialect;
        let mut sql: QueryBuilder<Any> = QueryBuilder::new(format!(
            "SELECT {} FROM events WHERE record_type = ",
            event_columns(d)
        ));
        sql.push_bind(record_type.to_string());
        sql.push(" AND record_id = ");
        sql.push_bind(record_id.to_string());
        if let Some(s) = q.before_seq {
            sql.push(" AND sequence_num < ");
            sql.push_bind(s);
        }
        if let Some(s) = q.source {
            sql.push(" AND source = ");
            sql.push_bind(s.to_string());
        }
        if let Some(t) = q.since {
            sql.push(" AND `timestamp` >= ");
            sql.push_bind(d.ts_value(t));
        }
        if let Some(t) = q.until {
            sql.push(" AND `timestamp` < ");
            sql.push_bind(d.ts_value(t));
        }
        sql.push(" ORDER BY sequence_num DESC LIMIT ");
        sql.push_bind(q.limit);
        let rows = sql.build().fetch_all(&mut *self.conn).await?;
        rows.iter().map(StoredEvent::from_row).collect()
    }

    /// The record's audit rows naming one of `event_ids`.
    pub async fn audit_of_events(
        &mut self,
        record: (&str, &str),
        event_ids: &[&str],
    ) -> Result<Vec<AuditFact>, StoreError> {
        audit_rows(&mut self.conn, self.dialect, record, event_ids, false).await
    }

    /// The record's audit rows naming no event whose fingerprint is one of
    /// `fingerprints` (duplicates, failed executions).
    pub async fn audit_of_fingerprints(
        &mut self,
        record: (&str, &str),
        fingerprints: &[&str],
    ) -> Result<Vec<AuditFact>, StoreError> {
        audit_rows(&mut self.conn, self.dialect, record, fingerprints, true).await
    }
}

/// Audit rows of one record: those naming one of `values` as event id, or
/// (with `by_fingerprint`) those naming no event whose fingerprint is listed.
///
/// Both are ranges of `idx_audit_record`. MySQL is told to ignore the
/// indexes led by event id and fingerprint: with a long IN list its range optimizer would
/// otherwise probe each of them once per value to estimate costs, and those
/// probes land on random, usually cold, pages.
async fn audit_rows(
    conn: &mut AnyConnection,
    d: Dialect,
    (record_type, record_id): (&str, &str),
    values: &[&str],
    by_fingerprint: bool,
) -> Result<Vec<AuditFact>, StoreError> {
    if values.is_empty() {
        return Ok(Vec::new());
    }
    let hint = match d.0 {
        Backend::Mysql => " IGNORE INDEX (idx_audit_event, idx_audit_fingerprint)",
        Backend::Sqlite => "",
    };
    let mut q: QueryBuilder<Any> = QueryBuilder::new(format!(
        "SELECT {} FROM event_audit_log{hint} WHERE record_type = ",
        audit_columns(d)
    ));
    q.push_bind(record_type.to_string());
    q.push(" AND record_id = ");
    q.push_bind(record_id.to_string());
    q.push(if by_fingerprint {
        " AND event_id IS NULL AND fingerprint IN ("
    } else {
        " AND event_id IN ("
    });
    let mut sep = q.separated(", ");
    for v in values {
        sep.push_bind(v.to_string());
    }
    q.push(")");
    let rows = q.build().fetch_all(&mut *conn).await?;
    rows.iter().map(AuditFact::from_row).collect()
}
