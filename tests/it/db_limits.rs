//! Data the database refuses (issue 12): store errors classified by class
//! against the real servers, one refused event never failing its batch,
//! the park stage parking anything, and generated extreme-but-valid events
//! through the real store.

use std::collections::HashMap;
use std::time::Duration;

use backbone::model::fingerprint::fingerprint;
use backbone::model::limits;
use backbone::model::raw_event::{parse_raw_event, RawEvent};
use backbone::model::rules::MergePolicy;
use backbone::stages::merge::batch::{
    process, Decision, EngineConfig, EventItem, Item, MergeEngine,
};
use backbone::stages::park::ParkStage;
use backbone::stages::{ErrorClass, Incoming, Stage};
use backbone::store::dead_letters::NewDeadLetter;
use backbone::store::ledger::AuditRow;
use backbone::store::{Store, StoreError, StoreErrorClass};
use backbone::topology::{Env, TopicKind, Topology};
use bytes::Bytes;
use serde_json::{json, Value};
use sqlx::Connection;

use crate::support::*;

async fn migrated(db: Db) -> Option<(TestDb, Store)> {
    let tdb = fresh_db(db).await?;
    let store = Store::connect(&tdb.url, 4, Duration::from_secs(10))
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    Some((tdb, store))
}

fn class_of<T: std::fmt::Debug>(r: Result<T, sqlx::Error>) -> (StoreErrorClass, StoreError) {
    let e = StoreError::from(r.expect_err("the statement must fail"));
    (e.class(), e)
}

#[track_caller]
fn assert_class(r: (StoreErrorClass, StoreError), want: StoreErrorClass) -> StoreError {
    let (class, e) = r;
    assert_eq!(class, want, "{e}");
    match want {
        StoreErrorClass::Data => {
            assert!(!e.is_transient() && !e.is_unavailable() && !e.is_contention());
        }
        StoreErrorClass::Unavailable => assert!(e.is_unavailable() && e.is_transient()),
        StoreErrorClass::Contention => assert!(e.is_contention() && e.is_transient()),
        StoreErrorClass::Permission | StoreErrorClass::Other => assert!(!e.is_transient()),
    }
    e
}

const TS: &str = "2026-03-13 20:00:00.000000";

fn insert_event_sql() -> &'static str {
    "INSERT INTO events (id, record_type, record_id, source, `timestamp`, base_version, changes, \
     processed, sequence_num) VALUES (?, ?, ?, 'suitex', ?, ?, ?, 1, 1)"
}

async fn insert_event(
    store: &Store,
    id: &str,
    record_type: &str,
    ts: &str,
    base: i64,
    changes: &str,
) -> Result<sqlx::any::AnyQueryResult, sqlx::Error> {
    sqlx::query(insert_event_sql())
        .bind(id.to_string())
        .bind(record_type.to_string())
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(ts.to_string())
        .bind(base)
        .bind(changes.to_string())
        .execute(store.pool())
        .await
}

fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// Data: too long (1406), JSON too deep (4025), bad datetime (1292), CHECK
/// (4025) — each names its column, none is transient.
#[tokio::test]
async fn data_errors_are_classified_data_mariadb() {
    let Some((_tdb, store)) = migrated(Db::Mariadb).await else {
        return;
    };
    let id = || uuid::Uuid::new_v4().to_string();
    let long = "a".repeat(limits::RECORD_TYPE_MAX + 1);
    let e = assert_class(
        class_of(insert_event(&store, &id(), &long, TS, 0, "{}").await),
        StoreErrorClass::Data,
    );
    assert_eq!(e.column().as_deref(), Some("record_type"), "{e}");

    // MariaDB's JSON check: 31 levels stored, 32 refused (the limit the
    // validator's CHANGES_MAX_DEPTH is derived from).
    let at_limit = format!("{{\"a\":{}}}", nested(limits::DB_JSON_MAX_DEPTH - 1));
    insert_event(&store, &id(), "t", TS, 0, &at_limit)
        .await
        .expect("31 levels fit");
    let too_deep = format!("{{\"a\":{}}}", nested(limits::DB_JSON_MAX_DEPTH));
    let e = assert_class(
        class_of(insert_event(&store, &id(), "t", TS, 0, &too_deep).await),
        StoreErrorClass::Data,
    );
    assert_eq!(e.column().as_deref(), Some("events.changes"), "{e}");

    let e = assert_class(
        class_of(insert_event(&store, &id(), "t", "2038-01-19 03:14:08.000000", 0, "{}").await),
        StoreErrorClass::Data,
    );
    assert_eq!(e.column().as_deref(), Some("timestamp"), "{e}");
    insert_event(&store, &id(), "t", "2038-01-19 03:14:07.999999", 0, "{}")
        .await
        .expect("the last TIMESTAMP(6) instant fits");
    insert_event(&store, &id(), "t", "1970-01-01 00:00:01.000000", 0, "{}")
        .await
        .expect("the first TIMESTAMP(6) instant fits");

    assert_class(
        class_of(insert_event(&store, &id(), "t", TS, -1, "{}").await),
        StoreErrorClass::Data,
    );
    // Out of range for BIGINT.
    assert_class(
        class_of(
            sqlx::query(
                "INSERT INTO record_state (record_type, record_id, version, last_seq, state) \
                 VALUES ('t', 'x', 99999999999999999999, 0, '{}')",
            )
            .execute(store.pool())
            .await,
        ),
        StoreErrorClass::Data,
    );
}

