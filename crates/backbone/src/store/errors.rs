//! Store errors and their classification, in one place: every caller asks
//! [`StoreError::class`] what a database error means instead of matching
//! codes itself. The class decides what happens to the message: hold it
//! (unavailable), run it again (contention), dead-letter it as `invalid`
//! (data), or report it (permission, other).

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("unsupported database url (expected mysql:// or sqlite://)")]
    UnsupportedUrl,
    /// A command that only reads found no SQLite file; it never creates one.
    #[error(
        "the database file {} does not exist: run `event-backbone migrate` (or `run`) first, \
         or point database.url at the right file (commands that only read never create it)",
        .0.display()
    )]
    NoDatabaseFile(std::path::PathBuf),
    /// The database did not answer within `database.query_timeout` (a
    /// network that hangs rather than refuses, e.g. during a failover).
    #[error("the database did not answer within {}", humantime::format_duration(*.0))]
    TimedOut(std::time::Duration),
    /// An earlier event of the same record could not be stored (the
    /// database was away); this one may only follow it, so it waits too.
    #[error("an earlier event of this record could not be stored yet; this one follows it")]
    BehindUnstored,
}

/// What a store error means for the work that hit it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreErrorClass {
    /// The database could not be reached, the connection broke, or it is
    /// read-only during a failover: nothing was applied; try again later.
    Unavailable,
    /// A concurrent writer got in the way (deadlock, lock wait timeout,
    /// busy SQLite file, a unique key claimed by another replica): running
    /// the same work again resolves it.
    Contention,
    /// The database refused these values (too long, CHECK failed, bad
    /// value, out of range, packet too big): the same data fails the same
    /// way every time. Never transient.
    Data,
    /// The database user lacks a privilege: an operator has to fix grants.
    Permission,
    /// Anything else (a bug, a schema behind the binary, corrupt rows).
    Other,
}

impl StoreErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreErrorClass::Unavailable => "unavailable",
            StoreErrorClass::Contention => "contention",
            StoreErrorClass::Data => "data",
            StoreErrorClass::Permission => "permission",
            StoreErrorClass::Other => "other",
        }
    }
}

impl StoreError {
    /// The pool (or a worker holding it) is gone: the process is shutting down.
    pub fn pool_closed() -> Self {
        StoreError::Sqlx(sqlx::Error::PoolClosed)
    }

    /// The class of this error (see [`StoreErrorClass`]).
    pub fn class(&self) -> StoreErrorClass {
        match self {
            StoreError::Sqlx(e) => classify(e),
            StoreError::TimedOut(_) | StoreError::BehindUnstored => StoreErrorClass::Unavailable,
            StoreError::Migrate(_)
            | StoreError::Corrupt(_)
            | StoreError::UnsupportedUrl
            | StoreError::NoDatabaseFile(_) => StoreErrorClass::Other,
        }
    }

    /// The database could not be reached or the connection broke: nothing we
    /// did was applied, and the message must be retried later (nack).
    pub fn is_unavailable(&self) -> bool {
        self.class() == StoreErrorClass::Unavailable
    }

    /// A unique key refused the row (a fingerprint claimed before, by this
    /// or another replica): the same write will be refused again.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            StoreError::Sqlx(sqlx::Error::Database(d)) => matches!(
                server_code(d.as_ref()),
                Some(1062 | 1022 | 1169 | 1586 | 1859 | 2067 | 1555)
            ),
            _ => false,
        }
    }

    /// A conflict with a concurrent writer: retrying the same work resolves it.
    pub fn is_contention(&self) -> bool {
        self.class() == StoreErrorClass::Contention
    }

    /// Either of the above: worth trying again. A data error never is.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.class(),
            StoreErrorClass::Unavailable | StoreErrorClass::Contention
        )
    }

    /// The database refused the values themselves.
    pub fn is_data(&self) -> bool {
        self.class() == StoreErrorClass::Data
    }

    /// The column (or constraint) a data error names, when the database's
    /// message says which: `record_type`, `events.changes`, …
    pub fn column(&self) -> Option<String> {
        match self {
            StoreError::Sqlx(sqlx::Error::Database(d)) => column_in_message(d.message()),
            _ => None,
        }
    }
}

