//! `target_slots` (docs/spec.md §4.3): a target's account-wide concurrency cap,
//! shared by every replica using the database. A request takes one free
//! (or expired) slot with one statement and frees it with another.
//!
//! The clock is each replica's own, as for delivery leases: a slot lasts a
//! few seconds and is renewed while its request is out, so skew between
//! replicas' clocks must stay well below that (NTP keeps it in milliseconds;
//! `doctor` names a clock that is off).

use std::time::Duration;

use super::delivery_lease::{ms_after, now_ms};

use super::{Backend, Store, StoreError};

/// One slot as its holder knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotClaim {
    pub target: String,
    /// A random id per claim: frees exactly this claim, never a successor's.
    pub claim: i64,
}

impl Store {
    /// Makes the rows of slots `0..n` of `target` (existing ones are kept).
    pub async fn ensure_target_slots(&self, target: &str, n: usize) -> Result<(), StoreError> {
        self.timed(async {
            for slot in 0..n {
                let sql = format!(
                    "{} INTO target_slots (target, slot, until_ms) VALUES (?, ?, 0)",
                    self.dialect().insert_ignore()
                );
                sqlx::query(&sql)
                    .bind(target)
                    .bind(i64::try_from(slot).unwrap_or(i64::MAX))
                    .execute(self.pool())
                    .await?;
            }
            Ok(())
        })
        .await
    }

    /// Takes one of `target`'s first `n` slots if one is free or expired,
    /// for `ttl`; `Some` with the claim to free it by.
    pub async fn claim_target_slot(
        &self,
        target: &str,
        n: usize,
        holder: i64,
        ttl: Duration,
    ) -> Result<Option<SlotClaim>, StoreError> {
        let claim = (rand::random::<u64>() >> 1) as i64;
        let now = now_ms();
        let until = ms_after(now, ttl);
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        // MySQL refuses a subquery on the table it updates, SQLite an
        // UPDATE … LIMIT: one statement per dialect, each atomic on its own.
        let sql = match self.backend() {
            Backend::Mysql => {
                "UPDATE target_slots SET claim = ?, holder = ?, until_ms = ? \
                 WHERE target = ? AND slot < ? AND (claim IS NULL OR until_ms < ?) \
                 ORDER BY slot LIMIT 1"
            }
            Backend::Sqlite => {
                "UPDATE target_slots SET claim = ?, holder = ?, until_ms = ? \
                 WHERE target = ? AND slot = (SELECT slot FROM target_slots \
                   WHERE target = ? AND slot < ? AND (claim IS NULL OR until_ms < ?) \
                   ORDER BY slot LIMIT 1)"
            }
        };
        self.timed(async {
            let q = sqlx::query(sql)
                .bind(claim)
                .bind(holder)
                .bind(until)
                .bind(target);
            let q = match self.backend() {
                Backend::Mysql => q.bind(n).bind(now),
                Backend::Sqlite => q.bind(target).bind(n).bind(now),
            };
            let done = q.execute(self.pool()).await?;
            Ok((done.rows_affected() == 1).then(|| SlotClaim {
                target: target.to_string(),
                claim,
            }))
        })
        .await
    }

    /// Extends a claim to `ttl` from now; `false` when it expired and was
    /// taken over (or freed) meanwhile.
    pub async fn renew_target_slot(
        &self,
        c: &SlotClaim,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let until = ms_after(now_ms(), ttl);
        self.timed(async {
            let done =
                sqlx::query("UPDATE target_slots SET until_ms = ? WHERE target = ? AND claim = ?")
                    .bind(until)
                    .bind(&c.target)
                    .bind(c.claim)
                    .execute(self.pool())
                    .await?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    /// Frees a slot (a no-op if it expired and was taken over).
    pub async fn release_target_slot(&self, c: &SlotClaim) -> Result<(), StoreError> {
        self.timed(async {
            sqlx::query(
                "UPDATE target_slots SET claim = NULL, holder = NULL, until_ms = 0 \
                 WHERE target = ? AND claim = ?",
            )
            .bind(&c.target)
            .bind(c.claim)
            .execute(self.pool())
            .await?;
            Ok(())
        })
        .await
    }

    /// Slots of `target` held now (unexpired) by any replica.
    pub async fn target_slots_held(&self, target: &str) -> Result<i64, StoreError> {
        self.timed(async {
            let (n,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM target_slots WHERE target = ? AND claim IS NOT NULL AND until_ms >= ?",
            )
            .bind(target)
            .bind(now_ms())
            .fetch_one(self.pool())
            .await?;
            Ok(n)
        })
        .await
    }
}
