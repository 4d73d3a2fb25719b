//! Retry with backoff, dead-lettering after five executions, parking, and
//! replay — through the real emulator, on SQLite and MariaDB, and against the
//! real binary for the signal tests.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use backbone::pubsub::clients;
use backbone::store::Store;
use backbone::topology::{ConsumerKind, TopicKind};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::support::*;

const FAST: &[(&str, &str)] = &[
    ("BACKBONE__RETRY__INITIAL_BACKOFF", "200ms"),
    ("BACKBONE__RETRY__MULTIPLIER", "2"),
    ("BACKBONE__RETRY__MAX_BACKOFF", "1s"),
];

async fn audit_times(store: &Store, fp_like: &str, outcome: &str) -> Vec<(i64, String)> {
    let d = store.dialect();
    let sql = format!(
        "SELECT attempt, {} AS t FROM event_audit_log WHERE record_id = ? AND processing_outcome = ? ORDER BY id",
        d.ts("created_at")
    );
    sqlx::query_as::<_, (i32, String)>(&sql)
        .bind(fp_like.to_string())
        .bind(outcome.to_string())
        .fetch_all(store.pool())
        .await
        .unwrap()
        .into_iter()
        .map(|(a, t)| (a as i64, t))
        .collect()
}

fn parse_ts(s: &str) -> DateTime<Utc> {
    // SQLite keeps milliseconds in created_at, MariaDB microseconds.
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|e| panic!("{s}: {e}"))
}

async fn exhausted_after_five(db: Db) {
    let snaps = MissingSnapshots::new();
    let (k, v) = snaps.setting();
    let Some(app) = TestApp::spawn(db, Overrides::new().vars(FAST).set(k, v)).await else {
        return;
    };
    let store = app.store.clone();
    let p = publishers(&app.topology).await;
    // Its snapshot never appears: transient every time.
    publish_raw(&p, &snaps.event("suitex", "retry", "r1", 0, "r1")).await;
    assert!(
        eventually(Duration::from_secs(40), || async {
            count(&store, "SELECT COUNT(*) FROM dead_letters").await == 1
        })
        .await,
        "the message was parked"
    );
    let dl = store
        .dead_letters(&Default::default(), 10)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(dl.reason, "exhausted");
    assert_eq!(dl.stage, "merge");
    assert_eq!(dl.attempts, 5);
    assert_eq!(
        dl.errors.len(),
        5,
        "one error entry per execution: {:?}",
        dl.errors
    );
    assert_eq!(dl.record_type.as_deref(), Some("retry"));
    // Exactly five executions of the stage.
    let runs = audit_times(&store, "r1", "transient").await;
    assert_eq!(
        runs.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    // Gaps follow the schedule: ≥ 200, 400, 800, 1000 ms (lower bounds only).
    let times: Vec<DateTime<Utc>> = runs.iter().map(|r| parse_ts(&r.1)).collect();
    for (i, min_ms) in [200i64, 400, 800, 1000].iter().enumerate() {
        let gap = (times[i + 1] - times[i]).num_milliseconds();
        assert!(
            gap >= min_ms - 5,
            "gap before execution {} was {gap} ms, expected ≥ {min_ms}",
            i + 2
        );
    }
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM event_audit_log WHERE stage = 'park' AND processing_outcome = 'parked'").await,
        1
    );
    app.stop().await;
}

#[tokio::test]
async fn always_transient_runs_exactly_five_times_then_parks_sqlite() {
    exhausted_after_five(Db::Sqlite).await;
}

#[tokio::test]
async fn always_transient_runs_exactly_five_times_then_parks_mariadb() {
    exhausted_after_five(Db::Mariadb).await;
}