#[tokio::test]
async fn data_errors_are_classified_data_sqlite() {
    let Some((_tdb, store)) = migrated(Db::Sqlite).await else {
        return;
    };
    let id = || uuid::Uuid::new_v4().to_string();
    let e = assert_class(
        class_of(insert_event(&store, &id(), "t", TS, -1, "{}").await),
        StoreErrorClass::Data,
    );
    assert!(
        e.column().is_some_and(|c| c.contains("base_version")),
        "{e}"
    );
    assert_class(
        class_of(insert_event(&store, &id(), "t", TS, 0, "{not json").await),
        StoreErrorClass::Data,
    );
    // SQLite (3.46, bundled) takes JSON 1000 levels deep and no more.
    for (depth, valid) in [(1000, 1), (1001, 0)] {
        let v: i64 = sqlx::query_scalar("SELECT json_valid(?)")
            .bind(nested(depth))
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(v, valid, "json_valid at depth {depth}");
    }
    // It has no widths either: what MariaDB refuses is stored here
    // (MariaDB is the binding backend).
    let deep = format!("{{\"a\":{}}}", nested(200));
    insert_event(&store, &id(), &"a".repeat(500), TS, 0, &deep)
        .await
        .expect("SQLite stores it");
}

/// Contention: a lock wait timeout (1205) between two connections, a
/// deadlock (1213), and a unique key claimed first by another writer.
#[tokio::test]
async fn contention_errors_are_classified_contention_mariadb() {
    let Some((tdb, store)) = migrated(Db::Mariadb).await else {
        return;
    };
    let url = tdb.url.clone();
    let mut a = sqlx::MySqlConnection::connect(&url).await.unwrap();
    let mut b = sqlx::MySqlConnection::connect(&url).await.unwrap();
    for c in [&mut a, &mut b] {
        sqlx::query("SET SESSION innodb_lock_wait_timeout = 1")
            .execute(&mut *c)
            .await
            .unwrap();
    }
    sqlx::query(
        "INSERT INTO record_state (record_type, record_id, version, last_seq, state) \
         VALUES ('t', 'x', 1, 1, '{}'), ('t', 'y', 1, 1, '{}')",
    )
    .execute(store.pool())
    .await
    .unwrap();
    let lock = |id: &'static str| {
        format!("UPDATE record_state SET version = version + 1 WHERE record_type = 't' AND record_id = '{id}'")
    };
    sqlx::query("BEGIN").execute(&mut a).await.unwrap();
    sqlx::query(&lock("x")).execute(&mut a).await.unwrap();
    sqlx::query("BEGIN").execute(&mut b).await.unwrap();
    let waited = sqlx::query(&lock("x")).execute(&mut b).await;
    let e = assert_class(class_of(waited), StoreErrorClass::Contention);
    assert!(e.to_string().contains("1205"), "{e}");

    // Deadlock: a holds x, b holds y, each then wants the other's.
    sqlx::query("ROLLBACK").execute(&mut b).await.unwrap();
    for c in [&mut a, &mut b] {
        sqlx::query("SET SESSION innodb_lock_wait_timeout = 10")
            .execute(&mut *c)
            .await
            .unwrap();
    }
    sqlx::query("BEGIN").execute(&mut b).await.unwrap();
    sqlx::query(&lock("y")).execute(&mut b).await.unwrap();
    let a_wants_y = tokio::spawn(async move {
        let r = sqlx::query(&lock("y")).execute(&mut a).await;
        (r.map(|_| ()), a)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b_wants_x = sqlx::query(&lock("x")).execute(&mut b).await.map(|_| ());
    let (a_result, _a) = a_wants_y.await.unwrap();
    let victim = match (a_result, b_wants_x) {
        (Err(e), _) | (_, Err(e)) => e,
        _ => panic!("one side must be chosen as the deadlock victim"),
    };
    let e = assert_class(class_of::<()>(Err(victim)), StoreErrorClass::Contention);
    assert!(e.to_string().contains("1213"), "{e}");

    // A unique key another writer claimed first.
    let id = uuid::Uuid::new_v4().to_string();
    insert_event(&store, &id, "t", TS, 0, "{}").await.unwrap();
    assert_class(
        class_of(insert_event(&store, &id, "t", TS, 0, "{}").await),
        StoreErrorClass::Contention,
    );
}

#[tokio::test]
async fn contention_errors_are_classified_contention_sqlite() {
    let Some((tdb, store)) = migrated(Db::Sqlite).await else {
        return;
    };
    let id = uuid::Uuid::new_v4().to_string();
    insert_event(&store, &id, "t", TS, 0, "{}").await.unwrap();
    assert_class(
        class_of(insert_event(&store, &id, "t", TS, 0, "{}").await),
        StoreErrorClass::Contention,
    );
    // BUSY: another connection holds the write lock and this one will not wait.
    use sqlx::sqlite::SqliteConnectOptions;
    use std::str::FromStr;
    let opts = SqliteConnectOptions::from_str(&tdb.url)
        .unwrap()
        .busy_timeout(Duration::ZERO);
    let mut a = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
    let mut b = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut a)
        .await
        .unwrap();
    let busy = sqlx::query("BEGIN IMMEDIATE").execute(&mut b).await;
    assert_class(class_of(busy), StoreErrorClass::Contention);
}

