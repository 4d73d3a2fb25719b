//! `delivery_state`: per target and record, the last merged event the target
//! acknowledged (2xx) and the last one a request was started for, by
//! position (the producing event's `sequence_num`: ordered like versions,
//! and unique where a conflict-only merged event repeats a version). The
//! delivery stage reads it to never send a target back in time.

use sqlx::AnyConnection;

use super::ledger::{self, AuditRow};
use super::{Store, StoreError};

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

impl Store {
    pub async fn delivery_state(
        &self,
        target: &str,
        record_type: &str,
        record_id: &str,
    ) -> Result<DeliveryState, StoreError> {
        let row: Option<(i64, i64, i64)> = sqlx::query_as(
            "SELECT acked_seq, acked_version, attempted_seq FROM delivery_state \
             WHERE target = ? AND record_type = ? AND record_id = ?",
        )
        .bind(target.to_string())
        .bind(record_type.to_string())
        .bind(record_id.to_string())
        .fetch_optional(self.pool())
        .await?;
        Ok(row
            .map(|(acked, acked_version, attempted)| DeliveryState {
                acked,
                acked_version,
                attempted,
            })
            .unwrap_or_default())
    }

    /// Raises the attempted (and, with `acked`, the acknowledged) position
    /// to at least `seq`; never lowers either.
    pub async fn delivery_advance(
        &self,
        target: &str,
        record_type: &str,
        record_id: &str,
        seq: i64,
        version: i64,
        acked: bool,
    ) -> Result<(), StoreError> {
        let _guard = self.write_guard().await;
        let mut conn = self.pool().acquire().await?;
        let at = Position {
            target,
            record_type,
            record_id,
            seq,
            version,
        };
        advance(&mut conn, self.backend(), &at, acked).await
    }

    /// A delivery the target acknowledged, in one transaction: its audit
    /// row (the per-target dedupe claim) and, when it has a position, the
    /// record's acknowledged position. One commit instead of two per
    /// delivery; a claim another replica won rolls both back.
    pub async fn delivery_done(
        &self,
        audit: &AuditRow,
        at: Option<Position<'_>>,
    ) -> Result<(), StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.pool().begin().await?;
        ledger::insert_audit(&mut tx, std::slice::from_ref(audit)).await?;
        if let Some(at) = at {
            advance(&mut tx, self.backend(), &at, true).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// A merged event's place in a target's history of one record.
#[derive(Debug, Clone, Copy)]
pub struct Position<'a> {
    pub target: &'a str,
    pub record_type: &'a str,
    pub record_id: &'a str,
    /// The producing event's `sequence_num`.
    pub seq: i64,
    pub version: i64,
}

async fn advance(
    conn: &mut AnyConnection,
    backend: super::Backend,
    at: &Position<'_>,
    acked: bool,
) -> Result<(), StoreError> {
    let (acked_seq, acked_version) = if acked { (at.seq, at.version) } else { (0, 0) };
    let sql = match backend {
        super::Backend::Mysql => {
            "INSERT INTO delivery_state (target, record_type, record_id, acked_seq, \
             acked_version, attempted_seq) VALUES (?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE \
             acked_version = IF(VALUES(acked_seq) > acked_seq, VALUES(acked_version), acked_version), \
             acked_seq = GREATEST(acked_seq, VALUES(acked_seq)), \
             attempted_seq = GREATEST(attempted_seq, VALUES(attempted_seq))"
        }
        super::Backend::Sqlite => {
            "INSERT INTO delivery_state (target, record_type, record_id, acked_seq, \
             acked_version, attempted_seq) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (target, \
             record_type, record_id) DO UPDATE SET \
             acked_version = CASE WHEN excluded.acked_seq > acked_seq \
               THEN excluded.acked_version ELSE acked_version END, \
             acked_seq = MAX(acked_seq, excluded.acked_seq), \
             attempted_seq = MAX(attempted_seq, excluded.attempted_seq), \
             updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
        }
    };
    sqlx::query(sql)
        .bind(at.target.to_string())
        .bind(at.record_type.to_string())
        .bind(at.record_id.to_string())
        .bind(acked_seq)
        .bind(acked_version)
        .bind(at.seq)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
