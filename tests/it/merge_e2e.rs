//! The merge stage end to end: raw topic → daemon → events/audit/state →
//! merged topic, through the real emulator, on SQLite and on MariaDB.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use backbone::model::envelope;
use backbone::pubsub::publisher::{PublishFailure, Publishers};
use backbone::stages::Incoming;
use backbone::topology::{Env, TopicKind, Topology, TopologyError};
use bytes::Bytes;
use serde_json::json;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(30);

async fn worked_example(db: Db) {
    let Some(app) = TestApp::spawn(db, Overrides::new()).await else {
        return;
    };
    let t = &app.topology;
    let merged_tap = tap(t, TopicKind::Merged).await;
    let p = publishers(t).await;
    for e in history_to_v7() {
        publish_raw(&p, &e).await;
    }
    let example = json!({
        "source": "suitex", "record_type": "project", "record_id": "42",
        "base_version": 6, "timestamp": "2026-03-13T09:59:00Z",
        "changes": {"status": "open", "name": "X"}
    })
    .to_string();
    publish_raw(&p, &example).await;

    let msgs = merged_tap.collect(8, WAIT).await;
    assert_eq!(msgs.len(), 8, "eight merged events");
    let last = msgs
        .iter()
        .map(json)
        .find(|m| m["origin"] == "suitex")
        .expect("the suitex event was merged");
    assert_eq!(last["version"], 8);
    assert_eq!(last["base_version"], 6);
    assert_eq!(last["applied"], json!({"name": "X"}));
    assert_eq!(
        last["conflicts"],
        json!([{"field": "status", "incoming": "open", "kept": "closed",
                "winner": "netsuite", "rule": "last_writer_wins"}])
    );
    assert_eq!(last["timestamp"], "2026-03-13T09:59:00.000000Z");
    let m = msgs
        .iter()
        .find(|m| json(m)["origin"] == "suitex")
        .expect("message");
    assert_eq!(m.ordering_key, "project:42");
    assert_eq!(m.attributes["origin"], "suitex");
    assert_eq!(m.attributes["version"], "8");
    assert_eq!(m.attributes["record_type"], "project");
    assert_eq!(m.attributes["record_id"], "42");
    assert_eq!(m.attributes["fingerprint"], last["fingerprint"]);
    // Versions arrive in order on the ordering key.
    let versions: Vec<i64> = msgs
        .iter()
        .map(|m| json(m)["version"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(versions, (1..=8).collect::<Vec<_>>());

    let store = app.store.clone();
    assert_eq!(count(&store, "SELECT COUNT(*) FROM events").await, 8);
    assert_eq!(
        count(&store, "SELECT MAX(sequence_num) FROM events WHERE record_type = 'project' AND record_id = '42'").await,
        8
    );
    assert_eq!(count(&store, "SELECT version FROM record_state").await, 8);
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM event_audit_log WHERE processing_outcome = 'merged'"
        )
        .await,
        8
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            count(&store, "SELECT COUNT(*) FROM outbox").await == 0
        })
        .await,
        "published rows leave the outbox"
    );
    app.stop().await;
}

#[tokio::test]
async fn spec_worked_example_sqlite() {
    worked_example(Db::Sqlite).await;
}

#[tokio::test]
async fn spec_worked_example_mariadb() {
    worked_example(Db::Mariadb).await;
}

