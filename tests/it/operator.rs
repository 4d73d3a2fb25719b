//! Operator controls (docs/spec.md §7.1), end to end through the emulator:
//! a target paused by hand holds its deliveries on every replica (nothing
//! delivered, nothing dead-lettered, no attempt spent) and delivers all on
//! resume; a dead letter keeps the body sent and the answer, is previewed,
//! discarded with a reason (kept, audited, out of the alerts) or replayed by
//! the CLI in another process (the daemon's replay counter rises); a parked
//! delivery overtaken by a later acknowledged version resolves itself.
//! On MariaDB the daemon and the operator commands run as the shipped
//! least-privilege runtime user.

use std::time::Duration;

use backbone::ops::dlq::{self, Selection};
use backbone::ops::{self, targets, Actor};
use backbone::store::Store;
use serde_json::{json, Value};

use crate::support::*;
use crate::targets::{
    circuit_cause, dead_letters, publish_flow, records, scalar, spent_attempts, vars, Behaviour,
    Target,
};

const WAIT: Duration = Duration::from_secs(90);

async fn deploy(db: Db, ns: &Target, sx: &Target) -> Option<TestApp> {
    let mut o = Overrides::new()
        .targets(&ns.url(), &sx.url())
        .local_snapshots()
        .vars(&vars());
    if db == Db::Mariadb {
        o = o.runtime_user();
    }
    TestApp::spawn(db, o).await
}

/// The store an operator's command uses: the runtime user on MariaDB.
async fn operator_store(app: &TestApp) -> (Store, String) {
    let url = match app.runtime_user() {
        Some(user) => mariadb_url_as(user, "pw", app.db_name()),
        None => app.db_url().to_string(),
    };
    let store = Store::connect(&url, 2, Duration::from_secs(5))
        .await
        .expect("operator store");
    (store, url)
}

/// A metric without labels (or the sum of its series).
async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", app.metrics_addr()))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

async fn all_merged(app: &TestApp, n: usize, version: i64) -> bool {
    eventually(WAIT, || async {
        scalar(
            &app.store,
            &format!("SELECT COUNT(*) FROM record_state WHERE version = {version}"),
        )
        .await
            >= n as i64
    })
    .await
}

async fn pause_holds_and_resume_delivers(db: Db) {
    let ns = Target::start(0, Behaviour::default()).await;
    let sx = Target::start(0, Behaviour::default()).await;
    let Some(mut app) = deploy(db, &ns, &sx).await else {
        return;
    };
    let (store, _) = operator_store(&app).await;
    let paused = targets::pause(&store, "netsuite", &Actor::cli(), "NetSuite maintenance")
        .await
        .expect("pause");
    assert!(paused.paused);
    assert!(
        eventually(Duration::from_secs(10), || async {
            circuit_cause(&app, "netsuite").await.as_deref() == Some("paused")
        })
        .await,
        "the daemon obeys the pause within seconds (cause `paused`)"
    );
    if db == Db::Mariadb {
        // A second replica started while paused obeys from its start.
        app.start().await;
    }
    // Events flow: every record from SuiteX, so each goes to NetSuite.
    let n = 12;
    publish_flow(&app, n, 2, false, Duration::ZERO).await;
    assert!(all_merged(&app, n, 2).await, "merged while paused");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let ready: Value = reqwest::get(format!("http://{}/readyz", app.metrics_addr()))
        .await
        .expect("readyz")
        .json()
        .await
        .expect("readyz json");
    eprintln!(
        "paused: {}; /readyz targets {}",
        ns.summary("netsuite"),
        ready["targets"]
    );
    assert_eq!(ns.hits().len(), 0, "nothing delivered to a paused target");
    assert_eq!(dead_letters(&app).await, 0, "nothing dead-lettered");
    assert_eq!(spent_attempts(&app).await, 0, "no attempt spent");
    let t = ready["targets"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["target"] == "netsuite").cloned())
        .expect("netsuite in /readyz");
    assert_eq!(t["circuit_cause"], "paused");
    assert_eq!(t["paused_by"]["reason"], "NetSuite maintenance");
    let listed = targets::list(&store, None).await.expect("list");
    assert!(listed.iter().any(|t| t.target == "netsuite"
        && t.paused
        && t.actor.as_deref().is_some_and(|a| a.starts_with("cli:"))));
    targets::resume(&store, "netsuite", &Actor::cli())
        .await
        .expect("resume");
    let recs = records(n, None);
    let delivered = eventually(WAIT, || async {
        let acked = ns.acked();
        recs.iter().all(|r| acked.get(r).copied() == Some(2))
    })
    .await;
    eprintln!("resumed: {}", ns.summary("netsuite"));
    assert!(
        delivered,
        "every record delivered at its last version after resume"
    );
    assert_eq!(dead_letters(&app).await, 0);
    assert_eq!(ns.back_in_time(), 0, "P1");
    assert_eq!(
        scalar(
            &app.store,
            "SELECT COUNT(*) FROM event_audit_log WHERE stage = 'operator' \
             AND processing_outcome IN ('paused', 'resumed')"
        )
        .await,
        2,
        "both actions audited"
    );
    assert_ne!(
        circuit_cause(&app, "netsuite").await.as_deref(),
        Some("paused")
    );
    app.stop().await;
}

