//! `backbone-bench pipeline`: the whole daemon — all five consumers,
//! its normal configuration — draining a raw backlog through merge and both
//! deliveries into two in-process stand-in targets, against an ack-only drain
//! of the same three subscriptions' message volume measured in the same run.
//!
//! The daemon runs as a child process (this binary with `run`), so its peak
//! RSS is its own. Fail-closed: any doubled, unexpected or reordered
//! request (P1), any routed field not at its merged value at the end (P2), any parked dead letter makes it exit
//! non-zero with the counts. Every scratch resource (child, topics and
//! subscriptions, database, temp files) is removed on every path.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio_util::sync::CancellationToken;

use super::merge;
use crate::sql::scratch;
use backbone::app;
use backbone::config::Settings;
use backbone::model::raw_event::Source;
use backbone::pubsub::publisher::Publishers;
use backbone::pubsub::{clients, provision};
use backbone::store::Store;
use backbone::topology::{ConsumerKind, Topology};

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
    /// Each stand-in target takes this long per request (e.g. 50ms).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub target_latency: Duration,
    /// Each stand-in target refuses requests over this many in flight with
    /// 429 (no `Retry-After`), as a target with a concurrency cap does.
    #[arg(long)]
    pub target_concurrency: Option<usize>,
    /// How the NetSuite stand-in refuses over its cap (SuiteX's always
    /// answers 429, as Laravel's `throttle` does); `netsuite400` also makes
    /// the daemon read NetSuite's errors as NetSuite's.
    #[arg(long, value_enum, default_value_t = Refusal::Http429)]
    pub netsuite_refusal: Refusal,
    /// Publish while the daemon runs, this many records' bursts a second
    /// (each record's changes within its second), instead of the whole
    /// backlog before it starts.
    #[arg(long)]
    pub stream_records_per_s: Option<f64>,
    /// `targets.netsuite.account_concurrency` for the daemon.
    #[arg(long)]
    pub account_concurrency: Option<usize>,
    /// `targets.<t>.coalesce` for both targets (e.g. 1s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub coalesce: Option<Duration>,
    /// NetSuite-like targets: 300 ms per request, 15 in flight, NetSuite
    /// refusing over it with 400 `SSS_REQUEST_LIMIT_EXCEEDED`, the events
    /// streamed in bursts at 50 records a second (what the target serves),
    /// the daemon coalescing each burst for 1 s.
    /// Use with e.g. `--events 20000 --records 1000`: 20 changes per record.
    #[arg(long)]
    pub netsuite_like: bool,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

const TARGETS: [Source; 2] = [Source::Netsuite, Source::Suitex];

mod baseline;
mod checks;
mod daemon;
mod publish;
mod report;
mod stand_in;

use self::baseline::baseline;
use self::checks::check_target;
use self::daemon::{
    counter_sum, peak_rss_mib, spawn_daemon, step_means, wait_drained, DaemonWiring, Watch,
};
use self::publish::{bursts, publish_backlog, publish_stream};
pub(super) use self::report::Report;
pub use self::stand_in::Refusal;
use self::stand_in::{Limits, StandIn};

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

impl Args {
    /// `--netsuite-like` fills in what was not given.
    fn with_preset(mut self) -> Self {
        if self.netsuite_like {
            if self.target_latency.is_zero() {
                self.target_latency = Duration::from_millis(300);
            }
            self.target_concurrency.get_or_insert(15);
            self.netsuite_refusal = Refusal::Netsuite400;
            self.stream_records_per_s.get_or_insert(50.0);
            self.coalesce.get_or_insert(Duration::from_secs(1));
        }
        self
    }
}