async fn fails_twice_then_succeeds(db: Db) {
    let snaps = MissingSnapshots::new();
    let (k, v) = snaps.setting();
    let overrides = Overrides::new()
        .vars(&[
            ("BACKBONE__RETRY__INITIAL_BACKOFF", "1s"),
            ("BACKBONE__RETRY__MAX_BACKOFF", "2s"),
        ])
        .set(k, v);
    let Some(app) = TestApp::spawn(db, overrides).await else {
        return;
    };
    let store = app.store.clone();
    let p = publishers(&app.topology).await;
    let merged = tap(&app.topology, TopicKind::Merged).await;
    publish_raw(&p, &snaps.event("suitex", "retry", "r2", 0, "r2")).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            audit_times(&store, "r2", "transient").await.len() == 2
        })
        .await
    );
    // The snapshot appears: the third execution succeeds.
    snaps.provide("r2", json!({"b": 2}));
    let got = merged.collect(1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1);
    let merged_rows = audit_times(&store, "r2", "merged").await;
    assert!(
        merged_rows.iter().any(|(attempt, _)| *attempt == 3),
        "third execution merged: {merged_rows:?}"
    );
    assert_eq!(audit_times(&store, "r2", "transient").await.len(), 2);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM dead_letters").await, 0);
    assert_eq!(count(&store, "SELECT version FROM record_state").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn fails_twice_then_succeeds_sqlite() {
    fails_twice_then_succeeds(Db::Sqlite).await;
}

#[tokio::test]
async fn fails_twice_then_succeeds_mariadb() {
    fails_twice_then_succeeds(Db::Mariadb).await;
}

#[tokio::test]
async fn invalid_message_is_parked_after_one_execution() {
    let app = TestApp::spawn(Db::Sqlite, Overrides::new().vars(FAST))
        .await
        .unwrap();
    let store = app.store.clone();
    let p = publishers(&app.topology).await;
    p.publish_to(
        TopicKind::Raw,
        Bytes::from_static(b"definitely not json"),
        HashMap::new(),
        "",
    )
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            count(&store, "SELECT COUNT(*) FROM dead_letters").await == 1
        })
        .await
    );
    let dl = store
        .dead_letters(&Default::default(), 10)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(dl.reason, "invalid");
    assert_eq!(dl.attempts, 1);
    assert_eq!(dl.data, b"definitely not json");
    assert!(dl.last_error.unwrap().contains("`data`"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM event_audit_log WHERE stage = 'merge' AND processing_outcome = 'invalid'").await,
        1,
        "exactly one execution"
    );
    app.stop().await;
}

/// The broker itself dead-letters a message nacked past max delivery
/// attempts (on the unordered retry subscription: the emulator breaks when
/// this happens on an ordered one). The park consumer records its source.
#[tokio::test]
async fn broker_dead_lettered_message_is_parked_with_its_source() {
    let app = TestApp::spawn(
        Db::Sqlite,
        Overrides::new().set("BACKBONE__CONSUMERS__RETRY__ENABLED", "false"),
    )
    .await
    .unwrap();
    let (t, store) = (app.topology.clone(), app.store.clone());
    let p = publishers(&t).await;
    p.publish_to(
        TopicKind::Error,
        Bytes::from(raw_event(
            "suitex",
            "broker",
            "b1",
            0,
            "2026-03-13T10:00:00Z",
            json!({"a": 1}),
        )),
        HashMap::new(),
        "",
    )
    .await
    .unwrap();
    // A consumer that keeps failing without routing: nack every delivery.
    let sub = clients::subscriber(&endpoint()).await.unwrap();
    let retry_sub = t.subscription_path(ConsumerKind::Retry);
    let nacker = tokio::spawn(async move {
        let mut stream = sub.subscribe(retry_sub).build();
        while let Some(Ok((_m, h))) = stream.next().await {
            h.nack();
        }
    });
    let parked = eventually(Duration::from_secs(120), || async {
        count(&store, "SELECT COUNT(*) FROM dead_letters").await == 1
    })
    .await;
    nacker.abort();
    assert!(
        parked,
        "the broker dead-lettered the message and it was parked"
    );
    let dl = store
        .dead_letters(&Default::default(), 10)
        .await
        .unwrap()
        .pop()
        .unwrap();
    // The broker names the subscription (the emulator by id, Cloud by path).
    let source = dl.source_subscription.clone().unwrap_or_default();
    assert!(
        source.ends_with(&t.subscription_id(ConsumerKind::Retry)),
        "source subscription {source:?}"
    );
    assert!(
        dl.delivery_count.unwrap_or(0) >= 5,
        "{:?}",
        dl.delivery_count
    );
    assert_eq!(dl.reason, "exhausted");
    assert_eq!(dl.record_id.as_deref(), Some("b1"));
    app.stop().await;
}

