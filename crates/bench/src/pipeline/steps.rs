//! The steps of a pipeline run, each handing the next what it made: set
//! up, publish (or stream) and start the daemon, watch it drain, read what
//! it stored, check P1/P2 at both targets, assemble the report.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::super::merge;
use super::checks::check_target;
use super::daemon::{
    counter_sum, spawn_daemon, step_means, wait_drained, Completion, DaemonWiring, Watch,
};
use super::publish::{bursts, publish_backlog, publish_stream};
use super::report::{self, Baseline, Report, TargetReport};
use super::stand_in::{Limits, Refusal, StandIn};
use super::usage::{cpu_seconds, peak_rss_mib, MachineCpu};
use super::{free_addr, unique_project, Args, Scratch};
use crate::sql::scratch;
use backbone::config::Settings;
use backbone::model::raw_event::Source;
use backbone::pubsub::clients;
use backbone::pubsub::provision;
use backbone::pubsub::publisher::Publishers;
use backbone::store::merged::MergedRow;
use backbone::store::Store;
use backbone::topology::{ConsumerKind, Topology};

/// The events, a migrated scratch database, a provisioned topology and the
/// two stand-in targets: everything there is before anything is published.
pub(super) struct Setup {
    dir: PathBuf,
    pub(super) gens: Vec<merge::Gen>,
    duplicates: usize,
    /// Unique events plus duplicates: what the merge subscription receives.
    raw_messages: usize,
    pub(super) db_url: String,
    pub(super) topo: Topology,
    /// SuiteX's (NetSuite's differs only in how it refuses).
    limits: Limits,
    netsuite: StandIn,
    suitex: StandIn,
    /// `targets.netsuite.lease_ttl` of the daemons (the same config/).
    delivery_lease: std::time::Duration,
}

pub(super) async fn set_up(
    settings: &Settings,
    args: &Args,
    ep: &clients::Endpoint,
    scratch: &mut Scratch,
) -> anyhow::Result<Setup> {
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
    Ok(Setup {
        dir: dir_path,
        gens,
        duplicates,
        raw_messages,
        db_url,
        topo,
        limits,
        netsuite,
        suitex,
        delivery_lease: settings.targets.netsuite.lease_ttl,
    })
}

/// When each event's first copy was handed to the publisher, by event id.
type PublishedAt = HashMap<String, Instant>;

/// The streaming task: when each event was published, and the stream's length.
type Stream = tokio::task::JoinHandle<anyhow::Result<(PublishedAt, f64)>>;

/// The daemon running, on the published backlog or beside the stream.
pub(super) struct Started {
    publishers: Arc<Publishers>,
    /// The backlog's (empty when streamed: the stream returns its own).
    published_at: PublishedAt,
    backlog_publish_seconds: f64,
    metrics_addr: SocketAddr,
    /// When the daemon was started.
    started: Instant,
    pid: Option<u32>,
    cpu_at_start: MachineCpu,
    stream: Option<Stream>,
    /// When the stream was started (right after the daemon).
    streamed_from: Instant,
}

pub(super) async fn publish_and_start(
    settings: &Settings,
    args: &Args,
    ep: &clients::Endpoint,
    setup: &Setup,
    scratch: &mut Scratch,
) -> anyhow::Result<Started> {
    // The backlog, before the daemon exists (or, streamed, while it runs).
    let publishers = Arc::new(Publishers::new(setup.topo.clone(), ep).await?);
    let t = Instant::now();
    let mut published_at = HashMap::new();
    if args.stream_records_per_s.is_none() {
        published_at = publish_backlog(&publishers, &setup.gens).await?;
        publishers.flush().await;
    }
    let backlog_publish_seconds = t.elapsed().as_secs_f64();

    let metrics_addr = free_addr()?;
    let log = setup.dir.join("daemon.log");
    scratch.daemon_log = Some(log.clone());
    let started = Instant::now();
    let wiring = |metrics: SocketAddr, log: PathBuf| -> anyhow::Result<tokio::process::Child> {
        spawn_daemon(
            settings,
            &DaemonWiring {
                project: &setup.topo.project_id,
                db_url: &setup.db_url,
                netsuite: &setup.netsuite.url(),
                suitex: &setup.suitex.url(),
                metrics,
                admin: free_addr()?,
                dir: &setup.dir,
                log: &log,
                netsuite_errors: args.netsuite_refusal == Refusal::Netsuite400,
                account_concurrency: args.account_concurrency,
                coalesce: args.coalesce,
            },
        )
    };
    let child = wiring(metrics_addr, log)?;
    let pid = child.id();
    scratch.daemon = Some(child);
    for i in 1..args.replicas {
        let log = setup.dir.join(format!("daemon-{i}.log"));
        scratch.replicas.push(wiring(free_addr()?, log)?);
    }
    let cpu_at_start = MachineCpu::now(pid);
    let stream = args.stream_records_per_s.map(|rate| {
        let (p, b) = (publishers.clone(), bursts(&setup.gens));
        tokio::spawn(async move {
            let t = Instant::now();
            let at = publish_stream(&p, b, rate).await?;
            p.flush().await;
            Ok::<_, anyhow::Error>((at, t.elapsed().as_secs_f64()))
        })
    });
    Ok(Started {
        publishers,
        published_at,
        backlog_publish_seconds,
        metrics_addr,
        started,
        pid,
        cpu_at_start,
        stream,
        streamed_from: Instant::now(),
    })
}

