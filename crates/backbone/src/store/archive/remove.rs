//! Removing what a recorded segment covers, in small transactions.

use std::time::Instant;

use chrono::{DateTime, Utc};
use sqlx::{Any, QueryBuilder};

use super::{SegmentInfo, TableCounts, AUDIT_OF_RECORD};
use crate::store::{parse_ts, Store, StoreError};

impl Store {
    /// Removes the rows `segment` covers, `batch` rows per transaction:
    /// audit rows first (the trigger looks at their events), then merged
    /// events, then events; marks the segment removed. Safe to run again.
    /// Returns the rows removed per table.
    /// After each transaction it pauses `pace` times as long as it took.
    pub async fn remove_covered(
        &self,
        segment: &SegmentInfo,
        batch: usize,
        pace: f64,
    ) -> Result<TableCounts, StoreError> {
        let cutoff = parse_ts(&segment.cutoff)?;
        let batch = batch.max(1) as i64;
        let mut removed = TableCounts::default();
        for ((t, id), from, to) in self.segment_coverage(&segment.id).await? {
            let record = (t.as_str(), id.as_str());
            removed.audit += self.remove_audit(record, &cutoff, to, batch, pace).await?;
            let range = (from, to);
            removed.merged += self
                .remove_range("merged_events", record, range, batch, pace)
                .await?;
            removed.events += self
                .remove_range("events", record, range, batch, pace)
                .await?;
        }
        let _guard = self.write_guard().await;
        // Only replayed ones: a row replayed and dead again is pending once
        // more (reopened) and stays.
        removed.dead_letters = sqlx::query(
            "DELETE FROM dead_letters WHERE replayed_at IS NOT NULL AND id IN \
             (SELECT dead_letter_id FROM archive_dead_letters WHERE segment_id = ?)",
        )
        .bind(segment.id.clone())
        .execute(self.pool())
        .await?
        .rows_affected();
        sqlx::query(&format!(
            "UPDATE archive_segments SET removed_at = {} WHERE id = ?",
            self.dialect().now()
        ))
        .bind(segment.id.clone())
        .execute(self.pool())
        .await?;
        Ok(removed)
    }

    /// The audit rows of one record an archive up to `to` takes, `batch` ids
    /// at a time (by id: audit rows carry no sequence number).
    async fn remove_audit(
        &self,
        (t, id): (&str, &str),
        cutoff: &DateTime<Utc>,
        to: i64,
        batch: i64,
        pace: f64,
    ) -> Result<u64, StoreError> {
        let d = self.dialect();
        let mut removed = 0;
        loop {
            let ids: Vec<i64> = sqlx::query_scalar(&format!(
                "SELECT id FROM event_audit_log WHERE {AUDIT_OF_RECORD} ORDER BY id LIMIT ?"
            ))
            .bind(t.to_string())
            .bind(id.to_string())
            .bind(d.ts_value(cutoff))
            .bind(to)
            .bind(batch)
            .fetch_all(self.pool())
            .await?;
            if ids.is_empty() {
                return Ok(removed);
            }
            let began = Instant::now();
            let guard = self.write_guard().await;
            let mut q: QueryBuilder<Any> =
                QueryBuilder::new("DELETE FROM event_audit_log WHERE id IN (");
            let mut sep = q.separated(", ");
            for i in &ids {
                sep.push_bind(*i);
            }
            q.push(")");
            removed += q.build().execute(self.pool()).await?.rows_affected();
            drop(guard);
            pause(began, pace).await;
        }
    }

    /// One record's rows of `table` with `from ≤ sequence_num ≤ to`, `batch`
    /// sequence numbers at a time.
    async fn remove_range(
        &self,
        table: &str,
        (t, id): (&str, &str),
        (from, to): (i64, i64),
        batch: i64,
        pace: f64,
    ) -> Result<u64, StoreError> {
        let mut removed = 0;
        let mut lo = from;
        while lo <= to {
            let hi = (lo + batch - 1).min(to);
            let began = Instant::now();
            let guard = self.write_guard().await;
            removed += sqlx::query(&format!(
                "DELETE FROM {table} WHERE record_type = ? AND record_id = ? \
                 AND sequence_num >= ? AND sequence_num <= ?"
            ))
            .bind(t.to_string())
            .bind(id.to_string())
            .bind(lo)
            .bind(hi)
            .execute(self.pool())
            .await?
            .rows_affected();
            drop(guard);
            pause(began, pace).await;
            lo = hi + 1;
        }
        Ok(removed)
    }
}

/// Sleeps `pace` times as long as the work begun at `began` took, so a
/// removal leaves the database room for the live pipeline.
async fn pause(began: Instant, pace: f64) {
    if pace > 0.0 {
        tokio::time::sleep(began.elapsed().mul_f64(pace)).await;
    }
}
