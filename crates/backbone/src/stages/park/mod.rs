//! The park stage (docs/spec.md §4 "park"): every dead letter becomes a row in
//! `dead_letters` (idempotent on redelivery) plus an audit row, and only then
//! is it acked. Nothing is dropped: if the row cannot be written the message
//! is nacked and comes back.
//!
//! Anything that reaches the dlq can be parked: values too long for their
//! columns are stored cut (the message data is kept whole), and a row the
//! database still refuses is parked with its data and attributes alone. A
//! dead letter that cannot be parked at all (missing grants, a bug) is not
//! retried in a tight loop: after [`TRIES_BEFORE_HOLD`] failures it is held
//! for [`HOLD`] before each nack, logged, counted
//! (`backbone_park_failures_total`, `backbone_dead_letters_unparked`) and
//! shown in `/readyz`'s detail.

mod unparked;

use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{json, Value};

use super::{Failure, Incoming, Outcome, Stage, StageError, StageResult};
use crate::internal_events::{emit, DeadLetterHeld, ParkFailed};
use crate::model::envelope;
use crate::model::fingerprint::fingerprint_bytes;
use crate::store::dead_letters::{NewDeadLetter, Parked};
use crate::store::ledger::AuditRow;
use crate::store::{Store, StoreError};
use crate::topology::{ConsumerKind, StageName, Topology};

pub use self::unparked::{unparked_count, unparked_detail};

pub const STAGE: &str = StageName::Park.as_str();
/// Attribute a replay adds so a replayed message that dies again reopens its
/// row instead of creating another.
pub const REPLAY_OF: &str = envelope::REPLAY_OF;

/// The `dead_reason` of a message whose envelope Pub/Sub would not take:
/// parked by the runtime directly, never sent through the dlq topic.
pub const UNPUBLISHABLE: &str = "unpublishable";

/// Failed parks of one dlq message (not counting database outages) before
/// each further try is held back.
pub const TRIES_BEFORE_HOLD: u32 = 3;
/// How long a dead letter that keeps failing to park is held before it is
/// nacked again (within the subscriber's 60 s lease extension).
pub const HOLD: Duration = Duration::from_secs(30);

pub struct ParkStage {
    store: Store,
    topology: Topology,
    hold: Duration,
}

impl ParkStage {
    pub fn new(store: Store, topology: Topology) -> Self {
        Self {
            store,
            topology,
            hold: HOLD,
        }
    }

    /// Another hold than [`HOLD`] (tests).
    pub fn with_hold(mut self, hold: Duration) -> Self {
        self.hold = hold;
        self
    }

    /// The stage a broker-dead-lettered message failed in, from the
    /// subscription the broker names.
    fn stage_of_subscription(&self, sub: &str) -> String {
        let id = sub.rsplit('/').next().unwrap_or(sub);
        for kind in [
            ConsumerKind::Merge,
            ConsumerKind::Netsuite,
            ConsumerKind::Suitex,
        ] {
            if id == self.topology.subscription_id(kind) {
                return StageName::of_consumer(kind).to_string();
            }
        }
        "unknown".to_string()
    }

