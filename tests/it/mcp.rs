//! The event store over MCP (issue 22), driven by the official MCP Python
//! SDK (tests/it/mcp_client.py, PyPI `mcp` in target/services/venv, put
//! there by scripts/tools.sh) against the real binary: `event-backbone run`
//! serving `/mcp` on its admin listener, and `event-backbone mcp` on stdio,
//! on docs/spec.md §5 worked example plus one parked dead letter.
//!
//! Every tool is called over both transports with the write switches on;
//! a stdio server with them off shows the write tools hidden and refused.
//! Without the SDK the test skips (printing why), except under CI=true.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::deliver::{audit_count, Sink, NS, SX, WAIT};
use crate::support::*;

const TOKEN: &str = "mcp-test-token";

fn client_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/mcp_client.py")
}

/// The venv's Python when it has the SDK; None (after saying why) when
/// not, which fails under CI.
fn python_with_sdk() -> Option<PathBuf> {
    let py = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/services/venv/bin/python");
    let ok = Command::new(&py)
        .args(["-c", "import mcp.client, httpx2, jsonschema"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(py);
    }
    let why = format!(
        "the MCP Python SDK is not installed in {} (run scripts/tools.sh)",
        py.display()
    );
    if std::env::var("CI").is_ok() {
        panic!("{why}; CI must run the MCP test");
    }
    eprintln!("skipping: {why}");
    None
}

/// Runs the client script; panics with its output unless it passed.
fn run_client(py: &PathBuf, args: &[&str], env: &[(&str, &str)], label: &str) {
    let out = Command::new(py)
        .arg(client_script())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run the MCP client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let checks = stdout.lines().filter(|l| l.contains("\"check\"")).count();
    println!("--- {label}: {checks} checks ---");
    assert!(
        out.status.success() && stdout.contains("\"ok\": true, \"transport\""),
        "{label} failed\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
}

async fn over_both_transports(db: Db) {
    let Some(py) = python_with_sdk() else {
        return;
    };
    let sink = Sink::start().await;
    let writes = [
        ("BACKBONE__MCP__ALLOW_EMIT", "true"),
        ("BACKBONE__MCP__ALLOW_REPLAY", "true"),
        ("BACKBONE__MCP__ALLOW_DISCARD", "true"),
        ("BACKBONE__MCP__ALLOW_PAUSE", "true"),
        ("BACKBONE__MCP__ALLOW_RESYNC", "true"),
    ];
    let overrides = Overrides::new()
        .targets(&sink.url(NS), &sink.url(SX))
        .local_snapshots()
        .admin(TOKEN)
        .vars(&writes);
    let Some(app) = TestApp::prepare(db, overrides).await else {
        return;
    };
    app.provision().await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let log = tempfile::NamedTempFile::new().expect("daemon log");
    let _daemon = ChildDaemon::spawn(
        app.daemon_command(&[
            ("BACKBONE__HTTP__METRICS_ADDR", metrics.as_str()),
            ("BACKBONE__LOG__LEVEL", "warn"),
        ])
        .stdout(Stdio::null())
        .stderr(log.reopen().expect("log file")),
    );
    let http = reqwest::Client::new();
    let ready = eventually(Duration::from_secs(60), || async {
        http.get(format!("http://{metrics}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(
        ready,
        "the daemon never became ready:\n{}",
        std::fs::read_to_string(log.path()).unwrap_or_default()
    );

    // docs/spec.md §5: project 42 at v7, then suitex's stale change.
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
    // And one dead letter: an unknown source is `invalid`.
    publish_raw(
        &p,
        &raw_event(
            "sap",
            "project",
            "42",
            8,
            "2026-03-13T11:00:00Z",
            json!({"a": 1}),
        ),
    )
    .await;
    assert!(sink.wait_version(SX, 8, WAIT).await, "suitex at version 8");
    let settled = eventually(WAIT, || async {
        audit_count(store, "deliver.suitex", "delivered").await as usize == sink.requests(SX).len()
            && audit_count(store, "deliver.netsuite", "delivered").await == 1
            && store.pending_dead_letters().await.unwrap_or(0) == 1
    })
    .await;
    assert!(settled, "every delivery audited and the dead letter parked");

    let db_url = app.db_url().to_string();
    let bin = env!("CARGO_BIN_EXE_event-backbone");
    let config_dir = config_dir();
    let project = app.project.clone();
    let emulator = emulator_host();
    let stdio_env = |writes: bool| -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("BACKBONE_ENV", "local".to_string()),
            ("BACKBONE_CONFIG_DIR", config_dir.display().to_string()),
            ("BACKBONE__DATABASE__URL", db_url.clone()),
            ("BACKBONE__PUBSUB__PROJECT_ID", project.clone()),
            ("PUBSUB_EMULATOR_HOST", emulator.clone()),
            // pipeline_status asks the daemon's /readyz here.
            ("BACKBONE__HTTP__METRICS_ADDR", metrics.clone()),
            ("BACKBONE__LOG__LEVEL", "warn".to_string()),
            ("BACKBONE__TARGETS__NETSUITE__URL", sink.url(NS)),
            ("BACKBONE__TARGETS__SUITEX__URL", sink.url(SX)),
        ];
        if writes {
            v.extend(writes_env());
        }
        v
    };
    let (on, off) = (stdio_env(true), stdio_env(false));
    let env_on: Vec<(&str, &str)> = on.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let env_off: Vec<(&str, &str)> = off.iter().map(|(k, v)| (*k, v.as_str())).collect();

    // stdio, writes on: every tool, a confirmed replay, an emit.
    run_client(
        &py,
        &[
            "stdio",
            "--bin",
            bin,
            "--writes",
            "--confirm-replay",
            "--tag",
            "stdio",
        ],
        &env_on,
        "stdio, writes on",
    );
    // The replayed dead letter (still invalid) is parked again.
    let reparked = eventually(WAIT, || async {
        store.pending_dead_letters().await.unwrap_or(0) == 1
    })
    .await;
    assert!(reparked, "the replayed dead letter was parked again");

    // HTTP on the daemon's admin listener: every tool again, and the 401s.
    let url = format!("http://{}/mcp", app.admin_addr());
    run_client(
        &py,
        &[
            "http", "--url", &url, "--token", TOKEN, "--writes", "--tag", "http",
        ],
        &[],
        "http, writes on",
    );

    // stdio with the default switches: the write tools are neither listed
    // nor callable.
    run_client(
        &py,
        &["stdio", "--bin", bin, "--tag", "off"],
        &env_off,
        "stdio, writes off",
    );

    // Both emits were merged, and audited with their caller.
    for (tag, caller) in [("stdio", "mcp/stdio"), ("http", "mcp/http")] {
        let n = count(
            store,
            &format!(
                "SELECT COUNT(*) FROM event_audit_log WHERE stage = 'mcp' AND processing_outcome = 'emitted' \
                 AND record_id = 'mcp-{tag}' AND detail LIKE '%{caller}%'"
            ),
        )
        .await;
        assert_eq!(n, 1, "the {tag} emit's audit row");
    }
    let replayed = count(
        store,
        "SELECT COUNT(*) FROM event_audit_log WHERE stage = 'mcp' AND processing_outcome = 'dlq_replayed' \
         AND detail LIKE '%mcp/stdio%'",
    )
    .await;
    assert_eq!(replayed, 1, "the confirmed replay's audit row");
    app.stop().await;
}

fn writes_env() -> Vec<(&'static str, String)> {
    vec![
        ("BACKBONE__MCP__ALLOW_EMIT", "true".to_string()),
        ("BACKBONE__MCP__ALLOW_REPLAY", "true".to_string()),
        ("BACKBONE__MCP__ALLOW_DISCARD", "true".to_string()),
        ("BACKBONE__MCP__ALLOW_PAUSE", "true".to_string()),
        ("BACKBONE__MCP__ALLOW_RESYNC", "true".to_string()),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_python_sdk_over_stdio_and_http_sqlite() {
    over_both_transports(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_python_sdk_over_stdio_and_http_mariadb() {
    over_both_transports(Db::Mariadb).await;
}

/// `mcp` and `backbone-bench mcp` parse (clap checks its definitions on first use).
#[test]
fn mcp_commands_have_help() {
    for (mut cmd, args) in [
        (binary("local"), &["mcp", "--help"][..]),
        (bench_command(), &["mcp", "--help"]),
    ] {
        let out = cmd.args(args).output().expect("run");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("Usage"),
            "{args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
