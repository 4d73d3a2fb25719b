//! `explain` (issue 14) on docs/spec.md §5 worked example, run through the real
//! daemon, the emulator and both stand-in targets: the CLI (text and
//! `--json`) and `GET /admin/records/{type}/{id}/explain`.

use serde_json::{json, Value};

use crate::deliver::{audit_count, skipped_count, Sink, NS, SX, WAIT};
use crate::support::*;

const TOKEN: &str = "explain-test-token";

/// Runs the built binary against the test database: (exit code, stdout, stderr).
fn cli(db_url: &str, args: &[&str]) -> (i32, String, String) {
    let out = cli_on(db_url, args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const RECORD: [&str; 4] = ["--record-type", "project", "--record-id", "42"];

fn explain_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["explain"];
    v.extend_from_slice(&RECORD);
    v.extend_from_slice(extra);
    v
}

/// The §5 assertions on the `status` field of an explanation.
fn assert_status_explained(x: &Value) {
    let status = &x["fields"]["status"];
    assert_eq!(status["value"], "closed", "{x:#}");
    let set_by = &status["set_by"];
    assert_eq!(set_by["source"], "netsuite");
    assert_eq!(set_by["sequence_num"], 7);
    assert_eq!(set_by["version"], 7);
    assert_eq!(set_by["timestamp"], "2026-03-13T10:00:00.000000Z");

    let conflicts = status["conflicts"].as_array().expect("conflicts");
    assert_eq!(conflicts.len(), 1, "{status:#}");
    let c = &conflicts[0];
    assert_eq!(c["rule"], "last_writer_wins");
    assert_eq!(c["sequence_num"], 8);
    assert_eq!(c["decided_current_value"], true);
    assert_eq!(c["recorded"], true, "matches the stored merged event");
    assert_eq!(c["winner"]["role"], "held");
    assert_eq!(c["winner"]["value"], "closed");
    assert_eq!(c["winner"]["event"], *set_by, "the netsuite event won");
    assert_eq!(c["loser"]["role"], "incoming");
    assert_eq!(c["loser"]["value"], "open");
    assert_eq!(
        c["loser"]["event"]["source"], "suitex",
        "the suitex event lost"
    );
    assert_eq!(c["loser"]["event"]["sequence_num"], 8);
    assert_eq!(
        c["loser"]["event"]["timestamp"],
        "2026-03-13T09:59:00.000000Z"
    );
    assert!(
        c["why"]
            .as_str()
            .is_some_and(|w| w.contains("later timestamp")),
        "{c:#}"
    );

    let sx = &status["delivery"]["suitex"];
    assert_eq!(sx["status"], "delivered", "{sx:#}");
    assert_eq!(sx["needed_since"], 8, "suitex's own change lost at seq 8");
    assert_eq!(sx["delivered"]["sequence_num"], 8);
    assert_eq!(sx["delivered"]["version"], 8);
    assert_eq!(sx["delivered"]["event_id"], c["loser"]["event"]["event_id"]);
    assert!(
        sx["delivered"]["at"]
            .as_str()
            .is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()),
        "{sx:#}"
    );
    assert_eq!(status["delivery"]["netsuite"]["status"], "not_needed");
}

