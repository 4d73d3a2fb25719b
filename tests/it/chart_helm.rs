//! The Helm chart through Helm's own engine: `scripts/chart_check.py` renders
//! and lints (strict) `helm/event-backbone` with the PyPI wheel
//! `helm-python-sdk` (Helm v4's Go SDK) and validates every object that is
//! not a custom resource strictly against the Kubernetes 1.31 schemas
//! (`kubernetes-validate`); this file judges what it answers. Cases: the
//! defaults, production with every option on, the backlog HPA, and each
//! refusal, which must fail with its message. The environment each pod gets
//! goes through the binary's `check-config` (its strict key check), and the
//! rendered PrometheusRule through `promtool check rules`.
//!
//! The wheels live in target/services/venv (scripts/tools.sh installs
//! them): required under CI=true, skipped with a reason elsewhere.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use backbone::config;
use backbone::topology::{ConsumerKind, Topology};
use serde_json::{json, Value};

use crate::support;

const KUBE_VERSION: &str = "1.31.0";
const RELEASE: &str = "eb";
const NAMESPACE: &str = "sync";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart_dir() -> PathBuf {
    root().join("helm/event-backbone")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The venv's Python, if it has both wheels; otherwise a failure under CI
/// and a printed skip elsewhere.
fn helm_python() -> Option<PathBuf> {
    let python = root().join("target/services/venv/bin/python");
    let probe = Command::new(&python)
        .args(["-c", "import helm_python, kubernetes_validate"])
        .output();
    let reason = match probe {
        Ok(out) if out.status.success() => return Some(python),
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        Err(e) => format!("{}: {e}", python.display()),
    };
    let msg = format!(
        "helm-python-sdk / kubernetes-validate are not in target/services/venv ({reason}); run scripts/tools.sh"
    );
    if std::env::var("CI").is_ok() {
        panic!("{msg}");
    }
    println!("skipped: {msg}");
    None
}

/// One case for the driver: a name and the values given with `-f`.
struct Case {
    name: String,
    values: Value,
    chart: Option<PathBuf>,
}

fn case(name: &str, values: Value) -> Case {
    Case {
        name: name.to_owned(),
        values,
        chart: None,
    }
}

/// Runs the driver over `cases`; one answer per case, in order.
fn helm(python: &Path, cases: &[Case]) -> Vec<Value> {
    let mut answers = Vec::new();
    // Cases on another chart (a modified copy) go in their own request.
    let mut groups: BTreeMap<PathBuf, Vec<(usize, &Case)>> = BTreeMap::new();
    for (i, c) in cases.iter().enumerate() {
        let chart = c.chart.clone().unwrap_or_else(chart_dir);
        groups.entry(chart).or_default().push((i, c));
    }
    for (chart, group) in groups {
        let request = json!({
            "chart": chart,
            "kube_version": KUBE_VERSION,
            "cases": group.iter().map(|(_, c)| json!({
                "name": c.name, "values": c.values,
                "release": RELEASE, "namespace": NAMESPACE,
            })).collect::<Vec<_>>(),
        });
        let mut child = Command::new(python)
            .arg(root().join("scripts/chart_check.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the chart driver starts");
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(request.to_string().as_bytes())
            .expect("request written");
        let out = child.wait_with_output().expect("the chart driver ends");
        assert!(
            out.status.success(),
            "scripts/chart_check.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Vec<Value> = serde_json::from_slice(&out.stdout).expect("the driver answers JSON");
        answers.extend(group.iter().map(|(i, _)| *i).zip(got));
    }
    answers.sort_by_key(|(i, _)| *i);
    answers.into_iter().map(|(_, a)| a).collect()
}

fn objects(answer: &Value) -> &[Value] {
    answer["objects"].as_array().map_or(&[], Vec::as_slice)
}

/// Rendered, lint clean (strict: no warning either) and every built-in
/// object valid against the Kubernetes schemas; returns the kinds rendered.
fn assert_clean(answer: &Value) -> BTreeSet<String> {
    let name = &answer["name"];
    assert!(
        answer["render_error"].is_null(),
        "{name}: Helm refused to render: {}",
        answer["render_error"]
    );
    let findings: Vec<&Value> = answer["lint"]["messages"]
        .as_array()
        .expect("lint messages")
        .iter()
        // 1 is info ("icon is recommended"); 2 warning, 3 error.
        .filter(|m| m["severity"].as_u64().unwrap_or(3) >= 2)
        .collect();
    assert!(
        findings.is_empty(),
        "{name}: helm lint --strict: {findings:?}"
    );
    let objects = objects(answer);
    assert!(!objects.is_empty(), "{name}: nothing rendered");
    for o in objects {
        assert!(
            o["k8s"] == "ok" || o["k8s"] == "crd",
            "{name}: {} {} ({}) against Kubernetes {KUBE_VERSION}: {}",
            o["kind"],
            o["name"],
            o["template"],
            o["k8s"]
        );
    }
    objects
        .iter()
        .map(|o| o["kind"].as_str().expect("kind").to_owned())
        .collect()
}

fn object<'a>(answer: &'a Value, kind: &str, name: &str) -> &'a Value {
    objects(answer)
        .iter()
        .find(|o| o["kind"] == kind && o["name"] == name)
        .map(|o| &o["object"])
        .unwrap_or_else(|| panic!("{}: no {kind} {name} rendered", answer["name"]))
}

fn full(suffix: &str) -> String {
    format!("{RELEASE}-event-backbone{suffix}")
}

/// The pod spec of a Deployment, Job, CronJob or Pod.
fn pod_spec(obj: &Value) -> &Value {
    let spec = &obj["spec"];
    if spec["jobTemplate"].is_object() {
        &spec["jobTemplate"]["spec"]["template"]["spec"]
    } else if spec["template"].is_object() {
        &spec["template"]["spec"]
    } else {
        spec
    }
}

/// The labels of the pods a Deployment, Job, CronJob or Pod makes.
fn pod_labels(obj: &Value) -> &Value {
    let spec = &obj["spec"];
    if spec["jobTemplate"].is_object() {
        &spec["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    } else if spec["template"].is_object() {
        &spec["template"]["metadata"]["labels"]
    } else {
        &obj["metadata"]["labels"]
    }
}

/// Whether a NetworkPolicy's podSelector selects pods with `labels`
/// (matchLabels and matchExpressions' In/NotIn/Exists/DoesNotExist).
fn selects(policy: &Value, labels: &Value) -> bool {
    let sel = &policy["spec"]["podSelector"];
    let label = |k: &str| labels[k].as_str();
    let labels_ok = sel["matchLabels"]
        .as_object()
        .is_none_or(|m| m.iter().all(|(k, v)| label(k) == v.as_str()));
    let exprs_ok = sel["matchExpressions"].as_array().is_none_or(|es| {
        es.iter().all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let values: Vec<&str> = e["values"]
                .as_array()
                .map(|v| v.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            match e["operator"].as_str() {
                Some("In") => label(key).is_some_and(|l| values.contains(&l)),
                Some("NotIn") => label(key).is_none_or(|l| !values.contains(&l)),
                Some("Exists") => label(key).is_some(),
                Some("DoesNotExist") => label(key).is_none(),
                _ => false,
            }
        })
    });
    labels_ok && exprs_ok
}

fn container<'a>(obj: &'a Value, name: &str) -> &'a Value {
    pod_spec(obj)["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The environment a container gets, as the kubelet builds it: each
/// `envFrom` ConfigMap, then `env` in order with `$(VAR)` expanded from
/// what is defined before it. Secrets are stand-ins: the secret's name and
/// key, which are URL-safe here.
fn container_env(answer: &Value, c: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for from in c["envFrom"].as_array().into_iter().flatten() {
        let name = from["configMapRef"]["name"].as_str().expect("configMapRef");
        for (k, v) in object(answer, "ConfigMap", name)["data"]
            .as_object()
            .expect("data")
        {
            env.insert(k.clone(), v.as_str().expect("string data").to_owned());
        }
    }
    for var in c["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().expect("env name").to_owned();
        let value = if let Some(v) = var["value"].as_str() {
            let mut v = v.to_owned();
            for (k, val) in &env {
                v = v.replace(&format!("$({k})"), val);
            }
            v
        } else {
            let s = &var["valueFrom"]["secretKeyRef"];
            format!(
                "{}-{}",
                s["name"].as_str().expect("secret name"),
                s["key"].as_str().expect("secret key")
            )
        };
        env.insert(name, value);
    }
    env
}

/// `event-backbone check-config` (the real binary, nothing inherited) with
/// exactly `env`; its JSON answer, or its exit code and stderr.
fn check_config(env: &BTreeMap<String, String>) -> Result<Value, (i32, String)> {
    let layer = env.get("BACKBONE_ENV").map_or("sandbox", String::as_str);
    let mut cmd = support::binary(layer);
    cmd.env_clear()
        .env("BACKBONE_CONFIG_DIR", support::config_dir())
        .envs(env)
        // The renders' values are examples (placeholder hosts, Secrets by
        // name): this checks the chart's mapping to variables, not whether
        // a deployment is complete, which `run` and `doctor` refuse.
        .args(["check-config", "--lenient"]);
    let out = cmd.output().expect("event-backbone runs");
    if !out.status.success() {
        return Err((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(serde_json::from_slice(&out.stdout).expect("check-config prints JSON"))
}

/// check-config accepts the container's environment; its settings.
fn settings_of(answer: &Value, obj: &Value, container_name: &str) -> Value {
    let env = container_env(answer, container(obj, container_name));
    match check_config(&env) {
        Ok(v) => v["config"].clone(),
        Err((code, err)) => panic!(
            "{}: check-config refused the environment of {container_name} (exit {code}): {err}\n{env:#?}",
            answer["name"]
        ),
    }
}

/// `BACKBONE__*` names a template file sets, outside `{{/* … */}}` comments.
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

fn template_sources() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("templates/") {
            let p = entry.expect("dir entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(read(&p));
            }
        }
    }
    let mut out = Vec::new();
    walk(&chart_dir().join("templates"), &mut out);
    out
}

fn values_yaml() -> Value {
    serde_norway::from_str(&read(&chart_dir().join("values.yaml"))).expect("values.yaml")
}

fn collect_leaves(v: &Value, prefix: &str, out: &mut Vec<(String, Value)>) {
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
        None => out.push((prefix.to_owned(), v.clone())),
    }
}

/// Every option on, as production would run it.
fn production_values() -> Value {
    json!({
        "env": "production",
        "image": {"repository": "europe-west1-docker.pkg.dev/p/event-backbone/event-backbone", "tag": "1.2.3"},
        "serviceAccount": {"gcpServiceAccount": "event-backbone@p.iam.gserviceaccount.com"},
        "config": {
            "pubsub": {"project_id": "suitex-prod"},
            "snapshots": {"url": "gs://suitex-payload-snapshots-production"},
            "targets": {
                "netsuite": {"url": "https://netsuite.example/hook"},
                "suitex": {"url": "https://suitex.example/hook"},
            },
        },
        "extraEnv": [{"name": "BACKBONE__MERGE__WORKERS", "value": "4"}],
        "secrets": {
            "database": {"name": "db-runtime"},
            "adminToken": {"name": "admin"},
            "netsuiteToken": {"name": "netsuite"},
            "suitexToken": {"name": "suitex"},
        },
        "cloudSqlProxy": {"enabled": true, "instanceConnectionName": "p:europe-west1:sql"},
        "migrations": {"enabled": true, "secret": {"name": "db-admin"}},
        "serviceMonitor": {"enabled": true, "labels": {"release": "kps"}},
        "podMonitoring": {"enabled": true},
        "prometheusRule": {
            "enabled": true,
            "labels": {"release": "kps"},
            "runbookBaseUrl": "https://git.example/org/event-backbone/blob/main/",
            "additionalRuleLabels": {"team": "sync"},
            "exclude": ["BackboneSubscriptionBacklog"],
        },
        "grafanaDashboard": {"enabled": true, "annotations": {"grafana_folder": "Sync"}},
        "keda": {"enabled": true},
        "networkPolicy": {"egress": {"restrict": true}},
        "archive": {
            "enabled": true,
            "secret": {"name": "db-archiver"},
            "recorder": {"secret": {"name": "db-archive-recorder"}},
            "serviceAccount": {"gcpServiceAccount": "eb-archive@suitex-prod.iam.gserviceaccount.com"},
            "bucketUrl": "gs://suitex-event-archive-production",
        },
        "topologySpreadConstraints": [{
            "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "event-backbone"}},
        }],
    })
}

/// One render per target authentication kind (docs/spec.md §4.3): NetSuite TBA
/// with spatie's HMAC for SuiteX; OAuth 2.0 with Standard Webhooks in a
/// rotation; a bearer token from a mounted Secret.
fn auth_kind_values() -> Vec<(String, Value)> {
    let mut cases: Vec<(String, Value)> = auth_kinds()
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect();
    // The same blocks with the targets swapped: every key of every kind
    // renders for both targets.
    let swapped: Vec<(String, Value)> = cases
        .iter()
        .map(|(n, v)| {
            let mut v = v.clone();
            let t = v["config"]["targets"].as_object_mut().expect("targets");
            let ns = t.remove("netsuite");
            let sx = t.remove("suitex");
            if let Some(ns) = ns {
                t.insert("suitex".into(), ns);
            }
            if let Some(sx) = sx {
                t.insert("netsuite".into(), sx);
            }
            if let Some(sec) = v["secrets"].as_object_mut() {
                let ns = sec.remove("netsuiteAuth");
                let sx = sec.remove("suitexAuth");
                if let Some(ns) = ns {
                    sec.insert("suitexAuth".into(), ns);
                }
                if let Some(sx) = sx {
                    sec.insert("netsuiteAuth".into(), sx);
                }
            }
            (format!("{n}, swapped"), v)
        })
        .collect();
    cases.extend(swapped);
    cases
}

fn auth_kinds() -> Vec<(&'static str, Value)> {
    let restlet = "https://1234567-sb1.restlets.api.netsuite.com/app/site/hosting/restlet.nl?script=7&deploy=1";
    vec![
        (
            "netsuite_tba + hmac_sha256",
            json!({"config": {"targets": {
                "netsuite": {"url": restlet, "account_concurrency": 5,
                    "probe_url": restlet,
                    "auth": {"kind": "netsuite_tba", "account": "1234567_SB1"}},
                "suitex": {"url": "http://suitex.sync.svc.cluster.local/api/sync/merged-events",
                    "allow_http": true,
                    "auth": {"kind": "hmac_sha256", "header": "X-Signature"}},
            }},
            "secrets": {"netsuiteAuth": {"name": "ns-tba"}, "suitexAuth": {"name": "sx-hmac"}}}),
        ),
        (
            "netsuite_oauth2 + standard_webhooks",
            json!({"config": {"targets": {
                "netsuite": {"url": restlet,
                    "auth": {"kind": "netsuite_oauth2", "account": "1234567_SB1",
                        "client_id": "c1", "certificate_id": "k1",
                        "scope": "restlets", "token_url": "https://1234567-sb1.suitetalk.api.netsuite.com/services/rest/auth/oauth2/v1/token"}},
                "suitex": {"url": "https://suitex.example/hook", "errors": "http",
                    "auth": {"kind": "standard_webhooks"}},
            }},
            "secrets": {"netsuiteAuth": {"name": "ns-m2m"},
                "suitexAuth": {"name": "sx-whsec", "withPreviousSecret": true}}}),
        ),
        (
            "bearer from a mounted secret",
            json!({"config": {"targets": {
                "netsuite": {"url": "https://connector.example/hook", "errors": "http",
                    "auth": {"kind": "bearer"}},
            }},
            "secrets": {"netsuiteAuth": {"name": "ns-bearer"}}}),
        ),
    ]
}

fn backlog_hpa_values() -> Value {
    json!({"autoscaling": {"enabled": true, "pubsubBacklog": {"enabled": true}}})
}

// ---------------------------------------------------------------------------

/// The defaults: only the built-in objects, no option's; the env the
/// Deployment and the `helm test` pod get passes check-config and is the
/// chart's `config:` block variable for variable.
#[test]
fn chart_helm_defaults_render_lint_and_validate() {
    let Some(py) = helm_python() else { return };
    let a = &helm(&py, &[case("defaults", json!({}))])[0];
    let kinds = assert_clean(a);
    let want: BTreeSet<String> = [
        "ConfigMap",
        "Deployment",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Pod",
        "Service",
        "ServiceAccount",
    ]
    .map(str::to_owned)
    .into();
    assert_eq!(kinds, want, "the options are opt-in");

    let deployment = object(a, "Deployment", &full(""));
    let settings = settings_of(a, deployment, "event-backbone");
    assert_eq!(settings["env"], "sandbox");
    // The daemon runs as the runtime user: it never migrates itself.
    assert_eq!(settings["database"]["migrate_on_start"], false);
    let values = values_yaml();
    assert_eq!(
        settings["shutdown"]["grace"],
        format!("{}s", values["shutdown"]["graceSeconds"])
    );
    assert_eq!(deployment["spec"]["replicas"], values["replicaCount"]);
    let doctor = object(a, "Pod", &full("-doctor"));
    assert_eq!(doctor["metadata"]["annotations"]["helm.sh/hook"], "test");
    settings_of(a, doctor, "doctor");

    // config.a.b of values.yaml is exactly BACKBONE__A__B in the ConfigMap;
    // an empty string leaves the variable out (the env file's value applies).
    let data = &object(a, "ConfigMap", &full(""))["data"];
    let mut leaves = Vec::new();
    collect_leaves(&values["config"], "", &mut leaves);
    assert!(leaves.len() > 25, "only {} config leaves", leaves.len());
    for (leaf, v) in leaves {
        let var = config::env_var_for_key(&leaf);
        let want = match &v {
            Value::String(s) => s.clone(),
            Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().expect("string list").to_owned())
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        };
        if want.is_empty() {
            assert!(data.get(&var).is_none(), "{var} rendered though empty");
        } else if let Some(n) = v.as_f64() {
            // Helm prints 2.0 as "2".
            let got: f64 = data[&var]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("a number");
            assert_eq!(got, n, "config.{leaf} → {var}");
        } else {
            assert_eq!(data[&var], want, "config.{leaf} → {var}");
        }
    }
}

