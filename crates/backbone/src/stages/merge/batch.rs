//! The merge engine: many messages share one database transaction.
//!
//! Handlers submit validated events; a worker collects what arrived within a
//! short linger (or up to `batch_max`), reads the batch's view (the records'
//! locked states and the rest, `store::merge_batch`), decides each item in
//! arrival order ([`decide`], pure), writes everything with one multi-row
//! statement per table, commits, and answers every submitter. Records are sharded over
//! workers by key, so each record's events keep their order.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio::sync::{mpsc, oneshot};

use super::decide;
use crate::internal_events::{emit, MergeBatchCommitted, MergeConflictResolved};
use crate::model::rules::MergePolicy;
use crate::store::ledger::RecordKey;
use crate::store::merge_batch;
use crate::store::outbox::ConfirmedSet;
use crate::store::{Store, StoreError};

// The items and decisions, where the engine's callers have found them.
pub use super::item::{
    Decision, EventItem, Item, RAW_PUBLISHED_ATTRIBUTE, SEQUENCE_ATTRIBUTE, STAGE,
};

/// Where merged events are published (a topic path).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub policy: MergePolicy,
    pub merged_topic: String,
    pub batch_max: usize,
    pub linger: Duration,
    pub workers: usize,
    /// Outbox rows this process saw published but has not deleted yet.
    pub confirmed: ConfirmedSet,
}

impl EngineConfig {
    fn rules(&self) -> decide::Rules<'_> {
        decide::Rules {
            policy: &self.policy,
            merged_topic: &self.merged_topic,
        }
    }
}

type Reply = oneshot::Sender<Result<Decision, Arc<StoreError>>>;

struct Request {
    item: Item,
    reply: Reply,
    /// Every earlier event of its record in this process is stored or gone
    /// (`LaneTurn::wait_to_enter`): it may be stored even if one of them
    /// failed before.
    lane_clear: bool,
}

/// Handle to the engine's workers; cheap to clone.
#[derive(Clone)]
pub struct MergeEngine {
    senders: Arc<Vec<mpsc::Sender<Request>>>,
}

impl MergeEngine {
    /// Starts the workers; they stop when every handle is dropped.
    pub fn start(store: Store, cfg: EngineConfig) -> Self {
        let workers = cfg.workers.max(1);
        let cfg = Arc::new(cfg);
        let mut senders = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (tx, rx) = mpsc::channel(cfg.batch_max.max(1) * 4);
            senders.push(tx);
            tokio::spawn(worker(store.clone(), cfg.clone(), rx));
        }
        Self {
            senders: Arc::new(senders),
        }
    }

    /// Submits one item and waits for its decision (after commit).
    pub async fn submit(&self, item: Item) -> Result<Decision, Arc<StoreError>> {
        self.enqueue(item, true).await?.decision().await
    }

    /// Queues one item behind those queued before it (a record's items are
    /// decided in the order they were queued); its decision comes later.
    /// Unless `lane_clear`, an event whose record had a batch fail for want
    /// of the database is refused until an event of that record that is
    /// `lane_clear` (the failed one, tried again) got through: a later
    /// event queued before the failure was known must not be stored first.
    pub async fn enqueue(&self, item: Item, lane_clear: bool) -> Result<Queued, Arc<StoreError>> {
        let shard = match &item {
            Item::Event(e) => {
                shard_of(&e.event.record_type, &e.event.record_id, self.senders.len())
            }
            Item::Audit(a) => shard_of(&a.fingerprint, "", self.senders.len()),
        };
        let (reply, rx) = oneshot::channel();
        self.senders[shard]
            .send(Request {
                item,
                reply,
                lane_clear,
            })
            .await
            .map_err(|_| Arc::new(StoreError::pool_closed()))?;
        Ok(Queued(rx))
    }
}

/// An item in the engine's queue.
pub struct Queued(oneshot::Receiver<Result<Decision, Arc<StoreError>>>);

impl Queued {
    /// Its decision, once its batch committed.
    pub async fn decision(self) -> Result<Decision, Arc<StoreError>> {
        self.0
            .await
            .map_err(|_| Arc::new(StoreError::pool_closed()))?
    }
}

fn shard_of(a: &str, b: &str, n: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    a.hash(&mut h);
    b.hash(&mut h);
    (h.finish() % n as u64) as usize
}

