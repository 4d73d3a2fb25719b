//! The binary's contract: exit 2 and the key's name on invalid
//! configuration or usage, `--help` on every subcommand.

use std::process::Command;

/// `event-backbone <args>`, or `backbone-bench <rest>` for `bench <rest>`.
fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = match args {
        ["bench", rest @ ..] => {
            let mut c = crate::support::bench_command();
            c.args(rest);
            c
        }
        _ => {
            let mut c = Command::new(env!("CARGO_BIN_EXE_event-backbone"));
            c.args(args);
            c
        }
    };
    cmd.env("BACKBONE_ENV", "local");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run event-backbone");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn cli_invalid_configuration_exits_2_naming_the_key() {
    for (var, val, key) in [
        ("BACKBONE__DATABASE__URL", "postgres://x", "database.url"),
        (
            "BACKBONE__RETRY__INITIAL_BACKOFF",
            "soon",
            "retry.initial_backoff",
        ),
        ("BACKBONE__PUBSUB__PROJECT_ID", "X", "pubsub.project_id"),
        ("BACKBONE_ENV", "staging", "env"),
    ] {
        let (code, text) = run(&["check-config"], &[(var, val)]);
        assert_eq!(code, 2, "{var}={val}: {text}");
        assert!(text.contains(key), "{var}={val}: {text}");
    }
}

#[test]
fn cli_bad_usage_exits_2_and_every_subcommand_has_help() {
    assert_eq!(run(&["no-such-command"], &[]).0, 2);
    for sub in [
        "run",
        "provision",
        "migrate",
        "publish",
        "check-config",
        "doctor",
        "dlq",
        "events",
        "verify",
        "explain",
        "demo",
        "bench",
    ] {
        let (code, text) = run(&[sub, "--help"], &[]);
        assert_eq!(code, 0, "{sub} --help: {text}");
        assert!(text.contains("Usage"), "{sub} --help: {text}");
    }
}

#[test]
fn cli_check_config_redacts_secrets() {
    let (code, text) = run(
        &["check-config"],
        &[
            (
                "BACKBONE__DATABASE__URL",
                "mysql://sync_worker:hunter2@127.0.0.1:3306/eb",
            ),
            ("BACKBONE__HTTP__ADMIN_TOKEN", "admin-secret-xyz"),
        ],
    );
    assert_eq!(code, 0, "{text}");
    assert!(
        !text.contains("hunter2") && !text.contains("admin-secret-xyz"),
        "{text}"
    );
    assert!(text.contains("events.raw.local-merge-sub"), "{text}");
}

#[test]
fn cli_misspelt_env_var_exits_2_naming_it_and_the_closest_key() {
    for cmd in [&["check-config"][..], &["run"], &["dlq", "list"]] {
        let (code, text) = run(cmd, &[("BACKBONE__RETRY__MAX_ATEMPTS", "3")]);
        assert_eq!(code, 2, "{cmd:?}: {text}");
        assert_eq!(
            text.trim_end(),
            "error: unknown configuration key `retry.max_atempts` (environment variable \
             BACKBONE__RETRY__MAX_ATEMPTS); did you mean `retry.max_attempts` \
             (BACKBONE__RETRY__MAX_ATTEMPTS)?",
            "{cmd:?}"
        );
    }
}

#[test]
fn cli_misspelt_key_in_a_config_file_exits_2_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("local.toml");
    std::fs::write(&file, "[retry]\nmax_atempts = 3\n").unwrap();
    let dir_str = dir.path().to_str().unwrap();
    for cmd in [&["check-config"][..], &["run"]] {
        let (code, text) = run(cmd, &[("BACKBONE_CONFIG_DIR", dir_str)]);
        assert_eq!(code, 2, "{cmd:?}: {text}");
        assert_eq!(
            text.trim_end(),
            format!(
                "error: unknown configuration key `retry.max_atempts` (file {}); \
                 did you mean `retry.max_attempts`?",
                file.display()
            ),
            "{cmd:?}"
        );
    }
    // The correct spelling loads.
    std::fs::write(&file, "[retry]\nmax_attempts = 3\n").unwrap();
    let (code, text) = run(&["check-config"], &[("BACKBONE_CONFIG_DIR", dir_str)]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("\"max_attempts\": 3"), "{text}");
}

#[test]
fn cli_enumerated_flags_reject_typos_listing_the_values() {
    for (args, valid) in [
        (
            &["dlq", "list", "--stage", "deliver.netsuit"][..],
            &["merge", "deliver.netsuite", "deliver.suitex"][..],
        ),
        (
            &["dlq", "replay", "--dry-run", "--reason", "exausted"],
            &["invalid", "permanent", "exhausted", "gap"],
        ),
        (
            &[
                "events",
                "list",
                "--record-type",
                "project",
                "--record-id",
                "1",
                "--source",
                "suitx",
            ],
            &["suitex", "netsuite"],
        ),
        (
            &["bench", "merge", "--e2e-db", "postgres"],
            &["mysql", "sqlite"],
        ),
    ] {
        let (code, text) = run(args, &[]);
        assert_eq!(code, 2, "{args:?}: {text}");
        assert!(text.contains("invalid value"), "{args:?}: {text}");
        for v in valid {
            assert!(text.contains(v), "{args:?} does not list {v}: {text}");
        }
    }
    // The help lists them too.
    let (code, text) = run(&["dlq", "list", "--help"], &[]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("deliver.netsuite") && text.contains("exhausted"),
        "{text}"
    );
}

/// `bench history` writes a million immutable rows: it refuses a database
/// that already holds other events unless told to.
#[tokio::test]
async fn cli_bench_history_refuses_a_database_with_other_events() {
    use backbone::store::{ledger, Store};

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/bench.db?mode=rwc", dir.path().display());
    let store = Store::connect(&url, 1, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let mut conn = store.pool().acquire().await.unwrap();
    ledger::insert_events(
        &mut conn,
        store.dialect(),
        &[ledger::EventRow {
            id: "0192f0a0-0000-7000-8000-000000000001".into(),
            record_type: "project".into(),
            record_id: "42".into(),
            source: "suitex".into(),
            timestamp: chrono::Utc::now(),
            base_version: 0,
            changes: r#"{"status":"open"}"#.into(),
            full_snapshot_ref: None,
            processed: true,
            sequence_num: 1,
        }],
    )
    .await
    .unwrap();
    drop(conn);
    let bench_rows = async |store: &Store| {
        let mut c = store.pool().acquire().await.unwrap();
        ledger::count_events_of_type(&mut c, "bench_history")
            .await
            .unwrap()
    };

    let env = [
        ("BACKBONE__DATABASE__URL", url.as_str()),
        ("BACKBONE__LOG__LEVEL", "warn"),
    ];
    let small = [
        "bench",
        "history",
        "--events",
        "40",
        "--records",
        "4",
        "--samples",
        "4",
    ];
    let (code, text) = run(&small, &env);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("already holds other events")
            && text.contains("`project`")
            && text.contains("--allow-existing-data"),
        "{text}"
    );
    assert_eq!(bench_rows(&store).await, 0, "nothing was loaded");

    let (code, text) = run(&[&small[..], &["--allow-existing-data"]].concat(), &env);
    assert_eq!(code, 0, "{text}");
    assert_eq!(bench_rows(&store).await, 40);
    store.close().await;
}
