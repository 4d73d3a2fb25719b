//! `event-backbone bench pipeline`: the whole daemon — all five consumers,
//! its normal configuration — draining a raw backlog through merge and both
//! deliveries into two in-process stand-in targets, against an ack-only drain
//! of the same three subscriptions' message volume measured in the same run.
//!
//! The daemon runs as a child process (this binary with `run`), so its peak
//! RSS is its own. Fail-closed: any lost, doubled, unexpected or reordered
//! delivery, any merged event missing, any parked dead letter makes it exit
//! non-zero with the counts. Every scratch resource (child, topics and
//! subscriptions, database, temp files) is removed on every path.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::extract::State;
use axum::http::StatusCode;
use bytes::Bytes;
use google_cloud_pubsub::client::Subscriber;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::merge::{self, Gen};
use crate::app;
use crate::config::Settings;
use crate::model::merged_event::MergedEvent;
use crate::model::raw_event::Source;
use crate::pubsub::publisher::Publishers;
use crate::pubsub::{clients, provision};
use crate::stages::deliver::routing::{self, Route};
use crate::stages::merge::batch::SEQUENCE_ATTRIBUTE;
use crate::store::merged::MergedRow;
use crate::store::{scratch, Store};
use crate::topology::{ConsumerKind, TopicKind, Topology};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Raw events in the backlog (duplicates come on top).
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// Records (ordering keys) the events are spread over.
    #[arg(long, default_value_t = 200)]
    pub records: usize,
    /// Share of events published twice.
    #[arg(long, default_value_t = 0.05)]
    pub duplicate_rate: f64,
    /// Share of events built on a stale base version from the other source.
    #[arg(long, default_value_t = 0.10)]
    pub conflict_rate: f64,
    /// The daemon's database: mysql (a fresh database on the
    /// --mysql-admin-url server) or sqlite (a temp file).
    #[arg(long, default_value = "mysql", value_parser = ["mysql", "sqlite"])]
    pub database: String,
    #[arg(long, default_value = "mysql://root@127.0.0.1:3306/mysql")]
    pub mysql_admin_url: String,
    /// No ack-only baseline (and no ratio), e.g. for a peak-RSS run.
    #[arg(long)]
    pub skip_baseline: bool,
    /// Give up when no message is processed and no delivery arrives for this long.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub stall_timeout: Duration,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

const TARGETS: [Source; 2] = [Source::Netsuite, Source::Suitex];

// ---------------------------------------------------------------- report

#[derive(Debug, Serialize)]
struct Latency {
    p50: f64,
    p99: f64,
}

#[derive(Debug, Default, Serialize)]
struct TargetReport {
    /// Merged events routed to this target (each must arrive exactly once).
    expected: usize,
    /// Requests that arrived.
    requests: usize,
    missing: usize,
    doubled: usize,
    /// A (record, version) not routed to this target, or under another event id.
    unexpected: usize,
    /// A version that arrived after a later or equal one of its record.
    out_of_order: usize,
    /// A body without record_type, record_id, version and event_id.
    unreadable: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_ms_raw_publish_to_delivered: Option<Latency>,
}

impl TargetReport {
    fn failures(&self) -> usize {
        self.missing + self.doubled + self.unexpected + self.out_of_order + self.unreadable
    }
}

#[derive(Debug, Serialize)]
struct Baseline {
    /// What it drained: the raw backlog on the merge subscription plus the
    /// merged events on each of the two delivery subscriptions.
    raw_messages: usize,
    merged_messages_per_delivery_subscription: usize,
    messages: usize,
    seconds: f64,
    messages_per_s: f64,
}

#[derive(Debug, Serialize)]
struct StepMean {
    step: String,
    mean_ms: f64,
    count: f64,
}

#[derive(Debug, Serialize)]
pub(super) struct Report {
    pub(super) database: String,
    pub(super) records: usize,
    /// Unique raw events; `raw_messages` adds the duplicates.
    pub(super) events: usize,
    pub(super) duplicates: usize,
    pub(super) raw_messages: usize,
    pub(super) merged_events: usize,
    backlog_publish_seconds: f64,
    daemon_ready_seconds: Option<f64>,
    /// Daemon start → the last expected delivery arrived at either target.
    pub(super) drain_seconds: f64,
    /// raw_messages / drain_seconds.
    pub(super) drain_events_per_s: f64,
    /// (raw_messages + 2 × merged_events) / drain_seconds: the same messages
    /// the baseline drains.
    pipeline_messages_per_s: f64,
    targets: BTreeMap<&'static str, TargetReport>,
    daemon_peak_rss_mib: Option<f64>,
    daemon_retry_attempts: f64,
    daemon_dead_letters: f64,
    /// Mean time per step of each stage, from the daemon's
    /// `backbone_stage_step_duration_seconds` (merge: per batch; delivery:
    /// per message): where the drain's time went.
    steps: BTreeMap<String, Vec<StepMean>>,
    baseline_ack_only: Option<Baseline>,
    /// pipeline_messages_per_s / baseline messages_per_s (= baseline seconds
    /// / drain seconds: both drain the same messages).
    ratio: Option<f64>,
    /// Lost, doubled, unexpected, reordered or unreadable deliveries, missing
    /// merged events, pending raw events and parked dead letters.
    pub(super) failures: usize,
    pub(super) failure_detail: Vec<String>,
}

