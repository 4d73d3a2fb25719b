//! `event-backbone bench`: figures, fail-closed (any error, lost or doubled
//! event makes it exit non-zero). One file per benchmark.

pub mod archive;
pub mod history;
pub mod machine;
pub mod mcp;
pub mod merge;
pub mod pipeline;
pub mod storage;

use crate::config::Settings;

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
pub async fn run(settings: Settings, args: Args) -> anyhow::Result<i32> {
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
