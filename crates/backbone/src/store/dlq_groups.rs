//! Parked dead letters grouped into issues (docs/spec.md §7.1), in SQL so a
//! page over 10,000 rows reads a few dozen groups, not the rows: by stage
//! (which names the target), reason, the HTTP status a target answered
//! (`… answered HTTP 400 …`, when the error says one) and the error with
//! its digits and the record's id replaced (so `record 1234 refused` and
//! `record 77 refused` are one issue; a NetSuite error code stays in it).
//!
//! Written with functions both MariaDB/MySQL and SQLite have (`INSTR`,
//! `SUBSTR`, `REPLACE`, `CASE`); only concatenation differs.

use chrono::{DateTime, Utc};
use sqlx::{Any, QueryBuilder, Row};

use super::{get_opt_text, get_text, Backend, Dialect, Store, StoreError};

/// Characters of `last_error` a group is keyed by.
pub const MESSAGE_KEY_CHARS: i64 = 160;

/// Which open dead letters to group or list.
#[derive(Debug, Clone, Default)]
pub struct GroupFilter {
    pub stage: Option<String>,
    pub reason: Option<String>,
    pub record_type: Option<String>,
    pub record_id: Option<String>,
    /// Parked at or after.
    pub since: Option<DateTime<Utc>>,
    /// Parked before.
    pub until: Option<DateTime<Utc>>,
}

/// What makes dead letters one issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupKey {
    pub stage: String,
    pub reason: String,
    /// The HTTP status the target answered, or empty.
    pub status: String,
    /// The normalised error (empty when the row has none).
    pub message: String,
}

/// One issue.
#[derive(Debug, Clone)]
pub struct DlqGroup {
    pub key: GroupKey,
    pub count: i64,
    /// Distinct records among them (rows without a record are not counted).
    pub records: i64,
    pub first_seen: String,
    pub last_seen: String,
    /// One of the errors as written (the smallest), for its wording.
    pub sample: Option<String>,
}

/// A page of issues and how many there are in all.
#[derive(Debug, Clone, Default)]
pub struct GroupPage {
    pub groups: Vec<DlqGroup>,
    pub total_groups: i64,
    pub total_dead_letters: i64,
}

fn concat(d: Dialect, parts: &[&str]) -> String {
    match d.0 {
        Backend::Mysql => format!("CONCAT({})", parts.join(", ")),
        Backend::Sqlite => format!("({})", parts.join(" || ")),
    }
}

/// The HTTP status in `last_error`, or ''.
fn status_expr() -> String {
    let le = "COALESCE(last_error, '')";
    format!(
        "CASE WHEN INSTR({le}, 'answered HTTP ') > 0 \
         THEN SUBSTR({le}, INSTR({le}, 'answered HTTP ') + 14, 3) ELSE '' END"
    )
}

/// `last_error`'s first characters with the record's id (when long enough
/// not to hit ordinary text) and every digit replaced, runs of `#` folded.
fn message_expr() -> String {
    let mut m = format!("SUBSTR(COALESCE(last_error, ''), 1, {MESSAGE_KEY_CHARS})");
    m = format!(
        "CASE WHEN LENGTH(COALESCE(record_id, '')) >= 4 \
         THEN REPLACE({m}, record_id, '{{id}}') ELSE {m} END"
    );
    for digit in 0..10 {
        m = format!("REPLACE({m}, '{digit}', '#')");
    }
    // 2^5: a run of up to 32 digits becomes one `#`.
    for _ in 0..5 {
        m = format!("REPLACE({m}, '##', '#')");
    }
    m
}