/// Permission: a user without the grant (1142), a wrong password (1045).
#[tokio::test]
async fn permission_errors_are_classified_permission_mariadb() {
    let Some((tdb, _store)) = migrated(Db::Mariadb).await else {
        return;
    };
    let db = tdb.name.clone().unwrap();
    let user = apply_shipped_grants(&db).await;
    let worker = Store::connect(
        &mariadb_url_as(&user, "pw", &db),
        2,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let e = assert_class(
        class_of(
            sqlx::query("DELETE FROM events")
                .execute(worker.pool())
                .await,
        ),
        StoreErrorClass::Permission,
    );
    assert!(e.to_string().contains("1142"), "{e}");
    let denied = Store::connect(
        &mariadb_url_as(&user, "wrong", &db),
        1,
        Duration::from_secs(10),
    )
    .await
    .expect_err("a wrong password is refused");
    assert_eq!(denied.class(), StoreErrorClass::Permission, "{denied}");
    assert!(!denied.is_transient());
    worker.close().await;
    drop_user(&user).await;
}

/// Unavailable: nothing listening, a connection the server killed, a
/// closed pool.
#[tokio::test]
async fn unavailable_errors_are_classified_unavailable_mariadb() {
    let Some((tdb, store)) = migrated(Db::Mariadb).await else {
        return;
    };
    let refused = Store::connect(
        &format!("mysql://root@127.0.0.1:{}/x", free_port()),
        1,
        Duration::from_secs(5),
    )
    .await
    .expect_err("nobody listens there");
    assert_eq!(refused.class(), StoreErrorClass::Unavailable, "{refused}");

    let mut conn = sqlx::MySqlConnection::connect(&tdb.url).await.unwrap();
    let cid: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    sqlx::query(&format!("KILL CONNECTION {cid}"))
        .execute(store.pool())
        .await
        .unwrap();
    let gone = sqlx::query("SELECT 1").execute(&mut conn).await;
    assert_class(class_of(gone), StoreErrorClass::Unavailable);

    store.close().await;
    assert_class(
        class_of(sqlx::query("SELECT 1").execute(store.pool()).await),
        StoreErrorClass::Unavailable,
    );
}

#[tokio::test]
async fn unavailable_errors_are_classified_unavailable_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/missing/dir/t.db?mode=ro", dir.path().display());
    let mut opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("missing/dir/t.db"))
        .read_only(true);
    opts = opts.create_if_missing(false);
    let e = sqlx::SqliteConnection::connect_with(&opts)
        .await
        .expect_err("cannot open");
    let e = StoreError::from(e);
    assert_eq!(e.class(), StoreErrorClass::Unavailable, "{e} ({url})");
}

// ---- one refused event never fails its batch ----

fn engine_cfg(batch_max: usize, linger: Duration) -> EngineConfig {
    EngineConfig {
        policy: MergePolicy::default(),
        merged_topic: "projects/p/topics/events.merged.local".into(),
        batch_max,
        linger,
        workers: 1,
        confirmed: Default::default(),
    }
}

fn event(record_type: &str, record_id: &str, changes: Value) -> EventItem {
    let ev = RawEvent {
        id: None,
        record_type: record_type.into(),
        record_id: record_id.into(),
        source: backbone::model::raw_event::Source::Suitex,
        timestamp: chrono::Utc::now(),
        base_version: 0,
        changes: changes.as_object().cloned().unwrap_or_default(),
        full_snapshot_ref: None,
    };
    EventItem {
        fingerprint: fingerprint(&ev, &ev.changes),
        changes: ev.changes.clone(),
        event: ev,
        message_id: uuid::Uuid::new_v4().to_string(),
        execution: 1,
        data: Default::default(),
        attributes: Default::default(),
    }
}

/// A value nested so that `changes` is `depth` levels deep.
fn changes_of_depth(depth: usize) -> Value {
    let inner: Value = serde_json::from_str(&nested(depth - 1)).unwrap();
    json!({ "deep": inner })
}

async fn refused_event_does_not_fail_its_batch(db: Db) {
    let Some((_tdb, store)) = migrated(db).await else {
        return;
    };
    let engine = MergeEngine::start(store.clone(), engine_cfg(16, Duration::from_millis(300)));
    // Items that bypass the validator: what the database refuses on each backend.
    let bad: Vec<EventItem> = match db {
        Db::Mariadb => vec![
            event(
                &"a".repeat(limits::RECORD_TYPE_MAX + 1),
                "1",
                json!({"a": 1}),
            ),
            // 30 levels fit events.changes (31) but not record_state (32).
            event("deep", "1", changes_of_depth(limits::CHANGES_MAX_DEPTH + 1)),
        ],
        Db::Sqlite => vec![{
            let mut e = event("neg", "1", json!({"a": 1}));
            e.event.base_version = -1;
            e
        }],
    };
    let mut items: Vec<EventItem> = (0..6)
        .map(|i| event("good", &format!("g{i}"), json!({"n": i})))
        .collect();
    // Interleave: good, bad, good, …
    for (i, b) in bad.into_iter().enumerate() {
        items.insert(1 + 2 * i, b);
    }
    let n_bad = items.len() - 6;
    let results = futures::future::join_all(
        items
            .iter()
            .map(|e| engine.submit(Item::Event(Box::new(e.clone())))),
    )
    .await;
    let mut merged = 0;
    let mut refused = 0;
    for (item, r) in items.iter().zip(&results) {
        match r {
            Ok(Decision::Merged { .. }) => {
                assert_eq!(item.event.record_type, "good");
                merged += 1;
            }
            Err(e) => {
                assert_ne!(item.event.record_type, "good", "a good event failed: {e}");
                assert_eq!(e.class(), StoreErrorClass::Data, "{e}");
                let stage_err = backbone::stages::store_failure(e, "raw event");
                assert_eq!(stage_err.class, ErrorClass::Invalid, "{stage_err}");
                assert!(stage_err.message.contains("refused column"), "{stage_err}");
                refused += 1;
            }
            Ok(other) => panic!("unexpected decision {other:?}"),
        }
    }
    assert_eq!((merged, refused), (6, n_bad));
    assert_eq!(count(&store, "SELECT COUNT(*) FROM events").await, 6);
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM record_state WHERE record_type = 'good'"
        )
        .await,
        6
    );
}

