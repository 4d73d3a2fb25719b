//! `event-backbone verify`: compares every record's live projection with a
//! full replay of its events; exit 1 when any record drifted.

use backbone::config::Settings;
use backbone::history::verify::{verify, VerifyReport};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only records of this type.
    #[arg(long)]
    pub record_type: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(settings: Settings, args: Args) -> anyhow::Result<i32> {
    let store = backbone::app::connect_store(&settings).await?;
    let policy = settings.merge_policy();
    let report = verify(&store, &policy, args.record_type.as_deref()).await?;
    store.close().await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(if report.clean() { 0 } else { 1 })
}

fn print_report(r: &VerifyReport) {
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    println!(
        "Verified {} ({} replayed) in {:.0} ms.",
        plural(r.records_checked, "record", "records"),
        plural(r.events_replayed, "event", "events"),
        r.elapsed_ms
    );
    if r.clean() {
        println!("No drift: every projection equals the replay of its events.");
        return;
    }
    println!("{} drifted:", plural(r.drift.len(), "record", "records"));
    for d in &r.drift {
        println!(
            "  {}/{} {}: {}",
            d.record_type, d.record_id, d.kind, d.detail
        );
    }
}