impl Report {
    fn render(&self) -> String {
        let mut s = String::new();
        let mut line = |l: String| {
            s.push_str(&l);
            s.push('\n');
        };
        line(format!(
            "bench pipeline ({}): {} raw messages ({} events + {} duplicates) over {} records, {} merged events",
            self.database, self.raw_messages, self.events, self.duplicates, self.records, self.merged_events
        ));
        line(format!(
            "  backlog published in {:.2} s; daemon (all five consumers) ready after {}",
            self.backlog_publish_seconds,
            self.daemon_ready_seconds
                .map(|s| format!("{s:.2} s"))
                .unwrap_or_else(|| "n/a".into())
        ));
        line(format!(
            "  drain: {:.2} s from daemon start to the last delivery = {:.0} events/s (raw messages / drain time)",
            self.drain_seconds, self.drain_events_per_s
        ));
        for (name, t) in &self.targets {
            let lat = t
                .latency_ms_raw_publish_to_delivered
                .as_ref()
                .map(|l| format!("p50 {:.0} ms, p99 {:.0} ms", l.p50, l.p99))
                .unwrap_or_else(|| "n/a".into());
            line(format!(
                "  {name}: {} of {} routed merged events delivered; raw publish -> delivered {lat}",
                t.requests, t.expected
            ));
            if t.failures() > 0 {
                line(format!(
                    "    missing {}, doubled {}, unexpected {}, out of order {}, unreadable {}",
                    t.missing, t.doubled, t.unexpected, t.out_of_order, t.unreadable
                ));
            }
        }
        line(format!(
            "  daemon peak RSS (VmHWM of the child process): {}",
            self.daemon_peak_rss_mib
                .map(|m| format!("{m:.1} MiB"))
                .unwrap_or_else(|| "n/a".into())
        ));
        line(format!(
            "  daemon retries: {}, dead letters: {}",
            self.daemon_retry_attempts, self.daemon_dead_letters
        ));
        for (stage, steps) in &self.steps {
            let total: f64 = steps.iter().map(|s| s.mean_ms).sum();
            let parts: Vec<String> = steps
                .iter()
                .map(|s| format!("{} {:.2}", s.step, s.mean_ms))
                .collect();
            let n = steps.first().map_or(0.0, |s| s.count);
            line(format!(
                "  steps {stage} (ms, mean of {n:.0}; total {total:.2}): {}",
                parts.join(", ")
            ));
        }
        match (&self.baseline_ack_only, self.ratio) {
            (Some(b), Some(r)) => {
                line(format!(
                    "  ack-only baseline: {} messages ({} raw on the merge subscription + {} merged on each delivery subscription) in {:.2} s = {:.0} msg/s",
                    b.messages, b.raw_messages, b.merged_messages_per_delivery_subscription, b.seconds, b.messages_per_s
                ));
                line(format!(
                    "  pipeline: the same {} messages in {:.2} s = {:.0} msg/s",
                    b.messages, self.drain_seconds, self.pipeline_messages_per_s
                ));
                line(format!(
                    "  ratio (pipeline msg/s / ack-only msg/s): {r:.2} (goal >= 0.8)"
                ));
            }
            _ => line("  ack-only baseline: skipped".into()),
        }
        if self.failures == 0 {
            line("  every routed merged event arrived exactly once, in per-record order, at both targets".into());
        } else {
            line(format!("  FAILED: {} problems", self.failures));
            for d in &self.failure_detail {
                line(format!("    {d}"));
            }
        }
        s
    }
}

// ---------------------------------------------------------------- entry

/// Everything the run creates, removed by [`Scratch::teardown`] on every path.
#[derive(Default)]
pub(super) struct Scratch {
    daemon: Option<tokio::process::Child>,
    /// The daemon's database, for a caller that reads it before teardown
    /// (`bench storage`).
    pub(super) db_url: Option<String>,
    daemon_log: Option<PathBuf>,
    topologies: Vec<Topology>,
    mysql: Option<(String, String)>,
    stop_targets: CancellationToken,
    dir: Option<tempfile::TempDir>,
}

impl Scratch {
    async fn stop_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Leaves the MariaDB database out of the teardown; its URL.
    pub(super) fn keep_mysql(&mut self) -> Option<String> {
        self.mysql.take().and(self.db_url.clone())
    }

    pub(super) async fn teardown(&mut self, ep: &clients::Endpoint) {
        self.stop_daemon().await;
        self.stop_targets.cancel();
        for t in self.topologies.drain(..) {
            merge::teardown(&t, ep, &[]).await;
        }
        if let Some((admin, name)) = self.mysql.take() {
            scratch::drop_mysql(&admin, &name).await;
        }
        self.dir.take();
    }

