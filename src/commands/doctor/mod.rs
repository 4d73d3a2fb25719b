//! `event-backbone doctor`: live checks of everything the daemon needs, with
//! the configured credentials — one line per check, exit 1 if any fails.
//! Nothing it does leaves a trace in the ledger: the database probes are
//! rolled back, the Pub/Sub probe subscription is deleted, and the probe
//! message is acked unrecorded by the merge stage.

mod database;
mod pubsub;
mod report;
mod snapshots;
mod targets;

use std::future::Future;
use std::time::Duration;

use crate::config::Settings;
use crate::topology::{ConsumerKind, TopicKind};

pub use self::report::{Check, Status};

/// Longest any single check may take, so doctor never hangs on a dead peer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `fut` with the per-check time limit.
async fn bounded(fut: impl Future<Output = Result<String, String>>) -> Result<String, String> {
    tokio::time::timeout(CHECK_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())))
}

/// Every check, in order; each runs even when an earlier one failed.
pub async fn checks(settings: &Settings) -> Vec<Check> {
    let topology = settings.topology();
    let ep = crate::app::endpoint(settings);
    let mut out = Vec::new();

    out.push(Check::from(
        "pubsub: topics exist",
        bounded(pubsub::topics(&topology, &ep)).await,
    ));
    out.push(Check::from(
        format!("pubsub: publish+pull {}", topology.topic_id(TopicKind::Raw)),
        bounded(pubsub::raw_round_trip(&topology, &ep)).await,
    ));
    for kind in ConsumerKind::all() {
        if !settings.consumers.get(kind).enabled {
            continue;
        }
        out.push(Check::from(
            format!("pubsub: {}", topology.subscription_id(kind)),
            bounded(pubsub::subscription(&topology, &ep, kind)).await,
        ));
    }

    let connected = tokio::time::timeout(CHECK_TIMEOUT, crate::app::connect_store(settings)).await;
    match connected {
        Ok(Ok(store)) => {
            out.push(Check::from(
                "database: connect",
                bounded(async {
                    store.ping().await.map_err(|e| e.to_string())?;
                    Ok(format!("{} answers", settings.database.url_masked()))
                })
                .await,
            ));
            out.push(database::migrations(&store).await);
            out.push(Check::from(
                "database: write and roll back",
                bounded(database::write_and_roll_back(&store)).await,
            ));
            out.push(Check::from(
                "database: ledger refuses UPDATE/DELETE",
                bounded(database::ledger_immutable(&store)).await,
            ));
            store.close().await;
        }
        Ok(Err(e)) => out.push(Check::from("database: connect", Err(format!("{e:#}")))),
        Err(_) => out.push(Check::from(
            "database: connect",
            Err(format!(
                "{} did not answer within {} s",
                settings.database.url_masked(),
                CHECK_TIMEOUT.as_secs()
            )),
        )),
    }

    out.push(Check::from(
        "snapshots: write and read",
        bounded(snapshots::write_and_read(settings)).await,
    ));
    out.extend(targets::checks(settings).await);
    out
}

/// The delivery targets' checks alone (reachability, credentials).
pub async fn target_checks(settings: &Settings) -> Vec<Check> {
    targets::checks(settings).await
}

pub async fn run(settings: Settings) -> anyhow::Result<i32> {
    Ok(report::print(&checks(&settings).await))
}
