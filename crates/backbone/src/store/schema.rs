//! The schema gate (docs/spec.md §10, "run as the least-privilege runtime user"):
//! what `_sqlx_migrations` says is applied, compared with the migrations
//! embedded in this binary. Reading it is one SELECT, which the runtime user
//! of `sql/grants-mysql.sql` may do; only [`ensure`] with
//! `database.migrate_on_start` ever changes the schema.
//!
//! Policy (docs/operations.md, "Schema changes"): migrations are additive, so
//! a binary runs on a schema *ahead* of it (a rollback) with a warning, and
//! refuses to start on a schema *behind* it.

use std::collections::HashMap;
use std::fmt;

use sqlx::migrate::Migrator;
use sqlx::Row;

use super::errors::server_code;
use super::{get_text, Backend, Store, StoreError};

/// One migration, by version and description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationId {
    pub version: i64,
    pub description: String,
}

impl fmt::Display for MigrationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.version, self.description)
    }
}

/// A row of `_sqlx_migrations`.
#[derive(Debug, Clone)]
pub struct Applied {
    pub version: i64,
    pub description: String,
    pub success: bool,
    pub checksum: Vec<u8>,
}

/// The database's schema measured against this binary's migrations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaStatus {
    /// This binary's migrations, in order.
    pub embedded: Vec<MigrationId>,
    /// There is no `_sqlx_migrations` table: nothing was ever migrated.
    pub never_migrated: bool,
    /// Embedded migrations the database has not applied.
    pub missing: Vec<MigrationId>,
    /// Applied with `success = false`: it stopped part-way (MySQL DDL is not
    /// transactional).
    pub failed: Vec<MigrationId>,
    /// Applied from different SQL than this binary embeds.
    pub changed: Vec<MigrationId>,
    /// Applied migrations this binary does not know (a newer release ran
    /// them), with the database's description.
    pub unknown: Vec<MigrationId>,
}

impl SchemaStatus {
    /// The binary needs something the schema lacks: do not start.
    pub fn is_behind(&self) -> bool {
        self.never_migrated
            || !self.missing.is_empty()
            || !self.failed.is_empty()
            || !self.changed.is_empty()
    }

    /// The schema has migrations this binary does not know.
    pub fn is_ahead(&self) -> bool {
        !self.unknown.is_empty()
    }

    pub fn latest(&self) -> Option<&MigrationId> {
        self.embedded.last()
    }

    /// Why the schema is behind and what the operator does about it.
    pub fn behind_message(&self) -> String {
        const ADMIN: &str =
            "with the administrator's database credentials (the runtime user may not change \
             the schema; the daemon migrates only when database.migrate_on_start is true)";
        let mut parts = Vec::new();
        if self.never_migrated {
            parts.push(format!(
                "the database has no _sqlx_migrations table: it was never migrated. \
                 Run `event-backbone migrate` {ADMIN}; this binary needs migrations {}",
                list(&self.embedded)
            ));
        } else if !self.missing.is_empty() {
            parts.push(format!(
                "the database schema is behind this binary: {} {} not applied. \
                 Run `event-backbone migrate` {ADMIN}, then start again",
                plural(self.missing.len(), "migration", "migrations"),
                list(&self.missing)
                    + if self.missing.len() == 1 {
                        " is"
                    } else {
                        " are"
                    }
            ));
        }
        if !self.failed.is_empty() {
            parts.push(format!(
                "{} {} stopped part-way (success = false in _sqlx_migrations): repair the schema by hand, \
                 delete that row, then run `event-backbone migrate` {ADMIN}",
                plural(self.failed.len(), "migration", "migrations"),
                list(&self.failed)
            ));
        }
        if !self.changed.is_empty() {
            parts.push(format!(
                "{} {} applied from different SQL than this binary embeds (checksum mismatch): \
                 this binary and the database disagree on the migration history; \
                 `event-backbone migrate` refuses this too, so deploy the release that applied them",
                plural(self.changed.len(), "migration", "migrations"),
                list(&self.changed)
            ));
        }
        parts.join("; ")
    }

