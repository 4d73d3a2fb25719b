//! The delivery stages' group commit (`store::delivery_log`) on a real
//! database: writes submitted together commit together, a claim another
//! replica already holds fails only its own write, positions are only ever
//! raised, and the batched read answers each delivery's own question.

use std::time::Duration;

use backbone::store::delivery::DeliveryState;
use backbone::store::delivery_lease::{Claim, Lease};
use backbone::store::delivery_log::{DeliveryLog, DeliveryWrite, PositionRow, ViewKey};
use backbone::store::ledger::AuditRow;
use backbone::store::Store;

use crate::support::*;

const STAGE: &str = "deliver.netsuite";

fn claim(fp: &str, record: &str) -> AuditRow {
    AuditRow {
        event_id: None,
        fingerprint: fp.to_string(),
        record_type: Some("project".into()),
        record_id: Some(record.into()),
        stage: STAGE.into(),
        outcome: "delivered".into(),
        detail: Some("{}".into()),
        message_id: Some(format!("m-{fp}")),
        attempt: 1,
        claim: true,
    }
}

fn at(record: &str, seq: i64, acked: bool) -> PositionRow {
    PositionRow {
        target: "netsuite".into(),
        record_type: "project".into(),
        record_id: record.into(),
        seq,
        version: seq * 10,
        acked,
    }
}

fn key(fp: &str, record: &str) -> ViewKey {
    ViewKey {
        fingerprint: fp.into(),
        record_type: "project".into(),
        record_id: record.into(),
    }
}

/// A fresh migrated store and a delivery log on it (the database lives as
/// long as the returned `TestDb`).
async fn open(db: Db) -> Option<(TestDb, Store, DeliveryLog)> {
    let tdb = fresh_db(db).await?;
    let store = Store::connect(&tdb.url, 4, Duration::from_secs(10))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let log = DeliveryLog::start(store.clone(), 2, STAGE, "netsuite");
    Some((tdb, store, log))
}

async fn group_commit(db: Db) {
    let Some((_tdb, store, log)) = open(db).await else {
        return;
    };

    // Another replica delivered fp "a…" first.
    let (fa, fb, fc) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
    log.write(DeliveryWrite::Done(claim(&fa, "1"), Some(at("1", 3, true))))
        .await
        .unwrap();

    // Many writes at once: they share transactions; the one whose claim is
    // taken fails alone, and its position does not move.
    let mut writes = Vec::new();
    for i in 0..50 {
        let log = log.clone();
        let rec = format!("r{i}");
        writes.push(tokio::spawn(async move {
            log.write(DeliveryWrite::Position(at(&rec, 2, false)))
                .await
                .map_err(|e| e.to_string())
        }));
    }
    let (la, lb, lc) = (log.clone(), log.clone(), log.clone());
    let (fa2, fb2, fc2) = (fa.clone(), fb.clone(), fc.clone());
    let taken = tokio::spawn(async move {
        la.write(DeliveryWrite::Done(
            claim(&fa2, "1"),
            Some(at("1", 9, true)),
        ))
        .await
    });
    let fresh = tokio::spawn(async move {
        lb.write(DeliveryWrite::Done(
            claim(&fb2, "2"),
            Some(at("2", 4, true)),
        ))
        .await
    });
    // A lower position than what is stored never lowers it.
    let lower = tokio::spawn(async move {
        lc.write(DeliveryWrite::Done(
            claim(&fc2, "1"),
            Some(at("1", 1, true)),
        ))
        .await
    });
    for w in writes {
        w.await.unwrap().expect("attempted positions commit");
    }
    assert!(
        taken.await.unwrap().is_err(),
        "a second claim of the same fingerprint must fail"
    );
    fresh.await.unwrap().expect("the other claim commits");
    lower
        .await
        .unwrap()
        .expect("a lower position is a no-op, not an error");

    let claims = count(
        &store,
        "SELECT COUNT(*) FROM event_audit_log WHERE stage = 'deliver.netsuite' AND claim = 1",
    )
    .await;
    assert_eq!(claims, 3, "fa once, fb, fc");
    let attempted = count(
        &store,
        "SELECT COUNT(*) FROM delivery_state WHERE record_id LIKE 'r%' AND attempted_seq = 2 AND acked_seq = 0",
    )
    .await;
    assert_eq!(attempted, 50);

    // The batched read: each key gets its own answer.
    let mut views = Vec::new();
    for (fp, rec) in [
        (&fa, "1"),
        (&fb, "2"),
        (&"d".repeat(64), "1"),
        (&fa, "none"),
    ] {
        let log = log.clone();
        let k = key(fp, rec);
        views.push(tokio::spawn(async move { log.view(k).await.unwrap() }));
    }
    let mut got = Vec::new();
    for v in views {
        got.push(v.await.unwrap());
    }
    // Record 1: acked at 3 (the taken claim's 9 rolled back; 1 is lower).
    assert!(got[0].0, "fa is claimed");
    assert_eq!(
        (got[0].1.acked, got[0].1.acked_version, got[0].1.attempted),
        (3, 30, 3)
    );
    assert!(got[1].0);
    assert_eq!((got[1].1.acked, got[1].1.attempted), (4, 4));
    assert!(!got[2].0, "fd was never delivered");
    assert_eq!(got[2].1.acked, 3);
    assert!(got[3].0);
    assert_eq!(got[3].1.acked, 0, "a record never delivered stands at 0");
}