/// The server's own error number: MySQL's numeric code (sqlx's `code()` is
/// the SQLSTATE, which lumps many errors together), SQLite's extended code.
pub(crate) fn server_code(d: &dyn sqlx::error::DatabaseError) -> Option<u32> {
    match d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        Some(m) => Some(u32::from(m.number())),
        None => d.code().and_then(|c| c.parse().ok()),
    }
}

/// The SQLSTATE of a MySQL error (SQLite has none).
fn sqlstate(d: &dyn sqlx::error::DatabaseError) -> Option<String> {
    d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .and_then(|m| m.code().map(str::to_string))
}

fn classify(e: &sqlx::Error) -> StoreErrorClass {
    use StoreErrorClass::*;
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_)
        | sqlx::Error::BeginFailed => Unavailable,
        // A value sqlx itself could not encode is a data problem too.
        sqlx::Error::Encode(_) => Data,
        sqlx::Error::Database(d) => {
            let d = d.as_ref();
            if d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .is_some()
            {
                classify_mysql(server_code(d), sqlstate(d).as_deref())
            } else if d.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                classify_sqlite(server_code(d))
            } else {
                Other
            }
        }
        _ => Other,
    }
}

/// MySQL 8 / MariaDB by server error number first, SQLSTATE class second.
pub(crate) fn classify_mysql(code: Option<u32>, sqlstate: Option<&str>) -> StoreErrorClass {
    use StoreErrorClass::*;
    if let Some(code) = code {
        match code {
            // Server shutting down, too many connections (global / per
            // user), connection killed (failover), server gone away / lost
            // connection (client codes, should sqlx ever report them),
            // offline mode, Galera node not ready, read-only server
            // (--read-only 1290, MariaDB read-only mode 1836, read-only
            // transaction 1792) during a failover, interrupted by a kill.
            1040 | 1053 | 1203 | 1226 | 1927 | 2002 | 2003 | 2006 | 2013 | 3032 | 1047 | 1290
            | 1836 | 1792 | 1317 | 4031 | 1152 | 1184 => return Unavailable,
            // Deadlock, lock wait timeout, NOWAIT lock refused, record
            // changed since read (MariaDB snapshot isolation), and a unique
            // key another replica claimed first (the dedupe claim race).
            1213 | 1205 | 3572 | 1020 | 1062 | 1022 | 1169 | 1586 | 1859 => return Contention,
            // Too long (1406), CHECK failed (MariaDB 4025, MySQL 3819),
            // incorrect string / datetime / integer value (1366, 1292,
            // 1367, 1411), out of range (1264, 1690), truncated (1265),
            // NOT NULL (1048), bad JSON (MySQL 3140, 3141, 3146, 3157),
            // row or packet too big for the server (1118, 1153, 1301).
            1406 | 4025 | 3819 | 1366 | 1292 | 1367 | 1411 | 1264 | 1690 | 1265 | 1048 | 3140
            | 3141 | 3146 | 3157 | 1118 | 1153 | 1301 => return Data,
            // Table / column / routine / database access denied, access
            // denied for the user, missing privilege.
            1142 | 1143 | 1370 | 1044 | 1045 | 1698 | 1227 | 1211 => return Permission,
            _ => {}
        }
    }
    match sqlstate {
        Some(s) if s.starts_with("08") => Unavailable,
        Some("40001") => Contention,
        Some(s) if s.starts_with("22") => Data,
        Some("28000") => Permission,
        _ => Other,
    }
}

/// SQLite by (extended) result code.
pub(crate) fn classify_sqlite(code: Option<u32>) -> StoreErrorClass {
    use StoreErrorClass::*;
    let Some(code) = code else {
        return Other;
    };
    match code {
        // CONSTRAINT_UNIQUE / PRIMARYKEY: another writer claimed the key.
        2067 | 1555 => Contention,
        // CONSTRAINT_CHECK / NOTNULL, TOOBIG, MISMATCH, RANGE.
        275 | 1299 | 18 | 20 | 25 => Data,
        _ => match code & 0xff {
            // BUSY, LOCKED (and their extended codes).
            5 | 6 => Contention,
            // NOMEM, IOERR, FULL, CANTOPEN, PROTOCOL: the file or the
            // disk under it is the problem, not the data.
            7 | 10 | 13 | 14 | 15 => Unavailable,
            // READONLY, AUTH.
            8 | 23 => Permission,
            // Any other constraint (FOREIGNKEY, TRIGGER…).
            19 => Data,
            _ => Other,
        },
    }
}

