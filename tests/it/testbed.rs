//! The test bed itself: what the daemon keeps open in Pub/Sub across consumer
//! restarts, and what the emulator gives back when a project is removed.

use std::time::Duration;

use backbone::metrics::metrics;
use backbone::topology::ConsumerKind;

use crate::support::*;

/// Streaming pulls the daemon holds open for `label`.
fn open_streams(label: &str) -> i64 {
    metrics()
        .pubsub_streams_open
        .with_label_values(&[label])
        .get()
}

/// Killing a consumer again and again (aborted as a crash would end it)
/// leaves one open stream per consumer, by the daemon's own count
/// (`backbone_pubsub_streams_open`), and none after shutdown. A stream the
/// daemon dropped without closing would also show in the emulator: it keeps
/// an ordered subscription's keys bound to a stream it thinks open, so the
/// restarted consumer would never see the record published at the end.
#[tokio::test]
async fn consumer_restarts_keep_one_open_stream_per_consumer() {
    // The supervisor's backoff doubles from 0.5 s: five restarts take ~16 s.
    const RESTARTS: usize = 5;
    let d = TestApp::spawn(Db::Sqlite, Overrides::new())
        .await
        .expect("sqlite");
    let merge = d.topology.subscription_id(ConsumerKind::Merge);
    let labels: Vec<String> = d.health().snapshot().keys().cloned().collect();
    let total = || labels.iter().map(|l| open_streams(l)).sum::<i64>();
    let consumers = i64::try_from(labels.len()).expect("a few consumers");
    assert!(consumers >= 2, "consumers: {labels:?}");
    assert!(
        eventually(Duration::from_secs(10), || async { total() == consumers }).await,
        "{} streams open for {consumers} consumers before any restart",
        total()
    );

    for i in 1..=RESTARTS {
        assert!(
            d.health().kill_consumer(&merge),
            "no merge consumer to kill"
        );
        let down = eventually(Duration::from_secs(5), || async {
            d.health().snapshot().get(&merge).is_some_and(|c| !c.up)
        })
        .await;
        assert!(
            down,
            "restart {i}: the killed consumer was never reported down"
        );
        let up = eventually(Duration::from_secs(30), || async {
            d.health().snapshot().get(&merge).is_some_and(|c| c.up)
        })
        .await;
        assert!(up, "restart {i}: the merge consumer never came back");
        assert!(
            eventually(Duration::from_secs(5), || async { total() == consumers }).await,
            "after restart {i}: {} streams open for {consumers} consumers (merge: {})",
            total(),
            open_streams(&merge)
        );
    }
    assert_eq!(open_streams(&merge), 1, "after {RESTARTS} restarts");

    // The emulator agrees: the latest stream is the one it delivers to.
    let p = publishers(&d.topology).await;
    publish_raw(
        &p,
        &raw_event(
            "suitex",
            "customer",
            "restarted",
            0,
            "2026-03-13T10:00:00Z",
            serde_json::json!({"name": "after the restarts"}),
        ),
    )
    .await;
    let store = d.store.clone();
    let merged = eventually(Duration::from_secs(30), || async {
        count(&store, "SELECT COUNT(*) FROM merged_events").await == 1
    })
    .await;
    assert!(
        merged,
        "a record published after {RESTARTS} restarts was never merged: the emulator still \
         delivers to a stream the daemon no longer reads"
    );

    d.stop().await;
    assert_eq!(total(), 0, "streams left open after the daemon stopped");
}

/// Threads of process `pid` now.
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// `scripts/services.sh ACTION` for an emulator on `port` alone.
fn services_sh(action: &str, port: u16) -> String {
    let out = std::process::Command::new(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services.sh"),
    )
    .args([action, "--pubsub-port", &port.to_string()])
    .env("NO_FAKE_GCS", "1")
    .stdin(std::process::Stdio::null())
    .output()
    .expect("run scripts/services.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "services.sh {action}: {text}");
    text
}

/// An emulator of the test's own, stopped (by its pid file) when dropped.
struct OwnEmulator {
    port: u16,
}

impl Drop for OwnEmulator {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| services_sh("stop", self.port));
    }
}

