//! What a newcomer trips over, caught by the binary itself:
//!
//! - outside `local`, `check-config`, `run` and `doctor` refuse a half-done
//!   configuration (placeholder hosts, targets without credentials, a
//!   database URL without a password), exit 2, naming each key;
//! - a `BACKBONE_…` variable nothing reads is refused with the closest name;
//! - `check-config --explain` says which layer set each value;
//! - a command that reads the store never creates an empty database: it
//!   names the absolute path and says to run `migrate`.

use std::path::Path;
use std::process::{Command, Stdio};

/// The real binary with exactly `env` (plus PATH), from `cwd`.
fn run_in(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_event-backbone"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(cwd)
        .args(args)
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run event-backbone");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, out, err) = run_in(dir.path(), args, env);
    (code, format!("{out}{err}"))
}

#[test]
fn newcomer_outside_local_a_half_done_configuration_is_refused_naming_each_key() {
    for cmd in [&["check-config"][..], &["run"], &["doctor"]] {
        // The shipped sandbox file alone: placeholders, no credentials, no password.
        let (code, text) = run(cmd, &[("BACKBONE_ENV", "sandbox")]);
        assert_eq!(code, 2, "{cmd:?}: {text}");
        for key in [
            "`database.url` (BACKBONE__DATABASE__URL): mysql://sync_worker@127.0.0.1:3306/event_backbone has no password",
            "`targets.netsuite.url` (BACKBONE__TARGETS__NETSUITE__URL): host `1234567-sb1.restlets.api.netsuite.com` is the shipped placeholder",
            "`targets.netsuite.auth.kind` (BACKBONE__TARGETS__NETSUITE__AUTH__KIND): no credentials",
            "`targets.suitex.auth.kind` (BACKBONE__TARGETS__SUITEX__AUTH__KIND): no credentials",
        ] {
            assert!(text.contains(key), "{cmd:?}: missing {key} in\n{text}");
        }
        assert!(!text.contains("ready"), "{cmd:?}: {text}");
    }
    // A reserved example host is a placeholder too, and production is as strict.
    let complete = [
        ("BACKBONE_ENV", "production"),
        (
            "BACKBONE__DATABASE__URL",
            "mysql://sync_worker:s3cret@127.0.0.1:3306/event_backbone",
        ),
        (
            "BACKBONE__TARGETS__NETSUITE__URL",
            "https://7654321.restlets.api.netsuite.com/app/site/hosting/restlet.nl?script=1&deploy=1",
        ),
        ("BACKBONE__TARGETS__NETSUITE__TOKEN", "ns"),
        ("BACKBONE__TARGETS__SUITEX__TOKEN", "sx"),
    ];
    let (code, text) = run(&["check-config"], &complete);
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("s3cret"), "{text}");
    let mut placeholder = complete.to_vec();
    placeholder.push((
        "BACKBONE__TARGETS__SUITEX__URL",
        "https://hooks.example.com/sync",
    ));
    let (code, text) = run(&["check-config"], &placeholder);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("`targets.suitex.url` (BACKBONE__TARGETS__SUITEX__URL): host `hooks.example.com` is a placeholder"),
        "{text}"
    );
    // --lenient checks only the shape; `local` is lenient.
    let (code, text) = run(
        &["check-config", "--lenient"],
        &[("BACKBONE_ENV", "sandbox")],
    );
    assert_eq!(code, 0, "{text}");
    let (code, text) = run(
        &["check-config"],
        &[
            ("BACKBONE__DATABASE__URL", "mysql://root@127.0.0.1:3306/x"),
            ("BACKBONE__CONSUMERS__SUITEX__ENABLED", "true"),
            ("BACKBONE__TARGETS__SUITEX__URL", "http://127.0.0.1:1/hook"),
        ],
    );
    assert_eq!(code, 0, "{text}");
}

#[test]
fn newcomer_unknown_backbone_variables_are_refused_with_the_closest_name() {
    for cmd in [&["check-config"][..], &["run"], &["dlq", "list"]] {
        let (code, text) = run(cmd, &[("BACKBONE_EVN", "sandbox")]);
        assert_eq!(code, 2, "{cmd:?}: {text}");
        assert_eq!(
            text.trim_end(),
            "error: unknown variable BACKBONE_EVN; did you mean BACKBONE_ENV?",
            "{cmd:?}"
        );
        let (code, text) = run(
            cmd,
            &[("BACKBONE_DATABASE__URL", "mysql://u:p@127.0.0.1:3306/x")],
        );
        assert_eq!(code, 2, "{cmd:?}: {text}");
        assert_eq!(
            text.trim_end(),
            "error: unknown variable BACKBONE_DATABASE__URL; did you mean BACKBONE__DATABASE__URL?",
            "{cmd:?}"
        );
    }
    // What the project's scripts and tests set is not refused.
    let (code, text) = run(
        &["check-config"],
        &[
            ("BACKBONE_ENV", "local"),
            ("BACKBONE_TEST_PID_DIR", "/tmp/x"),
            ("BACKBONE_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306"),
            ("BACKBONE_BENCH_DLQ_ROWS", "10"),
        ],
    );
    assert_eq!(code, 0, "{text}");
}