async fn duplicates(db: Db) {
    let Some(mut app) = TestApp::prepare(db, Overrides::new()).await else {
        return;
    };
    let t = app.topology.clone();
    let merged_tap = tap(&t, TopicKind::Merged).await;
    let store = app.store.clone();

    // A redelivered message: the same broker message handled twice.
    let built = app.build().await;
    let merge = built.registry.get("merge").unwrap();
    let ev = raw_event(
        "suitex",
        "task",
        "7",
        0,
        "2026-03-13T21:00:00.123456+01:00",
        json!({"a": 1}),
    );
    let msg = Incoming {
        data: Bytes::from(ev.clone()),
        attributes: HashMap::new(),
        message_id: "m-1".into(),
        publish_time: None,
        ordering_key: "task:7".into(),
        execution: 1,
        turn: Default::default(),
    };
    let first = merge.handle(&msg).await.expect("first delivery merges");
    assert_eq!(first.label, "merged");
    let second = merge.handle(&msg).await.expect("redelivery is acked");
    assert_eq!(second.label, "duplicate");
    // The first outcome was never published (no runtime here), so its merged
    // event is still in the outbox: the redelivery publishes that one again
    // (docs/spec.md §4.1), and nothing new.
    assert_eq!(second.publish.len(), 1, "only the unconfirmed merged event");
    assert_eq!(second.publish[0].outbox_id, first.publish[0].outbox_id);
    assert_eq!(second.publish[0].data, first.publish[0].data);
    drop(built);

    // A publisher retry: the same event published twice through the broker,
    // plus the same event with its keys in another order (same fingerprint).
    app.start().await;
    let p = publishers(&t).await;
    let ev2 = raw_event(
        "netsuite",
        "task",
        "8",
        0,
        "2026-03-13T20:00:00Z",
        json!({"b": 2, "c": [1, 2]}),
    );
    let reordered =
        json!({"changes": {"c": [1, 2], "b": 2}, "timestamp": "2026-03-13T21:00:00+01:00",
        "base_version": 0, "record_id": "8", "record_type": "task", "source": "netsuite"})
        .to_string();
    publish_raw(&p, &ev2).await;
    publish_raw(&p, &ev2).await;
    publish_raw(&p, &reordered).await;
    let got = merged_tap.collect(3, Duration::from_secs(8)).await;
    assert!(
        eventually(WAIT, || async {
            count(
                &store,
                "SELECT COUNT(*) FROM event_audit_log WHERE processing_outcome = 'duplicate'",
            )
            .await
                == 3
        })
        .await,
        "three duplicate audit rows (one redelivery, two republishes)"
    );
    // task:7 was handled outside the runtime above, so its merged event waits
    // in the outbox for the relay; task:8 is published exactly once.
    assert_eq!(got.len(), 1, "one merged event per fingerprint: {got:?}");
    assert_eq!(json(&got[0])["record_id"], "8");
    assert_eq!(count(&store, "SELECT COUNT(*) FROM events").await, 2);
    app.stop().await;
}

#[tokio::test]
async fn duplicates_make_one_row_and_one_merged_event_sqlite() {
    duplicates(Db::Sqlite).await;
}

#[tokio::test]
async fn duplicates_make_one_row_and_one_merged_event_mariadb() {
    duplicates(Db::Mariadb).await;
}

async fn racing_replicas(db: Db) {
    let overrides = Overrides::new().vars(&[
        ("BACKBONE__RETRY__INITIAL_BACKOFF", "100ms"),
        ("BACKBONE__RETRY__MAX_BACKOFF", "500ms"),
    ]);
    let Some(mut app) = TestApp::spawn(db, overrides).await else {
        return;
    };
    // A second replica on the same database and project.
    app.start().await;
    let p = publishers(&app.topology).await;
    // 40 records × 5 events, every event published twice, interleaved, so
    // both replicas see copies of the same fingerprints at the same time.
    let mut events = Vec::new();
    for r in 0..40 {
        for v in 0..5 {
            events.push(raw_event(
                if v % 2 == 0 { "suitex" } else { "netsuite" },
                "race",
                &r.to_string(),
                v,
                &format!("2026-03-13T10:00:0{v}Z"),
                json!({ format!("f{v}"): r }),
            ));
        }
    }
    // Each record's events go out in order (ordering keys keep publish
    // order); records, and the two copies, race each other.
    let mut sends = Vec::new();
    for copy in 0..2 {
        for chunk in events.chunks(5) {
            let p = p.clone();
            let chunk = chunk.to_vec();
            sends.push(tokio::spawn(async move {
                for e in chunk {
                    publish_raw(&p, &e).await;
                }
                copy
            }));
        }
    }
    for s in sends {
        s.await.unwrap();
    }
    let store = app.store.clone();
    assert!(
        eventually(Duration::from_secs(60), || async {
            count(&store, "SELECT COUNT(*) FROM event_audit_log WHERE stage = 'merge' AND processing_outcome IN ('merged', 'duplicate')").await >= 400
        })
        .await,
        "every copy was handled"
    );
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM events").await,
        200,
        "one row per fingerprint"
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(DISTINCT fingerprint) FROM event_audit_log WHERE claim = 1"
        )
        .await,
        200
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM record_state WHERE version = 5"
        )
        .await,
        40
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_racing_on_duplicates_sqlite() {
    racing_replicas(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_racing_on_duplicates_mariadb() {
    racing_replicas(Db::Mariadb).await;
}

async fn crash_between_commit_and_publish(db: Db) {
    let overrides = Overrides::new().vars(&[
        ("BACKBONE__OUTBOX__RELAY_AFTER", "1s"),
        ("BACKBONE__OUTBOX__RELAY_INTERVAL", "200ms"),
    ]);
    let Some(mut app) = TestApp::prepare(db, overrides).await else {
        return;
    };
    let t = app.topology.clone();
    let merged_tap = tap(&t, TopicKind::Merged).await;
    // Injected fault: the stage commits, then the process "dies" before the
    // runtime publishes (we never hand the outcome to the runtime).
    let built = app.build().await;
    let ev = raw_event(
        "suitex",
        "crash",
        "1",
        0,
        "2026-03-13T10:00:00Z",
        json!({"x": 1}),
    );
    let msg = Incoming {
        data: Bytes::from(ev.clone()),
        attributes: HashMap::new(),
        message_id: "m-crash".into(),
        publish_time: None,
        ordering_key: "crash:1".into(),
        execution: 1,
        turn: Default::default(),
    };
    let outcome = built
        .registry
        .get("merge")
        .unwrap()
        .handle(&msg)
        .await
        .unwrap();
    assert_eq!(outcome.label, "merged");
    let store = built.store.clone();
    assert_eq!(count(&store, "SELECT COUNT(*) FROM outbox").await, 1);
    drop(built);

    // Restart; the broker redelivers the raw message (we publish it again).
    app.start().await;
    let p = publishers(&t).await;
    publish_raw(&p, &ev).await;
    let got = merged_tap.collect(1, WAIT).await;
    assert_eq!(
        got.len(),
        1,
        "the merged event is published after the restart"
    );
    assert_eq!(json(&got[0])["record_type"], "crash");
    assert!(
        eventually(Duration::from_secs(10), || async {
            count(&store, "SELECT COUNT(*) FROM outbox").await == 0
        })
        .await,
        "the outbox row is cleared once published"
    );
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM events").await,
        1,
        "no second row"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            count(
                &store,
                "SELECT COUNT(*) FROM event_audit_log WHERE processing_outcome = 'duplicate'",
            )
            .await
                == 1
        })
        .await
    );
    app.stop().await;
}