#[tokio::test]
async fn refused_event_does_not_fail_its_batch_mariadb() {
    refused_event_does_not_fail_its_batch(Db::Mariadb).await;
}

#[tokio::test]
async fn refused_event_does_not_fail_its_batch_sqlite() {
    refused_event_does_not_fail_its_batch(Db::Sqlite).await;
}

/// Two events at the size limit in one batch: the statements are split by
/// bytes, so neither exceeds MariaDB's default 16 MiB packet.
#[tokio::test]
async fn largest_changes_merge_in_one_batch_mariadb() {
    let Some((_tdb, store)) = migrated(Db::Mariadb).await else {
        return;
    };
    let packet: i64 = sqlx::query_scalar("SELECT CAST(@@max_allowed_packet AS SIGNED)")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(
        packet >= limits::MIN_MAX_ALLOWED_PACKET as i64,
        "max_allowed_packet {packet}"
    );
    let big = |i: usize| {
        let s = "é".repeat((limits::CHANGES_MAX_BYTES - 64) / 2);
        let doc = json!({
            "source": "suitex", "record_type": "big", "record_id": format!("b{i}"),
            "base_version": 0, "timestamp": "2026-03-13T10:00:00Z", "changes": {"blob": s},
        })
        .to_string();
        let ev = parse_raw_event(doc.as_bytes()).expect("valid: just under the size limit");
        EventItem {
            fingerprint: fingerprint(&ev, &ev.changes),
            changes: ev.changes.clone(),
            event: ev,
            message_id: format!("m{i}"),
            execution: 1,
            data: Default::default(),
            attributes: Default::default(),
        }
    };
    let items = vec![Item::Event(Box::new(big(1))), Item::Event(Box::new(big(2)))];
    let decisions = process(&store, &engine_cfg(16, Duration::ZERO), &items)
        .await
        .expect("both stored in one transaction");
    assert!(decisions
        .iter()
        .all(|d| matches!(d, Decision::Merged { .. })));
    assert_eq!(count(&store, "SELECT COUNT(*) FROM events").await, 2);
}

// ---- park anything ----

fn hostile_dead_letter(id: &str) -> NewDeadLetter {
    NewDeadLetter {
        dlq_message_id: id.to_string(),
        origin_message_id: Some("o".repeat(500)),
        stage: "s".repeat(100),
        reason: "r".repeat(100),
        attempts: 1,
        fingerprint: Some("f".repeat(64)),
        record_type: Some("t".repeat(limits::RECORD_TYPE_MAX + 1)),
        record_id: Some("é".repeat(10_000)),
        last_error: Some("e".repeat(100_000)),
        errors: vec!["x".repeat(100_000)],
        data: vec![0xff, 0x00, b'{', 0xfe],
        attributes: HashMap::from([("k".to_string(), "v".repeat(5000))]),
        ordering_key: Some("k".repeat(10_000)),
        source_subscription: Some("s".repeat(1000)),
        delivery_count: Some(7),
        replay_of: None,
    }
}

async fn park_fits_every_column(db: Db) {
    let Some((_tdb, store)) = migrated(db).await else {
        return;
    };
    let long_id = format!("{}{}", "9".repeat(200), "a");
    for id in ["123", long_id.as_str()] {
        let dl = hostile_dead_letter(id);
        assert_eq!(
            dl.oversized_fields().len(),
            if id.len() > 128 { 9 } else { 8 },
            "{:?}",
            dl.oversized_fields()
        );
        let audit = AuditRow {
            event_id: None,
            fingerprint: "f".repeat(64),
            record_type: dl.record_type.clone(),
            record_id: dl.record_id.clone(),
            stage: "park".into(),
            outcome: "parked".into(),
            detail: None,
            message_id: Some(id.to_string()),
            attempt: 1,
            claim: false,
        };
        let parked = store.park(&dl, audit.clone()).await.expect("parked");
        assert_eq!(parked, backbone::store::dead_letters::Parked::Inserted);
        // Idempotent on redelivery, also with a cut id.
        let again = store.park(&dl, audit).await.expect("parked again");
        assert_eq!(again, backbone::store::dead_letters::Parked::AlreadyParked);
    }
    let rows = store.dead_letters(&Default::default(), 10).await.unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert_eq!(row.data, vec![0xff, 0x00, b'{', 0xfe], "data kept whole");
        assert_eq!(row.attributes["k"].len(), 5000, "attributes kept whole");
        assert_eq!(row.errors[0].len(), 100_000);
        let chars = |s: &Option<String>| s.as_deref().map_or(0, |s| s.chars().count());
        if db == Db::Mariadb {
            assert_eq!(chars(&row.record_type), limits::RECORD_TYPE_MAX);
            assert_eq!(chars(&row.record_id), limits::RECORD_ID_MAX);
            assert_eq!(row.stage.len(), limits::STAGE_MAX);
            assert!(row.dlq_message_id.chars().count() <= limits::MESSAGE_ID_MAX);
        }
        assert!(row.record_id.unwrap().chars().all(|c| c == 'é'));
    }
}

