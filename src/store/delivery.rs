//! `delivery_state`: per target and record, the highest version the target
//! acknowledged (2xx) and the highest version a request was started for.
//! The delivery stage reads it to never send a target back in time.

use super::{Store, StoreError};

/// Where a target stands for one record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryState {
    pub acked: i64,
    pub attempted: i64,
}

impl Store {
    pub async fn delivery_state(
        &self,
        target: &str,
        record_type: &str,
        record_id: &str,
    ) -> Result<DeliveryState, StoreError> {
        let row: Option<(i64, i64)> = sqlx::query_as(
            "SELECT acked_version, attempted_version FROM delivery_state \
             WHERE target = ? AND record_type = ? AND record_id = ?",
        )
        .bind(target.to_string())
        .bind(record_type.to_string())
        .bind(record_id.to_string())
        .fetch_optional(self.pool())
        .await?;
        Ok(row
            .map(|(acked, attempted)| DeliveryState { acked, attempted })
            .unwrap_or_default())
    }

    /// Raises the attempted (and, with `acked`, the acknowledged) version to
    /// at least `version`; never lowers either.
    pub async fn delivery_advance(
        &self,
        target: &str,
        record_type: &str,
        record_id: &str,
        version: i64,
        acked: bool,
    ) -> Result<(), StoreError> {
        let _guard = self.write_guard().await;
        let acked_v = if acked { version } else { 0 };
        let sql = match self.backend() {
            super::Backend::Mysql => {
                "INSERT INTO delivery_state (target, record_type, record_id, acked_version, \
                 attempted_version) VALUES (?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE \
                 acked_version = GREATEST(acked_version, VALUES(acked_version)), \
                 attempted_version = GREATEST(attempted_version, VALUES(attempted_version))"
            }
            super::Backend::Sqlite => {
                "INSERT INTO delivery_state (target, record_type, record_id, acked_version, \
                 attempted_version) VALUES (?, ?, ?, ?, ?) ON CONFLICT (target, record_type, \
                 record_id) DO UPDATE SET \
                 acked_version = MAX(acked_version, excluded.acked_version), \
                 attempted_version = MAX(attempted_version, excluded.attempted_version), \
                 updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
            }
        };
        sqlx::query(sql)
            .bind(target.to_string())
            .bind(record_type.to_string())
            .bind(record_id.to_string())
            .bind(acked_v)
            .bind(version)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
