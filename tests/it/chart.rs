//! The Helm chart (`helm/event-backbone`) checked without Helm: Helm cannot be
//! installed here, so this test reads the templates itself. It proves that
//! every `.Values` path a template uses exists in `values.yaml`, that
//! `values.yaml` passes `values.schema.json`, that every `BACKBONE__*`
//! variable the chart sets is a setting the binary reads (and the chart's
//! defaults load as a valid configuration), that pods get more time to
//! stop than the daemon takes to drain, and that only the migrate Job holds
//! the administrator's database credentials.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use event_backbone::config::{self, Settings};
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

fn template(name: &str) -> String {
    templates()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no template {name}"))
        .1
}

/// The body of `{{- define "name" -}}` in `_helpers.tpl`.
fn define(name: &str) -> String {
    let helpers = template("_helpers.tpl");
    let start = helpers
        .find(&format!("define \"{name}\""))
        .unwrap_or_else(|| panic!("_helpers.tpl defines no {name}"));
    let body = &helpers[start..];
    let end = body.find("{{- end }}\n\n").unwrap_or(body.len());
    body[..end].to_owned()
}

/// Walks a dotted path through nested objects; `None` if a segment is missing.
fn lookup<'a>(root: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(root, |v, seg| v.as_object()?.get(seg))
}