/// Production with every option on: every object valid, the custom
/// resources there, each pod's environment accepted by check-config, the
/// administrator's credentials in the migrate Job only, the rules as the
/// tested file says (promtool checks them as rendered), KEDA on the merge
/// subscription the binary consumes.
#[test]
fn chart_helm_production_with_every_option_on() {
    let Some(py) = helm_python() else { return };
    let answers = helm(
        &py,
        &[
            case("production", production_values()),
            case("defaults", json!({})),
        ],
    );
    let (a, defaults) = (&answers[0], &answers[1]);
    let kinds = assert_clean(a);
    for kind in [
        "Job",
        "ServiceMonitor",
        "PodMonitoring",
        "PrometheusRule",
        "ScaledObject",
        "TriggerAuthentication",
    ] {
        assert!(kinds.contains(kind), "no {kind} rendered: {kinds:?}");
    }
    assert!(!kinds.contains("HorizontalPodAutoscaler"), "KEDA owns it");

    // Each pod's environment through the binary's strict key check.
    let deployment = object(a, "Deployment", &full(""));
    let job = object(a, "Job", &full("-migrate"));
    let doctor = object(a, "Pod", &full("-doctor"));
    let archive = object(a, "CronJob", &full("-archive"));
    let daemon = settings_of(a, deployment, "event-backbone");
    assert_eq!(daemon["env"], "production");
    assert_eq!(daemon["pubsub"]["project_id"], "suitex-prod");
    assert_eq!(daemon["database"]["migrate_on_start"], false);
    settings_of(a, doctor, "doctor");
    settings_of(a, job, "migrate");
    let archiver = settings_of(a, archive, "archive");
    assert_eq!(
        archiver["retention"]["archive_url"],
        "gs://suitex-event-archive-production"
    );
    assert!(
        deployment["spec"].get("replicas").is_none(),
        "KEDA owns the replica count"
    );

    // The check is live: one misspelt variable among them fails it.
    let mut env = container_env(a, container(deployment, "event-backbone"));
    env.insert("BACKBONE__RETRY__MAX_ATEMPTS".into(), "3".into());
    let (code, err) = check_config(&env).expect_err("a misspelt variable was accepted");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("retry.max_atempts"), "{err}");

    // Every BACKBONE__ variable a template names is set in this render or
    // the defaults' (so check-config saw them all).
    let mut rendered: BTreeSet<String> = BTreeSet::new();
    for (answer, obj, c) in [
        (a, deployment, "event-backbone"),
        (a, job, "migrate"),
        (a, doctor, "doctor"),
        (a, archive, "archive"),
        (
            defaults,
            object(defaults, "Deployment", &full("")),
            "event-backbone",
        ),
    ] {
        rendered.extend(container_env(answer, container(obj, c)).into_keys());
    }
    let kinds = helm(
        &py,
        &auth_kind_values()
            .into_iter()
            .map(|(n, v)| case(&n, v))
            .collect::<Vec<_>>(),
    );
    for answer in &kinds {
        assert_clean(answer);
        let d = object(answer, "Deployment", &full(""));
        rendered.extend(container_env(answer, container(d, "event-backbone")).into_keys());
    }
    let named: BTreeSet<String> = template_sources()
        .iter()
        .flat_map(|s| backbone_env_vars(s))
        .collect();
    assert!(
        named.len() > 20,
        "only {} BACKBONE__ variables",
        named.len()
    );
    let unseen: Vec<&String> = named.difference(&rendered).collect();
    assert!(
        unseen.is_empty(),
        "never rendered, so never checked: {unseen:?}"
    );

    // Only the migrate hook Job holds the administrator's Secret.
    let secrets = |obj: &Value| -> BTreeSet<String> {
        let spec = pod_spec(obj);
        ["initContainers", "containers"]
            .iter()
            .flat_map(|k| spec[*k].as_array().into_iter().flatten())
            .flat_map(|c| c["env"].as_array().into_iter().flatten())
            .filter_map(|e| e["valueFrom"]["secretKeyRef"]["name"].as_str())
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(secrets(job), BTreeSet::from(["db-admin".to_owned()]));
    for (what, obj) in [("Deployment", deployment), ("helm test pod", doctor)] {
        let s = secrets(obj);
        assert!(s.contains("db-runtime"), "{what}: {s:?}");
        assert!(
            !s.contains("db-admin"),
            "{what} sees the administrator's Secret"
        );
    }
    // The archive: its two users' Secrets and no other (issue 31), its own
    // service account bound to its own Google service account.
    assert_eq!(
        secrets(archive),
        BTreeSet::from(["db-archiver".to_owned(), "db-archive-recorder".to_owned()])
    );
    for (what, obj) in [("Deployment", deployment), ("helm test pod", doctor)] {
        let s = secrets(obj);
        assert!(
            !s.contains("db-archiver") && !s.contains("db-archive-recorder"),
            "{what} sees the archive's Secrets"
        );
    }
    let archive_sa = pod_spec(archive)["serviceAccountName"]
        .as_str()
        .expect("a service account");
    assert_ne!(
        archive_sa,
        pod_spec(deployment)["serviceAccountName"],
        "the archive shares the daemon's identity"
    );
    assert_eq!(
        object(a, "ServiceAccount", archive_sa)["metadata"]["annotations"]
            ["iam.gke.io/gcp-service-account"],
        "eb-archive@suitex-prod.iam.gserviceaccount.com"
    );
    assert_eq!(container(job, "migrate")["args"], json!(["migrate"]));
    let hooks = job["metadata"]["annotations"]["helm.sh/hook"]
        .as_str()
        .expect("a hook Job");
    assert!(
        hooks.contains("pre-upgrade"),
        "the schema must change before new pods roll: {hooks}"
    );
    // The Deployment's selector (and the Service's) must not pick it up.
    let selector = deployment["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("selector");
    assert!(
        !selector
            .iter()
            .all(|(k, v)| doctor["metadata"]["labels"][k] == *v),
        "the test pod matches the Deployment's selector {selector:?}"
    );

    // The Cloud SQL proxy is a native sidecar: started first, stopped last.
    let proxy = pod_spec(deployment)["initContainers"]
        .as_array()
        .expect("init containers")
        .iter()
        .find(|c| c["name"] == "cloud-sql-proxy")
        .expect("the proxy sidecar");
    assert_eq!(proxy["restartPolicy"], "Always");

    // The rules: the tested file's, one excluded, links and labels added.
    let rule = object(a, "PrometheusRule", &full(""));
    let file: Value =
        serde_norway::from_str(&read(&root().join("docs/alerts/event-backbone.rules.yml")))
            .expect("rules YAML");
    let shipped: Vec<&Value> = file["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .collect();
    let got: Vec<&Value> = rule["spec"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .collect();
    let expected: Vec<&&Value> = shipped
        .iter()
        .filter(|r| r["alert"] != "BackboneSubscriptionBacklog")
        .collect();
    assert_eq!(got.len(), expected.len());
    for (g, s) in got.iter().zip(expected) {
        assert_eq!(g["alert"], s["alert"]);
        assert_eq!(g["expr"], s["expr"], "{}", s["alert"]);
        assert_eq!(g["for"], s["for"], "{}", s["alert"]);
        assert_eq!(g["labels"]["team"], "sync");
        assert_eq!(g["labels"]["severity"], s["labels"]["severity"]);
        assert_eq!(
            g["annotations"]["runbook_url"].as_str(),
            Some(
                format!(
                    "https://git.example/org/event-backbone/blob/main/{}",
                    s["annotations"]["runbook_url"].as_str().expect("runbook")
                )
                .as_str()
            )
        );
    }
    promtool_check_rules(&json!({"groups": rule["spec"]["groups"]}));

    // KEDA reads the backlog of the subscription the merge consumer pulls.
    let scaled = object(a, "ScaledObject", &full(""));
    let topology = Topology::new("production".parse().expect("env"), "suitex-prod");
    assert_eq!(
        scaled["spec"]["triggers"][0]["metadata"]["subscriptionName"],
        format!(
            "projects/suitex-prod/subscriptions/{}",
            topology.subscription_id(ConsumerKind::Merge)
        )
    );
    assert_eq!(
        scaled["spec"]["triggers"][0]["authenticationRef"]["name"],
        full("-gcp")
    );

    // The dashboard ConfigMap carries the tested file, for the sidecar.
    let dash = object(a, "ConfigMap", &full("-dashboard"));
    assert_eq!(dash["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: Value =
        serde_json::from_str(&read(&root().join("docs/grafana/event-backbone.json")))
            .expect("JSON");
    let rendered: Value = serde_json::from_str(
        dash["data"]["event-backbone.json"]
            .as_str()
            .expect("dashboard data"),
    )
    .expect("the rendered dashboard is JSON");
    assert_eq!(rendered, shipped);
}

/// `promtool check rules` on rules as the chart renders them.
fn promtool_check_rules(rules: &Value) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rendered.rules.yml");
    std::fs::write(&path, serde_norway::to_string(rules).expect("YAML")).expect("write rules");
    match Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&path)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "promtool check rules on the rendered PrometheusRule: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) if std::env::var("CI").is_ok() => panic!("promtool: {e}; run scripts/tools.sh"),
        Err(e) => println!("skipped promtool on the rendered rules: {e}"),
    }
}

/// The backlog HPA: an External metric on the merge subscription, and the
/// HPA owns the replica count.
#[test]
fn chart_helm_backlog_hpa() {
    let Some(py) = helm_python() else { return };
    let a = &helm(&py, &[case("backlog HPA", backlog_hpa_values())])[0];
    assert!(assert_clean(a).contains("HorizontalPodAutoscaler"));
    let hpa = object(a, "HorizontalPodAutoscaler", &full(""));
    let external = hpa["spec"]["metrics"]
        .as_array()
        .expect("metrics")
        .iter()
        .find(|m| m["type"] == "External")
        .expect("an External metric");
    assert_eq!(
        external["external"]["metric"]["name"],
        "pubsub.googleapis.com|subscription|num_undelivered_messages"
    );
    let topology = Topology::new("sandbox".parse().expect("env"), "p");
    assert_eq!(
        external["external"]["metric"]["selector"]["matchLabels"]
            ["resource.labels.subscription_id"],
        topology.subscription_id(ConsumerKind::Merge)
    );
    assert_eq!(external["external"]["target"]["type"], "AverageValue");
    assert!(object(a, "Deployment", &full(""))["spec"]
        .get("replicas")
        .is_none());
}

/// Each target authentication kind renders: its keys in the ConfigMap, its
/// credentials as files of a mounted Secret, accepted by check-config.
#[test]
fn chart_helm_renders_each_target_auth_kind() {
    let Some(py) = helm_python() else { return };
    let cases = auth_kind_values();
    let answers = helm(
        &py,
        &cases
            .iter()
            .map(|(n, v)| case(n, v.clone()))
            .collect::<Vec<_>>(),
    );
    for ((name, _), a) in cases.iter().zip(&answers) {
        assert_clean(a);
        let d = object(a, "Deployment", &full(""));
        let doctor = object(a, "Pod", &full("-doctor"));
        let daemon = settings_of(a, d, "event-backbone");
        settings_of(a, doctor, "doctor");
        let env = container_env(a, container(d, "event-backbone"));
        // Every *_FILE points into a mounted Secret's folder, and that
        // Secret is mounted (read-only) in the daemon and the test pod.
        let files: Vec<(&String, &String)> =
            env.iter().filter(|(k, _)| k.ends_with("_FILE")).collect();
        assert!(!files.is_empty(), "{name}: no credential files");
        for obj in [d, doctor] {
            let spec = pod_spec(obj);
            let mounts: Vec<String> = spec["containers"][0]["volumeMounts"]
                .as_array()
                .expect("mounts")
                .iter()
                .filter(|m| m["readOnly"] == true)
                .map(|m| m["mountPath"].as_str().unwrap().to_string())
                .collect();
            for (k, path) in &files {
                assert!(
                    mounts.iter().any(|m| path.starts_with(&format!("{m}/"))),
                    "{name}: {k}={path} is not under a mounted Secret {mounts:?}"
                );
            }
            let secrets: Vec<&str> = spec["volumes"]
                .as_array()
                .expect("volumes")
                .iter()
                .filter_map(|v| v["secret"]["secretName"].as_str())
                .collect();
            assert!(!secrets.is_empty(), "{name}: {secrets:?}");
        }
        eprintln!(
            "{name}: netsuite {} / suitex {}",
            daemon["targets"]["netsuite"]["auth"], daemon["targets"]["suitex"]["auth"]
        );
    }
    let tba = settings_of(
        &answers[0],
        object(&answers[0], "Deployment", &full("")),
        "event-backbone",
    );
    assert_eq!(tba["targets"]["netsuite"]["auth"]["kind"], "netsuite_tba");
    assert_eq!(tba["targets"]["netsuite"]["account_concurrency"], 5);
    assert_eq!(
        tba["targets"]["netsuite"]["auth"]["token_secret_file"],
        "/var/run/secrets/event-backbone/netsuite/token_secret"
    );
    assert_eq!(tba["targets"]["suitex"]["auth"]["header"], "X-Signature");
    let m2m = settings_of(
        &answers[1],
        object(&answers[1], "Deployment", &full("")),
        "event-backbone",
    );
    assert_eq!(
        m2m["targets"]["netsuite"]["auth"]["private_key_file"],
        "/var/run/secrets/event-backbone/netsuite/private_key"
    );
    assert_eq!(
        m2m["targets"]["suitex"]["auth"]["previous_secret_file"],
        "/var/run/secrets/event-backbone/suitex/previous_secret"
    );
    let bearer = settings_of(
        &answers[2],
        object(&answers[2], "Deployment", &full("")),
        "event-backbone",
    );
    assert_eq!(
        bearer["targets"]["netsuite"]["token_file"],
        "/var/run/secrets/event-backbone/netsuite/token"
    );
}

/// What the chart refuses, each with its message: Helm refuses to render.
#[test]
fn chart_helm_refuses_what_it_must_with_its_message() {
    let Some(py) = helm_python() else { return };
    const SCHEMA: &str = "values don't meet the specifications of the schema";
    let mut cases = vec![
        (
            case("KEDA and the HPA", json!({"keda": {"enabled": true}, "autoscaling": {"enabled": true}})),
            vec![SCHEMA, "'allOf' failed"],
        ),
        (
            case("migrations without the admin secret", json!({"migrations": {"enabled": true}})),
            vec!["migrations.secret.name is required when migrations.enabled"],
        ),
        (
            case("proxy without an instance", json!({"cloudSqlProxy": {"enabled": true}})),
            vec!["cloudSqlProxy.instanceConnectionName is required when cloudSqlProxy.enabled"],
        ),
        (
            case("grace below the drain", json!({"terminationGracePeriodSeconds": 20})),
            vec!["terminationGracePeriodSeconds (20) must be at least shutdown.graceSeconds + 5 (30)"],
        ),
        (
            case(
                "KEDA with no TriggerAuthentication",
                json!({"keda": {"enabled": true, "triggerAuthentication": {"create": false}}}),
            ),
            vec!["keda.triggerAuthentication.name is required"],
        ),
    ];
    // Values that break values.schema.json, and where the message points.
    for (what, values, at) in [
        ("unknown env", json!({"env": "prod"}), "at '/env'"),
        (
            "misspelled config key",
            json!({"config": {"pubsub": {"projectId": "x"}}}),
            "'projectId' not allowed",
        ),
        (
            "retry attempts out of range",
            json!({"config": {"retry": {"max_attempts": 0}}}),
            "at '/config/retry/max_attempts'",
        ),
        (
            "duration without unit",
            json!({"config": {"retry": {"max_backoff": "600"}}}),
            "at '/config/retry/max_backoff'",
        ),
        (
            "root allowed",
            json!({"podSecurityContext": {"runAsNonRoot": false}}),
            "at '/podSecurityContext/runAsNonRoot'",
        ),
        (
            "unknown top-level key",
            json!({"replicas": 3}),
            "'replicas' not allowed",
        ),
        (
            "netsuite_tba without its Secret",
            json!({"config": {"targets": {"netsuite": {"auth": {"kind": "netsuite_tba", "account": "1234567"}}}}}),
            "at '/secrets/netsuiteAuth/name'",
        ),
        (
            "netsuite_tba without an account",
            json!({"config": {"targets": {"netsuite": {"auth": {"kind": "netsuite_tba"}}}},
                "secrets": {"netsuiteAuth": {"name": "s"}}}),
            "at '/config/targets/netsuite/auth/account'",
        ),
        (
            "netsuite_oauth2 without a certificate id",
            json!({"config": {"targets": {"netsuite": {"auth": {"kind": "netsuite_oauth2", "account": "1234567", "client_id": "c"}}}},
                "secrets": {"netsuiteAuth": {"name": "s"}}}),
            "at '/config/targets/netsuite/auth/certificate_id'",
        ),
        (
            "hmac_sha256 without a secret",
            json!({"config": {"targets": {"suitex": {"auth": {"kind": "hmac_sha256"}}}}}),
            "at '/secrets/suitexAuth/name'",
        ),
        (
            "an unknown auth kind",
            json!({"config": {"targets": {"suitex": {"auth": {"kind": "oauth1"}}}}}),
            "at '/config/targets/suitex/auth/kind'",
        ),
        (
            "a realm in the host name form",
            json!({"config": {"targets": {"netsuite": {"auth": {"kind": "netsuite_tba", "account": "1234567-sb1"}}}},
                "secrets": {"netsuiteAuth": {"name": "s"}}}),
            "at '/config/targets/netsuite/auth/account'",
        ),
        (
            "migrate_on_start not a boolean",
            json!({"config": {"database": {"migrate_on_start": "no"}}}),
            "at '/config/database/migrate_on_start'",
        ),
        (
            "misspelled test key",
            json!({"test": {"enable": true}}),
            "'enable' not allowed",
        ),
        (
            "keda mode typo",
            json!({"keda": {"mode": "SubscriptionSise"}}),
            "at '/keda/mode'",
        ),
        (
            "keda value not a number",
            json!({"keda": {"value": "lots"}}),
            "at '/keda/value'",
        ),
        (
            "keda auth kind",
            json!({"keda": {"triggerAuthentication": {"kind": "Secret"}}}),
            "at '/keda/triggerAuthentication/kind'",
        ),
        (
            "runbook base not a URL",
            json!({"prometheusRule": {"runbookBaseUrl": "github.com/x"}}),
            "at '/prometheusRule/runbookBaseUrl'",
        ),
        (
            "exclude names no alert",
            json!({"prometheusRule": {"exclude": ["BackboneDeadLetters"]}}),
            "at '/prometheusRule/exclude/0'",
        ),
        (
            "dashboard key typo",
            json!({"grafanaDashboard": {"lable": "x"}}),
            "'lable' not allowed",
        ),
        (
            "backlog target zero",
            json!({"autoscaling": {"pubsubBacklog": {"targetAverageValue": 0}}}),
            "at '/autoscaling/pubsubBacklog/targetAverageValue'",
        ),
    ] {
        cases.push((case(what, values), vec![SCHEMA, at]));
    }
    // The template's own refusal of both autoscalers, for an install with
    // --skip-schema-validation: a copy of the chart whose schema lacks the
    // rule (lint mode only logs `fail`, so it takes a render).
    let copy = tempfile::tempdir().expect("tempdir");
    let chart_copy = copy.path().join("event-backbone");
    copy_dir(&chart_dir(), &chart_copy);
    let schema_path = chart_copy.join("values.schema.json");
    let mut schema: Value = serde_json::from_str(&read(&schema_path)).expect("schema JSON");
    schema
        .as_object_mut()
        .expect("schema object")
        .remove("allOf")
        .expect("the schema refuses both autoscalers with allOf");
    std::fs::write(&schema_path, schema.to_string()).expect("write schema");
    cases.push((
        Case {
            chart: Some(chart_copy),
            ..case(
                "KEDA and the HPA, schema skipped",
                json!({"keda": {"enabled": true}, "autoscaling": {"enabled": true}}),
            )
        },
        vec!["keda.enabled and autoscaling.enabled are exclusive"],
    ));

    let (cases, wants): (Vec<Case>, Vec<Vec<&str>>) = cases.into_iter().unzip();
    let answers = helm(&py, &cases);
    let mut wrong = Vec::new();
    for ((c, want), a) in cases.iter().zip(wants).zip(&answers) {
        match a["render_error"].as_str() {
            None => wrong.push(format!("{}: rendered", c.name)),
            Some(msg) if !want.iter().all(|w| msg.contains(w)) => {
                wrong.push(format!("{}: {msg:?} lacks {want:?}", c.name))
            }
            Some(_) => {}
        }
    }
    assert!(wrong.is_empty(), "refusals:\n{}", wrong.join("\n"));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let p = entry.expect("dir entry").path();
        let dest = to.join(p.file_name().expect("file name"));
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).expect("copy");
        }
    }
}

