//! The Helm chart (`helm/event-backbone`) read as files, for what Helm's
//! engine cannot say (tests/it/chart_helm.rs renders, lints and validates it
//! with Helm itself): every `.Values` path a template uses exists in
//! `values.yaml` (Helm renders a missing one as empty, even linting
//! strictly) and every key of `values.yaml` is read by a template; pods get
//! more time to stop than the binary's default drain; the chart ships the
//! dashboard and rules of docs/ unchanged; the dashboard queries every
//! signal through its variables; `prometheusRule.exclude` names exactly the
//! alerts of the rules file.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use backbone::config;
use serde_json::Value;

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/event-backbone")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn values() -> Value {
    serde_norway::from_str(&read(&chart_dir().join("values.yaml"))).expect("values.yaml is YAML")
}

fn schema() -> Value {
    serde_json::from_str(&read(&chart_dir().join("values.schema.json"))).expect("schema is JSON")
}

/// Every file under `templates/` (subfolders too: `tests/` holds the
/// `helm test` pod), by its path there.
fn templates() -> Vec<(String, String)> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).expect("templates/ exists") {
            let p = entry.expect("readable dir entry").path();
            if p.is_dir() {
                walk(&p, root, out);
            } else {
                let name = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.push((name, read(&p)));
            }
        }
    }
    let root = chart_dir().join("templates");
    let mut out = Vec::new();
    walk(&root, &root, &mut out);
    out.sort();
    out
}

/// Walks a dotted path through nested objects; `None` if a segment is missing.
fn lookup<'a>(root: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(root, |v, seg| v.as_object()?.get(seg))
}

// ---------------------------------------------------------------------------
// A small reader for Go-template actions: enough to follow `.Values` through
// variables (`$c := .Values.config`), `with` and `range` blocks and defines.

#[derive(Clone, Debug, PartialEq)]
enum Ctx {
    /// `.` is the chart root: `.Values.x` is a values path.
    Root,
    /// `.` is the values node at this path (inside `with .Values.x`).
    Values(Vec<String>),
    /// `.` is something this reader does not follow (a `range` element).
    Unknown,
}

#[derive(Debug, PartialEq)]
enum Block {
    With,
    Other,
}

/// The text of each `{{ … }}` action, trim markers and comments removed.
fn actions(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let body = after.trim_start_matches('-').trim_start();
        if body.starts_with("/*") {
            let end = after.find("*/").map_or(after.len(), |i| i + 2);
            let close = after[end..].find("}}").map_or(after.len(), |i| end + i + 2);
            rest = &after[close..];
            continue;
        }
        let Some(end) = after.find("}}") else { break };
        let body = after[..end]
            .trim()
            .trim_start_matches('-')
            .trim_end_matches('-');
        out.push(strip_strings(body.trim()));
        rest = &after[end + 2..];
    }
    out
}

/// Drops string literals, whose text ("cloudSqlProxy.instanceConnectionName
/// is required") would otherwise read as field chains.
fn strip_strings(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
                out.push_str("\"\"");
            }
            '`' => {
                for c in chars.by_ref() {
                    if c == '`' {
                        break;
                    }
                }
                out.push_str("\"\"");
            }
            c => out.push(c),
        }
    }
    out
}

