//! `event-backbone bench`: figures, fail-closed (any error, lost or doubled
//! event makes it exit non-zero). One file per benchmark.

pub mod archive;
pub mod history;
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
    /// merge and both deliveries (SPEC §6.1).
    Storage(storage::Args),
}

pub async fn run(settings: Settings, args: Args) -> anyhow::Result<i32> {
    match args.which {
        Which::Merge(a) => merge::run(settings, a).await,
        Which::History(a) => history::run(settings, a).await,
        Which::Mcp(a) => mcp::run(settings, a).await,
        Which::Pipeline(a) => pipeline::run(settings, a).await,
        Which::Storage(a) => storage::run(settings, a).await,
        Which::Archive(a) => archive::run(settings, a).await,
    }
}
