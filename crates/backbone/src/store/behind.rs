//! Records a target is behind on with nothing under way for them: their
//! newest merged event is after the target's acknowledged position, and
//! either no request was started since and no live lease is held, or a
//! lease ran out still naming its holder. A delivery releases its lease
//! whatever came of it, so the second is a holder that died mid-delivery
//! (its request may have reached the target: it is folded and sent again,
//! P2). A request started with the lease released failed: its record
//! keeps its retry schedule and dead letter, and is not taken. What an
//! idle replica takes over (`stages/deliver/takeover`) when the replica
//! holding their messages died (docs/spec.md §4.2).

use chrono::{DateTime, Utc};

use super::delivery_lease::now_ms;
use super::merged::{from_row, select_sql, MergedRow};
use super::{get_text, Store, StoreError};

/// One record a target is behind on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Behind {
    pub record_type: String,
    pub record_id: String,
}

impl Store {
    /// Records that last changed between `after` and `before` and that
    /// `target` is behind on with nothing under way (see the module), the
    /// longest-settled first, at most `limit`. Read through the index on
    /// `record_state.updated_at` and primary keys.
    pub async fn records_behind(
        &self,
        target: &str,
        after: DateTime<Utc>,
        before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Behind>, StoreError> {
        let d = self.dialect();
        self.timed(async {
            let rows = sqlx::query(
                "SELECT r.record_type, r.record_id FROM record_state r \
                 LEFT JOIN delivery_state s ON s.target = ? AND s.record_type = r.record_type \
                 AND s.record_id = r.record_id \
                 WHERE r.updated_at >= ? AND r.updated_at <= ? \
                 AND ((s.lease_holder IS NULL \
                 AND COALESCE(s.attempted_seq, 0) = COALESCE(s.acked_seq, 0)) \
                 OR s.lease_until < ?) \
                 AND EXISTS (SELECT 1 FROM merged_events m WHERE m.record_type = r.record_type \
                 AND m.record_id = r.record_id AND m.sequence_num > COALESCE(s.acked_seq, 0)) \
                 ORDER BY r.updated_at LIMIT ?",
            )
            .bind(target.to_string())
            .bind(d.ts_value(&after))
            .bind(d.ts_value(&before))
            .bind(now_ms())
            .bind(limit)
            .fetch_all(self.pool())
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(Behind {
                        record_type: get_text(r, "record_type")?,
                        record_id: get_text(r, "record_id")?,
                    })
                })
                .collect()
        })
        .await
    }

    /// A record's newest merged event, as published.
    pub async fn merged_newest(
        &self,
        record_type: &str,
        record_id: &str,
    ) -> Result<Option<MergedRow>, StoreError> {
        let sql = format!(
            "{} WHERE m.record_type = ? AND m.record_id = ? \
             ORDER BY m.sequence_num DESC LIMIT 1",
            select_sql(self.dialect())
        );
        self.timed(async {
            let row = sqlx::query(&sql)
                .bind(record_type.to_string())
                .bind(record_id.to_string())
                .fetch_optional(self.pool())
                .await?;
            row.as_ref().map(from_row).transpose()
        })
        .await
    }
}