#[test]
fn newcomer_check_config_explain_names_the_layer_of_each_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("local.toml"), "[log]\nlevel = \"debug\"\n").unwrap();
    let config_dir = dir.path().to_str().unwrap();
    let (code, text) = run(
        &["check-config", "--explain"],
        &[
            ("BACKBONE_CONFIG_DIR", config_dir),
            ("BACKBONE__RETRY__MAX_ATTEMPTS", "3"),
            ("BACKBONE__HTTP__ADMIN_TOKEN", "admin-secret-xyz"),
            (
                "BACKBONE__DATABASE__URL",
                "mysql://u:hunter2@127.0.0.1:3306/x",
            ),
            ("BACKBONE__CONSUMERS__SUITEX__ENABLED", "true"),
            ("BACKBONE__TARGETS__SUITEX__URL", "http://127.0.0.1:1/hook"),
            ("BACKBONE__TARGETS__SUITEX__AUTH__KIND", "hmac_sha256"),
            (
                "BACKBONE__TARGETS__SUITEX__AUTH__SECRET_FILE",
                "/run/secrets/sx",
            ),
        ],
    );
    assert_eq!(code, 0, "{text}");
    assert!(
        !text.contains("hunter2") && !text.contains("admin-secret-xyz"),
        "{text}"
    );
    let line = |key: &str| -> String {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("no line for {key} in\n{text}"))
            .to_owned()
    };
    let expect = |key: &str, parts: &[&str]| {
        let l = line(key);
        for p in parts {
            assert!(l.contains(p), "{key}: `{p}` not in `{l}`");
        }
    };
    expect("env", &["\"local\"", "built-in default"]);
    expect(
        "retry.max_attempts",
        &["3", "environment variable BACKBONE__RETRY__MAX_ATTEMPTS"],
    );
    expect(
        "retry.initial_backoff",
        &["\"10s\"", "built-in file config/default.toml"],
    );
    expect(
        "log.level",
        &[
            "\"debug\"",
            &format!("file {}", dir.path().join("local.toml").display()),
        ],
    );
    expect(
        "log.format",
        &["\"text\"", "built-in file config/local.toml"],
    );
    expect(
        "http.admin_token",
        &["[redacted]", "BACKBONE__HTTP__ADMIN_TOKEN"],
    );
    expect(
        "database.url",
        &["mysql://u:***@127.0.0.1:3306/x", "BACKBONE__DATABASE__URL"],
    );
    expect(
        "targets.suitex.auth.secret",
        &[
            "[redacted]",
            "a `_file` secret",
            "/run/secrets/sx",
            "BACKBONE__TARGETS__SUITEX__AUTH__SECRET_FILE",
        ],
    );
    expect("targets.suitex.token", &["null", "unset"]);
}

#[test]
fn newcomer_readers_never_create_the_database() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let db = cwd.path().join("data/event-backbone.db");
    let readers: [&[&str]; 6] = [
        &["dlq", "list"],
        &[
            "events",
            "list",
            "--record-type",
            "project",
            "--record-id",
            "1",
        ],
        &["explain", "--record-type", "project", "--record-id", "1"],
        &["verify"],
        &["archive", "list"],
        &["mcp"],
    ];
    for args in readers {
        let (code, out, err) = run_in(cwd.path(), args, &[]);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(
            err.contains(&format!(
                "the database file {} does not exist",
                db.display()
            )) && err.contains("event-backbone migrate"),
            "{args:?}: {err}"
        );
        assert!(!db.exists(), "{args:?} created {}", db.display());
        assert!(!db.parent().unwrap().exists(), "{args:?} created data/");
    }
    // An existing file without the schema (as an older release left it).
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    std::fs::write(&db, b"").unwrap();
    let (code, _, err) = run_in(cwd.path(), &["dlq", "list"], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "schema missing in {}: run `event-backbone migrate`",
            db.display()
        )),
        "{err}"
    );
    // `migrate` creates it; then the readers work.
    std::fs::remove_dir_all(db.parent().unwrap()).unwrap();
    let (code, out, err) = run_in(cwd.path(), &["migrate"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(db.is_file());
    let (code, out, err) = run_in(cwd.path(), &["dlq", "list"], &[]);
    assert_eq!(code, 0, "{out}{err}");
}