    /// What a binary older than its schema does about it.
    pub fn ahead_message(&self) -> String {
        let one = self.unknown.len() == 1;
        format!(
            "applied {} {} {} unknown to this binary (a newer release applied {}); \
             migrations are additive, so this binary runs on that schema (docs/operations.md, \"Schema changes\")",
            if one { "migration" } else { "migrations" },
            list(&self.unknown),
            if one { "is" } else { "are" },
            if one { "it" } else { "them" }
        )
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        one.to_string()
    } else {
        many.to_string()
    }
}

fn list(ids: &[MigrationId]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why the daemon may not start on this database.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The migration table exists but could not be read (grants, network).
    #[error(
        "cannot read the applied migrations from _sqlx_migrations ({0}); the database user needs \
         SELECT on it (sql/grants-mysql.sql)"
    )]
    Unreadable(StoreError),
    #[error("{}", .0.behind_message())]
    Behind(Box<SchemaStatus>),
    #[error("database.migrate_on_start is true but migrating failed: {0}")]
    Migrate(StoreError),
}

/// Compares what is applied (`None`: no migration table) with `migrator`.
pub fn compare(migrator: &Migrator, applied: Option<&[Applied]>) -> SchemaStatus {
    let embedded: Vec<MigrationId> = migrator
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| MigrationId {
            version: m.version,
            description: m.description.to_string(),
        })
        .collect();
    let Some(applied) = applied else {
        return SchemaStatus {
            missing: embedded.clone(),
            embedded,
            never_migrated: true,
            ..Default::default()
        };
    };
    let by_version: HashMap<i64, &Applied> = applied.iter().map(|a| (a.version, a)).collect();
    let mut status = SchemaStatus::default();
    for m in migrator
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
    {
        let id = MigrationId {
            version: m.version,
            description: m.description.to_string(),
        };
        match by_version.get(&m.version) {
            None => status.missing.push(id),
            Some(a) if !a.success => status.failed.push(id),
            Some(a) if a.checksum.as_slice() != &*m.checksum => status.changed.push(id),
            Some(_) => {}
        }
    }
    let mut unknown: Vec<MigrationId> = applied
        .iter()
        .filter(|a| !embedded.iter().any(|e| e.version == a.version))
        .map(|a| MigrationId {
            version: a.version,
            description: a.description.clone(),
        })
        .collect();
    unknown.sort_by_key(|m| m.version);
    status.unknown = unknown;
    status.embedded = embedded;
    status
}

/// The rows of `_sqlx_migrations`; `None` when the table does not exist.
pub async fn applied(store: &Store) -> Result<Option<Vec<Applied>>, StoreError> {
    // The Any driver decodes neither SQLite's BOOLEAN nor MySQL's TINYINT.
    let rows = sqlx::query(
        "SELECT version, description, CASE WHEN success THEN 1 ELSE 0 END AS success, checksum \
         FROM _sqlx_migrations ORDER BY version",
    )
    .fetch_all(store.pool())
    .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) if is_missing_table(store.backend(), &e) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let success: i64 = r.try_get("success")?;
        out.push(Applied {
            version: r.try_get("version")?,
            description: get_text(r, "description")?,
            success: success != 0,
            checksum: r.try_get("checksum")?,
        });
    }
    Ok(Some(out))
}

/// MySQL's ER_NO_SUCH_TABLE, SQLite's "no such table" (a plain SQLITE_ERROR).
fn is_missing_table(backend: Backend, e: &sqlx::Error) -> bool {
    match backend {
        Backend::Mysql => match e {
            sqlx::Error::Database(d) => server_code(d.as_ref()) == Some(1146),
            _ => false,
        },
        Backend::Sqlite => match e {
            sqlx::Error::Database(d) => d.message().contains("no such table"),
            _ => false,
        },
    }
}

/// The schema measured against this binary; read-only.
pub async fn inspect(store: &Store) -> Result<SchemaStatus, StoreError> {
    let applied = applied(store).await?;
    Ok(compare(store.migrator(), applied.as_deref()))
}

