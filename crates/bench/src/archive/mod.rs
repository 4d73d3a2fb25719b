//! `backbone-bench archive`: the merge stage's throughput while
//! `archive` runs against the same database, against the same feed without
//! one (docs/spec.md §6.1: ≥ 0.8×), and the archive run's own figures.
//!
//! Seeds `--old-events` through the merge engine (as if both targets had
//! acknowledged everything), takes the cutoff, feeds `--events` new events
//! alone, then runs `event-backbone archive` as a child process (to a local
//! folder or, with `--snapshots-url gs://…`, a bucket) while feeding
//! `--events` at a time until it ends, and once more alone. With
//! `--kill-after-segments N` the first archive process is SIGKILLed once N
//! segments are recorded and a second one finishes the work. Fails unless
//! every old event ended in exactly one recorded, removed segment.

mod child;

use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;

use super::merge::feed;
use crate::sql::scratch;
use backbone::config::Settings;
use backbone::history::verify::verify;
use backbone::store::Store;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events the store holds before the cutoff (what the archive moves).
    #[arg(long, default_value_t = 100_000)]
    pub old_events: usize,
    /// Events fed through the merge stage in each measured run.
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    #[arg(long, default_value_t = 200)]
    pub records: usize,
    #[arg(long, default_value = "mysql", value_parser = ["mysql", "sqlite"])]
    pub database: String,
    #[arg(long, default_value = "mysql://root@127.0.0.1:3306/mysql")]
    pub mysql_admin_url: String,
    #[arg(long, default_value_t = 0.10)]
    pub conflict_rate: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Where the segments go: `file://dir` or `gs://bucket` (fake-gcs-server
    /// when STORAGE_EMULATOR_HOST is set). Default: a temporary folder.
    #[arg(long)]
    pub snapshots_url: Option<String>,
    /// SIGKILL the first archive process once this many segments are
    /// recorded, then run it again to the end.
    #[arg(long)]
    pub kill_after_segments: Option<i64>,
    /// Pause between the feeds that run while the archive does (each feed
    /// is one throughput sample).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub sample_gap: Duration,
}

pub async fn run(settings: Settings, args: Args) -> anyhow::Result<i32> {
    let dir = tempfile::tempdir()?;
    let (url, mysql) = if args.database == "mysql" {
        let (url, name) = scratch::create_mysql(&args.mysql_admin_url).await?;
        (url, Some(name))
    } else {
        (
            format!("sqlite://{}/bench.db?mode=rwc", dir.path().display()),
            None,
        )
    };
    let outcome = bench(&settings, &args, &url, dir.path()).await;
    if let Some(name) = mysql {
        scratch::drop_mysql(&args.mysql_admin_url, &name).await;
    }
    let report = outcome?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(0)
}

/// The run in its steps: seed the old events, time merge alone, archive
/// while feeding, time merge alone again, check what the archive left.
async fn bench(
    settings: &Settings,
    args: &Args,
    url: &str,
    dir: &std::path::Path,
) -> anyhow::Result<serde_json::Value> {
    let store = Store::connect(url, 16, Duration::from_secs(30)).await?;
    store.migrate().await?;
    let seeded = seed_old(&store, settings, args).await?;
    let alone_before = feed_rate(&store, settings, args, args.seed + 1).await?;
    eprintln!(
        "bench archive: {} old events seeded in {:.0} s; merge alone: {alone_before:.0} events/s",
        args.old_events, seeded.seconds
    );

    let snapshots_url = match &args.snapshots_url {
        Some(u) => u.clone(),
        None => format!("file://{}/snapshots", dir.display()),
    };
    let during = archive_while_feeding(
        &store,
        settings,
        args,
        &child::Wiring {
            db_url: url,
            snapshots_url: &snapshots_url,
            before: &backbone::model::fingerprint::format_timestamp(&seeded.cutoff),
        },
        alone_before,
    )
    .await?;
    let alone_after = feed_rate(&store, settings, args, args.seed + 2).await?;

    let checked = check(&store, settings, args, during.samples.len()).await;
    store.close().await;
    let checked = checked?;
    if !checked.failures.is_empty() {
        bail!("bench archive: {}", checked.failures.join("; "));
    }
    let rates = Rates {
        alone_before,
        alone_after,
    };
    Ok(report(
        settings,
        args,
        &seeded,
        &snapshots_url,
        rates,
        during,
        checked,
    ))
}

