//! `event-backbone bench archive`: the merge stage's throughput while
//! `archive` runs against the same database, against the same feed without
//! one (SPEC §6.1: ≥ 0.8×), and the archive run's own figures.
//!
//! Seeds `--old-events` through the merge engine (as if both targets had
//! acknowledged everything), takes the cutoff, then feeds `--events` new
//! events twice: alone, and with `archive` running (a local snapshot folder).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;

use super::merge::feed;
use crate::config::Settings;
use crate::history::archive::{self, Options};
use crate::snapshots::local::LocalSnapshots;
use crate::store::{scratch, Store};

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

async fn bench(
    settings: &Settings,
    args: &Args,
    url: &str,
    dir: &std::path::Path,
) -> anyhow::Result<serde_json::Value> {
    let store = Store::connect(url, 16, Duration::from_secs(30)).await?;
    store.migrate().await?;
    let t = Instant::now();
    let old = feed(
        &store,
        settings,
        args.conflict_rate,
        args.records,
        args.old_events,
        settings.merge.batch_max,
        args.seed,
    )
    .await?;
    store.bench_settle_deliveries().await?;
    let seed_s = t.elapsed().as_secs_f64();
    // Rows stored from here on are younger than the cutoff.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cutoff = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let alone = feed(
        &store,
        settings,
        args.conflict_rate,
        args.records,
        args.events,
        settings.merge.batch_max,
        args.seed + 1,
    )
    .await?;

    let snaps = Arc::new(LocalSnapshots::new(&format!(
        "file://{}/snapshots",
        dir.display()
    )));
    let opts = Options {
        cutoff,
        segment_events: settings.retention.segment_events,
        delete_batch: settings.retention.delete_batch,
        pace: settings.retention.pace,
        dry_run: false,
    };
    let policy = settings.merge_policy();
    let archiver = {
        let (store, snaps) = (store.clone(), snaps.clone());
        tokio::spawn(async move {
            let t = Instant::now();
            let r = archive::run(&store, snaps.as_ref(), &policy, &opts).await;
            (r, t.elapsed().as_secs_f64(), Instant::now())
        })
    };
    let during_started = Instant::now();
    let during = feed(
        &store,
        settings,
        args.conflict_rate,
        args.records,
        args.events,
        settings.merge.batch_max,
        args.seed + 2,
    )
    .await?;
    let during_ended = Instant::now();
    let (report, archive_s, archive_ended) = archiver.await?;
    let report = report?;
    if report.events != args.old_events {
        bail!(
            "archived {} of the {} old events ({} records held: {:?})",
            report.events,
            args.old_events,
            report.held.len(),
            report.held.first()
        );
    }
    let left = store.count_events().await?;
    store.close().await;
    let bytes: usize = report.segments.iter().map(|s| s.bytes).sum();
    let raw: usize = report.segments.iter().map(|s| s.uncompressed_bytes).sum();
    // The share of the measured feed that ran while the archive did.
    let overlap = archive_ended
        .min(during_ended)
        .saturating_duration_since(during_started)
        .as_secs_f64()
        / during_ended.duration_since(during_started).as_secs_f64();
    Ok(json!({
        "database": args.database,
        "old_events": args.old_events,
        "old_prefix": old.prefix,
        "seed_seconds": seed_s,
        "merge_events_per_s_alone": alone.rate,
        "merge_events_per_s_during_archive": during.rate,
        "ratio": during.rate / alone.rate,
        "goal": ">= 0.8",
        "share_of_the_feed_during_the_archive": overlap,
        "archive": {
            "seconds": archive_s,
            "events": report.events,
            "segments": report.segments.len(),
            "bytes": bytes,
            "uncompressed_bytes": raw,
            "bytes_per_event": bytes as f64 / report.events.max(1) as f64,
            "delete_batch": settings.retention.delete_batch,
            "segment_events": settings.retention.segment_events,
        },
        "events_left": left,
    }))
}
