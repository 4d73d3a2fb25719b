//! The story's closing summary and where to look afterwards.

use std::time::Duration;

use super::Ctx;
use crate::demo::{DemoError, Narrator, RunFiles};
use backbone::store::story::Totals;

pub(super) async fn summary(ctx: &Ctx<'_>, n: &mut Narrator) -> Result<(), DemoError> {
    let Totals {
        events,
        records,
        delivered,
        failed_deliveries: failed,
        parked,
        replayed,
    } = ctx.store.totals().await?;
    let merged = ctx.observer.all();
    let claim_checked = merged
        .iter()
        .filter(|m| m.full_snapshot_ref.is_some())
        .count();
    n.line("");
    n.line("In all");
    n.kv("Ledger", format!("{events} events for {records} records"));
    n.kv(
        "Merged",
        format!(
            "{} merged events published ({claim_checked} as claim checks)",
            merged.len()
        ),
    );
    n.kv(
        "Deliveries",
        format!("{delivered} delivered, {failed} failed attempts retried or dead-lettered"),
    );
    n.kv(
        "Dead letters",
        format!("{parked} parked, {replayed} replayed"),
    );
    let scraped = scrape_metrics(&ctx.metrics_addr).await;
    match scraped {
        Ok(lines) if !lines.is_empty() => {
            n.line("");
            n.line(format!(
                "A few metrics, scraped from http://{}/metrics:",
                ctx.metrics_addr
            ));
            for l in lines {
                n.line(format!("  {l}"));
            }
        }
        Ok(_) => {}
        Err(e) => n.line(format!("(Scraping the metrics endpoint failed: {e}.)")),
    }
    Ok(())
}

/// The metric lines worth showing after the story.
async fn scrape_metrics(addr: &str) -> Result<Vec<String>, reqwest::Error> {
    const SHOWN: &[&str] = &[
        "backbone_merge_conflicts_total",
        "backbone_retry_attempts_total",
        "backbone_dead_letters_total",
        "backbone_dead_letters_parked",
        "backbone_dlq_replayed_total",
    ];
    let text = reqwest::Client::new()
        .get(format!("http://{addr}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.ends_with(" 0"))
        .filter(|l| {
            SHOWN
                .iter()
                .any(|m| l.strip_prefix(m).is_some_and(|r| r.starts_with(['{', ' '])))
        })
        .map(str::to_string)
        .collect())
}

pub fn where_to_look(metrics_addr: &str, files: &RunFiles, keep_running: bool, n: &mut Narrator) {
    let db_env = format!("BACKBONE__DATABASE__URL='{}'", files.database_url());
    n.line("");
    n.line("Where to look");
    n.kv(
        "Metrics",
        format!(
            "curl {metrics_addr}/metrics{}",
            if keep_running {
                ""
            } else {
                "   (while the daemon runs: add --keep-running to keep it up)"
            }
        ),
    );
    n.kv("Database", files.database.display().to_string());
    n.kv(
        "History",
        format!("{db_env} event-backbone events list --record-type project --record-id 42"),
    );
    n.kv(
        "Dead letters",
        format!("{db_env} event-backbone dlq list --all"),
    );
    n.kv("Daemon log", files.log.display().to_string());
}