/// The settings the binary reads, every key present (unset options as null):
/// `default.toml` leaves optional keys commented out, so it cannot be the list.
fn settings_keys() -> Value {
    let dir = tempfile::tempdir().unwrap();
    config::load_from(dir.path(), &HashMap::new())
        .expect("the built-in defaults load")
        .redacted()
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
// (b) values.yaml ↔ values.schema.json

fn schema_errors(instance: &Value) -> Vec<String> {
    let validator =
        jsonschema::validator_for(&schema()).expect("values.schema.json is a valid schema");
    validator
        .iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn chart_values_yaml_validates_against_values_schema_json() {
    let errors = schema_errors(&values());
    assert!(
        errors.is_empty(),
        "values.yaml fails values.schema.json:\n{}",
        errors.join("\n")
    );
}

#[test]
fn chart_schema_rejects_typos_and_bad_settings() {
    type Mutation = fn(&mut Value);
    let cases: [(&str, Mutation); 8] = [
        ("unknown env", |v| v["env"] = "prod".into()),
        ("misspelled config key", |v| {
            v["config"]["pubsub"]["projectId"] = "x".into()
        }),
        ("retry attempts out of range", |v| {
            v["config"]["retry"]["max_attempts"] = 0.into()
        }),
        ("duration without unit", |v| {
            v["config"]["retry"]["max_backoff"] = "600".into()
        }),
        ("root allowed", |v| {
            v["podSecurityContext"]["runAsNonRoot"] = false.into()
        }),
        ("unknown top-level key", |v| v["replicas"] = 3.into()),
        ("migrate_on_start not a boolean", |v| {
            v["config"]["database"]["migrate_on_start"] = "no".into()
        }),
        ("misspelled test key", |v| v["test"]["enable"] = true.into()),
    ];
    for (what, mutate) in cases {
        let mut v = values();
        mutate(&mut v);
        assert!(
            !schema_errors(&v).is_empty(),
            "the schema accepted values with {what}"
        );
    }
}

// ---------------------------------------------------------------------------
// (c) BACKBONE__* variables ↔ the binary's settings

/// `BACKBONE__TARGETS__NETSUITE__TOKEN` → `targets.netsuite.token`.
fn key_of_env_var(name: &str) -> Option<String> {
    let rest = name.strip_prefix("BACKBONE__")?;
    Some(
        rest.split("__")
            .map(str::to_lowercase)
            .collect::<Vec<_>>()
            .join("."),
    )
}

/// `BACKBONE__*` names in a template, outside `{{/* … */}}` comments.
fn backbone_env_vars(src: &str) -> BTreeSet<String> {
    let mut code = String::new();
    let mut rest = src;
    while let Some(start) = rest.find("/*") {
        code.push_str(&rest[..start]);
        rest = rest[start..]
            .find("*/")
            .map_or("", |end| &rest[start + end + 2..]);
    }
    code.push_str(rest);
    let is_name = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_';
    code.match_indices("BACKBONE__")
        .map(|(i, _)| code[i..].chars().take_while(|&c| is_name(c)).collect())
        .collect()
}

#[test]
fn every_backbone_env_var_the_chart_sets_is_a_config_key() {
    let keys = settings_keys();
    let mut seen = 0;
    let mut unknown = Vec::new();
    for (file, src) in templates() {
        for var in backbone_env_vars(&src) {
            seen += 1;
            let key = key_of_env_var(&var).expect("starts with BACKBONE__");
            if lookup(&keys, &segments(&key)).is_none() {
                unknown.push(format!("{file}: {var} (no setting `{key}`)"));
            }
        }
    }
    assert!(
        seen > 20,
        "only {seen} BACKBONE__ variables found in the templates"
    );
    assert!(
        unknown.is_empty(),
        "the chart sets variables the binary does not read:\n{}",
        unknown.join("\n")
    );
}

/// The `config:` block of values.yaml mirrors the settings, and configmap.yaml
/// puts `config.a.b` into exactly `BACKBONE__A__B`.
#[test]
fn chart_config_values_map_to_their_own_env_vars() {
    let keys = settings_keys();
    let configmap = read(&chart_dir().join("templates/configmap.yaml"));
    let mut with_path: Option<String> = None;
    let mut mapped = BTreeSet::new();
    for line in configmap.lines() {
        if let Some(rest) = line.split("with $c.").nth(1) {
            with_path = Some(
                rest.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            );
            continue;
        }
        let Some((var, expr)) = line.trim().split_once(": {{") else {
            continue;
        };
        let path = match expr.split("$c.").nth(1) {
            Some(rest) => rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned(),
            None if expr.trim_start().starts_with(". ") => match with_path.take() {
                Some(p) => p,
                None => continue,
            },
            None => continue,
        };
        assert_eq!(
            var,
            config::env_var_for_key(&path),
            "configmap.yaml: {line}"
        );
        mapped.insert(path);
    }
    let mut leaves = Vec::new();
    collect_leaves(&values()["config"], "", &mut leaves);
    for leaf in &leaves {
        assert!(
            lookup(&keys, &segments(leaf)).is_some(),
            "values.yaml config.{leaf} is not a setting"
        );
        assert!(
            mapped.contains(leaf),
            "values.yaml config.{leaf} is not rendered by configmap.yaml"
        );
    }
}

fn collect_leaves(v: &Value, prefix: &str, out: &mut Vec<String>) {
    match v.as_object() {
        Some(map) => {
            for (k, child) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                collect_leaves(child, &path, out);
            }
        }
        None => out.push(prefix.to_owned()),
    }
}

/// The environment the chart's defaults give the daemon, rebuilt from
/// values.yaml the way configmap.yaml and the database helper render it.
fn chart_default_env(values: &Value, env: &str) -> HashMap<String, String> {
    let mut leaves = Vec::new();
    collect_leaves(&values["config"], "", &mut leaves);
    let mut vars = HashMap::new();
    for leaf in leaves {
        let v = lookup(&values["config"], &segments(&leaf)).unwrap();
        let s = match v {
            Value::String(s) => s.clone(),
            Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        };
        // Empty strings are not rendered (the env file's value applies).
        if !s.is_empty() {
            vars.insert(config::env_var_for_key(&leaf), s);
        }
    }
    let db = &values["database"];
    let port = |name: &str| values["ports"][name].as_u64().unwrap();
    vars.extend([
        ("BACKBONE_ENV".to_owned(), env.to_owned()),
        (
            "BACKBONE__HTTP__METRICS_ADDR".to_owned(),
            format!("0.0.0.0:{}", port("metrics")),
        ),
        (
            "BACKBONE__HTTP__ADMIN_ADDR".to_owned(),
            format!("127.0.0.1:{}", port("admin")),
        ),
        (
            "BACKBONE__SHUTDOWN__GRACE".to_owned(),
            format!("{}s", values["shutdown"]["graceSeconds"].as_u64().unwrap()),
        ),
        (
            "BACKBONE__DATABASE__URL".to_owned(),
            format!(
                "mysql://{}:not-a-real-password@{}:{}/{}",
                db["user"].as_str().unwrap(),
                db["host"].as_str().unwrap(),
                db["port"],
                db["name"].as_str().unwrap()
            ),
        ),
    ]);
    vars
}

#[test]
fn chart_defaults_load_as_a_valid_configuration() {
    let values = values();
    let dir = tempfile::tempdir().unwrap();
    for env in ["sandbox", "production"] {
        let settings: Settings = config::load_from(dir.path(), &chart_default_env(&values, env))
            .unwrap_or_else(|e| panic!("the chart's defaults for {env} do not load: {e}"));
        assert_eq!(settings.env.as_str(), env);
        assert_eq!(
            settings.shutdown.grace.as_secs(),
            values["shutdown"]["graceSeconds"].as_u64().unwrap()
        );
        // The daemon runs as the runtime user: it never migrates itself.
        assert!(!settings.database.migrate_on_start, "{env}");
    }
}

/// Every `BACKBONE__*` variable the chart sets, through the binary's own
/// strict key check (the one `run` and `check-config` apply): the
/// configmap's as values.yaml renders them; the rest (Secret-fed tokens,
/// variables rendered only when a value is set) with a stand-in value of
/// the right kind.
#[test]
fn chart_env_passes_the_strict_key_check() {
    let values = values();
    let defaults = settings_keys();
    let stand_in = |var: &str| -> String {
        let key = key_of_env_var(var).expect("starts with BACKBONE__");
        match lookup(&defaults, &segments(&key)) {
            Some(Value::String(s)) if s != "[redacted]" => s.clone(),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
            _ if key.ends_with(".url") => "https://stand-in.example/hook".to_owned(),
            _ => "stand-in-secret".to_owned(),
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let mut seen = 0;
    for env in ["sandbox", "production"] {
        let mut vars = chart_default_env(&values, env);
        for (_, src) in templates() {
            for var in backbone_env_vars(&src) {
                seen += 1;
                let value = stand_in(&var);
                vars.entry(var).or_insert(value);
            }
        }
        if let Err(e) = config::load_from(dir.path(), &vars) {
            panic!("the chart's environment for {env} does not load: {e}");
        }
        // The check is live: one misspelt variable among them fails.
        vars.insert("BACKBONE__RETRY__MAX_ATEMPTS".to_owned(), "3".to_owned());
        match config::load_from(dir.path(), &vars) {
            Err(e @ config::ConfigError::UnknownKeys(_)) => {
                assert_eq!(e.key(), Some("retry.max_atempts"), "{e}");
            }
            other => panic!("a misspelt variable was accepted: {other:?}"),
        }
    }
    assert!(seen > 40, "only {seen} BACKBONE__ variables found");
}

// ---------------------------------------------------------------------------
// (e) which pod holds which database credentials

/// Deployment order, as the chart runs it: the migrate hook Job alone gets
/// the administrator's Secret (`migrations.secret`); the daemon and the
/// `helm test` pod get the runtime user's (`secrets.database`), and the test
/// pod runs `doctor` as a Helm test hook.
#[test]
fn chart_gives_admin_credentials_to_the_migrate_job_only() {
    let paths = |src: &str| -> BTreeSet<String> {
        value_paths(src).into_iter().map(|p| p.join(".")).collect()
    };
    let runtime = paths(&define("event-backbone.databaseEnv"));
    let admin = paths(&define("event-backbone.migrationDatabaseEnv"));
    assert!(
        runtime.contains("secrets.database")
            && !runtime.iter().any(|p| p.starts_with("migrations")),
        "databaseEnv reads {runtime:?}"
    );
    assert!(
        admin.contains("migrations.secret")
            && admin.contains("migrations.user")
            && !admin.iter().any(|p| p.starts_with("secrets")),
        "migrationDatabaseEnv reads {admin:?}"
    );

    let job = template("migrate-job.yaml");
    assert!(job.contains(r#"args: ["migrate"]"#));
    assert!(job.contains(r#"include "event-backbone.migrationDatabaseEnv""#));
    assert!(!job.contains(r#"include "event-backbone.databaseEnv""#));
    assert!(job.contains("helm.sh/hook: {{ .Values.migrations.hooks | quote }}"));
    let hooks = values()["migrations"]["hooks"].as_str().unwrap().to_owned();
    assert!(
        hooks.contains("pre-upgrade"),
        "the schema must change before new pods roll: {hooks}"
    );

    for (name, args) in [
        ("deployment.yaml", r#"args: ["run"]"#),
        ("tests/doctor.yaml", r#"args: ["doctor"]"#),
    ] {
        let src = template(name);
        assert!(src.contains(args), "{name}");
        assert!(
            src.contains(r#"include "event-backbone.databaseEnv""#),
            "{name} must use the runtime user's credentials"
        );
        assert!(
            !src.contains("migrationDatabaseEnv") && !src.contains(".Values.migrations"),
            "{name} must not see the administrator's credentials"
        );
        assert!(
            src.contains("configMapRef"),
            "{name} reads the daemon's settings"
        );
    }
    let test_pod = template("tests/doctor.yaml");
    assert!(test_pod.contains("helm.sh/hook: test"));
    assert!(test_pod.contains("{{- if .Values.test.enabled }}"));
    assert!(
        !test_pod.contains(r#"include "event-backbone.selectorLabels""#)
            && !test_pod.contains(r#"include "event-backbone.labels""#),
        "the test pod must not carry the Deployment's selector labels"
    );
    let configmap = template("configmap.yaml");
    assert!(configmap.contains(
        "BACKBONE__DATABASE__MIGRATE_ON_START: {{ $c.database.migrate_on_start | quote }}"
    ));
    assert_eq!(values()["config"]["database"]["migrate_on_start"], false);
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

    let deployment = read(&chart_dir().join("templates/deployment.yaml"));
    assert!(deployment.contains("terminationGracePeriodSeconds: {{ $tgps }}"));
    assert!(
        deployment.contains("{{- fail"),
        "deployment.yaml must refuse a terminationGracePeriodSeconds below the drain grace"
    );
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

#[test]
fn chart_dashboard_configmap_is_opt_in_and_labelled_for_the_grafana_sidecar() {
    let src = template("grafana-dashboard.yaml");
    assert!(src.starts_with("{{- if .Values.grafanaDashboard.enabled }}"));
    assert!(src.contains("kind: ConfigMap"));
    assert!(src.contains("{{ $d.label }}: {{ $d.labelValue | quote }}"));
    assert!(src.contains(r#"{{- .Files.Get "files/event-backbone.json" | nindent 4 }}"#));
    let v = &values()["grafanaDashboard"];
    assert_eq!(v["enabled"], false);
    assert_eq!(v["label"], "grafana_dashboard");
    assert_eq!(v["labelValue"], "1");

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

#[test]
fn chart_prometheus_rule_is_opt_in_and_renders_the_tested_rules_file() {
    let src = template("prometheusrule.yaml");
    assert!(src.starts_with("{{- if .Values.prometheusRule.enabled }}"));
    assert!(src.contains("kind: PrometheusRule"));
    assert!(src.contains(r#".Files.Get "files/event-backbone.rules.yml" | fromYaml"#));
    // The runbook links get the configurable base URL in front.
    assert!(src.contains(r#"set $rule.annotations "runbook_url""#));
    assert!(src.contains("$p.runbookBaseUrl"));
    assert!(src.contains("has $rule.alert $p.exclude"));
    let v = &values()["prometheusRule"];
    assert_eq!(v["enabled"], false);
    assert_eq!(v["runbookBaseUrl"], "");

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
            let mut with_exclude = values();
            with_exclude["prometheusRule"]["exclude"] = serde_json::json!([name]);
            assert!(schema_errors(&with_exclude).is_empty(), "{name}");
            assert!(rule["annotations"]["runbook_url"]
                .as_str()
                .is_some_and(|u| u.starts_with("docs/operations.md#")));
        }
    }
}

#[test]
fn chart_keda_scaled_object_scales_on_the_merge_backlog_with_workload_identity() {
    let src = template("keda.yaml");
    assert!(src.contains(r#"{{- include "event-backbone.oneAutoscaler" . }}"#));
    assert!(src.contains("{{- if .Values.keda.enabled }}"));
    for needle in [
        "kind: ScaledObject",
        "type: gcp-pubsub",
        "authenticationRef:",
        "subscriptionName:",
        "mode: {{ $k.mode }}",
        "kind: TriggerAuthentication",
        "podIdentity:\n    provider: gcp",
    ] {
        assert!(src.contains(needle), "keda.yaml lacks {needle:?}");
    }
    let v = &values()["keda"];
    assert_eq!(v["enabled"], false);
    assert_eq!(v["mode"], "SubscriptionSize");
    assert_eq!(v["triggerAuthentication"]["create"], true);

    // The subscription both autoscalers default to is the merge consumer's.
    let helper = define("event-backbone.mergeSubscription");
    let format = helper
        .split("printf \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a printf format");
    for env in ["sandbox", "production"] {
        let topology = event_backbone::topology::Topology::new(env.parse().unwrap(), "p");
        assert_eq!(
            format.replace("%s", env),
            topology.subscription_id(event_backbone::topology::ConsumerKind::Merge)
        );
    }
}

#[test]
fn chart_hpa_can_scale_on_the_backlog_as_an_external_metric() {
    let src = template("hpa.yaml");
    assert!(src.contains(r#"{{- include "event-backbone.oneAutoscaler" . }}"#));
    for needle in [
        "type: External",
        "name: pubsub.googleapis.com|subscription|num_undelivered_messages",
        "resource.labels.subscription_id:",
        "type: AverageValue",
        "{{- with .Values.autoscaling.pubsubBacklog }}",
    ] {
        assert!(src.contains(needle), "hpa.yaml lacks {needle:?}");
    }
    assert_eq!(values()["autoscaling"]["pubsubBacklog"]["enabled"], false);
    // Either autoscaler owns the replica count.
    let deployment = template("deployment.yaml");
    assert!(
        deployment.contains("{{- if not (or .Values.autoscaling.enabled .Values.keda.enabled) }}")
    );
}

#[test]
fn chart_refuses_keda_and_the_hpa_together() {
    let helper = define("event-backbone.oneAutoscaler");
    assert!(helper.contains("{{- if and .Values.keda.enabled .Values.autoscaling.enabled }}"));
    assert!(helper.contains("{{- fail"));
    let with = |keda: bool, hpa: bool| {
        let mut v = values();
        v["keda"]["enabled"] = keda.into();
        v["autoscaling"]["enabled"] = hpa.into();
        v["autoscaling"]["pubsubBacklog"]["enabled"] = hpa.into();
        schema_errors(&v)
    };
    assert!(with(true, false).is_empty(), "{:?}", with(true, false));
    assert!(with(false, true).is_empty(), "{:?}", with(false, true));
    assert!(
        !with(true, true).is_empty(),
        "the schema accepted both autoscalers"
    );
}

#[test]
fn chart_schema_rejects_bad_kit_settings() {
    type Mutation = fn(&mut Value);
    let cases: [(&str, Mutation); 7] = [
        ("keda mode typo", |v| {
            v["keda"]["mode"] = "SubscriptionSise".into()
        }),
        ("keda value not a number", |v| {
            v["keda"]["value"] = "lots".into()
        }),
        ("keda auth kind", |v| {
            v["keda"]["triggerAuthentication"]["kind"] = "Secret".into()
        }),
        ("runbook base not a URL", |v| {
            v["prometheusRule"]["runbookBaseUrl"] = "github.com/x".into()
        }),
        ("exclude names no alert", |v| {
            v["prometheusRule"]["exclude"] = serde_json::json!(["BackboneDeadLetters"])
        }),
        ("dashboard key typo", |v| {
            v["grafanaDashboard"]["lable"] = "x".into()
        }),
        ("backlog target zero", |v| {
            v["autoscaling"]["pubsubBacklog"]["targetAverageValue"] = 0.into()
        }),
    ];
    for (what, mutate) in cases {
        let mut v = values();
        mutate(&mut v);
        assert!(
            !schema_errors(&v).is_empty(),
            "the schema accepted values with {what}"
        );
    }
}
