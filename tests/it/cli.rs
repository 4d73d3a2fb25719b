//! The binary's contract: exit 2 and the key's name on invalid
//! configuration or usage, `--help` on every subcommand.

use std::process::Command;

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_event-backbone"));
    cmd.args(args).env("BACKBONE_ENV", "local");
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
        "bench",
        "demo",
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