#[tokio::test]
async fn park_fits_every_column_mariadb() {
    park_fits_every_column(Db::Mariadb).await;
}

#[tokio::test]
async fn park_fits_every_column_sqlite() {
    park_fits_every_column(Db::Sqlite).await;
}

/// A dead letter that cannot be written at all (the runtime user lost its
/// INSERT grant on dead_letters) is nacked, counted, then held, and shows
/// in the /readyz detail; once it can be parked it is cleared.
#[tokio::test]
async fn unparkable_dead_letter_is_bounded_and_surfaced_mariadb() {
    let Some((tdb, _store)) = migrated(Db::Mariadb).await else {
        return;
    };
    let db = tdb.name.clone().unwrap();
    let user = apply_shipped_grants(&db).await;
    let mut admin = sqlx::MySqlConnection::connect(&mariadb_admin_url())
        .await
        .unwrap();
    sqlx::query(&format!(
        "REVOKE INSERT ON {db}.dead_letters FROM '{user}'@'%'"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    let worker = Store::connect(
        &mariadb_url_as(&user, "pw", &db),
        2,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let hold = Duration::from_millis(700);
    let stage = ParkStage::new(worker.clone(), Topology::new(Env::Local, "p")).with_hold(hold);
    let msg = Incoming {
        data: Bytes::from_static(b"not json"),
        attributes: HashMap::from([
            ("stage".to_string(), "merge".to_string()),
            ("dead_reason".to_string(), "invalid".to_string()),
        ]),
        message_id: "4242".into(),
        publish_time: None,
        ordering_key: String::new(),
        execution: 1,
        turn: Default::default(),
    };
    let failures = || {
        backbone::metrics::metrics()
            .park_failures
            .with_label_values(&["permission"])
            .get()
    };
    let before = failures();
    for attempt in 1..=backbone::stages::park::TRIES_BEFORE_HOLD {
        let started = std::time::Instant::now();
        let f = stage.handle(&msg).await.expect_err("cannot park");
        // Never acked (lost) nor dead-lettered: nacked.
        assert_eq!(f.error.class, ErrorClass::Unavailable, "{}", f.error);
        let held = started.elapsed() >= hold;
        assert_eq!(
            held,
            attempt == backbone::stages::park::TRIES_BEFORE_HOLD,
            "try {attempt} held: {held}"
        );
    }
    assert_eq!(failures() - before, 3);
    assert_eq!(backbone::stages::park::unparked_count(), 1);
    assert_eq!(backbone::metrics::metrics().dead_letters_unparked.get(), 1);
    let detail = backbone::stages::park::unparked_detail();
    assert_eq!(detail["count"], 1, "{detail}");
    assert_eq!(detail["example"]["dlq_message_id"], "4242", "{detail}");
    assert_eq!(detail["example"]["class"], "permission", "{detail}");

    sqlx::query(&format!(
        "GRANT INSERT ON {db}.dead_letters TO '{user}'@'%'"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    let ok = stage.handle(&msg).await.expect("parked once it can be");
    assert_eq!(ok.label, "parked");
    assert_eq!(backbone::stages::park::unparked_count(), 0);
    assert_eq!(backbone::stages::park::unparked_detail(), json!("none"));
    worker.close().await;
    drop_user(&user).await;
}

/// The issue's hostile pair through the real daemon: a 65-character
/// record_type and a 10 KB record_id are dead-lettered `invalid` and
/// parked (the park insert used to fail and nack-loop), a valid event of
/// the same run is merged, and nothing goes to the retry path.
#[tokio::test]
async fn hostile_raw_events_end_in_dlq_list_mariadb() {
    let Some(app) = TestApp::spawn(Db::Mariadb, Overrides::new()).await else {
        return;
    };
    let (t, store) = (app.topology.clone(), app.store.clone());
    let p = publishers(&t).await;
    let long_type = raw_event(
        "suitex",
        &"a".repeat(65),
        "1",
        0,
        "2026-03-13T10:00:00Z",
        json!({"a": 1}),
    );
    let long_id = raw_event(
        "suitex",
        "project",
        &"x".repeat(10_240),
        0,
        "2026-03-13T10:00:00Z",
        json!({"a": 1}),
    );
    let too_deep = raw_event(
        "suitex",
        "project",
        "deep",
        0,
        "2026-03-13T10:00:00Z",
        changes_of_depth(33),
    );
    let valid = raw_event(
        "suitex",
        "project",
        "ok",
        0,
        "2026-03-13T10:00:00Z",
        json!({"a": 1}),
    );
    for data in [&long_type, &long_id, &too_deep, &valid] {
        // Unordered: the hostile keys would not fit an ordering key anyway.
        p.publish_to(
            TopicKind::Raw,
            Bytes::from(data.clone()),
            HashMap::new(),
            "",
        )
        .await
        .unwrap();
    }
    // And one straight onto the dlq, as a foreign publisher might.
    p.publish_to(
        TopicKind::Dlq,
        Bytes::from(long_type.clone()),
        HashMap::from([
            ("record_type".to_string(), "b".repeat(65)),
            ("stage".to_string(), "x".repeat(40)),
            ("fingerprint".to_string(), "not-a-fingerprint".to_string()),
        ]),
        "",
    )
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(30), || async {
            count(&store, "SELECT COUNT(*) FROM dead_letters").await == 4
        })
        .await,
        "every hostile message is parked (dead letters: {})",
        count(&store, "SELECT COUNT(*) FROM dead_letters").await
    );
    // What `dlq list` shows.
    let rows = store.dead_letters(&Default::default(), 100).await.unwrap();
    let invalid: Vec<_> = rows.iter().filter(|r| r.reason == "invalid").collect();
    assert_eq!(invalid.len(), 3, "{rows:#?}");
    let errors: Vec<&str> = invalid
        .iter()
        .filter_map(|r| r.last_error.as_deref())
        .collect();
    for field in ["`record_type`", "`record_id`", "`changes`"] {
        assert!(
            errors.iter().any(|e| e.contains(field)),
            "{field} named in {errors:?}"
        );
    }
    assert!(
        rows.iter().any(|r| r.data == long_id.as_bytes()),
        "data kept whole"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            count(&store, "SELECT COUNT(*) FROM events WHERE record_id = 'ok'").await == 1
        })
        .await
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM event_audit_log WHERE processing_outcome = 'transient'"
        )
        .await,
        0,
        "nothing went the retry path"
    );
    let m = backbone::metrics::metrics();
    assert_eq!(
        m.retry_attempts.with_label_values(&["merge"]).get(),
        0,
        "no retries"
    );
    assert_eq!(backbone::stages::park::unparked_count(), 0);
    app.stop().await;
}

