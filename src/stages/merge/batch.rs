//! The merge engine: many messages share one database transaction.
//!
//! Handlers submit validated events; a worker collects what arrived within a
//! short linger (or up to `batch_max`), decides each in arrival order against
//! the records' locked states, writes everything with one multi-row statement
//! per table, commits, and answers every submitter. Records are sharded over
//! workers by key, so each record's events keep their order.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::rules::{self, Incoming, MergeError, MergePolicy};
use crate::model::fingerprint::format_timestamp;
use crate::model::merged_event::MergedEvent;
use crate::model::raw_event::RawEvent;
use crate::store::ledger::{self, AuditRow, EventRow, RecordKey, StateRow};
use crate::store::outbox::{self, OutboxRow};
use crate::store::{Store, StoreError};

pub const STAGE: &str = "merge";

/// A validated raw event ready to be merged.
#[derive(Debug, Clone)]
pub struct EventItem {
    pub event: RawEvent,
    /// Resolved changes (from the snapshot when the event had a ref).
    pub changes: serde_json::Map<String, serde_json::Value>,
    pub fingerprint: String,
    pub message_id: String,
    pub execution: u32,
}

/// Work for the engine.
#[derive(Debug, Clone)]
pub enum Item {
    Event(Box<EventItem>),
    /// Only an audit row (e.g. for an invalid message).
    Audit(AuditRow),
}

/// What happened to one submitted item.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Persisted and merged; publish `outbox` (already committed to the outbox).
    Merged {
        merged: Box<MergedEvent>,
        outbox: Box<OutboxRow>,
    },
    /// Persisted; nothing to publish.
    Noop { event_id: String },
    /// The fingerprint was already claimed.
    Duplicate,
    /// The audit row was written.
    Audited,
    /// The event cannot be merged yet (an earlier one is missing).
    BaseVersionAhead { base: i64, version: i64 },
    /// The publisher's id was used before for other content.
    IdReused { id: String },
}

/// Where merged events are published (a topic path).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub policy: MergePolicy,
    pub merged_topic: String,
    pub batch_max: usize,
    pub linger: Duration,
    pub workers: usize,
}

type Reply = oneshot::Sender<Result<Decision, Arc<StoreError>>>;

struct Request {
    item: Item,
    reply: Reply,
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
        let shard = match &item {
            Item::Event(e) => {
                shard_of(&e.event.record_type, &e.event.record_id, self.senders.len())
            }
            Item::Audit(a) => shard_of(&a.fingerprint, "", self.senders.len()),
        };
        let (reply, rx) = oneshot::channel();
        let closed = || Arc::new(StoreError::Sqlx(sqlx::Error::PoolClosed));
        self.senders[shard]
            .send(Request { item, reply })
            .await
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}

fn shard_of(a: &str, b: &str, n: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    a.hash(&mut h);
    b.hash(&mut h);
    (h.finish() % n as u64) as usize
}

