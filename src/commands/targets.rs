//! `event-backbone targets list|pause|resume` (docs/spec.md §7.1): a pause is
//! stored in the database, so every replica holds the target's deliveries
//! within a few seconds (circuit cause `paused`: no attempt spent, nothing
//! dead-lettered) and a restart keeps it. No running daemon is needed.

use backbone::config::Settings;
use backbone::ops::targets::{self, TargetReport};
use backbone::ops::{Actor, OpsError};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Each target: paused or not, by whom, why and since when.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Hold every delivery to a target until resumed.
    Pause {
        /// `netsuite` or `suitex`.
        target: String,
        /// Why (required): shown by `targets list`, /readyz and the audit log.
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    /// Deliver to a paused target again (what it held goes first).
    Resume {
        target: String,
        #[arg(long)]
        json: bool,
    },
}

fn print(rows: &[TargetReport]) {
    println!(
        "{:<9} {:<7} {:<20} {:<28} REASON",
        "TARGET", "STATE", "BY", "SINCE"
    );
    for r in rows {
        println!(
            "{:<9} {:<7} {:<20} {:<28} {}",
            r.target,
            if r.paused { "paused" } else { "active" },
            r.actor.as_deref().unwrap_or("-"),
            r.changed_at.as_deref().unwrap_or("-"),
            r.reason.as_deref().unwrap_or("")
        );
    }
}

pub async fn run(settings: Settings, args: Args) -> anyhow::Result<i32> {
    let store = backbone::app::connect_store(&settings).await?;
    let (result, json) = match args.cmd {
        Cmd::List { json } => (targets::list(&store, None).await, json),
        Cmd::Pause {
            target,
            reason,
            json,
        } => (
            targets::pause(&store, &target, &Actor::cli(), &reason)
                .await
                .map(|r| vec![r]),
            json,
        ),
        Cmd::Resume { target, json } => (
            targets::resume(&store, &target, &Actor::cli())
                .await
                .map(|r| vec![r]),
            json,
        ),
    };
    match result {
        Ok(rows) if json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Ok(rows) => print(&rows),
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(if matches!(e, OpsError::Invalid(_)) {
                2
            } else {
                1
            });
        }
    }
    Ok(0)
}
