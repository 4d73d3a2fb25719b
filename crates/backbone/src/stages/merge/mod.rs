//! The merge stage (docs/spec.md §4 "merge", §5): validate → resolve snapshot →
//! fingerprint → one transaction (dedupe claim, event, audit, state, outbox)
//! → the runtime publishes the merged event and acks.

pub mod batch;
pub mod decide;
pub mod gaps;
pub mod item;

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde_json::{json, Map, Value};

use self::batch::{Decision, EventItem, Item, MergeEngine, RAW_PUBLISHED_ATTRIBUTE, STAGE};
use super::{
    snapshot_failure, store_failure, ErrorClass, Failure, Incoming, Outbound, Outcome, Stage,
    StageError, StageResult,
};
use crate::model::fingerprint::{fingerprint, fingerprint_bytes};
use crate::model::raw_event::{check_changes, parse_raw_event, RawEvent};
use crate::snapshots::claim_check::shrink;
use crate::snapshots::{Scope, SnapshotStore};
use crate::store::ledger::AuditRow;
use crate::store::outbox::OutboxRow;
use crate::topology::TopicKind;

/// Attribute of the probe `event-backbone doctor` publishes to the raw topic.
/// A message that carries it and is not a raw event is acked unrecorded, so a
/// doctor run against a live deployment never lands in the DLQ. A valid raw
/// event is always processed, whatever its attributes.
pub const PROBE_ATTRIBUTE: &str = "backbone_doctor_probe";

/// The docs/spec.md §3.3 default (1 MiB).
pub const DEFAULT_CLAIM_CHECK_THRESHOLD: u64 = 1_048_576;

/// How many of a record's later events may be queued at the engine while
/// its earliest unsettled one is published: a burst of that many shares a
/// batch (`stages::lane_turn`).
pub const LANE_AHEAD: usize = 64;

/// What this stage reads, as its store failures name it.
const RAW_EVENT: &str = "raw event";

pub struct MergeStage {
    engine: MergeEngine,
    snapshots: Arc<dyn SnapshotStore>,
    /// Merged payloads above this go out as a claim check (docs/spec.md §3.3).
    claim_check_threshold: u64,
}

impl MergeStage {
    pub fn new(engine: MergeEngine, snapshots: Arc<dyn SnapshotStore>) -> Self {
        Self {
            engine,
            snapshots,
            claim_check_threshold: DEFAULT_CLAIM_CHECK_THRESHOLD,
        }
    }

    /// `snapshots.claim_check_threshold_bytes`.
    pub fn with_claim_check_threshold(mut self, bytes: u64) -> Self {
        self.claim_check_threshold = bytes;
        self
    }

    async fn run(&self, msg: &Incoming) -> StageResult {
        let ev = match parse_raw_event(&msg.data) {
            Ok(ev) => ev,
            Err(_) if msg.attributes.contains_key(PROBE_ATTRIBUTE) => {
                return Ok(Outcome::ack("probe", None));
            }
            Err(v) => {
                let fp = fingerprint_bytes(&msg.data);
                let err = StageError::invalid(v.to_string());
                self.audit_failure(msg, None, &fp, "invalid", &err).await?;
                return Err(Failure {
                    error: err,
                    fingerprint: Some(fp),
                });
            }
        };
        let changes = self.changes_of(msg, &ev).await?;
        let fp = fingerprint(&ev, &changes);
        let fail = |error: StageError| Failure {
            error,
            fingerprint: Some(fp.clone()),
        };
        let record = (ev.record_type.clone(), ev.record_id.clone());
        // Behind the record's earlier events in this lane, even on a retry.
        let lane_clear = msg.turn.wait_to_enter().await;
        let queued = self
            .engine
            .enqueue(
                Item::Event(Box::new(EventItem {
                    event: ev,
                    changes,
                    fingerprint: fp.clone(),
                    message_id: msg.message_id.clone(),
                    execution: msg.execution,
                    data: msg.data.clone(),
                    attributes: msg.attributes.clone(),
                })),
                lane_clear,
            )
            .await;
        // Queued in order: the record's next events may be queued behind it
        // now and share its batch (`lane_turn`).
        msg.turn.pass();
        let submitted = match queued {
            Ok(q) => q.decision().await,
            Err(e) => Err(e),
        };
        if submitted.as_ref().is_err_and(|e| e.is_unavailable()) {
            // Tried again: nothing behind it may be stored first.
            msg.turn.failed();
        }
        let decision = match submitted {
            Ok(d) => d,
            Err(e) => {
                let error = store_failure(&e, RAW_EVENT);
                if error.class == ErrorClass::Invalid {
                    // Refused by the database: recorded like any invalid message.
                    self.audit_failure(msg, Some(record), &fp, "invalid", &error)
                        .await?;
                }
                return Err(fail(error));
            }
        };
        let (label, publish) = labelled(decision).map_err(fail)?;
        let publish = self
            .outbound(publish, msg.publish_time)
            .await
            .map_err(fail)?;
        Ok(Outcome {
            label,
            fingerprint: Some(fp),
            publish,
        })
    }