    /// Builds the row from our envelope or, failing that, the broker's.
    pub fn dead_letter(&self, msg: &Incoming) -> NewDeadLetter {
        let a = &msg.attributes;
        let broker_sub = a.get(envelope::BROKER_DLQ_SOURCE_SUBSCRIPTION).cloned();
        let broker_count = a
            .get(envelope::BROKER_DLQ_DELIVERY_COUNT)
            .and_then(|c| c.parse::<i32>().ok());
        let stage = a
            .get(envelope::STAGE)
            .cloned()
            .or_else(|| broker_sub.as_deref().map(|s| self.stage_of_subscription(s)))
            .unwrap_or_else(|| "unknown".into());
        // A broker dead letter has used up its delivery attempts.
        let reason = a
            .get(envelope::DEAD_REASON)
            .cloned()
            .unwrap_or_else(|| "exhausted".into());
        let attempts = a
            .get(envelope::ATTEMPT)
            .and_then(|v| v.parse::<i32>().ok())
            .or(broker_count)
            .unwrap_or(0);
        let (record_type, record_id) = record_of(&msg.data);
        let mut errors: Vec<String> = a
            .get(envelope::ERROR_HISTORY)
            .map(|h| h.lines().map(str::to_string).collect())
            .unwrap_or_default();
        if errors.is_empty() {
            if let Some(e) = a.get(envelope::LAST_ERROR) {
                errors.push(e.clone());
            } else if let Some(sub) = &broker_sub {
                errors.push(format!(
                    "dead-lettered by Pub/Sub after {} delivery attempts on {sub}",
                    broker_count.unwrap_or(0)
                ));
            }
        }
        NewDeadLetter {
            dlq_message_id: msg.message_id.clone(),
            origin_message_id: a.get(envelope::ORIGIN_MESSAGE_ID).cloned(),
            stage,
            reason,
            attempts,
            // Only a real fingerprint: the attribute may come from anyone.
            fingerprint: Some(
                a.get(envelope::FINGERPRINT)
                    .filter(|f| is_fingerprint(f))
                    .cloned()
                    .unwrap_or_else(|| fingerprint_bytes(&msg.data)),
            ),
            record_type,
            record_id,
            last_error: a
                .get(envelope::LAST_ERROR)
                .cloned()
                .or_else(|| errors.last().cloned()),
            errors,
            data: msg.data.to_vec(),
            attributes: a.clone(),
            ordering_key: a
                .get(envelope::ORDERING_KEY)
                .cloned()
                .or_else(|| (!msg.ordering_key.is_empty()).then(|| msg.ordering_key.clone())),
            source_subscription: broker_sub,
            delivery_count: broker_count,
            replay_of: a.get(REPLAY_OF).and_then(|v| v.parse::<i64>().ok()),
        }
    }

    /// Parks, straight into `dead_letters`, a failed message whose error
    /// envelope Pub/Sub will not take (docs/spec.md §10 `unpublishable`): the row
    /// keeps the original data and attributes whole, with the envelope's
    /// details (stage, attempts, error history) and why it could not be
    /// published. Idempotent on a redelivery of the same message.
    pub async fn park_unpublishable(
        &self,
        original: &Incoming,
        envelope_attributes: &std::collections::HashMap<String, String>,
        why: &str,
    ) -> Result<Parked, StoreError> {
        let as_envelope = Incoming {
            attributes: envelope_attributes.clone(),
            ..original.clone()
        };
        let mut dl = self.dead_letter(&as_envelope);
        let stage = dl.stage.clone();
        dl.dlq_message_id = format!("unpublishable/{stage}/{}", original.message_id);
        dl.reason = UNPUBLISHABLE.to_string();
        dl.errors.push(why.to_string());
        dl.last_error = Some(why.to_string());
        dl.attributes = original.attributes.clone();
        let audit = AuditRow {
            event_id: None,
            fingerprint: dl.fingerprint.clone().unwrap_or_default(),
            record_type: dl.record_type.clone(),
            record_id: dl.record_id.clone(),
            stage: STAGE.to_string(),
            outcome: "parked".to_string(),
            detail: Some(
                json!({"stage": dl.stage, "reason": dl.reason, "attempts": dl.attempts,
                       "replay_of": dl.replay_of, "unpublishable": why})
                .to_string(),
            ),
            message_id: Some(original.message_id.clone()),
            attempt: dl.attempts,
            claim: false,
        };
        let parked = match self.store.park(&dl, audit.clone()).await {
            Err(e) if e.is_data() => self.store.park(&dl.minimal(&e.to_string()), audit).await,
            r => r,
        }?;
        if let Ok(n) = self.store.pending_dead_letters().await {
            crate::metrics::set_dead_letters_parked(n);
        }
        Ok(parked)
    }