/// Issue 31: the NetworkPolicies cover every pod the chart makes (the
/// daemon, the migrate Job, the archive CronJob, the doctor pod) and
/// restrict their egress by default: no rule allows everything, only the
/// daemon's and doctor's reach the targets, only the daemon takes ingress.
#[test]
fn chart_helm_network_policies_cover_every_pod_and_restrict_egress() {
    let Some(py) = helm_python() else { return };
    let defaults_with_jobs = json!({
        "migrations": {"enabled": true, "secret": {"name": "db-admin"}},
        "archive": {
            "enabled": true,
            "secret": {"name": "db-archiver"},
            "recorder": {"secret": {"name": "db-archive-recorder"}},
        },
    });
    let answers = helm(
        &py,
        &[
            case("defaults", defaults_with_jobs),
            case("production", production_values()),
        ],
    );
    for a in &answers {
        assert_clean(a);
        let policies: Vec<&Value> = objects(a)
            .iter()
            .filter(|o| o["kind"] == "NetworkPolicy")
            .map(|o| &o["object"])
            .collect();
        let pods = [
            ("daemon", object(a, "Deployment", &full("")), true),
            ("migrate", object(a, "Job", &full("-migrate")), false),
            ("archive", object(a, "CronJob", &full("-archive")), false),
            ("doctor", object(a, "Pod", &full("-doctor")), true),
        ];
        for (what, obj, reaches_targets) in pods {
            let labels = pod_labels(obj);
            let mine: Vec<&&Value> = policies.iter().filter(|p| selects(p, labels)).collect();
            assert_eq!(
                mine.len(),
                1,
                "{}: {what} is selected by {} policies",
                a["name"],
                mine.len()
            );
            let p = &mine[0]["spec"];
            let types: Vec<&str> = p["policyTypes"]
                .as_array()
                .expect("policyTypes")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert!(
                types.contains(&"Egress"),
                "{}: {what}'s egress is open: {types:?}",
                a["name"]
            );
            let egress = p["egress"].as_array().expect("egress rules");
            for rule in egress {
                assert!(
                    rule.get("ports").is_some() || rule.get("to").is_some(),
                    "{}: {what} has an allow-all rule {rule}",
                    a["name"]
                );
            }
            let https_anywhere_for_targets = egress.iter().any(|r| {
                r["to"].to_string().contains("0.0.0.0/0")
                    && r["ports"].to_string().contains("443")
                    && !r["ports"].to_string().contains("3307")
            });
            assert!(https_anywhere_for_targets, "{what}: Google APIs over HTTPS");
            let target_rule = egress
                .iter()
                .filter(|r| r["ports"].to_string().contains("443"))
                .count();
            assert_eq!(
                target_rule,
                if reaches_targets { 2 } else { 1 },
                "{}: {what}: Google APIs, and the targets for the daemon and doctor only",
                a["name"]
            );
            let ingress = p["ingress"].as_array().map_or(0, Vec::len);
            assert_eq!(
                ingress > 0,
                what == "daemon",
                "{}: {what}'s ingress: {}",
                a["name"],
                p["ingress"]
            );
        }
    }
}
