//! `bench pipeline` end to end on a small backlog (SQLite): the daemon runs
//! as a child process with all five consumers, the run exits 0 and prints
//! its figures. Never asserts on speed.

use serde_json::Value;

use crate::support::*;

#[test]
fn bench_pipeline_small_backlog_on_sqlite_prints_its_figures() {
    let host = emulator_host();
    let bench = |extra: &[&str]| {
        let out = bench_command()
            .args([
                "pipeline",
                "--events",
                "300",
                "--records",
                "20",
                "--database",
                "sqlite",
                "--stall-timeout",
                "60s",
            ])
            .args(extra)
            .env("BACKBONE_ENV", "local")
            .env("BACKBONE_CONFIG_DIR", config_dir())
            .env("PUBSUB_EMULATOR_HOST", &host)
            .env("BACKBONE__LOG__LEVEL", "warn")
            .output()
            .expect("run backbone-bench pipeline");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(0),
            "stdout:\n{stdout}\nstderr:\n{stderr}"
        );
        stdout
    };

    let text = bench(&[]);
    for figure in [
        "events/s",
        "netsuite:",
        "suitex:",
        "raw publish -> delivered p50",
        "p99",
        "peak RSS",
        "ack-only baseline:",
        "ratio (pipeline msg/s / ack-only msg/s):",
        "exactly once",
    ] {
        assert!(text.contains(figure), "missing `{figure}` in:\n{text}");
    }

    let json: Value = serde_json::from_str(&bench(&["--json", "--seed", "7"]))
        .expect("--json prints one JSON document");
    assert_eq!(json["failures"], 0, "{json:#}");
    let events = json["events"].as_u64().expect("events");
    assert_eq!(json["merged_events"].as_u64(), Some(events), "{json:#}");
    assert!(json["raw_messages"].as_u64() >= Some(events), "{json:#}");
    let mut routed = 0;
    for target in ["netsuite", "suitex"] {
        let t = &json["targets"][target];
        // A record's burst may go as one request: at most one per routed
        // merged event, and some when anything was routed.
        assert!(
            t["requests"].as_u64() <= t["expected"].as_u64(),
            "{target}: {json:#}"
        );
        assert_eq!(
            t["requests"].as_u64() > Some(0),
            t["expected"].as_u64() > Some(0),
            "{target}: {json:#}"
        );
        routed += t["expected"].as_u64().expect("expected");
        if t["expected"].as_u64() > Some(0) {
            assert!(
                t["latency_ms_raw_publish_to_delivered"]["p99"].is_number(),
                "{json:#}"
            );
        }
    }
    assert!(routed > 0, "{json:#}");
    for figure in [
        "drain_seconds",
        "drain_events_per_s",
        "pipeline_messages_per_s",
        "ratio",
    ] {
        assert!(
            json[figure].as_f64().is_some_and(|v| v > 0.0),
            "{figure}: {json:#}"
        );
    }
    assert!(
        json["daemon_peak_rss_mib"]
            .as_f64()
            .is_some_and(|v| v > 1.0),
        "{json:#}"
    );
    assert!(
        json["baseline_ack_only"]["messages_per_s"].as_f64() > Some(0.0),
        "{json:#}"
    );
}

/// The NetSuite-like mode on a small stream: bursts published while the
/// daemon runs, NetSuite refusing over its cap with 400
/// `SSS_REQUEST_LIMIT_EXCEEDED` (read as pacing, never a dead letter), and
/// the figures the capacity work is judged by. Fail-closed on P1/P2.
#[test]
fn bench_pipeline_netsuite_like_stream_prints_requests_per_event_and_drain_vs_allowed() {
    let host = emulator_host();
    let out = bench_command()
        .args([
            "pipeline",
            "--netsuite-like",
            // Quicker than NetSuite's 300 ms, a cap low enough to be hit.
            "--target-latency",
            "50ms",
            "--target-concurrency",
            "3",
            "--stream-records-per-s",
            "40",
            "--events",
            "400",
            "--records",
            "40",
            "--database",
            "sqlite",
            "--skip-baseline",
            "--stall-timeout",
            "60s",
            "--json",
        ])
        .env("BACKBONE_ENV", "local")
        .env("BACKBONE_CONFIG_DIR", config_dir())
        .env("PUBSUB_EMULATOR_HOST", &host)
        .env("BACKBONE__LOG__LEVEL", "warn")
        .output()
        .expect("run backbone-bench pipeline --netsuite-like");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let json: Value = serde_json::from_str(&stdout).expect("--json prints one JSON document");
    println!("{json:#}");
    assert_eq!(json["failures"], 0, "{json:#}");
    assert_eq!(json["daemon_dead_letters"].as_f64(), Some(0.0), "{json:#}");
    assert!(json["stream_seconds"].as_f64() > Some(0.5), "{json:#}");
    let ns = &json["targets"]["netsuite"];
    assert!(
        ns["requests"].as_u64() <= ns["expected"].as_u64(),
        "{json:#}"
    );
    for figure in ["drain_vs_allowed", "allowed_seconds", "refused_share"] {
        assert!(ns[figure].is_number(), "{figure}: {json:#}");
    }
    assert!(ns["routed_records"].as_u64() > Some(0), "{json:#}");
}

/// Two replicas on one MariaDB database and the same subscriptions: the
/// drain ends on the stored state (every merged event stored, each stand-in
/// holding every record's merged state), not on one daemon's metrics, and
/// P1/P2 hold across the two. `--kill-one-after` without a second replica
/// is refused before anything starts.
#[tokio::test(flavor = "multi_thread")]
async fn bench_pipeline_two_replicas_share_the_work_and_end_on_the_stored_state() {
    // Only to learn whether MariaDB is here (the bench makes its own database).
    if fresh_db(Db::Mariadb).await.is_none() {
        return;
    }
    let host = emulator_host();
    let bench = |extra: &[&str]| {
        let mut cmd = tokio::process::Command::from(bench_command());
        cmd.args(["pipeline", "--events", "300", "--records", "20"])
            .args(["--mysql-admin-url", &mariadb_admin_url()])
            .args(["--skip-baseline", "--stall-timeout", "60s", "--json"])
            .args(extra)
            .env("BACKBONE_ENV", "local")
            .env("BACKBONE_CONFIG_DIR", config_dir())
            .env("PUBSUB_EMULATOR_HOST", &host)
            .env("BACKBONE__LOG__LEVEL", "warn");
        cmd
    };
    let refused = bench(&["--kill-one-after", "1s"])
        .output()
        .await
        .expect("run backbone-bench pipeline");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_ne!(refused.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("--replicas 2 or more"), "{stderr}");

    let out = bench(&["--replicas", "2"])
        .output()
        .await
        .expect("run backbone-bench pipeline --replicas 2");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let json: Value = serde_json::from_str(&stdout).expect("--json prints one JSON document");
    assert_eq!(json["replicas"], 2, "{json:#}");
    assert_eq!(json["failures"], 0, "{json:#}");
    assert_eq!(
        json["merged_events"].as_u64(),
        json["events"].as_u64(),
        "{json:#}"
    );
    for target in ["netsuite", "suitex"] {
        let t = &json["targets"][target];
        assert_eq!(t["missing"], 0, "{target}: {json:#}");
        assert_eq!(t["doubled"], 0, "{target}: {json:#}");
        assert!(t["requests"].as_u64() > Some(0), "{target}: {json:#}");
    }
}
