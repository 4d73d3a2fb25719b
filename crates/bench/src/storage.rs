//! `backbone-bench storage`: what one event costs on disk (docs/spec.md §6.1).
//!
//! Drives a raw backlog through the whole daemon (merge and both
//! deliveries, `bench pipeline`'s machinery: child daemon, emulator,
//! stand-in targets), stops it, then measures every table of its database
//! per b-tree (data and each index; `store::sizes` says how) and divides by
//! the events stored. The events' `changes` (the payload) are reported
//! apart and left out of the per-event budget. Fail-closed like `bench
//! pipeline`: a lost or doubled delivery fails the run before any figure.

use std::time::Duration;

use anyhow::bail;
use serde::Serialize;

use super::pipeline;
use crate::sql::sizes::StoreSizes;
use backbone::app;
use backbone::config::Settings;
use backbone::store::Store;

/// docs/spec.md §6.1: bytes per event at steady state, payload excluded.
pub const BUDGET_BYTES_PER_EVENT: f64 = 1000.0;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Raw events driven through the daemon (duplicates come on top).
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// Records (ordering keys) the events are spread over.
    #[arg(long, default_value_t = 200)]
    pub records: usize,
    #[arg(long, default_value_t = 0.05)]
    pub duplicate_rate: f64,
    #[arg(long, default_value_t = 0.10)]
    pub conflict_rate: f64,
    /// mysql (a fresh database on the --mysql-admin-url server) or sqlite.
    #[arg(long, default_value = "mysql", value_parser = ["mysql", "sqlite"])]
    pub database: String,
    #[arg(long, default_value = "mysql://root@127.0.0.1:3306/mysql")]
    pub mysql_admin_url: String,
    /// Measure an existing database instead (no daemon run): its URL.
    #[arg(long)]
    pub measure_only: Option<String>,
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub stall_timeout: Duration,
    /// Leave the MariaDB database in place (its URL is printed) to look at it.
    #[arg(long)]
    pub keep_database: bool,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    database: String,
    events: i64,
    duplicates: usize,
    records: usize,
    drain_seconds: Option<f64>,
    sizes: StoreSizes,
    /// (all bytes − payload bytes) / events.
    bytes_per_event: f64,
    payload_bytes_per_event: f64,
    budget_bytes_per_event: f64,
}

impl Report {
    fn render(&self) -> String {
        let s = &self.sizes;
        let n = s.events.max(1) as f64;
        let mut out = String::new();
        let mut line = |l: String| {
            out.push_str(&l);
            out.push('\n');
        };
        line(format!(
            "bench storage ({}): {} events ({} duplicates on top) over {} records{}",
            self.database,
            self.events,
            self.duplicates,
            self.records,
            self.drain_seconds
                .map(|d| format!(", drained through merge and both deliveries in {d:.1} s"))
                .unwrap_or_default()
        ));
        line(format!(
            "  measured with: {} (page {} B)",
            s.method, s.page_size
        ));
        line(format!(
            "  {:<36} {:>9} {:>12} {:>10} {:>10}",
            "table / b-tree", "rows", "bytes", "B/event", "used B/ev"
        ));
        for t in &s.tables {
            line(format!(
                "  {:<36} {:>9} {:>12} {:>10.0}",
                t.table,
                t.rows,
                t.bytes(),
                t.bytes() as f64 / n
            ));
            for tree in std::iter::once(&t.data).chain(&t.indexes) {
                let label = if std::ptr::eq(tree, &t.data) {
                    "data".to_string()
                } else {
                    tree.name.clone()
                };
                line(format!(
                    "    {:<34} {:>9} {:>12} {:>10.0} {:>10.0}",
                    label,
                    "",
                    tree.bytes,
                    tree.bytes as f64 / n,
                    tree.used_bytes as f64 / n
                ));
            }
        }
        line(format!(
            "  payload (events.changes): {} bytes = {:.0} B/event, reported apart",
            s.payload_bytes, self.payload_bytes_per_event
        ));
        line(format!(
            "  total: {} bytes; per event, payload excluded: {:.0} B (budget {:.0} B)",
            s.total_bytes(),
            self.bytes_per_event,
            self.budget_bytes_per_event
        ));
        out
    }
}

pub async fn run(settings: Settings, args: Args) -> anyhow::Result<i32> {
    if let Some(url) = &args.measure_only {
        let report = measure(url, &args, None, 0).await?;
        print_report(&report, args.json)?;
        return Ok(0);
    }
    if settings.pubsub.emulator_host.is_none() {
        bail!("bench needs the Pub/Sub emulator: set PUBSUB_EMULATOR_HOST (scripts/services.sh starts one)");
    }
    let p = pipeline::Args {
        events: args.events,
        records: args.records,
        duplicate_rate: args.duplicate_rate,
        conflict_rate: args.conflict_rate,
        database: args.database.clone(),
        mysql_admin_url: args.mysql_admin_url.clone(),
        skip_baseline: true,
        stall_timeout: args.stall_timeout,
        target_latency: Duration::ZERO,
        target_concurrency: None,
        netsuite_refusal: pipeline::Refusal::Http429,
        stream_records_per_s: None,
        account_concurrency: None,
        coalesce: None,
        netsuite_like: false,
        replicas: 1,
        kill_one_after: None,
        json: false,
        keep_database: args.keep_database,
        seed: args.seed,
    };
    let ep = app::endpoint(&settings);
    let mut scratch = pipeline::Scratch::default();
    let outcome = drive_and_measure(&settings, &args, &p, &ep, &mut scratch).await;
    if outcome.is_err() {
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
    print_report(&report, args.json)?;
    Ok(0)
}

async fn drive_and_measure(
    settings: &Settings,
    args: &Args,
    p: &pipeline::Args,
    ep: &backbone::pubsub::clients::Endpoint,
    scratch: &mut pipeline::Scratch,
) -> anyhow::Result<Report> {
    let run = pipeline::bench(settings, p, ep, scratch).await?;
    if run.failures > 0 {
        bail!(
            "the pipeline run failed ({} problems: {}); no storage figures",
            run.failures,
            run.failure_detail.join("; ")
        );
    }
    let Some(url) = scratch.db_url.clone() else {
        bail!("the pipeline run left no database to measure");
    };
    measure(&url, args, Some(run.drain_seconds), run.duplicates).await
}

async fn measure(
    url: &str,
    args: &Args,
    drain_seconds: Option<f64>,
    duplicates: usize,
) -> anyhow::Result<Report> {
    let store = Store::connect(url, 1, Duration::from_secs(10)).await?;
    let sizes = crate::sql::sizes::measure_sizes(&store).await;
    store.close().await;
    let sizes = sizes?;
    let n = sizes.events.max(1) as f64;
    Ok(Report {
        database: match store.backend() {
            backbone::store::Backend::Mysql => "mysql".into(),
            backbone::store::Backend::Sqlite => "sqlite".into(),
        },
        events: sizes.events,
        duplicates,
        records: args.records,
        drain_seconds,
        bytes_per_event: (sizes.total_bytes() - sizes.payload_bytes) as f64 / n,
        payload_bytes_per_event: sizes.payload_bytes as f64 / n,
        budget_bytes_per_event: BUDGET_BYTES_PER_EVENT,
        sizes,
    })
}

fn print_report(r: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
    } else {
        print!("{}", r.render());
    }
    Ok(())
}
