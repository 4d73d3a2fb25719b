//! A replica that dies holding merged messages (docs/spec.md §4.2): a
//! delivery that only waits for its permit holds no lease, the records
//! the store shows nobody is delivering are found by one indexed query,
//! and a live replica takes them over from the store instead of waiting
//! for the broker to hand the dead one's messages back.

use std::time::{Duration, Instant};

use backbone::store::behind::Behind;
use backbone::store::Store;

use crate::support::*;
use crate::targets::{
    converged, dead_letters, deploy, publish_flow, records, scalar, slow_netsuite,
};

/// A lease on a `delivery_state` row: its holder and until when (ms).
type HeldBy = Option<(i64, i64)>;

/// One record's rows: its state changed at `changed`, merged events at
/// positions `1..=merged`, and (when `at` is set) where NetSuite stands.
struct Case {
    id: &'static str,
    changed: chrono::DateTime<chrono::Utc>,
    merged: i64,
    /// (acked, attempted, lease)
    at: Option<(i64, i64, HeldBy)>,
}

async fn insert(store: &Store, c: &Case) {
    let d = store.dialect();
    sqlx::query(
        "INSERT INTO record_state (record_type, record_id, version, last_seq, state, updated_at) \
         VALUES ('project', ?, ?, ?, '{}', ?)",
    )
    .bind(c.id)
    .bind(c.merged)
    .bind(c.merged)
    .bind(d.ts_value(&c.changed))
    .execute(store.pool())
    .await
    .expect("record_state");
    for seq in 1..=c.merged {
        sqlx::query(
            "INSERT INTO merged_events (record_type, record_id, sequence_num, version, event_id, payload) \
             VALUES ('project', ?, ?, ?, ?, '{}')",
        )
        .bind(c.id)
        .bind(seq)
        .bind(seq)
        .bind(format!("{}-{seq}", c.id))
        .execute(store.pool())
        .await
        .expect("merged_events");
    }
    if let Some((acked, attempted, lease)) = c.at {
        sqlx::query(
            "INSERT INTO delivery_state (target, record_type, record_id, acked_seq, acked_version, \
             attempted_seq, lease_holder, lease_until) VALUES ('netsuite', 'project', ?, ?, ?, ?, ?, ?)",
        )
        .bind(c.id)
        .bind(acked)
        .bind(acked)
        .bind(attempted)
        .bind(lease.map(|(h, _)| h))
        .bind(lease.map(|(_, u)| u))
        .execute(store.pool())
        .await
        .expect("delivery_state");
    }
}

/// Which records `records_behind` returns, for every way a record can be.
async fn records_behind(db: Db) {
    let Some(tdb) = fresh_db(db).await else {
        return;
    };
    let store = Store::connect(&tdb.url, 2, Duration::from_secs(10))
        .await
        .expect("store");
    store.migrate().await.expect("migrate");
    let now = chrono::Utc::now();
    let ms = now.timestamp_millis();
    let settled = now - chrono::Duration::seconds(30);
    let cases = [
        // Never delivered to NetSuite: behind.
        Case {
            id: "never",
            changed: settled,
            merged: 1,
            at: None,
        },
        // Acknowledged its newest: not behind.
        Case {
            id: "current",
            changed: settled,
            merged: 2,
            at: Some((2, 2, None)),
        },
        // A newer version, nothing under way: behind.
        Case {
            id: "newer",
            changed: settled,
            merged: 3,
            at: Some((1, 1, None)),
        },
        // A request was started for it and the lease released (it failed:
        // its retry schedule and dead letter go on): not taken.
        Case {
            id: "started",
            changed: settled,
            merged: 3,
            at: Some((1, 3, None)),
        },
        // A request was started and its lease ran out still naming the
        // holder (it died mid-delivery): taken, folded again from the
        // acknowledged position.
        Case {
            id: "died",
            changed: settled - chrono::Duration::seconds(2),
            merged: 3,
            at: Some((1, 3, Some((7, ms - 1)))),
        },
        // The same, its lease still live (a request out): not taken.
        Case {
            id: "out",
            changed: settled,
            merged: 3,
            at: Some((1, 3, Some((7, ms + 60_000)))),
        },
        // Another replica holds its lease: not taken.
        Case {
            id: "leased",
            changed: settled,
            merged: 2,
            at: Some((1, 1, Some((7, ms + 60_000)))),
        },
        // A lease that ran out (its holder died): taken.
        Case {
            id: "expired",
            changed: settled - chrono::Duration::seconds(1),
            merged: 2,
            at: Some((1, 1, Some((7, ms - 1)))),
        },
        // Changed a moment ago: a live delivery is about to happen.
        Case {
            id: "fresh",
            changed: now,
            merged: 2,
            at: Some((1, 1, None)),
        },
        // Changed before the window: the broker's.
        Case {
            id: "old",
            changed: now - chrono::Duration::hours(2),
            merged: 2,
            at: Some((1, 1, None)),
        },
    ];
    for c in &cases {
        insert(&store, c).await;
    }
    let window = (
        now - chrono::Duration::minutes(10),
        now - chrono::Duration::seconds(2),
    );
    let got = store
        .records_behind("netsuite", window.0, window.1, 100)
        .await
        .expect("records_behind");
    let ids: Vec<&str> = got.iter().map(|b| b.record_id.as_str()).collect();
    // The longest-settled first.
    assert_eq!(ids, ["died", "expired", "never", "newer"], "{got:?}");
    // SuiteX stands nowhere on any of them.
    let sx = store
        .records_behind("suitex", window.0, window.1, 2)
        .await
        .expect("records_behind");
    assert_eq!(sx.len(), 2, "limited: {sx:?}");
    assert!(sx.contains(&Behind {
        record_type: "project".into(),
        record_id: "expired".into()
    }));
    drop(tdb);
}

