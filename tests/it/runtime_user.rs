//! Booting as production does (docs/spec.md §10, "run as the least-privilege runtime
//! user"): the schema is migrated by an administrator (`event-backbone
//! migrate` as root), the shipped grants make a runtime user, and the real
//! binary runs as that user in the `production` env (so
//! `database.migrate_on_start` is off, as deployed). It merges, delivers,
//! retries, parks and replays, and `events list`, `verify` and `doctor` work
//! with its rights; it never runs DDL (its grants would refuse it). A schema
//! one migration behind makes `run` exit 1 naming `event-backbone migrate`;
//! one ahead of the binary is run on with a warning.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use backbone::pubsub::provision::provision;
use backbone::store::{schema, Store};
use backbone::topology::{Env, Topology};
use event_backbone::commands::doctor::{self, Status};
use serde_json::{json, Value};

use crate::deliver::{Reply, Sink, NS, SX};
use crate::support::*;

const WAIT: Duration = Duration::from_secs(45);
const ADMIN_TOKEN: &str = "runtime-user-admin-token";

/// `event-backbone <args>` with the production env layer, the emulator and
/// `vars` on top; waits for it and returns what it printed.
fn cli(args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut cmd = binary("production");
    cmd.args(args)
        .env("PUBSUB_EMULATOR_HOST", emulator_host())
        .env("BACKBONE__LOG__FORMAT", "text");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().expect("run event-backbone")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `event-backbone migrate` as the administrator (root), as the chart's hook
/// Job runs it: env, project and the administrator's URL only.
fn migrate_as_admin(root_url: &str) -> String {
    let out = cli(&["migrate"], &[("BACKBONE__DATABASE__URL", root_url)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn runtime_url(user: &str, db: &str) -> String {
    mariadb_url_as(user, "pw", db)
}

/// The daemon as a child process, in the production env layer.
fn spawn_daemon(vars: &[(&str, &str)]) -> ChildDaemon {
    let mut cmd = binary("production");
    cmd.arg("run")
        .env("PUBSUB_EMULATOR_HOST", emulator_host())
        .env("BACKBONE__LOG__FORMAT", "text")
        .env("BACKBONE__SHUTDOWN__GRACE", "5s")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    ChildDaemon::spawn(&mut cmd)
}

async fn ready(metrics: SocketAddr) -> bool {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    eventually(WAIT, || async {
        http.get(format!("http://{metrics}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await
}

/// Requests the sink received on `path` for record `project/<rid>`.
fn for_record(sink: &Sink, path: &str, rid: &str) -> Vec<Value> {
    sink.requests(path)
        .iter()
        .map(|r| r.json())
        .filter(|b| b["record_type"] == "project" && b["record_id"] == rid)
        .collect()
}

async fn audit(store: &Store, stage: &str, outcome: &str, rid: &str) -> i64 {
    count(
        store,
        &format!(
            "SELECT COUNT(*) FROM event_audit_log WHERE stage = '{stage}' \
             AND processing_outcome = '{outcome}' AND record_id = '{rid}'"
        ),
    )
    .await
}

/// The whole flow as the runtime user: merge (the §5 worked example), both
/// deliveries, one retry (503 once), one park (400), one replay through the
/// admin API, then `events list`, `verify` and `doctor` as that user.
#[tokio::test]
async fn runtime_user_runs_the_whole_flow_mariadb() {
    let Some(tdb) = fresh_db(Db::Mariadb).await else {
        return;
    };
    let db = tdb.name.clone().expect("a MariaDB database");
    let applied = migrate_as_admin(&tdb.url);
    assert!(applied.contains("Applied to"), "{applied}");
    let user = apply_shipped_grants(&db).await;
    let url = runtime_url(&user, &db);

    let pubsub = ScratchProject::new();
    let project = pubsub.id.clone();
    let topology = Topology::new(Env::Production, project.clone());
    provision(&topology, &endpoint()).await.expect("provision");
    let sink = Sink::start().await;
    let snaps = tempfile::tempdir().expect("tempdir");
    let snap_url = format!("file://{}", snaps.path().display());
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (ns, sx, metrics_s, admin_s) = (
        sink.url(NS),
        sink.url(SX),
        metrics.to_string(),
        admin.to_string(),
    );
    // Everything but the daemon's own HTTP addresses, for the CLI commands too.
    let mut common: Vec<(&str, &str)> = vec![
        ("BACKBONE__PUBSUB__PROJECT_ID", &project),
        ("BACKBONE__DATABASE__URL", &url),
        ("BACKBONE__SNAPSHOTS__URL", &snap_url),
        ("BACKBONE__TARGETS__NETSUITE__TIMEOUT", "2s"),
        ("BACKBONE__TARGETS__SUITEX__TIMEOUT", "2s"),
        ("BACKBONE__RETRY__INITIAL_BACKOFF", "100ms"),
        ("BACKBONE__RETRY__MAX_BACKOFF", "1s"),
    ];
    common.extend(target_vars(&ns, &sx));
    let mut daemon_vars = common.clone();
    daemon_vars.extend([
        ("BACKBONE__HTTP__METRICS_ADDR", metrics_s.as_str()),
        ("BACKBONE__HTTP__ADMIN_ADDR", admin_s.as_str()),
        ("BACKBONE__HTTP__ADMIN_TOKEN", ADMIN_TOKEN),
    ]);
    let mut daemon = spawn_daemon(&daemon_vars);
    assert!(ready(metrics).await, "the daemon never became ready");
    // Observes as root: the runtime user may read but not everything here.
    let root = Store::connect(&tdb.url, 2, Duration::from_secs(5))
        .await
        .expect("root connection");
    let p = publishers(&topology).await;

    // 1. Merge and both deliveries: docs/spec.md §5 worked example.
    for e in history_to_v7() {
        publish_raw(&p, &e).await;
    }
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
    for (path, who) in [(NS, "netsuite"), (SX, "suitex")] {
        assert!(
            eventually(WAIT, || async {
                for_record(&sink, path, "42")
                    .iter()
                    .any(|b| b["version"] == 8)
            })
            .await,
            "{who} never got version 8"
        );
    }
    let conflicts = json!([{"field": "status", "incoming": "open", "kept": "closed",
                            "winner": "netsuite", "rule": "last_writer_wins"}]);
    let ns8 = for_record(&sink, NS, "42")
        .into_iter()
        .find(|b| b["version"] == 8)
        .unwrap();
    assert_eq!(ns8["applied"], json!({"name": "X"}), "{ns8}");
    let sx8 = for_record(&sink, SX, "42")
        .into_iter()
        .find(|b| b["version"] == 8)
        .unwrap();
    assert_eq!(sx8["conflicts"], conflicts, "{sx8}");
    assert_eq!(
        count(
            &root,
            "SELECT COUNT(*) FROM events WHERE record_type = 'project' AND record_id = '42'"
        )
        .await,
        8
    );

    // 2. One retry: suitex answers 503 once, then 200.
    sink.script(SX, &[Reply::Status(503)]);
    publish_raw(
        &p,
        &raw_event(
            "netsuite",
            "project",
            "43",
            0,
            "2026-03-13T11:00:00Z",
            json!({"name": "Retried"}),
        ),
    )
    .await;
    assert!(
        eventually(WAIT, || async {
            audit(&root, "deliver.suitex", "delivered", "43").await == 1
        })
        .await,
        "the 503 was never retried to a delivery"
    );
    assert_eq!(audit(&root, "deliver.suitex", "transient", "43").await, 1);
    assert_eq!(for_record(&sink, SX, "43").len(), 2, "503, then 200");

    // 3. One park: netsuite answers 400 → permanent → dlq → dead_letters.
    sink.script(NS, &[Reply::Status(400)]);
    publish_raw(
        &p,
        &raw_event(
            "suitex",
            "project",
            "44",
            0,
            "2026-03-13T12:00:00Z",
            json!({"name": "Parked"}),
        ),
    )
    .await;
    assert!(
        eventually(WAIT, || async {
            count(
                &root,
                "SELECT COUNT(*) FROM dead_letters WHERE replayed_at IS NULL",
            )
            .await
                == 1
        })
        .await,
        "the 400 was never parked"
    );
    assert_eq!(audit(&root, "deliver.netsuite", "permanent", "44").await, 1);

    // 4. One replay through the admin API; netsuite now answers 200.
    let replay: Value = reqwest::Client::new()
        .post(format!("http://{admin}/admin/dlq/replay"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({}))
        .send()
        .await
        .expect("admin API")
        .error_for_status()
        .expect("replay accepted")
        .json()
        .await
        .expect("a JSON report");
    assert_eq!(
        replay["replayed"].as_array().map(Vec::len),
        Some(1),
        "{replay}"
    );
    assert!(
        eventually(WAIT, || async {
            audit(&root, "deliver.netsuite", "delivered", "44").await == 1
        })
        .await,
        "the replayed delivery never succeeded"
    );
    assert_eq!(for_record(&sink, NS, "44").len(), 2, "400, then 200");
    assert_eq!(
        count(
            &root,
            "SELECT COUNT(*) FROM dead_letters WHERE replayed_at IS NULL"
        )
        .await,
        0
    );

    // 5. The day-to-day commands, as the runtime user.
    let out = cli(
        &[
            "events",
            "list",
            "--record-type",
            "project",
            "--record-id",
            "42",
        ],
        &common,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("project/42: 8 events"),
        "{}",
        text(&out)
    );
    let out = cli(&["verify"], &common);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("No drift"),
        "{}",
        text(&out)
    );
    let out = cli(&["doctor"], &common);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("denied to this user by its grants"),
        "{report}"
    );
    assert!(
        report.contains("migrations of this binary applied"),
        "{report}"
    );

    daemon.sigterm();
    let status = daemon.exit_within(Duration::from_secs(20)).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "clean exit on SIGTERM"
    );
    root.close().await;
    drop_user(&user).await;
}

/// Applies `sql/grants-mysql.sql` to a fresh user, skipping grants on tables
/// that do not exist yet (MySQL refuses those): the grants of the release
/// before the missing migration.
async fn grants_on_existing_tables(db: &str) -> String {
    use sqlx::Connection;
    let user = format!("sw_{}", rand_suffix(8));
    let grants =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/grants-mysql.sql"))
            .expect("grants file")
            .replace("event_backbone.", &format!("{db}."))
            .replace("'sync_worker'", &format!("'{user}'"))
            .replace("'SYNC_WORKER_PASSWORD'", "'pw'")
            .replace("'EVENT_ARCHIVER_PASSWORD'", "'pw'")
            .replace("'EVENT_ARCHIVE_RECORDER_PASSWORD'", "'pw'");
    let mut admin = sqlx::MySqlConnection::connect(&mariadb_admin_url())
        .await
        .expect("admin connection");
    let sql: String = grants
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        if let Err(e) = sqlx::raw_sql(stmt).execute(&mut admin).await {
            let missing = e
                .as_database_error()
                .and_then(|d| d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
                .is_some_and(|m| m.number() == 1146);
            assert!(missing, "{stmt}: {e}");
        }
    }
    user
}

/// Schema one migration behind the binary (every embedded migration but the
/// last applied as root): `run` as the runtime user exits 1 and names the
/// missing migration and `event-backbone migrate`; after `migrate` as root
/// the gate passes.
#[tokio::test]
async fn runtime_user_refuses_a_schema_one_migration_behind_mariadb() {
    let Some(tdb) = fresh_db(Db::Mariadb).await else {
        return;
    };
    let db = tdb.name.clone().expect("a MariaDB database");
    let root = Store::connect(&tdb.url, 2, Duration::from_secs(5))
        .await
        .expect("root connection");
    let embedded: Vec<_> = root.migrator().iter().cloned().collect();
    let (last, earlier) = embedded.split_last().expect("at least one migration");
    // sqlx's own migrator over all but the last: the same rows and checksums
    // `migrate` would have written one release earlier.
    let older = sqlx::migrate::Migrator {
        migrations: Cow::Owned(earlier.to_vec()),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    older
        .run(root.pool())
        .await
        .expect("migrate all but the last");
    let user = grants_on_existing_tables(&db).await;
    let url = runtime_url(&user, &db);
    let pubsub = ScratchProject::new();
    let project = pubsub.id.clone();

    let started = Instant::now();
    // Complete targets: outside `local`, `run` refuses placeholders first.
    let mut vars = vec![
        ("BACKBONE__PUBSUB__PROJECT_ID", project.as_str()),
        ("BACKBONE__DATABASE__URL", url.as_str()),
        ("BACKBONE__HTTP__METRICS_ADDR", "127.0.0.1:0"),
    ];
    vars.extend(target_vars(
        "http://127.0.0.1:9/ns",
        "http://127.0.0.1:9/sx",
    ));
    let out = cli(&["run"], &vars);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "it refuses at once"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("`run` one migration behind printed:\n{stderr}");
    let named = format!(
        "migration {} ({}) is not applied",
        last.version, last.description
    );
    assert!(stderr.contains(&named), "{}", text(&out));
    assert!(
        stderr.contains("`event-backbone migrate`"),
        "{}",
        text(&out)
    );
    // Nothing was changed by the refused start.
    let status = schema::inspect(&root).await.expect("inspect");
    assert_eq!(status.missing.len(), 1, "{status:?}");

    // Doctor, as the runtime user, says the same.
    let out = cli(&["doctor"], &vars);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    let line = report
        .lines()
        .find(|l| l.contains("database: migrations applied"))
        .unwrap_or_else(|| panic!("{report}"));
    assert!(line.starts_with("FAIL") && line.contains(&named), "{line}");

    // The administrator migrates; the gate then passes.
    let applied = migrate_as_admin(&tdb.url);
    assert!(
        applied.contains(&format!("{} ({})", last.version, last.description)),
        "{applied}"
    );
    let status = schema::inspect(&root).await.expect("inspect");
    assert!(!status.is_behind() && !status.is_ahead(), "{status:?}");
    root.close().await;
    drop_user(&user).await;
}

/// A schema ahead of the binary (a rollback: a newer release applied a
/// migration this one does not know): the daemon starts and says so, doctor
/// passes with a warning, and `migrate` leaves the unknown version alone.
#[tokio::test]
async fn runtime_schema_ahead_of_the_binary_runs_with_a_warning() {
    let overrides = Overrides::new()
        .local_snapshots()
        .set("BACKBONE__DATABASE__MIGRATE_ON_START", "false");
    let app = TestApp::prepare(Db::Sqlite, overrides)
        .await
        .expect("sqlite");
    let (s, store) = (&app.settings, &app.store);
    app.migrate().await;
    let next = store
        .migrator()
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0)
        + 1;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (?, 'from a newer release', 1, X'00', 0)",
    )
    .bind(next)
    .execute(store.pool())
    .await
    .expect("a migration from the future");
    let status = schema::inspect(store).await.expect("inspect");
    assert!(status.is_ahead() && !status.is_behind(), "{status:?}");
    let unknown = format!("{next} (from a newer release)");

    // doctor: a warning, not a failure.
    app.provision().await;
    let checks = doctor::checks(s).await;
    let check = checks
        .iter()
        .find(|c| c.name == "database: migrations applied")
        .expect("a migrations check");
    assert_eq!(check.status, Status::Warn, "{check}");
    assert!(check.ok() && check.detail.contains(&unknown), "{check}");

    // run: starts, warns naming the version, drains on SIGTERM.
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = tempfile::NamedTempFile::new().expect("log file");
    // Killed when dropped, should an assertion fail before it exits.
    let child = ChildDaemon::spawn(
        app.daemon_command(&[
            ("BACKBONE__HTTP__METRICS_ADDR", &metrics.to_string()),
            ("BACKBONE__SHUTDOWN__GRACE", "3s"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.reopen().expect("log handle")),
    );
    let up = ready(metrics).await;
    child.sigterm();
    let exited = child.wait();
    let logged = std::fs::read_to_string(log.path()).unwrap_or_default();
    assert!(
        up,
        "the daemon never became ready on a schema ahead of it:\n{logged}"
    );
    assert_eq!(exited.code(), Some(0), "{logged}");
    assert!(
        logged.contains("ahead of this binary") && logged.contains(&unknown),
        "{logged}"
    );

    // migrate (an older binary's hook Job after a rollback): no error.
    let out = binary("local")
        .arg("migrate")
        .env("BACKBONE__DATABASE__URL", app.db_url())
        .output()
        .expect("run migrate");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("up to date") && said.contains(&unknown),
        "{said}"
    );
    store.close().await;
}