async fn worked_example(db: Db) {
    let sink = Sink::start().await;
    let overrides = Overrides::new()
        .targets(&sink.url(NS), &sink.url(SX))
        .local_snapshots()
        .admin(TOKEN);
    let Some(app) = TestApp::spawn(db, overrides).await else {
        return;
    };
    let db_url = app.db_url().to_string();
    let addr = app.admin_addr().to_string();
    let (topology, store) = (&app.topology, &app.store);
    let p = publishers(topology).await;
    for e in history_to_v7() {
        publish_raw(&p, &e).await;
    }
    assert!(sink.wait_version(SX, 7, WAIT).await, "suitex at version 7");
    publish_raw(
        &p,
        &raw_event(
            "suitex",
            "project",
            "42",
            6,
            "2026-03-13T09:59:00Z",
            json!({"status": "open", "name": "X"}),
        ),
    )
    .await;
    assert_eq!(sink.wait_for(NS, 1, WAIT).await.len(), 1);
    assert!(sink.wait_version(SX, 8, WAIT).await, "suitex at version 8");
    // The audit row follows the target's 2xx: wait until every delivery is recorded.
    let settled = eventually(WAIT, || async {
        audit_count(store, "deliver.suitex", "delivered").await as usize == sink.requests(SX).len()
            && audit_count(store, "deliver.netsuite", "delivered").await == 1
            && skipped_count(&app, "netsuite").await == 7
    })
    .await;
    assert!(settled, "every delivery audited");

    // CLI, JSON.
    let (code, out, err) = cli(&db_url, &explain_args(&["--json"]));
    assert_eq!(code, 0, "{err}");
    let x: Value = serde_json::from_str(&out).expect("--json prints JSON");
    println!("--- explain --json (whole record) ---\n{out}");
    assert_eq!(x["record_type"], "project");
    assert_eq!(x["version"], 8);
    assert_eq!(x["events"], 8);
    assert_eq!(x["warnings"], json!([]));
    assert_eq!(
        x["fields"].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["f1", "f2", "f3", "f4", "f5", "name", "status"]
    );
    assert_status_explained(&x);
    let name = &x["fields"]["name"];
    assert_eq!(name["value"], "X");
    assert_eq!(name["set_by"]["source"], "suitex");
    assert_eq!(name["delivery"]["netsuite"]["status"], "delivered");
    assert_eq!(name["delivery"]["netsuite"]["delivered"]["version"], 8);
    assert_eq!(name["delivery"]["suitex"]["status"], "not_needed");
    // f1 came from netsuite at v2 and reached suitex with v2 (or with a
    // later version of the same burst, folded into one request).
    let f1 = &x["fields"]["f1"]["delivery"]["suitex"]["delivered"]["version"];
    assert!(f1.as_i64().is_some_and(|v| (2..=7).contains(&v)), "{f1}");

    // CLI, one field, JSON and text.
    let (code, out, err) = cli(&db_url, &explain_args(&["--field", "status", "--json"]));
    assert_eq!(code, 0, "{err}");
    println!("--- explain --field status --json ---\n{out}");
    let one: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        one["fields"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["status"]
    );
    assert_status_explained(&one);

    let (code, text, err) = cli(&db_url, &explain_args(&["--field", "status"]));
    assert_eq!(code, 0, "{err}");
    println!("--- explain --field status ---\n{text}");
    let id = |side: &str| {
        one["fields"]["status"]["conflicts"][0][side]["event"]["event_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (won, lost) = (id("winner"), id("loser"));
    for want in [
        "project/42 at version 8 (8 events, last sequence 8; 0 pending)".to_string(),
        "status = \"closed\"".into(),
        format!("set by    netsuite event {won} (seq 7, v7, at 2026-03-13T10:00:00.000000Z)"),
        "conflict  seq 8, rule last_writer_wins: won by the current value".into(),
        format!("won     netsuite event {won} (seq 7, v7, at 2026-03-13T10:00:00.000000Z) = \"closed\" [held]"),
        format!("lost    suitex event {lost} (seq 8, v8, at 2026-03-13T09:59:00.000000Z) = \"open\" [incoming]"),
        "why     the later timestamp wins".into(),
        "netsuite: not needed (netsuite is where this value came from)".into(),
        format!("suitex:   delivered at {} with merged event {lost} (seq 8, v8); needed since seq 8",
            one["fields"]["status"]["delivery"]["suitex"]["delivered"]["at"].as_str().unwrap()),
    ] {
        assert!(text.contains(&want), "missing {want:?} in\n{text}");
    }

    let (code, all, err) = cli(&db_url, &explain_args(&[]));
    assert_eq!(code, 0, "{err}");
    println!("--- explain (whole record) ---\n{all}");
    assert!(
        all.contains(&text[text.find("status = ").unwrap()..]),
        "{all}"
    );
    assert!(
        all.contains("name = \"X\"") && all.contains("f1 = 1"),
        "{all}"
    );

    // CLI errors: a clear message, exit 1.
    let (code, out, err) = cli(
        &db_url,
        &["explain", "--record-type", "project", "--record-id", "nope"],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("project/nope is unknown"), "{err}");
    let (code, _, err) = cli(&db_url, &explain_args(&["--field", "colour"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("project/42 has no field `colour`") && err.contains("name, status"),
        "{err}"
    );

    // HTTP: the same answer, behind the admin token.
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/admin/records/project/42/explain");
    let up = eventually(WAIT, || async { http.get(&url).send().await.is_ok() }).await;
    assert!(up, "admin API listening on {addr}");
    assert_eq!(http.get(&url).send().await.unwrap().status(), 401);
    let r = http.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let via_http: Value = r.json().await.unwrap();
    assert_eq!(via_http, x, "HTTP and CLI give the same explanation");
    let r = http
        .get(format!("{url}?field=status"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), one);
    for (u, want) in [
        (
            format!("http://{addr}/admin/records/project/nope/explain"),
            "project/nope is unknown",
        ),
        (format!("{url}?field=colour"), "no field `colour`"),
    ] {
        let r = http.get(&u).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(r.status(), 404, "{u}");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains(want)),
            "{u}: {body}"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_spec_worked_example_cli_and_admin_sqlite() {
    worked_example(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_spec_worked_example_cli_and_admin_mariadb() {
    worked_example(Db::Mariadb).await;
}