    async fn run(&self, msg: &Incoming) -> StageResult {
        let dl = self.dead_letter(msg);
        let truncated = dl.oversized_fields();
        let audit = AuditRow {
            event_id: None,
            fingerprint: dl.fingerprint.clone().unwrap_or_default(),
            record_type: dl.record_type.clone(),
            record_id: dl.record_id.clone(),
            stage: STAGE.to_string(),
            outcome: "parked".to_string(),
            detail: Some(
                json!({"stage": dl.stage, "reason": dl.reason, "attempts": dl.attempts,
                       "replay_of": dl.replay_of, "truncated": truncated})
                .to_string(),
            ),
            message_id: Some(msg.message_id.clone()),
            attempt: dl.attempts,
            claim: false,
        };
        let result = match self.store.park(&dl, audit.clone()).await {
            Err(e) if e.is_data() => {
                // Cutting to the column widths should have made this
                // impossible; keep the message all the same.
                tracing::warn!(error = %e, "The database refused a dead letter's details; parking its data and attributes alone.");
                self.store.park(&dl.minimal(&e.to_string()), audit).await
            }
            r => r,
        };
        let parked = match result {
            Ok(p) => p,
            Err(e) => return Err(self.not_parked(msg, &dl, e).await),
        };
        unparked::resolved(&msg.message_id);
        if !truncated.is_empty() {
            tracing::warn!(fields = ?truncated, "Dead letter fields were too long for their columns and are stored cut; the message data is kept whole.");
        }
        match parked {
            Parked::Inserted | Parked::Reopened => {
                self.attach_sent(&dl).await;
                tracing::warn!(stage = %dl.stage, reason = %dl.reason, attempts = dl.attempts, reopened = (parked == Parked::Reopened), "Dead letter parked.");
            }
            Parked::AlreadyParked => {
                tracing::info!("Dead letter was parked before; acking the redelivery.");
            }
        }
        if let Ok(n) = self.store.pending_dead_letters().await {
            crate::metrics::set_dead_letters_parked(n);
        }
        Ok(Outcome::ack("parked", dl.fingerprint))
    }

    /// A delivery dead letter gets the request its delivery sent and the
    /// target's answer, kept when the attempt failed (docs/spec.md §7.1).
    async fn attach_sent(&self, dl: &NewDeadLetter) {
        let (Some(fp), true) = (&dl.fingerprint, dl.stage.starts_with("deliver.")) else {
            return;
        };
        if let Err(e) = self
            .store
            .attach_delivery_failure(dl.replay_of, &dl.dlq_message_id, &dl.stage, fp)
            .await
        {
            tracing::warn!(error = %e, "Could not attach the failed request and answer to the dead letter.");
        }
    }

    /// A dead letter that could not be parked is never acked (it would be
    /// lost) nor dead-lettered (there is nowhere further): it is nacked. A
    /// database outage is the consumer's business; any other failure is
    /// counted per message and, once it repeats, held before the nack so
    /// it cannot spin.
    async fn not_parked(&self, msg: &Incoming, dl: &NewDeadLetter, e: StoreError) -> Failure {
        let failure = Failure {
            error: StageError::unavailable(format!("cannot park dead letter: {e}")),
            fingerprint: dl.fingerprint.clone(),
        };
        if e.is_unavailable() {
            return failure;
        }
        let class = e.class().as_str();
        emit(ParkFailed { class });
        let tries = unparked::failed(&msg.message_id, class, &e.to_string());
        if tries >= TRIES_BEFORE_HOLD {
            if tries == TRIES_BEFORE_HOLD {
                emit(DeadLetterHeld {
                    dlq_message_id: &msg.message_id,
                    stage: &dl.stage,
                    reason: &dl.reason,
                    error: &e,
                    tries,
                    hold: self.hold,
                });
            }
            tokio::time::sleep(self.hold).await;
        }
        failure
    }
}

/// A docs/spec.md §3.2 fingerprint: 64 lowercase hex digits.
fn is_fingerprint(s: &str) -> bool {
    s.len() == crate::model::limits::FINGERPRINT_LEN
        && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `record_type`/`record_id` from a raw or merged event, if the data is one.
fn record_of(data: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(data) else {
        return (None, None);
    };
    let s = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
    (s("record_type"), s("record_id"))
}

impl Stage for ParkStage {
    fn name(&self) -> &'static str {
        STAGE
    }

    fn handle<'a>(&'a self, msg: &'a Incoming) -> BoxFuture<'a, StageResult> {
        Box::pin(self.run(msg))
    }
}
