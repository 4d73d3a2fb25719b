//! The delivery lease (docs/spec.md §4.2): one delivery in flight per (target,
//! record) across replicas. It lives on the record's `delivery_state` row:
//! taken before the POST, released in the transaction that records the
//! answer (see `delivery_log`), and taken over once `lease_until` (Unix
//! milliseconds) has passed, for a replica that died holding it.
//!
//! Its holder renews it while a delivery is out (`stages/deliver/keeper`),
//! so `lease_ttl` only bounds how long a dead replica's records wait.
//!
//! The clock is each replica's own: replicas' clocks agree to milliseconds
//! and the holder stops trusting a lease a quarter of its TTL early, so skew
//! only shifts a dead replica's take-over a little.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::collections::HashSet;

use sqlx::{Any, AnyConnection, QueryBuilder, Row};

use super::delivery::DeliveryState;
use super::{Backend, Store, StoreError};

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

/// Makes `claims` on `conn` (inside the caller's transaction), answering
/// each: `false` when the target moved on since the delivery planned or
/// another live replica holds the lease (the delivery reads again and
/// decides again). On MySQL three statements per 100 claims, whatever their
/// number; on SQLite (in process, no round trips) one claim at a time.
pub(super) async fn claim_all(
    conn: &mut AnyConnection,
    backend: Backend,
    claims: &[&Claim],
) -> Result<Vec<bool>, StoreError> {
    let mut answers = Vec::with_capacity(claims.len());
    if backend == Backend::Sqlite || claims.len() == 1 {
        for c in claims {
            answers.push(claim(conn, c).await?);
        }
        return Ok(answers);
    }
    for chunk in claims.chunks(100) {
        answers.extend(claim_chunk(conn, chunk).await?);
    }
    Ok(answers)
}

/// A derived table of the claims: index, key, holder, until, expected and new positions.
fn push_claims(q: &mut QueryBuilder<'_, Any>, claims: &[(usize, &Claim, i64)]) {
    for (n, (i, c, until)) in claims.iter().enumerate() {
        q.push(if n == 0 {
            "SELECT "
        } else {
            " UNION ALL SELECT "
        });
        q.push_bind(*i as i64);
        q.push(" AS i, ");
        q.push_bind(c.lease.target.clone());
        q.push(" AS t, ");
        q.push_bind(c.lease.record_type.clone());
        q.push(" AS rt, ");
        q.push_bind(c.lease.record_id.clone());
        q.push(" AS ri, ");
        q.push_bind(c.lease.holder);
        q.push(" AS h, ");
        q.push_bind(*until);
        q.push(" AS u, ");
        q.push_bind(c.expect.acked);
        q.push(" AS ea, ");
        q.push_bind(c.expect.attempted);
        q.push(" AS et, ");
        q.push_bind(c.attempted_after());
        q.push(" AS na");
    }
}

async fn claim_chunk(conn: &mut AnyConnection, chunk: &[&Claim]) -> Result<Vec<bool>, StoreError> {
    let now = now_ms();
    // One claim per record in a statement (the stage's turns make a second
    // impossible; if one came, it is refused and reads again).
    let mut seen = HashSet::new();
    let rows: Vec<(usize, &Claim, i64)> = chunk
        .iter()
        .enumerate()
        .filter(|(_, c)| seen.insert((&c.lease.target, &c.lease.record_type, &c.lease.record_id)))
        .map(|(i, c)| {
            let ttl = i64::try_from(c.ttl.as_millis()).unwrap_or(i64::MAX);
            (i, *c, now.saturating_add(ttl))
        })
        .collect();
    let mut q: QueryBuilder<Any> = QueryBuilder::new("UPDATE delivery_state d JOIN (");
    push_claims(&mut q, &rows);
    q.push(
        ") k ON d.target = k.t AND d.record_type = k.rt AND d.record_id = k.ri \
         SET d.lease_holder = k.h, d.lease_until = k.u, d.attempted_seq = k.na \
         WHERE d.acked_seq = k.ea AND d.attempted_seq = k.et \
         AND (d.lease_holder IS NULL OR d.lease_holder = k.h OR d.lease_until < ",
    );
    q.push_bind(now);
    q.push(")");
    q.build().execute(&mut *conn).await?;
    // The records' first deliveries: no row yet, unless another replica made
    // it a moment ago (then nothing is written and the read below says so).
    let fresh: Vec<&(usize, &Claim, i64)> = rows
        .iter()
        .filter(|(_, c, _)| c.expect == DeliveryState::default())
        .collect();
    if !fresh.is_empty() {
        let mut q: QueryBuilder<Any> = QueryBuilder::new(
            "INSERT IGNORE INTO delivery_state (target, record_type, record_id, acked_seq, \
             acked_version, attempted_seq, lease_holder, lease_until) ",
        );
        q.push_values(fresh, |mut b, (_, c, until)| {
            b.push_bind(c.lease.target.clone())
                .push_bind(c.lease.record_type.clone())
                .push_bind(c.lease.record_id.clone())
                .push_bind(0i64)
                .push_bind(0i64)
                .push_bind(c.attempted_after())
                .push_bind(c.lease.holder)
                .push_bind(*until);
        });
        q.build().execute(&mut *conn).await?;
    }
    // Which rows now carry exactly what each claim wrote.
    let mut q: QueryBuilder<Any> = QueryBuilder::new("SELECT k.i AS i FROM (");
    push_claims(&mut q, &rows);
    q.push(
        ") k JOIN delivery_state d ON d.target = k.t AND d.record_type = k.rt \
         AND d.record_id = k.ri \
         WHERE d.lease_holder = k.h AND d.lease_until = k.u AND d.attempted_seq = k.na \
         AND d.acked_seq = k.ea",
    );
    let mut answers = vec![false; chunk.len()];
    for row in q.build().fetch_all(&mut *conn).await? {
        let i: i64 = row.try_get("i")?;
        if let Some(a) = usize::try_from(i).ok().and_then(|i| answers.get_mut(i)) {
            *a = true;
        }
    }
    Ok(answers)
}

/// Makes one claim on `conn` (inside the caller's transaction).
async fn claim(conn: &mut AnyConnection, c: &Claim) -> Result<bool, StoreError> {
    let now = now_ms();
    let until = ms_after(now, c.ttl);
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

/// This replica's clock in milliseconds: leases and account slots are
/// written and compared in it.
pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `ttl` after `now` (milliseconds), saturating.
pub(super) fn ms_after(now: i64, ttl: Duration) -> i64 {
    now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
}

impl Store {
    /// Extends a lease this process still holds to `ttl` from now: `false`
    /// when it is no longer ours (released, or taken over after it ran out).
    /// One autocommit statement; only a delivery held longer than a third
    /// of the TTL makes one.
    pub async fn renew_delivery_lease(&self, l: &Lease, ttl: Duration) -> Result<bool, StoreError> {
        self.timed(async {
            let until = ms_after(now_ms(), ttl);
            let updated = sqlx::query(
                "UPDATE delivery_state SET lease_until = ? \
                 WHERE target = ? AND record_type = ? AND record_id = ? AND lease_holder = ?",
            )
            .bind(until)
            .bind(&l.target)
            .bind(&l.record_type)
            .bind(&l.record_id)
            .bind(l.holder)
            .execute(self.pool())
            .await?
            .rows_affected();
            // Rows matched, not changed (CLIENT_FOUND_ROWS on MySQL).
            Ok(updated > 0)
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
