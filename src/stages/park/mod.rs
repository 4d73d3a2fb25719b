//! The park stage (SPEC §4 "park"): every dead letter becomes a row in
//! `dead_letters` (idempotent on redelivery) plus an audit row, and only then
//! is it acked. Nothing is dropped: if the row cannot be written the message
//! is nacked and comes back.

use futures::future::BoxFuture;
use serde_json::{json, Value};

use super::{Failure, Incoming, Outcome, Stage, StageError, StageResult};
use crate::metrics::metrics;
use crate::model::envelope;
use crate::model::fingerprint::fingerprint_bytes;
use crate::store::dead_letters::{NewDeadLetter, Parked};
use crate::store::ledger::AuditRow;
use crate::store::Store;
use crate::topology::{ConsumerKind, Topology};

pub const STAGE: &str = "park";
/// Attribute a replay adds so a replayed message that dies again reopens its
/// row instead of creating another.
pub const REPLAY_OF: &str = "replay_of";

pub struct ParkStage {
    store: Store,
    topology: Topology,
}

impl ParkStage {
    pub fn new(store: Store, topology: Topology) -> Self {
        Self { store, topology }
    }

    /// The stage a broker-dead-lettered message failed in, from the
    /// subscription the broker names.
    fn stage_of_subscription(&self, sub: &str) -> String {
        let id = sub.rsplit('/').next().unwrap_or(sub);
        for (kind, stage) in [
            (ConsumerKind::Merge, "merge"),
            (ConsumerKind::Netsuite, "deliver.netsuite"),
            (ConsumerKind::Suitex, "deliver.suitex"),
        ] {
            if id == self.topology.subscription_id(kind) {
                return stage.to_string();
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
            fingerprint: Some(
                a.get(envelope::FINGERPRINT)
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

    async fn run(&self, msg: &Incoming) -> StageResult {
        let dl = self.dead_letter(msg);
        let audit = AuditRow {
            event_id: None,
            fingerprint: dl.fingerprint.clone().unwrap_or_default(),
            record_type: dl.record_type.clone(),
            record_id: dl.record_id.clone(),
            stage: STAGE.to_string(),
            outcome: "parked".to_string(),
            detail: Some(
                json!({"stage": dl.stage, "reason": dl.reason, "attempts": dl.attempts,
                       "replay_of": dl.replay_of})
                .to_string(),
            ),
            message_id: Some(msg.message_id.clone()),
            attempt: dl.attempts,
            claim: false,
        };
        let parked = self.store.park(&dl, audit).await.map_err(|e| Failure {
            // Never dead-letter a dead letter: nack and let it come back.
            error: StageError::unavailable(format!("cannot park dead letter: {e}")),
            fingerprint: dl.fingerprint.clone(),
        })?;
        match parked {
            Parked::Inserted | Parked::Reopened => {
                tracing::warn!(stage = %dl.stage, reason = %dl.reason, attempts = dl.attempts, reopened = (parked == Parked::Reopened), "Dead letter parked.");
            }
            Parked::AlreadyParked => {
                tracing::info!("Dead letter was parked before; acking the redelivery.");
            }
        }
        if let Ok(n) = self.store.pending_dead_letters().await {
            metrics().dead_letters_parked.set(n);
        }
        Ok(Outcome::ack("parked", dl.fingerprint))
    }
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