// ---- generated extreme-but-valid events through the real store ----

mod extreme {
    use super::*;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRunner};

    pub fn cases() -> usize {
        std::env::var("PROPERTY_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300)
    }

    fn chars() -> impl Strategy<Value = char> {
        prop_oneof![
            4 => prop::char::range('a', 'z'),
            2 => prop::sample::select(vec![
                'é', 'ß', '中', '😀', '\u{10ffff}', '\u{200f}', '\u{feff}', '\u{2028}', '"',
                '\\', '\'', ' ', ';', '%', '_',
            ]),
            1 => any::<char>().prop_filter("no controls", |c| !c.is_control()),
        ]
    }

    /// 1..=191 bytes, no control characters; often exactly at the limit.
    fn record_id() -> impl Strategy<Value = String> {
        (prop::collection::vec(chars(), 1..200), any::<bool>()).prop_map(|(cs, fill)| {
            let mut s = String::new();
            for c in cs {
                if s.len() + c.len_utf8() > limits::RECORD_ID_MAX {
                    break;
                }
                s.push(c);
            }
            if fill {
                while s.len() < limits::RECORD_ID_MAX {
                    s.push('z');
                }
            }
            s
        })
    }

    fn record_type() -> impl Strategy<Value = String> {
        (1usize..=limits::RECORD_TYPE_MAX, any::<bool>()).prop_map(|(n, max)| {
            let n = if max { limits::RECORD_TYPE_MAX } else { n };
            let body: String = "x_9".chars().cycle().take(n - 1).collect();
            format!("r{body}")
        })
    }

    fn timestamp() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(limits::TIMESTAMP_MIN.to_string()),
            Just(limits::TIMESTAMP_MAX.to_string()),
            Just("2038-01-19T04:14:07.999999+01:00".to_string()),
            Just("1970-01-01T00:00:01.000000-00:00".to_string()),
            (
                limits::TIMESTAMP_MIN_SECS..=limits::TIMESTAMP_MAX_SECS,
                0u32..1_000_000
            )
                .prop_map(|(s, us)| {
                    chrono::DateTime::from_timestamp(s, us * 1000)
                        .unwrap()
                        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                }),
        ]
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            prop::sample::select(vec![1e308, -1e308, 5e-324, -0.0, 1e16, 0.1])
                .prop_map(|f| json!(f)),
            prop::collection::vec(any::<char>(), 0..40)
                .prop_map(|cs| Value::String(cs.into_iter().collect())),
        ]
    }

    /// Changes up to the store's depth: wide or deep, unicode keys.
    fn changes() -> impl Strategy<Value = Value> {
        let key =
            prop::collection::vec(chars(), 1..30).prop_map(|c| c.into_iter().collect::<String>());
        let tree = leaf().prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop::char::range('a', 'z').prop_map(String::from),
                    inner,
                    0..4,
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        });
        (prop::collection::btree_map(key, (tree, 0usize..=limits::CHANGES_MAX_DEPTH), 1..6))
            .prop_map(|m| {
                let mut out = serde_json::Map::new();
                for (k, (v, wrap)) in m {
                    // Wrap in arrays so the whole stays within the limit:
                    // changes (1) + wrap + the tree's own depth.
                    let room = limits::CHANGES_MAX_DEPTH - 1;
                    let own = limits::json_depth(&v, 64);
                    let wrap = wrap.min(room.saturating_sub(own));
                    let mut v = v;
                    for _ in 0..wrap {
                        v = Value::Array(vec![v]);
                    }
                    out.insert(k, v);
                }
                Value::Object(out)
            })
    }

    pub fn raw_doc() -> impl Strategy<Value = String> {
        (
            record_type(),
            record_id(),
            prop::sample::select(vec!["suitex", "netsuite"]),
            timestamp(),
            changes(),
            prop::option::of(Just(format!(
                "gs://b/{}",
                "ö".repeat(limits::SNAPSHOT_REF_MAX - 7)
            ))),
        )
            .prop_map(|(rt, rid, src, ts, changes, snap)| {
                let mut doc = json!({
                    "source": src, "record_type": rt, "record_id": rid,
                    "base_version": 0, "timestamp": ts, "changes": changes,
                });
                if let Some(s) = snap {
                    doc["full_snapshot_ref"] = json!(s);
                }
                doc.to_string()
            })
    }

    /// `n` generated documents (proptest's generators, sampled directly so
    /// the events can go through the store in batches).
    pub fn sample(n: usize) -> Vec<String> {
        let mut runner = TestRunner::new(Config::default());
        let strategy = raw_doc();
        (0..n)
            .map(|_| strategy.new_tree(&mut runner).expect("generate").current())
            .collect()
    }
}

