//! The examples of docs/integration.md, run as the guide writes them: each
//! is read from the Markdown (the first code block of its language under a
//! known heading), so the test fails when the guide changes in a way the
//! daemon does not accept.
//!
//! - the complete raw event and NetSuite's next change are published with the
//!   real binary's `publish` command and merged as versions 1 and 2, and each
//!   target receives the version the guide says it does;
//! - the plain-PHP signature check runs under Debian's `php` against a real
//!   delivery signed with `auth.kind = "hmac_sha256"`: it accepts the body as
//!   received and refuses a tampered body, a wrong secret, a missing header;
//! - the migration user's grants are applied on MariaDB and `migrate` runs as
//!   that user: all migrations apply, and the triggers it created refuse an
//!   UPDATE of the ledger.
//!
//! Without `php` the PHP test skips, saying why, except under CI=true
//! (scripts/tools.sh installs php-cli).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::deliver::{deploy_with, NS, SX};
use crate::support::*;
use backbone::topology::TopicKind;

const WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Reading the guide

fn guide() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/integration.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The first ```` ```lang ```` block under the heading line `heading` (exact),
/// before the next heading. Panics naming what is missing.
fn block(heading: &str, lang: &str) -> String {
    let text = guide();
    let mut lines = text.lines().skip_while(|l| l.trim_end() != heading);
    assert!(
        lines.next().is_some(),
        "docs/integration.md has no heading `{heading}` (the test reads its example there)"
    );
    let fence = format!("```{lang}");
    let mut in_other_block = false;
    let mut body: Option<Vec<&str>> = None;
    for line in lines {
        match &mut body {
            Some(b) if line.trim_end() == "```" => return b.join("\n") + "\n",
            Some(b) => b.push(line),
            None if line.trim_end() == fence && !in_other_block => body = Some(Vec::new()),
            None if line.starts_with("```") => in_other_block = !in_other_block,
            None if line.starts_with('#') && !in_other_block => break,
            None => {}
        }
    }
    panic!("docs/integration.md: no ```{lang} block under `{heading}`")
}

fn created_event() -> String {
    block("### A complete raw event", "json")
}

fn next_event() -> String {
    block("### The next change, from NetSuite", "json")
}

// ---------------------------------------------------------------------------
// The complete raw event, published with `publish` and merged

