//! `delivery_state`: per target and record, the last merged event the target
//! acknowledged (2xx) and the last one a request was started for, by
//! position (the producing event's `sequence_num`: ordered like versions,
//! and unique where a conflict-only merged event repeats a version). The
//! delivery stage reads it to never send a target back in time.

/// Where a target stands for one record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryState {
    /// Position of the last acknowledged merged event.
    pub acked: i64,
    /// Its version.
    pub acked_version: i64,
    /// Position of the last merged event a request was started for.
    pub attempted: i64,
}

impl super::Store {
    /// Where `target` stands for a record; `None` before its first delivery
    /// (or skip) to it.
    pub async fn delivery_position(
        &self,
        target: &str,
        record_type: &str,
        record_id: &str,
    ) -> Result<Option<DeliveryState>, super::StoreError> {
        self.timed(async {
            let row: Option<(i64, i64, i64)> = sqlx::query_as(
                "SELECT acked_seq, acked_version, attempted_seq FROM delivery_state \
                 WHERE target = ? AND record_type = ? AND record_id = ?",
            )
            .bind(target)
            .bind(record_type)
            .bind(record_id)
            .fetch_optional(self.pool())
            .await?;
            Ok(row.map(|(acked, acked_version, attempted)| DeliveryState {
                acked,
                acked_version,
                attempted,
            }))
        })
        .await
    }
}