impl Store {
    /// One page of the issues among the open dead letters `f` selects,
    /// newest issue first.
    pub async fn dead_letter_groups(
        &self,
        f: &GroupFilter,
        offset: i64,
        limit: i64,
    ) -> Result<GroupPage, StoreError> {
        let d = self.dialect();
        let mut q: QueryBuilder<Any> = QueryBuilder::new(format!(
            "SELECT stage, reason, st, msg, COUNT(*) AS n, COUNT(DISTINCT rec) AS recs, \
             {} AS first_seen, {} AS last_seen, \
             {} AS sample FROM ",
            d.ts("MIN(parked_at)"),
            d.ts("MAX(parked_at)"),
            d.text("MIN(last_error)"),
        ));
        push_keyed_rows(&mut q, d, f);
        q.push(" GROUP BY stage, reason, st, msg ORDER BY MAX(parked_at) DESC, n DESC LIMIT ");
        q.push_bind(limit);
        q.push(" OFFSET ");
        q.push_bind(offset);
        let rows = q.build().fetch_all(self.pool()).await?;
        let groups = rows
            .iter()
            .map(|r| {
                Ok(DlqGroup {
                    key: GroupKey {
                        stage: get_text(r, "stage")?,
                        reason: get_text(r, "reason")?,
                        status: get_text(r, "st")?,
                        message: get_text(r, "msg")?,
                    },
                    count: r.try_get("n")?,
                    records: r.try_get("recs")?,
                    first_seen: get_text(r, "first_seen")?,
                    last_seen: get_text(r, "last_seen")?,
                    sample: get_opt_text(r, "sample")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let mut c: QueryBuilder<Any> = QueryBuilder::new(format!(
            "SELECT COUNT(*) AS g, {} AS n FROM (SELECT COUNT(*) AS n FROM ",
            d.int("COALESCE(SUM(n), 0)")
        ));
        push_keyed_rows(&mut c, d, f);
        c.push(" GROUP BY stage, reason, st, msg) t");
        let row = c.build().fetch_one(self.pool()).await?;
        Ok(GroupPage {
            groups,
            total_groups: row.try_get("g")?,
            total_dead_letters: row.try_get::<Option<i64>, _>("n")?.unwrap_or(0),
        })
    }

    /// The ids of the open dead letters `f` selects (only those of issue
    /// `key` when given), in id order after `after_id`, at most `limit`.
    pub async fn dead_letter_group_ids(
        &self,
        f: &GroupFilter,
        key: Option<&GroupKey>,
        after_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let d = self.dialect();
        let mut q: QueryBuilder<Any> = QueryBuilder::new("SELECT id FROM ");
        push_keyed_rows(&mut q, d, f);
        q.push(" WHERE 1 = 1");
        if let Some(k) = key {
            q.push(" AND stage = ");
            q.push_bind(k.stage.clone());
            q.push(" AND reason = ");
            q.push_bind(k.reason.clone());
            q.push(" AND st = ");
            q.push_bind(k.status.clone());
            q.push(" AND msg = ");
            q.push_bind(k.message.clone());
        }
        if let Some(a) = after_id {
            q.push(" AND id > ");
            q.push_bind(a);
        }
        q.push(" ORDER BY id LIMIT ");
        q.push_bind(limit);
        let rows = q.build().fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| r.try_get::<i64, _>("id").map_err(StoreError::from))
            .collect()
    }
}

/// The open (`parked`) rows `f` selects with their group key columns (`st`, `msg`)
/// and record (`rec`), as a derived table `k`.
fn push_keyed_rows(q: &mut QueryBuilder<'static, Any>, d: Dialect, f: &GroupFilter) {
    let rec = concat(d, &["record_type", "'/'", "record_id"]);
    q.push(format!(
        "(SELECT id, stage, reason, parked_at, last_error, {} AS st, {} AS msg, \
         CASE WHEN record_id IS NULL THEN NULL ELSE {rec} END AS rec \
         FROM dead_letters WHERE status = 'parked'",
        status_expr(),
        message_expr()
    ));
    for (col, v) in [
        ("stage", &f.stage),
        ("reason", &f.reason),
        ("record_type", &f.record_type),
        ("record_id", &f.record_id),
    ] {
        if let Some(v) = v {
            q.push(format!(" AND {col} = "));
            q.push_bind(v.clone());
        }
    }
    if let Some(t) = &f.since {
        q.push(" AND parked_at >= ");
        q.push_bind(d.ts_value(t));
    }
    if let Some(t) = &f.until {
        q.push(" AND parked_at < ");
        q.push_bind(d.ts_value(t));
    }
    q.push(") k");
}
