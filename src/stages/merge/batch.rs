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

use crate::internal_events::{emit, MergeBatchCommitted, MergeConflictResolved};
use crate::model::fingerprint::format_timestamp;
use crate::model::merged_event::MergedEvent;
use crate::model::raw_event::RawEvent;
use crate::model::rules::{self, Incoming, MergeError, MergePolicy};
use crate::store::ledger::{self, AuditRow, EventRow, RecordKey, StateRow};
use crate::store::merged::{self, MergedRow};
use crate::store::outbox::{self, ConfirmedSet, OutboxRow};
use crate::store::pending::{self, PendingEvent, PendingRow};
use crate::store::{Store, StoreError};
use crate::topology::StageName;

pub const STAGE: &str = StageName::Merge.as_str();
/// Attribute of merged messages: the producing event's `sequence_num`.
pub const SEQUENCE_ATTRIBUTE: &str = "sequence_num";

/// A validated raw event ready to be merged.
#[derive(Debug, Clone)]
pub struct EventItem {
    pub event: RawEvent,
    /// Resolved changes (from the snapshot when the event had a ref).
    pub changes: serde_json::Map<String, serde_json::Value>,
    pub fingerprint: String,
    pub message_id: String,
    pub execution: u32,
    /// The message as received: a pending event keeps it for its gap dead letter.
    pub data: bytes::Bytes,
    pub attributes: HashMap<String, String>,
}

/// Work for the engine.
#[derive(Debug, Clone)]
pub enum Item {
    Event(Box<EventItem>),
    /// Only an audit row (e.g. for an invalid message).
    Audit(AuditRow),
}

