//! Reads (and the one audit write) the MCP tools need that no other reader
//! asks for: a record's events filtered by outcome and keyword with a total
//! count and an offset, the catalogue of record types and sources, recent
//! delivery outcomes, a summary of pending events, and the audit row that
//! names who wrote through MCP.
//!
//! Every per-record query is a range of `idx_events_aggregate` or
//! `idx_audit_record_event`; the catalogue scans (it is asked rarely and
//! says so in its tool description).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::{Any, QueryBuilder, Row};

use super::ledger::{self, event_columns, AuditRow, StoredEvent};
use super::{get_text, Dialect, Store, StoreError};
use crate::model::rules::RecordState;

/// Filters and paging of a record's events, newest first.
#[derive(Debug, Clone, Default)]
pub struct EventFilter<'a> {
    pub source: Option<&'a str>,
    /// Events with an audit row of this outcome (any stage), directly or
    /// through their fingerprint (a duplicate's row names no event).
    pub outcome: Option<&'a str>,
    /// Event timestamp ≥ since.
    pub since: Option<&'a DateTime<Utc>>,
    /// Event timestamp < until.
    pub until: Option<&'a DateTime<Utc>>,
    /// Substring of the changes' JSON text, ASCII case-insensitive.
    pub keyword: Option<&'a str>,
    pub limit: i64,
    pub offset: i64,
}

/// Escapes LIKE's wildcards with `!` (an ESCAPE both dialects accept).
fn like_pattern(keyword: &str) -> String {
    let mut p = String::with_capacity(keyword.len() + 2);
    p.push('%');
    for c in keyword.to_lowercase().chars() {
        if matches!(c, '!' | '%' | '_') {
            p.push('!');
        }
        p.push(c);
    }
    p.push('%');
    p
}

fn push_filter(
    q: &mut QueryBuilder<'_, Any>,
    d: Dialect,
    (record_type, record_id): (&str, &str),
    f: &EventFilter<'_>,
) {
    q.push(" WHERE record_type = ");
    q.push_bind(record_type.to_string());
    q.push(" AND record_id = ");
    q.push_bind(record_id.to_string());
    if let Some(s) = f.source {
        q.push(" AND source = ");
        q.push_bind(s.to_string());
    }
    if let Some(t) = f.since {
        q.push(" AND `timestamp` >= ");
        q.push_bind(d.ts_value(t));
    }
    if let Some(t) = f.until {
        q.push(" AND `timestamp` < ");
        q.push_bind(d.ts_value(t));
    }
    if let Some(k) = f.keyword {
        // LOWER on both sides: MySQL's binary collation and SQLite's ASCII
        // folding would otherwise disagree on case.
        q.push(format!(" AND LOWER({}) LIKE ", d.text("changes")));
        q.push_bind(like_pattern(k));
        q.push(" ESCAPE '!'");
    }
    if let Some(o) = f.outcome {
        q.push(" AND id IN (SELECT c.event_id FROM event_audit_log c WHERE c.record_type = ");
        q.push_bind(record_type.to_string());
        q.push(" AND c.record_id = ");
        q.push_bind(record_id.to_string());
        q.push(" AND c.event_id IS NOT NULL AND (c.processing_outcome = ");
        q.push_bind(o.to_string());
        q.push(
            " OR EXISTS (SELECT 1 FROM event_audit_log x WHERE x.record_type = c.record_type \
             AND x.record_id = c.record_id AND x.event_id IS NULL AND x.fingerprint = c.fingerprint \
             AND x.processing_outcome = ",
        );
        q.push_bind(o.to_string());
        q.push(")))");
    }
}

/// One row of the type catalogue.
#[derive(Debug, Clone)]
pub struct TypeSourceCount {
    pub record_type: String,
    pub source: String,
    pub events: i64,
}

/// A record with pending events (docs/spec.md §4.1).
#[derive(Debug, Clone)]
pub struct PendingRecord {
    pub record_type: String,
    pub record_id: String,
    pub pending: i64,
    /// The lowest base version waiting: the record's missing version is
    /// below it.
    pub lowest_base_version: i64,
    pub oldest_received_at: String,
    /// A gap dead letter was written for it.
    pub gap_reported: bool,
}

/// One recent audit row of a delivery stage.
#[derive(Debug, Clone)]
pub struct RecentOutcome {
    pub stage: String,
    pub outcome: String,
    pub at: String,
}