#[tokio::test]
async fn crash_after_commit_before_publish_sqlite() {
    crash_between_commit_and_publish(Db::Sqlite).await;
}

#[tokio::test]
async fn crash_after_commit_before_publish_mariadb() {
    crash_between_commit_and_publish(Db::Mariadb).await;
}

/// docs/spec.md §10 rows for the merge stage's input.
async fn bad_inputs(db: Db) {
    let overrides = Overrides::new().set("BACKBONE__CONSUMERS__RETRY__ENABLED", "false");
    let Some(mut app) = TestApp::prepare(db, overrides).await else {
        return;
    };
    let t = app.topology.clone();
    let dlq_tap = tap(&t, TopicKind::Dlq).await;
    let error_tap = tap(&t, TopicKind::Error).await;
    let merged_tap = tap(&t, TopicKind::Merged).await;
    app.start().await;
    let p = publishers(&t).await;

    let ok = |ts: &str| raw_event("suitex", "bad", "1", 0, ts, json!({"a": 1}));
    let mut deep = String::new();
    for _ in 0..70 {
        deep.push('[');
    }
    for _ in 0..70 {
        deep.push(']');
    }
    let deep_event = format!(
        r#"{{"source":"suitex","record_type":"bad","record_id":"1","base_version":0,"timestamp":"2026-03-13T10:00:00Z","changes":{{"a":{deep}}}}}"#
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not utf-8", vec![0xff, 0xfe, b'{'], "`data`"),
        ("not json", b"{not json".to_vec(), "`data`"),
        ("not an object", b"[1,2]".to_vec(), "`data`"),
        ("too deep", deep_event.into_bytes(), "`data`"),
        (
            "missing field",
            json!({"source": "suitex", "record_type": "bad", "base_version": 0,
                   "timestamp": "2026-03-13T10:00:00Z", "changes": {}})
            .to_string()
            .into_bytes(),
            "`record_id`",
        ),
        (
            "unknown source",
            raw_event(
                "sap",
                "bad",
                "1",
                0,
                "2026-03-13T10:00:00Z",
                json!({"a": 1}),
            )
            .into_bytes(),
            "`source`",
        ),
        (
            "bad record_type",
            raw_event(
                "suitex",
                "Bad-Type",
                "1",
                0,
                "2026-03-13T10:00:00Z",
                json!({"a": 1}),
            )
            .into_bytes(),
            "`record_type`",
        ),
        ("bad timestamp", ok("yesterday").into_bytes(), "`timestamp`"),
        (
            "negative base_version",
            raw_event(
                "suitex",
                "bad",
                "1",
                -1,
                "2026-03-13T10:00:00Z",
                json!({"a": 1}),
            )
            .into_bytes(),
            "`base_version`",
        ),
    ];
    for (_, data, _) in &cases {
        p.publish_to(
            TopicKind::Raw,
            Bytes::from(data.clone()),
            HashMap::new(),
            "",
        )
        .await
        .unwrap();
    }
    // Id reused with other content → permanent.
    let id = "0190b0c4-6c3f-7000-8000-000000000001";
    let with_id = |v: i64| {
        json!({"id": id, "source": "suitex", "record_type": "idre", "record_id": "1",
               "base_version": 0, "timestamp": "2026-03-13T10:00:00Z", "changes": {"v": v}})
        .to_string()
    };
    publish_raw(&p, &with_id(1)).await;
    let first = merged_tap.collect(1, WAIT).await;
    assert_eq!(first.len(), 1);
    publish_raw(&p, &with_id(2)).await;
    // base_version ahead → pending (docs/spec.md §4.1), never the error topic.
    publish_raw(
        &p,
        &raw_event(
            "netsuite",
            "ahead",
            "1",
            5,
            "2026-03-13T10:00:00Z",
            json!({"a": 1}),
        ),
    )
    .await;

    let dead = dlq_tap.collect(cases.len() + 1, WAIT).await;
    assert_eq!(
        dead.len(),
        cases.len() + 1,
        "every bad input was dead-lettered"
    );
    for (name, data, field) in &cases {
        let m = dead
            .iter()
            .find(|m| m.data[..] == data[..])
            .unwrap_or_else(|| panic!("{name}: not on the dlq"));
        assert_eq!(m.attributes[envelope::DEAD_REASON], "invalid", "{name}");
        assert_eq!(m.attributes[envelope::STAGE], "merge", "{name}");
        assert_eq!(m.attributes[envelope::ATTEMPT], "1", "{name}");
        assert!(
            m.attributes[envelope::LAST_ERROR].contains(field),
            "{name}: {}",
            m.attributes[envelope::LAST_ERROR]
        );
        assert_eq!(m.attributes[envelope::FINGERPRINT].len(), 64, "{name}");
        assert!(
            !m.attributes[envelope::ORIGIN_MESSAGE_ID].is_empty(),
            "{name}"
        );
        assert!(
            m.attributes.contains_key(envelope::FIRST_FAILED_AT),
            "{name}"
        );
        assert!(m.attributes.contains_key(envelope::DEAD_AT), "{name}");
    }
    let reused = dead
        .iter()
        .find(|m| m.attributes[envelope::DEAD_REASON] == "permanent")
        .expect("id reuse is dead-lettered as permanent");
    assert_eq!(json(reused)["changes"]["v"], 2);

    let store = app.store.clone();
    assert!(
        eventually(WAIT, || async {
            count(
                &store,
                "SELECT COUNT(*) FROM pending_events WHERE record_type = 'ahead'",
            )
            .await
                == 1
        })
        .await,
        "base_version ahead is stored as pending"
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM event_audit_log WHERE record_type = 'ahead' AND processing_outcome = 'pending'"
        )
        .await,
        1
    );
    let retry = error_tap.drain(Duration::from_secs(2)).await;
    assert!(retry.is_empty(), "a gap is not an error: {retry:?}");

    // The consumer kept running: a valid event afterwards still merges.
    publish_raw(&p, &ok("2026-03-13T11:00:00Z")).await;
    assert_eq!(merged_tap.collect(1, WAIT).await.len(), 1);

    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM event_audit_log WHERE processing_outcome = 'invalid'"
        )
        .await,
        cases.len() as i64,
        "one audit row per invalid message"
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM event_audit_log WHERE processing_outcome = 'permanent'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM event_audit_log WHERE processing_outcome = 'transient'"
        )
        .await,
        0,
        "a gap is not a failure"
    );
    assert_eq!(count(&store, "SELECT COUNT(*) FROM events").await, 2);
    app.stop().await;
}

