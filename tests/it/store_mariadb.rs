//! The event store's guarantees, enforced by the database itself: the ledger
//! is immutable (triggers, and grants for the runtime user) and timestamps
//! keep their microseconds.

use std::time::Duration;

use backbone::store::Store;

use crate::support::*;

async fn migrated(db: Db) -> Option<(TestDb, Store)> {
    let tdb = fresh_db(db).await?;
    let store = Store::connect(&tdb.url, 4, Duration::from_secs(10))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    // Migrating twice is a no-op.
    store.migrate().await.unwrap();
    Some((tdb, store))
}

async fn seed(store: &Store) {
    sqlx::query(
        "INSERT INTO events (id, record_type, record_id, source, `timestamp`, base_version, changes, processed, sequence_num) \
         VALUES ('0190b0c4-6c3f-7000-8000-00000000000a', 'project', '42', 'suitex', ?, 7, '{\"a\":1}', 1, 1)",
    )
    .bind(store.dialect().ts_value(
        &chrono::DateTime::parse_from_rfc3339("2026-03-13T20:00:00.123456Z")
            .unwrap()
            .with_timezone(&chrono::Utc),
    ))
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO event_audit_log (event_id, fingerprint, stage, processing_outcome, attempt) \
         VALUES ('0190b0c4-6c3f-7000-8000-00000000000a', ?, 'merge', 'merged', 1)",
    )
    .bind("a".repeat(64))
    .execute(store.pool())
    .await
    .unwrap();
}

async fn triggers_refuse_changes(db: Db) {
    let Some((_tdb, store)) = migrated(db).await else {
        return;
    };
    seed(&store).await;
    for (sql, msg) in [
        (
            "UPDATE events SET record_id = 'x'",
            "Event records are immutable and cannot be updated.",
        ),
        (
            "DELETE FROM events",
            "Event records are immutable and cannot be deleted.",
        ),
        (
            "UPDATE event_audit_log SET stage = 'x'",
            "Event records are immutable and cannot be updated.",
        ),
        (
            "DELETE FROM event_audit_log",
            "Event records are immutable and cannot be deleted.",
        ),
    ] {
        let err = sqlx::query(sql).execute(store.pool()).await.expect_err(sql);
        assert!(err.to_string().contains(msg), "{sql}: {err}");
    }
    assert_eq!(count(&store, "SELECT COUNT(*) FROM events").await, 1);
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM event_audit_log").await,
        1
    );
}

#[tokio::test]
async fn ledger_triggers_refuse_update_and_delete_mariadb() {
    triggers_refuse_changes(Db::Mariadb).await;
}

#[tokio::test]
async fn ledger_triggers_refuse_update_and_delete_sqlite() {
    triggers_refuse_changes(Db::Sqlite).await;
}

async fn microseconds_round_trip(db: Db) {
    let Some((_tdb, store)) = migrated(db).await else {
        return;
    };
    seed(&store).await;
    let mut conn = store.pool().acquire().await.unwrap();
    let evs =
        backbone::store::ledger::record_events(&mut conn, store.dialect(), "project", "42", None)
            .await
            .unwrap();
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].timestamp, "2026-03-13T20:00:00.123456Z");
    assert!(evs[0].processed);
    assert_eq!(evs[0].changes, serde_json::json!({"a": 1}));
}

#[tokio::test]
async fn timestamps_keep_microseconds_mariadb() {
    microseconds_round_trip(Db::Mariadb).await;
}

#[tokio::test]
async fn timestamps_keep_microseconds_sqlite() {
    microseconds_round_trip(Db::Sqlite).await;
}

/// The shipped grants: `sync_worker` may read and append to the ledger but
/// the database denies it UPDATE and DELETE.
#[tokio::test]
async fn sync_worker_cannot_update_or_delete_the_ledger_mariadb() {
    let Some((tdb, store)) = migrated(Db::Mariadb).await else {
        return;
    };
    seed(&store).await;
    let db = tdb.name.clone().unwrap();
    let user = apply_shipped_grants(&db).await;
    let worker = Store::connect(
        &mariadb_url_as(&user, "pw", &db),
        2,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(count(&worker, "SELECT COUNT(*) FROM events").await, 1);
    sqlx::query(
        "INSERT INTO event_audit_log (fingerprint, stage, processing_outcome, attempt) VALUES (?, 'merge', 'duplicate', 1)",
    )
    .bind("b".repeat(64))
    .execute(worker.pool())
    .await
    .expect("sync_worker may append to the audit log");
    for sql in [
        "UPDATE events SET record_id = 'x'",
        "DELETE FROM events",
        "UPDATE event_audit_log SET stage = 'x'",
        "DELETE FROM event_audit_log",
    ] {
        let err = sqlx::query(sql)
            .execute(worker.pool())
            .await
            .expect_err(sql);
        assert!(
            err.to_string().contains("command denied"),
            "{sql} must be denied by grants: {err}"
        );
    }
    drop_user(&user).await;
}

async fn database_exists(name: &str) -> bool {
    use sqlx::Connection;
    let mut admin = sqlx::MySqlConnection::connect(&mariadb_admin_url())
        .await
        .expect("admin connection");
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
    )
    .bind(name)
    .fetch_one(&mut admin)
    .await
    .expect("count schemata");
    n == 1
}

/// A test's database goes when its guard does, even with a migrated store
/// still connected to it and after a panic.
#[tokio::test]
async fn test_databases_are_dropped_with_their_guard() {
    let Some((tdb, store)) = migrated(Db::Mariadb).await else {
        return;
    };
    let name = tdb.name.clone().expect("a MariaDB database");
    assert!(database_exists(&name).await);
    drop(tdb);
    assert!(!database_exists(&name).await, "{name} is still there");
    store.close().await;

    let Some(tdb) = fresh_db(Db::Mariadb).await else {
        return;
    };
    let name = tdb.name.clone().expect("a MariaDB database");
    let panicked = std::thread::spawn(move || {
        let _guard = tdb;
        panic!("a failing test");
    })
    .join();
    assert!(panicked.is_err());
    assert!(!database_exists(&name).await, "{name} is still there");
}

/// The history tables are compressed on 8 KiB pages (migration 0012): 4 KiB
/// pages kept the bytes lower but spent about half of MariaDB's CPU in zlib
/// during a merge drain (docs/capacity.md, "Bytes per event").
#[tokio::test]
async fn history_tables_are_compressed_on_8_kib_pages() {
    let Some((tdb, store)) = migrated(Db::Mariadb).await else {
        return;
    };
    let name = tdb.name.clone().expect("a MariaDB database");
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT TABLE_NAME, LOWER(CREATE_OPTIONS) FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = ? AND TABLE_NAME IN ('events', 'event_audit_log', 'merged_events')",
    )
    .bind(&name)
    .fetch_all(store.pool())
    .await
    .expect("read the tables' options");
    let mut names: Vec<&str> = rows.iter().map(|(t, _)| t.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["event_audit_log", "events", "merged_events"]);
    for (table, options) in &rows {
        assert!(
            options.contains("row_format=compressed") && options.contains("key_block_size=8"),
            "{table}: {options}"
        );
    }
    store.close().await;
}