/// The daemon as a child process (the real binary, real signals): the
/// app's settings, a 3 s drain.
fn spawn_daemon(app: &TestApp) -> ChildDaemon {
    ChildDaemon::spawn(
        app.daemon_command(&[("BACKBONE__SHUTDOWN__GRACE", "3s")])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    )
}

/// Parked rows with this replay count that are pending again.
async fn reopened(store: &Store, replay_count: i64) -> i64 {
    count(
        store,
        &format!("SELECT COUNT(*) FROM dead_letters WHERE replay_count = {replay_count} AND replayed_at IS NULL"),
    )
    .await
}

async fn pending(store: &Store) -> i64 {
    count(
        store,
        "SELECT COUNT(*) FROM dead_letters WHERE replayed_at IS NULL",
    )
    .await
}

/// SIGUSR1 replays every parked row: with the fault still there they come
/// back (replay count grows); once it is cleared they succeed.
#[tokio::test]
async fn sigusr1_replays_parked_dead_letters() {
    let snaps = MissingSnapshots::new();
    let (k, v) = snaps.setting();
    let app = TestApp::prepare(Db::Sqlite, Overrides::new().vars(FAST).set(k, v))
        .await
        .unwrap();
    app.provision().await;
    app.migrate().await;
    let store = app.store.clone();
    let daemon = spawn_daemon(&app);
    let p = publishers(&app.topology).await;
    // Fault: the snapshots of two records' events are missing.
    for r in ["s1", "s2"] {
        publish_raw(&p, &snaps.event("suitex", "sig", r, 0, r)).await;
    }
    assert!(
        eventually(Duration::from_secs(60), || async {
            pending(&store).await == 2
        })
        .await,
        "both parked"
    );

    // Replay with the fault still there: they die again and come back.
    daemon.signal("-USR1");
    assert!(
        eventually(Duration::from_secs(60), || async {
            reopened(&store, 1).await == 2
        })
        .await,
        "replayed once and parked again"
    );
    daemon.signal("-USR1");
    assert!(
        eventually(Duration::from_secs(60), || async {
            reopened(&store, 2).await == 2
        })
        .await,
        "came back with replay count 2"
    );
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM dead_letters").await,
        2,
        "rows are reopened, not duplicated"
    );

    // Clear the fault (the snapshots appear), then replay.
    for r in ["s1", "s2"] {
        snaps.provide(r, json!({"v": r}));
    }
    daemon.signal("-USR1");
    assert!(
        eventually(Duration::from_secs(30), || async {
            count(
                &store,
                "SELECT COUNT(*) FROM record_state WHERE version = 1",
            )
            .await
                == 2
        })
        .await,
        "replayed events merged"
    );
    assert_eq!(pending(&store).await, 0, "rows marked replayed");
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM dead_letters WHERE replayed_at IS NOT NULL AND replay_count = 3"
        )
        .await,
        2
    );
    daemon.signal("-TERM");
    assert!(daemon.wait().success(), "SIGTERM exits 0");
}

/// Killing the daemon while a retry is held loses nothing: after a restart
/// the message is retried (here: parked once its attempts are used up).
#[tokio::test]
async fn kill_while_retry_is_held_loses_nothing() {
    let snaps = MissingSnapshots::new();
    let (k, v) = snaps.setting();
    let slow = Overrides::new()
        .vars(&[
            ("BACKBONE__RETRY__INITIAL_BACKOFF", "3s"),
            ("BACKBONE__RETRY__MAX_BACKOFF", "3s"),
            ("BACKBONE__RETRY__MAX_ATTEMPTS", "2"),
        ])
        .set(k, v);
    let app = TestApp::prepare(Db::Sqlite, slow).await.unwrap();
    app.provision().await;
    app.migrate().await;
    let store = app.store.clone();
    let daemon = spawn_daemon(&app);
    let p = publishers(&app.topology).await;
    publish_raw(&p, &snaps.event("suitex", "kill", "k1", 0, "k1")).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            audit_times(&store, "k1", "transient").await.len() == 1
        })
        .await,
        "first execution failed and the retry is now held"
    );
    // Let the raw message's ack reach the broker, so what is in flight at the
    // kill is the held retry alone.
    tokio::time::sleep(Duration::from_secs(1)).await;
    daemon.signal("-KILL");
    let _ = daemon.wait();
    assert_eq!(count(&store, "SELECT COUNT(*) FROM dead_letters").await, 0);
    let _daemon = spawn_daemon(&app);
    // The held lease expires, the message is redelivered to the new process,
    // runs its second and last execution, and is parked: about 60 s (the
    // lease the killed process last extended). The stock emulator jar takes
    // 2–3 minutes (it fails on the dead stream's reset; scripts/services.sh
    // starts it with the fix), so the bound leaves room for either.
    assert!(
        eventually(Duration::from_secs(300), || async {
            count(&store, "SELECT COUNT(*) FROM dead_letters").await == 1
        })
        .await,
        "the held message was retried after the restart"
    );
    // At least once: an ack lost in the kill may repeat an execution, but
    // the held retry itself ran again after the restart.
    assert!(audit_times(&store, "k1", "transient").await.len() >= 2);
    let dl = store.dead_letters(&Default::default(), 10).await.unwrap();
    assert!(dl
        .iter()
        .all(|d| d.record_id.as_deref() == Some("k1") && d.reason == "exhausted"));
}

