//! The event store (docs/spec.md §6): one sqlx `Any` pool over MySQL 8 / MariaDB or
//! SQLite. The SQL is shared; the few dialect differences live in [`Dialect`].

pub mod activity;
pub mod archive;
pub mod audit;
pub mod behind;
pub mod dead_letters;
pub mod delivery;
pub mod delivery_lease;
pub mod delivery_log;
pub mod dlq_groups;
pub mod dlq_status;
pub mod errors;
pub mod explain;
pub mod history;
pub mod ledger;
pub mod ledger_probe;
pub mod mcp;
pub mod merge_batch;
pub mod merged;
pub mod outbox;
pub mod pending;
pub mod probe;
pub mod schema;
#[cfg(test)]
mod schema_limits;
pub mod story;
pub mod target_controls;
pub mod target_slots;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Connection, Executor, Row};
use tokio::sync::Mutex;

pub use self::errors::{StoreError, StoreErrorClass};

// Migrations are additive (docs/operations.md, "Schema changes"), so
// `migrate` leaves versions a newer release applied alone instead of
// refusing them: a rollback by `helm upgrade` to an older chart runs the
// older binary's migrate hook. The fields are sqlx's (`migrate!` builds them).
static MYSQL_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate::Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("../../migrations/mysql")
};
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate::Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("../../migrations/sqlite")
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Mysql,
    Sqlite,
}

/// SQL that differs between MySQL and SQLite.
#[derive(Debug, Clone, Copy)]
pub struct Dialect(pub Backend);

impl Dialect {
    pub fn insert_ignore(self) -> &'static str {
        match self.0 {
            Backend::Mysql => "INSERT IGNORE",
            Backend::Sqlite => "INSERT OR IGNORE",
        }
    }

    /// A text/JSON column read back as text: MariaDB hands JSON and LONGTEXT
    /// over as BLOB, which the `Any` driver will not decode as a string.
    pub fn text(self, col: &str) -> String {
        match self.0 {
            Backend::Mysql => format!("CAST({col} AS CHAR)"),
            Backend::Sqlite => col.to_string(),
        }
    }

    /// A timestamp column read back as RFC 3339 text with microseconds.
    pub fn ts(self, col: &str) -> String {
        match self.0 {
            Backend::Mysql => format!("DATE_FORMAT({col}, '%Y-%m-%dT%H:%i:%s.%fZ')"),
            Backend::Sqlite => col.to_string(),
        }
    }

    /// A timestamp as bound into a query (MySQL sessions run in UTC).
    pub fn ts_value(self, t: &DateTime<Utc>) -> String {
        match self.0 {
            Backend::Mysql => t.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
            Backend::Sqlite => crate::model::fingerprint::format_timestamp(t),
        }
    }

    /// The current time, as the database sees it, in the stored format.
    pub fn now(self) -> &'static str {
        match self.0 {
            Backend::Mysql => "CURRENT_TIMESTAMP(6)",
            Backend::Sqlite => "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        }
    }

    /// An integer column the `Any` driver can decode (it rejects TINYINT).
    pub fn int(self, col: &str) -> String {
        match self.0 {
            Backend::Mysql => format!("CAST({col} AS SIGNED)"),
            Backend::Sqlite => col.to_string(),
        }
    }

    pub fn for_update(self) -> &'static str {
        match self.0 {
            Backend::Mysql => " FOR UPDATE",
            Backend::Sqlite => "",
        }
    }
}

/// A connection pool plus what is needed to speak its dialect.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
    /// SQLite allows one writer: serialising write transactions in-process
    /// avoids SQLITE_BUSY storms between our own tasks.
    write_lock: Option<Arc<Mutex<()>>>,
    /// Bound on one unit of work (see [`Store::timed`]).
    query_timeout: Duration,
}

/// The default `database.query_timeout`.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a released connection may take to answer its health ping before
/// it is dropped: a connection left hanging by a cancelled query (a network
/// that went silent) must not sit in the pool, or hold a slot, forever.
const RELEASE_PING_TIMEOUT: Duration = Duration::from_secs(2);

