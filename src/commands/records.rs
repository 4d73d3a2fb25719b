//! `event-backbone records resync --target T <type>:<id>…` (docs/spec.md
//! §7.1): one request per record with its current merged state, header
//! `X-Backbone-Resync: true`, signed with the target's configured
//! credentials, audited. No running daemon is needed.

use backbone::config::Settings;
use backbone::ops::records::{self, ResyncReport};
use backbone::ops::{Actor, OpsError};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Send records' current merged state to a target, even at a version
    /// it already acknowledged (the fix for drift `verify` finds).
    Resync {
        /// `netsuite` or `suitex`.
        #[arg(long)]
        target: String,
        /// Records as <record_type>:<record_id>.
        #[arg(required = true)]
        records: Vec<String>,
        #[arg(long)]
        json: bool,
    },
}

fn print(rows: &[ResyncReport]) {
    for r in rows {
        match &r.error {
            None => println!(
                "{} -> {}: version {} sent ({} field(s)), HTTP {}",
                r.record,
                r.target,
                r.version,
                r.fields.len(),
                r.status.unwrap_or(0)
            ),
            Some(e) => println!("{} -> {}: FAILED: {e}", r.record, r.target),
        }
    }
}

fn usage(e: OpsError) -> anyhow::Result<i32> {
    eprintln!("error: {e}");
    Ok(if matches!(e, OpsError::Invalid(_)) {
        2
    } else {
        1
    })
}

pub async fn run(settings: Settings, args: Args) -> anyhow::Result<i32> {
    let Cmd::Resync {
        target,
        records: names,
        json,
    } = args.cmd;
    // Only the named target's client: another target's settings need not be valid.
    let sinks = backbone::app::targets::sinks_for(&settings, &target)?;
    let (source, sink, recs) = match records::resolve(&sinks, &target, &names) {
        Ok(r) => r,
        Err(e) => return usage(e),
    };
    let store = backbone::app::connect_store(&settings).await?;
    let rows = match records::resync(&store, sink, source, &recs, &Actor::cli()).await {
        Ok(r) => r,
        Err(e) => return usage(e),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print(&rows);
    }
    Ok(if rows.iter().all(|r| r.ok) { 0 } else { 1 })
}
