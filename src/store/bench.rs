//! What `bench merge`'s end-to-end run reads back to decide it is complete
//! and to time it (the ceiling's reads are in [`super::ceiling`]).

use chrono::{DateTime, Utc};

use super::{get_text, parse_ts, Store, StoreError};

impl Store {
    /// All events stored.
    pub async fn count_events(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM events")
            .fetch_one(self.pool())
            .await?)
    }

    /// Audit rows whose outcome is `outcome`.
    pub async fn count_audit_outcome(&self, outcome: &str) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM event_audit_log WHERE processing_outcome = ?")
                .bind(outcome.to_string())
                .fetch_one(self.pool())
                .await?,
        )
    }

    /// Every event's id and when it was stored.
    pub async fn event_stored_times(&self) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT id, {} AS created FROM events",
            self.dialect().ts("created_at")
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| Ok((get_text(row, "id")?, parse_ts(&get_text(row, "created")?)?)))
            .collect()
    }
}

impl Store {
    /// `bench archive`: every record as if both targets had acknowledged
    /// its head (a store fed without deliveries), and no outbox left.
    pub async fn bench_settle_deliveries(&self) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM outbox")
            .execute(self.pool())
            .await?;
        sqlx::query(
            "INSERT INTO delivery_state (target, record_type, record_id, acked_seq, acked_version, \
             attempted_seq) SELECT t.target, s.record_type, s.record_id, s.last_seq, s.version, \
             s.last_seq FROM record_state s CROSS JOIN (SELECT 'netsuite' AS target UNION ALL \
             SELECT 'suitex' AS target) t",
        )
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