#[tokio::test]
async fn bad_inputs_are_routed_with_their_reasons_sqlite() {
    bad_inputs(Db::Sqlite).await;
}

#[tokio::test]
async fn bad_inputs_are_routed_with_their_reasons_mariadb() {
    bad_inputs(Db::Mariadb).await;
}

#[tokio::test]
async fn a_sandbox_process_never_publishes_to_production() {
    let pubsub = ScratchProject::new();
    let t = Topology::new(Env::Sandbox, pubsub.id.clone());
    let p = Arc::new(Publishers::new(t.clone(), &endpoint()).await.unwrap());
    for topic in [
        "events.raw.production".to_string(),
        format!("projects/{}/topics/events.merged.production", t.project_id),
        "events.raw.local".to_string(),
    ] {
        let r = p
            .publish(&topic, Bytes::from_static(b"{}"), HashMap::new(), "")
            .await;
        assert!(
            matches!(
                r,
                Err(PublishFailure::Refused(TopologyError::ForeignEnv { .. }))
            ),
            "{topic}: {r:?}"
        );
    }
    let r = p
        .publish(
            "orders.raw.sandbox",
            Bytes::from_static(b"{}"),
            HashMap::new(),
            "",
        )
        .await;
    assert!(matches!(r, Err(PublishFailure::Refused(_))), "{r:?}");
}