/// Pulls the column or constraint name out of the server's message.
pub(crate) fn column_in_message(msg: &str) -> Option<String> {
    // MariaDB 4025: "CONSTRAINT `events.changes` failed for `db`.`events`"
    if let Some(rest) = msg.strip_prefix("CONSTRAINT `") {
        return rest.split('`').next().map(str::to_string);
    }
    // MySQL 3819: "Check constraint 'chk_x' is violated."
    if let Some(rest) = msg.strip_prefix("Check constraint '") {
        return rest.split('\'').next().map(str::to_string);
    }
    // "… for column 'record_type' at row 1", "Column 'x' cannot be null"
    for marker in ["column '", "Column '"] {
        if let Some(i) = msg.find(marker) {
            let rest = &msg[i + marker.len()..];
            return rest.split('\'').next().map(str::to_string);
        }
    }
    // MariaDB: "… for column `db`.`events`.`timestamp` at row 1"
    if let Some(i) = msg.find("column `") {
        let rest = &msg[i + "column ".len()..];
        let quoted: String = rest.split(' ').next().unwrap_or("").to_string();
        return quoted
            .rsplit('.')
            .next()
            .map(|c| c.trim_matches('`').to_string())
            .filter(|c| !c.is_empty());
    }
    // SQLite: "CHECK constraint failed: base_version >= 0",
    // "NOT NULL constraint failed: events.record_type"
    if let Some(i) = msg.find("constraint failed: ") {
        return Some(msg[i + "constraint failed: ".len()..].trim().to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::StoreErrorClass::*;
    use super::*;

    #[test]
    fn mysql_codes_by_class() {
        for (code, state, class) in [
            (1406, "22001", Data),
            (4025, "23000", Data),
            (3819, "HY000", Data),
            (1366, "22007", Data),
            (1292, "22007", Data),
            (1264, "22003", Data),
            (1153, "08S01", Data),
            (1213, "40001", Contention),
            (1205, "HY000", Contention),
            (1062, "23000", Contention),
            (1142, "42000", Permission),
            (1143, "42000", Permission),
            (1044, "42000", Permission),
            (1045, "28000", Permission),
            (1040, "08004", Unavailable),
            (1290, "HY000", Unavailable),
            (1836, "HY000", Unavailable),
            (1927, "70100", Unavailable),
            (1146, "42S02", Other),
            (1644, "45000", Other),
            // Unknown numbers fall back to the SQLSTATE class.
            (9999, "22023", Data),
            (9998, "08S01", Unavailable),
        ] {
            assert_eq!(classify_mysql(Some(code), Some(state)), class, "{code}");
        }
    }

    #[test]
    fn sqlite_codes_by_class() {
        for (code, class) in [
            (275, Data),
            (1299, Data),
            (18, Data),
            (2067, Contention),
            (1555, Contention),
            (5, Contention),
            (517, Contention),
            (6, Contention),
            (262, Contention),
            (10, Unavailable),
            (3850, Unavailable),
            (13, Unavailable),
            (14, Unavailable),
            (8, Permission),
            (1, Other),
        ] {
            assert_eq!(classify_sqlite(Some(code)), class, "{code}");
        }
    }

    #[test]
    fn data_errors_are_never_transient() {
        let e = StoreError::Sqlx(sqlx::Error::Encode("x".into()));
        assert_eq!(e.class(), Data);
        assert!(!e.is_transient() && !e.is_unavailable() && !e.is_contention());
    }

    #[test]
    fn column_names_from_messages() {
        for (msg, want) in [
            (
                "Data too long for column 'record_type' at row 1",
                "record_type",
            ),
            (
                "CONSTRAINT `events.changes` failed for `eb`.`events`",
                "events.changes",
            ),
            (
                "Incorrect datetime value: '2040-01-01' for column `eb`.`events`.`timestamp` at row 1",
                "timestamp",
            ),
            ("Column 'record_id' cannot be null", "record_id"),
            (
                "Out of range value for column 'base_version' at row 1",
                "base_version",
            ),
            ("Check constraint 'chk_events_base_version' is violated.", "chk_events_base_version"),
            ("CHECK constraint failed: base_version >= 0", "base_version >= 0"),
            (
                "NOT NULL constraint failed: events.record_type",
                "events.record_type",
            ),
        ] {
            assert_eq!(column_in_message(msg).as_deref(), Some(want), "{msg}");
        }
        assert_eq!(column_in_message("Deadlock found"), None);
    }
}
