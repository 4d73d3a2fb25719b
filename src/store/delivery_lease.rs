//! The delivery lease (SPEC §4.2): one delivery in flight per (target,
//! record) across replicas. It lives on the record's `delivery_state` row:
//! taken before the POST, released in the transaction that records the
//! answer (see `delivery_log`), and taken over once `lease_until` (Unix
//! milliseconds) has passed, for a replica that died holding it.
//!
//! The clock is each replica's own: a lease lasts a minute and replicas'
//! clocks agree to milliseconds, so skew only shifts a dead replica's
//! take-over a little.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Store, StoreError};

/// One (target, record) lease as its holder knows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    pub target: String,
    pub record_type: String,
    pub record_id: String,
    /// Who holds it: a random id per process.
    pub holder: i64,
}

/// A random holder id for this process (positive, so it reads well).
pub fn new_holder() -> i64 {
    (rand::random::<u64>() >> 1) as i64
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Store {
    /// Takes `lease` for `ttl` if it is free, expired or already ours.
    /// `Ok(false)`: another live holder has it.
    pub async fn take_delivery_lease(
        &self,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.timed(async {
            let now = now_ms();
            let until = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
            let _guard = self.write_guard().await;
            let mut conn = self.pool().acquire().await?;
            let taken = sqlx::query(
                "UPDATE delivery_state SET lease_holder = ?, lease_until = ? \
                 WHERE target = ? AND record_type = ? AND record_id = ? \
                 AND (lease_holder IS NULL OR lease_holder = ? OR lease_until < ?)",
            )
            .bind(lease.holder)
            .bind(until)
            .bind(&lease.target)
            .bind(&lease.record_type)
            .bind(&lease.record_id)
            .bind(lease.holder)
            .bind(now)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if taken > 0 {
                return Ok(true);
            }
            // No row yet (the record's first delivery to this target), or
            // someone else's lease.
            let inserted = sqlx::query(
                "INSERT INTO delivery_state (target, record_type, record_id, acked_seq, \
                 acked_version, attempted_seq, lease_holder, lease_until) \
                 VALUES (?, ?, ?, 0, 0, 0, ?, ?)",
            )
            .bind(&lease.target)
            .bind(&lease.record_type)
            .bind(&lease.record_id)
            .bind(lease.holder)
            .bind(until)
            .execute(&mut *conn)
            .await;
            match inserted {
                Ok(_) => Ok(true),
                Err(e) => {
                    let e = StoreError::from(e);
                    if !e.is_unique_violation() {
                        return Err(e);
                    }
                    // MySQL counts only changed rows: our own lease renewed
                    // within the same millisecond reads as 0 above.
                    let holder: Option<i64> = sqlx::query_scalar(
                        "SELECT lease_holder FROM delivery_state \
                         WHERE target = ? AND record_type = ? AND record_id = ?",
                    )
                    .bind(&lease.target)
                    .bind(&lease.record_type)
                    .bind(&lease.record_id)
                    .fetch_optional(&mut *conn)
                    .await?
                    .flatten();
                    Ok(holder == Some(lease.holder))
                }
            }
        })
        .await
    }

    /// Who holds the (target, record) lease now, if anyone (tests, `explain`).
    pub async fn delivery_lease_holder(
        &self,
        target: &str,
        record_type: &str,
        record_id: &str,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        self.timed(async {
            let row: Option<(Option<i64>, Option<i64>)> = sqlx::query_as(
                "SELECT lease_holder, lease_until FROM delivery_state \
                 WHERE target = ? AND record_type = ? AND record_id = ?",
            )
            .bind(target)
            .bind(record_type)
            .bind(record_id)
            .fetch_optional(self.pool())
            .await?;
            Ok(row.and_then(|(h, u)| h.zip(u)))
        })
        .await
    }
}