/// What the drain measured of the daemon, which is stopped by now.
pub(super) struct Drain {
    /// When the daemon was started.
    started: Instant,
    /// Where the drain starts: the daemon's start, or streamed, the stream's.
    from: Instant,
    /// When the daemon's metrics showed everything finished.
    done: Instant,
    /// Daemon start → ready, in seconds.
    ready: Option<f64>,
    published_at: PublishedAt,
    backlog_publish_seconds: f64,
    stream_seconds: Option<f64>,
    peak_rss: Option<f64>,
    daemon_cpu: Option<f64>,
    machine_cpu: MachineCpu,
    /// The daemon's last /metrics.
    final_metrics: String,
    /// When `--kill-one-after` killed a replica, seconds after the start.
    killed_after: Option<f64>,
    killed: Option<Instant>,
}

pub(super) async fn drain(
    args: &Args,
    setup: &Setup,
    s: Started,
    scratch: &mut Scratch,
) -> anyhow::Result<Drain> {
    let watch = Watch {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?,
        metrics_addr: s.metrics_addr,
        merge_sub: setup.topo.subscription_id(ConsumerKind::Merge),
        deliver_subs: [
            setup.topo.subscription_id(ConsumerKind::Netsuite),
            setup.topo.subscription_id(ConsumerKind::Suitex),
        ],
    };
    let done_by = if args.replicas > 1 {
        Completion::Stored {
            db_url: &setup.db_url,
            unique: setup.gens.len(),
        }
    } else {
        Completion::Metrics {
            db_url: &setup.db_url,
            unique: setup.gens.len(),
        }
    };
    let drained = wait_drained(
        &watch,
        scratch,
        setup.raw_messages,
        setup.gens.len(),
        [&setup.netsuite, &setup.suitex],
        args.stall_timeout,
        done_by,
        args.kill_one_after.map(|d| s.started + d),
    )
    .await?;
    let mut published_at = s.published_at;
    let mut stream_seconds = None;
    if let Some(task) = s.stream {
        let (at, secs) = task.await??;
        published_at = at;
        stream_seconds = Some(secs);
    }
    drop(s.publishers);
    let peak_rss = s.pid.and_then(peak_rss_mib);
    let daemon_cpu = s.pid.and_then(|p| cpu_seconds(&p.to_string()));
    let machine_cpu = MachineCpu::now(s.pid).since(&s.cpu_at_start);
    let final_metrics = watch.scrape().await.unwrap_or_default();
    // Nothing more to measure of the daemon: stop it before the baseline runs.
    scratch.stop_daemon().await;
    Ok(Drain {
        started: s.started,
        // Streamed, the drain starts with the stream (the daemon started first).
        from: if stream_seconds.is_some() {
            s.streamed_from
        } else {
            s.started
        },
        done: drained.done,
        ready: drained
            .ready
            .map(|r| r.duration_since(s.started).as_secs_f64()),
        published_at,
        backlog_publish_seconds: s.backlog_publish_seconds,
        stream_seconds,
        peak_rss,
        daemon_cpu,
        machine_cpu,
        final_metrics,
        killed_after: drained
            .killed
            .map(|k| k.duration_since(s.started).as_secs_f64()),
        killed: drained.killed,
    })
}

/// What the daemon left in its database.
pub(super) struct Stored {
    pub(super) merged: Vec<MergedRow>,
    /// Raw events still pending.
    pending: i64,
    /// Dead letters parked.
    parked: i64,
}