impl Store {
    /// Connects and configures each new connection (UTC sessions on MySQL;
    /// WAL and a busy timeout on SQLite). An SQLite URL with `mode=rwc`
    /// creates the file (and its folder): for `migrate`, `run` and `demo`.
    pub async fn connect(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<Store, StoreError> {
        Self::open(url, max_connections, acquire_timeout, true).await
    }

    /// As [`Store::connect`], for commands that only read: an SQLite file
    /// that does not exist is an error naming its absolute path, never a
    /// new empty database (`mode=rwc` is read as `mode=rw`).
    pub async fn connect_existing(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<Store, StoreError> {
        match sqlite_path(url) {
            Some(path) => {
                let path = std::path::absolute(path).unwrap_or_else(|_| path.into());
                if !path.is_file() {
                    return Err(StoreError::NoDatabaseFile(path));
                }
                let url = url.replace("mode=rwc", "mode=rw");
                Self::open(&url, max_connections, acquire_timeout, false).await
            }
            None => Self::open(url, max_connections, acquire_timeout, false).await,
        }
    }

    async fn open(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
        create: bool,
    ) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            Backend::Mysql
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        if backend == Backend::Sqlite && create {
            ensure_sqlite_parent_dir(url);
        }
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(acquire_timeout)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    match backend {
                        Backend::Mysql => {
                            conn.execute("SET time_zone = '+00:00'").await?;
                            // No gap locks: the unique keys (claim, sequence)
                            // already serialise replicas, and gap locks only
                            // add deadlocks between merge batches.
                            conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                                .await?;
                            conn.execute(
                                "SET SESSION sql_mode = CONCAT(@@sql_mode, ',STRICT_ALL_TABLES')",
                            )
                            .await?;
                        }
                        Backend::Sqlite => {
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA busy_timeout = 10000").await?;
                            conn.execute("PRAGMA synchronous = NORMAL").await?;
                        }
                    }
                    Ok(())
                })
            })
            .after_release(|conn, _meta| {
                Box::pin(async move {
                    match tokio::time::timeout(RELEASE_PING_TIMEOUT, conn.ping()).await {
                        Ok(Ok(())) => Ok(true),
                        Ok(Err(e)) => Err(e),
                        // Err closes it hard: no goodbye over a dead link.
                        Err(_) => Err(sqlx::Error::PoolTimedOut),
                    }
                })
            })
            .connect(url)
            .await?;
        Ok(Store {
            pool,
            dialect: Dialect(backend),
            write_lock: (backend == Backend::Sqlite).then(|| Arc::new(Mutex::new(()))),
            query_timeout: DEFAULT_QUERY_TIMEOUT,
        })
    }

    /// Sets `database.query_timeout`.
    pub fn with_query_timeout(mut self, d: Duration) -> Self {
        self.query_timeout = d;
        self
    }

    /// Runs one unit of database work, giving up after `database.query_timeout`:
    /// the caller then treats the database as unreachable (the work is
    /// dropped mid-flight, so an open transaction is rolled back).
    pub async fn timed<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, StoreError>>,
    {
        match tokio::time::timeout(self.query_timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::TimedOut(self.query_timeout)),
        }
    }

    /// Applies the embedded migrations: DDL, for the administrator's
    /// credentials (`event-backbone migrate`); `run` only reads the schema's
    /// state ([`schema::ensure`]).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.migrator().run(&self.pool).await?;
        Ok(())
    }

    /// The migrations embedded in this binary for this backend.
    pub fn migrator(&self) -> &'static sqlx::migrate::Migrator {
        match self.dialect.0 {
            Backend::Mysql => &MYSQL_MIGRATIONS,
            Backend::Sqlite => &SQLITE_MIGRATIONS,
        }
    }

    pub fn backend(&self) -> Backend {
        self.dialect.0
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Cheap liveness check for `/readyz`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Held for the length of a write transaction on SQLite; free on MySQL.
    pub async fn write_guard(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match &self.write_lock {
            Some(m) => Some(m.clone().lock_owned().await),
            None => None,
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The file an SQLite URL names (`None` for other URLs and `:memory:`).
pub fn sqlite_path(url: &str) -> Option<&std::path::Path> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = path.split('?').next().unwrap_or("");
    (!path.is_empty() && path != ":memory:").then(|| std::path::Path::new(path))
}

fn ensure_sqlite_parent_dir(url: &str) {
    let Some(path) = sqlite_path(url) else {
        return;
    };
    if let Some(parent) = path.parent() {
        // Best effort: the connect below reports a clear error if this failed.
        let _ = std::fs::create_dir_all(parent);
    }
}

/// Reads a text column whatever the driver calls it (TEXT or BLOB).
pub fn get_text(row: &AnyRow, col: &str) -> Result<String, StoreError> {
    match row.try_get::<String, _>(col) {
        Ok(s) => Ok(s),
        Err(_) => {
            let bytes: Vec<u8> = row.try_get(col)?;
            String::from_utf8(bytes)
                .map_err(|e| StoreError::Corrupt(format!("column {col} is not UTF-8: {e}")))
        }
    }
}

pub fn get_opt_text(row: &AnyRow, col: &str) -> Result<Option<String>, StoreError> {
    match row.try_get::<Option<String>, _>(col) {
        Ok(s) => Ok(s),
        Err(_) => {
            let bytes: Option<Vec<u8>> = row.try_get(col)?;
            bytes
                .map(|b| {
                    String::from_utf8(b)
                        .map_err(|e| StoreError::Corrupt(format!("column {col} is not UTF-8: {e}")))
                })
                .transpose()
        }
    }
}

pub fn parse_ts(s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("bad stored timestamp {s:?}: {e}")))
}
