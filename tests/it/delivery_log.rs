//! The delivery stages' group commit (`store::delivery_log`) on a real
//! database: writes submitted together commit together, a claim another
//! replica already holds fails only its own write, positions are only ever
//! raised, and the batched read answers each delivery's own question.

use std::time::Duration;

use event_backbone::store::delivery_log::{DeliveryLog, DeliveryWrite, PositionRow, ViewKey};
use event_backbone::store::ledger::AuditRow;
use event_backbone::store::Store;

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

async fn group_commit(db: Db) {
    let Some(tdb) = fresh_db(db).await else {
        return;
    };
    let store = Store::connect(&tdb.url, 4, Duration::from_secs(10))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let log = DeliveryLog::start(store.clone(), 2, STAGE, "netsuite");

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
            log.write(DeliveryWrite::Attempted(at(&rec, 2, false)))
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

#[tokio::test]
async fn delivery_log_group_commit_and_batched_read_mariadb() {
    group_commit(Db::Mariadb).await;
}

#[tokio::test]
async fn delivery_log_group_commit_and_batched_read_sqlite() {
    group_commit(Db::Sqlite).await;
}