impl Stored {
    pub(super) async fn read(db_url: &str) -> anyhow::Result<Self> {
        let store = Store::connect(db_url, 2, Duration::from_secs(10)).await?;
        let merged = store.merged_all().await?;
        let pending = store.pending_count().await?;
        let parked = store.pending_dead_letters().await?;
        store.close().await;
        Ok(Self {
            merged,
            pending,
            parked,
        })
    }
}

/// The checks' verdict: per target P1/P2, every problem counted and told.
pub(super) struct Checked {
    targets: BTreeMap<&'static str, TargetReport>,
    drain_seconds: f64,
    failures: usize,
    failure_detail: Vec<String>,
}

pub(super) fn check(setup: &Setup, drain: &Drain, stored: &Stored) -> anyhow::Result<Checked> {
    let (merged, unique) = (&stored.merged, setup.gens.len());
    let mut failure_detail = Vec::new();
    if merged.len() != unique {
        failure_detail.push(format!(
            "{} merged events for {unique} unique raw events",
            merged.len()
        ));
    }
    if stored.pending > 0 {
        failure_detail.push(format!("{} raw events left pending", stored.pending));
    }
    if stored.parked > 0 {
        failure_detail.push(format!("{} dead letters parked", stored.parked));
    }
    let mut failures = usize::from(merged.len() != unique)
        + usize::try_from(stored.pending + stored.parked).unwrap_or(usize::MAX);

    let mut targets = BTreeMap::new();
    let mut last_arrival = drain.started;
    for (target, stand_in) in Source::ALL
        .into_iter()
        .zip([&setup.netsuite, &setup.suitex])
    {
        let arrivals = stand_in.arrivals();
        let mut report = check_target(
            target,
            merged,
            &arrivals,
            stand_in.unreadable(),
            &drain.published_at,
            drain.killed,
        )?;
        if let Some(a) = arrivals.iter().map(|a| a.at).max() {
            last_arrival = last_arrival.max(a);
        }
        report.pace(&arrivals, stand_in.refused(), setup.limits.allows_per_s());
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
    let end = if last_arrival > drain.started {
        last_arrival
    } else {
        drain.done
    };
    let drain_seconds = end.duration_since(drain.from).as_secs_f64().max(1e-6);
    for report in targets.values_mut() {
        report.against_allowed(drain_seconds, drain.stream_seconds);
    }
    Ok(Checked {
        targets,
        drain_seconds,
        failures,
        failure_detail,
    })
}

pub(super) fn build_report(
    args: &Args,
    setup: &Setup,
    drain: Drain,
    stored: &Stored,
    checked: Checked,
    baseline: Option<Baseline>,
) -> Report {
    let raw_messages = setup.raw_messages;
    let drain_seconds = checked.drain_seconds;
    let pipeline_messages = raw_messages + 2 * stored.merged.len();
    let pipeline_messages_per_s = pipeline_messages as f64 / drain_seconds;
    let cpu = drain
        .daemon_cpu
        .map(|c| report::Cpu::new(c, raw_messages, baseline.as_ref()));
    let metrics = &drain.final_metrics;
    Report {
        database: args.database.clone(),
        replicas: args.replicas,
        killed_replica_after_seconds: drain.killed_after,
        delivery_lease_seconds: setup.delivery_lease.as_secs_f64(),
        records: args.records,
        events: setup.gens.len(),
        duplicates: setup.duplicates,
        raw_messages,
        merged_events: stored.merged.len(),
        backlog_publish_seconds: drain.backlog_publish_seconds,
        stream_seconds: drain.stream_seconds,
        daemon_ready_seconds: drain.ready,
        drain_seconds,
        drain_events_per_s: raw_messages as f64 / drain_seconds,
        pipeline_messages_per_s,
        targets: checked.targets,
        daemon_peak_rss_mib: drain.peak_rss,
        cpu,
        machine_cpu: drain.machine_cpu,
        daemon_retry_attempts: counter_sum(metrics, "backbone_retry_attempts_total", &[]),
        daemon_dead_letters: counter_sum(metrics, "backbone_dead_letters_total", &[]),
        steps: step_means(metrics),
        ratio: baseline
            .as_ref()
            .map(|b| pipeline_messages_per_s / b.messages_per_s),
        baseline_ack_only: baseline,
        failures: checked.failures,
        failure_detail: checked.failure_detail,
    }
}