/// `GET /admin/dlq` and `POST /admin/dlq/replay`: bearer token required,
/// `dry_run` lists without publishing, a real replay republishes.
#[tokio::test]
async fn admin_dlq_endpoints_need_the_token_and_honour_dry_run() {
    let overrides = Overrides::new().vars(FAST).admin("s3cret-token");
    let mut app = TestApp::prepare(Db::Sqlite, overrides).await.unwrap();
    let error_tap = tap(&app.topology, TopicKind::Error).await;
    app.start().await;
    let addr = app.admin_addr().to_string();
    let store = app.store.clone();
    let p = publishers(&app.topology).await;
    p.publish_to(
        TopicKind::Raw,
        Bytes::from_static(b"<xml/>"),
        HashMap::new(),
        "",
    )
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            pending(&store).await == 1
        })
        .await
    );

    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    for auth in [None, Some("Bearer wrong")] {
        let mut req = http.get(format!("{base}/admin/dlq"));
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        assert_eq!(req.send().await.unwrap().status(), 401, "{auth:?}");
        let mut req = http.post(format!("{base}/admin/dlq/replay"));
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        assert_eq!(req.send().await.unwrap().status(), 401, "{auth:?}");
    }
    let listed: serde_json::Value = http
        .get(format!("{base}/admin/dlq?reason=invalid"))
        .bearer_auth("s3cret-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["pending"], 1);
    let id = listed["dead_letters"][0]["id"].as_i64().unwrap();

    let dry: serde_json::Value = http
        .post(format!("{base}/admin/dlq/replay"))
        .bearer_auth("s3cret-token")
        .json(&json!({"dry_run": true, "reason": "invalid"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["replayed"], json!([id]));
    assert!(
        error_tap.drain(Duration::from_secs(2)).await.is_empty(),
        "dry run published nothing"
    );
    assert_eq!(pending(&store).await, 1, "dry run marks nothing");

    let real: serde_json::Value = http
        .post(format!("{base}/admin/dlq/replay"))
        .bearer_auth("s3cret-token")
        .json(&json!({"ids": [id]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(real["replayed"], json!([id]));
    let replayed = error_tap.collect(1, Duration::from_secs(10)).await;
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].attributes["attempt"], "0");
    assert_eq!(replayed[0].attributes["replay"], "true");
    assert_eq!(&replayed[0].data[..], b"<xml/>");
    // Still invalid: it dies again at once and its row is reopened.
    assert!(
        eventually(Duration::from_secs(20), || async {
            count(
                &store,
                "SELECT COUNT(*) FROM dead_letters WHERE replay_count = 1 AND replayed_at IS NULL",
            )
            .await
                == 1
        })
        .await
    );
    assert_eq!(count(&store, "SELECT COUNT(*) FROM dead_letters").await, 1);
    app.stop().await;
}

/// `processing_duration_seconds` measures the work, not a retry's scheduled
/// wait: a retry held 3 s for its backoff must not read as 3 s of processing
/// (slow-processing alerts would fire whenever retries wait).
#[tokio::test]
async fn processing_time_excludes_the_retry_hold() {
    let snaps = MissingSnapshots::new();
    let (k, v) = snaps.setting();
    let overrides = Overrides::new()
        .vars(&[
            ("BACKBONE__RETRY__INITIAL_BACKOFF", "3s"),
            ("BACKBONE__RETRY__MAX_BACKOFF", "3s"),
        ])
        .set(k, v);
    let app = TestApp::spawn(Db::Sqlite, overrides).await.unwrap();
    let (t, store) = (app.topology.clone(), app.store.clone());
    let p = publishers(&t).await;
    publish_raw(&p, &snaps.event("suitex", "hist", "h1", 0, "h1")).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            audit_times(&store, "h1", "transient").await.len() == 1
        })
        .await,
        "the first execution failed"
    );
    snaps.provide("h1", json!({"a": 1}));
    assert!(
        eventually(Duration::from_secs(20), || async {
            count(&store, "SELECT COUNT(*) FROM events").await == 1
        })
        .await,
        "the retry merged it"
    );
    let retry_sub = t.subscription_id(ConsumerKind::Retry);
    let h = backbone::metrics::metrics()
        .processing_duration
        .with_label_values(&[retry_sub.as_str()]);
    assert!(
        eventually(Duration::from_secs(5), || async {
            h.get_sample_count() >= 1
        })
        .await
    );
    assert!(
        h.get_sample_sum() < 2.0,
        "the retry waited 3 s for its backoff, which is not processing time: {} s over {} message(s)",
        h.get_sample_sum(),
        h.get_sample_count()
    );
    app.stop().await;
}

