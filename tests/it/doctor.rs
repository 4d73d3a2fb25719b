//! `event-backbone doctor`: passes on a provisioned, migrated deployment
//! (SQLite and MariaDB) and names the failing check when a subscription is
//! missing or differs, or the schema is not migrated.

use backbone::pubsub::clients;
use backbone::topology::{ConsumerKind, TopicKind};
use event_backbone::commands::doctor::{self, Check, Status};
use google_cloud_pubsub::model::Subscription;

use crate::support::*;

/// A fresh project and database, not running; provisioned and migrated
/// when asked.
async fn deployment(db: Db, provisioned: bool, migrated: bool) -> Option<TestApp> {
    let app = TestApp::prepare(db, Overrides::new().local_snapshots()).await?;
    if provisioned {
        app.provision().await;
    }
    if migrated {
        app.migrate().await;
    }
    Some(app)
}

fn report(checks: &[Check]) -> String {
    checks
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

fn failed(checks: &[Check]) -> Vec<&Check> {
    checks.iter().filter(|c| !c.ok()).collect()
}

async fn passes_on_a_provisioned_project(db: Db) {
    let Some(d) = deployment(db, true, true).await else {
        return;
    };
    let checks = doctor::checks(&d.settings).await;
    assert!(failed(&checks).is_empty(), "{}", report(&checks));
    // One line each: connect, topics, raw round trip, 3 local consumers, 4 database, snapshots.
    assert_eq!(checks.len(), 11, "{}", report(&checks));
    assert_eq!(doctor::run(d.settings.clone()).await.expect("doctor"), 0);
}

#[tokio::test]
async fn doctor_passes_on_a_provisioned_project_sqlite() {
    passes_on_a_provisioned_project(Db::Sqlite).await;
}

#[tokio::test]
async fn doctor_passes_on_a_provisioned_project_mariadb() {
    passes_on_a_provisioned_project(Db::Mariadb).await;
}

#[tokio::test]
async fn doctor_fails_when_a_subscription_is_missing() {
    let Some(d) = deployment(Db::Sqlite, true, true).await else {
        return;
    };
    let t = d.settings.topology();
    let admin = clients::subscription_admin(&endpoint())
        .await
        .expect("admin");
    admin
        .delete_subscription()
        .set_subscription(t.subscription_path(ConsumerKind::Retry))
        .send()
        .await
        .expect("delete the retry subscription");
    let checks = doctor::checks(&d.settings).await;
    let bad = failed(&checks);
    assert_eq!(bad.len(), 1, "{}", report(&checks));
    assert!(
        bad[0]
            .name
            .contains(&t.subscription_id(ConsumerKind::Retry))
            && bad[0].detail.contains("does not exist"),
        "{}",
        report(&checks)
    );
    assert_eq!(doctor::run(d.settings.clone()).await.expect("doctor"), 1);
}

#[tokio::test]
async fn doctor_fails_when_a_subscription_differs() {
    let Some(d) = deployment(Db::Sqlite, true, true).await else {
        return;
    };
    let t = d.settings.topology();
    let admin = clients::subscription_admin(&endpoint())
        .await
        .expect("admin");
    let merge_sub = t.subscription_path(ConsumerKind::Merge);
    admin
        .delete_subscription()
        .set_subscription(merge_sub.clone())
        .send()
        .await
        .expect("delete the merge subscription");
    // Recreated by hand without ordering and with a shorter ack deadline.
    admin
        .create_subscription()
        .with_request(
            Subscription::new()
                .set_name(merge_sub)
                .set_topic(t.topic_path(TopicKind::Raw))
                .set_ack_deadline_seconds(20),
        )
        .send()
        .await
        .expect("recreate the merge subscription");
    let checks = doctor::checks(&d.settings).await;
    let bad = failed(&checks);
    assert_eq!(bad.len(), 1, "{}", report(&checks));
    assert!(
        bad[0]
            .name
            .contains(&t.subscription_id(ConsumerKind::Merge))
            && bad[0]
                .detail
                .contains("enable_message_ordering: is false, should be true")
            && bad[0]
                .detail
                .contains("ack_deadline_seconds: is 20, should be 60"),
        "{}",
        report(&checks)
    );
    assert_eq!(doctor::run(d.settings.clone()).await.expect("doctor"), 1);
}

#[tokio::test]
async fn doctor_fails_when_the_schema_is_not_migrated() {
    let Some(d) = deployment(Db::Sqlite, true, false).await else {
        return;
    };
    let checks = doctor::checks(&d.settings).await;
    let names: Vec<&str> = failed(&checks).iter().map(|c| c.name.as_str()).collect();
    assert!(
        names.contains(&"database: migrations applied")
            && names.contains(&"database: write and roll back"),
        "{}",
        report(&checks)
    );
    let migrations = checks
        .iter()
        .find(|c| c.name == "database: migrations applied")
        .expect("a migrations check");
    assert!(
        migrations.detail.contains("event-backbone migrate"),
        "{migrations}"
    );
}

/// With the shipped grants the runtime user is denied UPDATE/DELETE on the
/// ledger before any trigger runs, and doctor says so.
#[tokio::test]
async fn doctor_reports_the_runtime_users_grants_mariadb() {
    let Some(d) = deployment(Db::Mariadb, true, true).await else {
        return;
    };
    let db = d.db_name().to_string();
    let user = apply_shipped_grants(&db).await;
    let snap_url = d.settings.snapshots.url.clone();
    let worker = settings(
        &d.settings.pubsub.project_id,
        &mariadb_url_as(&user, "pw", &db),
        &[("BACKBONE__SNAPSHOTS__URL", &snap_url)],
    );
    let checks = doctor::checks(&worker).await;
    assert!(failed(&checks).is_empty(), "{}", report(&checks));
    let ledger = checks
        .iter()
        .find(|c| c.name == "database: ledger refuses UPDATE/DELETE")
        .expect("a ledger check");
    assert!(
        ledger.detail.contains("denied to this user by its grants"),
        "{ledger}"
    );
    drop_user(&user).await;
}

/// Run against a live daemon, doctor leaves nothing behind: its raw-topic
/// probe is acked unrecorded by the merge stage (no dead letter, no audit
/// row) and its database probes are rolled back.
#[tokio::test]
async fn doctor_leaves_no_trace_on_a_running_daemon() {
    let Some(mut d) = deployment(Db::Sqlite, true, true).await else {
        return;
    };
    d.start().await;
    let checks = doctor::checks(&d.settings).await;
    assert!(failed(&checks).is_empty(), "{}", report(&checks));
    let store = d.store.clone();
    // Give the merge consumer time to receive and ack the probe.
    let probe_seen = eventually(std::time::Duration::from_secs(10), || async {
        backbone::metrics::metrics().render().lines().any(|l| {
            l.starts_with("backbone_messages_processed_total") && l.contains("outcome=\"probe\"")
        })
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for table in ["events", "event_audit_log", "dead_letters", "outbox"] {
        assert_eq!(
            count(&store, &format!("SELECT COUNT(*) FROM {table}")).await,
            0,
            "{table} must stay empty"
        );
    }
    assert!(
        probe_seen,
        "the merge consumer should ack the probe as `probe`"
    );
    d.stop().await;
}

/// A wrong Pub/Sub port and a wrong database port: doctor says "connection
/// refused" at once for each, naming host:port, reports what depends on them
/// as skipped and counts them, and is done in seconds (it used to print
/// seven "no answer within 30 s" and take 3 min 30 s).
#[tokio::test]
async fn doctor_with_wrong_ports_fails_fast_naming_host_port_and_counting_skips() {
    let (pubsub_port, db_port) = (free_port(), free_port());
    let pubsub = format!("127.0.0.1:{pubsub_port}");
    let db = format!("127.0.0.1:{db_port}");
    let snaps = tempfile::tempdir().expect("tempdir");
    let snap_url = format!("file://{}", snaps.path().display());
    let settings = settings(
        "doctor-wrong-ports",
        &format!("mysql://root@{db}/event_backbone"),
        &[
            ("PUBSUB_EMULATOR_HOST", pubsub.as_str()),
            ("BACKBONE__SNAPSHOTS__URL", snap_url.as_str()),
        ],
    );
    let started = std::time::Instant::now();
    let checks = doctor::checks(&settings).await;
    let took = started.elapsed();
    let text = report(&checks);
    println!(
        "{text}\n{}\ndoctor took {:.2} s",
        doctor::summary(&checks),
        took.as_secs_f64()
    );
    assert!(
        took < std::time::Duration::from_secs(10),
        "took {took:?}\n{text}"
    );
    let by_name = |n: &str| {
        checks
            .iter()
            .find(|c| c.name == n)
            .unwrap_or_else(|| panic!("no check {n} in\n{text}"))
    };
    for (name, addr) in [("pubsub: connect", &pubsub), ("database: connect", &db)] {
        let c = by_name(name);
        assert_eq!(c.status, Status::Fail, "{c}");
        assert_eq!(&c.at, addr, "{c}");
        assert!(
            c.detail.contains(&format!("{addr}: connection refused")),
            "{c}"
        );
    }
    for c in &checks {
        assert!(!c.at.is_empty(), "a check without its host:port: {c}");
    }
    let skipped: Vec<&Check> = checks
        .iter()
        .filter(|c| c.status == Status::Skipped)
        .collect();
    // Topics, round trip, 3 subscriptions; migrations, write, ledger.
    assert_eq!(skipped.len(), 8, "{text}");
    assert!(by_name("database: write and roll back")
        .detail
        .contains("`database: connect` failed"));
    assert_eq!(
        doctor::summary(&checks),
        format!("2 failed, 8 skipped of {} checks.", checks.len())
    );
    assert_eq!(checks.len(), 11, "{text}");
}
