//! `event-backbone bench`: figures, fail-closed (any error, lost or doubled
//! event makes it exit non-zero). One file per benchmark.

pub mod merge;

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
}

pub async fn run(settings: Settings, args: Args) -> anyhow::Result<i32> {
    match args.which {
        Which::Merge(a) => merge::run(settings, a).await,
    }
}