    /// The event's changes: its own, or the snapshot its reference names.
    /// A snapshot that cannot be read fails the message (audited, unless the
    /// store is only unavailable: no audit row per in-process try).
    async fn changes_of(
        &self,
        msg: &Incoming,
        ev: &RawEvent,
    ) -> Result<Map<String, Value>, Failure> {
        let Some(r) = &ev.full_snapshot_ref else {
            return Ok(ev.changes.clone());
        };
        match self.resolve(r).await {
            Ok(c) => Ok(c),
            Err(error) => {
                let fp = fingerprint_bytes(&msg.data);
                let outcome = error.dead_reason().unwrap_or("transient");
                if error.class != super::ErrorClass::Unavailable {
                    let key = (ev.record_type.clone(), ev.record_id.clone());
                    self.audit_failure(msg, Some(key), &fp, outcome, &error)
                        .await?;
                }
                Err(Failure {
                    error,
                    fingerprint: Some(fp),
                })
            }
        }
    }

    /// The messages for committed merged events, in the order given (version
    /// order per record). The outbox keeps the full payload; only the message
    /// shrinks. If the snapshot store is down the commit stands: the message
    /// is held and the stage tried again, which finds it a duplicate and
    /// publishes its outbox rows then. Each carries `raw_published_at`, the
    /// broker's time of the raw message being merged: for rows of other
    /// messages (a dead process's leftovers, pending events let in) a time
    /// no earlier than their own, so their deliveries wait no less than
    /// their own time would make them.
    async fn outbound(
        &self,
        rows: Vec<OutboxRow>,
        raw_published: Option<DateTime<Utc>>,
    ) -> Result<Vec<Outbound>, StageError> {
        let raw_published =
            raw_published.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
        let mut out = Vec::with_capacity(rows.len());
        for mut row in rows {
            if let Some(t) = &raw_published {
                row.attributes
                    .insert(RAW_PUBLISHED_ATTRIBUTE.to_string(), t.clone());
            }
            let data = shrink(
                self.snapshots.as_ref(),
                self.claim_check_threshold,
                Bytes::from(row.payload),
            )
            .await
            .map_err(|e| {
                StageError::unavailable(format!(
                    "merged event is committed but its claim check failed: {e}"
                ))
            })?;
            out.push(Outbound {
                topic: TopicKind::Merged,
                ordering_key: row.ordering_key,
                data,
                attributes: row.attributes,
                outbox_id: Some(row.event_id),
            });
        }
        Ok(out)
    }

    /// Snapshot changes must be a JSON object, like inline `changes`.
    async fn resolve(&self, reference: &str) -> Result<Map<String, Value>, StageError> {
        let bytes = self
            .snapshots
            .read(reference, Scope::Raw)
            .await
            .map_err(|e| snapshot_failure(&e))?;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(m)) => match check_changes(&m) {
                Ok(()) => Ok(m),
                Err(reason) => Err(StageError::invalid(format!(
                    "invalid raw event: field `full_snapshot_ref` points at {reference}, whose changes {reason}"
                ))),
            },
            Ok(_) => Err(StageError::invalid(format!(
                "invalid raw event: field `full_snapshot_ref` points at {reference}, which is not a JSON object"
            ))),
            Err(e) => Err(StageError::invalid(format!(
                "invalid raw event: field `full_snapshot_ref` points at {reference}, which is not JSON: {e}"
            ))),
        }
    }

    /// Records a failed execution in the audit log. If even that cannot be
    /// written the database is down: the message is nacked, not lost.
    async fn audit_failure(
        &self,
        msg: &Incoming,
        record: Option<(String, String)>,
        fp: &str,
        outcome: &str,
        err: &StageError,
    ) -> Result<(), Failure> {
        let row = AuditRow {
            event_id: None,
            fingerprint: fp.to_string(),
            record_type: record.as_ref().map(|r| r.0.clone()),
            record_id: record.map(|r| r.1),
            stage: STAGE.to_string(),
            outcome: outcome.to_string(),
            detail: Some(json!({"error": err.message}).to_string()),
            message_id: Some(msg.message_id.clone()),
            attempt: msg.execution as i32,
            claim: false,
        };
        self.engine
            .submit(Item::Audit(row))
            .await
            .map(|_| ())
            .map_err(|e| Failure {
                error: store_failure(&e, RAW_EVENT),
                fingerprint: Some(fp.to_string()),
            })
    }
}

/// The outcome's label and what to publish, for the engine's decision on
/// an event; an id reused for other content is permanent.
fn labelled(decision: Decision) -> Result<(&'static str, Vec<OutboxRow>), StageError> {
    match decision {
        Decision::Merged { publish, .. } => Ok(("merged", publish)),
        Decision::Noop { publish, .. } => Ok(("noop", publish)),
        Decision::Duplicate { publish } => Ok(("duplicate", publish)),
        Decision::Pending {
            base,
            version,
            publish,
        } => {
            tracing::info!(
                base_version = base,
                version,
                "Event stored as pending: an earlier version of its record has not arrived yet."
            );
            Ok(("pending", publish))
        }
        Decision::IdReused { id } => Err(StageError::permanent(format!(
            "id {id} was already used for an event with different content"
        ))),
        Decision::Audited => Err(StageError::transient(
            "merge engine answered an event with an audit decision",
        )),
    }
}

impl Stage for MergeStage {
    fn name(&self) -> &'static str {
        STAGE
    }

    fn handle<'a>(&'a self, msg: &'a Incoming) -> BoxFuture<'a, StageResult> {
        Box::pin(self.run(msg))
    }
}
