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

use sqlx::AnyConnection;

use super::delivery::DeliveryState;
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

/// A delivery's claim on its next request, made in one statement with the
/// group commit (see `delivery_log`): the lease, taken only while the target
/// still stands where the delivery planned from, and the attempted position
/// raised with it. One durable write before the POST where there were three
/// (lease, a re-read under it, the attempted position).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub lease: Lease,
    /// How long the lease lasts from the moment it is written.
    pub ttl: Duration,
    /// Where the delivery saw the target stand when it planned.
    pub expect: DeliveryState,
    /// The position this request carries (`None` for a merged event from
    /// before positions were kept: the attempted position stays).
    pub attempted: Option<i64>,
}

impl Claim {
    fn attempted_after(&self) -> i64 {
        self.attempted
            .map_or(self.expect.attempted, |s| s.max(self.expect.attempted))
    }
}

/// Makes `c` on `conn` (inside the caller's transaction). `Ok(false)`: the
/// target moved on since the delivery planned, or another live replica holds
/// the lease; the delivery reads again and decides again.
pub(super) async fn claim(conn: &mut AnyConnection, c: &Claim) -> Result<bool, StoreError> {
    let now = now_ms();
    let until = now.saturating_add(i64::try_from(c.ttl.as_millis()).unwrap_or(i64::MAX));
    let attempted = c.attempted_after();
    let l = &c.lease;
    let updated = sqlx::query(
        "UPDATE delivery_state SET lease_holder = ?, lease_until = ?, attempted_seq = ? \
         WHERE target = ? AND record_type = ? AND record_id = ? \
         AND acked_seq = ? AND attempted_seq = ? \
         AND (lease_holder IS NULL OR lease_holder = ? OR lease_until < ?)",
    )
    .bind(l.holder)
    .bind(until)
    .bind(attempted)
    .bind(&l.target)
    .bind(&l.record_type)
    .bind(&l.record_id)
    .bind(c.expect.acked)
    .bind(c.expect.attempted)
    .bind(l.holder)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if updated > 0 {
        return Ok(true);
    }
    if c.expect == DeliveryState::default() {
        // The record's first delivery to this target: no row yet, unless
        // another replica made it a moment ago (then nothing is written).
        // A plain INSERT: MySQL's `ON DUPLICATE KEY UPDATE` reports a
        // found row as affected under CLIENT_FOUND_ROWS, which would read as
        // taken. A duplicate fails only this statement, not the transaction.
        let inserted = sqlx::query(
            "INSERT INTO delivery_state (target, record_type, record_id, acked_seq, \
             acked_version, attempted_seq, lease_holder, lease_until) \
             VALUES (?, ?, ?, 0, 0, ?, ?, ?)",
        )
        .bind(&l.target)
        .bind(&l.record_type)
        .bind(&l.record_id)
        .bind(attempted)
        .bind(l.holder)
        .bind(until)
        .execute(&mut *conn)
        .await;
        let inserted = match inserted {
            Ok(r) => r.rows_affected(),
            Err(e) => {
                let e = StoreError::from(e);
                if !e.is_unique_violation() {
                    return Err(e);
                }
                0
            }
        };
        if inserted > 0 {
            return Ok(true);
        }
    }
    // Rows matched, not changed, on both backends (sqlx sets MySQL's
    // CLIENT_FOUND_ROWS): no match means refused.
    Ok(false)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Store {
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
