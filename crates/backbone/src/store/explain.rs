//! Reads for `explain`: everything stored about one record (its events, its
//! projection, its merged events and its audit trail), in one transaction so
//! a record the daemon is writing meanwhile is seen consistently.
//!
//! Each query is an index range on the record: `idx_events_aggregate`, the
//! `record_state` and `merged_events` primary keys (each merged event joined
//! to its event by `idx_events_aggregate`), `idx_audit_record`.

use super::audit::audit_columns;
use super::ledger::{self, StateRow, StoredEvent};
use super::{Store, StoreError};

/// One stored merged event (the payload as published, never a claim check).
#[derive(Debug, Clone)]
pub struct MergedFact {
    pub sequence_num: i64,
    pub version: i64,
    pub event_id: String,
    /// JSON text of the merged event.
    pub payload: String,
}

/// One audit-log row of the record (the type history reads too).
pub use super::audit::AuditFact;

/// Everything stored about one record.
#[derive(Debug, Clone, Default)]
pub struct RecordFacts {
    /// In sequence order.
    pub events: Vec<StoredEvent>,
    pub projection: Option<StateRow>,
    /// In sequence order.
    pub merged: Vec<MergedFact>,
    /// In insertion order (`id`).
    pub audit: Vec<AuditFact>,
    /// The state after the record's archived events, if some are (docs/spec.md §6.1).
    pub checkpoint: Option<super::archive::Checkpoint>,
}

impl Store {
    pub async fn record_facts(
        &self,
        record_type: &str,
        record_id: &str,
    ) -> Result<RecordFacts, StoreError> {
        let d = self.dialect();
        let mut tx = self.pool().begin().await?;
        let events = ledger::record_events(&mut tx, d, record_type, record_id, None).await?;
        let projection = ledger::record_state(&mut tx, d, record_type, record_id).await?;

        let sql = format!(
            "{} WHERE m.record_type = ? AND m.record_id = ? ORDER BY m.sequence_num",
            super::merged::select_sql(d)
        );
        let rows = sqlx::query(&sql)
            .bind(record_type.to_string())
            .bind(record_id.to_string())
            .fetch_all(&mut *tx)
            .await?;
        let merged = rows
            .iter()
            .map(|r| {
                let m = super::merged::from_row(r)?;
                Ok(MergedFact {
                    sequence_num: m.sequence_num,
                    version: m.version,
                    event_id: m.event_id,
                    payload: m.payload,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;

        let sql = format!(
            "SELECT {} FROM event_audit_log WHERE record_type = ? AND record_id = ? ORDER BY id",
            audit_columns(d)
        );
        let rows = sqlx::query(&sql)
            .bind(record_type.to_string())
            .bind(record_id.to_string())
            .fetch_all(&mut *tx)
            .await?;
        let audit = rows
            .iter()
            .map(AuditFact::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let checkpoint = super::archive::checkpoint(&mut tx, d, record_type, record_id).await?;
        tx.commit().await?;
        Ok(RecordFacts {
            events,
            projection,
            merged,
            audit,
            checkpoint,
        })
    }
}
