//! What the demo's story reads back to narrate what the daemon did: audit
//! rows per stage and fingerprint, the persisted event behind a merge, a
//! record's version, and the ledger's totals.

use sqlx::Row;

use super::{get_opt_text, get_text, ledger, Store, StoreError};

/// One audit row of a stage, as the story shows it.
#[derive(Debug, Clone)]
pub struct StageAudit {
    pub outcome: String,
    pub attempt: i64,
    pub event_id: Option<String>,
    /// The stored JSON text.
    pub detail: Option<String>,
}

/// How a stored event was persisted.
#[derive(Debug, Clone)]
pub struct PersistedEvent {
    pub sequence_num: i64,
    pub full_snapshot_ref: Option<String>,
    /// Length of the stored `changes`.
    pub changes_len: i64,
}

/// Counts over the whole store, for the story's summary.
#[derive(Debug, Clone, Copy)]
pub struct Totals {
    pub events: i64,
    pub records: i64,
    pub delivered: i64,
    /// Transient delivery failures (retried or dead-lettered).
    pub failed_deliveries: i64,
    pub parked: i64,
    pub replayed: i64,
}

impl Store {
    /// Audit rows of `stage` with fingerprint `fp`, in insertion order.
    pub async fn stage_audit(&self, stage: &str, fp: &str) -> Result<Vec<StageAudit>, StoreError> {
        let rows = sqlx::query(
            "SELECT processing_outcome, attempt, event_id, detail FROM event_audit_log \
             WHERE stage = ? AND fingerprint = ? ORDER BY id",
        )
        .bind(stage.to_string())
        .bind(fp.to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StageAudit {
                    outcome: get_text(r, "processing_outcome")?,
                    attempt: r.try_get("attempt")?,
                    event_id: get_opt_text(r, "event_id")?,
                    detail: get_opt_text(r, "detail")?,
                })
            })
            .collect()
    }

    /// The stored event `event_id`, if there is one.
    pub async fn persisted_event(
        &self,
        event_id: &str,
    ) -> Result<Option<PersistedEvent>, StoreError> {
        let row = sqlx::query(
            "SELECT sequence_num, full_snapshot_ref, length(changes) AS changes_len FROM events WHERE id = ?",
        )
        .bind(event_id.to_string())
        .fetch_optional(self.pool())
        .await?;
        row.map(|row| {
            Ok(PersistedEvent {
                sequence_num: row.try_get("sequence_num")?,
                full_snapshot_ref: get_opt_text(&row, "full_snapshot_ref")?,
                changes_len: row.try_get("changes_len")?,
            })
        })
        .transpose()
    }

    /// How many events one record has.
    pub async fn count_record_events(
        &self,
        record_type: &str,
        record_id: &str,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM events WHERE record_type = ? AND record_id = ?",
        )
        .bind(record_type.to_string())
        .bind(record_id.to_string())
        .fetch_one(self.pool())
        .await?)
    }

    /// A record's projected version (0 when it has no projection).
    pub async fn record_version(
        &self,
        record_type: &str,
        record_id: &str,
    ) -> Result<i64, StoreError> {
        let mut conn = self.pool().acquire().await?;
        let state = ledger::record_state(&mut conn, self.dialect(), record_type, record_id).await?;
        Ok(state.map(|s| s.version).unwrap_or(0))
    }

    /// The store's totals, one count at a time.
    pub async fn totals(&self) -> Result<Totals, StoreError> {
        let count = |sql: &'static str| async move {
            Ok::<i64, StoreError>(sqlx::query_scalar(sql).fetch_one(self.pool()).await?)
        };
        Ok(Totals {
            events: count("SELECT COUNT(*) FROM events").await?,
            records: count("SELECT COUNT(*) FROM record_state").await?,
            delivered: count(
                "SELECT COUNT(*) FROM event_audit_log WHERE processing_outcome = 'delivered'",
            )
            .await?,
            failed_deliveries: count(
                "SELECT COUNT(*) FROM event_audit_log WHERE processing_outcome = 'transient' AND stage LIKE 'deliver.%'",
            )
            .await?,
            parked: count("SELECT COUNT(*) FROM dead_letters").await?,
            replayed: count("SELECT COUNT(*) FROM dead_letters WHERE replayed_at IS NOT NULL")
                .await?,
        })
    }
}
