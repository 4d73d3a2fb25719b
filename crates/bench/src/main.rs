//! `backbone-bench`: figures, fail-closed (any error, lost or doubled event
//! makes it exit non-zero). One module per benchmark; the SQL only they need
//! (scratch databases, sizes, run rows) in [`sql`]. It ships beside the
//! daemon (the image carries both) and starts it as a child
//! ([`daemon_binary`]), so an operator can stress a deployment from inside
//! the cluster.

mod archive;
mod history;
mod machine;
mod mcp;
mod merge;
mod pipeline;
mod sql;
mod storage;

use std::path::PathBuf;

use anyhow::Context;
use backbone::config::Settings;
use clap::Parser;

// The daemon's allocator, so in-process figures (the merge stage alone)
// are the daemon's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "backbone-bench",
    version,
    about = "Measure event-backbone's throughput and latency (end to end through Pub/Sub, and the merge stage alone), fail-closed."
)]
struct Cli {
    #[command(flatten)]
    args: Args,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub which: Which,
}

#[derive(Debug, clap::Subcommand)]
pub enum Which {
    /// The merge stage: end to end through the emulator vs an ack-only
    /// baseline, and the stage's own capacity against the database.
    Merge(merge::Args),
    /// Event history: load a large event store, then time `events list` and replay.
    History(history::Args),
    /// The MCP tools on the same store: query_events, replay_events, emit_event.
    Mcp(mcp::McpBenchArgs),
    /// The whole daemon (all five consumers) draining a raw backlog into two
    /// stand-in targets, vs an ack-only drain of the same messages.
    Pipeline(pipeline::Args),
    /// Merge throughput while `archive` runs on the same database, vs without.
    Archive(archive::Args),
    /// Bytes per event on disk, per table and index, after a run through
    /// merge and both deliveries (docs/spec.md §6.1).
    Storage(storage::Args),
}

impl Which {
    /// The bench prints its report as text (else as JSON on stdout).
    fn prints_text(&self) -> bool {
        match self {
            Which::Pipeline(a) => !a.json,
            Which::Storage(a) => !a.json,
            Which::Merge(_) | Which::History(_) | Which::Mcp(_) | Which::Archive(_) => false,
        }
    }
}

/// Every bench, between two readings of what the machine was doing
/// ([`machine`]): its figures are only as good as the machine was quiet.
async fn run(settings: Settings, args: Args) -> anyhow::Result<i32> {
    let text = args.which.prints_text();
    let emulator = settings.pubsub.emulator_host.clone();
    let start = machine::Machine::observe(emulator.as_deref()).await;
    let mut noise = machine::report(&start, machine::When::Start, text);
    let outcome = match args.which {
        Which::Merge(a) => merge::run(settings, a).await,
        Which::History(a) => history::run(settings, a).await,
        Which::Mcp(a) => mcp::run(settings, a).await,
        Which::Pipeline(a) => pipeline::run(settings, a).await,
        Which::Storage(a) => storage::run(settings, a).await,
        Which::Archive(a) => archive::run(settings, a).await,
    };
    let end = machine::Machine::observe(emulator.as_deref()).await;
    noise.extend(machine::report(&end, machine::When::End, text));
    machine::warn_if_noisy(&noise);
    outcome
}

/// The `event-backbone` binary the benches start (`run`, `archive`):
/// `EVENT_BACKBONE_BIN`, else the one beside this binary (the image and
/// `target/<profile>/` both put them side by side).
pub(crate) fn daemon_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("EVENT_BACKBONE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe().context("locating this binary")?;
    let beside = me.with_file_name("event-backbone");
    anyhow::ensure!(
        beside.is_file(),
        "no event-backbone binary beside {} (build it, or set EVENT_BACKBONE_BIN)",
        me.display()
    );
    Ok(beside)
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(async {
        let settings = match backbone::config::load() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
        };
        backbone::telemetry::init(&settings);
        match run(settings, cli.args).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                if e.downcast_ref::<backbone::config::ConfigError>().is_some() {
                    2
                } else {
                    1
                }
            }
        }
    });
    std::process::exit(code);
}
