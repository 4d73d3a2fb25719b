//! `event-backbone provision`: topics and subscriptions of the env.

use backbone::config::Settings;
use backbone::pubsub::provision::provision;

pub async fn run(settings: Settings) -> anyhow::Result<i32> {
    let topology = settings.topology();
    let report = provision(&topology, &backbone::app::endpoint(&settings)).await?;
    for n in &report.created {
        println!("created    {n}");
    }
    for n in &report.unchanged {
        println!("unchanged  {n}");
    }
    for (n, diffs) in &report.drift {
        println!("DIFFERS    {n}");
        for d in diffs {
            println!("             {d}");
        }
    }
    // What a target held through a long outage relies on (docs/spec.md §4.2).
    println!(
        "Every subscription keeps unacked messages for {} (message_retention_duration): \
         the longest a held delivery can wait for its target.",
        humantime::format_duration(backbone::topology::MESSAGE_RETENTION)
    );
    if report.drift.is_empty() {
        Ok(0)
    } else {
        eprintln!(
            "error: {} existing resource(s) differ from the expected settings; they were left as they are. \
             Fix or recreate them deliberately.",
            report.drift.len()
        );
        Ok(1)
    }
}
