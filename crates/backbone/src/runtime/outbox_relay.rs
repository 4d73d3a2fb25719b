//! After-commit bookkeeping of the outbox: forget rows whose publish the
//! broker confirmed (batched), and re-publish rows left behind by a crash or
//! a failed publish, so a committed merged event is always published.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::internal_events::{emit, OutboxRelayed};
use crate::pubsub::publisher::Publishers;
use crate::snapshots::claim_check::ClaimCheck;
use crate::store::outbox::ConfirmedSet;
use crate::store::Store;

/// Collects confirmed event ids and deletes their outbox rows in batches.
#[derive(Clone)]
pub struct OutboxCompleter {
    tx: mpsc::UnboundedSender<String>,
    confirmed: ConfirmedSet,
}

impl OutboxCompleter {
    /// The task ends once every handle is dropped and the last ids are
    /// cleared. `confirmed` holds the ids between publish and delete.
    pub fn start(store: Store, confirmed: ConfirmedSet) -> (Self, tokio::task::JoinHandle<()>) {
        let set = confirmed.clone();
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let handle = tokio::spawn(async move {
            let mut batch = Vec::new();
            while rx.recv_many(&mut batch, 500).await > 0 {
                // A failed delete only means the relay publishes the row
                // once more later; downstream dedupes by fingerprint.
                match store.timed(store.outbox_delete(&batch)).await {
                    Ok(()) => set.remove_all(&batch),
                    // Still marked confirmed, so the merge path does not
                    // publish them again; the relay retries the delete.
                    Err(e) => {
                        tracing::warn!(error = %e, rows = batch.len(), "Could not clear published outbox rows; the relay will republish them.")
                    }
                }
                batch.clear();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        (Self { tx, confirmed }, handle)
    }

    pub fn done(&self, event_id: String) {
        self.confirmed.insert(event_id.clone());
        let _ = self.tx.send(event_id);
    }
}

/// Publishes outbox rows older than `min_age`, every `every`.
pub async fn run_relay(
    store: Store,
    publishers: Arc<Publishers>,
    completer: OutboxCompleter,
    claim_check: ClaimCheck,
    min_age: Duration,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match relay_once(&store, &publishers, &completer, &claim_check, min_age).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                published = n,
                "Outbox relay published merged events left behind."
            ),
            Err(e) => tracing::warn!(error = %e, "Outbox relay pass failed; will try again."),
        }
    }
}

/// One relay pass; returns how many rows were published.
pub async fn relay_once(
    store: &Store,
    publishers: &Publishers,
    completer: &OutboxCompleter,
    claim_check: &ClaimCheck,
    min_age: Duration,
) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
    let rows = store.timed(store.outbox_stale(min_age, 500)).await?;
    let mut n = 0;
    for row in rows {
        if completer.confirmed.contains(&row.event_id) {
            // Published already; only its delete failed. Try that again.
            completer.done(row.event_id);
            continue;
        }
        // Rows hold the full payload; an oversized one goes out as a claim check.
        let data = claim_check.shrink(Bytes::from(row.payload)).await?;
        match publishers
            .publish(&row.topic, data, row.attributes, &row.ordering_key)
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_unpublishable() => {
                // Refused for good: the rows behind it must still go out.
                tracing::error!(event_id = %row.event_id, error = %e, "Outbox row cannot be published; skipping it.");
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        emit(OutboxRelayed);
        completer.done(row.event_id);
        n += 1;
    }
    Ok(n)
}