/// The old events, all acknowledged, and the cutoff after them.
struct Seeded {
    /// The record ids' prefix.
    old_prefix: String,
    seconds: f64,
    cutoff: chrono::DateTime<chrono::Utc>,
}

async fn seed_old(store: &Store, settings: &Settings, args: &Args) -> anyhow::Result<Seeded> {
    let t = Instant::now();
    let old_prefix = feed(
        store,
        settings,
        args.conflict_rate,
        args.records,
        args.old_events,
        settings.merge.batch_max,
        args.seed,
    )
    .await?
    .prefix;
    crate::sql::bench::bench_settle_deliveries(store).await?;
    let seconds = t.elapsed().as_secs_f64();
    // Rows stored from here on are younger than the cutoff.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cutoff = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(Seeded {
        old_prefix,
        seconds,
        cutoff,
    })
}

/// One feed of `--events` through the merge stage: its events per second.
async fn feed_rate(
    store: &Store,
    settings: &Settings,
    args: &Args,
    seed: u64,
) -> anyhow::Result<f64> {
    let fed = feed(
        store,
        settings,
        args.conflict_rate,
        args.records,
        args.events,
        settings.merge.batch_max,
        seed,
    )
    .await?;
    Ok(fed.rate)
}

/// The archive's run(s), and the merge samples taken meanwhile.
struct During {
    runs: Vec<child::RunSeen>,
    seconds: f64,
    /// Per feed: events/s, whether the archive had ended by its end, seconds.
    samples: Vec<(f64, bool, f64)>,
}

/// Runs the archive as a child (killed once and run again with
/// `--kill-after-segments`) and feeds the merge stage until it ends.
async fn archive_while_feeding(
    store: &Store,
    settings: &Settings,
    args: &Args,
    wiring: &child::Wiring<'_>,
    alone_before: f64,
) -> anyhow::Result<During> {
    let archive_started = Instant::now();
    let archiver = {
        let (settings, store) = (settings.clone(), store.clone());
        let (db_url, snapshots_url, before) = (
            wiring.db_url.to_string(),
            wiring.snapshots_url.to_string(),
            wiring.before.to_string(),
        );
        let kill = args.kill_after_segments;
        tokio::spawn(async move {
            let w = child::Wiring {
                db_url: &db_url,
                snapshots_url: &snapshots_url,
                before: &before,
            };
            let mut runs = Vec::new();
            if let Some(n) = kill {
                runs.push(child::run_and_kill(&settings, &w, &store, n).await?);
                let left = crate::sql::bench::count_events(&store).await?;
                tracing::info!(
                    segments = n,
                    events_left = left,
                    "archive killed; running it again"
                );
            }
            runs.push(child::run_to_end(&settings, &w).await?);
            anyhow::Ok(runs)
        })
    };
    // Throughput samples while the archive runs: whole feeds only.
    let mut samples = Vec::new();
    let mut seed = args.seed + 100;
    while !archiver.is_finished() {
        let t = Instant::now();
        let rate = feed_rate(store, settings, args, seed).await?;
        seed += 1;
        samples.push((rate, archiver.is_finished(), t.elapsed().as_secs_f64()));
        // As it goes: a long run stopped early keeps what it measured.
        eprintln!(
            "bench archive: merge sample {} during the archive: {rate:.0} events/s \
             (alone before: {alone_before:.0}); {} segments recorded",
            samples.len(),
            crate::sql::bench::count_segments(store).await.unwrap_or(-1)
        );
        if !args.sample_gap.is_zero() && !archiver.is_finished() {
            tokio::time::sleep(args.sample_gap).await;
        }
    }
    let runs = archiver.await??;
    Ok(During {
        runs,
        seconds: archive_started.elapsed().as_secs_f64(),
        samples,
    })
}