async fn extreme_events_are_stored_or_invalid(db: Db) {
    let Some((_tdb, store)) = migrated(db).await else {
        return;
    };
    let engine = MergeEngine::start(store.clone(), engine_cfg(32, Duration::from_millis(20)));
    let docs = extreme::sample(extreme::cases());
    let (mut stored, mut invalid, mut refused) = (0usize, 0usize, 0usize);
    // event id → the changes as merged, to compare with what is read back.
    let mut kept: HashMap<String, Value> = HashMap::new();
    for chunk in docs.chunks(32) {
        let mut items = Vec::new();
        for doc in chunk {
            match parse_raw_event(doc.as_bytes()) {
                Ok(ev) => items.push(EventItem {
                    fingerprint: fingerprint(&ev, &ev.changes),
                    changes: ev.changes.clone(),
                    event: ev,
                    message_id: uuid::Uuid::new_v4().to_string(),
                    execution: 1,
                    data: Default::default(),
                    attributes: Default::default(),
                }),
                Err(e) => {
                    // The generator aims inside the limits; count, not fail.
                    eprintln!("validator refused a generated event: {e}");
                    invalid += 1;
                }
            }
        }
        let results = futures::future::join_all(
            items
                .iter()
                .map(|e| engine.submit(Item::Event(Box::new(e.clone())))),
        )
        .await;
        for (item, r) in items.iter().zip(results) {
            match r {
                Ok(Decision::Merged { merged, .. }) => {
                    kept.insert(merged.event_id.clone(), Value::Object(item.changes.clone()));
                    stored += 1
                }
                Ok(Decision::Noop { event_id, .. }) => {
                    kept.insert(event_id, Value::Object(item.changes.clone()));
                    stored += 1
                }
                Ok(other) => panic!("unexpected decision {other:?}"),
                Err(e) => {
                    // Never transient, never a batch failure: only this
                    // event's own data, reported as invalid.
                    assert_eq!(
                        e.class(),
                        StoreErrorClass::Data,
                        "{e} for {:?}/{:?}",
                        item.event.record_type,
                        item.event.record_id
                    );
                    refused += 1;
                }
            }
        }
    }
    eprintln!(
        "extreme events on {db:?}: {} generated, {stored} stored, {invalid} invalid by validation, {refused} refused by the database",
        docs.len()
    );
    assert_eq!(stored + invalid + refused, docs.len());
    assert_eq!(refused, 0, "validation mirrors every limit of the store");
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM events").await as usize,
        stored
    );
    // Stored exactly: every event's changes read back equal.
    let sql = format!(
        "SELECT {} FROM events",
        backbone::store::ledger::event_columns(store.dialect())
    );
    let rows = sqlx::query(&sql).fetch_all(store.pool()).await.unwrap();
    assert_eq!(rows.len(), kept.len());
    for row in &rows {
        let ev = backbone::store::ledger::StoredEvent::from_row(row).unwrap();
        assert_eq!(Some(&ev.changes), kept.get(&ev.id), "event {}", ev.id);
    }
}

#[tokio::test]
async fn extreme_valid_events_are_stored_or_invalid_mariadb() {
    extreme_events_are_stored_or_invalid(Db::Mariadb).await;
}

#[tokio::test]
async fn extreme_valid_events_are_stored_or_invalid_sqlite() {
    extreme_events_are_stored_or_invalid(Db::Sqlite).await;
}

// ---- the issue's hostile mix ----

/// A hostile message of kind `i % 16` (deterministic): random bytes,
/// broken JSON, deep nesting, huge fields, odd timestamps, injection
/// strings, unicode and NUL bytes, long ids.
fn hostile(i: usize) -> Vec<u8> {
    if i.is_multiple_of(16) {
        // Not UTF-8 at all.
        return vec![0xff, 0xfe, b'{', (i % 251) as u8, 0];
    }
    hostile_text(i).into_bytes()
}

