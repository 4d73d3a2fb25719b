//! The alert rules of docs/operations.md as a Prometheus rules file
//! (`docs/alerts/event-backbone.rules.yml`): `promtool check rules` and
//! `promtool test rules` pass (promtool: Debian's `prometheus` package,
//! installed by scripts/tools.sh; required when CI is set), every alert has a
//! case that fires and one that does not, every runbook link lands on a
//! section of docs/operations.md, and its alert table lists the same alerts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn alerts_dir() -> PathBuf {
    root().join("docs/alerts")
}

const RULES: &str = "event-backbone.rules.yml";
const RULE_TESTS: &str = "event-backbone.rules.test.yml";

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every rule of the rules file, across its groups.
fn rules() -> Vec<Value> {
    yaml(&alerts_dir().join(RULES))["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").clone())
        .collect()
}

fn alert_names() -> BTreeSet<String> {
    rules()
        .iter()
        .map(|r| r["alert"].as_str().expect("alerting rules only").to_owned())
        .collect()
}

/// Runs promtool in docs/alerts (the test file names the rules relative to
/// itself) and returns its output, failing the test on a non-zero exit.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(alerts_dir())
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {} failed:\n{text}",
        args.join(" ")
    );
    text
}

fn promtool_available() -> bool {
    Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    if !promtool_available() {
        let why = "promtool is not installed (scripts/tools.sh installs Debian's prometheus package, which ships it)";
        if std::env::var("CI").is_ok() {
            panic!("{why}; CI must run the alert rule tests");
        }
        eprintln!("SKIPPED: {why}.");
        return;
    }
    let check = promtool(&["check", "rules", RULES]);
    println!("{check}");
    assert!(
        check.contains(&format!("SUCCESS: {} rules found", rules().len())),
        "{check}"
    );
    let tests = promtool(&["test", "rules", RULE_TESTS]);
    println!("{tests}");
    assert!(tests.contains("SUCCESS"), "{tests}");
}

/// One promtool test case per alert that fires and one that does not, so a
/// rule that always or never fires cannot pass.
#[test]
fn every_alert_has_a_firing_and_a_silent_test_case() {
    let tests = yaml(&alerts_dir().join(RULE_TESTS));
    assert_eq!(
        tests["rule_files"],
        serde_json::json!([RULES]),
        "the test file must load the rules file"
    );
    let mut fires = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for case in tests["tests"].as_array().expect("tests") {
        for t in case["alert_rule_test"].as_array().expect("alert_rule_test") {
            let name = t["alertname"].as_str().expect("alertname").to_owned();
            match t["exp_alerts"].as_array() {
                Some(a) if a.is_empty() => silent.insert(name),
                Some(_) => fires.insert(name),
                None => panic!("{name}: a case without exp_alerts"),
            };
        }
    }
    let names = alert_names();
    assert_eq!(names.len(), 14, "{names:?}");
    assert_eq!(fires, names, "alerts without a case where they fire");
    assert_eq!(
        silent, names,
        "alerts without a case where they stay silent"
    );
}

/// GitHub's anchor for a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alert_links_to_its_runbook_section_and_is_in_the_alert_table() {
    let ops = std::fs::read_to_string(root().join("docs/operations.md")).expect("operations.md");
    let anchors: BTreeSet<String> = ops
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|h| anchor(h.trim_start_matches('#')))
        .collect();
    for rule in rules() {
        let name = rule["alert"].as_str().unwrap();
        let a = &rule["annotations"];
        for key in ["summary", "description", "runbook_url"] {
            assert!(a[key].is_string(), "{name}: no {key} annotation");
        }
        assert!(
            rule["labels"]["severity"].is_string(),
            "{name}: no severity"
        );
        let url = a["runbook_url"].as_str().unwrap();
        let target = url.strip_prefix("docs/operations.md#").unwrap_or_else(|| {
            panic!("{name}: runbook_url {url} is not a docs/operations.md section")
        });
        assert_eq!(target, name.to_lowercase(), "{name}: its own section");
        assert!(
            anchors.contains(target),
            "{name}: docs/operations.md has no section #{target}"
        );
    }
    // The alert table's first column names each alert, linked to its section.
    let table: BTreeSet<String> = ops
        .lines()
        .filter_map(|l| l.strip_prefix("| [`Backbone"))
        .map(|rest| format!("Backbone{}", rest.split('`').next().unwrap_or_default()))
        .collect();
    assert_eq!(table, alert_names(), "docs/operations.md's alert table");
    assert!(
        ops.contains("(alerts/event-backbone.rules.yml)"),
        "the alert table links to the rules file"
    );
}
