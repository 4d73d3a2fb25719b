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

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use tokio_util::sync::CancellationToken;

use super::merge;
use crate::sql::scratch;
use backbone::app;
use backbone::config::Settings;
use backbone::pubsub::clients;
use backbone::topology::Topology;

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
    /// Daemons sharing the database and subscriptions, as replicas of a
    /// deployment do. With more than one, the drain ends when the stand-ins
    /// hold every record's merged state (read from the database), not when
    /// one daemon's metrics say so.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=8))]
    pub replicas: u16,
    /// SIGKILL one replica this long after the daemons started (needs
    /// `--replicas` 2 or more): what it held must be taken over.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub kill_one_after: Option<Duration>,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
    /// Leave the MariaDB database in place (its URL is printed) to look at
    /// it: which records arrived last, and why.
    #[arg(long)]
    pub keep_database: bool,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

mod baseline;
mod checks;
mod daemon;
mod publish;
mod report;
mod stand_in;
mod steps;
mod usage;

use self::baseline::baseline;
pub(super) use self::report::Report;
pub use self::stand_in::Refusal;
use self::steps::{build_report, check, drain, publish_and_start, set_up, Stored};

/// Everything the run creates, removed by [`Scratch::teardown`] on every path.
#[derive(Default)]
pub(super) struct Scratch {
    daemon: Option<tokio::process::Child>,
    /// `--replicas` beyond the first (whose metrics are watched); the first
    /// of them is the one `--kill-one-after` kills.
    replicas: Vec<tokio::process::Child>,
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
        let children = self
            .daemon
            .take()
            .into_iter()
            .chain(self.replicas.drain(..));
        for mut child in children.collect::<Vec<_>>() {
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
    if args.kill_one_after.is_some() && args.replicas < 2 {
        bail!("--kill-one-after needs --replicas 2 or more (one must survive)");
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
    if args.keep_database {
        if let Some(url) = scratch.keep_mysql() {
            eprintln!("kept the database: {url}");
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

/// The run in its steps: set up, publish (or stream) and start the daemon,
/// watch it drain, read what it stored, check P1/P2 at both targets, and
/// report against the ack-only baseline.
pub(super) async fn bench(
    settings: &Settings,
    args: &Args,
    ep: &clients::Endpoint,
    scratch: &mut Scratch,
) -> anyhow::Result<Report> {
    let setup = set_up(settings, args, ep, scratch).await?;
    let started = publish_and_start(settings, args, ep, &setup, scratch).await?;
    let drain = drain(args, &setup, started, scratch).await?;
    let stored = Stored::read(&setup.db_url).await?;
    let checked = check(&setup, &drain, &stored)?;

    // The pipeline's topology goes before the baseline provisions its own.
    merge::teardown(&setup.topo, ep, &[]).await;
    scratch.topologies.retain(|t| t != &setup.topo);
    let baseline = if args.skip_baseline {
        None
    } else {
        Some(baseline(settings, ep, &setup.gens, &stored.merged, scratch).await?)
    };
    Ok(build_report(
        args, &setup, drain, &stored, checked, baseline,
    ))
}

pub(super) fn unique_project() -> String {
    format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// A loopback address nobody listens on right now.
fn free_addr() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}