impl Store {
    /// A record's events newest first, filtered, with how many match in all.
    pub async fn filtered_events(
        &self,
        record: (&str, &str),
        f: &EventFilter<'_>,
    ) -> Result<(Vec<StoredEvent>, i64), StoreError> {
        let d = self.dialect();
        let mut conn = self.pool().acquire().await?;
        // Counted first: an event committed between the two reads then
        // shows in the page, and the total is raised to cover it (the other
        // order could answer a total with an empty page).
        let mut c: QueryBuilder<Any> = QueryBuilder::new("SELECT COUNT(*) AS n FROM events");
        push_filter(&mut c, d, record, f);
        let counted: i64 = c.build().fetch_one(&mut *conn).await?.try_get("n")?;
        let mut q: QueryBuilder<Any> =
            QueryBuilder::new(format!("SELECT {} FROM events", event_columns(d)));
        push_filter(&mut q, d, record, f);
        q.push(" ORDER BY sequence_num DESC LIMIT ");
        q.push_bind(f.limit);
        q.push(" OFFSET ");
        q.push_bind(f.offset);
        let rows = q.build().fetch_all(&mut *conn).await?;
        let events = rows
            .iter()
            .map(StoredEvent::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let total = counted.max(f.offset + events.len() as i64);
        Ok((events, total))
    }

    /// Events per (record type, source), and records per type (from the
    /// projection). A scan of both tables.
    pub async fn type_catalogue(
        &self,
    ) -> Result<(Vec<TypeSourceCount>, BTreeMap<String, i64>), StoreError> {
        let rows = sqlx::query(
            "SELECT record_type, source, COUNT(*) AS n FROM events \
             GROUP BY record_type, source ORDER BY record_type, source",
        )
        .fetch_all(self.pool())
        .await?;
        let counts = rows
            .iter()
            .map(|r| {
                Ok(TypeSourceCount {
                    record_type: get_text(r, "record_type")?,
                    source: get_text(r, "source")?,
                    events: r.try_get("n")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let rows =
            sqlx::query("SELECT record_type, COUNT(*) AS n FROM record_state GROUP BY record_type")
                .fetch_all(self.pool())
                .await?;
        let mut records = BTreeMap::new();
        for r in &rows {
            records.insert(get_text(r, "record_type")?, r.try_get::<i64, _>("n")?);
        }
        Ok((counts, records))
    }

    /// The field names in the merged state of up to `sample` records of
    /// `record_type` (index order), with how many of them have each.
    pub async fn fields_of_type(
        &self,
        record_type: &str,
        sample: i64,
    ) -> Result<(BTreeMap<String, i64>, i64), StoreError> {
        let d = self.dialect();
        let sql = format!(
            "SELECT {} AS state FROM record_state WHERE record_type = ? LIMIT ?",
            d.text("state")
        );
        let rows = sqlx::query(&sql)
            .bind(record_type.to_string())
            .bind(sample)
            .fetch_all(self.pool())
            .await?;
        let mut fields = BTreeMap::new();
        for r in &rows {
            let state: RecordState = serde_json::from_str(&get_text(r, "state")?)
                .map_err(|e| StoreError::Corrupt(format!("record_state.state: {e}")))?;
            for f in state.fields.keys() {
                *fields.entry(f.clone()).or_insert(0) += 1;
            }
        }
        Ok((fields, rows.len() as i64))
    }

    /// Records with pending events, oldest first (at most `limit`), and
    /// how many records have some in all.
    pub async fn pending_records(
        &self,
        limit: i64,
    ) -> Result<(Vec<PendingRecord>, i64), StoreError> {
        let d = self.dialect();
        let sql = format!(
            "SELECT record_type, record_id, COUNT(*) AS n, MIN(base_version) AS b, \
             {} AS oldest, MAX(CASE WHEN gap_reported_at IS NULL THEN 0 ELSE 1 END) AS g \
             FROM pending_events GROUP BY record_type, record_id ORDER BY MIN(received_at) LIMIT ?",
            d.ts("MIN(received_at)")
        );
        let rows = sqlx::query(&sql).bind(limit).fetch_all(self.pool()).await?;
        let list = rows
            .iter()
            .map(|r| {
                Ok(PendingRecord {
                    record_type: get_text(r, "record_type")?,
                    record_id: get_text(r, "record_id")?,
                    pending: r.try_get("n")?,
                    lowest_base_version: r.try_get("b")?,
                    oldest_received_at: get_text(r, "oldest")?,
                    gap_reported: r.try_get::<i64, _>("g")? != 0,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM (SELECT record_type, record_id FROM pending_events \
             GROUP BY record_type, record_id) p",
        )
        .fetch_one(self.pool())
        .await?;
        Ok((list, total))
    }

    /// The delivery stages' rows among the newest `window` audit rows
    /// (a backwards walk of the primary key: cheap at any size).
    pub async fn recent_delivery_outcomes(
        &self,
        window: i64,
    ) -> Result<Vec<RecentOutcome>, StoreError> {
        let d = self.dialect();
        let sql = format!(
            "SELECT stage, processing_outcome, {} AS at FROM \
             (SELECT stage, processing_outcome, created_at FROM event_audit_log \
              ORDER BY id DESC LIMIT ?) t WHERE stage LIKE 'deliver.%'",
            d.ts("created_at")
        );
        let rows = sqlx::query(&sql)
            .bind(window)
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(RecentOutcome {
                    stage: get_text(r, "stage")?,
                    outcome: get_text(r, "processing_outcome")?,
                    at: get_text(r, "at")?,
                })
            })
            .collect()
    }

    /// Writes one audit row outside any stage's transaction (a write an
    /// operator made, e.g. through MCP, recorded with its caller).
    pub async fn record_audit(&self, mut row: AuditRow) -> Result<(), StoreError> {
        row.fit_columns();
        let _guard = self.write_guard().await;
        let mut conn = self.pool().acquire().await?;
        ledger::insert_audit(&mut conn, &[row]).await
    }
}

#[cfg(test)]
mod tests {
    use super::like_pattern;

    #[test]
    fn like_wildcards_are_escaped() {
        assert_eq!(like_pattern("Open"), "%open%");
        assert_eq!(like_pattern("50%_off!"), "%50!%!_off!!%");
    }
}