async fn worker(store: Store, cfg: Arc<EngineConfig>, mut rx: mpsc::Receiver<Request>) {
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
                let e = Arc::new(e);
                for req in batch {
                    let _ = req.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// [`process`], run again on contention (deadlock, a replica claiming the
/// same fingerprint, SQLite busy); any other error is returned.
async fn process_retrying(
    store: &Store,
    cfg: &EngineConfig,
    items: &[Item],
) -> Result<Vec<Decision>, StoreError> {
    let attempt = || async { process(store, cfg, items).await };
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

/// Decides and writes one batch in a single transaction.
pub async fn process(
    store: &Store,
    cfg: &EngineConfig,
    items: &[Item],
) -> Result<Vec<Decision>, StoreError> {
    let d = store.dialect();
    let _guard = store.write_guard().await;
    let mut tx = store.pool().begin().await?;

    let events: Vec<&EventItem> = items
        .iter()
        .filter_map(|i| match i {
            Item::Event(e) => Some(e.as_ref()),
            Item::Audit(_) => None,
        })
        .collect();
    let fps: Vec<&str> = events.iter().map(|e| e.fingerprint.as_str()).collect();
    let mut claimed = if fps.is_empty() {
        HashSet::new()
    } else {
        ledger::claimed(&mut tx, STAGE, &fps).await?
    };
    let given_ids: Vec<String> = events
        .iter()
        .filter_map(|e| e.event.id.map(|u| u.to_string()))
        .collect();
    let given_refs: Vec<&str> = given_ids.iter().map(String::as_str).collect();
    let mut used_ids = if given_refs.is_empty() {
        HashSet::new()
    } else {
        ledger::existing_event_ids(&mut tx, &given_refs).await?
    };
    let mut keys: Vec<RecordKey> = events
        .iter()
        .map(|e| (e.event.record_type.clone(), e.event.record_id.clone()))
        .collect();
    keys.sort();
    keys.dedup();
    let mut states: HashMap<RecordKey, StateRow> = if keys.is_empty() {
        HashMap::new()
    } else {
        ledger::load_states(&mut tx, d, &keys, true).await?
    };
    let mut touched: HashSet<RecordKey> = HashSet::new();

    let mut event_rows = Vec::new();
    let mut audit_rows = Vec::new();
    let mut outbox_rows = Vec::new();
    let mut decisions = Vec::with_capacity(items.len());
    // (record_type, rule) per resolved conflict, counted once committed.
    let mut conflicts: Vec<(String, &'static str)> = Vec::new();

    for item in items {
        let e = match item {
            Item::Audit(a) => {
                audit_rows.push(a.clone());
                decisions.push(Decision::Audited);
                continue;
            }
            Item::Event(e) => e.as_ref(),
        };
        let ev = &e.event;
        let key = (ev.record_type.clone(), ev.record_id.clone());
        let audit =
            |event_id: Option<String>, outcome: &str, detail: serde_json::Value, claim| AuditRow {
                event_id,
                fingerprint: e.fingerprint.clone(),
                record_type: Some(ev.record_type.clone()),
                record_id: Some(ev.record_id.clone()),
                stage: STAGE.to_string(),
                outcome: outcome.to_string(),
                detail: Some(detail.to_string()),
                message_id: Some(e.message_id.clone()),
                attempt: e.execution as i32,
                claim,
            };

        if claimed.contains(&e.fingerprint) {
            audit_rows.push(audit(None, "duplicate", json!({}), false));
            decisions.push(Decision::Duplicate);
            continue;
        }
        let event_id = match ev.id {
            Some(id) => {
                let id = id.to_string();
                if used_ids.contains(&id) {
                    audit_rows.push(audit(
                        Some(id.clone()),
                        "permanent",
                        json!({"error": "id reused with different content"}),
                        false,
                    ));
                    decisions.push(Decision::IdReused { id });
                    continue;
                }
                id
            }
            None => uuid::Uuid::now_v7().to_string(),
        };

        let state = states.entry(key.clone()).or_default();
        let incoming = Incoming {
            source: ev.source,
            timestamp: ev.timestamp,
            base_version: ev.base_version,
            changes: &e.changes,
        };
        let result = match rules::merge(&mut state.state, incoming, &cfg.policy) {
            Ok(r) => r,
            Err(MergeError::BaseVersionAhead { base, version }) => {
                audit_rows.push(audit(
                    None,
                    "transient",
                    json!({"error": "base_version ahead", "base_version": base, "version": version}),
                    false,
                ));
                decisions.push(Decision::BaseVersionAhead { base, version });
                continue;
            }
        };
        claimed.insert(e.fingerprint.clone());
        used_ids.insert(event_id.clone());
        touched.insert(key.clone());
        state.version = state.state.version;
        state.last_seq += 1;

        event_rows.push(EventRow {
            id: event_id.clone(),
            record_type: ev.record_type.clone(),
            record_id: ev.record_id.clone(),
            source: ev.source.as_str().to_string(),
            timestamp: ev.timestamp,
            base_version: ev.base_version,
            changes: serde_json::Value::Object(e.changes.clone()).to_string(),
            full_snapshot_ref: ev.full_snapshot_ref.clone(),
            // The merge ran in this same transaction.
            processed: true,
            sequence_num: state.last_seq,
        });
        conflicts.extend(
            result
                .conflicts
                .iter()
                .map(|c| (ev.record_type.clone(), c.rule.as_str())),
        );
        let applied_fields: Vec<&String> = result.applied.keys().collect();
        let outcome = if result.publishes() { "merged" } else { "noop" };
        audit_rows.push(audit(
            Some(event_id.clone()),
            outcome,
            json!({
                "sequence_num": state.last_seq,
                "version": result.version,
                "applied": applied_fields,
                "conflicts": result.conflicts.len(),
            }),
            true,
        ));

        if result.publishes() {
            let merged = MergedEvent {
                event_id: event_id.clone(),
                fingerprint: e.fingerprint.clone(),
                record_type: ev.record_type.clone(),
                record_id: ev.record_id.clone(),
                origin: ev.source,
                version: result.version,
                base_version: ev.base_version,
                timestamp: format_timestamp(&ev.timestamp),
                applied: result.applied,
                conflicts: result.conflicts,
                full_snapshot_ref: None,
            };
            let row = OutboxRow {
                event_id: event_id.clone(),
                topic: cfg.merged_topic.clone(),
                ordering_key: merged.ordering_key(),
                payload: serde_json::to_string(&merged)
                    .map_err(|e| StoreError::Corrupt(format!("merged event: {e}")))?,
                attributes: merged.attributes(),
            };
            outbox_rows.push(row.clone());
            decisions.push(Decision::Merged {
                merged: Box::new(merged),
                outbox: Box::new(row),
            });
        } else {
            decisions.push(Decision::Noop { event_id });
        }
    }

    let state_rows: Vec<(RecordKey, StateRow)> = states
        .into_iter()
        .filter(|(k, _)| touched.contains(k))
        .collect();
    if !event_rows.is_empty() {
        ledger::insert_events(&mut tx, d, &event_rows).await?;
    }
    if !audit_rows.is_empty() {
        ledger::insert_audit(&mut tx, &audit_rows).await?;
    }
    if !state_rows.is_empty() {
        ledger::upsert_states(&mut tx, d, &state_rows).await?;
    }
    if !outbox_rows.is_empty() {
        outbox::insert(&mut tx, &outbox_rows).await?;
    }
    tx.commit().await?;
    let m = crate::metrics::metrics();
    m.merge_batch_size.observe(items.len() as f64);
    for (record_type, rule) in &conflicts {
        m.merge_conflicts
            .with_label_values(&[record_type.as_str(), rule])
            .inc();
    }
    Ok(decisions)
}
