//! Event history (issue 6): `events list|replay`, `verify` and the admin
//! record endpoints, against events the running daemon merged from the
//! emulator, on SQLite and MariaDB.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use backbone::admin::{self, AdminState};
use backbone::history::{self, verify::verify, HistoryError, ListQuery};
use backbone::model::raw_event::Source;
use backbone::model::rules::{self, Incoming, MergePolicy, RecordState};
use backbone::store::ledger::{self, StateRow};
use backbone::store::Store;
use chrono::{DateTime, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);
const TOKEN: &str = "history-test-token";

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 13, 10, 0, 0).unwrap()
}

fn rfc(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

async fn projection(store: &Store, rtype: &str, rid: &str) -> Option<StateRow> {
    let mut c = store.pool().acquire().await.unwrap();
    ledger::record_state(&mut c, store.dialect(), rtype, rid)
        .await
        .unwrap()
}

async fn wait_seq(store: &Store, rtype: &str, rid: &str, seq: i64) -> StateRow {
    let ok = eventually(WAIT, || async {
        projection(store, rtype, rid)
            .await
            .is_some_and(|s| s.last_seq >= seq)
    })
    .await;
    assert!(ok, "{rtype}/{rid} never reached sequence {seq}");
    projection(store, rtype, rid).await.unwrap()
}

/// Runs the built binary against the test database.
fn cli(db_url: &str, args: &[&str]) -> (i32, String) {
    let out = cli_on(db_url, args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

// ---------------------------------------------------------------------------
// Randomized flow

/// One event the generator published and expects to be persisted.
#[derive(Debug, Clone)]
struct Sent {
    seq: i64,
    source: Source,
    ts: DateTime<Utc>,
    json: String,
}

struct Flow {
    /// record id → its persisted events in sequence order.
    sent: HashMap<String, Vec<Sent>>,
    /// record id → the state the model predicts.
    model: HashMap<String, RecordState>,
    unique: usize,
    duplicates: usize,
    /// Sequence numbers (per record) that were published twice.
    duplicated: HashSet<(String, i64)>,
}

const RECORDS: &[&str] = &["r0", "r1", "r2"];
const FIELDS: &[&str] = &["status", "name", "budget", "owner"];

/// Publishes a seeded random flow: both sources, stale base versions
/// (conflicts), coarse timestamps (ties, and late writers that lose), and
/// verbatim re-publications (duplicates). The model folds with the merge
/// rules only to choose base versions the live stage will accept.
async fn random_flow(p: &backbone::pubsub::publisher::Publishers, seed: u64, n: usize) -> Flow {
    let mut rng = StdRng::seed_from_u64(seed);
    let policy = MergePolicy::default();
    let mut flow = Flow {
        sent: HashMap::new(),
        model: HashMap::new(),
        unique: 0,
        duplicates: 0,
        duplicated: HashSet::new(),
    };
    let mut seen = HashSet::new();
    while flow.unique < n {
        let rid = RECORDS[rng.random_range(0..RECORDS.len())].to_string();
        let history = flow.sent.entry(rid.clone()).or_default();
        if !history.is_empty() && rng.random_bool(0.12) {
            let i = rng.random_range(0..history.len());
            publish_raw(p, &history[i].json).await;
            flow.duplicates += 1;
            flow.duplicated.insert((rid.clone(), history[i].seq));
            continue;
        }
        let state = flow.model.entry(rid.clone()).or_default();
        let source = if rng.random_bool(0.5) {
            Source::Suitex
        } else {
            Source::Netsuite
        };
        let base = (state.version - rng.random_range(0..=3)).max(0);
        let ts = t0() + chrono::Duration::minutes(rng.random_range(0..30));
        let mut changes = Map::new();
        for _ in 0..rng.random_range(1..=3) {
            let f = FIELDS[rng.random_range(0..FIELDS.len())];
            let v = match rng.random_range(0..3) {
                0 => json!(rng.random_range(0..50)),
                1 => json!(format!("v{}", rng.random_range(0..50))),
                _ => Value::Null,
            };
            changes.insert(f.to_string(), v);
        }
        let body = raw_event(
            source.as_str(),
            "project",
            &rid,
            base,
            &rfc(&ts),
            Value::Object(changes.clone()),
        );
        if !seen.insert(body.clone()) {
            continue; // The same content twice would be a duplicate, not a new event.
        }
        rules::merge(
            state,
            Incoming {
                source,
                timestamp: ts,
                base_version: base,
                changes: &changes,
            },
            &policy,
        )
        .expect("the generator only uses base versions the record has reached");
        publish_raw(p, &body).await;
        let seq = history.len() as i64 + 1;
        history.push(Sent {
            seq,
            source,
            ts,
            json: body,
        });
        flow.unique += 1;
    }
    flow
}

async fn wait_flow(store: &Store, flow: &Flow) {
    let (unique, dups) = (flow.unique as i64, flow.duplicates as i64);
    let ok = eventually(WAIT, || async {
        count(store, "SELECT COUNT(*) FROM events").await == unique
            && count(
                store,
                "SELECT COUNT(*) FROM event_audit_log WHERE processing_outcome = 'duplicate'",
            )
            .await
                >= dups
    })
    .await;
    assert!(
        ok,
        "the daemon did not process all {unique} events and {dups} duplicates: {} events stored",
        count(store, "SELECT COUNT(*) FROM events").await
    );
}

fn seqs(page: &history::EventPage) -> Vec<i64> {
    page.events.iter().map(|e| e.event.sequence_num).collect()
}

/// What `events list` must return for `sent` under filters, newest first.
fn expected(sent: &[Sent], keep: impl Fn(&Sent) -> bool) -> Vec<i64> {
    sent.iter()
        .rev()
        .filter(|s| keep(s))
        .map(|s| s.seq)
        .collect()
}

async fn randomized_flow(db: Db) {
    let Some(app) = TestApp::spawn(db, Overrides::new()).await else {
        return;
    };
    let policy = app.settings.merge_policy();
    let store = app.store.clone();
    let p = publishers(&app.topology).await;
    let flow = random_flow(&p, 0x6_1571, 60).await;
    wait_flow(&store, &flow).await;
    assert!(flow.duplicates > 0, "the seed produces duplicates");

    // Replay to the head == live projection == model, for every record.
    let mut conflicts = 0;
    for rid in RECORDS {
        let Some(sent) = flow.sent.get(*rid) else {
            continue;
        };
        let live = projection(&store, "project", rid)
            .await
            .expect("projection");
        let rep = history::replay(&store, &policy, "project", rid, None)
            .await
            .unwrap();
        assert_eq!(rep.state, live.state, "{rid}: replay == projection");
        assert_eq!(rep.state.version, live.version);
        assert_eq!(rep.last_seq, live.last_seq);
        assert_eq!(rep.events_replayed, sent.len());
        assert_eq!(&rep.state, &flow.model[*rid], "{rid}: replay == model");
        let page = history::list(
            &store,
            "project",
            rid,
            &ListQuery {
                limit: 1000,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        for e in &page.events {
            let claim = e
                .audit
                .iter()
                .find(|a| a.event_id.as_deref() == Some(e.event.id.as_str()))
                .expect("claim row");
            assert_eq!(
                claim.detail.as_ref().unwrap()["sequence_num"],
                e.event.sequence_num
            );
            assert_eq!(e.fingerprint.as_deref(), Some(claim.fingerprint.as_str()));
            conflicts += claim.detail.as_ref().unwrap()["conflicts"]
                .as_i64()
                .unwrap();
            // A redelivery by the broker may add duplicate rows the flow did not send.
            if flow
                .duplicated
                .contains(&(rid.to_string(), e.event.sequence_num))
            {
                assert!(
                    e.audit.iter().any(|a| a.outcome == "duplicate"),
                    "{rid} seq {}: duplicate rows are joined by fingerprint",
                    e.event.sequence_num
                );
            }
        }
    }
    assert!(conflicts > 0, "the seed produces conflicts");
    let report = verify(&store, &policy, None).await.unwrap();
    assert!(report.clean(), "no drift: {:?}", report.drift);
    assert_eq!(report.events_replayed, flow.unique);

    // Paging and filters return exactly the expected events.
    let (rid, sent) = flow
        .sent
        .iter()
        .max_by_key(|(_, v)| v.len())
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    let all = expected(&sent, |_| true);
    let mut got = Vec::new();
    let mut cursor = None;
    loop {
        let q = ListQuery {
            limit: 7,
            before_seq: cursor,
            ..Default::default()
        };
        let page = history::list(&store, "project", &rid, &q).await.unwrap();
        got.extend(seqs(&page));
        assert_eq!(page.more, page.next_before_seq.is_some());
        match page.next_before_seq {
            Some(c) => {
                assert_eq!(page.events.len(), 7);
                cursor = Some(c);
            }
            None => break,
        }
    }
    assert_eq!(got, all, "pages of 7 concatenate to the whole history");
    let mid = sent.len() as i64 / 2;
    let page = history::list(
        &store,
        "project",
        &rid,
        &ListQuery {
            before_seq: Some(mid),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(seqs(&page), expected(&sent, |s| s.seq < mid));
    for src in [Source::Suitex, Source::Netsuite] {
        let page = history::list(
            &store,
            "project",
            &rid,
            &ListQuery {
                source: Some(src),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(seqs(&page), expected(&sent, |s| s.source == src));
    }
    let (since, until) = (
        t0() + chrono::Duration::minutes(10),
        t0() + chrono::Duration::minutes(20),
    );
    let page = history::list(
        &store,
        "project",
        &rid,
        &ListQuery {
            since: Some(since),
            until: Some(until),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        seqs(&page),
        expected(&sent, |s| s.ts >= since && s.ts < until)
    );
    let combined = |s: &Sent| s.source == Source::Netsuite && s.ts >= since && s.seq < mid + 5;
    let want: Vec<i64> = expected(&sent, combined);
    let q = ListQuery {
        limit: 2,
        before_seq: Some(mid + 5),
        source: Some(Source::Netsuite),
        since: Some(since),
        until: None,
    };
    let page = history::list(&store, "project", &rid, &q).await.unwrap();
    assert_eq!(
        seqs(&page),
        want.iter().take(2).copied().collect::<Vec<_>>()
    );
    assert_eq!(page.more, want.len() > 2);
    for bad in [0, 1001] {
        let q = ListQuery {
            limit: bad,
            ..Default::default()
        };
        assert!(matches!(
            history::list(&store, "project", &rid, &q).await,
            Err(HistoryError::BadLimit(_))
        ));
    }

    // verify detects projection rows altered behind its back.
    let (r_a, r_b) = ("r0", "r1");
    let mut altered = projection(&store, "project", r_a).await.unwrap().state;
    let field = altered.fields.keys().next().cloned().unwrap();
    altered.fields.get_mut(&field).unwrap().value = json!("tampered");
    sqlx::query(
        "UPDATE record_state SET state = ? WHERE record_type = 'project' AND record_id = ?",
    )
    .bind(serde_json::to_string(&altered).unwrap())
    .bind(r_a)
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query("UPDATE record_state SET version = version + 1 WHERE record_type = 'project' AND record_id = ?")
        .bind(r_b)
        .execute(store.pool())
        .await
        .unwrap();
    let report = verify(&store, &policy, Some("project")).await.unwrap();
    let drifted: Vec<(&str, &str, Vec<String>)> = report
        .drift
        .iter()
        .map(|d| (d.record_id.as_str(), d.kind, d.fields.clone()))
        .collect();
    assert_eq!(
        drifted,
        vec![
            (r_a, "mismatch", vec![field.clone()]),
            (r_b, "mismatch", vec![])
        ]
    );
    let (code, out) = cli(app.db_url(), &["verify", "--json"]);
    assert_eq!(code, 1, "verify exits 1 on drift: {out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["drift"].as_array().unwrap().len(), 2);
    let (code, _) = cli(app.db_url(), &["verify", "--record-type", "other"]);
    assert_eq!(code, 0, "no records of that type: no drift");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn history_randomized_flow_replay_paging_verify_sqlite() {
    randomized_flow(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn history_randomized_flow_replay_paging_verify_mariadb() {
    randomized_flow(Db::Mariadb).await;
}

// ---------------------------------------------------------------------------
// Hand-written cases, earlier sequences, CLI and admin API

fn at(h: u32, m: u32) -> String {
    format!("2026-03-13T{h:02}:{m:02}:00.000000Z")
}

async fn hand_cases(db: Db) {
    let Some(app) = TestApp::spawn(db, Overrides::new().admin(TOKEN)).await else {
        return;
    };
    let addr = app.admin_addr().to_string();
    let policy = app.settings.merge_policy();
    let store = app.store.clone();
    let p = publishers(&app.topology).await;

    let e =
        |src: &str, base: i64, ts: String, c: Value| raw_event(src, "project", "42", base, &ts, c);
    let e2 = e("suitex", 1, at(10, 5), json!({"name": "B"}));
    let steps = [
        // v1: both fields new.
        e(
            "netsuite",
            0,
            at(10, 0),
            json!({"status": "open", "name": "A"}),
        ),
        // v2: name last changed at v1 <= base 1: applied.
        e2.clone(),
        // v3: name conflicts (changed at v2 > base 1), suitex wrote later and
        // keeps it; budget applies.
        e("netsuite", 1, at(10, 3), json!({"name": "C", "budget": 5})),
        // Still v3: budget conflicts and netsuite's later write wins; nothing applied.
        e("suitex", 2, at(9, 0), json!({"budget": 7})),
        // v4: null clears.
        e("netsuite", 3, at(11, 0), json!({"owner": null})),
    ];
    let mut captured = Vec::new();
    for (i, ev) in steps.iter().enumerate() {
        publish_raw(&p, ev).await;
        captured.push(wait_seq(&store, "project", "42", i as i64 + 1).await);
        if i == 2 {
            // A publisher retry of event 2: audit row only.
            publish_raw(&p, &e2).await;
            let ok = eventually(WAIT, || async {
                count(
                    &store,
                    "SELECT COUNT(*) FROM event_audit_log WHERE processing_outcome = 'duplicate'",
                )
                .await
                    == 1
            })
            .await;
            assert!(ok, "duplicate recorded");
        }
    }
    // Replay to an earlier sequence == the state the live stage had then.
    for (i, live) in captured.iter().enumerate() {
        let seq = i as i64 + 1;
        let rep = history::replay(&store, &policy, "project", "42", Some(seq))
            .await
            .unwrap();
        assert_eq!(rep.state, live.state, "state at sequence {seq}");
        assert_eq!(rep.last_seq, seq);
        assert_eq!(rep.events_replayed as i64, seq);
    }
    let versions: Vec<i64> = captured.iter().map(|c| c.version).collect();
    assert_eq!(versions, vec![1, 2, 3, 3, 4]);
    let head = history::replay(&store, &policy, "project", "42", Some(99))
        .await
        .unwrap();
    assert_eq!(
        Value::Object(head.state.values()),
        json!({"status": "open", "name": "B", "budget": 5, "owner": null})
    );
    let empty = history::replay(&store, &policy, "project", "nope", None)
        .await
        .unwrap();
    assert_eq!((empty.events_replayed, empty.state.version), (0, 0));

    // The list joins the duplicate to event 2 and shows each claim outcome.
    let page = history::list(&store, "project", "42", &ListQuery::default())
        .await
        .unwrap();
    assert_eq!(seqs(&page), vec![5, 4, 3, 2, 1]);
    let outcomes = |seq: i64| -> Vec<String> {
        page.events
            .iter()
            .find(|e| e.event.sequence_num == seq)
            .unwrap()
            .audit
            .iter()
            .map(|a| a.outcome.clone())
            .collect()
    };
    assert_eq!(outcomes(2), vec!["merged", "duplicate"]);
    assert_eq!(
        outcomes(4),
        vec!["merged"],
        "a resolved conflict is still published"
    );
    assert!(page.events[0].event.timestamp.ends_with("11:00:00.000000Z"));

    // CLI.
    let (code, out) = cli(
        app.db_url(),
        &[
            "events",
            "replay",
            "--record-type",
            "project",
            "--record-id",
            "42",
            "--to-seq",
            "1",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["state"], json!({"status": "open", "name": "A"}));
    assert_eq!(
        (v["version"].as_i64(), v["events_replayed"].as_i64()),
        (Some(1), Some(1))
    );
    let (code, out) = cli(
        app.db_url(),
        &[
            "events",
            "list",
            "--record-type",
            "project",
            "--record-id",
            "42",
            "--limit",
            "2",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["more"].as_bool(), v["next_before_seq"].as_i64()),
        (Some(true), Some(4))
    );
    let (code, out) = cli(
        app.db_url(),
        &[
            "events",
            "list",
            "--record-type",
            "project",
            "--record-id",
            "42",
            "--source",
            "suitex",
        ],
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("seq 4") && out.contains("seq 2") && !out.contains("seq 3"),
        "{out}"
    );
    let (code, _) = cli(
        app.db_url(),
        &[
            "events",
            "list",
            "--record-type",
            "project",
            "--record-id",
            "42",
            "--limit",
            "1001",
        ],
    );
    assert_eq!(code, 2, "a limit over 1000 is bad usage");
    let (code, _) = cli(app.db_url(), &["verify"]);
    assert_eq!(code, 0);

    // Admin API: bearer token required, JSON with it.
    let http = reqwest::Client::new();
    let base = format!("http://{addr}/admin/records/project/42");
    let ok = eventually(WAIT, || async {
        http.get(format!("{base}/events")).send().await.is_ok()
    })
    .await;
    assert!(ok, "admin API listening on {addr}");
    let r = http.get(format!("{base}/events")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{base}/events"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("http://{addr}/admin/other"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "unknown paths are not revealed without the token"
    );
    let r = http
        .get(format!("{base}/events?limit=2"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["events"][0]["sequence_num"], 5);
    assert_eq!(v["next_before_seq"], 4);
    assert!(v["events"][0]["fingerprint"]
        .as_str()
        .is_some_and(|f| f.len() == 64));
    let v: Value = http
        .get(format!("{base}/events?before_seq=4&source=suitex"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["events"].as_array().unwrap().len(), 1);
    assert_eq!(v["events"][0]["sequence_num"], 2);
    assert_eq!(v["events"][0]["audit"].as_array().unwrap().len(), 2);
    let r = http
        .get(format!("{base}/state?at_seq=3"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["state"],
        json!({"status": "open", "name": "B", "budget": 5})
    );
    assert_eq!(v["version"], 3);
    assert_eq!(v["fields"]["name"]["source"], "suitex");
    let v: Value = http
        .get(format!("{base}/state"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["version"], 4);
    for (url, status) in [
        (format!("{base}/state?at_seq=0"), 400),
        (format!("{base}/state?at_seq=x"), 400),
        (format!("{base}/events?source=sap"), 400),
        (format!("{base}/events?since=yesterday"), 400),
        (format!("{base}/events?limit=5000"), 400),
        (
            format!("http://{addr}/admin/records/project/missing/state"),
            404,
        ),
    ] {
        let r = http.get(&url).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(r.status(), status, "{url}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn history_hand_cases_earlier_seq_cli_admin_sqlite() {
    hand_cases(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn history_hand_cases_earlier_seq_cli_admin_mariadb() {
    hand_cases(Db::Mariadb).await;
}

#[tokio::test]
async fn history_admin_api_is_disabled_without_a_token() {
    let app = TestApp::prepare(
        Db::Sqlite,
        Overrides::new().set("BACKBONE__HTTP__ADMIN_ADDR", "127.0.0.1:0"),
    )
    .await
    .unwrap();
    let s = &app.settings;
    let state = AdminState::new(app.store.clone(), s);
    assert!(!state.enabled());
    let h = admin::serve(s, state, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    assert!(h.is_none());
}
