//! `backbone-bench merge`: two figures, each with a baseline measured
//! in the same run, printed as JSON. Fail-closed: any error, lost or doubled
//! event makes it exit non-zero.
//!
//! - end to end: raw events through the emulator into the daemon's merge
//!   stage until every merged event is published, against an ack-only
//!   consumer draining the same messages from the same emulator, and
//!   against one that only forwards them to the merged topic (the broker
//!   work the daemon cannot avoid);
//! - stage capacity: the merge engine fed directly (no broker) on MariaDB and
//!   SQLite, against one transaction per message.

mod baseline;
mod end_to_end;
mod generate;
mod stage;

pub(crate) use self::baseline::teardown;
pub(crate) use self::generate::{generate, percentile, Gen};
pub(crate) use self::stage::{engine_figures, engine_means, feed, MERGE_STEPS};

use backbone::config::Settings;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Raw events in the end-to-end run (duplicates come on top).
    #[arg(long, default_value_t = 5_000)]
    pub e2e_events: usize,
    /// Events fed to the stage directly.
    #[arg(long, default_value_t = 20_000)]
    pub stage_events: usize,
    /// Records (ordering keys) the end-to-end run spreads its events over.
    #[arg(long, default_value_t = 500)]
    pub records: usize,
    /// Spreads of records the stage capacity is measured at (50 = a few hot
    /// records).
    #[arg(long, value_delimiter = ',', default_value = "200,500,50")]
    pub stage_records: Vec<usize>,
    /// Share of events published twice.
    #[arg(long, default_value_t = 0.05)]
    pub duplicate_rate: f64,
    /// Share of events built on a stale base version from the other source.
    #[arg(long, default_value_t = 0.10)]
    pub conflict_rate: f64,
    /// MariaDB/MySQL server for the runs (a fresh database is created).
    #[arg(long, default_value = "mysql://root@127.0.0.1:3306/mysql")]
    pub mysql_admin_url: String,
    /// Database for the end-to-end run.
    #[arg(long, value_enum, default_value_t = E2eDb::Mysql)]
    pub e2e_db: E2eDb,
    #[arg(long)]
    pub skip_e2e: bool,
    #[arg(long)]
    pub skip_stage: bool,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// The database behind the end-to-end run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum E2eDb {
    /// A fresh database on `--mysql-admin-url`'s server.
    Mysql,
    /// A temporary SQLite file.
    Sqlite,
}

impl E2eDb {
    pub fn as_str(self) -> &'static str {
        match self {
            E2eDb::Mysql => "mysql",
            E2eDb::Sqlite => "sqlite",
        }
    }
}

pub async fn run(settings: Settings, args: Args) -> anyhow::Result<i32> {
    let mut report = serde_json::Map::new();
    if !args.skip_stage {
        report.insert(
            "stage_capacity".into(),
            stage::stage_capacity(&settings, &args).await?,
        );
    }
    if !args.skip_e2e {
        report.insert(
            "end_to_end".into(),
            end_to_end::end_to_end(&settings, &args).await?,
        );
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(0)
}