/// `event-backbone publish FILE` (the real binary) against this app's
/// project; returns its stdout.
fn publish_with_binary(app: &TestApp, event: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("event.json");
    std::fs::write(&file, event).expect("write the event");
    let out = binary("local")
        .arg("publish")
        .arg(&file)
        .envs(base_vars(&app.project, app.db_url()))
        .env("BACKBONE__LOG__LEVEL", "warn")
        .output()
        .expect("run event-backbone publish");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "publish refused the guide's event: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

async fn raw_events_merge(db: Db) {
    let created = created_event();
    let next = next_event();
    let c: Value = serde_json::from_str(&created).expect("the complete raw event is JSON");
    let n: Value = serde_json::from_str(&next).expect("the next change is JSON");
    // The guide's story: a creation, then a change made on the version it produced.
    for field in [
        "id",
        "record_type",
        "record_id",
        "source",
        "timestamp",
        "base_version",
        "changes",
    ] {
        assert!(
            c.get(field).is_some(),
            "the complete raw event lacks `{field}`"
        );
    }
    assert_eq!(
        c["base_version"], 0,
        "the guide's example creates the record"
    );
    assert_eq!(n["base_version"], 1, "the next change is made on version 1");
    assert_eq!(
        (&c["record_type"], &c["record_id"]),
        (&n["record_type"], &n["record_id"])
    );
    let key = format!(
        "{}:{}",
        c["record_type"].as_str().unwrap(),
        c["record_id"].as_str().unwrap()
    );

    let Some(d) = deploy_with(db, &[], async |_| {}).await else {
        return;
    };
    let merged = tap(&d.app.topology, TopicKind::Merged).await;

    let out = publish_with_binary(&d.app, &created);
    println!("publish (the complete raw event): {}", out.trim_end());
    assert!(
        out.contains(&format!("(ordering key {key:?})")),
        "publish sets the ordering key {{record_type}}:{{record_id}}: {out}"
    );
    let first = merged.collect(1, WAIT).await;
    assert_eq!(first.len(), 1, "the complete raw event was merged");
    assert_eq!(first[0].ordering_key, key);
    let m1 = json(&first[0]);
    println!("merged: {m1}");
    assert_eq!(m1["version"], 1);
    assert_eq!(m1["origin"], c["source"]);
    assert_eq!(
        m1["event_id"], c["id"],
        "the publisher's id is the event's id"
    );
    assert_eq!(
        m1["applied"], c["changes"],
        "every field of a creation applies"
    );
    assert_eq!(
        m1["timestamp"], "2026-03-13T20:00:00.123456Z",
        "UTC, microseconds kept"
    );
    let stored = count(
        &d.app.store,
        &format!(
            "SELECT COUNT(*) FROM events WHERE id = '{}'",
            c["id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(
        stored, 1,
        "the event is stored once, under the publisher's id"
    );

    let out = publish_with_binary(&d.app, &next);
    println!("publish (the next change): {}", out.trim_end());
    let second = merged.collect(1, WAIT).await;
    assert_eq!(second.len(), 1, "NetSuite's next change was merged");
    let m2 = json(&second[0]);
    println!("merged: {m2}");
    assert_eq!(m2["version"], 2);
    assert_eq!(m2["origin"], "netsuite");
    assert_eq!(m2["applied"], n["changes"]);
    assert_eq!(
        m2["conflicts"],
        json!([]),
        "made on the version it saw: no conflict"
    );

    // Each system receives the other's change, never its own.
    let ns = d.sink.wait_for(NS, 1, WAIT).await;
    let sx = d.sink.wait_for(SX, 1, WAIT).await;
    assert_eq!(ns.len(), 1, "NetSuite receives SuiteX's creation only");
    // Its request may go out after NetSuite's change was merged: then it is
    // the fold of both versions (docs/spec.md §4.1), numbered 2, carrying
    // the creation's fields NetSuite's change left alone.
    let got = ns[0].json();
    let version = got["version"].as_i64().expect("version");
    assert!(version == 1 || version == 2, "{got}");
    let changed_by_netsuite = n["changes"].as_object().expect("changes");
    for (field, value) in c["changes"].as_object().expect("changes") {
        if !changed_by_netsuite.contains_key(field) {
            assert_eq!(&got["applied"][field], value, "{field} in {got}");
        }
    }
    assert_eq!(sx.len(), 1, "SuiteX receives NetSuite's change only");
    assert_eq!(sx[0].json()["version"], 2);
    assert_eq!(sx[0].json()["applied"], n["changes"]);
    d.app.stop().await;
}

#[tokio::test]
async fn integration_guide_raw_events_publish_and_merge_sqlite() {
    raw_events_merge(Db::Sqlite).await;
}

#[tokio::test]
async fn integration_guide_raw_events_publish_and_merge_mariadb() {
    raw_events_merge(Db::Mariadb).await;
}

// ---------------------------------------------------------------------------
// The Laravel receiver's signature check, under php, on a real delivery

/// `php` when it runs; None (after saying why) when not, which fails under CI.
fn php() -> Option<&'static str> {
    let ok = Command::new("php")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some("php");
    }
    let why = "php is not installed (scripts/tools.sh installs Debian's php-cli)";
    if std::env::var("CI").is_ok() {
        panic!("{why}; CI must run the integration guide's PHP check");
    }
    eprintln!("skipping: {why}");
    None
}

/// Runs the guide's PHP snippet on `body` with the header value and secret;
/// true when it accepts.
fn php_accepts(
    php: &str,
    snippet: &std::path::Path,
    body: &[u8],
    signature: Option<&str>,
    secret: &str,
) -> bool {
    let dir = tempfile::tempdir().expect("tempdir");
    let body_file = dir.path().join("body");
    std::fs::write(&body_file, body).expect("write the body");
    let harness = dir.path().join("check.php");
    std::fs::write(
        &harness,
        "<?php\n\
         require $argv[1];\n\
         $signature = getenv('EB_SIGNATURE');\n\
         $ok = event_backbone_signature_is_valid(\n\
             file_get_contents($argv[2]),\n\
             $signature === false ? null : $signature,\n\
             getenv('EB_SECRET'),\n\
         );\n\
         echo $ok ? \"accepted\\n\" : \"refused\\n\";\n\
         exit($ok ? 0 : 1);\n",
    )
    .expect("write the harness");
    let mut cmd = Command::new(php);
    cmd.arg(&harness)
        .arg(snippet)
        .arg(&body_file)
        .env("EB_SECRET", secret)
        .env_remove("EB_SIGNATURE")
        .stdin(Stdio::null());
    if let Some(s) = signature {
        cmd.env("EB_SIGNATURE", s);
    }
    let out = cmd.output().expect("run php");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    match (out.status.code(), stdout.trim()) {
        (Some(0), "accepted") => true,
        (Some(1), "refused") => false,
        _ => panic!("the guide's PHP snippet did not run: {stdout}{stderr}"),
    }
}

#[tokio::test]
async fn integration_guide_php_signature_check_accepts_a_real_delivery() {
    let Some(php) = php() else {
        return;
    };
    let snippet = block("#### The signature check in plain PHP", "php");
    assert!(
        snippet.contains("function event_backbone_signature_is_valid("),
        "the guide's PHP snippet defines event_backbone_signature_is_valid: {snippet}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let snippet_file = dir.path().join("signature.php");
    std::fs::write(&snippet_file, &snippet).expect("write the snippet");

    let secret = format!("whk-{}", rand_suffix(24));
    let extra = [
        ("BACKBONE__TARGETS__SUITEX__TOKEN", ""),
        ("BACKBONE__TARGETS__SUITEX__AUTH__KIND", "hmac_sha256"),
        ("BACKBONE__TARGETS__SUITEX__AUTH__SECRET", secret.as_str()),
    ];
    let Some(d) = deploy_with(Db::Sqlite, &extra, async |_| {}).await else {
        return;
    };
    // The guide's two events: NetSuite's change is routed to SuiteX.
    let p = publishers(&d.app.topology).await;
    publish_raw(&p, &created_event()).await;
    d.sink.wait_for(NS, 1, WAIT).await;
    publish_raw(&p, &next_event()).await;
    let got = d.sink.wait_for(SX, 1, WAIT).await;
    assert_eq!(got.len(), 1, "SuiteX received NetSuite's change");
    let delivery = &got[0];
    let signature = delivery
        .header("signature")
        .expect("an hmac_sha256 delivery carries the Signature header");
    println!(
        "delivery to SuiteX: Signature: {signature}, {} body bytes: {}",
        delivery.body.len(),
        String::from_utf8_lossy(&delivery.body)
    );
    assert!(
        delivery.header("authorization").is_none(),
        "no bearer token"
    );

    let accepts =
        |body: &[u8], sig: Option<&str>, key: &str| php_accepts(php, &snippet_file, body, sig, key);
    assert!(
        accepts(&delivery.body, Some(&signature), &secret),
        "the guide's PHP check refuses a real delivery"
    );
    let mut tampered = delivery.body.to_vec();
    let at = tampered
        .windows(b"closed".len())
        .position(|w| w == b"closed")
        .expect("the body carries the change");
    tampered[at] = b'C';
    assert!(
        !accepts(&tampered, Some(&signature), &secret),
        "tampered body"
    );
    let reencoded = serde_json::to_vec_pretty(&delivery.json()).expect("json");
    assert!(
        !accepts(&reencoded, Some(&signature), &secret),
        "the same JSON re-encoded is not the signed body"
    );
    assert!(
        !accepts(&delivery.body, Some(&signature), "another-secret"),
        "wrong secret"
    );
    assert!(!accepts(&delivery.body, None, &secret), "missing header");
    assert!(
        !accepts(&delivery.body, Some(&signature.to_uppercase()), &secret),
        "spatie compares the lower-case hex as sent"
    );
    println!("the guide's PHP check: accepted the delivery; refused tampered, re-encoded, wrong secret, no header, upper case");
    d.app.stop().await;
}

// ---------------------------------------------------------------------------
// The migration user's grants, on MariaDB

#[tokio::test]
async fn integration_guide_migration_user_can_migrate_mariadb() {
    use sqlx::Connection;
    let Some(tdb) = fresh_db(Db::Mariadb).await else {
        return;
    };
    let name = tdb.name.clone().expect("a MariaDB database");
    let user = format!("mig_{}", rand_suffix(8));
    let sql = block("### The migration user", "sql");
    assert!(
        sql.contains("TRIGGER"),
        "the migration user needs TRIGGER: {sql}"
    );
    let sql = sql
        .replace("event_backbone.", &format!("{name}."))
        .replace("'event_backbone_migrator'", &format!("'{user}'"))
        .replace("'MIGRATOR_PASSWORD'", "'pw'");
    let mut admin = sqlx::MySqlConnection::connect(&mariadb_admin_url())
        .await
        .expect("admin connection");
    for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        sqlx::raw_sql(stmt)
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("{stmt}: {e}"));
    }

    let out = binary("local")
        .arg("migrate")
        .env(
            "BACKBONE__DATABASE__URL",
            mariadb_url_as(&user, "pw", &name),
        )
        .env("BACKBONE__LOG__LEVEL", "warn")
        .output()
        .expect("run event-backbone migrate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("migrate as the guide's migration user: {}", text.trim_end());
    assert!(
        out.status.success(),
        "migrate as the migration user: {text}"
    );
    assert!(text.contains("migrations applied"), "{text}");

    // The triggers it created (it is their definer) keep the ledger immutable.
    sqlx::raw_sql(&format!(
        "INSERT INTO {name}.events (id, record_type, record_id, source, `timestamp`, \
         base_version, changes, sequence_num) VALUES \
         ('0195f3a2-7c41-7d3e-9a55-3f1f4c2b8e10', 'project', '42', 'suitex', \
         '2026-03-13 20:00:00.123456', 0, '{{}}', 1)"
    ))
    .execute(&mut admin)
    .await
    .expect("insert a ledger row as root");
    let refused = sqlx::raw_sql(&format!("UPDATE {name}.events SET base_version = 1"))
        .execute(&mut admin)
        .await
        .expect_err("the ledger refuses an UPDATE, even root's");
    assert!(
        refused
            .to_string()
            .contains("Event records are immutable and cannot be updated."),
        "{refused}"
    );
    let definers: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT DEFINER FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = ?",
    )
    .bind(&name)
    .fetch_all(&mut admin)
    .await
    .expect("read the triggers");
    assert_eq!(definers, vec![format!("{user}@%")], "the triggers' definer");
    let _ = sqlx::raw_sql(&format!("DROP USER '{user}'@'%'"))
        .execute(&mut admin)
        .await;
    drop(tdb);
}
