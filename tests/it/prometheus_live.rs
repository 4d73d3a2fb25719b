//! The operator's kit against a live Prometheus: Debian's `prometheus`
//! server (installed by scripts/tools.sh), started by the test on a free
//! loopback port with a temp storage dir, scrapes a running daemon every
//! second and evaluates the shipped rules every second. The test makes real
//! conditions happen (a dead letter parked, a consumer crash-looping,
//! Pub/Sub cut off, the database down, a slow target, a gap in a record's
//! versions, the database refusing dead letters) and asserts through Prometheus' HTTP
//! API that the matching alerts go pending and firing with their labels and
//! runbook_url, and that those whose expression has no range window resolve
//! when the condition ends. Then every query of every panel of the Grafana
//! dashboard is evaluated against the same Prometheus.
//!
//! One honest change to the rules: a rule's `for:` (5 to 30 minutes) cannot
//! elapse in a test, so the test loads a copy whose `for:` values are all
//! [`TEST_FOR`]; expressions, labels and annotations are the shipped ones,
//! untouched (the copy is made from the parsed file, only `for` replaced).
//! Range windows inside expressions (`increase(…[15m])`) are left as they
//! are: an alert built on one fires at once but resolves only when its
//! window has passed, so the test does not wait for those to resolve.
//!
//! A new case is a [`Condition`] variant, its arm in [`Condition::start`]
//! and [`Condition::end`], and a row of [`CASES`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backbone::pubsub::publisher::Publishers;
use backbone::store::dead_letters::DlqFilter;
use backbone::topology::ConsumerKind;
use serde_json::{json, Value};

use crate::deliver::{Reply, Sink, NS, SX};
use crate::support::*;

/// What every rule's `for:` becomes in the test's copy of the rules.
const TEST_FOR: &str = "2s";
/// Longest wait for an alert to fire or resolve, or Prometheus to start.
const ALERT_WAIT: Duration = Duration::from_secs(60);
/// The `namespace` label the scrape gives the daemon's series.
const NAMESPACE: &str = "it";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// The conditions and the alerts they must fire

/// Something that goes wrong, made to happen for real.
#[derive(Debug, Clone, Copy)]
enum Condition {
    /// The netsuite target answers 400: the delivery is dead-lettered and
    /// parked. Ends when the operator, the target fixed, replays it.
    DeadLetterParked,
    /// The merge consumer's task dies four times (as a crash would end it)
    /// and is restarted each time.
    ConsumerCrashLoop,
    /// The daemon's connection to Pub/Sub is cut (a hung network).
    PubsubCut,
    /// The database refuses connections while an event arrives.
    DatabaseDown,
    /// The netsuite target takes 6 s to answer (within its 10 s timeout).
    SlowTarget,
    /// A record's version 1 arrives without its version 0 and waits past
    /// `merge.gap_timeout` (3 s here): dead-lettered `gap` and parked.
    MergeGap,
    /// The database refuses dead letters (a schema behind the binary: the
    /// `dead_letters` table renamed away) while a delivery is dead-lettered.
    ParkRefused,
    /// The netsuite target refuses connections while deliveries to it
    /// arrive: its circuit opens (docs/spec.md §4.2).
    TargetCircuitOpen,
    /// The netsuite target answers 429 (`Retry-After: 0`) to a burst of
    /// requests: throttling, paced, no attempt consumed.
    TargetThrottled,
    /// The netsuite target refuses our credentials (401) for two records in
    /// a row: its circuit opens with cause `auth` (docs/spec.md §4.3). Ends when it
    /// accepts them again.
    TargetAuthFailing,
}

/// An alert a condition must fire: its name, the labels it must carry
/// besides the rule's own, the consumer whose subscription it must name (if
/// it must name one), and whether it must resolve after the condition ends
/// within the test (not when its expression has a range window).
struct Expect {
    alert: &'static str,
    labels: &'static [&'static str],
    on: Option<ConsumerKind>,
    resolves: bool,
}