#[tokio::test]
async fn takeover_records_behind_are_those_nobody_is_delivering_sqlite() {
    records_behind(Db::Sqlite).await;
}

#[tokio::test]
async fn takeover_records_behind_are_those_nobody_is_delivering_mariadb() {
    records_behind(Db::Mariadb).await;
}

/// A delivery queued behind the next in line for the target's permit holds
/// no lease: a replica that dies leaves only its requests out (and the next
/// in line) for their leases to run out.
#[tokio::test]
async fn takeover_a_delivery_waiting_behind_the_next_in_line_holds_no_lease() {
    let (ns, sx) = slow_netsuite(Duration::from_millis(1500)).await;
    let one_at_a_time = [
        ("BACKBONE__TARGETS__NETSUITE__TIMEOUT", "20s"),
        ("BACKBONE__TARGETS__NETSUITE__INITIAL_CONCURRENCY", "1"),
        ("BACKBONE__TARGETS__NETSUITE__MAX_CONCURRENCY", "1"),
    ];
    let Some(app) = deploy(Db::Sqlite, &ns.url(), &sx.url(), &one_at_a_time).await else {
        return;
    };
    publish_flow(&app, 1, 1, false, Duration::ZERO).await;
    assert!(eventually(Duration::from_secs(30), || async { ns.inflight() == 1 }).await);
    // p0000 holds the only permit; p0001 to p0007 (suitex's changes, all
    // routed to NetSuite) queue behind it.
    publish_flow(&app, 8, 1, false, Duration::ZERO).await;
    let held = |id: String| {
        let store = app.store.clone();
        async move {
            store
                .delivery_lease_holder("netsuite", "project", &id)
                .await
                .expect("read the lease")
                .is_some()
        }
    };
    let ids: Vec<String> = (1..8).map(|r| format!("p{r:04}")).collect();
    let leases = || async {
        let mut leased = Vec::new();
        for id in &ids {
            leased.push(held(id.clone()).await);
        }
        leased
    };
    let next_claimed = eventually(Duration::from_secs(2), || async {
        leases().await.iter().filter(|l| **l).count() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let leased = leases().await;
    eprintln!(
        "while p0000 is out: leases of {ids:?} = {leased:?}; {}",
        ns.summary("netsuite")
    );
    assert_eq!(ns.inflight(), 1, "still one request out");
    assert!(next_claimed, "the next in line claimed: {leased:?}");
    assert_eq!(
        leased.iter().filter(|l| **l).count(),
        2,
        "only the two next in line hold a lease: {leased:?}"
    );
    assert!(converged(&app, &ns, &records(8, None), 1).await);
    assert_eq!(ns.overlaps(), 0);
    app.stop().await;
}

/// Two replicas; the one holding the merged messages is SIGKILLed. The
/// other, idle, delivers what the store shows nobody is delivering (and,
/// once their leases run out, what the dead one had under way) before
/// the broker hands the dead one's messages back, through the same claim
/// and bookkeeping (one request in flight per record, never back in time,
/// nothing dead-lettered); the messages then find themselves covered.
#[tokio::test]
async fn takeover_a_killed_replicas_queued_deliveries_go_from_the_store() {
    let (ns, sx) = slow_netsuite(Duration::from_millis(400)).await;
    let o = Overrides::new()
        .targets(&ns.url(), &sx.url())
        .local_snapshots()
        .vars(&crate::targets::vars())
        .vars(&[
            ("BACKBONE__TARGETS__NETSUITE__INITIAL_CONCURRENCY", "2"),
            ("BACKBONE__TARGETS__NETSUITE__MAX_CONCURRENCY", "2"),
            ("BACKBONE__TARGETS__NETSUITE__LEASE_TTL", "3s"),
        ]);
    let Some(mut app) = TestApp::prepare(Db::Mariadb, o).await else {
        return;
    };
    app.provision().await;
    app.migrate().await;
    let doomed = ChildDaemon::spawn(&mut app.daemon_command(&[]));
    // Suitex's changes: all routed to NetSuite.
    let n = 20;
    let wanted = records(n, None);
    // The doomed replica is the only one: it takes every message.
    publish_flow(&app, n, 1, false, Duration::ZERO).await;
    assert!(
        eventually(Duration::from_secs(60), || async { ns.count(200) >= 4 }).await,
        "the first replica delivers the flow"
    );
    doomed.signal("-KILL");
    let killed = Instant::now();
    let before = ns.count(200);
    drop(doomed);
    app.start().await;
    let done = converged(&app, &ns, &wanted, 1).await;
    let after = killed.elapsed();
    let taken = scalar(
        &app.store,
        "SELECT COUNT(*) FROM event_audit_log WHERE stage = 'deliver.netsuite' \
         AND message_id = 'takeover' AND processing_outcome = 'delivered'",
    )
    .await;
    eprintln!(
        "killed after {before} requests; {} records delivered {:.1} s after the kill, {taken} \
         of them taken over from the store; {}",
        wanted.len(),
        after.as_secs_f64(),
        ns.summary("netsuite")
    );
    assert!(done, "every record delivered");
    // Of ~16 records left at the kill, the rest are taken over at once and
    // the dead replica's requests out and its next in line (2 + 2) once
    // their leases run out (3 s), before the broker hands their messages
    // back (10 s).
    assert!(taken >= 14, "taken over from the store: {taken}");
    assert_eq!(ns.overlaps(), 0, "one request in flight per record");
    assert_eq!(ns.back_in_time(), 0, "P1");
    let mut sent: std::collections::HashMap<String, usize> = Default::default();
    for h in ns.hits().iter().filter(|h| h.status == 200) {
        *sent.entry(h.record.clone()).or_default() += 1;
    }
    let twice: Vec<_> = sent.iter().filter(|(_, n)| **n > 1).collect();
    // Only a request the dead replica had out may go again (P2).
    assert!(twice.len() <= 2, "sent again: {twice:?}");
    assert_eq!(dead_letters(&app).await, 0);
    // A delivery taken over does not claim its message's fingerprint: the
    // message, handed back by the broker once the dead replica's lease
    // there runs out (10 s), is covered by the position, with no row.
    let duplicates = "SELECT COUNT(*) FROM event_audit_log WHERE stage = 'deliver.netsuite' \
                      AND processing_outcome = 'duplicate'";
    let handed_back = eventually(Duration::from_secs(30), || async {
        crate::deliver::skipped_count(&app, "netsuite").await + scalar(&app.store, duplicates).await
            >= taken
    })
    .await;
    assert!(
        handed_back,
        "the taken-over records' messages came back and were acked"
    );
    let doubled = scalar(
        &app.store,
        "SELECT COUNT(*) FROM event_audit_log d JOIN event_audit_log t \
         ON t.fingerprint = d.fingerprint AND t.stage = d.stage \
         AND t.message_id = 'takeover' AND t.processing_outcome = 'delivered' \
         WHERE d.stage = 'deliver.netsuite' AND d.processing_outcome = 'duplicate'",
    )
    .await;
    assert_eq!(doubled, 0, "duplicate rows for messages taken over");
    app.stop().await;
}