/// Field chains in an expression: `.a.b`, `$.a.b`, `$var.a.b` (with their
/// leading `.`/`$`), skipping dots inside numbers and after `)`.
fn chains(expr: &str) -> Vec<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let bytes: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let boundary = i == 0 || !(is_ident(bytes[i - 1]) || ")].$".contains(bytes[i - 1]));
        if (c == '.' || c == '$') && boundary {
            let mut j = i + 1;
            while j < bytes.len() && (is_ident(bytes[j]) || bytes[j] == '.') {
                j += 1;
            }
            out.push(
                bytes[i..j]
                    .iter()
                    .collect::<String>()
                    .trim_end_matches('.')
                    .to_owned(),
            );
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

fn segments(s: &str) -> Vec<String> {
    s.split('.')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The values path a chain names, if it names one.
fn resolve(chain: &str, ctx: &Ctx, vars: &HashMap<String, Ctx>) -> Option<Vec<String>> {
    if let Some(rest) = chain.strip_prefix("$.") {
        let segs = segments(rest);
        return (segs.first()? == "Values").then(|| segs[1..].to_vec());
    }
    if let Some(rest) = chain.strip_prefix('$') {
        let (name, tail) = rest.split_once('.').unwrap_or((rest, ""));
        return match vars.get(name)? {
            Ctx::Values(base) => Some([base.clone(), segments(tail)].concat()),
            _ => None,
        };
    }
    let segs = segments(chain);
    match ctx {
        Ctx::Root if segs.first().is_some_and(|s| s == "Values") => Some(segs[1..].to_vec()),
        Ctx::Values(base) if !segs.is_empty() => Some([base.clone(), segs].concat()),
        _ => None,
    }
}

/// Every `.Values` path one template file reads.
fn value_paths(src: &str) -> BTreeSet<Vec<String>> {
    let mut found = BTreeSet::new();
    let mut vars: HashMap<String, Ctx> = HashMap::new();
    // Each open block with the meaning of `.` inside it.
    let mut stack: Vec<(Block, Ctx)> = Vec::new();
    for action in actions(src) {
        let ctx = stack.last().map_or(Ctx::Root, |(_, c)| c.clone());
        let (keyword, arg) = action
            .split_once(char::is_whitespace)
            .unwrap_or((&action, ""));
        let arg = arg.trim();
        let mut paths_in = |expr: &str, ctx: &Ctx, vars: &HashMap<String, Ctx>| {
            for chain in chains(expr) {
                if let Some(p) = resolve(&chain, ctx, vars) {
                    if !p.is_empty() {
                        found.insert(p);
                    }
                }
            }
        };
        match keyword {
            "end" => {
                stack.pop();
            }
            "define" | "block" => stack.push((Block::Other, Ctx::Root)),
            "if" => {
                paths_in(arg, &ctx, &vars);
                stack.push((Block::Other, ctx));
            }
            "with" => {
                paths_in(arg, &ctx, &vars);
                let inner = match chains(arg).as_slice() {
                    [only] if arg == only => {
                        resolve(only, &ctx, &vars).map_or(Ctx::Unknown, Ctx::Values)
                    }
                    _ => Ctx::Unknown,
                };
                stack.push((Block::With, inner));
            }
            "range" => {
                // `range $k, $v := X`: the element variables are not followed.
                let expr = arg.rsplit_once(":=").map_or(arg, |(lhs, rhs)| {
                    for v in lhs.split(',') {
                        vars.insert(v.trim().trim_start_matches('$').to_owned(), Ctx::Unknown);
                    }
                    rhs
                });
                paths_in(expr, &ctx, &vars);
                stack.push((Block::Other, Ctx::Unknown));
            }
            "else" => {
                // `else` of a `with` runs with the outer `.`.
                let outer = stack
                    .len()
                    .checked_sub(2)
                    .map_or(Ctx::Root, |i| stack[i].1.clone());
                paths_in(arg, &outer, &vars);
                if let Some((Block::With, c)) = stack.last_mut() {
                    *c = outer;
                }
            }
            _ => {
                if let Some((lhs, rhs)) = action.split_once(":=") {
                    let name = lhs.trim().trim_start_matches('$').to_owned();
                    let rhs = rhs.trim();
                    paths_in(rhs, &ctx, &vars);
                    let bound = resolve(rhs, &ctx, &vars)
                        .filter(|_| chains(rhs).len() == 1 && !rhs.contains(' '))
                        .map_or(Ctx::Unknown, Ctx::Values);
                    vars.insert(name, bound);
                } else {
                    paths_in(&action, &ctx, &vars);
                }
            }
        }
    }
    found
}

fn all_value_paths() -> BTreeSet<Vec<String>> {
    templates()
        .iter()
        .flat_map(|(_, src)| value_paths(src))
        .collect()
}

#[test]
fn template_reader_follows_variables_and_with_blocks() {
    let src = r#"{{- $c := .Values.config -}}
{{ $c.pubsub.project_id | quote }}
{{- with .Values.secrets.adminToken }}{{ .name }}{{ $.Values.ports.admin }}{{ else }}{{ .Values.env }}{{ end }}
{{- range .Values.extraEnv }}{{ .name }}{{ end }}
{{/* .Values.in.a.comment */}}
{{ required "cloudSqlProxy.instanceConnectionName is required" .Values.cloudSqlProxy.enabled }}
{{ include "x" . | nindent 4 }}{{ .Release.Name }}"#;
    let got: Vec<String> = value_paths(src).into_iter().map(|p| p.join(".")).collect();
    assert_eq!(
        got,
        [
            "cloudSqlProxy.enabled",
            "config",
            "config.pubsub.project_id",
            "env",
            "extraEnv",
            "ports.admin",
            "secrets.adminToken",
            "secrets.adminToken.name",
        ]
    );
}

// ---------------------------------------------------------------------------
// (a) template paths ↔ values.yaml

#[test]
fn every_values_path_in_the_chart_templates_exists_in_values_yaml() {
    let values = values();
    let mut missing = Vec::new();
    let mut count = 0;
    for (file, src) in templates() {
        for path in value_paths(&src) {
            count += 1;
            if lookup(&values, &path).is_none() {
                missing.push(format!("{file}: .Values.{}", path.join(".")));
            }
        }
    }
    // Guards against the reader silently finding nothing.
    assert!(
        count > 80,
        "only {count} .Values paths found in the templates"
    );
    assert!(
        missing.is_empty(),
        "used in templates but not in values.yaml:\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_key_in_chart_values_yaml_is_read_by_a_template() {
    fn leaves(v: &Value, path: Vec<String>, out: &mut Vec<Vec<String>>) {
        match v.as_object() {
            Some(map) if !map.is_empty() => {
                for (k, child) in map {
                    leaves(child, [path.clone(), vec![k.clone()]].concat(), out);
                }
            }
            _ => out.push(path),
        }
    }
    let mut all = Vec::new();
    leaves(&values(), Vec::new(), &mut all);
    let used = all_value_paths();
    // A leaf is read when a template reads it, a parent (toYaml), or below it.
    let unused: Vec<String> = all
        .iter()
        .filter(|leaf| {
            !used
                .iter()
                .any(|u| leaf.starts_with(u) || u.starts_with(leaf))
        })
        .map(|leaf| leaf.join("."))
        .collect();
    assert!(
        unused.is_empty(),
        "values.yaml keys no template reads: {unused:?}"
    );
}

// ---------------------------------------------------------------------------
// (d) the kubelet waits longer than the drain

#[test]
fn chart_termination_grace_exceeds_the_drain_grace() {
    let values = values();
    let tgps = values["terminationGracePeriodSeconds"].as_u64().unwrap();
    let chart_grace = values["shutdown"]["graceSeconds"].as_u64().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let default_grace = config::load_from(dir.path(), &HashMap::new())
        .unwrap()
        .shutdown
        .grace
        .as_secs();
    // 5 s is the margin deployment.yaml's `fail` demands for the publisher
    // flush and the proxy sidecar stopping after the daemon.
    assert!(
        tgps >= chart_grace + 5,
        "terminationGracePeriodSeconds {tgps} <= shutdown.graceSeconds {chart_grace} + 5"
    );
    assert!(tgps > default_grace, "terminationGracePeriodSeconds {tgps} <= the binary's default shutdown.grace {default_grace}s");
    // That the chart refuses a smaller one is chart_helm.rs's refusal case.
}

// ---------------------------------------------------------------------------
// (f) the operator's kit: dashboard, alert rules, backlog autoscaling

fn repo_file(path: &str) -> String {
    read(&Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
}

/// Helm cannot read outside the chart, so it ships copies of the files in
/// docs/; they must stay byte-for-byte the tested originals.
#[test]
fn chart_ships_the_dashboard_and_rules_of_docs_unchanged() {
    for (copy, original) in [
        (
            "files/event-backbone.json",
            "docs/grafana/event-backbone.json",
        ),
        (
            "files/event-backbone.rules.yml",
            "docs/alerts/event-backbone.rules.yml",
        ),
    ] {
        assert!(
            read(&chart_dir().join(copy)) == repo_file(original),
            "helm/event-backbone/{copy} differs from {original}: cp {original} helm/event-backbone/{copy}"
        );
    }
}

/// What the dashboard shows; that its queries evaluate against real series
/// is tests/it/prometheus_live.rs's, that the chart ships it chart_helm.rs's.
#[test]
fn chart_dashboard_queries_every_signal_through_the_variables_on_one_grid() {
    let dash: Value =
        serde_json::from_str(&repo_file("docs/grafana/event-backbone.json")).expect("JSON");
    assert_eq!(dash["uid"], "event-backbone");
    let panels = dash["panels"].as_array().expect("panels");
    let exprs: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .map(|t| t["expr"].as_str().expect("expr"))
        .collect();
    let all = exprs.join("\n");
    // What the issue asks the dashboard to show.
    for needle in [
        "backbone_messages_processed_total",
        "backbone_messages_received_total",
        "backbone_retry_attempts_total",
        "backbone_dead_letters_parked",
        "backbone_dlq_replayed_total",
        "backbone_merge_pending",
        "backbone_merge_gaps_total",
        "histogram_quantile(0.5, sum by (le, subscription) (rate(backbone_processing_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le, subscription) (rate(backbone_processing_duration_seconds_bucket",
        "backbone_consumer_up",
        "backbone_ready",
        "backbone_held_messages",
        "backbone_outbox_relayed_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(all.contains(needle), "the dashboard never queries {needle}");
    }
    // Every query goes through the data source variable and the namespace filter.
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
    }
    for e in &exprs {
        assert!(e.contains(r#"namespace=~"$namespace""#), "{e}");
    }
    // No two panels overlap on the 24-column grid.
    let mut cells = BTreeSet::new();
    for p in panels {
        let g = &p["gridPos"];
        let n = |k: &str| g[k].as_u64().expect("gridPos");
        assert!(n("x") + n("w") <= 24, "{}", p["title"]);
        for x in n("x")..n("x") + n("w") {
            for y in n("y")..n("y") + n("h") {
                assert!(
                    cells.insert((x, y)),
                    "{} overlaps another panel",
                    p["title"]
                );
            }
        }
    }
}

/// The schema's `prometheusRule.exclude` admits exactly the rules file's
/// alert names, and each runbook link is relative (the chart prefixes it;
/// chart_helm.rs renders that).
#[test]
fn chart_prometheus_rule_exclude_names_the_alerts_of_the_rules_file() {
    // `exclude` admits exactly the alert names of the rules file.
    let rules: Value =
        serde_norway::from_str(&repo_file("docs/alerts/event-backbone.rules.yml")).expect("YAML");
    let schema = schema();
    let admitted: BTreeSet<&str> = schema["properties"]["prometheusRule"]["properties"]["exclude"]
        ["items"]["enum"]
        .as_array()
        .expect("an enum of alert names")
        .iter()
        .map(|n| n.as_str().expect("a name"))
        .collect();
    let alerts: BTreeSet<&str> = rules["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .map(|r| r["alert"].as_str().expect("alert"))
        .collect();
    assert_eq!(
        admitted, alerts,
        "values.schema.json prometheusRule.exclude"
    );
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().expect("alert");
            assert!(
                rule["annotations"]["runbook_url"]
                    .as_str()
                    .is_some_and(|u| u.starts_with("docs/operations.md#")),
                "{name}"
            );
        }
    }
}