#[tokio::test]
async fn operator_pause_holds_a_target_and_resume_delivers_sqlite() {
    pause_holds_and_resume_delivers(Db::Sqlite).await;
}

#[tokio::test]
async fn operator_pause_holds_a_target_on_every_replica_and_resume_delivers_mariadb() {
    pause_holds_and_resume_delivers(Db::Mariadb).await;
}

/// `event-backbone dlq …` as another process, as the operator runs it.
fn cli(app: &TestApp, db_url: &str, args: &[&str]) -> std::process::Output {
    binary("local")
        .args(args)
        .envs(base_vars(&app.project, db_url))
        .env("BACKBONE__LOG__LEVEL", "warn")
        .output()
        .expect("run event-backbone")
}

async fn dead_letter_lifecycle(db: Db) {
    let ns = Target::start(
        0,
        Behaviour {
            reject: true,
            ..Default::default()
        },
    )
    .await;
    let sx = Target::start(0, Behaviour::default()).await;
    let Some(app) = deploy(db, &ns, &sx).await else {
        return;
    };
    let (store, url) = operator_store(&app).await;
    let n = 6;
    publish_flow(&app, n, 1, false, Duration::ZERO).await;
    assert!(
        eventually(WAIT, || async { dead_letters(&app).await == n as i64 }).await,
        "{n} dead letters parked"
    );
    // The body sent and the answer are kept with each.
    let list = dlq::list(&store, &Selection::default(), 100, None)
        .await
        .expect("list");
    assert_eq!(list.rows.len(), n);
    assert!(list.rows.iter().all(|r| r.dead_letter.status == "parked"));
    let first = list.rows[0].dead_letter.id;
    let shown = dlq::show(&store, first).await.expect("show");
    let sent = shown.sent.sent_body.clone().expect("the body sent is kept");
    let sent: Value = serde_json::from_str(&sent).expect("the body sent is JSON");
    assert_eq!(
        sent["record_id"],
        shown.dead_letter.record_id.clone().unwrap()
    );
    assert_eq!(shown.sent.answer.as_ref().and_then(|a| a.status), Some(400));
    // Preview: how many, which records, which targets, one issue.
    let by_target = Selection {
        target: Some("netsuite".into()),
        ..Default::default()
    };
    let p = dlq::preview(&store, &by_target).await.expect("preview");
    eprintln!("preview: {}", json!(p));
    assert_eq!(p.count, n as i64);
    assert_eq!(p.records_total, n as i64);
    assert_eq!(p.stages.get("deliver.netsuite"), Some(&(n as i64)));
    assert_eq!(p.groups.len(), 1, "one problem, one issue");
    // Discard two with a reason: kept, audited, no longer counted.
    let ids: Vec<i64> = list.rows.iter().map(|r| r.dead_letter.id).collect();
    let r = dlq::discard(&store, &ids[..2], &Actor::cli(), "test records, never real")
        .await
        .expect("discard");
    assert_eq!(r.changed, ids[..2].to_vec());
    let again = dlq::discard(&store, &ids[..1], &Actor::cli(), "twice")
        .await
        .expect("discard again");
    assert!(again.changed.is_empty(), "only parked rows are discarded");
    assert!(matches!(
        dlq::discard(&store, &ids[2..3], &Actor::cli(), "  ").await,
        Err(ops::OpsError::Invalid(_))
    ));
    let discarded = dlq::list(
        &store,
        &Selection {
            status: Some("discarded".into()),
            ..Default::default()
        },
        100,
        None,
    )
    .await
    .expect("list discarded");
    assert_eq!(discarded.rows.len(), 2);
    let d = &discarded.rows[0].dead_letter;
    assert!(d
        .status_actor
        .as_deref()
        .is_some_and(|a| a.starts_with("cli:")));
    assert_eq!(d.status_reason.as_deref(), Some("test records, never real"));
    assert_eq!(
        scalar(
            &app.store,
            "SELECT COUNT(*) FROM event_audit_log WHERE stage = 'operator' \
             AND processing_outcome = 'discarded'"
        )
        .await,
        2
    );
    assert_eq!(store.pending_dead_letters().await.unwrap(), n as i64 - 2);
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric(&app, "backbone_dead_letters_parked").await == (n - 2) as f64
        })
        .await,
        "the daemon's parked gauge drops a discard made elsewhere"
    );
    // Fixed; the CLI (another process) replays the rest.
    ns.set(|b| b.reject = false);
    let before = metric(&app, "backbone_dlq_replayed_total").await;
    let out = cli(
        &app,
        &url,
        &[
            "dlq",
            "replay",
            "--target",
            "netsuite",
            "--preview",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dry: Value = serde_json::from_slice(&out.stdout).expect("dry-run JSON");
    assert_eq!(dry["preview"]["count"], json!(n - 2));
    let out = cli(
        &app,
        &url,
        &["dlq", "replay", "--target", "netsuite", "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("replay JSON");
    assert_eq!(report["replayed"].as_array().map(Vec::len), Some(n - 2));
    assert!(
        eventually(Duration::from_secs(15), || async {
            metric(&app, "backbone_dlq_replayed_total").await >= before + (n - 2) as f64
        })
        .await,
        "the running daemon counts a replay the CLI made"
    );
    let recs = records(n, None);
    assert!(
        eventually(WAIT, || async {
            let acked = ns.acked();
            recs.iter().filter(|r| acked.contains_key(*r)).count() == n - 2
        })
        .await,
        "the replayed ones delivered"
    );
    let table = cli(&app, &url, &["dlq", "list", "--all"]);
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    eprintln!("{table}");
    assert!(table.contains("STATUS") && table.contains("discarded") && table.contains("replayed"));
    assert_eq!(
        scalar(
            &app.store,
            "SELECT COUNT(*) FROM dead_letters WHERE status = 'discarded'"
        )
        .await,
        2,
        "a discarded row stays, and is not replayed"
    );
    app.stop().await;
}

#[tokio::test]
async fn operator_dead_letter_preview_discard_and_cli_replay_sqlite() {
    dead_letter_lifecycle(Db::Sqlite).await;
}

#[tokio::test]
async fn operator_dead_letter_preview_discard_and_cli_replay_mariadb() {
    dead_letter_lifecycle(Db::Mariadb).await;
}

/// A parked delivery whose record later reached the target at a newer
/// version is marked superseded by the daemon (actor `auto`).
async fn auto_resolve(db: Db) {
    let ns = Target::start(
        0,
        Behaviour {
            reject: true,
            ..Default::default()
        },
    )
    .await;
    let sx = Target::start(0, Behaviour::default()).await;
    let Some(app) = deploy(db, &ns, &sx).await else {
        return;
    };
    let n = 3;
    publish_flow(&app, n, 1, false, Duration::ZERO).await;
    assert!(eventually(WAIT, || async { dead_letters(&app).await == n as i64 }).await);
    ns.set(|b| b.reject = false);
    // Version 2 of each record: delivered (with version 1's fields folded in).
    let p = publishers(&app.topology).await;
    for r in 0..n {
        let ev = raw_event(
            "suitex",
            "project",
            &format!("p{r:04}"),
            1,
            &format!("2026-03-13T11:00:00.{r:06}Z"),
            json!({"step": 2}),
        );
        publish_raw(&p, &ev).await;
    }
    let recs = records(n, None);
    assert!(
        eventually(WAIT, || async {
            let acked = ns.acked();
            recs.iter().all(|r| acked.get(r).copied() == Some(2))
        })
        .await,
        "version 2 delivered"
    );
    let resolved = eventually(Duration::from_secs(40), || async {
        scalar(
            &app.store,
            "SELECT COUNT(*) FROM dead_letters WHERE status = 'superseded' AND status_actor = 'auto'",
        )
        .await
            == n as i64
    })
    .await;
    assert!(resolved, "every parked dead letter superseded by itself");
    assert_eq!(app.store.pending_dead_letters().await.unwrap(), 0);
    app.stop().await;
}

#[tokio::test]
async fn operator_auto_resolve_supersedes_overtaken_dead_letters_sqlite() {
    auto_resolve(Db::Sqlite).await;
}

#[tokio::test]
async fn operator_auto_resolve_supersedes_overtaken_dead_letters_mariadb() {
    auto_resolve(Db::Mariadb).await;
}

/// The same actions through the admin API, behind its token.
#[tokio::test]
async fn operator_admin_api_pauses_previews_and_discards_sqlite() {
    let ns = Target::start(
        0,
        Behaviour {
            reject: true,
            ..Default::default()
        },
    )
    .await;
    let sx = Target::start(0, Behaviour::default()).await;
    let o = Overrides::new()
        .targets(&ns.url(), &sx.url())
        .local_snapshots()
        .vars(&vars())
        .admin("operator-token");
    let Some(app) = TestApp::spawn(Db::Sqlite, o).await else {
        return;
    };
    let base = format!("http://{}", app.admin_addr());
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(app.admin_token())
            .json(&body)
            .send()
    };
    let refused = http
        .post(format!("{base}/admin/targets/netsuite/pause"))
        .json(&json!({"reason": "x"}))
        .send()
        .await
        .expect("post");
    assert_eq!(refused.status(), 401, "no token, no pause");
    let no_reason = post("/admin/targets/netsuite/pause", json!({}))
        .await
        .expect("post");
    assert_eq!(no_reason.status(), 400, "a reason is required");
    let paused = post("/admin/targets/suitex/pause", json!({"reason": "window"}))
        .await
        .expect("post");
    assert_eq!(paused.status(), 200);
    let listed: Value = http
        .get(format!("{base}/admin/targets"))
        .bearer_auth(app.admin_token())
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let sx_row = listed
        .as_array()
        .and_then(|a| a.iter().find(|t| t["target"] == "suitex").cloned())
        .expect("suitex listed");
    assert_eq!(sx_row["paused"], true);
    assert_eq!(sx_row["actor"], "admin-api");
    assert!(
        eventually(Duration::from_secs(10), || async {
            circuit_cause(&app, "suitex").await.as_deref() == Some("paused")
        })
        .await
    );
    let resumed = post("/admin/targets/suitex/resume", json!({}))
        .await
        .expect("post");
    assert_eq!(resumed.status(), 200);
    // Dead letters: preview, show, discard.
    publish_flow(&app, 3, 1, false, Duration::ZERO).await;
    assert!(eventually(WAIT, || async { dead_letters(&app).await == 3 }).await);
    let p: Value = post("/admin/dlq/preview", json!({"target": "netsuite"}))
        .await
        .expect("preview")
        .json()
        .await
        .expect("json");
    assert_eq!(p["count"], 3);
    let id = p["ids"][0].as_i64().expect("an id");
    let shown: Value = http
        .get(format!("{base}/admin/dlq/{id}"))
        .bearer_auth(app.admin_token())
        .send()
        .await
        .expect("show")
        .json()
        .await
        .expect("json");
    assert_eq!(shown["sent"]["answer"]["status"], 400);
    let d: Value = post(
        "/admin/dlq/discard",
        json!({"ids": [id], "reason": "not ours"}),
    )
    .await
    .expect("discard")
    .json()
    .await
    .expect("json");
    assert_eq!(d["changed"], json!([id]));
    let dry: Value = post(
        "/admin/dlq/replay",
        json!({"target": "netsuite", "dry_run": true}),
    )
    .await
    .expect("dry run")
    .json()
    .await
    .expect("json");
    assert_eq!(
        dry["preview"]["count"], 2,
        "the discarded one is not selected"
    );
    app.stop().await;
}

/// `records resync` sends the record's state at the version the target
/// already acknowledged, once, with the resync header, and audits it.
// Multi-threaded: the stand-in target answers while the test waits for the CLI.
#[tokio::test(flavor = "multi_thread")]
async fn operator_records_resync_resends_an_acknowledged_version_sqlite() {
    let ns = Target::start(0, Behaviour::default()).await;
    let sx = Target::start(0, Behaviour::default()).await;
    let Some(app) = deploy(Db::Sqlite, &ns, &sx).await else {
        return;
    };
    publish_flow(&app, 2, 2, false, Duration::ZERO).await;
    let recs = records(2, None);
    assert!(
        eventually(WAIT, || async {
            let acked = ns.acked();
            recs.iter().all(|r| acked.get(r).copied() == Some(2))
        })
        .await
    );
    let before = ns.hits().len();
    let out = binary("local")
        .args([
            "records",
            "resync",
            "--target",
            "netsuite",
            "project:p0000",
            "--json",
        ])
        .envs(base_vars(&app.project, app.db_url()))
        .envs(target_vars(&ns.url(), &sx.url()))
        .env("BACKBONE__LOG__LEVEL", "warn")
        .output()
        .expect("run records resync");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report[0]["version"], 2);
    assert_eq!(report[0]["ok"], true);
    let hits = ns.hits();
    let new: Vec<_> = hits[before..].iter().collect();
    assert_eq!(new.len(), 1, "one request");
    assert!(new[0].resync, "with X-Backbone-Resync: true");
    assert_eq!(new[0].body["version"], 2, "at the acknowledged version");
    assert_eq!(new[0].body["applied"]["step"], 2, "the current state");
    assert_eq!(
        scalar(
            &app.store,
            "SELECT COUNT(*) FROM event_audit_log WHERE stage = 'operator' \
             AND processing_outcome = 'resynced' AND record_id = 'p0000'"
        )
        .await,
        1
    );
    app.stop().await;
}

/// The same resync through the admin API (the daemon hands its targets'
/// signed clients to the admin listener): one request at the acknowledged
/// version with the resync header, audited as the admin API; an unknown
/// target and an empty list are refused.
#[tokio::test(flavor = "multi_thread")]
async fn operator_admin_api_resyncs_a_record_sqlite() {
    let ns = Target::start(0, Behaviour::default()).await;
    let sx = Target::start(0, Behaviour::default()).await;
    let o = Overrides::new()
        .targets(&ns.url(), &sx.url())
        .local_snapshots()
        .vars(&vars())
        .admin("operator-token");
    let Some(app) = TestApp::spawn(Db::Sqlite, o).await else {
        return;
    };
    publish_flow(&app, 1, 2, false, Duration::ZERO).await;
    let recs = records(1, None);
    assert!(
        eventually(WAIT, || async {
            recs.iter().all(|r| ns.acked().get(r).copied() == Some(2))
        })
        .await
    );
    let before = ns.hits().len();
    let http = reqwest::Client::new();
    let post = |body: Value| {
        http.post(format!("http://{}/admin/records/resync", app.admin_addr()))
            .bearer_auth(app.admin_token())
            .json(&body)
            .send()
    };
    let r = post(json!({"target": "netsuite", "records": ["project:p0000"]}))
        .await
        .expect("resync");
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.expect("JSON");
    assert_eq!(report[0]["version"], 2, "{report}");
    let hits = ns.hits();
    let new: Vec<_> = hits[before..].iter().collect();
    assert_eq!(new.len(), 1, "one request");
    assert!(new[0].resync, "with X-Backbone-Resync: true");
    assert_eq!(new[0].body["version"], 2);
    assert_eq!(
        scalar(
            &app.store,
            "SELECT COUNT(*) FROM event_audit_log WHERE stage = 'operator' \
             AND processing_outcome = 'resynced' AND record_id = 'p0000' \
             AND detail LIKE '%admin-api%'"
        )
        .await,
        1
    );
    let r = post(json!({"target": "nowhere", "records": ["project:p0000"]}))
        .await
        .expect("resync");
    assert_eq!(r.status(), 400);
    let r = post(json!({"target": "netsuite", "records": []}))
        .await
        .expect("resync");
    assert_eq!(r.status(), 400);
    app.stop().await;
}