async fn worker(store: Store, cfg: Arc<EngineConfig>, mut rx: mpsc::Receiver<Request>) {
    // Records whose last batch failed for want of the database.
    let mut unstored: HashSet<RecordKey> = HashSet::new();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + cfg.linger;
        while batch.len() < cfg.batch_max {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(r)) => batch.push(r),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        }
        let batch = keep_order(batch, &mut unstored);
        if batch.is_empty() {
            continue;
        }
        let items: Vec<Item> = batch.iter().map(|r| r.item.clone()).collect();
        match process_retrying(&store, &cfg, &items).await {
            Ok(decisions) => {
                for (req, d) in batch.into_iter().zip(decisions) {
                    let _ = req.reply.send(Ok(d));
                }
            }
            // One event the database refuses (a value too long, JSON too
            // deep…) must not fail the others: run the items one by one,
            // each in its own transaction, in arrival order (so a record's
            // events keep their order). The good ones commit; only the
            // refused one gets the error.
            Err(e) if e.is_data() && batch.len() > 1 => {
                tracing::warn!(error = %e, items = batch.len(), "The database refused data in a merge batch; running its items one by one.");
                for req in batch {
                    let one = process_retrying(&store, &cfg, std::slice::from_ref(&req.item))
                        .await
                        .and_then(|d| {
                            d.into_iter().next().ok_or_else(|| {
                                StoreError::Corrupt("merge of one item decided nothing".into())
                            })
                        })
                        .map_err(Arc::new);
                    let _ = req.reply.send(one);
                }
            }
            Err(e) => {
                if e.is_unavailable() {
                    unstored.extend(batch.iter().filter_map(|r| record_of(&r.item)));
                }
                let e = Arc::new(e);
                for req in batch {
                    let _ = req.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// The batch without the events that must wait for an earlier event of
/// their record that failed (refused as [`StoreError::BehindUnstored`], so
/// they are held and tried again behind it); a `lane_clear` event of such a
/// record lets the record's events through again.
fn keep_order(batch: Vec<Request>, unstored: &mut HashSet<RecordKey>) -> Vec<Request> {
    if unstored.is_empty() {
        return batch;
    }
    let mut kept = Vec::with_capacity(batch.len());
    for req in batch {
        match record_of(&req.item) {
            Some(key) if unstored.contains(&key) => {
                if req.lane_clear {
                    unstored.remove(&key);
                    kept.push(req);
                } else {
                    let _ = req.reply.send(Err(Arc::new(StoreError::BehindUnstored)));
                }
            }
            _ => kept.push(req),
        }
    }
    kept
}

fn record_of(item: &Item) -> Option<RecordKey> {
    match item {
        Item::Event(e) => Some((e.event.record_type.clone(), e.event.record_id.clone())),
        Item::Audit(_) => None,
    }
}

/// [`process`], run again on contention (deadlock, a replica claiming the
/// same fingerprint, SQLite busy); any other error is returned.
async fn process_retrying(
    store: &Store,
    cfg: &EngineConfig,
    items: &[Item],
) -> Result<Vec<Decision>, StoreError> {
    let attempt = || async { store.timed(process(store, cfg, items)).await };
    attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(20))
                .with_max_delay(Duration::from_millis(500))
                .with_max_times(4)
                .with_jitter(),
        )
        .when(|e: &StoreError| e.is_contention())
        .notify(|e: &StoreError, after: Duration| {
            tracing::warn!(error = %e, retry_in = ?after, "Merge batch hit contention; retrying it.");
        })
        .await
}

/// Reads, decides and writes one batch in a single transaction.
pub async fn process(
    store: &Store,
    cfg: &EngineConfig,
    items: &[Item],
) -> Result<Vec<Decision>, StoreError> {
    let d = store.dialect();
    let mut steps = crate::metrics::StepTimer::start(STAGE);
    let _guard = store.write_guard().await;
    let mut tx = store.pool().begin().await?;
    let want = decide::wanted(items);
    let view = merge_batch::read(&mut tx, d, &want, &cfg.confirmed).await?;
    steps.mark("read_view");
    let decided = decide::decide(&cfg.rules(), view, items, &mut || {
        uuid::Uuid::now_v7().to_string()
    })?;
    steps.mark("decide");
    merge_batch::apply(&mut tx, d, &decided.writes, |step| steps.mark(step)).await?;
    tx.commit().await?;
    steps.mark("commit");
    steps.observe();
    emit(MergeBatchCommitted {
        messages: items.len(),
        pending_delta: decided.pending_delta,
    });
    for (record_type, rule) in &decided.conflicts {
        emit(MergeConflictResolved { record_type, rule });
    }
    Ok(decided.decisions)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::raw_event::Source;
    use crate::stages::merge::decide::tests::item;

    fn request(
        id: &str,
        lane_clear: bool,
    ) -> (
        Request,
        oneshot::Receiver<Result<Decision, Arc<StoreError>>>,
    ) {
        let (reply, rx) = oneshot::channel();
        let req = Request {
            item: item(id, Source::Suitex, 0, 0, json!({})),
            reply,
            lane_clear,
        };
        (req, rx)
    }

    fn key(id: &str) -> RecordKey {
        ("customer".into(), id.into())
    }

    #[test]
    fn events_queued_behind_an_unstored_one_wait_until_it_is_tried_again() {
        let mut unstored: HashSet<RecordKey> = [key("a")].into();
        let (behind, mut behind_rx) = request("a", false);
        let (other, _) = request("b", false);
        let (retry, _) = request("a", true);
        let (after, _) = request("a", false);
        let kept = keep_order(vec![behind, other, retry, after], &mut unstored);
        let kept: Vec<(RecordKey, bool)> = kept
            .iter()
            .map(|r| (record_of(&r.item).expect("an event"), r.lane_clear))
            .collect();
        assert_eq!(
            kept,
            vec![(key("b"), false), (key("a"), true), (key("a"), false)],
            "the one queued before the retry is refused; the retry and what follows it go"
        );
        assert!(unstored.is_empty());
        match behind_rx.try_recv() {
            Ok(Err(e)) => assert!(matches!(*e, StoreError::BehindUnstored) && e.is_unavailable()),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn nothing_is_refused_while_every_record_was_stored() {
        let mut unstored = HashSet::new();
        let (a, _) = request("a", false);
        let (b, _) = request("b", false);
        assert_eq!(keep_order(vec![a, b], &mut unstored).len(), 2);
    }
}