    /// The end of the daemon's log, for a failed run.
    pub(super) fn log_tail(&self, lines: usize) -> Option<String> {
        let text = std::fs::read_to_string(self.daemon_log.as_ref()?).ok()?;
        let all: Vec<&str> = text.lines().collect();
        Some(all[all.len().saturating_sub(lines)..].join("\n"))
    }
}

pub async fn run(settings: Settings, args: Args) -> anyhow::Result<i32> {
    if settings.pubsub.emulator_host.is_none() {
        bail!("bench needs the Pub/Sub emulator: set PUBSUB_EMULATOR_HOST (scripts/services.sh starts one)");
    }
    if args.events == 0 || args.records == 0 {
        bail!("--events and --records must be at least 1");
    }
    let ep = app::endpoint(&settings);
    let mut scratch = Scratch::default();
    // Run, tear down, then propagate: teardown must happen on every path.
    let outcome = bench(&settings, &args, &ep, &mut scratch).await;
    let failed = !matches!(&outcome, Ok(r) if r.failures == 0);
    if failed {
        if let Some(tail) = scratch.log_tail(30) {
            eprintln!("--- last lines of the daemon's log ---\n{tail}\n---");
        }
    }
    scratch.teardown(&ep).await;
    let report = outcome?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    if report.failures > 0 {
        eprintln!(
            "bench pipeline failed: {} lost, doubled, unexpected or reordered deliveries or other problems: {}",
            report.failures,
            report.failure_detail.join("; ")
        );
        return Ok(1);
    }
    Ok(0)
}

pub(super) async fn bench(
    settings: &Settings,
    args: &Args,
    ep: &clients::Endpoint,
    scratch: &mut Scratch,
) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir()?;
    let dir_path = dir.path().to_path_buf();
    scratch.dir = Some(dir);
    let gens = merge::generate(
        args.events,
        args.records,
        args.duplicate_rate,
        args.conflict_rate,
        args.seed,
    );
    let duplicates = gens.iter().filter(|g| g.duplicate).count();
    let raw_messages = gens.len() + duplicates;

    // A fresh database, migrated here so the daemon's start is not a migration.
    let db_url = if args.database == "sqlite" {
        format!("sqlite://{}/pipeline.db?mode=rwc", dir_path.display())
    } else {
        let (url, name) = scratch::create_mysql(&args.mysql_admin_url).await?;
        scratch.mysql = Some((args.mysql_admin_url.clone(), name));
        url
    };
    let store = Store::connect(&db_url, 2, Duration::from_secs(10)).await?;
    store.migrate().await?;
    store.close().await;
    scratch.db_url = Some(db_url.clone());

    let topo = Topology::new(settings.env, unique_project());
    scratch.topologies.push(topo.clone());
    provision::provision(&topo, ep).await?;

    let netsuite = StandIn::start(scratch.stop_targets.clone()).await?;
    let suitex = StandIn::start(scratch.stop_targets.clone()).await?;

    // The backlog, before the daemon exists.
    let publishers = Arc::new(Publishers::new(topo.clone(), ep).await?);
    let t = Instant::now();
    let published_at = publish_backlog(&publishers, &gens).await?;
    publishers.flush().await;
    let backlog_publish_seconds = t.elapsed().as_secs_f64();
    drop(publishers);

    let metrics_addr = free_addr()?;
    let log = dir_path.join("daemon.log");
    scratch.daemon_log = Some(log.clone());
    let started = Instant::now();
    let child = spawn_daemon(
        settings,
        &DaemonWiring {
            project: &topo.project_id,
            db_url: &db_url,
            netsuite: &netsuite.url(),
            suitex: &suitex.url(),
            metrics: metrics_addr,
            admin: free_addr()?,
            dir: &dir_path,
            log: &log,
        },
    )?;
    let pid = child.id();
    scratch.daemon = Some(child);

    let watch = Watch {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?,
        metrics_addr,
        merge_sub: topo.subscription_id(ConsumerKind::Merge),
        deliver_subs: [
            topo.subscription_id(ConsumerKind::Netsuite),
            topo.subscription_id(ConsumerKind::Suitex),
        ],
    };
    let drained = wait_drained(
        &watch,
        scratch,
        raw_messages,
        gens.len(),
        [&netsuite, &suitex],
        args.stall_timeout,
    )
    .await?;
    let peak_rss = pid.and_then(peak_rss_mib);
    let final_metrics = watch.scrape().await.unwrap_or_default();
    // Nothing more to measure of the daemon: stop it before the baseline runs.
    scratch.stop_daemon().await;
    let ready = drained
        .ready
        .map(|r| r.duration_since(started).as_secs_f64());

    let store = Store::connect(&db_url, 2, Duration::from_secs(10)).await?;
    let merged = store.merged_all().await?;
    let pending = store.pending_count().await?;
    let parked = store.pending_dead_letters().await?;
    store.close().await;

    let mut failure_detail = Vec::new();
    if merged.len() != gens.len() {
        failure_detail.push(format!(
            "{} merged events for {} unique raw events",
            merged.len(),
            gens.len()
        ));
    }
    if pending > 0 {
        failure_detail.push(format!("{pending} raw events left pending"));
    }
    if parked > 0 {
        failure_detail.push(format!("{parked} dead letters parked"));
    }
    let mut failures = usize::from(merged.len() != gens.len())
        + usize::try_from(pending + parked).unwrap_or(usize::MAX);

    let mut targets = BTreeMap::new();
    let mut last_arrival = started;
    for (target, stand_in) in TARGETS.into_iter().zip([&netsuite, &suitex]) {
        let arrivals = stand_in.arrivals();
        let report = check_target(
            target,
            &merged,
            &arrivals,
            stand_in.unreadable(),
            &published_at,
        )?;
        if let Some(a) = arrivals.iter().map(|a| a.at).max() {
            last_arrival = last_arrival.max(a);
        }
        if report.failures() > 0 {
            failure_detail.push(format!(
                "{}: missing {}, doubled {}, unexpected {}, out of order {}, unreadable {}",
                target.as_str(),
                report.missing,
                report.doubled,
                report.unexpected,
                report.out_of_order,
                report.unreadable
            ));
        }
        failures += report.failures();
        targets.insert(target.as_str(), report);
    }
    // The drain ends when the last delivery arrived (the stand-ins' clock);
    // with nothing routed anywhere, when the daemon reported all done.
    let end = if last_arrival > started {
        last_arrival
    } else {
        drained.done
    };
    let drain_seconds = end.duration_since(started).as_secs_f64().max(1e-6);
    let pipeline_messages = raw_messages + 2 * merged.len();

    merge::teardown(&topo, ep, &[]).await;
    scratch.topologies.retain(|t| t != &topo);

    let baseline = if args.skip_baseline {
        None
    } else {
        Some(baseline(settings, ep, &gens, &merged, scratch).await?)
    };
    let pipeline_messages_per_s = pipeline_messages as f64 / drain_seconds;
    Ok(Report {
        database: args.database.clone(),
        records: args.records,
        events: gens.len(),
        duplicates,
        raw_messages,
        merged_events: merged.len(),
        backlog_publish_seconds,
        daemon_ready_seconds: ready,
        drain_seconds,
        drain_events_per_s: raw_messages as f64 / drain_seconds,
        pipeline_messages_per_s,
        targets,
        daemon_peak_rss_mib: peak_rss,
        daemon_retry_attempts: counter_sum(&final_metrics, "backbone_retry_attempts_total", &[]),
        daemon_dead_letters: counter_sum(&final_metrics, "backbone_dead_letters_total", &[]),
        steps: step_means(&final_metrics),
        ratio: baseline
            .as_ref()
            .map(|b| pipeline_messages_per_s / b.messages_per_s),
        baseline_ack_only: baseline,
        failures,
        failure_detail,
    })
}

