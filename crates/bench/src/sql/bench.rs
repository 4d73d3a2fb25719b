//! What `bench merge`'s end-to-end run reads back to decide it is complete
//! and to time it (the ceiling's reads are in [`super::ceiling`]).

use chrono::{DateTime, Utc};

use backbone::store::{get_text, parse_ts, Store, StoreError};

/// All events stored.
pub async fn count_events(store: &Store) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(store.pool())
        .await?)
}

/// Audit rows whose outcome is `outcome`.
pub async fn count_audit_outcome(store: &Store, outcome: &str) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM event_audit_log WHERE processing_outcome = ?")
            .bind(outcome.to_string())
            .fetch_one(store.pool())
            .await?,
    )
}

/// Every event's id and when it was stored.
pub async fn event_stored_times(store: &Store) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT id, {} AS created FROM events",
        store.dialect().ts("created_at")
    ))
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|row| Ok((get_text(row, "id")?, parse_ts(&get_text(row, "created")?)?)))
        .collect()
}

/// `bench archive`: every record as if both targets had acknowledged
/// its head (a store fed without deliveries), and no outbox left.
pub async fn bench_settle_deliveries(store: &Store) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM outbox")
        .execute(store.pool())
        .await?;
    sqlx::query(
        "INSERT INTO delivery_state (target, record_type, record_id, acked_seq, acked_version, \
         attempted_seq) SELECT t.target, s.record_type, s.record_id, s.last_seq, s.version, \
         s.last_seq FROM record_state s CROSS JOIN (SELECT 'netsuite' AS target UNION ALL \
         SELECT 'suitex' AS target) t",
    )
    .execute(store.pool())
    .await?;
    Ok(())
}

/// What `bench archive` checks once the archive ran: every old event in
/// exactly one recorded, fully removed segment.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ArchiveTotals {
    pub segments: i64,
    pub segments_not_removed: i64,
    /// `archive_segment_tables` summed per table: (rows recorded, removed).
    pub events: (i64, i64),
    pub audit: (i64, i64),
    pub merged: (i64, i64),
    /// Records whose coverage ranges do not add up to one run from 1
    /// (a gap or an overlap: something lost or archived twice).
    pub records_covered: i64,
    pub records_with_broken_coverage: i64,
    pub checkpoints: i64,
    /// Segment sizes in bytes: smallest, median, largest.
    pub segment_bytes: (i64, i64, i64),
}

pub async fn bench_archive_totals(store: &Store) -> Result<ArchiveTotals, StoreError> {
    let one = |sql: &'static str| async move {
        let n: i64 = sqlx::query_scalar(sql).fetch_one(store.pool()).await?;
        Ok::<i64, StoreError>(n)
    };
    let table = |name: &'static str| async move {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(row_count), 0) AS SIGNED) AS n, \
             CAST(COALESCE(SUM(removed), 0) AS SIGNED) AS r \
             FROM archive_segment_tables WHERE table_name = ?",
        )
        .bind(name)
        .fetch_one(store.pool())
        .await?;
        use sqlx::Row;
        Ok::<(i64, i64), StoreError>((row.try_get("n")?, row.try_get("r")?))
    };
    let coverage = sqlx::query_as::<_, (i64, i64)>(
        "SELECT CAST(COUNT(*) AS SIGNED), \
         CAST(COALESCE(SUM(CASE WHEN lo = 1 AND n = hi THEN 0 ELSE 1 END), 0) AS SIGNED) \
         FROM (SELECT MIN(from_seq) AS lo, MAX(to_seq) AS hi, \
         SUM(to_seq - from_seq + 1) AS n FROM archive_coverage \
         GROUP BY record_type, record_id) c",
    )
    .fetch_one(store.pool())
    .await?;
    let mut sizes: Vec<i64> = sqlx::query_scalar("SELECT bytes FROM archive_segments")
        .fetch_all(store.pool())
        .await?;
    sizes.sort_unstable();
    let pick = |i: usize| sizes.get(i).copied().unwrap_or(0);
    Ok(ArchiveTotals {
        segments: one("SELECT COUNT(*) FROM archive_segments").await?,
        segments_not_removed: one("SELECT COUNT(*) FROM archive_segments WHERE removed_at IS NULL")
            .await?,
        events: table("events").await?,
        audit: table("event_audit_log").await?,
        merged: table("merged_events").await?,
        records_covered: coverage.0,
        records_with_broken_coverage: coverage.1,
        checkpoints: one("SELECT COUNT(*) FROM record_checkpoints").await?,
        segment_bytes: (
            pick(0),
            pick(sizes.len() / 2),
            pick(sizes.len().saturating_sub(1)),
        ),
    })
}

/// Recorded archive segments (`bench archive` kills its run after some).
pub async fn count_segments(store: &Store) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM archive_segments")
        .fetch_one(store.pool())
        .await?)
}