/// What the archive left: its segments' totals, the events left, and a
/// verify of every record; `failures` names what is not as it should be.
struct Checked {
    totals: crate::sql::bench::ArchiveTotals,
    left: i64,
    verify: backbone::history::verify::VerifyReport,
    verify_seconds: f64,
    failures: Vec<String>,
}

/// Every old event in exactly one recorded, removed segment; only the
/// events fed after the cutoff left; no drift.
async fn check(
    store: &Store,
    settings: &Settings,
    args: &Args,
    samples: usize,
) -> anyhow::Result<Checked> {
    let totals = crate::sql::bench::bench_archive_totals(store).await?;
    let old = args.old_events as i64;
    let mut failures = Vec::new();
    if totals.events != (old, old) {
        failures.push(format!(
            "events recorded/removed in segments {:?}, expected {old} each",
            totals.events
        ));
    }
    if totals.audit.0 != totals.audit.1 || totals.merged.0 != totals.merged.1 {
        failures.push(format!(
            "audit {:?} / merged {:?} rows recorded vs removed differ",
            totals.audit, totals.merged
        ));
    }
    if totals.segments_not_removed != 0 || totals.records_with_broken_coverage != 0 {
        failures.push(format!(
            "{} segments not fully removed, {} records with a gap or overlap in their coverage",
            totals.segments_not_removed, totals.records_with_broken_coverage
        ));
    }
    let left = crate::sql::bench::count_events(store).await?;
    let fed_after_cutoff = (2 + samples) as i64 * args.events as i64;
    if left != fed_after_cutoff {
        failures.push(format!(
            "{left} events left in the database, expected the {fed_after_cutoff} fed after the cutoff"
        ));
    }
    let policy = settings.merge_policy();
    let t = Instant::now();
    let verify = verify(store, &policy, None).await?;
    let verify_seconds = t.elapsed().as_secs_f64();
    if !verify.clean() {
        failures.push(format!("verify found drift: {:?}", verify.drift.first()));
    }
    Ok(Checked {
        totals,
        left,
        verify,
        verify_seconds,
        failures,
    })
}

/// Merge alone, before and after the archive.
struct Rates {
    alone_before: f64,
    alone_after: f64,
}

fn report(
    settings: &Settings,
    args: &Args,
    seeded: &Seeded,
    snapshots_url: &str,
    rates: Rates,
    during: During,
    checked: Checked,
) -> serde_json::Value {
    let Rates {
        alone_before,
        alone_after,
    } = rates;
    let (totals, v) = (&checked.totals, &checked.verify);
    // A sample counts if the archive was still running when it ended.
    let inside: Vec<f64> = during
        .samples
        .iter()
        .filter(|(_, after_end, _)| !after_end)
        .map(|(r, _, _)| *r)
        .collect();
    let alone = (alone_before + alone_after) / 2.0;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let during_median = median(inside.clone());
    json!({
        "database": args.database,
        "old_events": args.old_events,
        "records": args.records,
        "old_prefix": seeded.old_prefix,
        "seed_seconds": seeded.seconds,
        "snapshots": if snapshots_url.starts_with("gs://") { "gcs" } else { "folder" },
        "merge_events_per_s_alone": { "before": alone_before, "after": alone_after, "mean": alone },
        "merge_events_per_s_during_archive": {
            "samples": inside,
            "median": during_median,
            "min": inside.iter().copied().reduce(f64::min),
            "samples_that_ended_after_the_archive": during.samples.len() - inside.len(),
        },
        "ratio": during_median.map(|d| d / alone),
        "goal": ">= 0.8",
        "archive": {
            "seconds": during.seconds,
            "runs": during.runs,
            "segments": totals.segments,
            "segment_bytes_min_median_max": totals.segment_bytes,
            "events": totals.events.0,
            "audit_rows": totals.audit.0,
            "merged_rows": totals.merged.0,
            "records": totals.records_covered,
            "checkpoints": totals.checkpoints,
            "delete_batch": settings.retention.delete_batch,
            "segment_events": settings.retention.segment_events,
            "pace": settings.retention.pace,
        },
        "verify_seconds": checked.verify_seconds,
        "verify_records": v.records_checked,
        "verify_events_replayed": v.events_replayed,
        "events_left": checked.left,
    })
}