const fn fires(alert: &'static str, labels: &'static [&'static str], resolves: bool) -> Expect {
    Expect {
        alert,
        labels,
        on: None,
        resolves,
    }
}

impl Expect {
    /// The alert must carry `subscription` = this consumer's.
    const fn on(self, kind: ConsumerKind) -> Expect {
        Expect {
            on: Some(kind),
            ..self
        }
    }
}

/// Condition → the alerts it fires, in the order the test drives them. A
/// case starts once its alerts are inactive (an earlier one may share them).
const CASES: &[(Condition, &[Expect])] = &[
    (
        Condition::DeadLetterParked,
        &[fires("BackboneDeadLettersWaiting", &[], true)],
    ),
    (
        Condition::ConsumerCrashLoop,
        // increase(…[15m]): resolves 15 minutes later.
        &[fires(
            "BackboneConsumerRestarting",
            &["subscription"],
            false,
        )],
    ),
    (
        Condition::PubsubCut,
        &[fires("BackboneConsumerDown", &["subscription"], true)],
    ),
    (
        Condition::DatabaseDown,
        &[fires("BackboneMessagesHeld", &["subscription"], true)],
    ),
    (
        Condition::SlowTarget,
        // rate(…[5m]): resolves 5 minutes later. The message held through
        // the database outage above fires it on the merge subscription too
        // (its processing time counts the hold): this case asks for the
        // delivery's.
        &[fires("BackboneSlowProcessing", &["subscription"], false).on(ConsumerKind::Netsuite)],
    ),
    (
        Condition::MergeGap,
        // increase(…[1h]); the gap's dead letter stays parked (a person
        // decides what to do with it).
        &[
            fires("BackboneMergeGaps", &[], false),
            fires("BackboneDeadLettersWaiting", &[], false),
        ],
    ),
    (
        Condition::TargetCircuitOpen,
        &[fires("BackboneTargetCircuitOpen", &["target"], true)],
    ),
    (
        Condition::TargetAuthFailing,
        &[fires(
            "BackboneTargetAuthFailing",
            &["target", "cause"],
            true,
        )],
    ),
    (
        Condition::TargetThrottled,
        // rate(…[5m]): resolves minutes later.
        &[fires("BackboneTargetThrottled", &["target"], false)],
    ),
    (
        Condition::ParkRefused,
        // increase(backbone_park_failures_total[15m]) keeps it 15 minutes.
        &[fires("BackboneDeadLettersUnparked", &[], false)],
    ),
];

/// The daemon and what the conditions act on.
struct World {
    app: TestApp,
    sink: Sink,
    db_proxy: Proxy,
    pubsub_proxy: Proxy,
    target_proxy: Proxy,
    publishers: std::sync::Arc<Publishers>,
    seq: u32,
}

impl World {
    async fn publish(&mut self, source: &str) {
        self.seq += 1;
        let rid = format!("live-{}", self.seq);
        let ev = raw_event(
            source,
            "customer",
            &rid,
            0,
            "2025-01-01T10:00:00Z",
            json!({"n": self.seq}),
        );
        publish_raw(&self.publishers, &ev).await;
    }
}

impl Condition {
    async fn start(self, w: &mut World) {
        match self {
            Condition::DeadLetterParked => {
                w.sink.script(NS, &[Reply::Status(400)]);
                w.publish("suitex").await;
                let store = w.app.store.clone();
                assert!(
                    eventually(ALERT_WAIT, || async {
                        store.pending_dead_letters().await.unwrap_or(0) == 1
                    })
                    .await,
                    "the 400 was never parked"
                );
            }
            Condition::ConsumerCrashLoop => {
                let merge = w.app.topology.subscription_id(ConsumerKind::Merge);
                for i in 0..4 {
                    let health = w.app.health();
                    assert!(
                        eventually(ALERT_WAIT, || async {
                            health.snapshot().get(&merge).is_some_and(|c| c.up)
                        })
                        .await,
                        "the merge consumer was not up before kill {i}"
                    );
                    assert!(health.kill_consumer(&merge), "no merge consumer to kill");
                    // Down for at least the first restart backoff (0.5 s).
                    assert!(
                        eventually(Duration::from_secs(5), || async {
                            health.snapshot().get(&merge).is_some_and(|c| !c.up)
                        })
                        .await
                    );
                }
            }
            Condition::PubsubCut => w.pubsub_proxy.cut(),
            Condition::DatabaseDown => {
                w.db_proxy.refuse();
                w.publish("netsuite").await;
            }
            Condition::SlowTarget => {
                w.sink.script(NS, &[Reply::Hang(Duration::from_secs(6))]);
                w.publish("suitex").await;
            }
            Condition::MergeGap => {
                w.seq += 1;
                let ev = raw_event(
                    "netsuite",
                    "customer",
                    &format!("gap-{}", w.seq),
                    1,
                    "2025-01-01T10:00:00Z",
                    json!({"n": w.seq}),
                );
                publish_raw(&w.publishers, &ev).await;
            }
            Condition::TargetCircuitOpen => {
                w.target_proxy.refuse();
                for _ in 0..5 {
                    w.publish("suitex").await;
                }
            }
            Condition::TargetAuthFailing => {
                w.sink.script(NS, &vec![Reply::Status(401); 1000]);
                w.publish("suitex").await;
                w.publish("suitex").await;
            }
            Condition::TargetThrottled => {
                // rate() over the series' life so far (minutes): enough 429s
                // to stay above 1/s for the rule's `for`.
                w.sink.script(NS, &vec![Reply::RetryAfter(429, 0); 800]);
                w.publish("suitex").await;
            }
            Condition::ParkRefused => {
                rename(w, "dead_letters", "dead_letters_away").await;
                w.sink.script(NS, &[Reply::Status(400)]);
                w.publish("suitex").await;
            }
        }
    }

    async fn end(self, w: &mut World) {
        match self {
            Condition::DeadLetterParked => {
                // The target fixed (the sink answers 200 again), the
                // operator replays what was parked.
                let report = backbone::dlq::replay(
                    &w.app.store,
                    &w.publishers,
                    &DlqFilter::default(),
                    false,
                )
                .await
                .expect("replay");
                println!("replayed: {report:?}");
                let store = w.app.store.clone();
                assert!(
                    eventually(ALERT_WAIT, || async {
                        store.pending_dead_letters().await.unwrap_or(1) == 0
                    })
                    .await,
                    "the replayed dead letter is still pending"
                );
            }
            Condition::ConsumerCrashLoop | Condition::SlowTarget | Condition::MergeGap => {}
            Condition::PubsubCut => w.pubsub_proxy.restore(),
            Condition::DatabaseDown => w.db_proxy.restore(),
            // The dead letter is parked at its next delivery, after the
            // park stage's hold; the test does not wait for it.
            Condition::ParkRefused => rename(w, "dead_letters_away", "dead_letters").await,
            Condition::TargetCircuitOpen => w.target_proxy.restore(),
            // The credentials are accepted again: the next probe closes it.
            Condition::TargetAuthFailing => w.sink.clear(NS),
            // The script runs out by itself.
            Condition::TargetThrottled => {}
        }
    }
}

/// Renames a table of the test's database, as the test's administrator.
async fn rename(w: &World, from: &str, to: &str) {
    sqlx::query(&format!("RENAME TABLE {from} TO {to}"))
        .execute(w.app.store.pool())
        .await
        .unwrap_or_else(|e| panic!("RENAME TABLE {from} TO {to}: {e}"));
}

// ---------------------------------------------------------------------------
// Prometheus

/// The server, killed and reaped when dropped (a failing test too).
struct Prometheus {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts `prometheus` scraping `target` every second with `rules`
    /// loaded; None (a skip) when the binary is missing outside CI.
    async fn start(target: SocketAddr, rules: &Value) -> Option<Prometheus> {
        if Command::new("prometheus")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            let msg = "the prometheus server is not installed (Debian package prometheus; run scripts/tools.sh)";
            if std::env::var("CI").is_ok() {
                panic!("{msg}");
            }
            println!("skipped: {msg}");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let rules_path = dir.path().join("rules.yml");
        std::fs::write(&rules_path, serde_norway::to_string(rules).expect("YAML")).expect("rules");
        let config = json!({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [rules_path],
            "scrape_configs": [{
                "job_name": "event-backbone",
                "static_configs": [{"targets": [target.to_string()], "labels": {"namespace": NAMESPACE}}],
            }],
        });
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(
            &config_path,
            serde_norway::to_string(&config).expect("YAML"),
        )
        .expect("config");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        let p = Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("http client"),
        };
        let up = eventually(ALERT_WAIT, || async {
            p.query("up == 1").await.is_ok_and(|r| !r.is_empty())
        })
        .await;
        assert!(up, "Prometheus never scraped the daemon:\n{}", p.log());
        Some(p)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, String> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .query(query)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: Value = resp.json().await.map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        Ok(body["data"].clone())
    }

    /// An instant query's result vector (a parse or evaluation error: Err).
    async fn query(&self, q: &str) -> Result<Vec<Value>, String> {
        let data = self.api("/api/v1/query", &[("query", q)]).await?;
        Ok(match data["resultType"].as_str() {
            Some("vector") | Some("matrix") => {
                data["result"].as_array().cloned().unwrap_or_default()
            }
            // A scalar or string is one value.
            _ => vec![data["result"].clone()],
        })
    }

    /// The active alerts named `name` (on subscription `sub`, if given).
    async fn alerts(&self, name: &str, sub: Option<&str>) -> Vec<Value> {
        self.api("/api/v1/alerts", &[])
            .await
            .map(|d| d["alerts"].as_array().cloned().unwrap_or_default())
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a["labels"]["alertname"] == name)
            .filter(|a| sub.is_none_or(|s| a["labels"]["subscription"] == s))
            .collect()
    }

    /// Waits until `name` fires; the states seen on the way and the alert.
    async fn wait_firing(&self, name: &str, sub: Option<&str>) -> (BTreeSet<String>, Value) {
        let deadline = Instant::now() + ALERT_WAIT;
        let mut seen = BTreeSet::new();
        while Instant::now() < deadline {
            for a in self.alerts(name, sub).await {
                let state = a["state"].as_str().unwrap_or_default().to_owned();
                seen.insert(state.clone());
                if state == "firing" {
                    return (seen, a);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "{name} never fired (states seen: {seen:?}); active alerts: {}",
            self.api("/api/v1/alerts", &[]).await.unwrap_or_default()
        );
    }

    async fn wait_resolved(&self, name: &str, sub: Option<&str>) -> Duration {
        let started = Instant::now();
        while started.elapsed() < ALERT_WAIT {
            if self.alerts(name, sub).await.is_empty() {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("{name} did not resolve: {:?}", self.alerts(name, sub).await);
    }
}

/// The shipped rules with every `for:` set to [`TEST_FOR`], nothing else
/// changed; and the shipped rules by alert name.
fn test_rules() -> (Value, BTreeMap<String, Value>) {
    let shipped_text = read(&root().join("docs/alerts/event-backbone.rules.yml"));
    assert!(
        read(&root().join("helm/event-backbone/files/event-backbone.rules.yml")) == shipped_text,
        "the chart's copy of the rules differs from docs/alerts/event-backbone.rules.yml"
    );
    let shipped: Value = serde_norway::from_str(&shipped_text).expect("rules YAML");
    let mut copy = shipped.clone();
    let mut by_name = BTreeMap::new();
    for group in copy["groups"].as_array_mut().expect("groups") {
        for rule in group["rules"].as_array_mut().expect("rules") {
            by_name.insert(
                rule["alert"].as_str().expect("alert").to_owned(),
                rule.clone(),
            );
            if let Some(f) = rule.get_mut("for") {
                *f = TEST_FOR.into();
            }
        }
    }
    (copy, by_name)
}

/// A dashboard query with Grafana's variables replaced as Grafana would
/// for this Prometheus.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "15s")
        .replace("$__interval", "5s")
        .replace("$__range", "5m")
        .replace("${namespace}", NAMESPACE)
        .replace("$namespace", NAMESPACE)
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_live_alerts_fire_and_resolve_and_every_dashboard_query_evaluates() {
    let started = Instant::now();
    let (rules, shipped) = test_rules();
    let sink = Sink::start().await;
    let target_proxy = Proxy::start(sink.addr.to_string()).await;
    let ns_url = format!("http://127.0.0.1:{}{NS}", target_proxy.port);
    let db_proxy = Proxy::start(&mariadb_addr()).await;
    let pubsub_proxy = Proxy::start(emulator_host()).await;
    let overrides = Overrides::new()
        .targets(&ns_url, &sink.url(SX))
        .database_via(db_proxy.port)
        .vars(&[
            (
                "PUBSUB_EMULATOR_HOST",
                &format!("127.0.0.1:{}", pubsub_proxy.port),
            ),
            ("BACKBONE__PUBSUB__PROBE_INTERVAL", "1s"),
            ("BACKBONE__DATABASE__CONNECT_TIMEOUT", "1s"),
            ("BACKBONE__RETRY__INITIAL_BACKOFF", "100ms"),
            ("BACKBONE__RETRY__MAX_BACKOFF", "1s"),
            ("BACKBONE__TARGETS__NETSUITE__TIMEOUT", "10s"),
            ("BACKBONE__MERGE__GAP_TIMEOUT", "3s"),
            ("BACKBONE__MERGE__GAP_CHECK_INTERVAL", "1s"),
            ("BACKBONE__TARGETS__NETSUITE__PROBE_MAX_INTERVAL", "1s"),
        ])
        .local_snapshots();
    let Some(app) = TestApp::spawn(Db::Mariadb, overrides).await else {
        return;
    };
    let Some(prom) = Prometheus::start(app.metrics_addr(), &rules).await else {
        return;
    };
    let publishers = publishers(&app.topology).await;
    let subscriptions: BTreeSet<String> = ConsumerKind::all()
        .iter()
        .map(|c| app.topology.subscription_id(*c))
        .collect();
    let mut w = World {
        app,
        sink,
        db_proxy,
        pubsub_proxy,
        target_proxy,
        publishers,
        seq: 0,
    };
    // Traffic through every stage, for the dashboard's series.
    w.publish("netsuite").await;
    w.publish("suitex").await;
    assert!(
        w.sink.wait_for(SX, 1, ALERT_WAIT).await.len() == 1
            && w.sink.wait_for(NS, 1, ALERT_WAIT).await.len() == 1,
        "the first events were not delivered"
    );
    println!("daemon and Prometheus up after {:?}", started.elapsed());

    let topology = w.app.topology.clone();
    let sub = |e: &Expect| e.on.map(|k| topology.subscription_id(k));
    let mut fired = Vec::new();
    for (condition, expects) in CASES {
        // An earlier condition may have fired the same alert (the crash
        // loop's last backoff, 4 s, outlasts BackboneConsumerDown's `for`):
        // start from quiet.
        for e in *expects {
            prom.wait_resolved(e.alert, sub(e).as_deref()).await;
        }
        let t0 = Instant::now();
        condition.start(&mut w).await;
        for e in *expects {
            let (states, alert) = prom.wait_firing(e.alert, sub(e).as_deref()).await;
            let rule = &shipped[e.alert];
            assert_eq!(
                alert["labels"]["severity"], rule["labels"]["severity"],
                "{}",
                e.alert
            );
            assert_eq!(
                alert["annotations"]["runbook_url"], rule["annotations"]["runbook_url"],
                "{}",
                e.alert
            );
            assert!(
                alert["annotations"]["summary"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{}",
                e.alert
            );
            for label in e.labels {
                let v = alert["labels"][*label].as_str().unwrap_or_default();
                assert!(!v.is_empty(), "{} lacks label {label}: {alert}", e.alert);
                if *label == "subscription" {
                    assert!(
                        subscriptions.contains(v),
                        "{}: {v} is no subscription",
                        e.alert
                    );
                }
            }
            if rule.get("for").is_some() {
                assert!(
                    states.contains("pending"),
                    "{} fired without pending: {states:?}",
                    e.alert
                );
            }
            fired.push(format!(
                "{:?} → {} {{{}}} firing after {:?} (states seen {states:?})",
                condition,
                e.alert,
                e.labels
                    .iter()
                    .map(|l| format!("{l}={}", alert["labels"][*l].as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(","),
                t0.elapsed()
            ));
        }
        condition.end(&mut w).await;
        for e in expects.iter().filter(|e| e.resolves) {
            let after = prom.wait_resolved(e.alert, sub(e).as_deref()).await;
            fired.push(format!(
                "{:?} ended → {} resolved after {after:?}",
                condition, e.alert
            ));
        }
    }
    println!("alerts:\n  {}", fired.join("\n  "));
    assert!(
        w.app.health().all_up(),
        "every consumer must be up again after the conditions"
    );

    // Every panel's every query, variables substituted, parses and evaluates;
    // the overview row's return series.
    let dash: Value = serde_json::from_str(&read(&root().join("docs/grafana/event-backbone.json")))
        .expect("JSON");
    let panels = dash["panels"].as_array().expect("panels");
    let second_row = panels
        .iter()
        .filter(|p| p["type"] == "row")
        .nth(1)
        .and_then(|p| p["gridPos"]["y"].as_u64())
        .expect("a second row");
    let mut failures = Vec::new();
    let mut evaluated = 0;
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let overview = p["gridPos"]["y"].as_u64().unwrap_or(u64::MAX) < second_row;
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = substitute(t["expr"].as_str().expect("expr"));
            evaluated += 1;
            match prom.query(&expr).await {
                Err(e) => failures.push(format!("{}: {expr}: {e}", p["title"])),
                Ok(r) if overview && r.is_empty() => {
                    failures.push(format!("{} (overview): {expr}: no series", p["title"]))
                }
                Ok(_) => {}
            }
        }
    }
    // The namespace variable's query: label_values(backbone_build_info, namespace).
    let ns = prom
        .query("count by (namespace) (backbone_build_info)")
        .await
        .expect("query");
    assert_eq!(ns.len(), 1, "{ns:?}");
    assert_eq!(ns[0]["metric"]["namespace"], NAMESPACE);
    assert!(evaluated > 30, "only {evaluated} dashboard queries");
    assert!(
        failures.is_empty(),
        "dashboard queries:\n{}",
        failures.join("\n")
    );
    println!(
        "{evaluated} dashboard queries evaluated; whole test {:?}",
        started.elapsed()
    );
    w.app.stop().await;
}