fn hostile_text(i: usize) -> String {
    let base = |rt: &str, rid: &str, ts: &str, changes: Value| {
        raw_event("suitex", rt, rid, 0, ts, changes)
    };
    let ts = "2026-03-13T10:00:00Z";
    let rid = format!("h{i}");
    match i % 16 {
        1 => {
            let doc = base("project", &rid, ts, json!({"a": i}));
            doc[..doc.len() / 2].to_string()
        }
        2 => format!("[{i}, \"not an object\"]"),
        3 => base("project", &rid, ts, changes_of_depth(30 + i % 35)),
        4 => format!("{}{}", "[".repeat(70 + i % 50), "]".repeat(70 + i % 50)),
        5 => base(&"a".repeat(65 + i % 100), &rid, ts, json!({"a": 1})),
        6 => base("project", &"x".repeat(192 + i * 37), ts, json!({"a": 1})),
        7 => base("project", &rid, "1969-12-31T23:59:59Z", json!({"a": 1})),
        8 => base("project", &rid, "2038-01-19T03:14:08Z", json!({"a": 1})),
        9 => base("project", &rid, "2016-12-31T23:59:60Z", json!({"a": 1})),
        10 => base(
            "project",
            &rid,
            "2026-03-13T10:00:00.1234567Z",
            json!({"a": 1}),
        ),
        11 => base("project", &format!("nul\u{0}{i}"), ts, json!({"a": 1})),
        12 => {
            let mut v: Value =
                serde_json::from_str(&base("project", &rid, ts, json!({"a": 1}))).unwrap();
            v["id"] = json!(format!("{}-not-a-uuid", "9".repeat(300)));
            v.to_string()
        }
        13 => {
            let mut v: Value =
                serde_json::from_str(&base("project", &rid, ts, json!({"a": 1}))).unwrap();
            v["full_snapshot_ref"] = json!(format!("gs://b/{}", "o".repeat(2000)));
            v.to_string()
        }
        // Hostile but valid: stored as data, never executed.
        14 => base(
            "project",
            &format!("'; DROP TABLE events; -- {i}"),
            ts,
            json!({"q": "\" OR 1=1 --", "nul": "a\u{0}b", "rtl": "\u{202e}txt"}),
        ),
        _ => base(
            "project",
            &format!("ünï😀{i}"),
            ts,
            json!({"emoji": "😀".repeat(100), "n": u64::MAX, "f": 1e308}),
        ),
    }
}

/// The hostile run of issue 12, through the real daemon on MariaDB:
/// every hostile message is accounted for in `dlq list` (parked, none
/// looping) or stored if it was valid after all, every valid one is
/// merged, and nothing goes to the retry path. `HOSTILE_MIX` sets how
/// many of each (default 64; the issue used 300).
#[tokio::test]
async fn hostile_mix_is_accounted_for_mariadb() {
    let Some(app) = TestApp::spawn(Db::Mariadb, Overrides::new()).await else {
        return;
    };
    let n: usize = std::env::var("HOSTILE_MIX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let (t, store) = (app.topology.clone(), app.store.clone());
    let p = publishers(&t).await;
    let mut expect_parked = 0;
    let mut expect_stored = 0;
    let mut sends = Vec::new();
    for i in 0..n {
        let h = hostile(i);
        if parse_raw_event(&h).is_ok() {
            expect_stored += 1;
        } else {
            expect_parked += 1;
        }
        sends.push((h, String::new()));
        let valid = raw_event(
            "netsuite",
            "customer",
            &format!("c{i}"),
            0,
            "2026-03-13T10:00:00Z",
            json!({"name": format!("n{i}")}),
        );
        expect_stored += 1;
        sends.push((valid.into_bytes(), format!("customer:c{i}")));
    }
    let published = futures::future::join_all(sends.iter().map(|(data, key)| {
        p.publish_to(
            TopicKind::Raw,
            Bytes::from(data.clone()),
            HashMap::new(),
            key,
        )
    }))
    .await;
    assert!(published.iter().all(Result::is_ok));
    let done = eventually(Duration::from_secs(120), || async {
        count(&store, "SELECT COUNT(*) FROM dead_letters").await == expect_parked
            && count(&store, "SELECT COUNT(*) FROM events").await == expect_stored
    })
    .await;
    let parked = count(&store, "SELECT COUNT(*) FROM dead_letters").await;
    let stored = count(&store, "SELECT COUNT(*) FROM events").await;
    assert!(
        done,
        "parked {parked} of {expect_parked}, stored {stored} of {expect_stored}"
    );
    eprintln!(
        "hostile mix: {n} hostile + {n} valid published; {parked} parked invalid, {stored} stored"
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM dead_letters WHERE reason <> 'invalid'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM events WHERE record_type = 'customer'"
        )
        .await,
        n as i64,
        "every valid one merged"
    );
    let m = backbone::metrics::metrics();
    assert_eq!(
        m.retry_attempts.with_label_values(&["merge"]).get(),
        0,
        "no retries"
    );
    let park_sub = t.subscription_id(backbone::topology::ConsumerKind::Park);
    assert_eq!(
        m.messages_processed
            .with_label_values(&[park_sub.as_str(), "nacked"])
            .get(),
        0,
        "no dead letter was nacked"
    );
    assert_eq!(backbone::stages::park::unparked_count(), 0);
    app.stop().await;
}