pub async fn run(settings: Settings, args: Args) -> anyhow::Result<i32> {
    let args = args.with_preset();
    if args
        .stream_records_per_s
        .is_some_and(|r| r.is_nan() || r <= 0.0)
    {
        bail!("--stream-records-per-s must be above 0");
    }
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

    let limits = Limits {
        latency: args.target_latency,
        concurrency: args.target_concurrency,
        refusal: Refusal::Http429,
    };
    let netsuite_limits = Limits {
        refusal: args.netsuite_refusal,
        ..limits
    };
    let netsuite = StandIn::start(scratch.stop_targets.clone(), netsuite_limits).await?;
    let suitex = StandIn::start(scratch.stop_targets.clone(), limits).await?;

    // The backlog, before the daemon exists (or, streamed, while it runs).
    let publishers = Arc::new(Publishers::new(topo.clone(), ep).await?);
    let t = Instant::now();
    let mut published_at = HashMap::new();
    if args.stream_records_per_s.is_none() {
        published_at = publish_backlog(&publishers, &gens).await?;
        publishers.flush().await;
    }
    let backlog_publish_seconds = t.elapsed().as_secs_f64();

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
            netsuite_errors: args.netsuite_refusal == Refusal::Netsuite400,
            account_concurrency: args.account_concurrency,
            coalesce: args.coalesce,
        },
    )?;
    let pid = child.id();
    scratch.daemon = Some(child);
    let cpu_at_start = daemon::MachineCpu::now(pid);
    let stream = args.stream_records_per_s.map(|rate| {
        let (p, b) = (publishers.clone(), bursts(&gens));
        tokio::spawn(async move {
            let t = Instant::now();
            let at = publish_stream(&p, b, rate).await?;
            p.flush().await;
            Ok::<_, anyhow::Error>((at, t.elapsed().as_secs_f64()))
        })
    });
    let streamed_from = Instant::now();

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
    let mut stream_seconds = None;
    if let Some(task) = stream {
        let (at, secs) = task.await??;
        published_at = at;
        stream_seconds = Some(secs);
    }
    drop(publishers);
    let peak_rss = pid.and_then(peak_rss_mib);
    let daemon_cpu = pid.and_then(|p| daemon::cpu_seconds(&p.to_string()));
    let machine_cpu = daemon::MachineCpu::now(pid).since(&cpu_at_start);
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
        let mut report = check_target(
            target,
            &merged,
            &arrivals,
            stand_in.unreadable(),
            &published_at,
        )?;
        if let Some(a) = arrivals.iter().map(|a| a.at).max() {
            last_arrival = last_arrival.max(a);
        }
        report.pace(&arrivals, stand_in.refused(), limits.allows_per_s());
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
    // Streamed, the drain starts with the stream (the daemon started first).
    let from = if stream_seconds.is_some() {
        streamed_from
    } else {
        started
    };
    let drain_seconds = end.duration_since(from).as_secs_f64().max(1e-6);
    for report in targets.values_mut() {
        report.against_allowed(drain_seconds, stream_seconds);
    }
    let pipeline_messages = raw_messages + 2 * merged.len();

    merge::teardown(&topo, ep, &[]).await;
    scratch.topologies.retain(|t| t != &topo);

    let baseline = if args.skip_baseline {
        None
    } else {
        Some(baseline(settings, ep, &gens, &merged, scratch).await?)
    };
    let pipeline_messages_per_s = pipeline_messages as f64 / drain_seconds;
    let cpu = daemon_cpu.map(|c| report::Cpu::new(c, raw_messages, baseline.as_ref()));
    Ok(Report {
        database: args.database.clone(),
        records: args.records,
        events: gens.len(),
        duplicates,
        raw_messages,
        merged_events: merged.len(),
        backlog_publish_seconds,
        stream_seconds,
        daemon_ready_seconds: ready,
        drain_seconds,
        drain_events_per_s: raw_messages as f64 / drain_seconds,
        pipeline_messages_per_s,
        targets,
        daemon_peak_rss_mib: peak_rss,
        cpu,
        machine_cpu,
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

pub(super) fn unique_project() -> String {
    format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// A loopback address nobody listens on right now.
fn free_addr() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}