/// What `run` does before anything else: refuse a schema behind the binary
/// (or migrate it first when `migrate_on_start`), warn about one ahead of
/// it. An up-to-date schema is never touched, so the runtime user passes
/// even with `migrate_on_start` (sqlx's migrator would issue DDL).
pub async fn ensure(store: &Store, migrate_on_start: bool) -> Result<SchemaStatus, SchemaError> {
    let mut status = inspect(store).await.map_err(SchemaError::Unreadable)?;
    if status.is_behind() && migrate_on_start {
        tracing::info!(
            missing = %list(&status.missing),
            "database.migrate_on_start is true: applying the migrations the schema lacks."
        );
        store.migrate().await.map_err(SchemaError::Migrate)?;
        status = inspect(store).await.map_err(SchemaError::Unreadable)?;
    }
    if status.is_behind() {
        return Err(SchemaError::Behind(Box::new(status)));
    }
    if status.is_ahead() {
        tracing::warn!(
            unknown = %list(&status.unknown),
            "The database schema is ahead of this binary: {}.",
            status.ahead_message()
        );
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied_all(m: &Migrator) -> Vec<Applied> {
        m.iter()
            .map(|m| Applied {
                version: m.version,
                description: m.description.to_string(),
                success: true,
                checksum: m.checksum.to_vec(),
            })
            .collect()
    }

    fn migrator() -> &'static Migrator {
        &super::super::SQLITE_MIGRATIONS
    }

    #[test]
    fn everything_applied_is_current() {
        let s = compare(migrator(), Some(&applied_all(migrator())));
        assert!(!s.is_behind() && !s.is_ahead(), "{s:?}");
        assert_eq!(s.embedded.len(), migrator().iter().count());
    }

    #[test]
    fn no_table_is_behind_and_names_every_migration() {
        let s = compare(migrator(), None);
        assert!(s.never_migrated && s.is_behind());
        let msg = s.behind_message();
        assert!(msg.contains("never migrated"), "{msg}");
        assert!(msg.contains("`event-backbone migrate`"), "{msg}");
        for m in migrator().iter() {
            assert!(
                msg.contains(&format!("{} ({})", m.version, m.description)),
                "{msg}"
            );
        }
    }

    #[test]
    fn the_last_missing_is_behind_and_named() {
        let mut rows = applied_all(migrator());
        let last = rows.pop().expect("at least one migration");
        let s = compare(migrator(), Some(&rows));
        assert!(s.is_behind() && !s.is_ahead());
        assert_eq!(s.missing.len(), 1);
        let msg = s.behind_message();
        assert!(
            msg.contains(&format!(
                "migration {} ({}) is not applied",
                last.version, last.description
            )),
            "{msg}"
        );
        assert!(msg.contains("`event-backbone migrate`"), "{msg}");
    }

    #[test]
    fn failed_and_changed_are_behind() {
        let mut rows = applied_all(migrator());
        rows[0].success = false;
        let s = compare(migrator(), Some(&rows));
        assert_eq!(s.failed.len(), 1);
        assert!(s.is_behind());
        assert!(s.behind_message().contains("part-way"));

        let mut rows = applied_all(migrator());
        rows[0].checksum = vec![0; 48];
        let s = compare(migrator(), Some(&rows));
        assert_eq!(s.changed.len(), 1);
        assert!(s.is_behind());
        assert!(s.behind_message().contains("checksum mismatch"));
    }

    #[test]
    fn unknown_versions_are_ahead_not_behind() {
        let mut rows = applied_all(migrator());
        let next = rows.last().map_or(1, |r| r.version + 1);
        rows.push(Applied {
            version: next,
            description: "from the future".into(),
            success: true,
            checksum: vec![1; 48],
        });
        let s = compare(migrator(), Some(&rows));
        assert!(!s.is_behind() && s.is_ahead(), "{s:?}");
        let msg = s.ahead_message();
        assert!(msg.contains(&format!("{next} (from the future)")), "{msg}");
        assert!(msg.contains("additive"), "{msg}");
    }
}