fn claim_of(holder: i64, record: &str, expect: DeliveryState, seq: i64, ttl_ms: u64) -> Claim {
    Claim {
        lease: Lease {
            target: "netsuite".into(),
            record_type: "project".into(),
            record_id: record.into(),
            holder,
        },
        ttl: Duration::from_millis(ttl_ms),
        expect,
        attempted: Some(seq),
    }
}

fn state(acked: i64, acked_version: i64, attempted: i64) -> DeliveryState {
    DeliveryState {
        acked,
        acked_version,
        attempted,
    }
}

/// The claim before a POST (docs/spec.md §4.2): the lease and the attempted position
/// in one write, refused when another live replica holds the lease or the
/// target moved on since the delivery planned; an expired lease is taken over.
async fn claims(db: Db) {
    let Some((_tdb, store, log)) = open(db).await else {
        return;
    };
    let (a, b) = (11, 22);
    let fresh = DeliveryState::default();

    // The record's first delivery: no row yet.
    assert!(log
        .claim(claim_of(a, "c1", fresh, 1, 60_000))
        .await
        .unwrap());
    let first = store
        .delivery_position("netsuite", "project", "c1")
        .await
        .unwrap();
    assert_eq!(
        first,
        Some(state(0, 0, 1)),
        "attempted raised with the lease"
    );
    assert_eq!(
        store
            .delivery_lease_holder("netsuite", "project", "c1")
            .await
            .unwrap()
            .map(|h| h.0),
        Some(a)
    );
    // Replica b planned from the same (now stale) state: refused.
    assert!(!log
        .claim(claim_of(b, "c1", fresh, 1, 60_000))
        .await
        .unwrap());
    // b read again: the lease is a's, still refused.
    assert!(!log
        .claim(claim_of(b, "c1", state(0, 0, 1), 1, 60_000))
        .await
        .unwrap());
    // a's answer: acknowledged and released in one transaction.
    log.write_releasing(
        DeliveryWrite::Done(claim(&"e".repeat(64), "c1"), Some(at("c1", 1, true))),
        Lease {
            target: "netsuite".into(),
            record_type: "project".into(),
            record_id: "c1".into(),
            holder: a,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        store
            .delivery_lease_holder("netsuite", "project", "c1")
            .await
            .unwrap(),
        None
    );
    // b with a stale plan (acked 0) is refused; with the current one it goes.
    assert!(!log
        .claim(claim_of(b, "c1", state(0, 0, 1), 2, 60_000))
        .await
        .unwrap());
    assert!(log
        .claim(claim_of(b, "c1", state(1, 10, 1), 2, 1))
        .await
        .unwrap());
    // b died holding it: once its lease passed, a takes over.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(log
        .claim(claim_of(a, "c1", state(1, 10, 2), 2, 60_000))
        .await
        .unwrap());
    assert_eq!(
        store
            .delivery_position("netsuite", "project", "c1")
            .await
            .unwrap(),
        Some(state(1, 10, 2))
    );

    // Many records at once share commits; each gets its own answer.
    let mut all = Vec::new();
    for i in 0..40 {
        let log = log.clone();
        all.push(tokio::spawn(async move {
            let rec = format!("m{}", i % 20);
            log.claim(claim_of(100 + i, &rec, DeliveryState::default(), 1, 60_000))
                .await
                .unwrap()
        }));
    }
    let mut won = 0;
    for t in all {
        won += usize::from(t.await.unwrap());
    }
    assert_eq!(won, 20, "one claim per record");
}

#[tokio::test]
async fn delivery_log_claims_mariadb() {
    claims(Db::Mariadb).await;
}

#[tokio::test]
async fn delivery_log_claims_sqlite() {
    claims(Db::Sqlite).await;
}

#[tokio::test]
async fn delivery_log_group_commit_and_batched_read_mariadb() {
    group_commit(Db::Mariadb).await;
}

#[tokio::test]
async fn delivery_log_group_commit_and_batched_read_sqlite() {
    group_commit(Db::Sqlite).await;
}