/// What happened to one submitted item. `publish` lists, in version order,
/// the merged events of the record to publish now: leftovers of a process
/// that died before publishing, this event's own, and those of pending events
/// it let in (docs/spec.md §4.1).
#[derive(Debug, Clone)]
pub enum Decision {
    /// Persisted and merged.
    Merged {
        merged: Box<MergedEvent>,
        publish: Vec<OutboxRow>,
    },
    /// Persisted; nothing of its own to publish.
    Noop {
        event_id: String,
        publish: Vec<OutboxRow>,
    },
    /// The fingerprint was already claimed.
    Duplicate { publish: Vec<OutboxRow> },
    /// Stored as pending: an earlier version of the record is missing.
    Pending {
        base: i64,
        version: i64,
        publish: Vec<OutboxRow>,
    },
    /// The audit row was written.
    Audited,
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
    /// Outbox rows this process saw published but has not deleted yet.
    pub confirmed: ConfirmedSet,
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
        let closed = || Arc::new(StoreError::pool_closed());
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

/// Decides and writes one batch in a single transaction.
pub async fn process(
    store: &Store,
    cfg: &EngineConfig,
    items: &[Item],
) -> Result<Vec<Decision>, StoreError> {
    let d = store.dialect();
    let mut steps = crate::metrics::StepTimer::start(STAGE);
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
    steps.mark("read_claims");
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
    steps.mark("read_ids");
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
    steps.mark("lock_states");
    // Merged events of these records committed earlier but not known to be
    // published (a process died before its publish): they go out first, in
    // version order (docs/spec.md §4.1).
    let mut leftovers = outbox::unpublished_by_key(&mut tx, d, &keys, &cfg.confirmed).await?;
    // Pending events, only for records that have some.
    let with_pending: Vec<RecordKey> = keys
        .iter()
        .filter(|k| states.get(*k).is_some_and(|s| s.pending > 0))
        .cloned()
        .collect();
    steps.mark("outbox_read");
    let mut waiting: HashMap<RecordKey, Vec<Waiting>> = HashMap::new();
    if !with_pending.is_empty() {
        for p in pending::load(&mut tx, d, &with_pending).await? {
            waiting
                .entry((p.record_type.clone(), p.record_id.clone()))
                .or_default()
                .push(Waiting {
                    row: p,
                    stored: true,
                });
        }
    }

    steps.mark("pending_read");
    let mut w = Writes::default();
    let mut decisions = Vec::with_capacity(items.len());

    for item in items {
        let e = match item {
            Item::Audit(a) => {
                w.audit.push(a.clone());
                decisions.push(Decision::Audited);
                continue;
            }
            Item::Event(e) => e.as_ref(),
        };
        let ev = &e.event;
        let key = (ev.record_type.clone(), ev.record_id.clone());
        let okey = ev.ordering_key();
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
            w.audit.push(audit(None, "duplicate", json!({}), false));
            decisions.push(Decision::Duplicate {
                publish: leftovers.remove(&okey).unwrap_or_default(),
            });
            continue;
        }
        let event_id = match ev.id {
            Some(id) => {
                let id = id.to_string();
                if used_ids.contains(&id) {
                    w.audit.push(audit(
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
        claimed.insert(e.fingerprint.clone());
        used_ids.insert(event_id.clone());
        w.touched.insert(key.clone());
        let state = states.entry(key.clone()).or_default();
        let mut publish = leftovers.remove(&okey).unwrap_or_default();

        let incoming = Incoming {
            source: ev.source,
            timestamp: ev.timestamp,
            base_version: ev.base_version,
            changes: &e.changes,
        };
        let result = match rules::merge(&mut state.state, incoming, &cfg.policy) {
            Ok(r) => r,
            Err(MergeError::BaseVersionAhead { base, version }) => {
                // A gap is not an error: the event waits, durably, for the
                // versions before it (docs/spec.md §4.1).
                w.audit.push(audit(
                    Some(event_id.clone()),
                    "pending",
                    json!({"base_version": base, "version": version}),
                    true,
                ));
                let row = PendingRow {
                    fingerprint: e.fingerprint.clone(),
                    event_id,
                    record_type: ev.record_type.clone(),
                    record_id: ev.record_id.clone(),
                    base_version: base,
                    event: PendingEvent {
                        id: ev.id,
                        source: ev.source,
                        timestamp: ev.timestamp,
                        base_version: base,
                        changes: e.changes.clone(),
                        full_snapshot_ref: ev.full_snapshot_ref.clone(),
                    },
                    message_id: Some(e.message_id.clone()),
                    data: e.data.to_vec(),
                    attributes: e.attributes.clone(),
                };
                state.pending += 1;
                w.pending_added += 1;
                waiting
                    .entry(key.clone())
                    .or_default()
                    .push(Waiting { row, stored: false });
                decisions.push(Decision::Pending {
                    base,
                    version,
                    publish,
                });
                continue;
            }
        };
        let applied = Applied {
            event_id: event_id.clone(),
            fingerprint: e.fingerprint.clone(),
            record_type: ev.record_type.clone(),
            record_id: ev.record_id.clone(),
            source: ev.source,
            timestamp: ev.timestamp,
            base_version: ev.base_version,
            changes: &e.changes,
            full_snapshot_ref: ev.full_snapshot_ref.clone(),
            message_id: e.message_id.clone(),
            attempt: e.execution as i32,
            claim: true,
        };
        let own = w.record(cfg, state, applied, result)?;
        if let Some((_, row)) = &own {
            publish.push(row.clone());
        }
        // The record moved: pending events that now fit merge right behind it.
        release_pending(cfg, state, waiting.get_mut(&key), &mut w, &mut publish)?;
        decisions.push(match own {
            Some((merged, _)) => Decision::Merged {
                merged: Box::new(merged),
                publish,
            },
            None => Decision::Noop { event_id, publish },
        });
    }

    // Pending events still waiting: new ones are stored, stored ones stay.
    for list in waiting.into_values() {
        for wt in list {
            if !wt.stored {
                w.pending_new.push(wt.row);
            }
        }
    }
    let state_rows: Vec<(RecordKey, StateRow)> = states
        .into_iter()
        .filter(|(k, _)| w.touched.contains(k))
        .collect();
    steps.mark("decide");
    if !w.events.is_empty() {
        ledger::insert_events(&mut tx, d, &w.events).await?;
    }
    steps.mark("write_events");
    if !w.audit.is_empty() {
        ledger::insert_audit(&mut tx, &w.audit).await?;
    }
    steps.mark("write_audit");
    if !state_rows.is_empty() {
        ledger::upsert_states(&mut tx, d, &state_rows).await?;
    }
    steps.mark("write_state");
    if !w.outbox.is_empty() {
        outbox::insert(&mut tx, &w.outbox).await?;
        steps.mark("write_outbox");
        merged::insert(&mut tx, &w.merged, &w.events).await?;
        steps.mark("write_merged");
    }
    if !w.pending_new.is_empty() {
        pending::insert(&mut tx, &w.pending_new).await?;
    }
    if !w.pending_done.is_empty() {
        pending::delete(&mut tx, &w.pending_done).await?;
    }
    steps.mark("write_pending");
    tx.commit().await?;
    steps.mark("commit");
    steps.observe();
    emit(MergeBatchCommitted {
        messages: items.len(),
        pending_delta: w.pending_added - w.pending_done.len() as i64,
    });
    for (record_type, rule) in &w.conflicts {
        emit(MergeConflictResolved { record_type, rule });
    }
    Ok(decisions)
}

/// A pending event of a record in this batch; `stored` once it is in the table.
struct Waiting {
    row: PendingRow,
    stored: bool,
}

/// Everything one batch writes.
#[derive(Default)]
struct Writes {
    events: Vec<EventRow>,
    audit: Vec<AuditRow>,
    outbox: Vec<OutboxRow>,
    merged: Vec<MergedRow>,
    pending_new: Vec<PendingRow>,
    /// Fingerprints of stored pending events merged in this batch.
    pending_done: Vec<String>,
    pending_added: i64,
    touched: HashSet<RecordKey>,
    /// (record_type, rule) per resolved conflict, counted once committed.
    conflicts: Vec<(String, &'static str)>,
}

/// An event whose merge succeeded, as the rows need it.
struct Applied<'a> {
    event_id: String,
    fingerprint: String,
    record_type: String,
    record_id: String,
    source: crate::model::raw_event::Source,
    timestamp: chrono::DateTime<chrono::Utc>,
    base_version: i64,
    changes: &'a serde_json::Map<String, serde_json::Value>,
    full_snapshot_ref: Option<String>,
    message_id: String,
    attempt: i32,
    /// Its audit row claims the fingerprint (not when a pending row did).
    claim: bool,
}

impl Writes {
    /// Writes the rows of a merged event; returns it and its outbox row when
    /// it is published.
    fn record(
        &mut self,
        cfg: &EngineConfig,
        state: &mut StateRow,
        a: Applied<'_>,
        result: rules::MergeResult,
    ) -> Result<Option<(MergedEvent, OutboxRow)>, StoreError> {
        state.version = state.state.version;
        state.last_seq += 1;
        self.events.push(EventRow {
            id: a.event_id.clone(),
            record_type: a.record_type.clone(),
            record_id: a.record_id.clone(),
            source: a.source.as_str().to_string(),
            timestamp: a.timestamp,
            base_version: a.base_version,
            changes: serde_json::Value::Object(a.changes.clone()).to_string(),
            full_snapshot_ref: a.full_snapshot_ref.clone(),
            // The merge ran in this same transaction.
            processed: true,
            sequence_num: state.last_seq,
        });
        self.conflicts.extend(
            result
                .conflicts
                .iter()
                .map(|c| (a.record_type.clone(), c.rule.as_str())),
        );
        let applied_fields: Vec<&String> = result.applied.keys().collect();
        let outcome = if result.publishes() { "merged" } else { "noop" };
        self.audit.push(AuditRow {
            event_id: Some(a.event_id.clone()),
            fingerprint: a.fingerprint.clone(),
            record_type: Some(a.record_type.clone()),
            record_id: Some(a.record_id.clone()),
            stage: STAGE.to_string(),
            outcome: outcome.to_string(),
            detail: Some(
                json!({
                    "sequence_num": state.last_seq,
                    "version": result.version,
                    "applied": applied_fields,
                    "conflicts": result.conflicts.len(),
                    "was_pending": !a.claim,
                })
                .to_string(),
            ),
            message_id: Some(a.message_id.clone()),
            attempt: a.attempt,
            claim: a.claim,
        });
        if !result.publishes() {
            return Ok(None);
        }
        let merged = MergedEvent {
            event_id: a.event_id.clone(),
            fingerprint: a.fingerprint,
            record_type: a.record_type.clone(),
            record_id: a.record_id.clone(),
            origin: a.source,
            version: result.version,
            base_version: a.base_version,
            timestamp: format_timestamp(&a.timestamp),
            applied: result.applied,
            conflicts: result.conflicts,
            full_snapshot_ref: None,
        };
        let payload = serde_json::to_string(&merged)
            .map_err(|e| StoreError::Corrupt(format!("merged event: {e}")))?;
        let mut attributes = merged.attributes();
        // Orders a record's merged events where versions repeat (a
        // conflict-only event keeps the version): deliveries compare it.
        attributes.insert(SEQUENCE_ATTRIBUTE.to_string(), state.last_seq.to_string());
        let row = OutboxRow {
            event_id: a.event_id.clone(),
            topic: cfg.merged_topic.clone(),
            ordering_key: merged.ordering_key(),
            payload: payload.clone(),
            attributes,
            sequence_num: state.last_seq,
        };
        self.outbox.push(row.clone());
        self.merged.push(MergedRow {
            record_type: a.record_type,
            record_id: a.record_id,
            sequence_num: state.last_seq,
            version: merged.version,
            event_id: a.event_id,
            payload,
        });
        Ok(Some((merged, row)))
    }
}

/// Merges, in version order, the pending events of a record that now fit
/// (base ≤ version), each one possibly letting the next one in.
fn release_pending(
    cfg: &EngineConfig,
    state: &mut StateRow,
    waiting: Option<&mut Vec<Waiting>>,
    w: &mut Writes,
    publish: &mut Vec<OutboxRow>,
) -> Result<(), StoreError> {
    let Some(list) = waiting else {
        return Ok(());
    };
    loop {
        // Lowest base first; among equal bases, the one that arrived first.
        let Some(i) = list
            .iter()
            .enumerate()
            .filter(|(_, wt)| wt.row.base_version <= state.version)
            .min_by_key(|(i, wt)| (wt.row.base_version, *i))
            .map(|(i, _)| i)
        else {
            return Ok(());
        };
        let wt = list.remove(i);
        let p = wt.row;
        let incoming = Incoming {
            source: p.event.source,
            timestamp: p.event.timestamp,
            base_version: p.base_version,
            changes: &p.event.changes,
        };
        let result = match rules::merge(&mut state.state, incoming, &cfg.policy) {
            Ok(r) => r,
            // Cannot happen (base ≤ version was checked); keep it waiting.
            Err(_) => continue,
        };
        state.pending -= 1;
        if wt.stored {
            w.pending_done.push(p.fingerprint.clone());
        } else {
            w.pending_added -= 1;
        }
        let applied = Applied {
            event_id: p.event_id.clone(),
            fingerprint: p.fingerprint.clone(),
            record_type: p.record_type.clone(),
            record_id: p.record_id.clone(),
            source: p.event.source,
            timestamp: p.event.timestamp,
            base_version: p.base_version,
            changes: &p.event.changes,
            full_snapshot_ref: p.event.full_snapshot_ref.clone(),
            message_id: p.message_id.clone().unwrap_or_default(),
            attempt: 1,
            claim: false,
        };
        if let Some((_, row)) = w.record(cfg, state, applied, result)? {
            publish.push(row);
        }
    }
}