/// The emulator as `scripts/services.sh` starts it gives back what a
/// removed project held: an ordered subscription keeps a thread per
/// ordering key, which the packaged jar (0.8.20) never stops, so every
/// test and bench left thousands behind; with the checkout's patch they go
/// with the subscription. Then `services.sh stop` stops it by its pid.
#[tokio::test]
async fn services_sh_emulator_frees_the_threads_of_a_removed_project() {
    use backbone::pubsub::clients::Endpoint;
    use backbone::pubsub::provision::{provision, remove_project};
    use backbone::pubsub::publisher::Publishers;
    use backbone::topology::{Env, TopicKind, Topology};

    const KEYS: usize = 300;
    let emulator = std::path::Path::new(
        "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator",
    );
    let javac = std::process::Command::new("javac")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !(emulator.exists() || std::env::var_os("PUBSUB_EMULATOR_BIN").is_some()) || !javac {
        let why = "the packaged Pub/Sub emulator and javac are needed to patch it";
        assert!(std::env::var("CI").is_err(), "{why}");
        println!("skipped: {why}");
        return;
    }
    let port = free_port();
    let started = services_sh("start", port);
    let guard = OwnEmulator { port };
    assert!(
        started.contains("started (pid") && started.contains("ordered-backlog-close"),
        "not started with the ordered-backlog patch:\n{started}"
    );
    let pid_file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("target/services/pids/pubsub-{port}.pid"));
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .expect("services.sh wrote a pid file")
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a pid");

    let ep = Endpoint::from_emulator_host(Some(&format!("127.0.0.1:{port}")));
    let topology = Topology::new(Env::Local, unique_project());
    provision(&topology, &ep).await.expect("provision");
    let before = threads(pid);
    let p = Publishers::new(topology.clone(), &ep)
        .await
        .expect("publishers");
    for k in 0..KEYS {
        p.publish_to(
            TopicKind::Raw,
            bytes::Bytes::from_static(b"{}"),
            Default::default(),
            &format!("customer:{k}"),
        )
        .await
        .expect("publish");
    }
    p.flush().await;
    drop(p);
    let published = threads(pid);
    println!(
        "emulator threads: {before} after provisioning, {published} after {KEYS} ordering keys"
    );
    assert!(
        published >= before + KEYS,
        "{KEYS} ordering keys on the ordered merge subscription made {before} -> {published} threads: \
         the emulator no longer keeps a thread per key, and this test measures nothing"
    );

    let removed = remove_project(&topology.project_id, &ep)
        .await
        .expect("remove the project");
    assert_eq!((removed.topics, removed.subscriptions), (4, 5));
    let back = eventually(Duration::from_secs(10), || async {
        threads(pid) <= before + 20
    })
    .await;
    println!(
        "emulator threads after removing the project: {}",
        threads(pid)
    );
    assert!(
        back,
        "{} threads after removing the project ({before} before its {KEYS} keys): the ordered \
         subscription's per-key threads outlived it",
        threads(pid)
    );

    let stopped = services_sh("stop", port);
    assert!(
        stopped.contains(&format!("stopped (pid {pid})")),
        "{stopped}"
    );
    assert!(!alive(pid), "pid {pid} still runs after services.sh stop");
    assert!(!pid_file.exists(), "the pid file outlived the emulator");
    drop(guard);
}

/// The process runs (a zombie only waits for its parent to reap it).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z'))
}

/// The daemon's text log carries no colour codes when stderr is a file
/// (or a pipe, as under a process manager); colour is for a terminal.
#[tokio::test]
async fn daemon_log_redirected_to_a_file_has_no_colour_codes() {
    let db = fresh_db(Db::Sqlite).await.expect("sqlite");
    let log = tempfile::NamedTempFile::new().expect("log file");
    let mut cmd = daemon_command(&unique_project(), &db.url, &[]);
    cmd.stdout(std::process::Stdio::null())
        .stderr(log.reopen().expect("log handle"))
        .env_remove("NO_COLOR");
    let daemon = ChildDaemon::spawn(&mut cmd);
    let running = eventually(Duration::from_secs(30), || async {
        std::fs::read_to_string(log.path()).is_ok_and(|t| t.contains("event-backbone is running"))
    })
    .await;
    drop(daemon);
    let text = std::fs::read_to_string(log.path()).unwrap_or_default();
    assert!(running, "the daemon never said it runs:\n{text}");
    assert!(text.contains(" INFO "), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log written to a file:\n{}",
        text.escape_debug()
    );
}