/// A record's burst waiting at the broker merges in a few batches, not one
/// batch per event (`stages::lane_turn`), and still in order: every
/// version merged on the base before it, published in version order.
async fn burst_shares_batches(db: Db) {
    const BURST: i64 = 40;
    let Some(mut app) = TestApp::prepare(db, Overrides::new()).await else {
        return;
    };
    let t = &app.topology;
    let merged_tap = tap(t, TopicKind::Merged).await;
    let p = publishers(t).await;
    for v in 0..BURST {
        let e = raw_event(
            "suitex",
            "project",
            "7",
            v,
            &format!("2026-03-13T10:{:02}:{:02}Z", v / 60, v % 60),
            json!({ "n": v }),
        );
        publish_raw(&p, &e).await;
    }
    let before = backbone::metrics::merge_figures(&[])[0].0;
    app.start().await;

    let msgs = merged_tap.collect(BURST as usize, WAIT).await;
    let versions: Vec<i64> = msgs
        .iter()
        .map(|m| json(m)["version"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(
        versions,
        (1..=BURST).collect::<Vec<_>>(),
        "in version order"
    );
    let bases: Vec<i64> = msgs
        .iter()
        .map(|m| json(m)["base_version"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(
        bases,
        (0..BURST).collect::<Vec<_>>(),
        "each on the one before"
    );
    let batches = backbone::metrics::merge_figures(&[])[0].0 - before;
    println!("{BURST} events of one record merged in {batches} batches");
    assert!(
        batches <= (BURST as u64) / 4,
        "{batches} batches for a burst of {BURST}: the record's events did not share them"
    );
    let store = app.store.clone();
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM event_audit_log WHERE processing_outcome = 'merged'"
        )
        .await,
        BURST
    );
    app.stop().await;
}

#[tokio::test]
async fn a_records_burst_shares_merge_batches_in_order_sqlite() {
    burst_shares_batches(Db::Sqlite).await;
}

#[tokio::test]
async fn a_records_burst_shares_merge_batches_in_order_mariadb() {
    burst_shares_batches(Db::Mariadb).await;
}

/// A burst whose every event fails while the database is away is retried
/// in the order it arrived: each concurrent edit (all on base 0) becomes
/// the version its place gives it. A retry that overtook its predecessor's
/// would take the predecessor's version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_retried_across_a_database_cut_keeps_its_order() {
    const BURST: i64 = 30;
    let proxy = Proxy::start(&mariadb_addr()).await;
    let o = Overrides::new()
        .database_via(proxy.port)
        .set("BACKBONE__DATABASE__CONNECT_TIMEOUT", "1s");
    let Some(mut app) = TestApp::prepare(Db::Mariadb, o).await else {
        return;
    };
    let merged_tap = tap(&app.topology, TopicKind::Merged).await;
    app.start().await;
    proxy.refuse();
    let p = publishers(&app.topology).await;
    for k in 0..BURST {
        let e = raw_event(
            if k % 2 == 0 { "suitex" } else { "netsuite" },
            "project",
            "9",
            0,
            &format!("2026-03-13T11:00:{k:02}Z"),
            json!({ format!("f{k}"): k }),
        );
        publish_raw(&p, &e).await;
    }
    // Every event has failed at least once by now and is being retried.
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.restore();

    let msgs = merged_tap
        .collect(BURST as usize, Duration::from_secs(60))
        .await;
    let mut placed: Vec<(i64, Vec<String>)> = msgs
        .iter()
        .map(|m| {
            let j = json(m);
            let applied = j["applied"]
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            (j["version"].as_i64().unwrap_or(0), applied)
        })
        .collect();
    placed.sort();
    let want: Vec<(i64, Vec<String>)> =
        (0..BURST).map(|k| (k + 1, vec![format!("f{k}")])).collect();
    assert_eq!(placed, want, "version k+1 is the k-th event published");
    app.stop().await;
}
