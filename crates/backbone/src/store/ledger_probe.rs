//! `doctor`'s database probes: statements run inside a transaction that is
//! always rolled back, so nothing they do leaves a trace in the ledger. The
//! caller decides what each answer means; this module only runs them.

use sqlx::{Any, Transaction};
use tokio::sync::OwnedMutexGuard;

use super::probe::ProbeError;
use super::Store;

/// The ledger tables the runtime user may only append to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerTable {
    Events,
    AuditLog,
}

impl LedgerTable {
    pub const ALL: [LedgerTable; 2] = [LedgerTable::Events, LedgerTable::AuditLog];

    pub fn name(self) -> &'static str {
        match self {
            LedgerTable::Events => "events",
            LedgerTable::AuditLog => "event_audit_log",
        }
    }

    /// The column a probe row is found by.
    fn key(self) -> &'static str {
        match self {
            LedgerTable::Events => "id",
            LedgerTable::AuditLog => "fingerprint",
        }
    }
}

/// The statements the ledger must refuse, as named in a report.
pub const REFUSED_STATEMENTS: &str = "UPDATE and DELETE on events and event_audit_log";

/// A statement that changes a ledger row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    Update,
    Delete,
}

impl Mutation {
    /// The SQL verb, as named in a report.
    pub fn verb(self) -> &'static str {
        match self {
            Mutation::Update => "UPDATE",
            Mutation::Delete => "DELETE",
        }
    }
}

/// Why the database refused a statement on the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The user lacks the privilege (MySQL error 1142/1143).
    Grants,
    /// The immutability trigger fired.
    Trigger,
}

impl ProbeError {
    /// Whether this is the ledger refusing a change, and how.
    pub fn refusal(&self) -> Option<Refusal> {
        let sqlx::Error::Database(d) = &self.0 else {
            return None;
        };
        let number = d
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .map(|m| m.number());
        let msg = d.message();
        if matches!(number, Some(1142 | 1143)) || msg.contains("command denied") {
            Some(Refusal::Grants)
        } else if msg.contains("Event records are immutable") {
            Some(Refusal::Trigger)
        } else {
            None
        }
    }
}

/// A transaction for probes, holding the store's write guard (SQLite) for
/// its life. Dropped without [`ProbeTx::rollback`], it rolls back anyway.
pub struct ProbeTx {
    tx: Transaction<'static, Any>,
    dialect: super::Dialect,
    _guard: Option<OwnedMutexGuard<()>>,
}

impl Store {
    pub async fn begin_probe(&self) -> Result<ProbeTx, ProbeError> {
        let guard = self.write_guard().await;
        Ok(ProbeTx {
            tx: self.pool().begin().await?,
            dialect: self.dialect(),
            _guard: guard,
        })
    }

    /// Audit rows with this fingerprint, outside any transaction.
    pub async fn count_audit_fingerprint(&self, fingerprint: &str) -> Result<i64, ProbeError> {
        Ok(sqlx::query_scalar(COUNT_AUDIT_FINGERPRINT)
            .bind(fingerprint.to_string())
            .fetch_one(self.pool())
            .await?)
    }
}

const COUNT_AUDIT_FINGERPRINT: &str = "SELECT COUNT(*) FROM event_audit_log WHERE fingerprint = ?";

impl ProbeTx {
    /// An audit row of stage `doctor` that names no event.
    pub async fn insert_audit_probe(
        &mut self,
        fingerprint: &str,
        detail: &str,
    ) -> Result<(), ProbeError> {
        sqlx::query(
            "INSERT INTO event_audit_log (fingerprint, stage, processing_outcome, detail, attempt) \
             VALUES (?, 'doctor', 'probe', ?, 1)",
        )
        .bind(fingerprint.to_string())
        .bind(detail.to_string())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Audit rows with this fingerprint, as this transaction sees them.
    pub async fn count_audit_fingerprint(&mut self, fingerprint: &str) -> Result<i64, ProbeError> {
        Ok(sqlx::query_scalar(COUNT_AUDIT_FINGERPRINT)
            .bind(fingerprint.to_string())
            .fetch_one(&mut *self.tx)
            .await?)
    }

    /// An UPDATE matching no row: grants are checked before any row is
    /// touched, triggers are not. Returns the rows affected.
    pub async fn noop_update(&mut self, table: LedgerTable) -> Result<u64, ProbeError> {
        let done = sqlx::query(&format!(
            "UPDATE {} SET record_id = record_id WHERE 1 = 0",
            table.name()
        ))
        .execute(&mut *self.tx)
        .await?;
        Ok(done.rows_affected())
    }

    /// A probe event (record type `doctor_probe`, record id = `id`).
    pub async fn insert_probe_event(&mut self, id: &str) -> Result<(), ProbeError> {
        let ts = self.dialect.ts_value(&chrono::Utc::now());
        sqlx::query(
            "INSERT INTO events (id, record_type, record_id, source, `timestamp`, base_version, changes, processed, sequence_num) \
             VALUES (?, 'doctor_probe', ?, 'suitex', ?, 0, '{}', 0, 1)",
        )
        .bind(id.to_string())
        .bind(id.to_string())
        .bind(ts)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// A probe audit row naming the probe event.
    pub async fn insert_probe_event_audit(
        &mut self,
        event_id: &str,
        fingerprint: &str,
    ) -> Result<(), ProbeError> {
        sqlx::query(
            "INSERT INTO event_audit_log (event_id, fingerprint, stage, processing_outcome, attempt) \
             VALUES (?, ?, 'doctor', 'probe', 1)",
        )
        .bind(event_id.to_string())
        .bind(fingerprint.to_string())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// An UPDATE or DELETE of the probe row of `table` whose key
    /// (`events.id`, `event_audit_log.fingerprint`) is `key`. Returns the
    /// rows affected.
    pub async fn mutate_probe_row(
        &mut self,
        table: LedgerTable,
        key: &str,
        how: Mutation,
    ) -> Result<u64, ProbeError> {
        let sql = match how {
            Mutation::Update => format!(
                "UPDATE {} SET record_id = 'doctor' WHERE {} = ?",
                table.name(),
                table.key()
            ),
            Mutation::Delete => format!("DELETE FROM {} WHERE {} = ?", table.name(), table.key()),
        };
        let done = sqlx::query(&sql)
            .bind(key.to_string())
            .execute(&mut *self.tx)
            .await?;
        Ok(done.rows_affected())
    }

    pub async fn rollback(self) -> Result<(), ProbeError> {
        Ok(self.tx.rollback().await?)
    }
}