/// Issue 31, finding 3: `GET /admin/dlq` pages by id and never carries the
/// messages' data (only its size); a page is at most 1,000 rows. A dry-run
/// replay pages too. (The memory figures: tests/it/dlq_bench.rs.)
#[tokio::test]
async fn admin_dlq_lists_page_by_page_without_the_data() {
    use backbone::store::dead_letters::NewDeadLetter;
    use backbone::store::ledger::AuditRow;
    let Some(app) = TestApp::spawn(Db::Sqlite, Overrides::new().admin("page-token")).await else {
        return;
    };
    for i in 0..5 {
        let dl = NewDeadLetter {
            dlq_message_id: format!("page-{i}"),
            origin_message_id: None,
            stage: "merge".into(),
            reason: "invalid".into(),
            attempts: 1,
            fingerprint: Some(format!("{i:064x}")),
            record_type: None,
            record_id: None,
            last_error: Some("bad".into()),
            errors: vec!["bad".into()],
            data: vec![b'd'; 1000 + i],
            attributes: HashMap::new(),
            ordering_key: None,
            source_subscription: None,
            delivery_count: None,
            replay_of: None,
        };
        let audit = AuditRow {
            event_id: None,
            fingerprint: format!("{i:064x}"),
            record_type: None,
            record_id: None,
            stage: "park".into(),
            outcome: "parked".into(),
            detail: None,
            message_id: None,
            attempt: 1,
            claim: false,
        };
        app.store.park(&dl, audit).await.unwrap();
    }
    let http = reqwest::Client::new();
    let base = format!("http://{}", app.admin_addr());
    let page = |q: String| {
        let http = http.clone();
        let url = format!("{base}/admin/dlq?{q}");
        async move {
            let r = http
                .get(url)
                .bearer_auth("page-token")
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (
                status,
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    let (status, _) = page("limit=10000".into()).await;
    assert_eq!(status, 400, "a page is at most 1,000 rows");
    let mut ids = Vec::new();
    let mut after: Option<i64> = None;
    loop {
        let q = match after {
            Some(a) => format!("limit=2&after_id={a}"),
            None => "limit=2".into(),
        };
        let (status, v) = page(q).await;
        assert_eq!(status, 200, "{v}");
        for d in v["dead_letters"].as_array().unwrap() {
            assert!(d.get("data").is_none(), "no data in a listing: {d}");
            assert!(d["data_bytes"].as_i64().unwrap() >= 1000, "{d}");
            ids.push(d["id"].as_i64().unwrap());
        }
        match v["next_after_id"].as_i64() {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in id order: {ids:?}");
    let dry: serde_json::Value = http
        .post(format!("{base}/admin/dlq/replay"))
        .bearer_auth("page-token")
        .json(&json!({"dry_run": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dry["replayed"], json!(ids));
    app.stop().await;
}