fn unique_project() -> String {
    format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// A loopback address nobody listens on right now.
fn free_addr() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

// ---------------------------------------------------------------- publishing

/// Publishes every generated message (duplicates twice, right after the
/// original), each record's in order on its own task, the records
/// concurrently. Returns when each event's first copy was handed to the
/// publisher, by event id.
async fn publish_backlog(
    publishers: &Arc<Publishers>,
    gens: &[Gen],
) -> anyhow::Result<HashMap<String, Instant>> {
    let mut by_key: HashMap<String, Vec<(String, Bytes, bool)>> = HashMap::new();
    for g in gens {
        by_key.entry(g.key.clone()).or_default().push((
            g.id.to_string(),
            Bytes::from(g.json.clone()),
            g.duplicate,
        ));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (key, msgs) in by_key {
        let p = publishers.clone();
        tasks.spawn(async move {
            let mut times = Vec::with_capacity(msgs.len());
            for (id, data, duplicate) in msgs {
                times.push((id, Instant::now()));
                for _ in 0..(1 + usize::from(duplicate)) {
                    p.publish_to(TopicKind::Raw, data.clone(), HashMap::new(), &key)
                        .await?;
                }
            }
            Ok::<_, anyhow::Error>(times)
        });
    }
    let mut out = HashMap::with_capacity(gens.len());
    while let Some(r) = tasks.join_next().await {
        out.extend(r??);
    }
    Ok(out)
}

/// One message to publish: its data and attributes.
type Message = (Bytes, HashMap<String, String>);

/// Publishes the merged events to the merged topic as the daemon does: each
/// record's in order under its ordering key, with the same attributes.
async fn publish_merged(publishers: &Arc<Publishers>, merged: &[MergedRow]) -> anyhow::Result<()> {
    let mut by_key: HashMap<String, Vec<Message>> = HashMap::new();
    for row in merged {
        let ev: MergedEvent = serde_json::from_str(&row.payload)
            .with_context(|| format!("stored merged event {} is unreadable", row.event_id))?;
        let mut attributes = ev.attributes();
        attributes.insert(SEQUENCE_ATTRIBUTE.to_string(), row.sequence_num.to_string());
        by_key
            .entry(ev.ordering_key())
            .or_default()
            .push((Bytes::from(row.payload.clone()), attributes));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (key, msgs) in by_key {
        let p = publishers.clone();
        tasks.spawn(async move {
            for (data, attributes) in msgs {
                p.publish_to(TopicKind::Merged, data, attributes, &key)
                    .await?;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

// ---------------------------------------------------------------- stand-in targets

/// One request a stand-in received.
#[derive(Debug, Clone)]
struct Arrival {
    at: Instant,
    /// `record_type:record_id`.
    record: String,
    version: i64,
    event_id: String,
}

#[derive(Deserialize)]
struct BodyKey {
    record_type: String,
    record_id: String,
    version: i64,
    event_id: String,
}

#[derive(Default)]
struct Recorder {
    arrivals: Mutex<Vec<Arrival>>,
    unreadable: AtomicUsize,
}

/// A poisoned lock only means a handler panicked mid-push; the data stays usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A target that cannot be the bottleneck: answers 200 at once and records
/// what arrived.
struct StandIn {
    addr: SocketAddr,
    rec: Arc<Recorder>,
}

impl StandIn {
    async fn start(stop: CancellationToken) -> std::io::Result<StandIn> {
        let rec = Arc::new(Recorder::default());
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(rec.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        Ok(StandIn { addr, rec })
    }

    fn url(&self) -> String {
        format!("http://{}/merged-events", self.addr)
    }

    fn count(&self) -> usize {
        lock(&self.rec.arrivals).len()
    }

    fn arrivals(&self) -> Vec<Arrival> {
        lock(&self.rec.arrivals).clone()
    }

    fn unreadable(&self) -> usize {
        self.rec.unreadable.load(Ordering::Relaxed)
    }
}

async fn receive(State(rec): State<Arc<Recorder>>, body: Bytes) -> StatusCode {
    let at = Instant::now();
    match serde_json::from_slice::<BodyKey>(&body) {
        Ok(k) => lock(&rec.arrivals).push(Arrival {
            at,
            record: crate::model::raw_event::ordering_key(&k.record_type, &k.record_id),
            version: k.version,
            event_id: k.event_id,
        }),
        Err(_) => {
            rec.unreadable.fetch_add(1, Ordering::Relaxed);
        }
    }
    StatusCode::OK
}

// ---------------------------------------------------------------- the daemon

struct DaemonWiring<'a> {
    project: &'a str,
    db_url: &'a str,
    netsuite: &'a str,
    suitex: &'a str,
    metrics: SocketAddr,
    admin: SocketAddr,
    dir: &'a Path,
    log: &'a Path,
}

/// Starts this binary's `run` with the bench's own configuration (inherited
/// environment and config dir) pointed at the scratch topology, database and
/// stand-ins, every consumer on.
fn spawn_daemon(
    settings: &Settings,
    w: &DaemonWiring<'_>,
) -> anyhow::Result<tokio::process::Child> {
    let exe = std::env::current_exe().context("locating this binary to start the daemon")?;
    let out = std::fs::File::create(w.log)?;
    let err = out.try_clone()?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("run")
        .env("BACKBONE_ENV", settings.env.as_str())
        .env(
            "PUBSUB_EMULATOR_HOST",
            settings.pubsub.emulator_host.clone().unwrap_or_default(),
        )
        .env("BACKBONE__PUBSUB__PROJECT_ID", w.project)
        .env("BACKBONE__DATABASE__URL", w.db_url)
        .env(
            "BACKBONE__SNAPSHOTS__URL",
            format!("file://{}", w.dir.join("snapshots").display()),
        )
        .env("BACKBONE__TARGETS__NETSUITE__URL", w.netsuite)
        .env("BACKBONE__TARGETS__SUITEX__URL", w.suitex)
        .env("BACKBONE__HTTP__METRICS_ADDR", w.metrics.to_string())
        .env("BACKBONE__HTTP__ADMIN_ADDR", w.admin.to_string())
        .env("BACKBONE__SHUTDOWN__GRACE", "2s")
        .env("NO_COLOR", "1")
        .env_remove("BACKBONE__HTTP__ADMIN_TOKEN")
        .env_remove("BACKBONE__TARGETS__NETSUITE__TOKEN")
        .env_remove("BACKBONE__TARGETS__SUITEX__TOKEN");
    for kind in ConsumerKind::all() {
        cmd.env(
            format!(
                "BACKBONE__CONSUMERS__{}__ENABLED",
                kind.as_str().to_uppercase()
            ),
            "true",
        );
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true);
    cmd.spawn().context("starting the daemon (`run`)")
}

/// Peak resident set size of a process, from /proc (Linux only).
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Reads the daemon's progress from its /metrics.
struct Watch {
    http: reqwest::Client,
    metrics_addr: SocketAddr,
    merge_sub: String,
    deliver_subs: [String; 2],
}

impl Watch {
    async fn scrape(&self) -> Option<String> {
        let r = self
            .http
            .get(format!("http://{}/metrics", self.metrics_addr))
            .send()
            .await
            .ok()?;
        r.text().await.ok()
    }

    async fn ready(&self) -> bool {
        self.http
            .get(format!("http://{}/readyz", self.metrics_addr))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }
}

/// Sum of a counter's samples whose labels include every `(name, value)`.
fn counter_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (lbls, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once('}')?,
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            let has = |k: &str, v: &str| lbls.split(',').any(|p| p == format!("{k}=\"{v}\""));
            if labels.iter().all(|(k, v)| has(k, v)) {
                value.trim().parse::<f64>().ok()
            } else {
                None
            }
        })
        .sum()
}

/// Per stage, the mean of each step of `backbone_stage_step_duration_seconds`,
/// in the order the steps run (the order the exposition lists them is
/// alphabetical).
fn step_means(text: &str) -> BTreeMap<String, Vec<StepMean>> {
    // Merge's steps, then a delivery's.
    const DELIVERY_STEPS: [&str; 7] = [
        "turn_wait",
        "state_read",
        "plan",
        "permit_wait",
        "claim",
        "post",
        "audit_and_state_write",
    ];
    const NAME: &str = "backbone_stage_step_duration_seconds";
    let mut out: BTreeMap<String, Vec<StepMean>> = BTreeMap::new();
    for l in text.lines() {
        let Some(lbls) = l
            .strip_prefix(NAME)
            .and_then(|r| r.strip_prefix("_count{"))
            .and_then(|r| r.split_once('}'))
            .map(|(l, _)| l)
        else {
            continue;
        };
        let label = |k: &str| {
            lbls.split(',').find_map(|p| {
                p.strip_prefix(k)
                    .and_then(|v| v.strip_prefix("=\""))
                    .and_then(|v| v.strip_suffix('"'))
            })
        };
        let (Some(stage), Some(step)) = (label("stage"), label("step")) else {
            continue;
        };
        let pick = [("stage", stage), ("step", step)];
        let count = counter_sum(text, &format!("{NAME}_count"), &pick);
        if count > 0.0 {
            let sum = counter_sum(text, &format!("{NAME}_sum"), &pick);
            out.entry(stage.to_string()).or_default().push(StepMean {
                step: step.to_string(),
                mean_ms: sum / count * 1000.0,
                count,
            });
        }
    }
    let rank = |s: &str| {
        merge::MERGE_STEPS
            .iter()
            .chain(DELIVERY_STEPS.iter())
            .position(|o| *o == s)
            .unwrap_or(usize::MAX)
    };
    for steps in out.values_mut() {
        steps.sort_by_key(|s| rank(&s.step));
    }
    out
}

fn processed(text: &str, sub: &str, outcomes: &[&str]) -> f64 {
    outcomes
        .iter()
        .map(|o| {
            counter_sum(
                text,
                "backbone_messages_processed_total",
                &[("subscription", sub), ("outcome", o)],
            )
        })
        .sum()
}

struct Drained {
    ready: Option<Instant>,
    /// When the scrape showed everything finished (up to 200 ms late).
    done: Instant,
}

/// Waits until the merge consumer finished every raw message, every merged
/// event was published, and both delivery consumers finished every merged
/// event (delivered or skipped): then every delivery there is has arrived.
async fn wait_drained(
    watch: &Watch,
    scratch: &mut Scratch,
    raw_messages: usize,
    unique: usize,
    stand_ins: [&StandIn; 2],
    stall_timeout: Duration,
) -> anyhow::Result<Drained> {
    let mut ready = None;
    let mut progress = (0.0f64, 0usize);
    let mut last_progress = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(child) = scratch.daemon.as_mut() {
            if let Some(status) = child.try_wait()? {
                bail!("the daemon exited during the drain ({status})");
            }
        }
        if ready.is_none() && watch.ready().await {
            ready = Some(Instant::now());
        }
        let Some(text) = watch.scrape().await else {
            continue;
        };
        let merged_in = processed(&text, &watch.merge_sub, &["merged", "duplicate", "noop"]);
        let published = counter_sum(&text, "backbone_published_total", &[("topic", "merged")]);
        let delivered: Vec<f64> = watch
            .deliver_subs
            .iter()
            .map(|s| {
                processed(
                    &text,
                    s,
                    &["delivered", "skipped", "superseded", "duplicate"],
                )
            })
            .collect();
        if merged_in >= raw_messages as f64
            && published >= unique as f64
            && delivered.iter().all(|d| *d >= published)
        {
            return Ok(Drained {
                ready,
                done: Instant::now(),
            });
        }
        let all: f64 = processed_total(&text);
        let arrived: usize = stand_ins.iter().map(|s| s.count()).sum();
        if (all, arrived) != progress {
            progress = (all, arrived);
            last_progress = Instant::now();
        } else if last_progress.elapsed() > stall_timeout {
            bail!(
                "no progress for {}: merge finished {merged_in} of {raw_messages} raw messages, \
                 {published} of {unique} merged events published, delivery consumers finished {:?}, \
                 {arrived} requests arrived at the stand-ins",
                humantime::format_duration(stall_timeout),
                delivered
            );
        }
    }
}

fn processed_total(text: &str) -> f64 {
    counter_sum(text, "backbone_messages_processed_total", &[])
}

// ---------------------------------------------------------------- checks

/// Each merged event routed to `target` must arrive exactly once, under its
/// event id, and each record's versions in increasing order.
fn check_target(
    target: Source,
    merged: &[MergedRow],
    arrivals: &[Arrival],
    unreadable: usize,
    published_at: &HashMap<String, Instant>,
) -> anyhow::Result<TargetReport> {
    let mut expected: HashMap<(String, i64), &str> = HashMap::new();
    for row in merged {
        let ev: MergedEvent = serde_json::from_str(&row.payload)
            .with_context(|| format!("stored merged event {} is unreadable", row.event_id))?;
        if routing::route(&ev, target) == Route::Deliver {
            expected.insert((ev.ordering_key(), ev.version), row.event_id.as_str());
        }
    }
    let mut r = TargetReport {
        expected: expected.len(),
        requests: arrivals.len(),
        unreadable,
        ..Default::default()
    };
    let mut seen: HashSet<(String, i64)> = HashSet::with_capacity(arrivals.len());
    let mut last_version: HashMap<&str, i64> = HashMap::new();
    let mut latencies = Vec::with_capacity(arrivals.len());
    for a in arrivals {
        let k = (a.record.clone(), a.version);
        match expected.get(&k) {
            Some(id) if *id == a.event_id => {
                if !seen.insert(k) {
                    r.doubled += 1;
                } else if let Some(p) = published_at.get(&a.event_id) {
                    latencies.push(a.at.saturating_duration_since(*p).as_secs_f64() * 1000.0);
                }
            }
            _ => r.unexpected += 1,
        }
        let last = last_version.entry(a.record.as_str()).or_insert(i64::MIN);
        if a.version <= *last {
            r.out_of_order += 1;
        }
        *last = (*last).max(a.version);
    }
    r.missing = expected.len() - seen.len();
    latencies.sort_by(|a, b| a.total_cmp(b));
    if !latencies.is_empty() {
        r.latency_ms_raw_publish_to_delivered = Some(Latency {
            p50: merge::percentile(&latencies, 0.5),
            p99: merge::percentile(&latencies, 0.99),
        });
    }
    Ok(r)
}

// ---------------------------------------------------------------- baseline

/// The same three subscriptions' message volume — the raw backlog on the
/// merge subscription, the merged events on each delivery subscription —
/// published to a fresh topology first, then drained at once by ack-only
/// subscribers of one client, with the daemon's flow control.
async fn baseline(
    settings: &Settings,
    ep: &clients::Endpoint,
    gens: &[Gen],
    merged: &[MergedRow],
    scratch: &mut Scratch,
) -> anyhow::Result<Baseline> {
    let topo = Topology::new(settings.env, unique_project());
    scratch.topologies.push(topo.clone());
    provision::provision(&topo, ep).await?;
    let publishers = Arc::new(Publishers::new(topo.clone(), ep).await?);
    publish_backlog(&publishers, gens).await?;
    publish_merged(&publishers, merged).await?;
    publishers.flush().await;
    drop(publishers);
    let raw: usize = gens.iter().map(|g| 1 + usize::from(g.duplicate)).sum();
    let plan = [
        (ConsumerKind::Merge, raw),
        (ConsumerKind::Netsuite, merged.len()),
        (ConsumerKind::Suitex, merged.len()),
    ];

    let started = Instant::now();
    let subscriber = clients::subscriber(ep).await?;
    let mut tasks = tokio::task::JoinSet::new();
    for (kind, n) in plan {
        tasks.spawn(ack_only(
            subscriber.clone(),
            topo.subscription_path(kind),
            n,
            settings.consumers.get(kind).max_outstanding_messages,
        ));
    }
    let mut finished = started;
    while let Some(r) = tasks.join_next().await {
        finished = finished.max(r??);
    }
    let seconds = finished.duration_since(started).as_secs_f64().max(1e-6);
    let messages = raw + 2 * merged.len();
    Ok(Baseline {
        raw_messages: raw,
        merged_messages_per_delivery_subscription: merged.len(),
        messages,
        seconds,
        messages_per_s: messages as f64 / seconds,
    })
}

/// Acks `n` messages of `sub` as they come; returns when the last was acked.
async fn ack_only(
    subscriber: Subscriber,
    sub: String,
    n: usize,
    max_outstanding: i64,
) -> anyhow::Result<Instant> {
    let mut stream = subscriber
        .subscribe(sub.clone())
        .set_max_outstanding_messages(max_outstanding)
        .build();
    let mut got = 0usize;
    while got < n {
        match tokio::time::timeout(Duration::from_secs(60), stream.next()).await {
            Ok(Some(Ok((_m, h)))) => {
                h.ack();
                got += 1;
            }
            Ok(Some(Err(e))) => bail!("ack-only baseline on {sub}: {e} after {got} of {n}"),
            Ok(None) | Err(_) => bail!("ack-only baseline drained {got} of {n} messages of {sub}"),
        }
    }
    Ok(Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_means_are_per_stage_in_run_order() {
        let text =
            "backbone_stage_step_duration_seconds_sum{stage=\"deliver.suitex\",step=\"post\"} 2\n\
backbone_stage_step_duration_seconds_count{stage=\"deliver.suitex\",step=\"post\"} 4\n\
backbone_stage_step_duration_seconds_sum{stage=\"deliver.suitex\",step=\"state_read\"} 0.4\n\
backbone_stage_step_duration_seconds_count{stage=\"deliver.suitex\",step=\"state_read\"} 4\n\
backbone_stage_step_duration_seconds_sum{stage=\"merge\",step=\"commit\"} 1\n\
backbone_stage_step_duration_seconds_count{stage=\"merge\",step=\"commit\"} 0\n";
        let m = step_means(text);
        let d: Vec<(&str, f64)> = m["deliver.suitex"]
            .iter()
            .map(|s| (s.step.as_str(), s.mean_ms))
            .collect();
        assert_eq!(d, vec![("state_read", 100.0), ("post", 500.0)]);
        // A step never observed is left out, and so is a stage without any.
        assert!(!m.contains_key("merge"));
    }

    #[test]
    fn counter_sum_matches_labels() {
        let text = "# HELP x\n\
            backbone_messages_processed_total{outcome=\"merged\",subscription=\"a\"} 5\n\
            backbone_messages_processed_total{outcome=\"duplicate\",subscription=\"a\"} 2\n\
            backbone_messages_processed_total{outcome=\"merged\",subscription=\"b\"} 7\n\
            backbone_published_total{topic=\"merged\"} 12\n\
            backbone_retry_attempts_total 3\n";
        assert_eq!(processed(text, "a", &["merged", "duplicate"]), 7.0);
        assert_eq!(processed(text, "b", &["merged", "duplicate"]), 7.0);
        assert_eq!(processed_total(text), 14.0);
        assert_eq!(
            counter_sum(text, "backbone_published_total", &[("topic", "merged")]),
            12.0
        );
        assert_eq!(counter_sum(text, "backbone_retry_attempts_total", &[]), 3.0);
    }

    fn row(seq: i64, origin: Source) -> MergedRow {
        let ev = serde_json::json!({
            "event_id": format!("e{seq}"), "fingerprint": format!("f{seq}"),
            "record_type": "bench", "record_id": "r0", "origin": origin.as_str(),
            "version": seq, "base_version": seq - 1,
            "timestamp": "2026-03-13T20:00:00.123456Z",
            "applied": {"n": seq}, "conflicts": [],
        });
        MergedRow {
            record_type: "bench".into(),
            record_id: "r0".into(),
            sequence_num: seq,
            version: seq,
            event_id: format!("e{seq}"),
            payload: ev.to_string(),
        }
    }

    fn arrival(version: i64) -> Arrival {
        Arrival {
            at: Instant::now(),
            record: "bench:r0".into(),
            version,
            event_id: format!("e{version}"),
        }
    }

    #[test]
    fn check_counts_lost_doubled_unexpected_and_reordered() {
        // Versions 1..=4 from suitex: all routed to netsuite, none to suitex.
        let merged: Vec<MergedRow> = (1..=4).map(|v| row(v, Source::Suitex)).collect();
        let ok = [arrival(1), arrival(2), arrival(3), arrival(4)];
        let r = check_target(Source::Netsuite, &merged, &ok, 0, &HashMap::new()).unwrap();
        assert_eq!((r.expected, r.failures()), (4, 0));

        let bad = [arrival(2), arrival(1), arrival(2), arrival(9)];
        let r = check_target(Source::Netsuite, &merged, &bad, 1, &HashMap::new()).unwrap();
        assert_eq!(r.missing, 2, "3 and 4");
        assert_eq!(r.doubled, 1);
        assert_eq!(r.unexpected, 1, "version 9");
        assert_eq!(r.out_of_order, 2, "1 after 2, 2 after 2");
        assert_eq!(r.unreadable, 1);

        let echo = check_target(Source::Suitex, &merged, &ok, 0, &HashMap::new()).unwrap();
        assert_eq!((echo.expected, echo.unexpected), (0, 4));
    }
}
